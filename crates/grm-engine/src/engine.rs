//! The engine on its own thread, driven through channels: submit a prompt with k samples (or
//! a scoring), receive each event as it happens, cancel. A gRPC worker calls this directly.

use crate::backend::Backend;
use crate::error::{EngineError, Result};
use crate::kv::KvStats;
use crate::model::Gemma2;
use crate::scheduler::{Event, RequestId, Scheduler, SchedulerConfig, SchedulerCounters, Work};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks; `None` sizes the pool from `kv_memory_bytes`.
    pub num_blocks: Option<usize>,
    /// Memory for the KV pool when `num_blocks` is not given; `None`: a quarter of the
    /// memory available now.
    pub kv_memory_bytes: Option<usize>,
    /// Keep full blocks for reuse by later prompts.
    pub prefix_caching: bool,
    /// Compute threads (`None`: one per core).
    pub threads: Option<usize>,
    pub scheduler: SchedulerConfig,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: None,
            kv_memory_bytes: None,
            prefix_caching: true,
            threads: None,
            scheduler: SchedulerConfig::default(),
        }
    }
}

/// A snapshot of the engine's state.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct EngineStats {
    pub kv: KvStats,
    pub scheduler: SchedulerCounters,
}

enum Command {
    Submit {
        id: RequestId,
        work: Work,
        events: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Result<()>>,
    },
    Cancel(RequestId),
    /// Ends one sample of a request now, as stopped.
    FinishSample(RequestId, usize),
    /// Makes the next step fail as an internal error would (tests of the restart).
    #[cfg(test)]
    Fault,
}

/// Restarts after internal errors allowed within a minute; one more and the engine stops.
pub const MAX_RESTARTS_PER_MINUTE: usize = 3;

/// A handle to a running engine; cheap to clone. The engine stops when every handle is gone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Command>,
    stats: Arc<Mutex<EngineStats>>,
    /// False once the engine thread has ended (normally only by a panic).
    alive: Arc<AtomicBool>,
    /// Why the engine stopped, once it has (as logged then).
    stopped: Arc<Mutex<Option<String>>>,
    next_id: Arc<AtomicU64>,
    pub info: Arc<EngineInfo>,
}

/// What the engine serves.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub config: crate::config::ModelConfig,
    pub backend: String,
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_bytes: usize,
}

/// A submitted request: its events, in order. Dropping it cancels the request.
pub struct Submission {
    pub id: RequestId,
    pub events: mpsc::UnboundedReceiver<Event>,
    cancel: Option<mpsc::UnboundedSender<Command>>,
}

impl Submission {
    /// The next event, or `None` once the request is over.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Blocking form of [`Submission::next`], for callers outside an async runtime.
    pub fn next_blocking(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if let Some(tx) = self.cancel.take() {
            let _ = tx.send(Command::Cancel(self.id));
        }
    }
}

