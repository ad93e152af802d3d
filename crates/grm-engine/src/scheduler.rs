//! Continuous batching: every step takes the running sequences' next tokens and chunks of
//! waiting prompts, up to a token budget, through one forward pass.
//!
//! A generation request is one prompt and k samples: the prompt is prefilled once by a parent
//! sequence, then forked into k children that share its blocks and each sample from the same
//! last-position logits with their own seed. When blocks run out, the newest sequences are
//! preempted (their blocks freed, their tokens kept) and recomputed later; since every CPU kernel
//! is batch-invariant and the sampler's state is kept, outputs do not change (on the GPU,
//! whose kernels and cuBLAS do not promise the same bits for a row in every batch, a near-tie
//! can go the other way). Cancelling a
//! request frees all its blocks at once. Only this module mutates block tables.

use crate::backend::Backend;
use crate::device_sampler::RowSampling;
use crate::error::{EngineError, Result};
use crate::kv::{BlockManager, CopyOp, KvStats, OutOfBlocks, SeqId};
use crate::model::{check_vocab, ForwardBatch, Gemma2, Outputs};
use crate::sampler::{Sampler, SamplingParams};
use std::collections::{BTreeMap, HashMap, HashSet};

fn internal(what: String) -> EngineError {
    EngineError::Internal(what)
}

/// Identifies a request (a group of samples, or one scoring).
pub type RequestId = u64;

/// What a request asks for.
#[derive(Debug, Clone)]
pub enum Work {
    /// k samples continuing one prompt; each entry is one sample's sampling.
    Generate {
        prompt: Vec<u32>,
        samples: Vec<SamplingParams>,
    },
    /// Prefill only: the head's output at the last token (meta-RM scalar scoring).
    Score { tokens: Vec<u32> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token (not included in the tokens).
    Stop,
    /// max_new_tokens reached.
    Length,
}

/// What the engine reports about a request. More kinds may come: match with a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The request left the waiting queue: its first sequence got blocks and is computed from
    /// this step on. Sent once, before any other event of the request (the time from submission
    /// to this event is the request's queueing time).
    Started,
    /// The prompt is in the cache; `cached` of its tokens came from the prefix cache.
    Prefilled { prompt_tokens: usize, cached: usize },
    /// One sample finished.
    Sample {
        sample: usize,
        tokens: Vec<u32>,
        finish: FinishReason,
    },
    /// A scoring request's output row.
    Score {
        values: Vec<f32>,
        prompt_tokens: usize,
        cached: usize,
    },
}

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

/// Priority key: older requests first; within one, the parent (0) then the samples.
type Key = (u64, usize);

struct Sequence {
    request: RequestId,
    key: Key,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    state: SeqState,
    role: Role,
}

/// Where a sequence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqState {
    /// Holds no blocks (new, or preempted with its tokens kept): every token is computed once
    /// it is admitted.
    Waiting,
    /// Holds blocks for all its tokens; `computed` of them are in the cache, the rest are
    /// computed in chunks. The last chunk gives the sequence's output.
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
}

