//! Running a request's chunks on the GRM workers: placed by the chunking policy, streamed
//! back sample by sample, and — when a worker fails, stalls or sheds load — the chunk's
//! unfinished samples go to another worker. A sample index is filled once: a judgement that
//! arrives twice is not counted twice.

use crate::chunking::{self, ChunkPolicy};
use crate::pool::{LoadGuard, Peer, Pool, MAX_MESSAGE_BYTES};
use grm_proto::v1::worker_service_client::WorkerServiceClient;
use grm_proto::v1::{generate_event, ChatMessage, GenerateRequest, TokenDelta};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Code, Status};
use tracing::{warn, Instrument};

/// Sampling settings shared by all samples of a request.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub max_new_tokens: u32,
}

/// How dispatch reacts to trouble.
#[derive(Debug, Clone, Copy)]
pub struct DispatchOptions {
    pub policy: ChunkPolicy,
    /// A worker that sends nothing for this long (not even progress, which workers send about
    /// every second while a chunk is queued or running) is given up on for the chunk.
    pub stall_timeout: Duration,
    /// Workers tried per chunk before the request fails.
    pub max_attempts: usize,
    /// How long a failed worker is avoided.
    pub cool_down: Duration,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            policy: ChunkPolicy::default(),
            stall_timeout: Duration::from_secs(5),
            max_attempts: 4,
            cool_down: Duration::from_secs(5),
        }
    }
}

/// One generated judgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub generated_tokens: u32,
    pub finish_reason: String,
    pub worker: String,
}

/// Everything generated for a request.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// By sample index; all present unless `on_judgement` stopped the generation.
    pub judgements: Vec<Option<Generated>>,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    /// From the start until a worker started computing the request (its first chunk left a
    /// worker's queue).
    pub queue_ms: f64,
    /// From the start to the last judgement.
    pub generate_ms: f64,
    /// Chunks sent again after a worker failed.
    pub retries: u32,
    /// The first prefill reported: (prompt tokens, of which not computed for it).
    pub first_prefill: Option<(u64, u64)>,
}

struct State {
    judgements: Vec<Option<Generated>>,
    /// Woken when `on_judgement` asks to stop.
    stop: Arc<tokio::sync::Notify>,
    prompt_tokens: u64,
    cached: u64,
    first_start: Option<Instant>,
    retries: u32,
    first_prefill: Option<(u64, u64)>,
    /// Per sample: text bytes and tokens already passed to `on_delta` (a retried chunk's
    /// samples start again and repeat them: only what is new is passed on).
    streamed: Vec<(usize, usize)>,
}

/// What one attempt of a chunk came to.
enum Failure {
    /// Try another worker.
    Retry(String),
    /// This worker's KV pool cannot hold the chunk; another's may.
    TooLarge(String),
    /// The request itself is at fault (or out of time): stop.
    Fatal(Status),
}

fn classify(s: Status) -> Failure {
    let (key, value) = crate::worker::KV_TOO_SMALL;
    if s.metadata().get(key).is_some_and(|v| v == value) {
        return Failure::TooLarge(s.message().to_string());
    }
    match s.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::DeadlineExceeded
        | Code::Unauthenticated
        | Code::PermissionDenied => Failure::Fatal(s),
        _ => Failure::Retry(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// One distinct prompt of a request, with the byte ranges its client wrote.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    /// Flat bounds `[start0, end0, ...]` (the wire form of `ClientText`).
    pub client: Vec<u32>,
}

/// The request's prompts (distinct texts), which prompt each sample uses, and each sample's seed.
pub struct Work<'a> {
    pub request_id: &'a str,
    pub prompts: &'a [Prompt],
    pub prompt_of: &'a [usize],
    pub seeds: &'a [u64],
    pub sampling: Sampling,
    pub affinity: u64,
    pub deadline: Option<Instant>,
    /// Called with each judgement as it arrives (its sample index); returning true stops the
    /// generation: the chunks still running are cancelled and their blocks freed.
    pub on_judgement: Option<&'a (dyn Fn(usize, &Generated) -> bool + Send + Sync)>,
    /// The /v1 API's generation (none for judgements).
    pub generation: Option<&'a Generation<'a>>,
}

/// What a /v1 request adds to a generation: its chat turns (rendered by the worker's model
/// template; the prompt's text then only sizes the work), stop strings, log-probabilities, and
/// the text as it is generated.
pub struct Generation<'a> {
    pub messages: &'a [ChatMessage],
    pub stop: &'a [String],
    /// `Some(n)`: each token's log-probability and its n best alternatives.
    pub logprobs: Option<u32>,
    /// The request named no length: `max_new_tokens` is lowered to what the context leaves.
    pub fit_context: bool,
    /// Called with each sample's new text (and its tokens' log-probabilities) in order, each
    /// piece once, whatever worker it came from.
    pub on_delta: Option<&'a (dyn Fn(usize, TokenDelta) + Send + Sync)>,
}

