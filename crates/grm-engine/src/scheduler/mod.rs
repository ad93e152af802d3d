//! Continuous batching: every step takes the running samples' next tokens and chunks of
//! waiting prompts, up to a token budget, through one forward pass.
//!
//! A generation request is a set of prompts (one, or a GRM request's shuffled orders) and
//! k samples, each continuing one of them. The prompts are prefilled as one prefix tree
//! ([`prompt_tree`]): a shared prefix is computed once and its blocks are shared. When a
//! prompt is in the cache it forks into its samples, which share its blocks and each sample
//! from the same last-position logits with their own seed. When blocks run out, the newest
//! work is preempted (its blocks freed, its tokens kept) and recomputed later; since every CPU
//! kernel is batch-invariant and the sampler's state is kept, outputs do not change (on the
//! GPU, whose kernels and cuBLAS do not promise the same bits for a row in every batch, a
//! near-tie can go the other way). Cancelling a request frees all its blocks at once. Only
//! this module mutates block tables.

mod live_prefix;
pub mod prompt_tree;
mod tree;
mod work;

pub use work::{Event, FinishReason, Work};

use crate::backend::Backend;
use crate::device_sampler::RowSampling;
use crate::error::{EngineError, Result};
use crate::kv::{BlockManager, CopyOp, KvStats, OutOfBlocks, SeqId};
use crate::model::{ForwardBatch, Gemma2, Outputs};
use crate::sampler::{Sampler, SamplingParams};
use std::collections::{BTreeMap, HashMap, HashSet};
use tree::PromptTree;

fn internal(what: String) -> EngineError {
    EngineError::Internal(what)
}

/// Identifies a request (a group of samples, or one scoring).
pub type RequestId = u64;

/// Scheduling limits.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Tokens per forward step (prefill chunks plus one per decoding sequence).
    pub max_batch_tokens: usize,
    /// Sequences per forward step.
    pub max_seqs: usize,
    /// Stop tokens added to every sample's own (eos, `<end_of_turn>`).
    pub default_stop_tokens: Vec<u32>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 512,
            max_seqs: 256,
            default_stop_tokens: Vec::new(),
        }
    }
}

/// Priority key: older requests first; within one, its prompts (0) then its samples (1 + the
/// sample's index).
type Key = (u64, usize);

/// What holds a place in the queue: a request's prompts, or one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Tree(RequestId),
    Sample(SeqId),
}

/// One sample: its prompt, then its tokens so far.
struct Sequence {
    request: RequestId,
    key: Key,
    tokens: Vec<u32>,
    prompt_len: usize,
    state: SeqState,
    /// Its index in the work.
    sample: usize,
    sampler: Box<Sampler>,
}

/// Where a sample stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqState {
    /// Holds no blocks (preempted, its tokens kept): every token is computed again once it is
    /// admitted.
    Waiting,
    /// Holds blocks for all its tokens; `computed` of them are in the cache, the rest are
    /// computed in chunks. The last chunk gives its next token.
    Prefill { computed: usize },
    /// Every token but the last is in the cache; a step computes the last and samples the
    /// next.
    Decode,
}

impl Sequence {
    fn admitted(&self) -> bool {
        self.state != SeqState::Waiting
    }

    /// Tokens whose KV is in the cache.
    fn computed(&self) -> usize {
        match self.state {
            SeqState::Waiting => 0,
            SeqState::Prefill { computed } => computed,
            SeqState::Decode => self.tokens.len() - 1,
        }
    }

