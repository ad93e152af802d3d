//! The router role: the public `grm.v1.RewardService`. It validates a request, builds each
//! sample's prompt (grm-judge), has the GRM workers generate the k judgements (dispatch) and
//! the aggregator turn them into the answer. Deadlines are propagated; a client that goes
//! away drops everything it started; past `--max-inflight` requests new ones get
//! RESOURCE_EXHAUSTED.

use crate::aggregator::{self, Aggregator};
use crate::auth::CallerTokens;
use crate::chunking;
use crate::dispatch::{self, DispatchOptions, Sampling};
use crate::group::{Barrier, GroupLimits};
use crate::metrics::{RouterGauges, RouterMetrics, Scrape};
use crate::pool::{Pool, MAX_MESSAGE_BYTES};
use crate::trace_context;
use crate::validation::{validate, Limits};
use grm_judge::rng::{derive, Stream};
use grm_judge::{PromptOptions, Template};
use grm_proto::v1::aggregator_service_client::AggregatorServiceClient;
use grm_proto::v1::reward_service_server::RewardService;
use grm_proto::v1::{AggregateRequest, Judgement, ScoreError, ScoreRequest, ScoreResponse};
use prost::Message as _;
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn, Instrument};

/// How often a router asks the GRM workers for their load.
const LOAD_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct RouterOptions {
    pub limits: Limits,
    pub dispatch: DispatchOptions,
    /// Requests in flight at once (Score and ScoreStream together); past it, RESOURCE_EXHAUSTED.
    pub max_inflight: usize,
    /// Requests of one ScoreStream in flight at once.
    pub stream_concurrency: usize,
    /// The served model's name, reported in answers.
    pub model_name: String,
    /// The bearer token the public API requires (none: open).
    pub auth: Option<CallerTokens>,
    /// The group barrier's limits.
    pub groups: GroupLimits,
    /// This router's id among the routers in etcd (its advertised address), for forwarding a
    /// group's members to the router that owns the group.
    pub self_id: String,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            dispatch: DispatchOptions::default(),
            max_inflight: 1024,
            stream_concurrency: 64,
            model_name: String::new(),
            auth: None,
            groups: GroupLimits::default(),
            self_id: String::new(),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) template: Arc<Template>,
    pub(crate) grm: Arc<Pool>,
    pub(crate) local: Aggregator,
    aggregators: Option<Arc<Pool>>,
    pub(crate) opts: RouterOptions,
    pub(crate) inflight: Arc<Semaphore>,
    /// Set when the process stops: new requests are refused and open streams stop reading.
    pub(crate) stopping: watch::Sender<bool>,
    pub(crate) metrics: RouterMetrics,
    /// Groups whose members are arriving.
    pub(crate) barrier: Barrier,
    /// The routers (from etcd), to forward a group's members to its owner; none: this one
    /// owns every group.
    pub(crate) routers: Option<Arc<Pool>>,
}

/// Who called, as far as forwarding a group member needs to know.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The caller's `authorization` value, passed on when a member is forwarded.
    pub authorization: Option<String>,
    /// The call was forwarded by another router: serve it here, whoever owns the group.
    pub forwarded: bool,
}

impl Caller {
    /// Who the caller is, for scoping its groups and its quotas: a digest of its credentials
    /// (the bearer token), or one shared name when the API takes none (then nothing tells
    /// callers apart: a router without --auth-token-file trusts everyone who reaches it).
    pub fn identity(&self) -> String {
        match &self.authorization {
            Some(a) => format!("token:{}", crate::auth::short_digest(a.as_bytes(), 12)),
            None => "anonymous".to_string(),
        }
    }

    /// The caller of a gRPC request to `router`. A member is taken as forwarded by another
    /// router only with the cluster's proof for this call (when the cluster has keys): a
    /// client cannot make a router keep a group that another router owns.
    pub fn of<T>(req: &Request<T>, router: &Router) -> Self {
        let mark = req
            .metadata()
            .get(crate::group_judge::FORWARDED)
            .map(|v| v.as_bytes());
        let forwarded = match (mark, router.grm_pool().keys()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(_), Some(keys)) => {
                let proof = req
                    .metadata()
                    .get(crate::cluster_keys::PROOF_HEADER)
                    .map(|v| v.as_bytes());
                let me = &router.inner.opts.self_id;
                keys.check_call(proof, crate::group_judge::FORWARDED_METHOD, me)
                    .is_ok()
            }
        };
        Self {
            authorization: req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            forwarded,
        }
    }
}

