//! Kept by hand: chat templates are Jinja that renders turns into text, and no library reads
//! the text back into turns. What trainers send over OpenRLHF's `/get_reward`: the policy's prompt and its response,
//! decoded with the policy's special tokens left in. The prompt is in the policy's chat
//! markup (ChatML, Llama 3, Gemma, Mistral's [INST], or plain text); it is read back into the
//! conversation's turns, and the response is the query past its prompt with the policy's end
//! tokens removed, so that a templated prompt and the same plain text are judged alike.

use grm_proto::v1::Message;

/// A policy chat format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    ChatMl,
    Llama3,
    Gemma,
    Mistral,
    Plain,
}

/// Tokens a policy ends its turn (or its text) with.
const END_TOKENS: [&str; 10] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "</s>",
    "<eos>",
    "<|endoftext|>",
    "<|end|>",
    "<pad>",
    "<|finetune_right_pad_id|>",
];

/// The format a prompt is written in.
pub fn format_of(prompt: &str) -> Format {
    if prompt.contains("<|im_start|>") {
        Format::ChatMl
    } else if prompt.contains("<|start_header_id|>") {
        Format::Llama3
    } else if prompt.contains("<start_of_turn>") {
        Format::Gemma
    } else if prompt.contains("[INST]") {
        Format::Mistral
    } else {
        Format::Plain
    }
}

/// Where the policy's own turn begins, in each format (the generation prompt's end).
fn assistant_header(f: Format) -> Option<&'static str> {
    match f {
        Format::ChatMl => Some("<|im_start|>assistant\n"),
        Format::Llama3 => Some("<|start_header_id|>assistant<|end_header_id|>\n\n"),
        Format::Gemma => Some("<start_of_turn>model\n"),
        Format::Mistral => Some("[/INST]"),
        Format::Plain => None,
    }
}

fn turn(role: &str, content: &str) -> Option<Message> {
    let role = match role.trim() {
        "system" | "developer" => "system",
        "assistant" | "model" | "gpt" | "bot" => "assistant",
        // user, tool, ipython, ...: what the policy was given
        _ => "user",
    };
    let content = content.trim_matches('\n');
    (!content.is_empty()).then(|| Message {
        role: role.into(),
        content: content.to_string(),
    })
}

/// The conversation a prompt holds; its last turn is the user's. A prompt without recognised
/// markup is the user's turn as it stands.
pub fn conversation(prompt: &str) -> Vec<Message> {
    let f = format_of(prompt);
    let turns: Vec<Message> = match f {
        Format::ChatMl => prompt
            .split("<|im_start|>")
            .skip(1)
            .filter_map(|block| {
                let (role, rest) = block.split_once('\n')?;
                let content = rest.split("<|im_end|>").next().unwrap_or("");
                turn(role, content)
            })
            .collect(),
        Format::Llama3 => prompt
            .split("<|start_header_id|>")
            .skip(1)
            .filter_map(|block| {
                let (role, rest) = block.split_once("<|end_header_id|>")?;
                let content = rest.split("<|eot_id|>").next().unwrap_or("");
                turn(role, content)
            })
            .collect(),
        Format::Gemma => prompt
            .split("<start_of_turn>")
            .skip(1)
            .filter_map(|block| {
                let (role, rest) = block.split_once('\n')?;
                let content = rest.split("<end_of_turn>").next().unwrap_or("");
                turn(role, content)
            })
            .collect(),
        Format::Mistral => mistral_turns(prompt),
        Format::Plain => vec![Message {
            role: "user".into(),
            content: prompt.to_string(),
        }],
    };
    if turns.is_empty() {
        return vec![Message {
            role: "user".into(),
            content: prompt.to_string(),
        }];
    }
    turns
}

/// `<s>[INST] (<<SYS>>\nsystem\n<</SYS>>\n\n)user [/INST] assistant</s>[INST] user [/INST]`
fn mistral_turns(prompt: &str) -> Vec<Message> {
    let mut out = Vec::new();
    for block in prompt.split("[INST]").skip(1) {
        let (user, assistant) = block.split_once("[/INST]").unwrap_or((block, ""));
        let mut user = user.trim();
        if let Some(rest) = user.strip_prefix("<<SYS>>") {
            if let Some((system, after)) = rest.split_once("<</SYS>>") {
                out.extend(turn("system", system.trim()));
                user = after.trim();
            }
        }
        out.extend(turn("user", user));
        out.extend(turn("assistant", strip_end(assistant.trim()).trim()));
    }
    out
}

/// Removes the policy's end tokens (and the whitespace between them) from the end of a
/// response.
pub fn strip_end(response: &str) -> &str {
    let mut r = response;
    loop {
        let t = r.trim_end();
        match END_TOKENS.iter().find(|e| t.ends_with(*e)) {
            Some(e) => r = &t[..t.len() - e.len()],
            None => return if r.len() == response.len() { r } else { t },
        }
    }
}

/// The policy's response: the query past its prompt, end tokens removed. A query whose start
/// is not the whole prompt (a trainer may cut a long prompt from the left) is read from the
/// last start of the policy's turn.
pub fn response_of<'a>(query: &'a str, prompt: &str) -> Option<&'a str> {
    if let Some(r) = query.strip_prefix(prompt) {
        return Some(strip_end(r));
    }
    let header = assistant_header(format_of(prompt))?;
    let at = query.rfind(header)?;
    Some(strip_end(&query[at + header.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(c: &[Message]) -> Vec<(&str, &str)> {
        c.iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect()
    }

    #[test]
    fn every_format_reads_back_into_the_same_turns() {
        let want = vec![("system", "Be brief."), ("user", "What is 2+2?")];
        let chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
        let llama3 = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        let mistral = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST]";
        for (p, f) in [
            (chatml, Format::ChatMl),
            (llama3, Format::Llama3),
            (mistral, Format::Mistral),
        ] {
            assert_eq!(format_of(p), f);
            assert_eq!(roles(&conversation(p)), want, "{f:?}");
        }
        let gemma = "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n";
        assert_eq!(
            roles(&conversation(gemma)),
            vec![
                ("user", "Hi"),
                ("assistant", "Hello!"),
                ("user", "What is 2+2?")
            ]
        );
        let multi = "<s>[INST] Hi [/INST] Hello!</s>[INST] What is 2+2? [/INST]";
        assert_eq!(
            roles(&conversation(multi)),
            vec![
                ("user", "Hi"),
                ("assistant", "Hello!"),
                ("user", "What is 2+2?")
            ]
        );
        assert_eq!(
            roles(&conversation("What is 2+2?")),
            vec![("user", "What is 2+2?")]
        );
    }

    #[test]
    fn the_response_is_the_query_past_its_prompt_without_end_tokens() {
        let p = "<bos><start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\n";
        let q = format!("{p}4<end_of_turn><eos>");
        assert_eq!(response_of(&q, p), Some("4"));
        let p = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(
            response_of(&format!("{p}The answer is 4.<|im_end|>\n"), p),
            Some("The answer is 4.")
        );
        // A prompt cut from the left: found from the policy's turn.
        let cut = "<|im_start|>assistant\nfour<|im_end|><|endoftext|>";
        assert_eq!(response_of(cut, p), Some("four"));
        assert_eq!(response_of("Q: 2+2? A: 4", "Q: 2+2? A: "), Some("4"));
        assert_eq!(response_of("other", "Q: "), None);
        // A response's own trailing text is kept when there is no end token.
        assert_eq!(strip_end("ends with a space "), "ends with a space ");
    }
}