    /// Tokens generated so far (the index of the next one among them).
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// How the device draws a sample's token at `step` (its index among the sample's tokens), or
/// `None` for settings it leaves to the host (a top-k cut other than greedy).
fn device_setting(p: &SamplingParams, step: usize) -> Option<RowSampling> {
    // Log-probabilities need the logits on the host.
    if (p.top_k > 1 && p.temperature > 0.0) || p.logprobs.is_some() {
        return None;
    }
    Some(RowSampling {
        temperature: if p.top_k == 1 { 0.0 } else { p.temperature },
        top_p: p.top_p,
        seed: p.seed,
        step: step as u64,
    })
}

/// A token drawn on the host. On a backend that samples on the device, a sample the device
/// could draw is drawn by the device's rule here too (its CPU reference), so that its tokens
/// do not depend on whether a scoring request or a top-k sample shared its step.
fn host_token(device_rule: bool, sampler: &mut Sampler, logits: &[f32], step: usize) -> u32 {
    match device_setting(sampler.params(), step).filter(|_| device_rule) {
        Some(setting) => crate::device_sampler::sample_row(logits, setting),
        None => sampler.sample(logits),
    }
}

/// The event of a streamed sample's new token (none for a sample not streamed, or for the
/// stop token that ends it).
fn token_event(
    p: &SamplingParams,
    sample: usize,
    token: u32,
    logits: Option<&[f32]>,
    config: &SchedulerConfig,
) -> Option<Event> {
    let stops = !p.ignore_stop
        && (p.stop_tokens.contains(&token) || config.default_stop_tokens.contains(&token));
    (p.stream && !stops).then(|| Event::Token {
        sample,
        token,
        logprobs: p
            .logprobs
            .and_then(|n| Some(crate::logprobs::of(logits?, token, n))),
    })
}

/// What a step produced for its output rows: values on the host, or tokens drawn on the
/// device (one per sample of each row).
enum StepOutputs {
    Logits(Outputs),
    Tokens(Vec<Vec<u32>>),
}

/// One output row of a step.
#[derive(Clone, Copy)]
enum Output<'a> {
    Logits(&'a [f32]),
    Tokens(&'a [u32]),
}

struct Request {
    /// Each sample's sampling, by its index in the work.
    samples: Vec<SamplingParams>,
    /// Samples still running or waiting.
    live: Vec<SeqId>,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SchedulerCounters {
    pub steps: u64,
    /// Prompt positions computed (a prompt tree's shared prefixes once; recomputation after a
    /// preemption again): compare with the prompts' distinct tokens
    /// ([`prompt_tree::unique_tokens`]).
    pub prompt_tokens_computed: u64,
    pub generated_tokens: u64,
    pub preemptions: u64,
    pub running: usize,
    pub waiting: usize,
    pub requests: usize,
    /// Tokens that the queued and running work still has to compute (prompts) — a load figure.
    pub queued_tokens: usize,
    /// Most KV blocks in use at once, and most shared at once, since start.
    pub peak_blocks_used: usize,
    pub peak_blocks_shared: usize,
    /// Times the engine started again after an internal error.
    pub restarts: u64,
}

pub struct Scheduler<B: Backend> {
    model: Gemma2<B>,
    kv: B::Kv,
    blocks: BlockManager,
    config: SchedulerConfig,
    seqs: HashMap<SeqId, Sequence>,
    trees: HashMap<RequestId, PromptTree>,
    order: BTreeMap<Key, Unit>,
    requests: HashMap<RequestId, Request>,
    next_seq: SeqId,
    next_arrival: u64,
    counters: SchedulerCounters,
}

/// One chunk of a step: consecutive positions of one block table.
struct Planned {
    unit: Unit,
    /// The distinct prompt of a tree the chunk belongs to (0 for a sample).
    branch: usize,
    /// The block table the chunk is computed through.
    table: SeqId,
    start: usize,
    tokens: Vec<u32>,
    slots: Vec<usize>,
    /// (offset in the chunk, slot): also written there (see `prompt_tree`).
    extra: Vec<(usize, usize)>,
    output: bool,
}

/// What came of trying to admit a waiting unit.
enum Admission {
    /// It holds blocks now; `first`: for the first time (its request starts).
    Admitted { first: bool },
    /// Too few blocks: nothing younger is admitted either.
    NoBlocks,
    /// It waits for a prefix another request is computing (`live_prefix`).
    Waits,
}

/// What [`Scheduler::plan`] chose for a step.
#[derive(Default)]
struct StepPlan {
    chunks: Vec<Planned>,
    copies: Vec<CopyOp>,
    /// Requests admitted for the first time.
    started: Vec<RequestId>,
}

/// A step's copies run at once on the GPU (in order on the CPU): they agree only if no copy
/// writes a block that another reads or writes. A plan that breaks this is a bug, reported as
/// one rather than left to corrupt the KV cache.
fn check_copies(copies: &[CopyOp]) -> Result<()> {
    let dsts: HashSet<_> = copies.iter().map(|c| c.dst).collect();
    if dsts.len() != copies.len() {
        return Err(internal(format!(
            "a step copies into one block twice: {copies:?}"
        )));
    }
    if let Some(c) = copies.iter().find(|c| dsts.contains(&c.src)) {
        return Err(internal(format!(
            "a step copies from block {} while another copy writes it: {copies:?}",
            c.src
        )));
    }
    Ok(())
}

impl<B: Backend> Scheduler<B> {
    pub fn new(
        model: Gemma2<B>,
        num_blocks: usize,
        block_size: usize,
        prefix_caching: bool,
        config: SchedulerConfig,
    ) -> Result<Self> {
        let kv = model.new_kv(num_blocks, block_size)?;
        Ok(Self {
            model,
            kv,
            blocks: BlockManager::new(num_blocks, block_size, prefix_caching),
            config,
            seqs: HashMap::new(),
            trees: HashMap::new(),
            order: BTreeMap::new(),
            requests: HashMap::new(),
            next_seq: 1,
            next_arrival: 0,
            counters: SchedulerCounters::default(),
        })
    }

    pub fn model(&self) -> &Gemma2<B> {
        &self.model
    }

    /// The model back, its KV cache freed: the next scheduler reuses the loaded weights (a
    /// benchmark of a 27B model loads them once, not once per measurement).
    pub fn into_model(self) -> Gemma2<B> {
        self.model
    }

    /// A fresh scheduler over the same loaded model, after an internal error: every request
    /// and KV block dropped (a broken invariant leaves them unfit to reuse), the counters kept
    /// so that what they measure stays monotonic.
    pub fn restarted(self) -> Result<Self> {
        let (num_blocks, block_size, prefix_caching) = (
            self.blocks.num_blocks(),
            self.blocks.block_size(),
            self.blocks.prefix_caching(),
        );
        let (config, counters) = (self.config.clone(), self.counters);
        let Self { model, kv, .. } = self;
        // The old pool is freed before the new one is taken.
        drop(kv);
        let mut fresh = Self::new(model, num_blocks, block_size, prefix_caching, config)?;
        fresh.counters = SchedulerCounters {
            restarts: counters.restarts + 1,
            ..counters
        };
        Ok(fresh)
    }

    pub fn kv_stats(&self) -> KvStats {
        self.blocks.stats()
    }

    pub fn counters(&self) -> SchedulerCounters {
        let mut c = self.counters;
        c.running = self.seqs.values().filter(|s| s.admitted()).count();
        c.waiting = self.seqs.len() - c.running;
        c.queued_tokens = self
            .seqs
            .values()
            .map(|s| s.tokens.len() - s.computed())
            .sum();
        for t in self.trees.values() {
            let (running, waiting, queued) = t.load();
            c.running += running;
            c.waiting += waiting;
            c.queued_tokens += queued;
        }
        c.requests = self.requests.len();
        c
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty() && self.trees.is_empty()
    }

    /// Whether a request is still queued or running.
    pub fn has_request(&self, id: RequestId) -> bool {
        self.requests.contains_key(&id)
    }

    /// Checks and queues a request.
    pub fn submit(&mut self, id: RequestId, work: Work) -> Result<()> {
        let prompts = work::check(
            work,
            &self.model.config,
            self.model.output_width(),
            self.blocks.block_size(),
            self.blocks.stats().blocks_total,
        )?;
        if self.requests.contains_key(&id) {
            return Err(EngineError::Invalid(format!(
                "request id {id} is already in use"
            )));
        }
        let key = (self.next_arrival, 0);
        self.next_arrival += 1;
        self.requests.insert(
            id,
            Request {
                samples: prompts.samples.clone(),
                live: Vec::new(),
            },
        );
        self.trees.insert(id, PromptTree::new(key, prompts));
        self.order.insert(key, Unit::Tree(id));
        Ok(())
    }

    fn next_seq_id(&mut self) -> SeqId {
        let id = self.next_seq;
        self.next_seq += 1;
        id
    }

    /// Drops a request and frees all its blocks. Returns whether it existed.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let Some(req) = self.requests.remove(&id) else {
            return false;
        };
        if let Some(t) = self.trees.remove(&id) {
            self.order.remove(&t.key);
            t.free(&mut self.blocks);
        }
        for seq in req.live {
            self.drop_seq(seq);
        }
        true
    }

    /// Ends a running sample of `request` now, as stopped (its caller found a stop string in
    /// its text): its `Sample` event, with the tokens drawn so far, and its blocks freed. None
    /// when no such sample runs (not forked yet, or already done).
    pub fn finish_sample(&mut self, request: RequestId, sample: usize) -> Option<Event> {
        let live = self.requests.get(&request)?.live.clone();
        let seq = live
            .into_iter()
            .find(|s| self.seqs.get(s).is_some_and(|q| q.sample == sample))?;
        let s = self.seqs.get(&seq)?;
        let event = Event::Sample {
            sample,
            tokens: s.tokens[s.prompt_len..].to_vec(),
            finish: FinishReason::Stop,
        };
        self.drop_seq(seq);
        if let Some(r) = self.requests.get_mut(&request) {
            r.live.retain(|&s| s != seq);
        }
        self.end_if_done(request);
        Some(event)
    }

    fn drop_seq(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            self.order.remove(&s.key);
            self.blocks.free(seq);
        }
    }