/// Memory the OS reports as available now, in bytes (Linux), if it can tell.
pub fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Engine {
    /// Starts the engine thread for a loaded model.
    pub fn start<B: Backend>(model: Gemma2<B>, opts: EngineOptions) -> Result<Engine> {
        let block_bytes = model.kv_bytes_per_token() * opts.block_size;
        let num_blocks = match opts.num_blocks {
            Some(n) => n,
            None => {
                let budget = opts
                    .kv_memory_bytes
                    .or_else(|| model.backend().kv_memory_budget())
                    .or_else(|| available_memory().map(|m| m / 4))
                    .unwrap_or(1 << 30);
                (budget / block_bytes).max(1)
            }
        };
        let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("grm-compute-{i}"));
        if let Some(t) = opts.threads {
            pool = pool.num_threads(t);
        }
        let pool = pool
            .build()
            .map_err(|e| EngineError::Invalid(format!("cannot start compute threads: {e}")))?;
        let info = Arc::new(EngineInfo {
            config: model.config.clone(),
            backend: pool.install(|| model.backend().name()),
            num_blocks,
            block_size: opts.block_size,
            kv_bytes: num_blocks * block_bytes,
        });
        let scheduler = Scheduler::new(
            model,
            num_blocks,
            opts.block_size,
            opts.prefix_caching,
            opts.scheduler,
        )?;
        let stats = Arc::new(Mutex::new(EngineStats {
            kv: scheduler.kv_stats(),
            scheduler: scheduler.counters(),
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::clone(&stats);
        let alive = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&alive);
        let stopped = Arc::new(Mutex::new(None));
        let why = Arc::clone(&stopped);
        std::thread::Builder::new()
            .name("grm-engine".into())
            .spawn(move || {
                // Cleared however the thread ends, a panic included, so callers can tell a
                // dead engine from an idle one.
                struct Clear(Arc<AtomicBool>);
                impl Drop for Clear {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::SeqCst);
                    }
                }
                let _clear = Clear(flag);
                pool.install(|| {
                    let reason = run(scheduler, rx, shared);
                    *why.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                })
            })
            .map_err(|e| EngineError::Invalid(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            tx,
            stats,
            alive,
            stopped,
            next_id: Arc::new(AtomicU64::new(1)),
            info,
        })
    }

    /// Queues a request; its events arrive on the returned submission.
    pub async fn submit(&self, work: Work) -> Result<Submission> {
        let (reply, rx) = self.send_submit(work)?;
        rx.await.map_err(|_| self.stopped_error())??;
        Ok(reply)
    }

    /// [`Engine::submit`] for callers outside an async runtime.
    pub fn submit_blocking(&self, work: Work) -> Result<Submission> {
        let (reply, rx) = self.send_submit(work)?;
        rx.blocking_recv().map_err(|_| self.stopped_error())??;
        Ok(reply)
    }

    fn send_submit(&self, work: Work) -> Result<(Submission, oneshot::Receiver<Result<()>>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        self.tx
            .send(Command::Submit {
                id,
                work,
                events: events_tx,
                reply,
            })
            .map_err(|_| self.stopped_error())?;
        Ok((
            Submission {
                id,
                events,
                cancel: Some(self.tx.clone()),
            },
            reply_rx,
        ))
    }

    /// Cancels a request (also done by dropping its submission).
    pub fn cancel(&self, id: RequestId) {
        let _ = self.tx.send(Command::Cancel(id));
    }

    /// Ends sample `sample` (its index in the work) of a request now, as stopped: its
    /// `Event::Sample` comes with the tokens drawn so far (a caller that found a stop string in
    /// a streamed sample's text frees its blocks this way).
    pub fn finish_sample(&self, id: RequestId, sample: usize) {
        let _ = self.tx.send(Command::FinishSample(id, sample));
    }

    /// Whether the engine thread is still running.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Why the engine stopped (`None` while it runs).
    pub fn stop_reason(&self) -> Option<String> {
        if self.alive() {
            return None;
        }
        let why = self
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(why.unwrap_or_else(|| "its thread ended".into()))
    }

    fn stopped_error(&self) -> EngineError {
        EngineError::Stopped(
            self.stop_reason()
                .unwrap_or_else(|| "its thread ended".into()),
        )
    }

    /// The state after the last step.
    pub fn stats(&self) -> EngineStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How often the weight files' headers are reread (their size and time are checked every step).
