//! `grm serve | router | worker | aggregator`: the cluster's roles as processes. Each prints
//! one JSON line on stdout once it listens (`{"ready": role, "grpc": addr, ...}`), logs on
//! stderr, and stops gracefully on SIGTERM or Ctrl-C.

use anyhow::{bail, Context, Result};
use clap::Args;
use grm_cluster::aggregator::Aggregator;
use grm_cluster::chat_template::ChatTemplate;
use grm_cluster::chunking::ChunkPolicy;
use grm_cluster::cluster_keys::ClusterKeys;
use grm_cluster::dispatch::DispatchOptions;
use grm_cluster::etcd;
use grm_cluster::http::{self, HttpOptions};
use grm_cluster::http_server::{serve_http, serve_http_gated, HttpLimits};
use grm_cluster::members::{self, Member, Members, Role};
use grm_cluster::pool::Pool;
use grm_cluster::router::{Router, RouterOptions};
use grm_cluster::server::{bind, serve_grpc, termination, Services};
use grm_cluster::tls::{Tls, TlsFiles};
use grm_cluster::validation::Limits;
use grm_cluster::worker::{Worker, WorkerOptions};
use grm_engine::backend::Backend;
use grm_engine::{CpuBackend, Engine, EngineOptions, Gemma2, Head, SchedulerConfig, Tokenizer};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How an engine is set up (workers, and `grm serve`).
#[derive(Args, Debug, Clone)]
pub struct EngineFlags {
    /// Compute threads (default: one per core).
    #[arg(long, env = "GRM_THREADS")]
    pub threads: Option<usize>,
    /// Tokens per KV block.
    #[arg(long, env = "GRM_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// KV blocks in the pool (default: from --kv-memory-mib; else, on a GPU, what
    /// --gpu-memory-fraction leaves after the weights; else a quarter of free memory).
    #[arg(long, env = "GRM_KV_BLOCKS")]
    pub kv_blocks: Option<usize>,
    /// Memory for the KV pool, in MiB.
    #[arg(long, env = "GRM_KV_MEMORY_MIB")]
    pub kv_memory_mib: Option<usize>,
    /// Tokens per forward step (prefill chunks and decode tokens).
    #[arg(long, env = "GRM_MAX_BATCH_TOKENS", default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Sequences per forward step.
    #[arg(long, env = "GRM_MAX_SEQS", default_value_t = 256)]
    pub max_seqs: usize,
    /// Turn off the cross-request prefix cache.
    #[arg(long, env = "GRM_NO_PREFIX_CACHE")]
    pub no_prefix_cache: bool,
    /// Compute device: cpu, or cuda:N (cuda = cuda:0) where the build has the CUDA backend.
    #[arg(long, env = "GRM_DEVICE", default_value = "cpu")]
    pub device: String,
    /// With --device cuda:N: the share of the GPU's memory this process may fill (weights,
    /// KV pool, activations); the KV pool takes what the weights leave.
    #[arg(long, env = "GRM_GPU_MEMORY_FRACTION", default_value_t = 0.9)]
    pub gpu_memory_fraction: f32,
}

/// How a process's KV budget is split among its engines.
#[derive(Debug, Clone, Copy)]
pub struct KvBudget {
    pub grm: f64,
    pub meta: f64,
}

impl KvBudget {
    /// One engine: all of it.
    pub const ALONE: f64 = 1.0;

    /// `grm serve` and in-process clusters: one budget for the process, three quarters to the
    /// GRM (k decoding samples and their prompts) and a quarter to the meta RM (prefill only),
    /// when there is one. Explicit --kv-blocks apply to each engine as given.
    pub fn shared(_flags: &EngineFlags, has_meta: bool) -> Self {
        if has_meta {
            Self {
                grm: 0.75,
                meta: 0.25,
            }
        } else {
            Self {
                grm: 1.0,
                meta: 0.0,
            }
        }
    }
}

/// Full contexts the default CPU KV pool holds: plenty for k samples of several requests,
/// and no more, so that a small model does not take a quarter of the machine as its prefix
/// cache fills.
const DEFAULT_KV_CONTEXTS: usize = 64;

/// A parsed `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    pub fn parse(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => bail!("--device {s:?}: expected cpu, cuda or cuda:N (N a GPU index)"),
            },
        }
    }
}

