//! Running a request's chunks on the GRM workers: placed by the chunking policy, streamed
//! back sample by sample, and — when a worker fails, stalls or sheds load — the chunk's
//! unfinished samples go to another worker. A sample index is filled once: a judgement that
//! arrives twice is not counted twice.

use crate::chunking::{self, ChunkPolicy};
use crate::pool::{LoadGuard, Peer, Pool, MAX_MESSAGE_BYTES};
use grm_proto::v1::worker_service_client::WorkerServiceClient;
use grm_proto::v1::{generate_event, GenerateRequest};
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
    /// A worker that sends nothing for this long is given up on for the chunk.
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
            stall_timeout: Duration::from_secs(120),
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
    /// By sample index; all present.
    pub judgements: Vec<Generated>,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    /// From the start to the first prefilled prompt.
    pub queue_ms: f64,
    /// From the start to the last judgement.
    pub generate_ms: f64,
    /// Chunks sent again after a worker failed.
    pub retries: u32,
}

struct State {
    judgements: Vec<Option<Generated>>,
    prompt_tokens: u64,
    cached: u64,
    first_prefill: Option<Instant>,
    retries: u32,
}

/// What one attempt of a chunk came to.
enum Failure {
    /// Try another worker.
    Retry(String),
    /// The request itself is at fault (or out of time): stop.
    Fatal(Status),
}

fn classify(s: Status) -> Failure {
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

/// The request's prompts (distinct texts), which prompt each sample uses, and each sample's seed.
pub struct Work<'a> {
    pub request_id: &'a str,
    pub prompts: &'a [String],
    pub prompt_of: &'a [usize],
    pub seeds: &'a [u64],
    pub sampling: Sampling,
    pub affinity: u64,
    pub deadline: Option<Instant>,
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
    let chunks = chunking::chunks(work.prompt_of, opts.policy);
    let ids: Vec<String> = peers.iter().map(|p| p.id.clone()).collect();
    let ranked = chunking::rank(work.affinity, &ids);
    let loads: Vec<usize> = peers.iter().map(|p| p.load()).collect();
    let sizes: Vec<usize> = chunks.iter().map(|c| c.samples.len()).collect();
    let placed = chunking::place(&sizes, &ranked, &loads, opts.policy);
    let state = Arc::new(Mutex::new(State {
        judgements: vec![None; k],
        prompt_tokens: 0,
        cached: 0,
        first_prefill: None,
        retries: 0,
    }));
    let runs = chunks.iter().zip(&placed).map(|(c, &w)| {
        run_chunk(
            pool,
            &work,
            &c.samples,
            &work.prompts[c.prompt],
            Arc::clone(&peers[w]),
            Arc::clone(&state),
            opts,
        )
    });
    let all = futures::future::try_join_all(runs);
    match work.deadline {
        Some(d) => tokio::time::timeout_at(d.into(), all).await.map_err(|_| {
            Status::deadline_exceeded(
                "the request's deadline passed while its judgements were generated",
            )
        })??,
        None => all.await?,
    };
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let judgements: Option<Vec<Generated>> = s.judgements.iter_mut().map(Option::take).collect();
    let judgements = judgements.ok_or_else(|| Status::internal("a sample was lost"))?;
    Ok(Outcome {
        judgements,
        prompt_tokens: s.prompt_tokens,
        cached_prompt_tokens: s.cached,
        queue_ms: s
            .first_prefill
            .map_or(0.0, |t| (t - start).as_secs_f64() * 1e3),
        generate_ms: start.elapsed().as_secs_f64() * 1e3,
        retries: s.retries,
    })
}