const HEADER_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The engine's loop; returns why it stopped.
fn run<B: Backend>(
    mut sched: Scheduler<B>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    stats: Arc<Mutex<EngineStats>>,
) -> String {
    let mut headers_checked = std::time::Instant::now();
    let mut sinks: HashMap<RequestId, mpsc::UnboundedSender<Event>> = HashMap::new();
    let mut restarts: Vec<std::time::Instant> = Vec::new();
    let mut fault = false;
    let publish = |sched: &Scheduler<B>| {
        *stats.lock().unwrap_or_else(|e| e.into_inner()) = EngineStats {
            kv: sched.kv_stats(),
            scheduler: sched.counters(),
        };
    };
    loop {
        if sched.is_idle() {
            publish(&sched);
            match rx.blocking_recv() {
                Some(cmd) => handle(&mut sched, &mut sinks, &mut fault, cmd),
                None => return "every handle was dropped".into(),
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => handle(&mut sched, &mut sinks, &mut fault, cmd),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if sched.is_idle() {
                        return "every handle was dropped".into();
                    }
                    break;
                }
            }
        }
        let step = if std::mem::take(&mut fault) {
            Err(EngineError::Internal("a fault injected by a test".into()))
        } else {
            // A panic in a step is an internal error too, not the end of the process's engine.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched.try_step()))
                .unwrap_or_else(|p| {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(EngineError::Internal(format!("a step panicked: {why}")))
                })
        };
        let events = match step {
            Ok(events) => events,
            Err(e) => {
                // A bug, not bad input: the requests it held cannot be vouched for. Their
                // streams end unfinished (the worker's caller re-runs them), and the engine
                // starts again over the same weights with an empty KV cache — unless it has
                // done so too often, then it stops and `Engine::alive` turns false.
                let now = std::time::Instant::now();
                restarts.retain(|t| now.duration_since(*t) < std::time::Duration::from_secs(60));
                if restarts.len() >= MAX_RESTARTS_PER_MINUTE {
                    tracing::error!(error = %e, restarts = restarts.len(), "the engine stops: too many internal errors within a minute");
                    publish(&sched);
                    return format!("too many internal errors within a minute, the last: {e}");
                }
                restarts.push(now);
                tracing::error!(error = %e, "internal engine error: the requests it held fail, and the engine starts again");
                sched = match sched.restarted() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "the engine stops: it could not start again");
                        return format!("it could not start again after an internal error: {e}");
                    }
                };
                // The fresh state is visible before the held streams end.
                publish(&sched);
                sinks.clear();
                continue;
            }
        };
        // Results computed from weights that changed under the step never leave: the files
        // are checked after the step, before its events are sent.
        let files = sched.model().files();
        let mut changed = files.check();
        if changed.is_ok() && headers_checked.elapsed() >= HEADER_CHECK {
            headers_checked = std::time::Instant::now();
            changed = files.check_headers();
        }
        if let Err(why) = changed {
            tracing::error!(reason = %why, "the model's weight files changed under the engine: this step's results are discarded and the engine stops serving (roll a model by writing a new directory, then restarting)");
            publish(&sched);
            return format!(
                "the model's weight files changed since load ({why}); restart to load them again"
            );
        }
        for (id, event) in events {
            if let Some(tx) = sinks.get(&id) {
                if tx.send(event).is_err() {
                    // Nobody listens any more: free the request's blocks now.
                    sched.cancel(id);
                    sinks.remove(&id);
                }
            }
        }
        // Requests that ended: dropping their sink ends the receiver's stream.
        sinks.retain(|id, _| sched.has_request(*id));
        publish(&sched);
    }
}