impl EngineFlags {
    /// Starts an engine on `dir`'s model with `share` of this process's KV budget.
    pub fn start(&self, dir: &Path, share: f64) -> Result<(Engine, Tokenizer)> {
        if !(self.gpu_memory_fraction > 0.0 && self.gpu_memory_fraction <= 1.0) {
            bail!(
                "--gpu-memory-fraction {}: it must lie in (0, 1]",
                self.gpu_memory_fraction
            );
        }
        match Device::parse(&self.device)? {
            Device::Cpu => self.start_on(dir, CpuBackend, share),
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => {
                let backend = grm_engine::CudaBackend::new(grm_engine::CudaOptions {
                    ordinal,
                    memory_fraction: self.gpu_memory_fraction,
                })
                .with_context(|| format!("--device {}", self.device))?;
                tracing::info!(device = %backend.name(), "CUDA backend ready");
                self.start_on(dir, backend, share)
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => bail!(
                "--device {}: this build has no CUDA backend (build with --features cuda)",
                self.device
            ),
        }
    }

    fn start_on<B: Backend>(
        &self,
        dir: &Path,
        backend: B,
        share: f64,
    ) -> Result<(Engine, Tokenizer)> {
        let model = Gemma2::load(dir, backend)
            .with_context(|| format!("loading the model in {}", dir.display()))?;
        let kv_memory_bytes = self.kv_memory_bytes(&model, share);
        let tokenizer = Tokenizer::load(dir, model.config.bos_token_id)?;
        let mut stop = model.config.eos_token_ids.clone();
        stop.extend(tokenizer.token_id("<end_of_turn>"));
        let opts = EngineOptions {
            block_size: self.block_size.max(1),
            num_blocks: self.kv_blocks,
            kv_memory_bytes,
            prefix_caching: !self.no_prefix_cache,
            threads: self.threads,
            scheduler: SchedulerConfig {
                max_batch_tokens: self.max_batch_tokens.max(1),
                max_seqs: self.max_seqs.max(1),
                default_stop_tokens: stop,
            },
        };
        let engine = Engine::start(model, opts)?;
        let info = &engine.info;
        tracing::info!(
            model = %dir.display(),
            kv_blocks = info.num_blocks,
            block_size = info.block_size,
            kv_mib = info.kv_bytes >> 20,
            "KV cache budget (--kv-memory-mib or --kv-blocks to change it)"
        );
        // A dead engine would leave a process that looks healthy and fails every request:
        // exit instead, so that the supervisor (systemd, Kubernetes) restarts it.
        let watched = engine.clone();
        std::thread::Builder::new()
            .name("grm-engine-watch".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                if let Some(why) = watched.stop_reason() {
                    tracing::error!(reason = %why, "the engine stopped; exiting");
                    std::process::exit(70);
                }
            })?;
        Ok((engine, tokenizer))
    }
}

impl EngineFlags {
    /// The KV pool's memory: `--kv-memory-mib` (times `share`); else, on the CPU, the smaller
    /// of a quarter of the memory available now and [`DEFAULT_KV_CONTEXTS`] full contexts,
    /// times `share`; else (a GPU) what the backend leaves after the weights.
    fn kv_memory_bytes<B: Backend>(&self, model: &Gemma2<B>, share: f64) -> Option<usize> {
        let part = |bytes: usize| ((bytes as f64) * share.clamp(0.0, 1.0)) as usize;
        if let Some(mib) = self.kv_memory_mib {
            return Some(part(mib << 20));
        }
        if model.backend().kv_memory_budget().is_some() {
            return None;
        }
        let contexts =
            DEFAULT_KV_CONTEXTS * model.config.max_position_embeddings * model.kv_bytes_per_token();
        let quarter = grm_engine::engine::available_memory().map_or(1 << 30, |m| m / 4);
        Some(part(contexts.min(quarter)).max(1 << 20))
    }
}

/// The router's knobs (`grm router` and `grm serve`).
#[derive(Args, Debug, Clone)]
pub struct RouterFlags {
    /// A prompt template (TOML) replacing the paper's.
    #[arg(long, env = "GRM_TEMPLATE")]
    pub template: Option<PathBuf>,
    /// Most responses per request.
    #[arg(long, env = "GRM_MAX_RESPONSES", default_value_t = 16)]
    pub max_responses: usize,
    /// Most samples (k) per request.
    #[arg(long, env = "GRM_MAX_K", default_value_t = 64)]
    pub max_k: usize,
    /// Largest encoded request, in bytes.
    #[arg(long, env = "GRM_MAX_REQUEST_BYTES", default_value_t = 4 << 20)]
    pub max_request_bytes: usize,
    /// Judgement length when a request does not say.
    #[arg(long, env = "GRM_MAX_NEW_TOKENS", default_value_t = 512)]
    pub max_new_tokens: u32,
    /// Longest judgement a request may ask for.
    #[arg(long, env = "GRM_MAX_NEW_TOKENS_LIMIT", default_value_t = 4096)]
    pub max_new_tokens_limit: u32,
    /// Most samples in one chunk sent to a worker.
    #[arg(long, env = "GRM_CHUNK_SAMPLES", default_value_t = 8)]
    pub chunk_samples: usize,
    /// Extra samples in flight the affinity worker may carry before chunks go elsewhere.
    #[arg(long, env = "GRM_AFFINITY_SLACK", default_value_t = 4)]
    pub affinity_slack: usize,
    /// A worker silent for this many seconds is given up on (its samples go elsewhere).
    /// Workers report progress about every second while a chunk is queued or running, so
    /// only a dead, stopped or cut-off worker falls silent; a slow one never does.
    #[arg(long, env = "GRM_STALL_TIMEOUT_S", default_value_t = 5.0)]
    pub stall_timeout_s: f64,
    /// Workers tried per chunk.
    #[arg(long, env = "GRM_MAX_ATTEMPTS", default_value_t = 4)]
    pub max_attempts: usize,
    /// Requests in flight at once; past it new ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "GRM_MAX_INFLIGHT", default_value_t = 1024)]
    pub max_inflight: usize,
    /// Requests of one ScoreStream in flight at once.
    #[arg(long, env = "GRM_STREAM_CONCURRENCY", default_value_t = 64)]
    pub stream_concurrency: usize,
    /// k of `/get_reward` calls that do not give ?k=.
    #[arg(long, env = "GRM_HTTP_K", default_value_t = 4)]
    pub http_k: u32,
    /// The served model's name, reported in answers.
    #[arg(long, env = "GRM_MODEL_NAME", default_value = "")]
    pub model_name: String,
    /// A file holding the bearer tokens the public API then requires (RewardService and
    /// /get_reward; health and metrics stay open), one a line: each token is one caller, with
    /// its own groups and group quotas (blank lines and # comments skipped). The tokens may
    /// also come from the GRM_AUTH_TOKEN environment variable; they are never logged.
    #[arg(long, env = "GRM_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub http: HttpFlags,
    /// Largest group (Group.size, responses over all members).
    #[arg(long, env = "GRM_MAX_GROUP_SIZE", default_value_t = 64)]
    pub max_group_size: usize,
    /// How long a group waits for its last members when it does not say, in milliseconds.
    #[arg(long, env = "GRM_GROUP_WAIT_MS", default_value_t = 5000)]
    pub group_wait_ms: u64,
    /// Groups forming at once; past it new groups get RESOURCE_EXHAUSTED.
    #[arg(long, env = "GRM_MAX_GROUPS", default_value_t = 4096)]
    pub max_groups: usize,
    /// Groups one caller (one bearer token; every caller alike without --auth-token-file) may
    /// have forming at once; past it its new groups get RESOURCE_EXHAUSTED, others' go on.
    #[arg(long, env = "GRM_MAX_GROUPS_PER_CALLER", default_value_t = 1024)]
    pub max_groups_per_caller: usize,
    /// Bytes of waiting group members (encoded requests) one caller may hold at once.
    #[arg(long, env = "GRM_MAX_GROUP_BYTES_PER_CALLER", default_value_t = 256 << 20)]
    pub max_group_bytes_per_caller: usize,
}

