//! The OpenAI-compatible API on the router's HTTP listener: `POST /v1/chat/completions`,
//! `POST /v1/completions`, `GET /v1/models`, and `POST /v1/rewards` (the voted rewards of
//! `Score`, as JSON). Generation goes through the same dispatch as a GRM request's
//! judgements: the n samples of a prompt share its KV blocks on a worker and spread over
//! workers in chunks, a failed worker's unfinished samples run again elsewhere (their text, in
//! a stream, is not repeated: sampling is seeded). Unknown fields are ignored, as OpenAI's
//! clients expect; fields this server cannot honour (tools, images, penalties) are refused
//! with OpenAI's error shape naming them.

use crate::dispatch::{self, Generated, Generation, Prompt, Sampling};
use crate::router::{Caller, Router};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use grm_judge::rng::{derive, Stream};
use grm_proto::v1::{ChatMessage, Message, Sampling as ScoreSampling, ScoreRequest, TokenDelta};
use prost::Message as _;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tonic::{Code, Status};
use tracing::Instrument;

/// How long a /v1 request may run (it has no deadline field of its own).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// OpenAI's error shape.
fn error(status: StatusCode, message: impl Into<String>, param: Option<&str>) -> Response {
    let kind = match status {
        StatusCode::BAD_REQUEST => "invalid_request_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        _ => "server_error",
    };
    (
        status,
        Json(json!({ "error": {
            "message": message.into(),
            "type": kind,
            "param": param,
            "code": null,
        }})),
    )
        .into_response()
}

fn bad(param: &str, message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message, Some(param))
}

fn http_status(s: &Status) -> StatusCode {
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn from_status(s: &Status) -> Response {
    error(http_status(s), s.message(), None)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // Without an OS random source the process could not have started.
    getrandom::fill(&mut b).expect("the OS random source");
    u64::from_le_bytes(b)
}

/// A request body's fields, read with errors that name the field.
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8]) -> Result<Self, Response> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(Self(m)),
            Ok(_) => Err(bad("body", "the body must be a JSON object")),
            Err(e) => Err(bad("body", format!("the body is not valid JSON: {e}"))),
        }
    }

    /// The field, treating `null` as absent (OpenAI's clients send explicit nulls).
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn f32_in(&self, name: &str, default: f32, lo: f32, hi: f32) -> Result<f32, Response> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x >= lo as f64 && x <= hi as f64 => Ok(x as f32),
                _ => Err(bad(
                    name,
                    format!("{name} must be a number in [{lo}, {hi}]"),
                )),
            },
        }
    }

    fn uint_in(&self, name: &str, lo: u64, hi: u64) -> Result<Option<u64>, Response> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x >= lo && x <= hi => Ok(Some(x)),
                _ => Err(bad(
                    name,
                    format!("{name} must be an integer in [{lo}, {hi}]"),
                )),
            },
        }
    }

    fn bool(&self, name: &str) -> Result<bool, Response> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(bad(name, format!("{name} must be true or false"))),
        }
    }

    /// Fields this server cannot honour: refused by name, unless given their neutral value.
    fn refuse_unsupported(&self) -> Result<(), Response> {
        let present = |n: &str| self.get(n);
        for name in ["tools", "functions"] {
            if present(name).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
                return Err(bad(
                    name,
                    format!("{name} is not supported: this server generates text only"),
                ));
            }
        }
        for name in ["tool_choice", "function_call"] {
            if present(name).is_some_and(|v| v != "none") {
                return Err(bad(
                    name,
                    format!("{name} is not supported: this server generates text only"),
                ));
            }
        }
        if let Some(f) = present("response_format") {
            if f.get("type").and_then(Value::as_str) != Some("text") {
                return Err(bad(
                    "response_format",
                    "only response_format {\"type\": \"text\"} is supported",
                ));
            }
        }
        if present("logit_bias").is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty())) {
            return Err(bad("logit_bias", "logit_bias is not supported"));
        }
        for name in ["presence_penalty", "frequency_penalty"] {
            if present(name).is_some_and(|v| v.as_f64() != Some(0.0)) {
                return Err(bad(name, format!("{name} is not supported (only 0)")));
            }
        }
        for name in ["audio", "prediction", "web_search_options", "suffix"] {
            if present(name).is_some() {
                return Err(bad(name, format!("{name} is not supported")));
            }
        }
        if present("modalities").is_some_and(|v| v != &json!(["text"])) {
            return Err(bad("modalities", "only the text modality is supported"));
        }
        if present("echo").is_some_and(|v| v != &Value::Bool(false)) {
            return Err(bad("echo", "echo is not supported"));
        }
        Ok(())
    }
}