fn handle<B: Backend>(
    sched: &mut Scheduler<B>,
    sinks: &mut HashMap<RequestId, mpsc::UnboundedSender<Event>>,
    #[allow(unused_variables)] fault: &mut bool,
    cmd: Command,
) {
    match cmd {
        Command::Submit {
            id,
            work,
            events,
            reply,
        } => {
            let r = sched.submit(id, work);
            if r.is_ok() {
                sinks.insert(id, events);
            }
            let _ = reply.send(r);
        }
        Command::Cancel(id) => {
            sched.cancel(id);
            sinks.remove(&id);
        }
        Command::FinishSample(id, sample) => {
            if let Some(e) = sched.finish_sample(id, sample) {
                if let Some(tx) = sinks.get(&id) {
                    let _ = tx.send(e);
                }
            }
            if !sched.has_request(id) {
                sinks.remove(&id);
            }
        }
        #[cfg(test)]
        Command::Fault => *fault = true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuBackend, SamplingParams};

    impl Engine {
        /// Makes the engine's next step fail as an internal error would.
        fn inject_fault(&self) {
            let _ = self.tx.send(Command::Fault);
        }
    }

    fn long_request(engine: &Engine, seed: u64) -> Submission {
        let samples = (0..2)
            .map(|j| SamplingParams {
                temperature: 1.0,
                seed: seed * 2 + j,
                max_new_tokens: 200,
                ignore_stop: true,
                stream: false,
                logprobs: None,
                ..Default::default()
            })
            .collect();
        let prompt = std::iter::once(2)
            .chain((1..40u32).map(|i| 6 + (i * 37 + seed as u32) % 256))
            .collect();
        engine
            .submit_blocking(Work::Generate { prompt, samples })
            .unwrap()
    }

    /// The tiny f32 fixture on one thread, 200 blocks of 8.
    fn tiny_engine() -> Engine {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-f32");
        let model = Gemma2::load(&dir, CpuBackend).unwrap();
        Engine::start(
            model,
            EngineOptions {
                num_blocks: Some(200),
                block_size: 8,
                threads: Some(1),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// Events until the stream ends; whether it finished (every sample came).
    fn drain(sub: &mut Submission, samples: usize) -> bool {
        let mut got = 0;
        while let Some(ev) = sub.next_blocking() {
            if matches!(ev, Event::Sample { .. }) {
                got += 1;
            }
        }
        got == samples
    }

    #[test]
    fn an_internal_error_fails_the_requests_held_and_the_engine_starts_again() {
        let engine = tiny_engine();
        let total = engine.info.num_blocks;
        // A fault while two requests run: both end unfinished, nothing else is lost.
        for round in 0..MAX_RESTARTS_PER_MINUTE as u64 {
            let (mut a, mut b) = (
                long_request(&engine, round * 2),
                long_request(&engine, round * 2 + 1),
            );
            engine.inject_fault();
            assert!(!drain(&mut a, 2), "round {round}: held, so failed");
            assert!(!drain(&mut b, 2), "round {round}");
            assert!(engine.alive(), "round {round}: started again");
            let s = engine.stats();
            assert_eq!(s.scheduler.restarts, round + 1);
            assert_eq!(s.kv.blocks_used, 0, "a fresh KV pool");
            assert_eq!(engine.info.num_blocks, total);
            // The next request is served whole.
            let mut c = long_request(&engine, 100 + round);
            assert!(drain(&mut c, 2), "round {round}: served after the restart");
        }
        // One more within the minute: the engine stops, and says so.
        let mut d = long_request(&engine, 200);
        engine.inject_fault();
        assert!(!drain(&mut d, 2));
        for _ in 0..100 {
            if !engine.alive() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!engine.alive(), "too many internal errors: stopped");
        assert!(matches!(
            engine.submit_blocking(Work::Generate {
                prompt: vec![2, 7],
                samples: vec![SamplingParams::default()]
            }),
            Err(EngineError::Stopped(_))
        ));
    }

    #[test]
    fn streamed_tokens_are_the_samples_tokens_with_logprobs() {
        let engine = tiny_engine();
        let params = |stream: bool, seed: u64| SamplingParams {
            temperature: 1.0,
            seed,
            max_new_tokens: 24,
            ignore_stop: true,
            stream,
            logprobs: stream.then_some(3),
            ..Default::default()
        };
        let prompt: Vec<u32> = vec![2, 10, 11, 12, 13];
        let run = |stream: bool| {
            let mut sub = engine
                .submit_blocking(Work::Generate {
                    prompt: prompt.clone(),
                    samples: vec![params(stream, 1), params(stream, 2)],
                })
                .unwrap();
            let (mut streamed, mut done) = (vec![Vec::new(); 2], vec![Vec::new(); 2]);
            while let Some(ev) = sub.next_blocking() {
                match ev {
                    Event::Token {
                        sample,
                        token,
                        logprobs,
                    } => {
                        let lp = logprobs.expect("asked for");
                        assert_eq!(lp.token, token);
                        assert!(lp.logprob <= 0.0 && lp.top.len() == 3);
                        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
                        streamed[sample].push(token);
                    }
                    Event::Sample { sample, tokens, .. } => done[sample] = tokens,
                    _ => {}
                }
            }
            (streamed, done)
        };
        let (streamed, done) = run(true);
        assert_eq!(streamed, done, "each token streamed, in order");
        let (none, plain) = run(false);
        assert!(
            none.iter().all(Vec::is_empty),
            "nothing streamed unless asked"
        );
        assert_eq!(plain, done, "streaming and logprobs change no token");
    }
}