/// Limits of the HTTP listener (/get_reward, /health, /metrics), so that slow or idle
/// clients cannot hold it.
#[derive(Args, Debug, Clone)]
pub struct HttpFlags {
    /// Seconds a client has to send a request's headers.
    #[arg(long, env = "GRM_HTTP_HEADER_TIMEOUT_S", default_value_t = 10.0)]
    pub http_header_timeout_s: f64,
    /// Seconds a client has to send a request's body (408 after).
    #[arg(long, env = "GRM_HTTP_BODY_TIMEOUT_S", default_value_t = 30.0)]
    pub http_body_timeout_s: f64,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, env = "GRM_HTTP_IDLE_TIMEOUT_S", default_value_t = 60.0)]
    pub http_idle_timeout_s: f64,
    /// Open HTTP connections at most; at the cap the longest-idle one is closed for a new one.
    #[arg(long, env = "GRM_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,
    /// Largest request body, in MiB (413 beyond).
    #[arg(long, env = "GRM_HTTP_MAX_BODY_MIB", default_value_t = 64)]
    pub http_max_body_mib: usize,
    /// Request bodies held at once over all connections, in MiB: past it a body waits for
    /// room (within --http-body-timeout-s, then 503), so the listener's memory is bounded.
    #[arg(long, env = "GRM_HTTP_BODIES_IN_FLIGHT_MIB", default_value_t = 256)]
    pub http_bodies_in_flight_mib: usize,
}

impl HttpFlags {
    pub fn limits(&self) -> Result<HttpLimits> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                bail!("--{name} {v}: give a positive number of seconds")
            }
        };
        Ok(HttpLimits {
            header_timeout: secs("http-header-timeout-s", self.http_header_timeout_s)?,
            body_timeout: secs("http-body-timeout-s", self.http_body_timeout_s)?,
            idle_timeout: secs("http-idle-timeout-s", self.http_idle_timeout_s)?,
            max_connections: crate::fd_limit::connection_cap(self.http_max_connections),
            max_body_bytes: self.http_max_body_mib.max(1) << 20,
            bodies_in_flight_bytes: self.http_bodies_in_flight_mib.max(1) << 20,
        })
    }
}

impl RouterFlags {
    pub fn options(&self) -> Result<RouterOptions> {
        let auth = grm_cluster::auth::CallerTokens::from_file_or_env(
            self.auth_token_file.as_deref(),
            "GRM_AUTH_TOKEN",
        )?;
        Ok(RouterOptions {
            limits: Limits {
                max_responses: self.max_responses,
                max_k: self.max_k,
                max_request_bytes: self.max_request_bytes,
                default_max_new_tokens: self.max_new_tokens,
                max_new_tokens: self.max_new_tokens_limit,
                max_id_bytes: 256,
            },
            dispatch: DispatchOptions {
                policy: ChunkPolicy {
                    max_samples: self.chunk_samples.max(1),
                    affinity_slack: self.affinity_slack,
                },
                stall_timeout: Duration::from_secs_f64(self.stall_timeout_s.max(0.05)),
                max_attempts: self.max_attempts.max(1),
                cool_down: Duration::from_secs(5),
            },
            max_inflight: self.max_inflight,
            stream_concurrency: self.stream_concurrency,
            model_name: self.model_name.clone(),
            auth,
            groups: grm_cluster::group::GroupLimits {
                max_size: self.max_group_size.max(2),
                default_wait: Duration::from_millis(self.group_wait_ms),
                max_forming: self.max_groups.max(1),
                max_forming_per_caller: self.max_groups_per_caller.max(1),
                max_held_bytes_per_caller: self.max_group_bytes_per_caller,
            },
            self_id: String::new(),
        })
    }
}