/// What both generation endpoints take.
struct Params {
    model: String,
    n: usize,
    temperature: f32,
    top_p: f32,
    max_tokens: u32,
    /// No max_tokens given: as much as the context leaves (up to the router's limit).
    fit_context: bool,
    seed: u64,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    /// `Some(n)`: log-probabilities with n alternatives.
    logprobs: Option<u32>,
}

async fn served_model(router: &Router, asked: Option<&str>) -> Result<String, Response> {
    let names = router.grm_pool().model_names(Duration::from_secs(2)).await;
    match asked {
        Some(m) if names.iter().any(|n| n == m) => Ok(m.to_string()),
        Some(m) => Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "The model `{m}` does not exist (served: {})",
                names.join(", ")
            ),
            Some("model"),
        )),
        // Like vLLM: the one served model when none is named.
        None => names.into_iter().next().ok_or_else(|| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no GRM worker answers",
                None,
            )
        }),
    }
}

async fn params(router: &Router, b: &Body, chat: bool) -> Result<Params, Response> {
    b.refuse_unsupported()?;
    let limits = router.limits();
    let model = match b.get("model") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(bad("model", "model must be a string")),
    };
    let model = served_model(router, model).await?;
    let n = b.uint_in("n", 1, limits.max_k as u64)?.unwrap_or(1) as usize;
    if let Some(best_of) = b.uint_in("best_of", 1, limits.max_k as u64)? {
        if best_of as usize != n {
            return Err(bad("best_of", "best_of other than n is not supported"));
        }
    }
    let temperature = b.f32_in("temperature", 1.0, 0.0, 2.0)?;
    let top_p = b.f32_in("top_p", 1.0, f32::MIN_POSITIVE, 1.0)?;
    let max = limits.max_new_tokens as u64;
    let (max_tokens, fit_context) = match (
        b.uint_in("max_completion_tokens", 1, max)?,
        b.uint_in("max_tokens", 1, max)?,
    ) {
        (Some(m), _) | (None, Some(m)) => (m as u32, false),
        (None, None) => (limits.max_new_tokens, true),
    };
    let seed = match b.get("seed") {
        None => random_u64(),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(u), _) => u,
            (None, Some(i)) => i as u64,
            _ => return Err(bad("seed", "seed must be an integer")),
        },
    };
    let stop = match b.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 16 => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("stop", "stop must be a string or a list of strings"))?,
        Some(_) => {
            return Err(bad(
                "stop",
                "stop must be a string or a list of up to 16 strings",
            ))
        }
    };
    let stream = b.bool("stream")?;
    let include_usage = match b.get("stream_options") {
        None => false,
        Some(o) => o
            .get("include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let max_top = grm_engine::logprobs::MAX_TOP as u64;
    let logprobs = if chat {
        let on = b.bool("logprobs")?;
        let top = b.uint_in("top_logprobs", 0, max_top)?;
        if top.is_some() && !on {
            return Err(bad("top_logprobs", "top_logprobs needs logprobs: true"));
        }
        on.then_some(top.unwrap_or(0) as u32)
    } else {
        b.uint_in("logprobs", 0, max_top)?.map(|n| n as u32)
    };
    Ok(Params {
        model,
        n,
        temperature,
        top_p,
        max_tokens,
        fit_context,
        seed,
        stop,
        stream,
        include_usage,
        logprobs,
    })
}

/// A chat request's turns, checked: roles system (or developer), user, assistant; text
/// content only.
fn messages(b: &Body) -> Result<Vec<ChatMessage>, Response> {
    let Some(Value::Array(list)) = b.get("messages") else {
        return Err(bad(
            "messages",
            "messages must be a non-empty list of {role, content}",
        ));
    };
    if list.is_empty() {
        return Err(bad(
            "messages",
            "messages must be a non-empty list of {role, content}",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let field = |f: &str| format!("messages[{i}].{f}");
        let role = match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => "system",
            Some("user") => "user",
            Some("assistant") => "assistant",
            Some(r) => {
                return Err(bad(
                    &field("role"),
                    format!("role `{r}` is not supported (system, developer, user, assistant)"),
                ))
            }
            None => return Err(bad(&field("role"), "each message needs a role")),
        };
        if m.get("tool_calls").is_some_and(|v| !v.is_null()) {
            return Err(bad(&field("tool_calls"), "tool calls are not supported"));
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(bad(
                                &format!("messages[{i}].content[{j}]"),
                                format!(
                                    "content of type `{}` is not supported: text only",
                                    kind.unwrap_or("?")
                                ),
                            ))
                        }
                    }
                }
                text
            }
            None | Some(Value::Null) if role == "assistant" => String::new(),
            _ => {
                return Err(bad(
                    &field("content"),
                    "content must be a string or a list of text parts",
                ))
            }
        };
        out.push(ChatMessage {
            role: role.into(),
            content,
        });
    }
    Ok(out)
}