/// Generates every sample of `work` on the pool's workers.
pub async fn generate(
    pool: &Pool,
    work: Work<'_>,
    opts: &DispatchOptions,
) -> Result<Outcome, Status> {
    let start = Instant::now();
    let k = work.prompt_of.len();
    let peers = pool.available();
    if peers.is_empty() {
        return Err(Status::unavailable("no GRM worker is live"));
    }
    let texts: Vec<&str> = work.prompts.iter().map(|p| p.text.as_str()).collect();
    let chunks = chunking::chunks(&texts, work.prompt_of, opts.policy);
    let ids: Vec<String> = peers.iter().map(|p| p.id.clone()).collect();
    let ranked = chunking::rank(work.affinity, &ids);
    let loads: Vec<usize> = peers.iter().map(|p| p.load()).collect();
    let max_new = work.sampling.max_new_tokens;
    let sizes: Vec<usize> = chunks
        .iter()
        .map(|c| chunking::chunk_tokens(prompt_bytes(&work, &c.samples), c.samples.len(), max_new))
        .collect();
    let slack = opts.policy.affinity_slack * max_new as usize;
    let placed = chunking::place(&sizes, &ranked, &loads, slack);
    let stop = Arc::new(tokio::sync::Notify::new());
    let state = Arc::new(Mutex::new(State {
        judgements: vec![None; k],
        stop: Arc::clone(&stop),
        prompt_tokens: 0,
        cached: 0,
        first_start: None,
        retries: 0,
        first_prefill: None,
        streamed: vec![(0, 0); k],
    }));
    let runs = chunks.iter().zip(&placed).map(|(c, &w)| {
        run_chunk(
            pool,
            &work,
            &c.samples,
            Arc::clone(&peers[w]),
            Arc::clone(&state),
            opts,
        )
    });
    let all = async {
        tokio::select! {
            r = futures::future::try_join_all(runs) => r.map(|_| ()),
            // Dropping the chunks' futures cancels their calls: the workers free the blocks.
            _ = stop.notified() => Ok(()),
        }
    };
    match work.deadline {
        Some(d) => tokio::time::timeout_at(d.into(), all).await.map_err(|_| {
            Status::deadline_exceeded(
                "the request's deadline passed while its judgements were generated",
            )
        })??,
        None => all.await?,
    };
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let judgements: Vec<Option<Generated>> = s.judgements.iter_mut().map(Option::take).collect();
    Ok(Outcome {
        judgements,
        prompt_tokens: s.prompt_tokens,
        cached_prompt_tokens: s.cached,
        queue_ms: s
            .first_start
            .map_or(0.0, |t| (t - start).as_secs_f64() * 1e3),
        generate_ms: start.elapsed().as_secs_f64() * 1e3,
        retries: s.retries,
        first_prefill: s.first_prefill,
    })
}

/// The distinct prompt bytes the samples' prompts come to (shared prefixes once).
fn prompt_bytes(work: &Work<'_>, samples: &[u32]) -> usize {
    let mut texts: Vec<&str> = samples
        .iter()
        .map(|&s| work.prompts[work.prompt_of[s as usize]].text.as_str())
        .collect();
    texts.dedup();
    chunking::distinct_bytes(&texts)
}

