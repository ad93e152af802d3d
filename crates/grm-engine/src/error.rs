//! The engine's errors. Each names what a user can fix: the file, the field or tensor, what
//! was expected and what was found.

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: unsupported architecture {found:?} (supported: Gemma2ForCausalLM, Gemma2ForSequenceClassification)")]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{dir}: tensor `{name}` is missing (looked in {files})")]
    MissingTensor {
        dir: PathBuf,
        name: String,
        files: String,
    },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {found}, expected one of f32, bf16, f16")]
    TensorDtype {
        path: PathBuf,
        name: String,
        found: String,
    },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("token id {token} at position {position} is outside the vocabulary (size {vocab})")]
    TokenOutOfVocab {
        token: u32,
        position: usize,
        vocab: usize,
    },
    #[error("{what} is {found}, the limit is {limit}")]
    Limit {
        what: &'static str,
        found: usize,
        limit: usize,
    },
    #[error("the KV cache has {available} blocks but this sequence alone needs {needed}: raise --kv-blocks or shorten the prompt")]
    KvTooSmall { needed: usize, available: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    /// The engine serves no more; the reason is the one it logged when it stopped.
    #[error("the engine has stopped: {0}")]
    Stopped(String),
    /// One of the engine's own invariants broke (a bug): the engine stops rather than answer
    /// with values it cannot vouch for.
    #[error("engine invariant broken: {0}")]
    Internal(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}