/// How the device draws a sample's token at `step` (its index among the sample's tokens), or
/// `None` for settings it leaves to the host (a top-k cut other than greedy).
fn device_setting(p: &SamplingParams, step: usize) -> Option<RowSampling> {
    if p.top_k > 1 && p.temperature > 0.0 {
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

enum Role {
    /// Prefills a generation request's prompt, then forks into its samples. `cached`: prompt
    /// tokens the prefix cache served at its first admission.
    Parent {
        cached: Option<usize>,
    },
    Child {
        sample: usize,
        sampler: Box<Sampler>,
    },
    Scorer {
        cached: Option<usize>,
    },
}

struct Request {
    samples: Vec<SamplingParams>,
    live: Vec<SeqId>,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SchedulerCounters {
    pub steps: u64,
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
}

pub struct Scheduler<B: Backend> {
    model: Gemma2<B>,
    kv: B::Kv,
    blocks: BlockManager,
    config: SchedulerConfig,
    seqs: HashMap<SeqId, Sequence>,
    order: BTreeMap<Key, SeqId>,
    requests: HashMap<RequestId, Request>,
    next_seq: SeqId,
    next_arrival: u64,
    counters: SchedulerCounters,
}

/// One sequence's part of a step.
struct Planned {
    seq: SeqId,
    start: usize,
    len: usize,
    slots: Vec<usize>,
    output: bool,
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

    pub fn kv_stats(&self) -> KvStats {
        self.blocks.stats()
    }

    pub fn counters(&self) -> SchedulerCounters {
        let mut c = self.counters;
        c.running = self.seqs.values().filter(|s| s.admitted()).count();
        c.waiting = self.seqs.len() - c.running;
        c.requests = self.requests.len();
        c.queued_tokens = self
            .seqs
            .values()
            .map(|s| s.tokens.len() - s.computed())
            .sum();
        c
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Checks and queues a request.
    pub fn submit(&mut self, id: RequestId, work: Work) -> Result<()> {
        let c = &self.model.config;
        let (tokens, samples, role) = match work {
            Work::Generate { prompt, samples } => {
                if samples.is_empty() {
                    return Err(EngineError::Invalid(
                        "a generation request needs at least one sample".into(),
                    ));
                }
                for s in &samples {
                    s.validate().map_err(EngineError::Invalid)?;
                }
                if self.model.output_width() != c.vocab_size
                    || !matches!(c.head, crate::config::Head::CausalLm)
                {
                    return Err(EngineError::Invalid(
                        "this model has a scoring head; it cannot generate".into(),
                    ));
                }
                (prompt, samples, Role::Parent { cached: None })
            }
            Work::Score { tokens } => (tokens, Vec::new(), Role::Scorer { cached: None }),
        };
        if tokens.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        check_vocab(&tokens, c.vocab_size)?;
        let longest = tokens.len() + samples.iter().map(|s| s.max_new_tokens).max().unwrap_or(0);
        if longest > c.max_position_embeddings {
            return Err(EngineError::Limit {
                what: "prompt tokens + max_new_tokens",
                found: longest,
                limit: c.max_position_embeddings,
            });
        }
        let needed = self.blocks.blocks_for(longest);
        let total = self.blocks.stats().blocks_total;
        if needed > total {
            return Err(EngineError::KvTooSmall {
                needed,
                available: total,
            });
        }
        if self.requests.contains_key(&id) {
            return Err(EngineError::Invalid(format!(
                "request id {id} is already in use"
            )));
        }
        let seq = self.new_seq(id, (self.next_arrival, 0), tokens, role);
        self.next_arrival += 1;
        self.requests.insert(
            id,
            Request {
                samples,
                live: vec![seq],
            },
        );
        Ok(())
    }

    fn new_seq(&mut self, request: RequestId, key: Key, tokens: Vec<u32>, role: Role) -> SeqId {
        let id = self.next_seq;
        self.next_seq += 1;
        let prompt_len = tokens.len();
        self.seqs.insert(
            id,
            Sequence {
                request,
                key,
                tokens,
                prompt_len,
                state: SeqState::Waiting,
                role,
            },
        );
        self.order.insert(key, id);
        id
    }

    /// Drops a request and frees all its blocks. Returns whether it existed.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let Some(req) = self.requests.remove(&id) else {
            return false;
        };
        for seq in req.live {
            self.drop_seq(seq);
        }
        true
    }

    fn drop_seq(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            self.order.remove(&s.key);
            self.blocks.free(seq);
        }
    }

    fn preempt(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.get_mut(&seq) {
            self.blocks.free(seq);
            s.state = SeqState::Waiting;
            self.counters.preemptions += 1;
        }
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
        let (plan, copies, started) = self.plan();
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let kv = self.blocks.stats();
        self.counters.peak_blocks_used = self.counters.peak_blocks_used.max(kv.blocks_used);
        self.counters.peak_blocks_shared = self.counters.peak_blocks_shared.max(kv.blocks_shared);
        let batch = self.build_batch(&plan, copies)?;
        let out = self.model.forward_device(&mut self.kv, &batch);
        self.counters.steps += 1;
        let outputs = match self.device_tokens(&plan, &out) {
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
        let mut events: Vec<(RequestId, Event)> =
            started.into_iter().map(|r| (r, Event::Started)).collect();
        events.extend(self.finish_step(plan, outputs)?);
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
            let s = self.seqs.get(&p.seq)?;
            match &s.role {
                Role::Scorer { .. } => return None,
                Role::Parent { .. } => {
                    let samples = &self.requests.get(&s.request)?.samples;
                    for params in samples {
                        settings.push(device_setting(params, 0)?);
                        rows.push(row);
                    }
                    per_row.push(samples.len());
                }
                Role::Child { sampler, .. } => {
                    settings.push(device_setting(
                        sampler.params(),
                        s.tokens.len() - s.prompt_len,
                    )?);
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

    /// Chooses this step's work, reserving slots (and preempting when blocks run out). Also
    /// returns the requests admitted for the first time.
    fn plan(&mut self) -> (Vec<Planned>, Vec<CopyOp>, Vec<RequestId>) {
        let mut budget = self.config.max_batch_tokens;
        let mut plan: Vec<Planned> = Vec::new();
        let mut copies = Vec::new();
        let mut scheduled: HashSet<SeqId> = HashSet::new();
        let mut admission_blocked = false;
        let mut started = Vec::new();
        let queue: Vec<SeqId> = self.order.values().copied().collect();
        for seq in queue {
            if budget == 0 || plan.len() >= self.config.max_seqs {
                break;
            }
            // It may have been preempted or dropped earlier in this loop.
            let Some(s) = self.seqs.get_mut(&seq) else {
                continue;
            };
            if s.state == SeqState::Waiting {
                if admission_blocked {
                    continue;
                }
                match self.blocks.admit(seq, &s.tokens) {
                    Ok(cached) => {
                        s.state = SeqState::Prefill { computed: cached };
                        if let Role::Parent { cached: first } | Role::Scorer { cached: first } =
                            &mut s.role
                        {
                            if first.is_none() {
                                started.push(s.request);
                            }
                            first.get_or_insert(cached);
                        }
                    }
                    Err(OutOfBlocks) => {
                        // First come, first served: nothing younger is admitted either.
                        admission_blocked = true;
                        continue;
                    }
                }
            }
            if let SeqState::Prefill { computed } = s.state {
                let len = (s.tokens.len() - computed).min(budget);
                let slots = self.blocks.reserve_prompt(seq, len);
                plan.push(Planned {
                    seq,
                    start: computed,
                    len,
                    slots,
                    output: computed + len == s.tokens.len(),
                });
                scheduled.insert(seq);
                budget -= len;
                continue;
            }
            // Decode: one new slot, preempting younger sequences while blocks lack.
            let start = s.tokens.len() - 1;
            loop {
                match self.blocks.append_slot(seq) {
                    Ok((slot, copy)) => {
                        copies.extend(copy);
                        plan.push(Planned {
                            seq,
                            start,
                            len: 1,
                            slots: vec![slot],
                            output: true,
                        });
                        scheduled.insert(seq);
                        budget -= 1;
                        break;
                    }
                    Err(OutOfBlocks) => {
                        let victim = self.order.values().rev().copied().find(|v| {
                            *v != seq
                                && !scheduled.contains(v)
                                && self.seqs.get(v).is_some_and(Sequence::admitted)
                        });
                        match victim {
                            Some(v) => self.preempt(v),
                            None => {
                                // It gives up its own blocks for older work; nothing younger
                                // may take them, or the oldest request would starve.
                                self.preempt(seq);
                                admission_blocked = true;
                                break;
                            }
                        }
                    }
                }
            }
        }
        (plan, copies, started)
    }

    fn build_batch(&self, plan: &[Planned], copies: Vec<CopyOp>) -> Result<ForwardBatch> {
        let mut b = ForwardBatch {
            copies,
            ..Default::default()
        };
        b.meta.block_size = self.blocks.block_size();
        for (i, p) in plan.iter().enumerate() {
            let (Some(s), Some(table)) = (self.seqs.get(&p.seq), self.blocks.table(p.seq)) else {
                return Err(internal(format!(
                    "planned sequence {} has no blocks",
                    p.seq
                )));
            };
            b.meta.spans.push(table.blocks.clone());
            for pos in p.start..p.start + p.len {
                b.tokens.push(s.tokens[pos]);
                b.meta.positions.push(pos as u32);
                b.meta.span_of.push(i as u32);
            }
            b.slots.extend_from_slice(&p.slots);
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
            let Some(s) = self.seqs.get_mut(&p.seq) else {
                return Err(internal(format!("planned sequence {} vanished", p.seq)));
            };
            // Prompt positions among the chunk's (a recomputed sample's chunk may go past them).
            let prompt_part = (p.start + p.len).min(s.prompt_len).saturating_sub(p.start);
            self.counters.prompt_tokens_computed += prompt_part as u64;
            if let SeqState::Prefill { computed } = &mut s.state {
                *computed += p.len;
            }
            let request = s.request;
            self.blocks.register_full_blocks(p.seq, &s.tokens);
            if !p.output {
                continue;
            }
            let out = match &outputs {
                StepOutputs::Logits(o) => Output::Logits(o.row(row)),
                StepOutputs::Tokens(t) => Output::Tokens(&t[row]),
            };
            row += 1;
            self.on_output(p.seq, request, out, &mut events)?;
        }
        Ok(events)
    }

    /// A sequence reached the end of its known tokens: sample, fork, score or finish.
    fn on_output(
        &mut self,
        seq: SeqId,
        request: RequestId,
        out: Output<'_>,
        events: &mut Vec<(RequestId, Event)>,
    ) -> Result<()> {
        let device_rule = self.model.backend().samples_on_device();
        let Some(s) = self.seqs.get_mut(&seq) else {
            return Err(internal(format!(
                "sequence {seq} vanished before its output"
            )));
        };
        match &mut s.role {
            Role::Scorer { cached } => {
                let cached = cached.unwrap_or(0);
                let prompt_tokens = s.prompt_len;
                // Scoring steps always come back as values (see device_tokens).
                let values = match out {
                    Output::Logits(v) if !v.is_empty() => v.to_vec(),
                    _ => return Err(internal(format!("request {request}: no score values"))),
                };
                events.push((
                    request,
                    Event::Score {
                        values,
                        prompt_tokens,
                        cached,
                    },
                ));
                self.finish_seq(request, seq);
            }
            Role::Parent { cached } => {
                let cached = cached.unwrap_or(0);
                let (prompt, arrival) = (s.tokens.clone(), s.key.0);
                let prompt_len = prompt.len();
                events.push((
                    request,
                    Event::Prefilled {
                        prompt_tokens: prompt_len,
                        cached,
                    },
                ));
                let samples = match self.requests.get(&request) {
                    Some(r) if !r.samples.is_empty() => r.samples.clone(),
                    _ => return Err(internal(format!("request {request}: no samples to fork"))),
                };
                if let Output::Tokens(t) = out {
                    if t.len() != samples.len() {
                        return Err(internal(format!(
                            "request {request}: {} tokens drawn for {} samples",
                            t.len(),
                            samples.len()
                        )));
                    }
                }
                let mut children = Vec::with_capacity(samples.len());
                for (i, params) in samples.into_iter().enumerate() {
                    let mut sampler = Sampler::new(params);
                    let mut tokens = prompt.clone();
                    tokens.push(match out {
                        Output::Logits(l) => host_token(device_rule, &mut sampler, l, 0),
                        Output::Tokens(t) => t[i],
                    });
                    self.counters.generated_tokens += 1;
                    let child = self.new_seq(
                        request,
                        (arrival, i + 1),
                        tokens,
                        Role::Child {
                            sample: i,
                            sampler: Box::new(sampler),
                        },
                    );
                    self.blocks.fork(seq, child);
                    let Some(c) = self.seqs.get_mut(&child) else {
                        unreachable!("inserted above")
                    };
                    // It holds the prompt's blocks; its first token is computed next.
                    c.state = SeqState::Decode;
                    c.prompt_len = prompt_len;
                    children.push(child);
                }
                if let Some(r) = self.requests.get_mut(&request) {
                    r.live.extend(&children);
                }
                self.finish_seq(request, seq);
                // A sample may be done at once (a stop token, or max_new_tokens = 1).
                for child in children {
                    self.check_done(child, request, events);
                }
            }
            Role::Child { sampler, .. } => {
                let token = match out {
                    Output::Logits(l) => {
                        host_token(device_rule, sampler, l, s.tokens.len() - s.prompt_len)
                    }
                    Output::Tokens(&[t]) => t,
                    Output::Tokens(t) => {
                        return Err(internal(format!(
                            "sequence {seq}: {} tokens drawn for one sample",
                            t.len()
                        )))
                    }
                };
                s.tokens.push(token);
                // After a recompute, the sample decodes again.
                s.state = SeqState::Decode;
                self.counters.generated_tokens += 1;
                self.check_done(seq, request, events);
            }
        }
        Ok(())
    }

    /// Finishes a sample whose last token is a stop token or whose length is reached.
    fn check_done(&mut self, seq: SeqId, request: RequestId, events: &mut Vec<(RequestId, Event)>) {
        let Some(s) = self.seqs.get(&seq) else { return };
        let Role::Child { sample, sampler } = &s.role else {
            return;
        };
        let p = sampler.params();
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
                sample: *sample,
                tokens: kept.to_vec(),
                finish,
            },
        ));
        self.finish_seq(request, seq);
    }

    /// Drops a finished sequence; the request ends with its last sequence.
    fn finish_seq(&mut self, request: RequestId, seq: SeqId) {
        self.drop_seq(seq);
        if let Some(r) = self.requests.get_mut(&request) {
            r.live.retain(|&s| s != seq);
            if r.live.is_empty() {
                self.requests.remove(&request);
            }
        }
    }
}

impl<B: Backend> Scheduler<B> {
    /// Whether a request is still queued or running.
    pub fn has_request(&self, id: RequestId) -> bool {
        self.requests.contains_key(&id)
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
            ..Default::default()
        }
    }

    /// First come, first served: after every step, each sequence waiting for blocks is younger
    /// than every sequence holding blocks — also right after a sequence preempted itself.
    #[test]
    fn waiting_sequences_are_always_younger_than_admitted_ones() {
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
            let admitted = s.seqs.values().filter(|q| q.admitted()).map(|q| q.key);
            let waiting = s.seqs.values().filter(|q| !q.admitted()).map(|q| q.key);
            if let (Some(young), Some(old)) = (admitted.max(), waiting.min()) {
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
