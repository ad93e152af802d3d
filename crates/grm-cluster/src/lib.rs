//! The cluster's roles over gRPC, thin layers over grm-judge (the method) and grm-engine (the
//! model): `worker` (an engine behind WorkerService), `router` (the public RewardService:
//! validation, prompts, dispatch of chunks to workers with retries), `aggregator` (meta-RM
//! scores and voting), membership from etcd or a static list, and the HTTP side.

pub mod adaptive_sampling;
pub mod aggregator;
pub mod auth;
pub mod chat_markup;
pub mod chat_template;
pub mod chunking;
pub mod cluster_keys;
pub mod dispatch;
pub mod errors;
pub mod etcd;
pub mod get_reward;
pub mod group;
pub mod group_judge;
pub mod http;
pub mod http_server;
pub mod internal_calls;
pub mod members;
pub mod metrics;
pub mod openai;
pub mod pool;
pub mod router;
pub mod sample_text;
pub mod server;
pub mod tls;
pub mod trace_context;
pub mod validation;
pub mod worker;
