//! Checking a public request before any work is done. Every refusal is INVALID_ARGUMENT with a
//! message that names the field and the limit.

use grm_judge::{JudgeInput, Label, Message, Role};
use grm_proto::v1::{label, ScoreRequest};
use tonic::Status;

/// The router's limits (flags of `grm router` / `grm serve`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_responses: usize,
    pub max_k: usize,
    pub max_request_bytes: usize,
    /// Used when a request leaves max_new_tokens at 0.
    pub default_max_new_tokens: u32,
    pub max_new_tokens: u32,
    pub max_id_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_responses: 16,
            max_k: 64,
            max_request_bytes: 4 << 20,
            default_max_new_tokens: 512,
            max_new_tokens: 4096,
            max_id_bytes: 256,
        }
    }
}

/// A request that passed every check, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Valid {
    pub id: String,
    pub input: JudgeInput,
    pub k: usize,
    /// As the client gave it (the aggregator picks the default).
    pub k_meta: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: u32,
    pub seed: u64,
    pub shuffle: bool,
    pub label: Option<Label>,
    pub return_samples: bool,
    /// Hinted sampling: the labelled best response, named in each prompt.
    pub hint_best: Option<usize>,
    /// Adaptive k: the stopping rule and the first wave (0: the router's choice).
    pub adaptive: Option<(grm_judge::adaptive::Rule, usize)>,
}

fn bad(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// The method's view of a request (conversation, responses, criteria) and its label, checked.
pub fn parse_input(req: &ScoreRequest) -> Result<(JudgeInput, Option<Label>), Status> {
    if req.conversation.is_empty() {
        return Err(bad(
            "conversation is empty: give at least the user's query".into()
        ));
    }
    let mut conversation = Vec::with_capacity(req.conversation.len());
    for (i, m) in req.conversation.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(bad(format!(
                    "conversation[{i}].role is {other:?}; allowed: system, user, assistant"
                )))
            }
        };
        conversation.push(Message {
            role,
            content: m.content.clone(),
        });
    }
    let n = req.responses.len();
    if n == 0 {
        return Err(bad("responses is empty: give at least 1 response".into()));
    }
    let input = JudgeInput {
        conversation,
        responses: req.responses.clone(),
        criteria: req.criteria.clone(),
    };
    input.validate().map_err(|e| bad(e.to_string()))?;
    let label = match req.label.as_ref().and_then(|l| l.kind.as_ref()) {
        None => None,
        Some(label::Kind::Best(b)) => Some(Label::Best(*b as usize)),
        Some(label::Kind::Rating(r)) => {
            if !(1..=10).contains(r) {
                return Err(bad(format!("label.rating is {r}; allowed 1..=10")));
            }
            Some(Label::Rating(*r as u8))
        }
        Some(label::Kind::Correct(c)) => Some(Label::Correct(*c)),
    };
    if let Some(l) = &label {
        l.validate(n).map_err(|e| bad(e.to_string()))?;
    }
    Ok((input, label))
}