/// What a stream's generation task sends the response.
enum Msg {
    Delta(usize, TokenDelta),
    Done(usize, Generated),
    End(Result<dispatch::Outcome, Status>),
}

/// The kind of endpoint: decides the JSON shapes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "chat_completions",
            Kind::Completion => "completions",
        }
    }
}

fn bytes_list(b: &[u8]) -> Value {
    Value::Array(b.iter().map(|&x| json!(x)).collect())
}

fn chat_logprobs(lp: &[grm_proto::v1::TokenLogprob]) -> Value {
    json!({ "content": lp.iter().map(|t| json!({
        "token": t.token,
        "logprob": t.logprob,
        "bytes": bytes_list(&t.bytes),
        "top_logprobs": t.top.iter().map(|a| json!({
            "token": a.token, "logprob": a.logprob, "bytes": bytes_list(&a.bytes),
        })).collect::<Vec<_>>(),
    })).collect::<Vec<_>>() })
}

/// The legacy completions form; `offset`: where this piece's text starts in the choice's text.
fn completion_logprobs(lp: &[grm_proto::v1::TokenLogprob], mut offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(lp.len());
    for t in lp {
        text_offset.push(offset);
        offset += t.token.len();
    }
    json!({
        "tokens": lp.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lp.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": lp.iter().map(|t| {
            let m: Map<String, Value> = t.top.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect();
            Value::Object(m)
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

fn usage(prompt: u64, cached: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

/// Prompt tokens (once per prompt, as OpenAI counts them) and of those cached, from what the
/// dispatch saw of each prompt's first prefill.
fn prompt_usage(out: &dispatch::Outcome, prompts: usize) -> (u64, u64) {
    match out.first_prefill {
        Some((p, c)) if prompts == 1 => (p, c),
        // Several prompts: the sum of their own counts is not kept; the per-judgement total
        // divided back.
        _ => {
            let per = out.judgements.len().max(1) as u64 / prompts.max(1) as u64;
            (out.prompt_tokens / per.max(1), 0)
        }
    }
}

/// A generation request, set up: prompts, which prompt each choice continues, and the chat
/// turns when a chat request.
struct Job {
    kind: Kind,
    id: String,
    params: Params,
    prompts: Vec<Prompt>,
    prompt_of: Vec<usize>,
    messages: Vec<ChatMessage>,
    affinity: u64,
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(router: Router, body: Bytes) -> Response {
    serve(router, body, Kind::Chat).await
}

/// `POST /v1/completions`: `prompt` a string or a list of strings (each gets n choices, in
/// order); special tokens in it are read as such, and `<bos>` put first when missing.
pub async fn completions(router: Router, body: Bytes) -> Response {
    serve(router, body, Kind::Completion).await
}

async fn serve(router: Router, body: Bytes, kind: Kind) -> Response {
    let start = Instant::now();
    let job = match Body::parse(&body) {
        Ok(b) => match kind {
            Kind::Chat => chat_job(&router, &b).await,
            Kind::Completion => completion_job(&router, &b).await,
        },
        Err(r) => Err(r),
    };
    match job {
        Ok(job) => run(router, job, start).await,
        Err(r) => counted(&router, kind.endpoint(), start, r),
    }
}

async fn chat_job(router: &Router, b: &Body) -> Result<Job, Response> {
    let params = params(router, b, true).await?;
    let messages = messages(b)?;
    let parts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    let affinity = crate::chunking::affinity_key(&parts);
    // The prompt's text only sizes the work: the worker renders the turns itself.
    let text: String = parts.concat();
    Ok(Job {
        kind: Kind::Chat,
        id: format!("chatcmpl-{:016x}", random_u64()),
        prompts: vec![Prompt {
            text,
            client: Vec::new(),
        }],
        prompt_of: vec![0; params.n],
        params,
        messages,
        affinity,
    })
}

async fn completion_job(router: &Router, b: &Body) -> Result<Job, Response> {
    let params = params(router, b, false).await?;
    let texts: Vec<String> = match b.get("prompt") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        _ => return Err(bad(
            "prompt",
            "prompt must be a string or a non-empty list of strings (token ids are not supported)",
        )),
    };
    let max_k = router.limits().max_k;
    if texts.len() * params.n > max_k {
        return Err(bad(
            "n",
            format!(
                "{} prompts × n = {} choices; the limit is {max_k}",
                texts.len(),
                texts.len() * params.n
            ),
        ));
    }
    let parts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let affinity = crate::chunking::affinity_key(&parts);
    let prompts: Vec<Prompt> = texts
        .iter()
        .map(|t| Prompt {
            text: t.clone(),
            client: Vec::new(),
        })
        .collect();
    let prompt_of = (0..prompts.len())
        .flat_map(|p| std::iter::repeat_n(p, params.n))
        .collect();
    Ok(Job {
        kind: Kind::Completion,
        id: format!("cmpl-{:016x}", random_u64()),
        prompts,
        prompt_of,
        params,
        messages: Vec::new(),
        affinity,
    })
}

fn counted(router: &Router, endpoint: &str, start: Instant, r: Response) -> Response {
    router
        .metrics()
        .openai(endpoint, r.status().as_u16(), start.elapsed().as_secs_f64());
    r
}

async fn run(router: Router, job: Job, start: Instant) -> Response {
    // One trace per request, its chunks' spans (and the workers') beneath it.
    let span = tracing::info_span!(
        "grm.openai",
        endpoint = job.kind.endpoint(),
        request_id = %job.id,
        n = job.prompt_of.len(),
        stream = job.params.stream,
        trace_id = tracing::field::Empty
    );
    crate::trace_context::record_trace_id(&span);
    run_traced(router, job, start, span.clone())
        .instrument(span)
        .await
}

async fn run_traced(router: Router, job: Job, start: Instant, span: tracing::Span) -> Response {
    let permit = match router.permit() {
        Ok(p) => p,
        Err(s) => return counted(&router, job.kind.endpoint(), start, from_status(&s)),
    };
    if job.params.stream {
        stream(router, job, start, permit, span)
    } else {
        let r = blocking(&router, &job).await;
        drop(permit);
        counted(&router, job.kind.endpoint(), start, r)
    }
}

/// The seeds of a job's choices: reproducible from the request's seed.
fn seeds(job: &Job) -> Vec<u64> {
    (0..job.prompt_of.len() as u64)
        .map(|i| derive(job.params.seed, Stream::Sampler, i))
        .collect()
}

fn sampling(p: &Params) -> Sampling {
    Sampling {
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: 0,
        max_new_tokens: p.max_tokens,
    }
}

async fn blocking(router: &Router, job: &Job) -> Response {
    let seeds = seeds(job);
    let k = job.prompt_of.len();
    let logprobs: Mutex<Vec<Vec<grm_proto::v1::TokenLogprob>>> = Mutex::new(vec![Vec::new(); k]);
    let on_delta = |i: usize, d: TokenDelta| {
        if let Some(l) = logprobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(i)
        {
            l.extend(d.logprobs);
        }
    };
    let generation = Generation {
        messages: &job.messages,
        stop: &job.params.stop,
        logprobs: job.params.logprobs,
        fit_context: job.params.fit_context,
        on_delta: job
            .params
            .logprobs
            .map(|_| &on_delta as &(dyn Fn(usize, TokenDelta) + Send + Sync)),
    };
    let work = dispatch::Work {
        request_id: &job.id,
        prompts: &job.prompts,
        prompt_of: &job.prompt_of,
        seeds: &seeds,
        sampling: sampling(&job.params),
        affinity: job.affinity,
        deadline: Some(Instant::now() + REQUEST_TIMEOUT),
        on_judgement: None,
        generation: Some(&generation),
    };
    let out = match dispatch::generate(router.grm_pool(), work, router.dispatch_options()).await {
        Ok(o) => o,
        Err(s) => return from_status(&s),
    };
    let logprobs = logprobs.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut choices = Vec::with_capacity(k);
    let mut completion = 0u64;
    for (i, g) in out.judgements.iter().enumerate() {
        let Some(g) = g else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "a sample was lost", None);
        };
        completion += u64::from(g.generated_tokens);
        let lp = job.params.logprobs.map(|_| &logprobs[i][..]);
        choices.push(match job.kind {
            Kind::Chat => json!({
                "index": i,
                "message": { "role": "assistant", "content": g.text },
                "logprobs": lp.map(chat_logprobs),
                "finish_reason": g.finish_reason,
            }),
            Kind::Completion => json!({
                "index": i,
                "text": g.text,
                "logprobs": lp.map(|l| completion_logprobs(l, 0)),
                "finish_reason": g.finish_reason,
            }),
        });
    }
    let (prompt, cached) = prompt_usage(&out, job.prompts.len());
    router.metrics().openai_tokens(prompt, cached, completion);
    let object = match job.kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    Json(json!({
        "id": job.id,
        "object": object,
        "created": now_s(),
        "model": job.params.model,
        "system_fingerprint": concat!("grm-", env!("CARGO_PKG_VERSION")),
        "choices": choices,
        "usage": usage(prompt, cached, completion),
    }))
    .into_response()
}

/// A streamed generation: server-sent events, one chunk per piece of text, a last chunk per
/// choice with its finish reason, the usage when asked, then `[DONE]`. A client that goes
/// away ends the generation at once (its workers free the KV blocks).
fn stream(
    router: Router,
    job: Job,
    start: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
    span: tracing::Span,
) -> Response {
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let job = Arc::new(job);
    let gen_job = Arc::clone(&job);
    let gen_router = router.clone();
    tokio::spawn(
        async move {
            let _permit = permit;
            let job = gen_job;
            let seeds = seeds(&job);
            let (dtx, jtx) = (tx.clone(), tx.clone());
            let on_delta = move |i: usize, d: TokenDelta| {
                let _ = dtx.send(Msg::Delta(i, d));
            };
            let on_judgement = move |i: usize, g: &Generated| {
                let _ = jtx.send(Msg::Done(i, g.clone()));
                false
            };
            let generation = Generation {
                messages: &job.messages,
                stop: &job.params.stop,
                logprobs: job.params.logprobs,
                fit_context: job.params.fit_context,
                on_delta: Some(&on_delta),
            };
            let work = dispatch::Work {
                request_id: &job.id,
                prompts: &job.prompts,
                prompt_of: &job.prompt_of,
                seeds: &seeds,
                sampling: sampling(&job.params),
                affinity: job.affinity,
                deadline: Some(Instant::now() + REQUEST_TIMEOUT),
                on_judgement: Some(&on_judgement),
                generation: Some(&generation),
            };
            let pool = gen_router.grm_pool();
            let r = tokio::select! {
                r = dispatch::generate(pool, work, gen_router.dispatch_options()) => r,
                // The client went away: dropping the generation cancels its chunks.
                _ = tx.closed() => return,
            };
            let _ = tx.send(Msg::End(r));
        }
        .instrument(span),
    );
    let created = now_s();
    let object = match job.kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let chunk = {
        let job = Arc::clone(&job);
        move |choices: Value, usage: Option<Value>| {
            let mut c = json!({
                "id": job.id,
                "object": object,
                "created": created,
                "model": job.params.model,
                "system_fingerprint": concat!("grm-", env!("CARGO_PKG_VERSION")),
                "choices": choices,
            });
            if job.params.include_usage {
                c["usage"] = usage.unwrap_or(Value::Null);
            }
            SseEvent::default().data(c.to_string())
        }
    };
    let events = async_stream(move |out: mpsc::Sender<SseEvent>| async move {
        let k = job.prompt_of.len();
        let mut text_len = vec![0usize; k];
        let mut completion = 0u64;
        if job.kind == Kind::Chat {
            // Each choice opens with its role, as OpenAI's streams do.
            let first: Vec<Value> = (0..k)
                .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
                .collect();
            if out.send(chunk(Value::Array(first), None)).await.is_err() {
                return;
            }
        }
        let mut status = 200u16;
        while let Some(msg) = rx.recv().await {
            let ev = match msg {
                Msg::Delta(i, d) => {
                    let lp = job.params.logprobs.map(|_| match job.kind {
                        Kind::Chat => chat_logprobs(&d.logprobs),
                        Kind::Completion => completion_logprobs(&d.logprobs, text_len[i]),
                    });
                    text_len[i] += d.text.len();
                    let c = match job.kind {
                        Kind::Chat => {
                            json!({"index": i, "delta": {"content": d.text}, "logprobs": lp, "finish_reason": null})
                        }
                        Kind::Completion => {
                            json!({"index": i, "text": d.text, "logprobs": lp, "finish_reason": null})
                        }
                    };
                    chunk(json!([c]), None)
                }
                Msg::Done(i, g) => {
                    completion += u64::from(g.generated_tokens);
                    let c = match job.kind {
                        Kind::Chat => {
                            json!({"index": i, "delta": {}, "logprobs": null, "finish_reason": g.finish_reason})
                        }
                        Kind::Completion => {
                            json!({"index": i, "text": "", "logprobs": null, "finish_reason": g.finish_reason})
                        }
                    };
                    chunk(json!([c]), None)
                }
                Msg::End(Ok(o)) => {
                    let (prompt, cached) = prompt_usage(&o, job.prompts.len());
                    router.metrics().openai_tokens(prompt, cached, completion);
                    if job.params.include_usage
                        && out
                            .send(chunk(json!([]), Some(usage(prompt, cached, completion))))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    break;
                }
                Msg::End(Err(s)) => {
                    status = http_status(&s).as_u16();
                    let e = json!({"error": {"message": s.message(), "type": "server_error", "param": null, "code": null}});
                    if out
                        .send(SseEvent::default().data(e.to_string()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    break;
                }
            };
            if out.send(ev).await.is_err() {
                // The client went away: dropping `rx` ends the generation task.
                return;
            }
        }
        let _ = out.send(SseEvent::default().data("[DONE]")).await;
        router
            .metrics()
            .openai(job.kind.endpoint(), status, start.elapsed().as_secs_f64());
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A stream of SSE events written by `f` into a small channel (so a slow client slows the
/// writer, not memory).
fn async_stream<F, Fut>(
    f: F,
) -> impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>
where
    F: FnOnce(mpsc::Sender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(f(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// `GET /v1/models`.
pub async fn models(router: Router) -> Response {
    let start = Instant::now();
    let names = router.grm_pool().model_names(Duration::from_secs(2)).await;
    let data: Vec<Value> = names
        .iter()
        .map(|n| json!({"id": n, "object": "model", "created": 0, "owned_by": "grm-cluster"}))
        .collect();
    counted(
        &router,
        "models",
        start,
        Json(json!({"object": "list", "data": data})).into_response(),
    )
}

/// `POST /v1/rewards`: what `Score` answers, for an HTTP client. Body: `messages` (OpenAI's
/// turns) or `query` (one user turn), `responses` (the candidates), and optionally `model`,
/// `k`, `k_meta`, `seed`, `temperature`, `top_p`, `max_new_tokens`, `criteria`,
/// `return_samples`, `id`.
pub async fn rewards(router: Router, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    let r = rewards_answer(&router, &headers, &body).await;
    counted(&router, "rewards", start, r)
}

async fn rewards_answer(router: &Router, headers: &HeaderMap, body: &[u8]) -> Response {
    let b = match Body::parse(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let conversation: Vec<Message> = match (b.get("messages"), b.get("query")) {
        (Some(_), _) => match messages(&b) {
            Ok(m) => m
                .into_iter()
                .map(|m| Message {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
            Err(r) => return r,
        },
        (None, Some(Value::String(q))) => vec![Message {
            role: "user".into(),
            content: q.clone(),
        }],
        _ => {
            return bad(
                "messages",
                "give messages (OpenAI's turns) or query (a string)",
            )
        }
    };
    let strings = |name: &str| -> Result<Vec<String>, Response> {
        match b.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(name, format!("{name} must be a list of strings"))),
            Some(_) => Err(bad(name, format!("{name} must be a list of strings"))),
        }
    };
    let (responses, criteria) = match (strings("responses"), strings("criteria")) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let limits = router.limits();
    let u32_field = |name: &str, hi: u64| b.uint_in(name, 0, hi).map(|v| v.map(|x| x as u32));
    let sampling = (|| {
        Ok::<_, Response>(ScoreSampling {
            k: u32_field("k", limits.max_k as u64)?.unwrap_or(0),
            k_meta: u32_field("k_meta", limits.max_k as u64)?,
            temperature: b
                .get("temperature")
                .map(|_| b.f32_in("temperature", 0.5, 0.0, 2.0))
                .transpose()?,
            top_p: b
                .get("top_p")
                .map(|_| b.f32_in("top_p", 1.0, f32::MIN_POSITIVE, 1.0))
                .transpose()?,
            max_new_tokens: u32_field("max_new_tokens", limits.max_new_tokens as u64)?.unwrap_or(0),
            seed: b.uint_in("seed", 0, u64::MAX)?,
            ..Default::default()
        })
    })();
    let sampling = match sampling {
        Ok(s) => s,
        Err(r) => return r,
    };
    let return_samples = match b.bool("return_samples") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = ScoreRequest {
        id: b
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        conversation,
        responses,
        criteria,
        sampling: Some(sampling),
        return_samples,
        model: b
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        ..Default::default()
    };
    let caller = Caller {
        authorization: headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        forwarded: false,
    };
    let len = req.encoded_len();
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    match router.score(req, len, Some(deadline), &caller).await {
        Ok(r) => Json(score_json(&r)).into_response(),
        Err(s) => from_status(&s),
    }
}

/// A ScoreResponse as JSON (field names as in reward.proto).
fn score_json(r: &grm_proto::v1::ScoreResponse) -> Value {
    let samples: Vec<Value> = r
        .samples
        .iter()
        .map(|s| {
            let outcome = match &s.outcome {
                Some(grm_proto::v1::sample::Outcome::Scores(sc)) => json!({"scores": sc.original}),
                Some(grm_proto::v1::sample::Outcome::Invalid(i)) => {
                    json!({"invalid": {"code": i.code, "message": i.message}})
                }
                None => json!({}),
            };
            let mut v = json!({
                "index": s.index,
                "text": s.text,
                "order": s.order,
                "meta_score": s.meta_score,
                "kept": s.kept,
                "generated_tokens": s.generated_tokens,
                "finish_reason": s.finish_reason,
                "worker": s.worker,
            });
            if let (Some(o), Some(m)) = (v.as_object_mut(), outcome.as_object()) {
                o.extend(m.clone());
            }
            v
        })
        .collect();
    json!({
        "id": r.id,
        "object": "grm.rewards",
        "model": r.model,
        "rewards": r.rewards.iter().enumerate().map(|(i, x)| json!({
            "index": i, "reward": x.reward, "mean_score": x.mean_score, "votes": x.votes,
        })).collect::<Vec<_>>(),
        "best": r.best,
        "tie": r.tie,
        "seed": r.seed,
        "k_meta": r.k_meta,
        "valid_samples": r.valid_samples,
        "invalid_samples": r.invalid_samples,
        "samples": samples,
        "usage": r.usage.as_ref().map(|u| json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.generated_tokens,
            "cached_prompt_tokens": u.cached_prompt_tokens,
            "meta_tokens": u.meta_tokens,
        })),
    })
}