#[derive(Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

/// The deadline a gRPC client set (`grpc-timeout`), if any. By hand: tonic honours the header
/// for its own timeout but does not expose the parsed deadline.
pub fn deadline_of(meta: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    // The gRPC spec allows at most 8 digits; anything longer is not a deadline we can honour.
    if num.is_empty() || num.len() > 8 {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

impl Router {
    /// `aggregators`: remote aggregators to use when any is live; otherwise the router
    /// aggregates in-process with `local`.
    pub fn new(
        template: Arc<Template>,
        grm: Arc<Pool>,
        local: Aggregator,
        aggregators: Option<Arc<Pool>>,
        routers: Option<Arc<Pool>>,
        opts: RouterOptions,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(opts.max_inflight.max(1)));
        // Placement sees every router's work on the workers, not only this one's.
        grm.watch_load(LOAD_POLL);
        Self {
            inner: Arc::new(Inner {
                template,
                grm,
                local,
                aggregators,
                opts,
                inflight,
                stopping: watch::Sender::new(false),
                metrics: RouterMetrics::default(),
                barrier: Barrier::default(),
                routers,
            }),
        }
    }

    pub fn grm_pool(&self) -> &Arc<Pool> {
        &self.inner.grm
    }

    /// Live members by role, as this router sees them: (GRM workers that answered their last
    /// load poll, meta-RM workers, aggregators).
    pub fn members_seen(&self) -> (usize, usize, usize) {
        let me = &self.inner;
        (
            me.grm.peers().iter().filter(|p| p.answering()).count(),
            me.local.meta_pool().map_or(0, |p| p.peers().len()),
            me.aggregators.as_ref().map_or(0, |p| p.peers().len()),
        )
    }

    /// Waits for the first answers of the members it knows now (a second at most), so that a
    /// router that says it is ready counts them in `/health`.
    pub async fn first_poll(&self) {
        self.inner.grm.poll_load(Duration::from_secs(1)).await;
    }

    /// Begins a graceful stop: requests already taken are finished and answered, new ones are
    /// refused with UNAVAILABLE, and each open ScoreStream ends once its answers are sent (a
    /// client such as `grm label` then resumes against another router, or on a rerun).
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    pub fn auth(&self) -> Option<&CallerTokens> {
        self.inner.opts.auth.as_ref()
    }

    pub fn metrics(&self) -> &crate::metrics::RouterMetrics {
        &self.inner.metrics
    }

    pub fn dispatch_options(&self) -> &crate::dispatch::DispatchOptions {
        &self.inner.opts.dispatch
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.opts.limits
    }

    /// The router's metrics, and those of `engines` (the in-process workers of `grm serve`),
    /// in Prometheus' text format.
    pub fn scrape(
        &self,
        engines: Vec<(&'static str, grm_engine::EngineStats)>,
        openmetrics: bool,
    ) -> Scrape {
        let me = &self.inner;
        me.metrics.set_gauges(&RouterGauges {
            in_flight: me.opts.max_inflight.max(1) - me.inflight.available_permits(),
            members: self.members_seen(),
            groups_forming: me.barrier.forming(),
        });
        let engines = crate::metrics::engine_registry(engines);
        crate::metrics::encode(&[me.metrics.registry(), &engines], openmetrics)
    }

    /// Scores one request end to end, and counts it in the metrics.
    pub async fn score(
        &self,
        req: ScoreRequest,
        encoded_len: usize,
        deadline: Option<Instant>,
        caller: &Caller,
    ) -> Result<ScoreResponse, Status> {
        let start = Instant::now();
        let span = tracing::info_span!(
            "grm.score",
            request_id = %req.id,
            trace_id = tracing::field::Empty
        );
        trace_context::record_trace_id(&span);
        let trace_id = trace_context::trace_id(&span);
        let r = self
            .score_counted(req, encoded_len, deadline, caller)
            .instrument(span)
            .await;
        let outcome = r.as_ref().map_err(Status::code);
        self.inner
            .metrics
            .record(outcome, start.elapsed().as_secs_f64(), trace_id);
        r
    }

    async fn score_counted(
        &self,
        req: ScoreRequest,
        encoded_len: usize,
        deadline: Option<Instant>,
        caller: &Caller,
    ) -> Result<ScoreResponse, Status> {
        let me = &self.inner;
        if *me.stopping.borrow() {
            return Err(Status::unavailable(
                "the router is shutting down; retry another one",
            ));
        }
        // A group's members hold no permit while they wait: the group takes them when judged.
        if req.group.is_some() {
            return self.score_member(req, encoded_len, deadline, caller).await;
        }
        let _permit = self.permit()?;
        self.judge(req, encoded_len, deadline).await
    }

    /// A place among the requests in flight, or RESOURCE_EXHAUSTED.
    pub(crate) fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let me = &self.inner;
        Arc::clone(&me.inflight).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the router has {} requests in flight, its limit (--max-inflight); retry later",
                me.opts.max_inflight
            ))
        })
    }

    /// A place among the requests in flight, waited for until `deadline` (a formed group's
    /// members have waited already: a busy router makes it queue, not fail).
    pub(crate) async fn permit_by(
        &self,
        deadline: Instant,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let me = &self.inner;
        let acquire = Arc::clone(&me.inflight).acquire_owned();
        match tokio::time::timeout_at(deadline.into(), acquire).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Status::deadline_exceeded(format!(
                "the deadline passed while the group waited for a place among the router's {} requests in flight (--max-inflight)",
                me.opts.max_inflight
            ))),
        }
    }

    /// Judges one request (not a group member): prompts, generation, aggregation.
    pub(crate) async fn judge(
        &self,
        req: ScoreRequest,
        encoded_len: usize,
        deadline: Option<Instant>,
    ) -> Result<ScoreResponse, Status> {
        let me = &self.inner;
        let start = Instant::now();
        let v = validate(&req, encoded_len, &me.opts.limits)?;
        let serving = if me.opts.model_name.is_empty() {
            // No --model-name: the models the GRM workers say they serve.
            me.grm.model_names(Duration::from_millis(500)).await
        } else {
            vec![me.opts.model_name.clone()]
        };
        if !req.model.is_empty() && !serving.contains(&req.model) {
            return Err(Status::not_found(format!(
                "model is {:?}; this cluster serves {} (leave model empty for the default)",
                req.model,
                match serving.as_slice() {
                    [] => "no model yet (no GRM worker has answered)".to_string(),
                    names => format!("{names:?}"),
                }
            )));
        }
        // Refuse before generating k judgements that the aggregator would then refuse.
        if let Some(m) = v.k_meta.filter(|&m| m < v.k && !me.local.has_meta()) {
            return Err(Status::failed_precondition(format!(
                "sampling.k_meta is {m} (< k = {}), which needs a meta RM, and this cluster has no meta-RM worker",
                v.k
            )));
        }
        let popts = PromptOptions {
            seed: v.seed,
            shuffle: v.shuffle,
            hint_best: v.hint_best,
        };
        let mut prompts: Vec<dispatch::Prompt> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut prompt_of = Vec::with_capacity(v.k);
        let mut orders = Vec::with_capacity(v.k);
        for s in 0..v.k as u32 {
            let p = me.template.sample_prompt(&v.input, s, popts);
            let idx = *seen.entry(p.text.clone()).or_insert_with(|| {
                prompts.push(dispatch::Prompt {
                    client: p
                        .client
                        .iter()
                        .flat_map(|r| [r.start as u32, r.end as u32])
                        .collect(),
                    text: p.text,
                });
                prompts.len() - 1
            });
            prompt_of.push(idx);
            orders.push(p.order);
        }
        let seeds: Vec<u64> = (0..v.k as u64)
            .map(|s| derive(v.seed, Stream::Sampler, s))
            .collect();
        let parts: Vec<&str> = v
            .input
            .conversation
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        let work = dispatch::Work {
            request_id: &v.id,
            prompts: &prompts,
            prompt_of: &prompt_of,
            seeds: &seeds,
            sampling: Sampling {
                temperature: v.temperature,
                top_p: v.top_p,
                top_k: 0,
                max_new_tokens: v.max_new_tokens,
            },
            affinity: chunking::affinity_key(&parts),
            deadline,
            on_judgement: None,
            generation: None,
        };
        let (out, metas) = match v.adaptive {
            None => {
                let out = dispatch::generate(&me.grm, work, &me.opts.dispatch).await?;
                if out.judgements.iter().any(Option::is_none) {
                    return Err(Status::internal("a sample was lost"));
                }
                (out, vec![None; v.k])
            }
            Some((rule, first_wave)) => {
                self.sample_adaptive(&v, &req, work, &orders, rule, first_wave)
                    .await?
            }
        };
        let judgements = out
            .judgements
            .into_iter()
            .zip(orders)
            .zip(metas)
            .enumerate()
            .filter_map(|(i, ((g, order), meta_score))| {
                let g = g?;
                Some(Judgement {
                    index: i as u32,
                    text: g.text,
                    order: order.into_iter().map(|o| o as u32).collect(),
                    generated_tokens: g.generated_tokens,
                    finish_reason: g.finish_reason,
                    worker: g.worker,
                    meta_score,
                })
            })
            .collect();
        let req_model = req.model.clone();
        let mut request = req;
        // Pin the defaults the router chose, so the aggregator sees the same request.
        let sampling = request.sampling.get_or_insert_with(Default::default);
        sampling.seed = Some(v.seed);
        sampling.k = v.k as u32;
        if v.k_meta.is_none() && me.local.has_meta() {
            // The router saw a meta RM, so the request is meta-filtered: the aggregator, whose
            // own view of the membership may lag, is told so rather than left to decide (it
            // then waits for a meta-RM worker, or says in `meta_fallback` why it voted without
            // one). Under adaptive sampling the meta RM keeps half of the ceiling k, whatever
            // was drawn.
            sampling.k_meta = Some(grm_judge::default_k_meta(v.k) as u32);
        }
        let agg = AggregateRequest {
            request: Some(request),
            judgements,
            seed: v.seed,
            usage: Some(aggregator::usage(
                out.prompt_tokens,
                out.cached_prompt_tokens,
            )),
            timings: Some(aggregator::timings(out.queue_ms, out.generate_ms)),
        };
        let mut resp = self.aggregate(agg, deadline).await?;
        resp.model = if req_model.is_empty() {
            serving.first().cloned().unwrap_or_default()
        } else {
            req_model
        };
        if let Some(t) = resp.timings.as_mut() {
            t.total_ms = start.elapsed().as_secs_f64() * 1e3;
        }
        info!(
            id = resp.id,
            k = v.k,
            retries = out.retries,
            ms = start.elapsed().as_millis() as u64,
            "scored"
        );
        Ok(resp)
    }

    pub(crate) async fn aggregate(
        &self,
        req: AggregateRequest,
        deadline: Option<Instant>,
    ) -> Result<ScoreResponse, Status> {
        let me = &self.inner;
        let Some(pool) = me.aggregators.as_ref().filter(|p| !p.peers().is_empty()) else {
            return me.local.aggregate(req).await;
        };
        let mut tried = Vec::new();
        let mut last = String::new();
        for _ in 0..3 {
            let Some(peer) = pool.least_loaded(&tried) else {
                break;
            };
            let _g = peer.hold(1);
            let mut client = AggregatorServiceClient::new(peer.channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let mut r = Request::new(req.clone());
            trace_context::inject(&tracing::Span::current(), r.metadata_mut());
            if let Some(d) = deadline {
                r.set_timeout(
                    d.saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                );
            }
            match client.aggregate(r).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::Internal
                            | tonic::Code::Cancelled
                    ) =>
                {
                    warn!(aggregator = peer.addr, error = %s, "aggregator failed; trying another");
                    peer.mark_down(Duration::from_secs(5));
                    tried.push(peer.addr.clone());
                    last = s.to_string();
                }
                Err(s) => return Err(s),
            }
        }
        warn!(
            last,
            "no remote aggregator answered; aggregating in the router"
        );
        me.local.aggregate(req).await
    }
}

