//! The method of DeepSeek's SPCT paper ("Inference-Time Scaling for Generalist Reward
//! Modeling"), as a pure library: prompts from a template, each sample's shuffled order,
//! score extraction, voting, meta-RM guided voting, and the SPCT data rules.
//!
//! Nothing here does I/O, spawns threads or knows about models or networks: the engine and the
//! servers call into it. Everything random is seeded and reproducible from `(seed, index)`.

pub mod adaptive;
pub mod eval;
pub mod extract;
pub mod judgement;
pub mod marked;
pub mod meta;
pub mod prompt;
pub mod rng;
pub mod shuffle;
pub mod spct;
pub mod template;
pub mod vote;

pub use extract::{extract_scores, Invalid};
pub use judgement::{aggregate, Aggregate, Judgement, JudgementOutcome};
pub use marked::Marked;
pub use meta::{default_k_meta, keep_top};
pub use prompt::{InputError, JudgeInput, Message, PromptOptions, Role, SamplePrompt};
pub use shuffle::{sample_order, to_original, Order};
pub use spct::{is_correct, reject, rl_reward, Label, LabelError, Rejection};
pub use template::{Template, TemplateError};
pub use vote::{vote, VoteError, VoteResult};
