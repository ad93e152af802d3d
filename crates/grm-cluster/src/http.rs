//! The HTTP side: OpenRLHF's remote reward-model protocol (`POST /get_reward`, see
//! `get_reward`), a health check (`GET /health`) and Prometheus metrics (`GET /metrics`, on
//! routers and, with `--metrics-listen`, on workers and aggregators).

use crate::get_reward::RewardParams;
use crate::http_server::json_error as error;
use crate::metrics::{encode, engine_registry, wants_openmetrics, Scrape};
use crate::router::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use grm_engine::{Engine, EngineStats};
use serde_json::json;

/// Defaults for `/get_reward` requests, overridable per call with `?k=&k_meta=`.
pub use crate::get_reward::Defaults as HttpOptions;

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
        .route(
            "/v1/chat/completions",
            post(|State(s): State<AppState>, body: Bytes| {
                crate::openai::chat_completions(s.router, body)
            }),
        )
        .route(
            "/v1/completions",
            post(|State(s): State<AppState>, body: Bytes| {
                crate::openai::completions(s.router, body)
            }),
        )
        .route(
            "/v1/models",
            get(|State(s): State<AppState>| crate::openai::models(s.router)),
        )
        .route(
            "/v1/rewards",
            post(
                |State(s): State<AppState>, headers: HeaderMap, body: Bytes| {
                    crate::openai::rewards(s.router, headers, body)
                },
            ),
        )
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
        get(move |headers: HeaderMap| {
            let engine = engine.clone();
            async move {
                let r = engine_registry(vec![(role, engine.stats())]);
                scraped(encode(&[&r], openmetrics(&headers)))
            }
        }),
    )
}

/// An aggregator's `/metrics`.
pub fn aggregator_metrics_app(agg: crate::aggregator::Aggregator) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let agg = agg.clone();
            async move { scraped(agg.scrape(openmetrics(&headers))) }
        }),
    )
}

async fn router_metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let engines: Vec<(&'static str, EngineStats)> = s
        .engines
        .iter()
        .map(|(role, e)| (*role, e.stats()))
        .collect();
    scraped(s.router.scrape(engines, openmetrics(&headers)))
}

/// Whether the scraper asked for OpenMetrics (content negotiation on `Accept`).
fn openmetrics(headers: &HeaderMap) -> bool {
    wants_openmetrics(
        headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    )
}

fn scraped(s: Scrape) -> Response {
    ([(axum::http::header::CONTENT_TYPE, s.content_type)], s.body).into_response()
}

async fn health(State(s): State<AppState>) -> Response {
    // GRM workers count when they answered their last load poll (every 0.5 s), not merely
    // when registered: a member that is listed but does not answer serves nobody.
    let (grm, meta, aggregators) = s.router.members_seen();
    if grm == 0 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no GRM worker answers".into(),
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
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("query string: {}", e.body_text()),
            )
        }
    };
    if let Some(refused) = unauthorized(&s.router, &headers) {
        return refused;
    }
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    crate::get_reward::get_reward(&s.router, s.opts, p, &body, authorization).await
}

/// A 401 when the router takes tokens and `headers` carry none of them.
fn unauthorized(router: &Router, headers: &HeaderMap) -> Option<Response> {
    let t = router.auth()?;
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    (!crate::auth::Credential::accepts(t, presented)).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (header `Authorization: Bearer <token>`)".into(),
        )
    })
}

/// The router listener's gate (see `http_server::Gate`): with tokens, every route but
/// `/health` and `/metrics` needs one, checked on the request's head, before a byte of its
/// body is read.
pub fn gate(router: Router) -> Option<crate::http_server::Gate> {
    router.auth()?;
    Some(std::sync::Arc::new(
        move |parts: &axum::http::request::Parts| {
            if matches!(parts.uri.path(), "/health" | "/metrics") {
                return None;
            }
            unauthorized(&router, &parts.headers)
        },
    ))
}
