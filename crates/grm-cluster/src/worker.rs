//! The worker role: the engine behind `grm.v1.WorkerService`. It tokenizes prompts, checks
//! them against the model's context, runs a chunk's samples over one shared prefill and
//! streams each judgement back as it finishes. A caller that goes away cancels its chunk.

use crate::chat_template::{ChatTemplate, Turn};
use crate::members::Role;
use crate::sample_text::SampleText;
use grm_engine::{Engine, EngineError, Event, FinishReason, SamplingParams, Tokenizer, Work};
use grm_proto::v1::worker_service_server::WorkerService;
use grm_proto::v1::{
    generate_event, GenerateEvent, GenerateRequest, Prefilled, Progress, SampleResult,
    ScoreTextsRequest, ScoreTextsResponse, StatusRequest, TokenDelta, TokenLogprob, TopLogprob,
    WorkerStatus,
};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// How a worker serves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The model's name, as reported and registered.
    pub model_name: String,
    pub role: Role,
    /// Refuse new work with RESOURCE_EXHAUSTED while more prompt tokens than this wait.
    pub max_queued_tokens: usize,
    /// How often a running chunk reports progress to its caller.
    pub progress_interval: std::time::Duration,
}

/// The distinct tokens of prompts that share prefixes: each prompt's length less what it
/// shares with its neighbour in sorted order (the nodes of their trie).
pub fn distinct_tokens(prompts: &[Vec<u32>]) -> usize {
    let mut sorted: Vec<&Vec<u32>> = prompts.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut total = 0;
    for (i, p) in sorted.iter().enumerate() {
        let shared = i.checked_sub(1).map_or(0, |j| {
            p.iter()
                .zip(sorted[j].iter())
                .take_while(|(a, b)| a == b)
                .count()
        });
        total += p.len() - shared;
    }
    total
}

/// How often a chunk reports progress: well under the router's stall limit (5 s by default).
/// Gemma-2's chat template with system turns (shipped, and compiled in a test).
fn default_chat_template() -> ChatTemplate {
    match ChatTemplate::new(crate::chat_template::DEFAULT_TEMPLATE) {
        Ok(t) => t,
        Err(e) => unreachable!("the shipped chat template compiles (tested): {e}"),
    }
}

/// A streamed sample's log-probabilities, as the wire has them.
fn wire_logprobs(tokenizer: &Tokenizer, lp: &grm_engine::logprobs::TokenLogprobs) -> TokenLogprob {
    let (token, bytes) = tokenizer.piece(lp.token);
    TokenLogprob {
        token,
        bytes,
        logprob: lp.logprob,
        top: lp
            .top
            .iter()
            .map(|&(id, logprob)| {
                let (token, bytes) = tokenizer.piece(id);
                TopLogprob {
                    token,
                    bytes,
                    logprob,
                }
            })
            .collect(),
    }
}

pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Samples one chunk may ask for: far above any router's --max-k, low enough that a
/// malformed internal call cannot make the worker allocate without bound.
pub const MAX_SAMPLES_PER_CHUNK: usize = 1024;

#[derive(Clone)]
pub struct Worker {
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    /// The model's chat template, for the /v1 API's chat requests.
    chat: Arc<ChatTemplate>,
    stop_tokens: Vec<u32>,
    opts: WorkerOptions,
    draining: Arc<AtomicBool>,
    /// Prompt tokens accepted and not yet computed, counted when a call is accepted (not from
    /// the engine's last published step), so a burst during a long step cannot all pass.
    pending: Arc<AtomicUsize>,
    /// All work accepted and not done, in tokens (see `WorkerStatus.work_tokens`).
    work: Arc<AtomicUsize>,
}

/// A chunk's share of [`Worker::work`], given back as it is done.
struct WorkShare {
    work: Arc<AtomicUsize>,
    left: usize,
}

impl WorkShare {
    fn done(&mut self, n: usize) {
        let n = n.min(self.left);
        self.work.fetch_sub(n, Ordering::SeqCst);
        self.left -= n;
    }
}

impl Drop for WorkShare {
    fn drop(&mut self) {
        self.work.fetch_sub(self.left, Ordering::SeqCst);
    }
}

/// Prompt tokens a call holds in [`Worker::pending`] until its prompt is computed.
struct Reserved {
    pending: Arc<AtomicUsize>,
    tokens: usize,
}

impl Reserved {
    fn release(&mut self) {
        self.pending.fetch_sub(self.tokens, Ordering::SeqCst);
        self.tokens = 0;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.release();
    }
}

