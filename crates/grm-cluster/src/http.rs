//! The HTTP side: OpenRLHF's remote reward-model protocol (`POST /get_reward`), a health
//! check (`GET /health`) and Prometheus metrics (`GET /metrics`, on routers and, with
//! `--metrics-listen`, on workers).
//!
//! `/get_reward` takes `{"query": [...], "prompts": [...], "labels": [...]}` where each query is
//! its prompt followed by the policy's response. Entries that share a prompt are judged
//! together, as the responses of one request (up to --max-responses at a time; a GRPO group
//! is scored in one go), with the prompt text as the user's turn. Labels are accepted and
//! ignored: a GRM needs none. The answer is `{"rewards": [...], "scores": [...],
//! "extra_logs": {...}}` with, per entry, `scores` = the mean score (1..10) over the counted
//! judgements and `rewards` = (mean − 1) / 9, in [0, 1]; an entry none of whose judgements
//! was valid gets reward 0 and score 0, and is counted in `extra_logs.unscored`.

use crate::metrics::{render_engine, Exposition};
use crate::router::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures::StreamExt;
use grm_engine::{Engine, EngineStats};
use grm_proto::v1::{Message, Sampling, ScoreRequest};
use prost::Message as _;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;

/// Score calls one `/get_reward` request keeps in flight at once.
const BATCHES_IN_FLIGHT: usize = 32;

/// Defaults for `/get_reward` requests, overridable per call with `?k=&k_meta=`.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    pub k: u32,
    pub max_new_tokens: u32,
}

#[derive(Clone)]
struct AppState {
    router: Router,
    opts: HttpOptions,
    engines: Vec<(&'static str, Engine)>,
}

/// The router's HTTP app; `engines` are in-process workers (by role) whose engine metrics
/// `/metrics` adds to the router's.
pub fn app(
    router: Router,
    opts: HttpOptions,
    engines: Vec<(&'static str, Engine)>,
) -> axum::Router {
    axum::Router::new()
        .route("/get_reward", post(get_reward))
        .route("/health", get(health))
        .route("/metrics", get(router_metrics))
        // The listener reads bodies within its own size and time limits (http_server).
        .layer(DefaultBodyLimit::disable())
        .with_state(AppState {
            router,
            opts,
            engines,
        })
}

/// A worker's metrics endpoint (`--metrics-listen`): its engine's state and counters.
pub fn engine_metrics_app(role: &'static str, engine: Engine) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let engine = engine.clone();
            async move {
                let mut out = Exposition::default();
                render_engine(&mut out, &[(role, engine.stats())]);
                prometheus_text(out.finish())
            }
        }),
    )
}

/// An aggregator's `/metrics`.
pub fn aggregator_metrics_app(agg: crate::aggregator::Aggregator) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let agg = agg.clone();
            async move { prometheus_text(agg.render_metrics()) }
        }),
    )
}

async fn router_metrics(State(s): State<AppState>) -> Response {
    let engines: Vec<(&str, EngineStats)> = s
        .engines
        .iter()
        .map(|(role, e)| (*role, e.stats()))
        .collect();
    prometheus_text(s.router.render_metrics(&engines))
}

fn prometheus_text(body: String) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct RewardBody {
    query: Vec<String>,
    #[serde(default)]
    prompts: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RewardParams {
    k: Option<u32>,
    k_meta: Option<u32>,
    seed: Option<u64>,
}

use crate::http_server::json_error as error;

async fn health(State(s): State<AppState>) -> Response {
    let (grm, meta, aggregators) = s.router.members_seen();
    if grm == 0 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no GRM worker is live".into(),
        );
    }
    Json(json!({ "status": "ok", "grm_workers": grm, "meta_workers": meta, "aggregators": aggregators })).into_response()
}

async fn get_reward(
    State(s): State<AppState>,
    params: Result<Query<RewardParams>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let p = match params {
        Ok(Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query string: {}", e.body_text())),
    };
    if let Some(t) = s.router.auth() {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !t.accepts(header) {
            return error(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required (header `Authorization: Bearer <token>`)".into(),
            );
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let b: RewardBody = match serde_path_to_error::deserialize(de) {
        Ok(b) => b,
        Err(e) => {
            let path = e.path().to_string();
            return error(
                StatusCode::BAD_REQUEST,
                format!("body field `{path}`: {}", e.inner()),
            );
        }
    };
    if b.query.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "query is empty: give at least one prompt + response".into(),
        );
    }
    if b.prompts.len() != b.query.len() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "prompts has {} entries but query has {}; give one prompt per query",
                b.prompts.len(),
                b.query.len()
            ),
        );
    }
    let mut responses = Vec::with_capacity(b.query.len());
    for (i, (q, pr)) in b.query.iter().zip(&b.prompts).enumerate() {
        match q.strip_prefix(pr.as_str()) {
            Some(r) => responses.push(r.to_string()),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("query[{i}] does not start with prompts[{i}]"),
                )
            }
        }
    }
    // Group entries by prompt, in order of first appearance, cut at --max-responses.
    let max = s.router.limits().max_responses.max(1);
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, pr) in b.prompts.iter().enumerate() {
        let g = groups.entry(pr.as_str()).or_default();
        if g.is_empty() {
            order.push(pr.as_str());
        }
        g.push(i);
    }
    let mut batches: Vec<(&str, Vec<usize>)> = Vec::new();
    for pr in order {
        for part in groups[pr].chunks(max) {
            batches.push((pr, part.to_vec()));
        }
    }
    let k = p.k.unwrap_or(s.opts.k);
    let requests: Vec<ScoreRequest> = batches
        .iter()
        .enumerate()
        .map(|(bi, (prompt, idx))| ScoreRequest {
            id: format!("get_reward-{bi}"),
            conversation: vec![Message {
                role: "user".into(),
                content: prompt.to_string(),
            }],
            responses: idx.iter().map(|&i| responses[i].clone()).collect(),
            sampling: Some(Sampling {
                k,
                k_meta: p.k_meta,
                max_new_tokens: s.opts.max_new_tokens,
                seed: p.seed,
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let router = s.router.clone();
    let calls = requests.into_iter().map(move |req| {
        let router = router.clone();
        async move {
            let len = req.encoded_len();
            router.score(req, len, None).await
        }
    });
    // A bounded number at a time: one large call must not take every --max-inflight permit
    // (and be refused with 429 while its own earlier batches still run).
    let results: Vec<_> = futures::stream::iter(calls)
        .buffered(BATCHES_IN_FLIGHT)
        .collect()
        .await;
    let n = b.query.len();
    let (mut rewards, mut scores, mut votes) = (vec![0f64; n], vec![0f64; n], vec![0u32; n]);
    let mut unscored = 0;
    for ((_, idx), r) in batches.iter().zip(results) {
        let resp = match r {
            Ok(r) => r,
            Err(st) => {
                let code = match st.code() {
                    tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                    tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                    tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                return error(code, st.message().to_string());
            }
        };
        if resp.rewards.len() != idx.len() {
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "the cluster answered {} rewards for {} responses",
                    resp.rewards.len(),
                    idx.len()
                ),
            );
        }
        for (&i, rr) in idx.iter().zip(&resp.rewards) {
            votes[i] = rr.votes;
            if rr.votes == 0 {
                unscored += 1;
                continue;
            }
            scores[i] = rr.mean_score;
            rewards[i] = (rr.mean_score - 1.0) / 9.0;
        }
    }
    Json(json!({
        "rewards": rewards,
        "scores": scores,
        "extra_logs": { "votes": votes, "unscored": unscored, "k": k },
    }))
    .into_response()
}