/// Checks `req` (whose encoded size is `encoded_len` bytes) against `limits`.
pub fn validate(req: &ScoreRequest, encoded_len: usize, limits: &Limits) -> Result<Valid, Status> {
    if encoded_len > limits.max_request_bytes {
        return Err(bad(format!(
            "request is {encoded_len} bytes; the limit is {} (--max-request-bytes)",
            limits.max_request_bytes
        )));
    }
    if req.id.len() > limits.max_id_bytes {
        return Err(bad(format!(
            "id is {} bytes; the limit is {}",
            req.id.len(),
            limits.max_id_bytes
        )));
    }
    let n = req.responses.len();
    if n > limits.max_responses {
        return Err(bad(format!(
            "responses has {n} entries; allowed 1..={} (--max-responses)",
            limits.max_responses
        )));
    }
    let (input, label) = parse_input(req)?;

    let s = req.sampling.clone().unwrap_or_default();
    let k = if s.k == 0 && req.sampling.is_none() {
        1
    } else {
        s.k as usize
    };
    if k == 0 || k > limits.max_k {
        return Err(bad(format!(
            "sampling.k is {k}; allowed 1..={} (--max-k)",
            limits.max_k
        )));
    }
    let k_meta = match s.k_meta {
        Some(m) if m == 0 || m as usize > k => {
            return Err(bad(format!("sampling.k_meta is {m}; allowed 1..=k ({k})")));
        }
        m => m.map(|m| m as usize),
    };
    let temperature = s.temperature.unwrap_or(if k > 1 { 0.5 } else { 0.0 });
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(bad(format!(
            "sampling.temperature is {temperature}; it must be >= 0"
        )));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad(format!("sampling.top_p is {top_p}; allowed (0, 1]")));
    }
    let max_new_tokens = if s.max_new_tokens == 0 {
        limits.default_max_new_tokens
    } else {
        s.max_new_tokens
    };
    if max_new_tokens > limits.max_new_tokens {
        return Err(bad(format!(
            "sampling.max_new_tokens is {max_new_tokens}; allowed 1..={} (--max-new-tokens-limit)",
            limits.max_new_tokens
        )));
    }
    let seed = match s.seed {
        Some(seed) => seed,
        None => getrandom::u64()
            .map_err(|e| Status::internal(format!("no randomness for a seed: {e}")))?,
    };
    let hint_best = match (req.hinted, &label) {
        (false, _) => None,
        (true, Some(Label::Best(b))) => Some(*b),
        (true, _) => return Err(bad(
            "hinted is set but label.best is not: hinted sampling names the labelled best response"
                .into(),
        )),
    };
    let adaptive = match &s.adaptive {
        None => None,
        Some(a) => {
            let rule = match a.rule.as_str() {
                "exact" => grm_judge::adaptive::Rule::Exact,
                "confident" => {
                    let c = if a.confidence == 0.0 {
                        0.99
                    } else {
                        f64::from(a.confidence)
                    };
                    if !(c > 0.0 && c < 1.0) {
                        return Err(bad(format!(
                            "sampling.adaptive.confidence is {}; allowed (0, 1)",
                            a.confidence
                        )));
                    }
                    grm_judge::adaptive::Rule::Confident { confidence: c }
                }
                other => {
                    return Err(bad(format!(
                        "sampling.adaptive.rule is {other:?}; allowed: exact, confident"
                    )))
                }
            };
            if a.first_wave as usize > k {
                return Err(bad(format!(
                    "sampling.adaptive.first_wave is {}; allowed 0..=k ({k})",
                    a.first_wave
                )));
            }
            Some((rule, a.first_wave as usize))
        }
    };
    Ok(Valid {
        adaptive,
        hint_best,
        id: req.id.clone(),
        input,
        k,
        k_meta,
        temperature,
        top_p,
        max_new_tokens,
        seed,
        shuffle: !s.no_shuffle,
        label,
        return_samples: req.return_samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use grm_proto::v1::{Label as PLabel, Message as PMessage, Sampling};

    fn req() -> ScoreRequest {
        ScoreRequest {
            id: "r1".into(),
            conversation: vec![PMessage {
                role: "user".into(),
                content: "2+2?".into(),
            }],
            responses: vec!["4".into(), "5".into()],
            sampling: Some(Sampling {
                k: 4,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn err(r: &ScoreRequest) -> String {
        validate(r, 100, &Limits::default())
            .unwrap_err()
            .message()
            .to_string()
    }

    #[test]
    fn defaults_are_filled() {
        let v = validate(&req(), 100, &Limits::default()).unwrap();
        assert_eq!(
            (v.k, v.temperature, v.top_p, v.max_new_tokens, v.shuffle),
            (4, 0.5, 1.0, 512, true)
        );
        let mut r = req();
        r.sampling = None;
        let v = validate(&r, 100, &Limits::default()).unwrap();
        assert_eq!((v.k, v.temperature), (1, 0.0));
    }

    #[test]
    fn each_refusal_names_its_field() {
        let mut r = req();
        r.responses.clear();
        assert!(err(&r).starts_with("responses is empty"));
        let mut r = req();
        r.sampling.as_mut().unwrap().k = 0;
        r.sampling.as_mut().unwrap().seed = Some(1);
        assert_eq!(err(&r), "sampling.k is 0; allowed 1..=64 (--max-k)");
        let mut r = req();
        r.sampling.as_mut().unwrap().k = 65;
        assert_eq!(err(&r), "sampling.k is 65; allowed 1..=64 (--max-k)");
        let mut r = req();
        r.sampling.as_mut().unwrap().k_meta = Some(5);
        assert_eq!(err(&r), "sampling.k_meta is 5; allowed 1..=k (4)");
        let mut r = req();
        r.conversation[0].role = "robot".into();
        assert!(err(&r).starts_with("conversation[0].role is \"robot\""));
        let mut r = req();
        r.conversation[0].role = "assistant".into();
        assert!(err(&r).contains("the last turn must be the user's query"));
        assert!(validate(&req(), 5 << 20, &Limits::default())
            .unwrap_err()
            .message()
            .starts_with("request is 5242880 bytes; the limit is 4194304"));
        let mut r = req();
        r.label = Some(PLabel {
            kind: Some(label::Kind::Best(2)),
        });
        assert!(err(&r).starts_with("label.best is 2"));
        let mut r = req();
        r.sampling.as_mut().unwrap().top_p = Some(0.0);
        assert!(err(&r).starts_with("sampling.top_p is 0"));
        let mut r = req();
        r.responses = vec!["x".into(); 17];
        assert_eq!(
            err(&r),
            "responses has 17 entries; allowed 1..=16 (--max-responses)"
        );
    }
}