/// The metadata that marks a refusal for a KV pool too small for the chunk.
pub const KV_TOO_SMALL: (&str, &str) = ("grm-error", "kv-too-small");

/// Maps an engine error to the status a caller can act on.
pub fn engine_status(e: EngineError) -> Status {
    match e {
        e @ EngineError::Stopped(_) => Status::unavailable(e.to_string()),
        // Another worker may have a larger pool: the caller tries one before giving up.
        e @ EngineError::KvTooSmall { .. } => {
            let mut s = Status::resource_exhausted(e.to_string());
            s.metadata_mut().insert(
                KV_TOO_SMALL.0,
                tonic::metadata::MetadataValue::from_static(KV_TOO_SMALL.1),
            );
            s
        }
        e @ (EngineError::TokenOutOfVocab { .. }
        | EngineError::Limit { .. }
        | EngineError::Invalid(_)) => Status::invalid_argument(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

impl Worker {
    pub fn new(engine: Engine, tokenizer: Tokenizer, opts: WorkerOptions) -> Self {
        let mut stop_tokens = engine.info.config.eos_token_ids.clone();
        if let Some(t) = tokenizer.token_id("<end_of_turn>") {
            if !stop_tokens.contains(&t) {
                stop_tokens.push(t);
            }
        }
        Self {
            engine,
            tokenizer: Arc::new(tokenizer),
            chat: Arc::new(default_chat_template()),
            stop_tokens,
            opts,
            draining: Arc::new(AtomicBool::new(false)),
            pending: Arc::new(AtomicUsize::new(0)),
            work: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Renders /v1 chat requests with the model's own template (see `chat_template`).
    pub fn with_chat_template(mut self, t: ChatTemplate) -> Self {
        self.chat = Arc::new(t);
        self
    }

    pub fn role(&self) -> Role {
        self.opts.role
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops taking new work (callers get UNAVAILABLE and go elsewhere).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Waits until the engine has no request left.
    pub async fn idle(&self) {
        while self.engine.alive() && self.engine.stats().scheduler.requests > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn admit(&self, role: Role) -> Result<(), Status> {
        if !self.engine.alive() {
            return Err(Status::unavailable("this worker's engine has stopped"));
        }
        if self.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "this worker is draining and takes no new work",
            ));
        }
        if self.opts.role != role {
            return Err(Status::failed_precondition(format!(
                "this worker serves the {} role, not {}",
                self.opts.role.as_str(),
                role.as_str()
            )));
        }
        Ok(())
    }

    /// Counts `tokens` prompt tokens as queued, or refuses them past --max-queued-tokens. An
    /// empty queue always takes one call, however large, so that nothing waits forever.
    fn reserve(&self, tokens: usize) -> Result<Reserved, Status> {
        let before = self.pending.fetch_add(tokens, Ordering::SeqCst);
        let reserved = Reserved {
            pending: Arc::clone(&self.pending),
            tokens,
        };
        if before > 0 && before + tokens > self.opts.max_queued_tokens {
            return Err(Status::resource_exhausted(format!(
                "{before} prompt tokens are queued on this worker; with {tokens} more that is over the limit of {} (--max-queued-tokens)",
                self.opts.max_queued_tokens
            )));
        }
        Ok(reserved)
    }

    /// Tokenizes off the async runtime (a long prompt must not stall other calls), each text
    /// with the ranges a client wrote read as plain text.
    async fn encode_all(&self, texts: Vec<(String, Vec<u32>)>) -> Result<Vec<Vec<u32>>, Status> {
        let tokenizer = Arc::clone(&self.tokenizer);
        tokio::task::spawn_blocking(move || {
            texts
                .iter()
                .map(|(t, client)| tokenizer.encode_marked(t, client, true))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| Status::internal(format!("tokenizing: {e}")))?
        .map_err(|e| match e {
            EngineError::Invalid(m) => Status::invalid_argument(m),
            e => Status::internal(e.to_string()),
        })
    }
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<GenerateEvent, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for Worker {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.admit(Role::Grm)?;
        // Child of the router's chunk span; lives until the chunk's last judgement is sent.
        let span = crate::trace_context::continue_from(
            request.metadata(),
            tracing::info_span!(
                "grm.worker.generate",
                request_id = %request.get_ref().request_id,
                samples = request.get_ref().seeds.len(),
                trace_id = tracing::field::Empty
            ),
        );
        let mut r = request.into_inner();
        if r.sample_indices.is_empty() || r.sample_indices.len() != r.seeds.len() {
            return Err(Status::invalid_argument(format!(
                "sample_indices ({}) and seeds ({}) must be non-empty and of equal length",
                r.sample_indices.len(),
                r.seeds.len()
            )));
        }
        if r.seeds.len() > MAX_SAMPLES_PER_CHUNK {
            return Err(Status::invalid_argument(format!(
                "seeds has {} entries; allowed 1..={MAX_SAMPLES_PER_CHUNK} per chunk",
                r.seeds.len()
            )));
        }
        let mut distinct = std::collections::HashSet::with_capacity(r.sample_indices.len());
        if let Some(dup) = r.sample_indices.iter().find(|&&i| !distinct.insert(i)) {
            return Err(Status::invalid_argument(format!(
                "sample_indices repeats {dup}: each sample is generated once"
            )));
        }
        if r.logprobs && r.top_logprobs as usize > grm_engine::logprobs::MAX_TOP {
            return Err(Status::invalid_argument(format!(
                "top_logprobs is {}; the limit is {}",
                r.top_logprobs,
                grm_engine::logprobs::MAX_TOP
            )));
        }
        // A chat request's turns, rendered by the model's template (the turns' text is the
        // client's).
        if !r.messages.is_empty() {
            let turns: Vec<Turn> = r
                .messages
                .iter()
                .map(|m| Turn {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect();
            let rendered = self
                .chat
                .render(&turns)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            r.prompt = rendered.text;
            r.client_text = Some(grm_proto::v1::ClientText {
                bounds: rendered.client,
            });
            r.prompts.clear();
        }
        let stream = r.stream_tokens || r.logprobs;
        let stops: Arc<[String]> = r.stop.iter().filter(|s| !s.is_empty()).cloned().collect();
        let follow = stream || !stops.is_empty();
        let logprobs = r.logprobs.then_some(r.top_logprobs as usize);
        // One prompt, or several sharing prefixes (each sample naming its own).
        let (texts, prompt_of): (Vec<(String, Vec<u32>)>, Vec<usize>) = if r.prompts.is_empty() {
            let bounds = r.client_text.map(|c| c.bounds).unwrap_or_default();
            (vec![(r.prompt, bounds)], vec![0; r.seeds.len()])
        } else {
            let n = r.prompts.len();
            if r.prompt_of.len() != r.seeds.len() {
                return Err(Status::invalid_argument(format!(
                    "prompt_of has {} entries for {} samples",
                    r.prompt_of.len(),
                    r.seeds.len()
                )));
            }
            let mut used = vec![false; n];
            for &p in &r.prompt_of {
                match used.get_mut(p as usize) {
                    Some(u) => *u = true,
                    None => {
                        return Err(Status::invalid_argument(format!(
                            "prompt_of names prompt {p} of {n}"
                        )))
                    }
                }
            }
            if let Some(unused) = used.iter().position(|u| !u) {
                return Err(Status::invalid_argument(format!(
                    "prompts[{unused}] has no sample"
                )));
            }
            let texts = r
                .prompts
                .into_iter()
                .map(|p| (p.text, p.client_text.map(|c| c.bounds).unwrap_or_default()))
                .collect();
            (texts, r.prompt_of.iter().map(|&p| p as usize).collect())
        };
        let prompts = self.encode_all(texts).await?;
        let context = self.engine.info.config.max_position_embeddings;
        let mut max_new = r.max_new_tokens.max(1) as usize;
        if r.fit_context {
            let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
            max_new = max_new.min(context.saturating_sub(longest)).max(1);
        }
        for (i, tokens) in prompts.iter().enumerate() {
            if tokens.len() + max_new > context {
                let which = if prompts.len() == 1 {
                    "the prompt".to_string()
                } else {
                    format!("prompts[{i}]")
                };
                return Err(Status::invalid_argument(format!(
                    "{which} is {} tokens; with max_new_tokens {max_new} that is {}, over the model's context of {context} tokens",
                    tokens.len(),
                    tokens.len() + max_new
                )));
            }
        }
        // What the prompts cost: their distinct tokens (shared prefixes count once).
        let distinct = distinct_tokens(&prompts);
        let mut reserved = self.reserve(distinct)?;
        let mut share = WorkShare {
            work: Arc::clone(&self.work),
            left: distinct + r.seeds.len() * max_new,
        };
        self.work.fetch_add(share.left, Ordering::SeqCst);
        let samples: Vec<(usize, SamplingParams)> = r
            .seeds
            .iter()
            .zip(&prompt_of)
            .map(|(&seed, &p)| {
                (
                    p,
                    SamplingParams {
                        temperature: r.temperature,
                        top_p: if r.top_p > 0.0 { r.top_p } else { 1.0 },
                        top_k: r.top_k as usize,
                        seed,
                        max_new_tokens: max_new,
                        stop_tokens: self.stop_tokens.clone(),
                        ignore_stop: false,
                        stream: follow,
                        logprobs,
                    },
                )
            })
            .collect();
        let mut prompts_left = prompts.len();
        let mut sub = self
            .engine
            .submit(Work::GenerateTree { prompts, samples })
            .await
            .map_err(engine_status)?;
        let (tx, rx) = mpsc::channel::<Result<GenerateEvent, Status>>(16);
        let tokenizer = Arc::clone(&self.tokenizer);
        let indices = r.sample_indices;
        let engine = self.engine.clone();
        let pending = Arc::clone(&self.pending);
        let work = Arc::clone(&self.work);
        let mut tick = tokio::time::interval(self.opts.progress_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(
            async move {
                // Until the engine reports the chunk's first event, it waits in the queue.
                let mut queued = true;
                let id = sub.id;
                let mut texts: Vec<SampleText> = (0..indices.len())
                    .map(|_| SampleText::new(Arc::clone(&stops)))
                    .collect();
                let progress = |queued: bool| {
                    Ok(GenerateEvent {
                        event: Some(generate_event::Event::Progress(Progress {
                            queued,
                            engine_steps: engine.stats().scheduler.steps,
                            queued_tokens: pending.load(Ordering::SeqCst) as u64,
                            work_tokens: work.load(Ordering::SeqCst) as u64,
                        })),
                    })
                };
                loop {
                    let ev = tokio::select! {
                        ev = sub.next() => ev,
                        // The caller went away: dropping the submission cancels the chunk.
                        _ = tx.closed() => break,
                        _ = tick.tick() => {
                            if tx.send(progress(queued)).await.is_err() {
                                break;
                            }
                            continue;
                        }
                    };
                    if queued && ev.is_some() {
                        queued = false;
                        if tx.send(progress(queued)).await.is_err() {
                            break;
                        }
                    }
                    let out = match ev {
                        None => break,
                        Some(Event::Prefilled {
                            prompt_tokens,
                            cached,
                            prompt,
                        }) => {
                            prompts_left = prompts_left.saturating_sub(1);
                            if prompts_left == 0 {
                                reserved.release();
                                share.done(distinct);
                            }
                            Ok(generate_event::Event::Prefilled(Prefilled {
                                prompt_tokens: prompt_tokens as u32,
                                cached_tokens: cached as u32,
                                prompt: prompt as u32,
                            }))
                        }
                        Some(Event::Token {
                            sample,
                            token,
                            logprobs: lp,
                        }) => {
                            let (Some(t), Some(&index)) =
                                (texts.get_mut(sample), indices.get(sample))
                            else {
                                continue;
                            };
                            if t.stopped() {
                                continue;
                            }
                            if t.push(token, &tokenizer) {
                                // A stop string: the sample is over; the engine frees it.
                                engine.finish_sample(id, sample);
                            }
                            if !stream {
                                continue;
                            }
                            Ok(generate_event::Event::Tokens(TokenDelta {
                                sample_index: index,
                                text: t.take_delta(false),
                                tokens: 1,
                                logprobs: lp.iter().map(|l| wire_logprobs(&tokenizer, l)).collect(),
                            }))
                        }
                        Some(Event::Sample {
                            sample,
                            tokens,
                            finish,
                        }) => match (tokenizer.decode(&tokens), indices.get(sample)) {
                            (Ok(text), Some(&index)) => {
                                share.done(max_new);
                                let followed = texts.get_mut(sample).filter(|_| follow);
                                let (text, finish) = match followed {
                                    Some(t) => {
                                        // What was held back for a stop string that never came.
                                        let rest = t.take_delta(true);
                                        if stream && !rest.is_empty() {
                                            let delta = GenerateEvent {
                                                event: Some(generate_event::Event::Tokens(
                                                    TokenDelta {
                                                        sample_index: index,
                                                        text: rest,
                                                        tokens: 0,
                                                        logprobs: Vec::new(),
                                                    },
                                                )),
                                            };
                                            if tx.send(Ok(delta)).await.is_err() {
                                                break;
                                            }
                                        }
                                        let finish = if t.stopped() {
                                            FinishReason::Stop
                                        } else {
                                            finish
                                        };
                                        (t.text().to_string(), finish)
                                    }
                                    None => (text, finish),
                                };
                                Ok(generate_event::Event::Sample(SampleResult {
                                    sample_index: index,
                                    text,
                                    generated_tokens: tokens.len() as u32,
                                    finish_reason: match finish {
                                        FinishReason::Stop => "stop",
                                        FinishReason::Length => "length",
                                    }
                                    .into(),
                                }))
                            }
                            (Err(e), _) => Err(Status::internal(e.to_string())),
                            (_, None) => Err(Status::internal(format!(
                                "the engine reported sample {sample} of a chunk of {}",
                                indices.len()
                            ))),
                        },
                        Some(_) => continue,
                    };
                    let failed = out.is_err();
                    let msg = out.map(|e| GenerateEvent { event: Some(e) });
                    if tx.send(msg).await.is_err() || failed {
                        break;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn score_texts(
        &self,
        request: Request<ScoreTextsRequest>,
    ) -> Result<Response<ScoreTextsResponse>, Status> {
        self.admit(Role::MetaRm)?;
        let span = crate::trace_context::continue_from(
            request.metadata(),
            tracing::info_span!(
                "grm.worker.score_texts",
                request_id = %request.get_ref().request_id,
                texts = request.get_ref().texts.len(),
                trace_id = tracing::field::Empty
            ),
        );
        let r = request.into_inner();
        async move {
            let context = self.engine.info.config.max_position_embeddings;
            if !r.client_text.is_empty() && r.client_text.len() != r.texts.len() {
                return Err(Status::invalid_argument(format!(
                    "client_text has {} entries for {} texts; give one per text or none",
                    r.client_text.len(),
                    r.texts.len()
                )));
            }
            let mut marks = r.client_text.into_iter().map(|c| c.bounds);
            let texts = r
                .texts
                .into_iter()
                .map(|t| (t, marks.next().unwrap_or_default()))
                .collect();
            let all = self.encode_all(texts).await?;
            for (i, tokens) in all.iter().enumerate() {
                if tokens.len() > context {
                    return Err(Status::invalid_argument(format!(
                        "texts[{i}] is {} tokens, over the model's context of {context} tokens",
                        tokens.len()
                    )));
                }
            }
            let _reserved = self.reserve(all.iter().map(Vec::len).sum())?;
            let n = all.len();
            let mut subs = Vec::with_capacity(n);
            for tokens in all {
                subs.push(
                    self.engine
                        .submit(Work::Score { tokens })
                        .await
                        .map_err(engine_status)?,
                );
            }
            let mut out = ScoreTextsResponse::default();
            for mut sub in subs {
                while let Some(ev) = sub.next().await {
                    if let Event::Score {
                        values,
                        prompt_tokens,
                        cached,
                    } = ev
                    {
                        // A head without an output is an engine bug: fail, never score NaN.
                        let v = values
                            .first()
                            .copied()
                            .filter(|v| v.is_finite())
                            .ok_or_else(|| {
                                Status::internal(format!(
                                    "the meta RM's head gave {values:?} for a text"
                                ))
                            })?;
                        out.scores.push(v);
                        out.tokens += prompt_tokens as u64;
                        out.cached_tokens += cached as u64;
                    }
                }
            }
            if out.scores.len() != n {
                return Err(Status::internal("the engine lost a scoring request"));
            }
            Ok::<_, Status>(Response::new(out))
        }
        .instrument(span)
        .await
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<WorkerStatus>, Status> {
        let s = self.engine.stats();
        Ok(Response::new(WorkerStatus {
            model: self.opts.model_name.clone(),
            role: self.opts.role.as_str().into(),
            queued_tokens: (s.scheduler.queued_tokens as u64)
                .max(self.pending.load(Ordering::SeqCst) as u64),
            running: s.scheduler.running as u32,
            waiting: s.scheduler.waiting as u32,
            blocks_total: s.kv.blocks_total as u32,
            blocks_available: s.kv.blocks_available() as u32,
            blocks_used: s.kv.blocks_used as u32,
            blocks_shared: s.kv.blocks_shared as u32,
            blocks_cached: s.kv.blocks_cached as u32,
            prefix_hits: s.kv.prefix_hits,
            prefix_lookups: s.kv.prefix_lookups,
            max_context: self.engine.info.config.max_position_embeddings as u32,
            draining: self.draining.load(Ordering::SeqCst),
            generated_tokens: s.scheduler.generated_tokens,
            work_tokens: self.work.load(Ordering::SeqCst) as u64,
        }))
    }
}