async fn run_chunk(
    pool: &Pool,
    work: &Work<'_>,
    samples: &[u32],
    first: Arc<Peer>,
    state: Arc<Mutex<State>>,
    opts: &DispatchOptions,
) -> Result<(), Status> {
    let mut remaining: Vec<u32> = samples.to_vec();
    let mut tried: Vec<String> = Vec::new();
    let mut peer = first;
    let mut last_error = String::new();
    // Whether every worker tried so far refused the chunk for its KV pool's size.
    let mut only_too_large = true;
    for attempt in 0..opts.max_attempts.max(1) {
        let max_new = work.sampling.max_new_tokens;
        let bytes = prompt_bytes(work, &remaining);
        let mut guard = peer.hold(chunking::chunk_tokens(bytes, remaining.len(), max_new));
        // One span per attempt of a chunk, parent of the worker's span for it.
        let span = tracing::info_span!(
            "grm.chunk",
            worker = %peer.addr,
            samples = remaining.len(),
            attempt
        );
        match attempt_chunk(&peer, work, &remaining, bytes, &state, &mut guard, opts)
            .instrument(span)
            .await
        {
            Ok(()) => only_too_large = false,
            Err(Failure::Fatal(s)) => return Err(s),
            Err(Failure::TooLarge(why)) => {
                warn!(
                    request = work.request_id,
                    worker = peer.addr,
                    why,
                    "a worker's KV pool is too small for the chunk; trying another"
                );
                last_error = why;
            }
            Err(Failure::Retry(why)) => {
                only_too_large = false;
                warn!(
                    request = work.request_id,
                    worker = peer.addr,
                    why,
                    "chunk failed on a worker; sending it elsewhere"
                );
                peer.mark_down(opts.cool_down);
                last_error = why;
            }
        }
        drop(guard);
        {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            remaining.retain(|&i| s.judgements[i as usize].is_none());
        }
        if remaining.is_empty() {
            return Ok(());
        }
        if last_error.is_empty() {
            last_error = format!(
                "worker {} ended the chunk with {} samples missing",
                peer.addr,
                remaining.len()
            );
            peer.mark_down(opts.cool_down);
        }
        tried.push(peer.addr.clone());
        state.lock().unwrap_or_else(|e| e.into_inner()).retries += 1;
        let next = if only_too_large {
            // A pool too small stays too small: only workers not yet tried can help.
            pool.least_loaded(&tried)
        } else {
            pool.least_loaded(&tried).or_else(|| pool.least_loaded(&[]))
        };
        peer = match next {
            Some(p) => p,
            None if only_too_large => {
                return Err(Status::invalid_argument(format!(
                    "the prompt needs more KV cache than any GRM worker has: {last_error}"
                )))
            }
            None => {
                return Err(Status::unavailable(format!(
                    "no GRM worker is live (last error: {last_error})"
                )))
            }
        };
        tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 + 1))).await;
    }
    if only_too_large {
        return Err(Status::invalid_argument(format!(
            "the prompt needs more KV cache than any GRM worker tried has: {last_error}"
        )));
    }
    Err(Status::unavailable(format!(
        "{} samples could not be generated after {} attempts; last error: {last_error}",
        remaining.len(),
        opts.max_attempts
    )))
}

