//! Where the offline commands (`grm label`, `grm eval`, `grm spct`) send their requests: a
//! running router (`--addr`, over `ScoreStream`) or a cluster started inside this process
//! (`--model`). Either way, requests go in and answers come out as they finish, with at most
//! `concurrency` in flight; a failed request is answered in band (`ScoreResponse.error`).

use crate::serve_cmd::{local_router, EngineFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use grm_cluster::auth::BearerToken;
use grm_cluster::router::Router;
use grm_proto::v1::reward_service_client::RewardServiceClient;
use grm_proto::v1::{ScoreError, ScoreRequest, ScoreResponse};
use prost::Message as _;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// `--addr`, or `--model` (with `--meta-model`, `--template` and the engine's flags).
#[derive(Args, Debug, Clone)]
pub struct ScorerFlags {
    /// A router's gRPC address (host:port).
    #[arg(long, env = "GRM_ADDR")]
    pub addr: Option<String>,
    /// Run in-process with this GRM model (default: the embedded model).
    #[arg(long, conflicts_with = "addr")]
    pub model: Option<PathBuf>,
    /// A meta-RM model, in-process.
    #[arg(long, conflicts_with = "addr")]
    pub meta_model: Option<PathBuf>,
    /// A prompt template (TOML), in-process; with --addr the server's template is used.
    #[arg(long, env = "GRM_TEMPLATE")]
    pub template: Option<PathBuf>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// With --addr: a file holding the router's bearer token (or the GRM_TOKEN environment
    /// variable).
    #[arg(long, env = "GRM_TOKEN_FILE", conflicts_with = "model")]
    pub token_file: Option<PathBuf>,
    /// With --addr: TLS to the router (--tls-ca to verify it; --tls-cert/--tls-key when it
    /// requires client certificates).
    #[command(flatten)]
    pub tls: crate::serve_cmd::TlsFlags,
    #[command(flatten)]
    pub engine: EngineFlags,
}

#[derive(Clone)]
pub enum Scorer {
    /// A router, and the `authorization` value its calls carry.
    Remote(RewardServiceClient<Channel>, Option<MetadataValue<Ascii>>),
    Local(Router),
}

/// A call carrying the bearer token, when there is one.
fn authorized<T>(message: T, auth: &Option<MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(v) = auth {
        r.metadata_mut().insert("authorization", v.clone());
    }
    r
}

fn error_response(id: String, s: tonic::Status) -> ScoreResponse {
    ScoreResponse {
        id,
        error: Some(ScoreError {
            code: s.code() as i32,
            message: s.message().to_string(),
        }),
        ..Default::default()
    }
}

impl Scorer {
    pub async fn connect(f: &ScorerFlags) -> Result<Scorer> {
        if let Some(addr) = &f.addr {
            let tls = f.tls.load()?.client;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let uri = if addr.contains("://") {
                addr.clone()
            } else {
                format!("{scheme}://{addr}")
            };
            let mut endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
                .with_context(|| format!("--addr {uri}"))?;
            if let Some(t) = tls {
                endpoint = endpoint.tls_config(t)?;
            }
            let channel = endpoint
                .connect()
                .await
                .with_context(|| format!("connecting to {uri}"))?;
            let c = RewardServiceClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let token = BearerToken::from_file_or_env(f.token_file.as_deref(), "GRM_TOKEN")?;
            let header = token
                .map(|t| t.header_value().parse())
                .transpose()
                .context("the token must be printable ASCII")?;
            return Ok(Scorer::Remote(c, header));
        }
        let (default, default_meta) = crate::serve_cmd::embedded_models();
        let Some(model) = f.model.clone().or(default) else {
            bail!(
                "give --addr of a router, or --model (no embedded model is shipped in models/grm)"
            );
        };
        let meta = f.meta_model.clone().or(if f.model.is_none() {
            default_meta
        } else {
            None
        });
        let opts = grm_cluster::router::RouterOptions {
            max_inflight: 1 << 20,
            ..Default::default()
        };
        let router = local_router(
            &model,
            meta.as_deref(),
            &f.engine,
            f.template.as_ref(),
            opts,
        )
        .await?;
        Ok(Scorer::Local(router))
    }

    /// One request.
    pub async fn score(&self, req: ScoreRequest) -> ScoreResponse {
        let id = req.id.clone();
        let r = match self {
            Scorer::Remote(c, auth) => c
                .clone()
                .score(authorized(req, auth))
                .await
                .map(|r| r.into_inner()),
            Scorer::Local(router) => {
                let len = req.encoded_len();
                router.score(req, len, None, &Default::default()).await
            }
        };
        r.unwrap_or_else(|s| error_response(id, s))
    }

    /// Scores everything `input` yields, at most `concurrency` at a time; answers arrive on
    /// the returned channel as they finish (ids tie them to their requests).
    pub fn score_all(
        &self,
        mut input: mpsc::Receiver<ScoreRequest>,
        concurrency: usize,
    ) -> mpsc::Receiver<ScoreResponse> {
        let (tx, rx) = mpsc::channel(concurrency.max(1) * 2);
        let sem = Arc::new(Semaphore::new(concurrency.max(1)));
        match self.clone() {
            Scorer::Local(router) => {
                tokio::spawn(async move {
                    while let Some(req) = input.recv().await {
                        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
                            break;
                        };
                        let (router, tx) = (router.clone(), tx.clone());
                        tokio::spawn(async move {
                            let id = req.id.clone();
                            let len = req.encoded_len();
                            let r = router
                                .score(req, len, None, &Default::default())
                                .await
                                .unwrap_or_else(|s| error_response(id, s));
                            let _ = tx.send(r).await;
                            drop(permit);
                        });
                    }
                });
            }
            Scorer::Remote(client, auth) => {
                tokio::spawn(async move {
                    // Requests enter the stream only while fewer than `concurrency` await answers.
                    let (req_tx, req_rx) = mpsc::channel::<ScoreRequest>(1);
                    let feeder_sem = Arc::clone(&sem);
                    tokio::spawn(async move {
                        while let Some(req) = input.recv().await {
                            let Ok(p) = Arc::clone(&feeder_sem).acquire_owned().await else {
                                break;
                            };
                            p.forget();
                            if req_tx.send(req).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut client = client;
                    let stream = tokio_stream::wrappers::ReceiverStream::new(req_rx);
                    let mut answers = match client.score_stream(authorized(stream, &auth)).await {
                        Ok(r) => r.into_inner(),
                        Err(s) => {
                            let _ = tx.send(error_response(String::new(), s)).await;
                            return;
                        }
                    };
                    loop {
                        match answers.message().await {
                            Ok(Some(r)) => {
                                sem.add_permits(1);
                                if tx.send(r).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => return,
                            Err(s) => {
                                let _ = tx.send(error_response(String::new(), s)).await;
                                return;
                            }
                        }
                    }
                });
            }
        }
        rx
    }
}