type ScoreStreamOut =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ScoreResponse, Status>> + Send>>;

/// A failed request of a stream, answered in band.
fn stream_error(id: String, s: Status) -> ScoreResponse {
    ScoreResponse {
        id,
        error: Some(ScoreError {
            code: s.code() as i32,
            message: s.message().to_string(),
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RewardService for Router {
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let deadline = deadline_of(request.metadata());
        let span = trace_context::continue_from(
            request.metadata(),
            tracing::info_span!("grm.rpc.Score", trace_id = tracing::field::Empty),
        );
        let caller = Caller::of(&request, self);
        let req = request.into_inner();
        let len = req.encoded_len();
        Router::score(self, req, len, deadline, &caller)
            .instrument(span)
            .await
            .map(Response::new)
    }

    type ScoreStreamStream = ScoreStreamOut;

    async fn score_stream(
        &self,
        request: Request<Streaming<ScoreRequest>>,
    ) -> Result<Response<ScoreStreamOut>, Status> {
        let deadline = deadline_of(request.metadata());
        let span = trace_context::continue_from(
            request.metadata(),
            tracing::info_span!("grm.rpc.ScoreStream", trace_id = tracing::field::Empty),
        );
        let caller = Caller::of(&request, self);
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<ScoreResponse, Status>>(64);
        let queue = read_ahead(inbound, self.inner.stopping.subscribe());
        tokio::spawn(stream_requests(self.clone(), queue, tx, deadline, caller).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Requests of one ScoreStream read ahead of the ones being scored.
const READ_AHEAD: usize = 1024;

/// Reads a ScoreStream's requests as soon as they arrive, into a bounded queue. Reading
/// promptly matters: HTTP/2 (h2) drops a connection whose peer has many small DATA frames
/// buffered unread ("too_many_data_frames"), which is what a labeling client writing
/// thousands of small requests without pacing produces. When the queue is full the reader
/// waits, the stream's flow-control window fills, and the client waits in turn; the window
/// sizes in `server` keep what h2 then buffers within its budget. Stops at the stream's end,
/// on an error (passed on), or when the process stops.
fn read_ahead(
    mut inbound: Streaming<ScoreRequest>,
    mut stopping: watch::Receiver<bool>,
) -> mpsc::Receiver<Result<ScoreRequest, Status>> {
    let (qtx, qrx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = async { let _ = stopping.wait_for(|&v| v).await; } => return,
                _ = qtx.closed() => return,
                m = inbound.message() => m,
            };
            let item = match next {
                Ok(Some(req)) => Ok(req),
                Ok(None) => return,
                Err(s) => Err(crate::errors::inbound_status(s)),
            };
            let last = item.is_err();
            if qtx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    qrx
}

/// Scores a ScoreStream's requests, at most `--stream-concurrency` at a time, answering each
/// in band. Every wait is its own branch of the select, so a stopping process or a client that
/// went away is noticed even while the stream is idle.
async fn stream_requests(
    router: Router,
    mut queue: mpsc::Receiver<Result<ScoreRequest, Status>>,
    tx: mpsc::Sender<Result<ScoreResponse, Status>>,
    deadline: Option<Instant>,
    caller: Caller,
) {
    let limit = router.inner.opts.stream_concurrency.max(1);
    let mut stopping = router.inner.stopping.subscribe();
    let mut tasks = tokio::task::JoinSet::new();
    // Ids in flight: an answer is matched to its request by id, so two at once are refused.
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut reading = true;
    let mut broken: Option<Status> = None;
    loop {
        tokio::select! {
            // The process is stopping: answer what was taken, take nothing more.
            _ = async { let _ = stopping.wait_for(|&v| v).await; }, if reading => reading = false,
            // The client went away: abort everything it started.
            _ = tx.closed() => {
                tasks.abort_all();
                return;
            }
            done = tasks.join_next(), if !tasks.is_empty() => {
                if let Some(Ok(id)) = done {
                    in_flight.remove(&id);
                }
            }
            next = queue.recv(), if reading && tasks.len() < limit => match next {
                Some(Ok(req)) => {
                    let id = req.id.clone();
                    let refusal = if id.is_empty() {
                        Some(Status::invalid_argument("id is empty: every request of a ScoreStream needs an id"))
                    } else if in_flight.contains(&id) {
                        Some(Status::invalid_argument(format!(
                            "id {id:?} is already in flight on this stream: ids must be unique among the requests not yet answered"
                        )))
                    } else {
                        None
                    };
                    if let Some(s) = refusal {
                        if tx.send(Ok(stream_error(id, s))).await.is_err() {
                            tasks.abort_all();
                            return;
                        }
                        continue;
                    }
                    in_flight.insert(id.clone());
                    let (router, tx, caller) = (router.clone(), tx.clone(), caller.clone());
                    tasks.spawn(async move {
                        let len = req.encoded_len();
                        let resp = router
                            .score(req, len, deadline, &caller)
                            .await
                            .unwrap_or_else(|s| stream_error(id.clone(), s));
                        let _ = tx.send(Ok(resp)).await;
                        id
                    }.instrument(tracing::Span::current()));
                }
                // The stream itself broke (a message over the cluster's ceiling, bytes that
                // are not a message): what is in flight is answered first, then the error
                // ends the stream.
                Some(Err(s)) => {
                    broken = Some(s);
                    reading = false;
                }
                None => reading = false,
            },
        }
        if !reading && tasks.is_empty() {
            if let Some(s) = broken {
                let _ = tx.send(Err(s)).await;
            }
            return;
        }
    }
}