    /// Whether a queued unit holds blocks.
    fn admitted(&self, unit: Unit) -> bool {
        match unit {
            Unit::Sample(s) => self.seqs.get(&s).is_some_and(Sequence::admitted),
            Unit::Tree(r) => self.trees.get(&r).is_some_and(PromptTree::admitted),
        }
    }

    fn preempt(&mut self, unit: Unit) {
        match unit {
            Unit::Sample(seq) => {
                if let Some(s) = self.seqs.get_mut(&seq) {
                    self.blocks.free(seq);
                    s.state = SeqState::Waiting;
                }
            }
            Unit::Tree(r) => {
                if let Some(t) = self.trees.get_mut(&r) {
                    t.preempt(&mut self.blocks);
                }
            }
        }
        self.counters.preemptions += 1;
    }

    /// Runs one forward step over everything that can progress; returns the events of
    /// requests, each with its request id.
    ///
    /// # Panics
    /// When an invariant of the scheduler breaks (see [`Scheduler::try_step`]).
    pub fn step(&mut self) -> Vec<(RequestId, Event)> {
        match self.try_step() {
            Ok(events) => events,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Scheduler::step`], with a broken invariant (a bug, never bad input) reported as
    /// [`EngineError::Internal`]; the scheduler's state is then not to be trusted.
    pub fn try_step(&mut self) -> Result<Vec<(RequestId, Event)>> {
        // A step that failed before its copies ran leaves their sources held: free them.
        self.blocks.end_step();
        let plan = self.plan()?;
        if plan.chunks.is_empty() {
            self.blocks.end_step();
            return Ok(Vec::new());
        }
        check_copies(&plan.copies)?;
        let kv = self.blocks.stats();
        self.counters.peak_blocks_used = self.counters.peak_blocks_used.max(kv.blocks_used);
        self.counters.peak_blocks_shared = self.counters.peak_blocks_shared.max(kv.blocks_shared);
        let batch = self.build_batch(&plan.chunks, plan.copies)?;
        let out = self.model.forward_device(&mut self.kv, &batch);
        self.blocks.end_step();
        self.counters.steps += 1;
        let outputs = match self.device_tokens(&plan.chunks, &out) {
            Some(tokens) => StepOutputs::Tokens(tokens),
            None => {
                let (rows, cols, data) = self.model.backend().to_host(&out);
                StepOutputs::Logits(Outputs { rows, cols, data })
            }
        };
        let wanted = batch.outputs.len();
        let got = match &outputs {
            StepOutputs::Logits(o) => {
                (o.rows == wanted && o.data.len() == o.rows * o.cols).then_some(o.rows)
            }
            StepOutputs::Tokens(t) => Some(t.len()),
        };
        if got != Some(wanted) {
            return Err(internal(format!(
                "the step asked for {wanted} output rows and got {got:?}"
            )));
        }
        let mut events: Vec<(RequestId, Event)> = plan
            .started
            .into_iter()
            .map(|r| (r, Event::Started))
            .collect();
        events.extend(self.finish_step(plan.chunks, outputs)?);
        Ok(events)
    }

    /// Where the backend samples on the device (the GPU) and every output row of the step is
    /// a sample to draw with settings it supports (no top-k cut other than greedy, no scoring),
    /// the tokens of each output row, drawn there; otherwise `None`, and the host samples.
    fn device_tokens(&self, plan: &[Planned], out: &B::Act) -> Option<Vec<Vec<u32>>> {
        if !self.model.backend().samples_on_device() {
            return None;
        }
        let mut rows = Vec::new();
        let mut settings = Vec::new();
        let mut per_row = Vec::new();
        for (row, p) in plan.iter().filter(|p| p.output).enumerate() {
            match p.unit {
                Unit::Tree(r) => {
                    let tree = self.trees.get(&r)?;
                    let request = self.requests.get(&r)?;
                    let samples = tree.samples_of(p.branch)?;
                    for &s in samples {
                        settings.push(device_setting(request.samples.get(s)?, 0)?);
                        rows.push(row);
                    }
                    per_row.push(samples.len());
                }
                Unit::Sample(seq) => {
                    let s = self.seqs.get(&seq)?;
                    settings.push(device_setting(s.sampler.params(), s.generated())?);
                    rows.push(row);
                    per_row.push(1);
                }
            }
        }
        let tokens = self.model.backend().sample(out, &rows, &settings)?;
        let mut it = tokens.into_iter();
        Some(
            per_row
                .iter()
                .map(|&n| it.by_ref().take(n).collect())
                .collect(),
        )
    }

    /// Chooses this step's work, reserving slots (and preempting when blocks run out).
    fn plan(&mut self) -> Result<StepPlan> {
        let mut budget = self.config.max_batch_tokens;
        let mut plan = StepPlan::default();
        let mut scheduled: HashSet<Key> = HashSet::new();
        let mut admission_blocked = false;
        let queue: Vec<(Key, Unit)> = self.order.iter().map(|(k, u)| (*k, *u)).collect();
        for (key, unit) in queue {
            if budget == 0 || plan.chunks.len() >= self.config.max_seqs {
                break;
            }
            // It may have been preempted or dropped earlier in this loop.
            if self.order.get(&key) != Some(&unit) {
                continue;
            }
            if !self.admitted(unit) {
                if admission_blocked {
                    continue;
                }
                match self.admit(unit, &plan.copies)? {
                    Admission::Admitted { first } => {
                        if let (true, Unit::Tree(r)) = (first, unit) {
                            plan.started.push(r);
                        }
                    }
                    Admission::NoBlocks => {
                        // First come, first served: nothing younger is admitted either.
                        admission_blocked = true;
                        continue;
                    }
                    Admission::Waits => continue,
                }
            }
            let seq = match unit {
                Unit::Tree(r) => {
                    let room = self.config.max_seqs - plan.chunks.len();
                    self.plan_tree(r, &mut budget, room, &mut plan)?;
                    scheduled.insert(key);
                    continue;
                }
                Unit::Sample(seq) => seq,
            };
            let Some(s) = self.seqs.get(&seq) else {
                continue;
            };
            if let SeqState::Prefill { computed } = s.state {
                let len = (s.tokens.len() - computed).min(budget);
                let tokens = s.tokens[computed..computed + len].to_vec();
                let output = computed + len == s.tokens.len();
                let slots = self.blocks.reserve_prompt(seq, len);
                plan.chunks.push(Planned {
                    unit,
                    branch: 0,
                    table: seq,
                    start: computed,
                    tokens,
                    slots,
                    extra: Vec::new(),
                    output,
                });
                scheduled.insert(key);
                budget -= len;
                continue;
            }
            // Decode: one new slot, preempting younger work while blocks lack.
            let (start, token) = (s.tokens.len() - 1, s.tokens[s.tokens.len() - 1]);
            loop {
                match self.blocks.append_slot(seq) {
                    Ok((slot, copy)) => {
                        plan.copies.extend(copy);
                        plan.chunks.push(Planned {
                            unit,
                            branch: 0,
                            table: seq,
                            start,
                            tokens: vec![token],
                            slots: vec![slot],
                            extra: Vec::new(),
                            output: true,
                        });
                        scheduled.insert(key);
                        budget -= 1;
                        break;
                    }
                    Err(OutOfBlocks) => {
                        let victim = self
                            .order
                            .iter()
                            .rev()
                            .find(|(k, u)| {
                                **k != key && !scheduled.contains(*k) && self.admitted(**u)
                            })
                            .map(|(_, u)| *u);
                        match victim {
                            Some(v) => self.preempt(v),
                            None => {
                                // It gives up its own blocks for older work; nothing younger
                                // may take them, or the oldest request would starve.
                                self.preempt(unit);
                                admission_blocked = true;
                                break;
                            }
                        }
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Gives a waiting unit blocks, if it can have them; `copies`: the step's so far.
    fn admit(&mut self, unit: Unit, copies: &[CopyOp]) -> Result<Admission> {
        match unit {
            Unit::Sample(seq) => {
                let Some(s) = self.seqs.get_mut(&seq) else {
                    return Err(internal(format!("queued sample {seq} vanished")));
                };
                Ok(match self.blocks.admit(seq, &s.tokens) {
                    Ok(cached) => {
                        s.state = SeqState::Prefill { computed: cached };
                        Admission::Admitted { first: false }
                    }
                    Err(OutOfBlocks) => Admission::NoBlocks,
                })
            }
            Unit::Tree(r) => self.admit_tree(r, copies),
        }
    }

    fn build_batch(&self, plan: &[Planned], copies: Vec<CopyOp>) -> Result<ForwardBatch> {
        let mut b = ForwardBatch {
            copies,
            ..Default::default()
        };
        b.meta.block_size = self.blocks.block_size();
        for (i, p) in plan.iter().enumerate() {
            let Some(table) = self.blocks.table(p.table) else {
                return Err(internal(format!("planned table {} has no blocks", p.table)));
            };
            b.meta.spans.push(table.blocks.clone());
            let row0 = b.tokens.len();
            for (pos, &token) in (p.start..).zip(&p.tokens) {
                b.tokens.push(token);
                b.meta.positions.push(pos as u32);
                b.meta.span_of.push(i as u32);
            }
            b.slots.extend_from_slice(&p.slots);
            b.extra_slots
                .extend(p.extra.iter().map(|&(off, slot)| (row0 + off, slot)));
            if p.output {
                b.outputs.push(b.tokens.len() - 1);
            }
        }
        Ok(b)
    }

    fn finish_step(
        &mut self,
        plan: Vec<Planned>,
        outputs: StepOutputs,
    ) -> Result<Vec<(RequestId, Event)>> {
        let mut events = Vec::new();
        let mut row = 0;
        for p in plan {
            let len = p.tokens.len();
            let request = match p.unit {
                Unit::Tree(r) => {
                    let Some(t) = self.trees.get(&r) else {
                        return Err(internal(format!("request {r}'s prompts vanished")));
                    };
                    self.counters.prompt_tokens_computed += len as u64;
                    self.blocks
                        .register_full_blocks(p.table, t.tokens(p.branch));
                    r
                }
                Unit::Sample(seq) => {
                    let Some(s) = self.seqs.get_mut(&seq) else {
                        return Err(internal(format!("planned sample {seq} vanished")));
                    };
                    // Prompt positions of the chunk (a recomputed sample's may go past them).
                    let prompt_part = (p.start + len).min(s.prompt_len).saturating_sub(p.start);
                    self.counters.prompt_tokens_computed += prompt_part as u64;
                    if let SeqState::Prefill { computed } = &mut s.state {
                        *computed += len;
                    }
                    self.blocks.register_full_blocks(seq, &s.tokens);
                    s.request
                }
            };
            if !p.output {
                continue;
            }
            let out = match &outputs {
                StepOutputs::Logits(o) => Output::Logits(o.row(row)),
                StepOutputs::Tokens(t) => Output::Tokens(&t[row]),
            };
            row += 1;
            match p.unit {
                Unit::Tree(r) => self.on_prompt_output(r, p.branch, out, &mut events)?,
                Unit::Sample(seq) => self.on_sample_output(seq, request, out, &mut events)?,
            }
        }
        Ok(events)
    }

    /// A sample's last known token is computed: draw the next.
    fn on_sample_output(
        &mut self,
        seq: SeqId,
        request: RequestId,
        out: Output<'_>,
        events: &mut Vec<(RequestId, Event)>,
    ) -> Result<()> {
        let device_rule = self.model.backend().samples_on_device();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return Err(internal(format!("sample {seq} vanished before its output")));
        };
        let (token, logits) = match out {
            Output::Logits(l) => {
                let step = s.generated();
                (host_token(device_rule, &mut s.sampler, l, step), Some(l))
            }
            Output::Tokens(&[t]) => (t, None),
            Output::Tokens(t) => {
                return Err(internal(format!(
                    "sample {seq}: {} tokens drawn for one sample",
                    t.len()
                )))
            }
        };
        s.tokens.push(token);
        if let Some(e) = token_event(s.sampler.params(), s.sample, token, logits, &self.config) {
            events.push((request, e));
        }
        // After a recompute, the sample decodes again.
        s.state = SeqState::Decode;
        self.counters.generated_tokens += 1;
        self.check_done(seq, request, events);
        Ok(())
    }

    /// A new sample of `request` (`sample` its index) continuing `prompt`, whose blocks table
    /// `parent` holds, with its first token drawn; it shares the prompt's blocks and decodes
    /// from the next step.
    fn fork_sample(
        &mut self,
        (request, arrival): (RequestId, u64),
        sample: usize,
        sampler: Sampler,
        prompt: &[u32],
        parent: SeqId,
        token: u32,
    ) -> SeqId {
        self.counters.generated_tokens += 1;
        let id = self.next_seq_id();
        let mut tokens = Vec::with_capacity(prompt.len() + 1);
        tokens.extend_from_slice(prompt);
        tokens.push(token);
        let key = (arrival, 1 + sample);
        self.seqs.insert(
            id,
            Sequence {
                request,
                key,
                tokens,
                prompt_len: prompt.len(),
                state: SeqState::Decode,
                sample,
                sampler: Box::new(sampler),
            },
        );
        self.order.insert(key, Unit::Sample(id));
        self.blocks.fork(parent, id);
        if let Some(r) = self.requests.get_mut(&request) {
            r.live.push(id);
        }
        id
    }

    /// Finishes a sample whose last token is a stop token or whose length is reached.
    fn check_done(&mut self, seq: SeqId, request: RequestId, events: &mut Vec<(RequestId, Event)>) {
        let Some(s) = self.seqs.get(&seq) else { return };
        let p = s.sampler.params();
        let generated = &s.tokens[s.prompt_len..];
        // Called after a token was pushed: a sample always has one here.
        let Some(&last) = generated.last() else {
            return;
        };
        let stop = !p.ignore_stop
            && (p.stop_tokens.contains(&last) || self.config.default_stop_tokens.contains(&last));
        let finish = if stop {
            FinishReason::Stop
        } else if generated.len() >= p.max_new_tokens {
            FinishReason::Length
        } else {
            return;
        };
        let kept = if stop {
            &generated[..generated.len() - 1]
        } else {
            generated
        };
        events.push((
            request,
            Event::Sample {
                sample: s.sample,
                tokens: kept.to_vec(),
                finish,
            },
        ));
        self.drop_seq(seq);
        if let Some(r) = self.requests.get_mut(&request) {
            r.live.retain(|&s| s != seq);
        }
        self.end_if_done(request);
    }

    /// Forgets a request that has nothing left to run.
    fn end_if_done(&mut self, request: RequestId) {
        let done = self
            .requests
            .get(&request)
            .is_some_and(|r| r.live.is_empty() && !self.trees.contains_key(&request));
        if done {
            self.requests.remove(&request);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;

    fn tiny() -> Gemma2<CpuBackend> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-f32");
        Gemma2::load(&dir, CpuBackend).expect("the tiny-f32 fixture loads")
    }

    fn sample(seed: u64, max_new_tokens: usize) -> SamplingParams {
        SamplingParams {
            temperature: 4.0,
            seed,
            max_new_tokens,
            ignore_stop: true,
            stream: false,
            logprobs: None,
            ..Default::default()
        }
    }

    /// First come, first served: after every step, all work waiting for blocks is younger than
    /// all work holding blocks — also right after a sample preempted itself.
    #[test]
    fn waiting_work_is_always_younger_than_admitted_work() {
        let cfg = SchedulerConfig {
            max_batch_tokens: 512,
            ..Default::default()
        };
        let mut s = Scheduler::new(tiny(), 20, 4, true, cfg).expect("scheduler");
        let samples = (0..4).map(|j| sample(j, 30)).collect();
        s.submit(
            0,
            Work::Generate {
                prompt: vec![2, 7, 8],
                samples,
            },
        )
        .expect("submit");
        let mut self_preempted = false;
        for step in 1..400u64 {
            if step < 150 {
                let prompt = vec![2, 9, 10, 6 + (step % 200) as u32];
                let work = Work::Generate {
                    prompt,
                    samples: vec![sample(step, 4)],
                };
                s.submit(step, work).expect("submit");
            }
            let before = s.counters().preemptions;
            s.step();
            let (admitted, waiting): (Vec<(&Key, &Unit)>, _) =
                s.order.iter().partition(|(_, u)| s.admitted(**u));
            let young = admitted.iter().map(|(k, _)| **k).max();
            let old = waiting.iter().map(|(k, _)| **k).min();
            if let (Some(young), Some(old)) = (young, old) {
                assert!(
                    young < old,
                    "step {step}: {young:?} holds blocks while {old:?} waits"
                );
            }
            self_preempted |= s.counters().preemptions > before
                && s.seqs.values().any(|q| q.request == 0 && !q.admitted());
        }
        assert!(
            self_preempted,
            "the test must make the oldest request give up blocks"
        );
        assert!(s.is_idle());
    }
}
