//! What a request asks of the engine, what the engine reports back, and the checks a request
//! passes before it is queued.

use crate::config::{Head, ModelConfig};
use crate::error::{EngineError, Result};
use crate::model::check_vocab;
use crate::sampler::SamplingParams;

/// What a request asks for.
#[derive(Debug, Clone)]
pub enum Work {
    /// k samples continuing one prompt; each entry is one sample's sampling. The same as
    /// `GenerateTree` with one prompt.
    Generate {
        prompt: Vec<u32>,
        samples: Vec<SamplingParams>,
    },
    /// Samples continuing several prompts that share prefixes (a GRM request whose samples
    /// each see the responses in their own order): every shared prefix is computed once and
    /// its KV blocks are shared. Each sample names the index of its prompt; every prompt needs
    /// at least one sample. Events name prompts and samples by these indices.
    GenerateTree {
        prompts: Vec<Vec<u32>>,
        samples: Vec<(usize, SamplingParams)>,
    },
    /// Prefill only: the head's output at the last token (meta-RM scalar scoring).
    Score { tokens: Vec<u32> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token (not included in the tokens).
    Stop,
    /// max_new_tokens reached.
    Length,
}

/// What the engine reports about a request. More kinds may come: match with a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The request left the waiting queue: its first sequence got blocks and is computed from
    /// this step on. Sent once, before any other event of the request (the time from submission
    /// to this event is the request's queueing time).
    Started,
    /// Prompt `prompt` (its index in the work; 0 for `Generate`) is in the cache. `cached`:
    /// its tokens not computed for it — shared with another prompt of the request, or served
    /// by the prefix cache (all of them for a prompt repeated in the work).
    Prefilled {
        prompt_tokens: usize,
        cached: usize,
        prompt: usize,
    },
    /// A token of a streamed sample (`SamplingParams::stream`), as it is drawn; a stop token
    /// that ends the sample is not sent. `logprobs` when the sample asked for them.
    Token {
        sample: usize,
        token: u32,
        logprobs: Option<crate::logprobs::TokenLogprobs>,
    },
    /// One sample finished; `sample` is its index in the work.
    Sample {
        sample: usize,
        tokens: Vec<u32>,
        finish: FinishReason,
    },
    /// A scoring request's output row.
    Score {
        values: Vec<f32>,
        prompt_tokens: usize,
        cached: usize,
    },
}

/// A request's distinct prompts, each with the prompts of the work it stands for and the
/// samples that continue it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    pub distinct: Vec<DistinctPrompt>,
    /// Each sample's sampling, by its index in the work.
    pub samples: Vec<SamplingParams>,
    /// A scoring request (no samples).
    pub score: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DistinctPrompt {
    pub tokens: Vec<u32>,
    /// Indices of the work's prompts with these tokens, the first first.
    pub prompts: Vec<usize>,
    /// Indices of the samples that continue it.
    pub samples: Vec<usize>,
}

fn invalid(what: impl Into<String>) -> EngineError {
    EngineError::Invalid(what.into())
}

/// Checks a request against the model and the KV pool (`blocks_total` blocks of
/// `block_size`), and gathers its distinct prompts.
pub fn check(
    work: Work,
    config: &ModelConfig,
    output_width: usize,
    block_size: usize,
    blocks_total: usize,
) -> Result<Prompts> {
    let (prompts, samples, score) = match work {
        Work::Generate { prompt, samples } => {
            let samples = samples.into_iter().map(|s| (0, s)).collect();
            (vec![prompt], samples, false)
        }
        Work::GenerateTree { prompts, samples } => (prompts, samples, false),
        Work::Score { tokens } => (vec![tokens], Vec::new(), true),
    };
    if !score {
        if samples.is_empty() {
            return Err(invalid("a generation request needs at least one sample"));
        }
        for (_, s) in &samples {
            s.validate().map_err(EngineError::Invalid)?;
        }
        if output_width != config.vocab_size || !matches!(config.head, Head::CausalLm) {
            return Err(invalid("this model has a scoring head; it cannot generate"));
        }
    }
    if prompts.is_empty() {
        return Err(invalid("a generation request needs at least one prompt"));
    }
    let many = prompts.len() > 1;
    for (i, p) in prompts.iter().enumerate() {
        let which = if many {
            format!("prompt {i}")
        } else {
            "the prompt".into()
        };
        if p.is_empty() {
            return Err(invalid(format!("{which} is empty")));
        }
        check_vocab(p, config.vocab_size).map_err(|e| match e {
            e if !many => e,
            e => invalid(format!("prompt {i}: {e}")),
        })?;
    }
    let mut longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut used = vec![false; prompts.len()];
    for (s, (p, params)) in samples.iter().enumerate() {
        let Some(prompt) = prompts.get(*p) else {
            return Err(invalid(format!(
                "sample {s} continues prompt {p}, but there are {} prompts",
                prompts.len()
            )));
        };
        used[*p] = true;
        longest = longest.max(prompt.len() + params.max_new_tokens);
    }
    if let Some(p) = used.iter().position(|u| !u).filter(|_| !score) {
        return Err(invalid(format!("prompt {p} has no sample")));
    }
    if longest > config.max_position_embeddings {
        return Err(EngineError::Limit {
            what: "prompt tokens + max_new_tokens",
            found: longest,
            limit: config.max_position_embeddings,
        });
    }
    let needed = longest.div_ceil(block_size);
    if needed > blocks_total {
        return Err(EngineError::KvTooSmall {
            needed,
            available: blocks_total,
        });
    }
    let mut distinct: Vec<DistinctPrompt> = Vec::new();
    let mut of_prompt = Vec::with_capacity(prompts.len());
    for (i, tokens) in prompts.into_iter().enumerate() {
        match distinct.iter().position(|d| d.tokens == tokens) {
            Some(d) => {
                distinct[d].prompts.push(i);
                of_prompt.push(d);
            }
            None => {
                of_prompt.push(distinct.len());
                distinct.push(DistinctPrompt {
                    tokens,
                    prompts: vec![i],
                    samples: Vec::new(),
                });
            }
        }
    }
    let mut params = Vec::with_capacity(samples.len());
    for (s, (p, sp)) in samples.into_iter().enumerate() {
        distinct[of_prompt[p]].samples.push(s);
        params.push(sp);
    }
    Ok(Prompts {
        distinct,
        samples: params,
        score,
    })
}