/// How long a worker may stay silent: the stall limit, but never more than half the time
/// left before the request's deadline, so that a silent worker's samples are sent elsewhere
/// in time to finish.
fn silence_limit(opts: &DispatchOptions, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => opts
            .stall_timeout
            .min(d.saturating_duration_since(Instant::now()) / 2)
            .max(Duration::from_millis(50)),
        None => opts.stall_timeout,
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt_chunk(
    peer: &Peer,
    work: &Work<'_>,
    samples: &[u32],
    prompt_bytes: usize,
    state: &Mutex<State>,
    guard: &mut LoadGuard,
    opts: &DispatchOptions,
) -> Result<(), Failure> {
    let mut client =
        WorkerServiceClient::new(peer.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
    // The chunk's distinct prompts (the request's indices), and each sample's among them.
    let mut used: Vec<usize> = Vec::new();
    let local: Vec<u32> = samples
        .iter()
        .map(|&s| {
            let p = work.prompt_of[s as usize];
            let at = used.iter().position(|&u| u == p).unwrap_or_else(|| {
                used.push(p);
                used.len() - 1
            });
            at as u32
        })
        .collect();
    let client_text = |p: &Prompt| {
        Some(grm_proto::v1::ClientText {
            bounds: p.client.clone(),
        })
    };
    let mut req = GenerateRequest {
        request_id: work.request_id.to_string(),
        sample_indices: samples.to_vec(),
        seeds: samples.iter().map(|&i| work.seeds[i as usize]).collect(),
        temperature: work.sampling.temperature,
        top_p: work.sampling.top_p,
        top_k: work.sampling.top_k,
        max_new_tokens: work.sampling.max_new_tokens,
        ..Default::default()
    };
    if let [only] = used[..] {
        let p = &work.prompts[only];
        req.prompt = p.text.clone();
        req.client_text = client_text(p);
    } else {
        req.prompts = used
            .iter()
            .map(|&i| grm_proto::v1::PromptText {
                text: work.prompts[i].text.clone(),
                client_text: client_text(&work.prompts[i]),
            })
            .collect();
        req.prompt_of = local.clone();
    }
    if let Some(g) = work.generation {
        req.messages = g.messages.to_vec();
        req.stop = g.stop.to_vec();
        req.logprobs = g.logprobs.is_some();
        req.top_logprobs = g.logprobs.unwrap_or(0);
        req.stream_tokens = g.on_delta.is_some() || g.logprobs.is_some();
        req.fit_context = g.fit_context;
    }
    // This attempt's text bytes and tokens of each sample so far (see State::streamed).
    let mut seen: std::collections::HashMap<u32, (usize, usize)> = Default::default();
    let mut req = tonic::Request::new(req);
    crate::trace_context::inject(&tracing::Span::current(), req.metadata_mut());
    if let Some(d) = work.deadline {
        req.set_timeout(
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
    }
    let limit = silence_limit(opts, work.deadline);
    let mut stream = match tokio::time::timeout(limit, client.generate(req)).await {
        Err(_) => return Err(Failure::Retry(format!("no answer within {limit:?}"))),
        Ok(Err(s)) => return Err(classify(s)),
        Ok(Ok(r)) => r.into_inner(),
    };
    // This attempt's prefill of each of its prompts (prompt tokens, of which not computed),
    // counted in the usage once per judgement it delivers: a retried chunk's earlier attempt
    // must not count twice.
    let mut prefill: Vec<Option<(u64, u64)>> = vec![None; used.len()];
    let mut delivered = vec![0u64; used.len()];
    let mut prefilled = 0;
    loop {
        let limit = silence_limit(opts, work.deadline);
        let msg = match tokio::time::timeout(limit, stream.message()).await {
            Err(_) => {
                return Err(Failure::Retry(format!(
                    "stalled: nothing, not even progress, for {limit:?}"
                )))
            }
            Ok(Err(s)) => return Err(classify(s)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(m))) => m,
        };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        match msg.event {
            Some(generate_event::Event::Tokens(d)) => {
                let i = d.sample_index as usize;
                let on_delta = work.generation.and_then(|g| g.on_delta);
                if !samples.contains(&d.sample_index)
                    || s.judgements.get(i).is_none_or(Option::is_some)
                {
                    continue;
                }
                let (bytes, tokens) = seen.entry(d.sample_index).or_insert((0, 0));
                let (sent_bytes, sent_tokens) = s.streamed[i];
                let (from_bytes, from_tokens) = (*bytes, *tokens);
                *bytes += d.text.len();
                *tokens += d.logprobs.len();
                let text = d
                    .text
                    .get(sent_bytes.saturating_sub(from_bytes).min(d.text.len())..)
                    .unwrap_or_default()
                    .to_string();
                let skip = sent_tokens
                    .saturating_sub(from_tokens)
                    .min(d.logprobs.len());
                let logprobs: Vec<_> = d.logprobs.into_iter().skip(skip).collect();
                if text.is_empty() && logprobs.is_empty() {
                    continue;
                }
                s.streamed[i] = (sent_bytes.max(*bytes), sent_tokens.max(*tokens));
                if let Some(f) = on_delta {
                    f(
                        i,
                        TokenDelta {
                            sample_index: d.sample_index,
                            text,
                            tokens: d.tokens,
                            logprobs,
                        },
                    );
                }
            }
            Some(generate_event::Event::Prefilled(p)) => {
                s.first_prefill
                    .get_or_insert((u64::from(p.prompt_tokens), u64::from(p.cached_tokens)));
                if let Some(slot) = prefill.get_mut(p.prompt as usize) {
                    *slot = Some((u64::from(p.prompt_tokens), u64::from(p.cached_tokens)));
                }
                s.first_start.get_or_insert_with(Instant::now);
                prefilled += 1;
                if prefilled == used.len() {
                    guard.release(prompt_bytes / chunking::PROMPT_BYTES_PER_TOKEN);
                }
            }
            Some(generate_event::Event::Progress(p)) => {
                if !p.queued {
                    s.first_start.get_or_insert_with(Instant::now);
                }
                peer.report(p.work_tokens as usize);
            }
            Some(generate_event::Event::Sample(r)) => {
                let i = r.sample_index as usize;
                if samples.contains(&r.sample_index)
                    && s.judgements.get(i).is_some_and(Option::is_none)
                {
                    let g = Generated {
                        text: r.text,
                        generated_tokens: r.generated_tokens,
                        finish_reason: r.finish_reason,
                        worker: peer.addr.clone(),
                    };
                    if work.on_judgement.is_some_and(|f| f(i, &g)) {
                        s.stop.notify_one();
                    }
                    s.judgements[i] = Some(g);
                    let p = samples
                        .iter()
                        .position(|&x| x == r.sample_index)
                        .map_or(0, |at| local[at] as usize);
                    if let Some((prompt, cached)) = prefill.get(p).copied().flatten() {
                        // The prompt's first judgement paid for what was computed of it; the
                        // others forked from it.
                        s.prompt_tokens += prompt;
                        s.cached += if delivered[p] == 0 { cached } else { prompt };
                    }
                    delivered[p] += 1;
                    guard.release(work.sampling.max_new_tokens as usize);
                }
            }
            None => {}
        }
    }
}