/// Where members are found.
#[derive(Args, Debug, Clone)]
pub struct MembershipFlags {
    /// etcd endpoints (comma-separated), e.g. http://127.0.0.1:2379.
    #[arg(long, env = "GRM_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// GRM workers (host:port, comma-separated), when not using etcd.
    #[arg(long, env = "GRM_WORKERS", value_delimiter = ',')]
    pub workers: Vec<String>,
    /// Meta-RM workers (host:port, comma-separated), when not using etcd.
    #[arg(long, env = "GRM_META_WORKERS", value_delimiter = ',')]
    pub meta_workers: Vec<String>,
    /// Aggregators (host:port, comma-separated), when not using etcd; without any, the router
    /// aggregates itself.
    #[arg(long, env = "GRM_AGGREGATORS", value_delimiter = ',')]
    pub aggregators: Vec<String>,
}

/// The etcd endpoints of `--etcd`, reached over TLS when they are https (with the node's
/// --tls-ca, and its certificate if it has one).
fn etcd_endpoints(urls: &[String], tls: &Tls) -> Result<etcd::Endpoints> {
    etcd::Endpoints::new(urls.to_vec(), tls.client.as_ref()).map_err(anyhow::Error::msg)
}

impl MembershipFlags {
    /// The membership, listed once before the node announces itself (see
    /// [`etcd::watch_members`]).
    async fn members(&self, tls: &Tls, token: Option<&ClusterKeys>) -> Result<Members> {
        if !self.etcd.is_empty() {
            return Ok(etcd::watch_members(
                etcd_endpoints(&self.etcd, tls)?,
                token.cloned(),
                etcd::FIRST_LISTING,
            )
            .await);
        }
        let mut list = members::from_addrs(Role::Grm, &self.workers);
        list.extend(members::from_addrs(Role::MetaRm, &self.meta_workers));
        list.extend(members::from_addrs(Role::Aggregator, &self.aggregators));
        Ok(members::fixed(list))
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The model directory.
    #[arg(long, env = "GRM_MODEL")]
    pub model: PathBuf,
    /// grm or meta-rm (default: meta-rm for a sequence-classification model, else grm).
    #[arg(long, env = "GRM_ROLE")]
    pub role: Option<Role>,
    /// gRPC address to listen on (port 0 picks one).
    #[arg(long, env = "GRM_LISTEN", default_value = "127.0.0.1:50061")]
    pub listen: String,
    /// Address others reach this worker at (default: the listening address).
    #[arg(long, env = "GRM_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP address for Prometheus' `GET /metrics` (empty: none).
    #[arg(long, env = "GRM_METRICS_LISTEN", default_value = "")]
    pub metrics_listen: String,
    /// etcd endpoints to register in (comma-separated).
    #[arg(long, env = "GRM_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Lease of the etcd registration, in seconds.
    #[arg(long, env = "GRM_LEASE_TTL_S", default_value_t = 5)]
    pub lease_ttl_s: u64,
    /// The model's name (default: its directory's name).
    #[arg(long, env = "GRM_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Past this many queued prompt tokens, new work gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "GRM_MAX_QUEUED_TOKENS", default_value_t = 1 << 20)]
    pub max_queued_tokens: usize,
    /// On SIGTERM, wait at most this long for running work.
    #[arg(long, env = "GRM_DRAIN_TIMEOUT_S", default_value_t = 60)]
    pub drain_timeout_s: u64,
    #[command(flatten)]
    pub engine: EngineFlags,
    #[command(flatten)]
    pub tls: TlsFlags,
}

#[derive(Args, Debug)]
pub struct RouterArgs {
    /// gRPC address to listen on.
    #[arg(long, env = "GRM_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: String,
    /// Address other routers reach this one at (default: the listening address). With
    /// --etcd, routers register so that a group's members reaching different routers are
    /// sent to the one that owns the group.
    #[arg(long, env = "GRM_ADVERTISE")]
    pub advertise: Option<String>,
    /// The name this router's TLS certificate is checked against by other routers, when it
    /// is not the host of --advertise (e.g. a pod registered by IP whose certificate names
    /// its Service).
    #[arg(long, env = "GRM_ADVERTISE_TLS_NAME", default_value = "")]
    pub advertise_tls_name: String,
    /// Lease of the etcd registration, in seconds.
    #[arg(long, env = "GRM_LEASE_TTL_S", default_value_t = 5)]
    pub lease_ttl_s: u64,
    /// HTTP address (OpenRLHF's /get_reward, /health); empty turns it off.
    #[arg(long, env = "GRM_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: String,
    #[command(flatten)]
    pub members: MembershipFlags,
    #[command(flatten)]
    pub router: RouterFlags,
    #[command(flatten)]
    pub tls: TlsFlags,
}

#[derive(Args, Debug)]
pub struct AggregatorArgs {
    /// gRPC address to listen on.
    #[arg(long, env = "GRM_LISTEN", default_value = "0.0.0.0:50071")]
    pub listen: String,
    /// Address others reach this aggregator at (default: the listening address).
    #[arg(long, env = "GRM_ADVERTISE")]
    pub advertise: Option<String>,
    /// A prompt template (TOML) replacing the paper's (its meta-RM input is used).
    #[arg(long, env = "GRM_TEMPLATE")]
    pub template: Option<PathBuf>,
    /// Serve Prometheus metrics (GET /metrics) on this address; empty: off.
    #[arg(long, env = "GRM_METRICS_LISTEN", default_value = "")]
    pub metrics_listen: String,
    #[command(flatten)]
    pub members: MembershipFlags,
    #[arg(long, env = "GRM_LEASE_TTL_S", default_value_t = 5)]
    pub lease_ttl_s: u64,
    #[command(flatten)]
    pub tls: TlsFlags,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The GRM model directory (default: the embedded model shipped in models/).
    #[arg(long, env = "GRM_MODEL")]
    pub model: Option<PathBuf>,
    /// A meta-RM model directory (a sequence-classification model); enables meta-RM voting.
    #[arg(long, env = "GRM_META_MODEL")]
    pub meta_model: Option<PathBuf>,
    /// gRPC address of the public API.
    #[arg(long, env = "GRM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// HTTP address (OpenRLHF's /get_reward, /health); empty turns it off.
    #[arg(long, env = "GRM_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: String,
    #[command(flatten)]
    pub engine: EngineFlags,
    #[command(flatten)]
    pub router: RouterFlags,
    /// TLS of the public endpoint (the in-process workers are reached over loopback).
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// TLS for a node's gRPC endpoints (PEM files). Plaintext when none is given.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsFlags {
    /// This node's certificate chain: with --tls-key it serves TLS, and presents them when
    /// it calls nodes that require client certificates.
    #[arg(long, env = "GRM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "GRM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA of the cluster's certificates: the nodes this one calls are verified against it
    /// and called over https; with --tls-client-auth, its clients too.
    #[arg(long, env = "GRM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by --tls-ca.
    #[arg(long, env = "GRM_TLS_CLIENT_AUTH")]
    pub tls_client_auth: bool,
    /// Serve the HTTP listeners (/get_reward, /health, /metrics) over HTTPS too, with
    /// --tls-cert/--tls-key.
    #[arg(long, env = "GRM_HTTP_TLS")]
    pub http_tls: bool,
    /// A file holding the cluster token (the same on every node; or the token itself in
    /// GRM_CLUSTER_TOKEN). The token never travels: every internal call carries a proof made
    /// with a key derived from it (fresh per call, bound to its method and time, good once),
    /// which the internal services (WorkerService, AggregatorService) require; members sign
    /// their etcd registration with another derived key, and routers and aggregators ignore
    /// members it did not sign. Several tokens, one a line (`ID:TOKEN` names its key id): the
    /// first signs, all are accepted, so tokens rotate without a flag day.
    #[arg(long, env = "GRM_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
}

impl TlsFlags {
    pub fn cluster_token(&self) -> Result<Option<ClusterKeys>> {
        Ok(ClusterKeys::from_file_or_env(
            self.cluster_token_file.as_deref(),
            "GRM_CLUSTER_TOKEN",
        )?)
    }

