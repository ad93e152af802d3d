//! The Gemma-2 engine: loading a HuggingFace model directory, the forward pass exactly as
//! transformers computes it, a paged KV cache whose prompt blocks are shared by the k samples
//! of a request and across requests, a seeded sampler, and a continuous-batching scheduler on
//! its own thread. It knows nothing of networks or of the method: it turns token ids into
//! token ids (or scores).

pub mod backend;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device_sampler;
pub mod engine;
pub mod error;
pub mod init;
pub mod kv;
pub mod logprobs;
pub mod mapped_file;
pub mod model;
pub mod rope;
pub mod sampler;
pub mod scheduler;
pub mod tokenizer;
pub mod weights;
pub mod workload;

pub use config::{Head, ModelConfig};
pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaOptions};
pub use engine::{Engine, EngineInfo, EngineOptions, EngineStats, Submission};
pub use error::{EngineError, Result};
pub use kv::KvStats;
pub use model::{ForwardBatch, Gemma2, Outputs};
pub use sampler::{Sampler, SamplingParams};
pub use scheduler::{
    Event, FinishReason, RequestId, Scheduler, SchedulerConfig, SchedulerCounters, Work,
};
pub use tokenizer::Tokenizer;