async fn run_chunk(
    pool: &Pool,
    work: &Work<'_>,
    samples: &[u32],
    prompt: &str,
    first: Arc<Peer>,
    state: Arc<Mutex<State>>,
    opts: &DispatchOptions,
) -> Result<(), Status> {
    let mut remaining: Vec<u32> = samples.to_vec();
    let mut tried: Vec<String> = Vec::new();
    let mut peer = first;
    let mut last_error = String::new();
    for attempt in 0..opts.max_attempts.max(1) {
        let mut guard = peer.hold(remaining.len());
        // One span per attempt of a chunk, parent of the worker's span for it.
        let span = tracing::info_span!(
            "grm.chunk",
            worker = %peer.addr,
            samples = remaining.len(),
            attempt
        );
        match attempt_chunk(&peer, work, &remaining, prompt, &state, &mut guard, opts)
            .instrument(span)
            .await
        {
            Ok(()) => {}
            Err(Failure::Fatal(s)) => return Err(s),
            Err(Failure::Retry(why)) => {
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
        peer = match pool.least_loaded(&tried).or_else(|| pool.least_loaded(&[])) {
            Some(p) => p,
            None => {
                return Err(Status::unavailable(format!(
                    "no GRM worker is live (last error: {last_error})"
                )))
            }
        };
        tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 + 1))).await;
    }
    Err(Status::unavailable(format!(
        "{} samples could not be generated after {} attempts; last error: {last_error}",
        remaining.len(),
        opts.max_attempts
    )))
}

async fn attempt_chunk(
    peer: &Peer,
    work: &Work<'_>,
    samples: &[u32],
    prompt: &str,
    state: &Mutex<State>,
    guard: &mut LoadGuard,
    opts: &DispatchOptions,
) -> Result<(), Failure> {
    let mut client =
        WorkerServiceClient::new(peer.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut req = tonic::Request::new(GenerateRequest {
        request_id: work.request_id.to_string(),
        prompt: prompt.to_string(),
        sample_indices: samples.to_vec(),
        seeds: samples.iter().map(|&i| work.seeds[i as usize]).collect(),
        temperature: work.sampling.temperature,
        top_p: work.sampling.top_p,
        top_k: work.sampling.top_k,
        max_new_tokens: work.sampling.max_new_tokens,
    });
    crate::trace_context::inject(&tracing::Span::current(), req.metadata_mut());
    if let Some(d) = work.deadline {
        req.set_timeout(
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
    }
    let mut stream = match tokio::time::timeout(opts.stall_timeout, client.generate(req)).await {
        Err(_) => {
            return Err(Failure::Retry(format!(
                "no answer within {:?}",
                opts.stall_timeout
            )))
        }
        Ok(Err(s)) => return Err(classify(s)),
        Ok(Ok(r)) => r.into_inner(),
    };
    // This attempt's prefill (prompt tokens, of which cached), counted in the usage once per
    // judgement it delivers: a retried chunk's earlier attempt must not count twice.
    let mut prefill: Option<(u64, u64)> = None;
    let mut delivered = 0u64;
    loop {
        let msg = match tokio::time::timeout(opts.stall_timeout, stream.message()).await {
            Err(_) => {
                return Err(Failure::Retry(format!(
                    "stalled: nothing for {:?}",
                    opts.stall_timeout
                )))
            }
            Ok(Err(s)) => return Err(classify(s)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(m))) => m,
        };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        match msg.event {
            Some(generate_event::Event::Prefilled(p)) => {
                prefill = Some((u64::from(p.prompt_tokens), u64::from(p.cached_tokens)));
                s.first_prefill.get_or_insert_with(Instant::now);
            }
            Some(generate_event::Event::Sample(r)) => {
                let i = r.sample_index as usize;
                if samples.contains(&r.sample_index)
                    && s.judgements.get(i).is_some_and(Option::is_none)
                {
                    s.judgements[i] = Some(Generated {
                        text: r.text,
                        generated_tokens: r.generated_tokens,
                        finish_reason: r.finish_reason,
                        worker: peer.addr.clone(),
                    });
                    if let Some((prompt, cached)) = prefill {
                        // The first judgement paid for the prefill; the others forked from it.
                        s.prompt_tokens += prompt;
                        s.cached += if delivered == 0 { cached } else { prompt };
                    }
                    delivered += 1;
                    guard.release(1);
                }
            }
            None => {}
        }
    }
}