    /// Whether this node calls its peers with credentials they can check: the cluster token,
    /// or its certificate under mutual TLS (peers started with --tls-client-auth check it).
    fn has_internal_credentials(&self, token: Option<&ClusterKeys>) -> bool {
        token.is_some()
            || (self.tls_cert.is_some() && self.tls_key.is_some() && self.tls_ca.is_some())
    }

    pub fn load(&self) -> Result<Tls> {
        Ok(Tls::load(TlsFiles {
            cert: self.tls_cert.as_deref(),
            key: self.tls_key.as_deref(),
            ca: self.tls_ca.as_deref(),
            client_auth: self.tls_client_auth,
            http: self.http_tls,
        })?)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn ready(v: serde_json::Value) {
    println!("{v}");
}

fn model_name(dir: &Path, given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .or_else(|| dir.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// The address registered in etcd: `--advertise`, else the bound one, which must then be one
/// that other hosts can dial.
fn advertised(given: Option<&String>, bound: SocketAddr, registers: bool) -> Result<String> {
    match given {
        Some(a) => Ok(a.clone()),
        None if registers && bound.ip().is_unspecified() => bail!(
            "--advertise is needed: this process listens on {bound}, which other hosts cannot dial; give the host:port they should use"
        ),
        None => Ok(bound.to_string()),
    }
}

/// A shutdown signal that several servers can wait on.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        termination().await;
        let _ = tx.send(true);
    });
    rx
}

async fn wait(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|&v| v).await;
}

pub fn worker(a: WorkerArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let token = a.tls.cluster_token()?;
    let (engine, tokenizer) = a.engine.start(&a.model, KvBudget::ALONE)?;
    let role = a.role.unwrap_or(match engine.info.config.head {
        Head::CausalLm => Role::Grm,
        Head::SequenceClassification { .. } => Role::MetaRm,
    });
    match (role, engine.info.config.head) {
        (Role::Grm, Head::SequenceClassification { .. }) => bail!(
            "--role grm needs a causal LM; {} has a scoring head",
            a.model.display()
        ),
        (Role::MetaRm, Head::CausalLm) => bail!(
            "--role meta-rm needs a sequence-classification model; {} is a causal LM",
            a.model.display()
        ),
        (Role::Aggregator, _) => bail!("--role aggregator: run `grm aggregator` instead"),
        _ => {}
    }
    let name = model_name(&a.model, a.model_name.as_deref());
    let w = Worker::new(
        engine,
        tokenizer,
        WorkerOptions {
            model_name: name.clone(),
            role,
            max_queued_tokens: a.max_queued_tokens,
            progress_interval: grm_cluster::worker::PROGRESS_INTERVAL,
        },
    )
    .with_chat_template(ChatTemplate::for_model(&a.model)?);
    let etcd_urls = etcd_endpoints(&a.etcd, &tls)?;
    runtime()?.block_on(async move {
        let (listener, addr) = bind(&a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
        let advertise = advertised(a.advertise.as_ref(), addr, !a.etcd.is_empty())?;
        let registration = (!a.etcd.is_empty()).then(|| {
            let member = Member { id: advertise.clone(), addr: advertise.clone(), role, model: name.clone(), capacity: 0, tls_name: String::new(), issued_s: 0, sig: String::new() };
            etcd::register(etcd_urls.clone(), member, Duration::from_secs(a.lease_ttl_s.max(1)), token.clone())
        });
        let stop = shutdown_signal();
        let (server_stop_tx, server_stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve_grpc(listener, Services { worker: Some(w.clone()), tls: tls.server, cluster_keys: token.clone(), member_id: advertise.clone(), ..Default::default() }, wait(server_stop_rx.clone())));
        let mut line = json!({ "ready": role.as_str(), "grpc": addr.to_string(), "model": name, "kv_blocks": w.engine().info.num_blocks });
        if !a.metrics_listen.is_empty() {
            let (ml, maddr) = bind(&a.metrics_listen).await.with_context(|| format!("listening on {}", a.metrics_listen))?;
            line["metrics"] = json!(maddr.to_string());
            tokio::spawn(serve_http(ml, http::engine_metrics_app(role.as_str(), w.engine().clone()), tls.http.clone(), HttpLimits::default(), wait(server_stop_rx)));
        }
        ready(line);
        // An engine that stopped (too many internal errors within a minute: see
        // grm_engine::engine) takes this worker out of the membership, and the process ends
        // with an error, so that its supervisor starts it again.
        let engine = w.engine().clone();
        let died = async move {
            while engine.alive() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let engine_died = tokio::select! {
            _ = wait(stop) => false,
            _ = died => true,
        };
        if engine_died {
            let why = w.engine().stop_reason().unwrap_or_default();
            tracing::error!(reason = %why, "the engine has stopped; leaving the membership");
        }
        // Drain: take no new work, leave the membership, finish what is running.
        tracing::info!("draining");
        w.drain();
        if let Some(r) = registration {
            r.deregister().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(a.drain_timeout_s), w.idle()).await;
        let _ = server_stop_tx.send(true);
        server.await??;
        if engine_died {
            bail!("the engine stopped after repeated internal errors (see the log above)");
        }
        tracing::info!("stopped");
        Ok(())
    })
}

pub fn aggregator(a: AggregatorArgs) -> Result<()> {
    let template = Arc::new(crate::judge_cmd::load_template(a.template.as_ref())?);
    let tls = a.tls.load()?;
    let token = a.tls.cluster_token()?;
    let etcd_urls = etcd_endpoints(&a.members.etcd, &tls)?;
    runtime()?.block_on(async move {
        let members = a.members.members(&tls, token.as_ref()).await?;
        let meta = Pool::with_tls(Role::MetaRm, members, tls.client, token.clone());
        let agg = Aggregator::new(template, Some(meta));
        let (listener, addr) = bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let advertise = advertised(a.advertise.as_ref(), addr, !a.members.etcd.is_empty())?;
        let registration = (!a.members.etcd.is_empty()).then(|| {
            let member = Member {
                id: advertise.clone(),
                addr: advertise.clone(),
                role: Role::Aggregator,
                model: String::new(),
                capacity: 0,
                tls_name: String::new(),
                issued_s: 0,
                sig: String::new(),
            };
            etcd::register(
                etcd_urls,
                member,
                Duration::from_secs(a.lease_ttl_s.max(1)),
                token.clone(),
            )
        });
        let mut line = json!({ "ready": "aggregator", "grpc": addr.to_string() });
        let (server_stop_tx, server_stop_rx) = watch::channel(false);
        if !a.metrics_listen.is_empty() {
            let (ml, maddr) = bind(&a.metrics_listen)
                .await
                .with_context(|| format!("listening on {}", a.metrics_listen))?;
            line["metrics"] = json!(maddr.to_string());
            tokio::spawn(serve_http(
                ml,
                http::aggregator_metrics_app(agg.clone()),
                tls.http.clone(),
                HttpLimits::default(),
                wait(server_stop_rx.clone()),
            ));
        }
        ready(line);
        let stop = shutdown_signal();
        let server = tokio::spawn(serve_grpc(
            listener,
            Services {
                aggregator: Some(agg),
                tls: tls.server,
                cluster_keys: token.clone(),
                member_id: advertise.clone(),
                ..Default::default()
            },
            wait(server_stop_rx),
        ));
        wait(stop).await;
        // Leave the membership first, so that routers stop choosing this aggregator.
        if let Some(r) = registration {
            r.deregister().await;
        }
        let _ = server_stop_tx.send(true);
        server.await??;
        Ok(())
    })
}

/// What `grm serve` adds to a router: fields for its ready line, and its in-process engines
/// (their metrics join the router's).
#[derive(Default)]
struct InProcess {
    ready: serde_json::Value,
    engines: Vec<(&'static str, Engine)>,
}

/// Starts a router over `members`, serving until `stop`.
/// How a router joins the membership, so that routers can send a group's members to the
/// router that owns the group.
struct RouterRegistration {
    etcd: etcd::Endpoints,
    advertise: Option<String>,
    tls_name: String,
    lease_ttl: Duration,
}

/// Starts a router over `members`, serving until `stop`.
async fn run_router(
    (listen, http_listen): (&str, &str),
    members: Members,
    flags: &RouterFlags,
    (tls, token): (Tls, Option<ClusterKeys>),
    stop: watch::Receiver<bool>,
    local: InProcess,
    registration: Option<RouterRegistration>,
) -> Result<()> {
    let InProcess {
        ready: extra,
        engines,
    } = local;
    let (listener, addr) = bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let mut opts = flags.options()?;
    let registered = match registration {
        Some(r) => {
            let advertise = advertised(r.advertise.as_ref(), addr, true)?;
            let member = Member {
                id: advertise.clone(),
                addr: advertise.clone(),
                role: Role::Router,
                model: String::new(),
                capacity: 0,
                tls_name: r.tls_name,
                issued_s: 0,
                sig: String::new(),
            };
            opts.self_id = advertise;
            Some(etcd::register(r.etcd, member, r.lease_ttl, token.clone()))
        }
        None => None,
    };
    let template = Arc::new(crate::judge_cmd::load_template(flags.template.as_ref())?);
    let grm = Pool::with_tls(
        Role::Grm,
        members.clone(),
        tls.client.clone(),
        token.clone(),
    );
    let meta = Pool::with_tls(
        Role::MetaRm,
        members.clone(),
        tls.client.clone(),
        token.clone(),
    );
    let aggregators = Pool::with_tls(
        Role::Aggregator,
        members.clone(),
        tls.client.clone(),
        token.clone(),
    );
    let routers = registered
        .is_some()
        .then(|| Pool::with_tls(Role::Router, members, tls.client, token));
    let local = Aggregator::new(Arc::clone(&template), Some(meta));
    let router = Router::new(template, grm, local, Some(aggregators), routers, opts);
    let mut line = json!({ "ready": "router", "grpc": addr.to_string() });
    let http = if http_listen.is_empty() {
        None
    } else {
        let (hl, haddr) = bind(http_listen)
            .await
            .with_context(|| format!("listening on {http_listen}"))?;
        line["http"] = json!(haddr.to_string());
        let app = http::app(
            router.clone(),
            HttpOptions {
                k: flags.http_k,
                max_new_tokens: flags.max_new_tokens,
            },
            engines,
        );
        Some(tokio::spawn(serve_http_gated(
            hl,
            app,
            http::gate(router.clone()),
            tls.http.clone(),
            flags.http.limits()?,
            wait(stop.clone()),
        )))
    };
    if let (Some(o), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    router.first_poll().await;
    ready(line);
    let stopping = router.clone();
    let leaving = registered;
    serve_grpc(
        listener,
        Services {
            router: Some(router),
            tls: tls.server,
            ..Default::default()
        },
        async move {
            wait(stop).await;
            // Leave the membership first, so that other routers stop sending groups here.
            if let Some(r) = leaving {
                r.deregister().await;
            }
            stopping.stop();
        },
    )
    .await?;
    if let Some(h) = http {
        h.await??;
    }
    Ok(())
}

pub fn router(a: RouterArgs) -> Result<()> {
    let tls = a.tls.load()?;
    let token = a.tls.cluster_token()?;
    let guarded = a.router.options()?.auth.is_some();
    if guarded && !a.tls.has_internal_credentials(token.as_ref()) {
        bail!(
            "--auth-token-file guards the public API, but this router would call the workers and aggregators without credentials, so anyone who reaches them could use them: give every node --cluster-token-file (the same token), or mutual TLS (--tls-cert, --tls-key and --tls-ca on every node, and --tls-client-auth on workers and aggregators)"
        );
    }
    let registration = if a.members.etcd.is_empty() {
        None
    } else {
        Some(RouterRegistration {
            etcd: etcd_endpoints(&a.members.etcd, &tls)?,
            advertise: a.advertise.clone(),
            tls_name: a.advertise_tls_name.clone(),
            lease_ttl: Duration::from_secs(a.lease_ttl_s.max(1)),
        })
    };
    runtime()?.block_on(async move {
        let members = a.members.members(&tls, token.as_ref()).await?;
        let stop = shutdown_signal();
        run_router(
            (&a.listen, &a.http_listen),
            members,
            &a.router,
            (tls, token),
            stop,
            InProcess::default(),
            registration,
        )
        .await
    })
}

/// The embedded default GRM (and meta RM) shipped with the repository, if present: under
/// `$GRM_MODELS` when set, else the first `models/` found above the executable (a copied
/// checkout or an installed tree), else the source tree this binary was built from.
pub fn embedded_models() -> (Option<PathBuf>, Option<PathBuf>) {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let beside_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .map(|d| d.join("models"))
            .find(|m| m.join("grm/config.json").exists())
    });
    let root = match std::env::var_os("GRM_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => beside_exe.unwrap_or(built_from),
    };
    let grm = root.join("grm");
    let meta = root.join("meta-rm");
    (
        grm.join("config.json").exists().then_some(grm),
        meta.join("config.json").exists().then_some(meta),
    )
}

/// Serves `workers` (in-process engines) each on a loopback port of its own, guarded by
/// `token`, until `stop`; returns their member entries and server tasks. The router reaches
/// them over gRPC exactly as in a cluster.
async fn serve_in_process(
    workers: Vec<Worker>,
    token: &ClusterKeys,
    stop: watch::Receiver<bool>,
) -> Result<(Vec<Member>, Vec<ServerTask>)> {
    let mut list = Vec::new();
    let mut tasks = Vec::new();
    for w in workers {
        let (l, addr) = bind("127.0.0.1:0").await?;
        list.push(Member {
            id: addr.to_string(),
            addr: addr.to_string(),
            role: w.role(),
            model: String::new(),
            capacity: 0,
            tls_name: String::new(),
            issued_s: 0,
            sig: String::new(),
        });
        let services = Services {
            worker: Some(w),
            cluster_keys: Some(token.clone()),
            member_id: addr.to_string(),
            ..Default::default()
        };
        tasks.push(tokio::spawn(serve_grpc(l, services, wait(stop.clone()))));
    }
    Ok((list, tasks))
}

type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// An all-in-one cluster inside this process, for `grm score --model`: workers on loopback
/// ports, a router in-process.
pub async fn local_router(
    model: &Path,
    meta_model: Option<&Path>,
    engine: &EngineFlags,
    template: Option<&PathBuf>,
    opts: RouterOptions,
) -> Result<Router> {
    let budget = KvBudget::shared(engine, meta_model.is_some());
    let mut workers = Vec::new();
    for (dir, role, share) in [
        (Some(model), Role::Grm, budget.grm),
        (meta_model, Role::MetaRm, budget.meta),
    ] {
        let Some(dir) = dir else { continue };
        let (e, t) = engine.start(dir, share)?;
        workers.push(
            Worker::new(e, t, worker_options(model_name(dir, None), role))
                .with_chat_template(ChatTemplate::for_model(dir)?),
        );
    }
    let token = ClusterKeys::random();
    // Nobody stops these: they live as long as the command.
    let (stop_tx, stop) = watch::channel(false);
    std::mem::forget(stop_tx);
    let (list, _tasks) = serve_in_process(workers, &token, stop).await?;
    let members = members::fixed(list);
    let template = Arc::new(crate::judge_cmd::load_template(template)?);
    let meta = Pool::with_tls(Role::MetaRm, members.clone(), None, Some(token.clone()));
    let local = Aggregator::new(Arc::clone(&template), Some(meta));
    let opts = RouterOptions {
        model_name: model_name(model, None),
        ..opts
    };
    Ok(Router::new(
        template,
        Pool::with_tls(Role::Grm, members, None, Some(token)),
        local,
        None,
        None,
        opts,
    ))
}

fn worker_options(model_name: String, role: Role) -> WorkerOptions {
    WorkerOptions {
        model_name,
        role,
        max_queued_tokens: 1 << 20,
        progress_interval: grm_cluster::worker::PROGRESS_INTERVAL,
    }
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let (default_grm, default_meta) = embedded_models();
    let Some(model) = a.model.clone().or(default_grm.clone()) else {
        bail!("--model is not given and no embedded model is shipped in models/grm");
    };
    let meta_model = a.meta_model.clone().or(if a.model.is_none() {
        default_meta
    } else {
        None
    });
    let budget = KvBudget::shared(&a.engine, meta_model.is_some());
    let (engine, tokenizer) = a.engine.start(&model, budget.grm)?;
    let name = if a.router.model_name.is_empty() {
        model_name(&model, None)
    } else {
        a.router.model_name.clone()
    };
    let mut workers = vec![
        Worker::new(engine, tokenizer, worker_options(name.clone(), Role::Grm))
            .with_chat_template(ChatTemplate::for_model(&model)?),
    ];
    if let Some(dir) = &meta_model {
        let (engine, tokenizer) = a.engine.start(dir, budget.meta)?;
        if !matches!(engine.info.config.head, Head::SequenceClassification { .. }) {
            bail!(
                "--meta-model {} is not a sequence-classification model",
                dir.display()
            );
        }
        workers.push(Worker::new(
            engine,
            tokenizer,
            worker_options(model_name(dir, None), Role::MetaRm),
        ));
    }
    let mut flags = a.router.clone();
    flags.model_name = name.clone();
    runtime()?.block_on(async move {
        let stop = shutdown_signal();
        // The workers stop after the router: its requests in flight still need them.
        let (workers_stop_tx, workers_stop) = watch::channel(false);
        let engines: Vec<(&'static str, Engine)> = workers
            .iter()
            .map(|w| (w.role().as_str(), w.engine().clone()))
            .collect();
        let kv_mib: Vec<serde_json::Value> = workers
            .iter()
            .map(|w| json!({ "role": w.role().as_str(), "kv_blocks": w.engine().info.num_blocks, "kv_mib": w.engine().info.kv_bytes >> 20 }))
            .collect();
        // The in-process workers' ports are loopback only, and guarded by a token made for
        // this process alone: nothing but this router can use them.
        let token = ClusterKeys::random();
        let (list, tasks) = serve_in_process(workers, &token, workers_stop).await?;
        let internal: Vec<&str> = list.iter().map(|m| m.addr.as_str()).collect();
        let extra = json!({
            "model": model.display().to_string(),
            "meta_model": meta_model.as_ref().map(|p| p.display().to_string()),
            "internal": internal,
            "engines": kv_mib,
        });
        // The public endpoint serves TLS as asked; the in-process workers are plaintext loopback.
        let tls = Tls { client: None, ..a.tls.load()? };
        let local = InProcess { ready: extra, engines };
        let served = run_router((&a.listen, &a.http_listen), members::fixed(list), &flags, (tls, Some(token)), stop, local, None).await;
        let _ = workers_stop_tx.send(true);
        served?;
        for t in tasks {
            t.await??;
        }
        Ok(())
    })
}
