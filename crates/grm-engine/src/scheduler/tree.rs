//! A request's prompts in the scheduler: waiting, or being prefilled as one tree (who computes
//! what is [`super::prompt_tree`]'s), each forking into its samples once it is in the cache.
//!
//! The prompts are admitted together, all or none, so a shared prefix is in every branch's
//! table before any branch is computed. A tree too large for the whole pool is admitted in
//! groups: the longest run of its prompts that fits, then the next.

use super::prompt_tree::{self, TreeLayout, TreeShape};
use super::work::{DistinctPrompt, Prompts};
use super::{
    host_token, internal, token_event, Admission, Event, Key, Output, Planned, RequestId,
    Scheduler, StepPlan, Unit,
};
use crate::backend::Backend;
use crate::error::Result;
use crate::kv::{BlockManager, CopyOp, SeqId, TreePrompt};
use crate::sampler::Sampler;

pub(super) struct PromptTree {
    pub key: Key,
    /// Distinct prompts not yet prefilled, in the order of the work.
    branches: Vec<Branch>,
    /// A scoring request: its one prompt's output row is the result.
    score: bool,
    /// Whether it was ever admitted (`Event::Started` went out).
    started: bool,
    state: TreeState,
    /// How `branches` share prefixes, kept while they do not change (admission is tried in
    /// every step while blocks lack).
    shape: Option<TreeShape>,
}

struct Branch {
    prompt: DistinctPrompt,
    /// Its tokens not computed for it, from its first admission (for `Event::Prefilled`).
    cached: Option<usize>,
}

enum TreeState {
    Waiting,
    /// The first `run.tables.len()` branches hold blocks and are being computed.
    Prefill(Box<Run>),
}

struct Run {
    /// Block table of each admitted branch.
    tables: Vec<SeqId>,
    layout: TreeLayout,
    /// Tokens of the stream (each branch's `layout.from..len`, in order) planned so far.
    cursor: usize,
    /// Branches whose prompt is in the cache (forked, table freed).
    done: Vec<bool>,
    /// Copies still to run, in the first step.
    copies: Vec<CopyOp>,
}

impl PromptTree {
    pub fn new(key: Key, prompts: Prompts) -> Self {
        Self {
            key,
            branches: prompts
                .distinct
                .into_iter()
                .map(|prompt| Branch {
                    prompt,
                    cached: None,
                })
                .collect(),
            score: prompts.score,
            started: false,
            state: TreeState::Waiting,
            shape: None,
        }
    }

    pub fn admitted(&self) -> bool {
        matches!(self.state, TreeState::Prefill(_))
    }

    pub fn tokens(&self, branch: usize) -> &[u32] {
        self.branches
            .get(branch)
            .map_or(&[][..], |b| &b.prompt.tokens[..])
    }

    /// The samples continuing a branch; `None` for a scoring request.
    pub fn samples_of(&self, branch: usize) -> Option<&[usize]> {
        let b = self.branches.get(branch)?;
        (!self.score).then_some(&b.prompt.samples[..])
    }

    /// Prompts being computed, prompts waiting, and the tokens still to compute.
    pub fn load(&self) -> (usize, usize, usize) {
        let len = |b: &Branch| b.prompt.tokens.len();
        match &self.state {
            TreeState::Waiting => (0, self.branches.len(), self.branches.iter().map(len).sum()),
            TreeState::Prefill(run) => {
                let m = run.tables.len();
                let stream: usize = (0..m)
                    .map(|j| len(&self.branches[j]) - run.layout.from[j])
                    .sum();
                let later: usize = self.branches[m..].iter().map(len).sum();
                (
                    run.done.iter().filter(|d| !**d).count(),
                    self.branches.len() - m,
                    stream - run.cursor + later,
                )
            }
        }
    }

    /// Whether it is a scoring request (its prompts fork into no samples).
    pub fn scores(&self) -> bool {
        self.score
    }

    /// The prompts being computed now: admitted, not yet forked into their samples.
    pub fn computing(&self) -> impl Iterator<Item = &[u32]> {
        let run = match &self.state {
            TreeState::Prefill(run) => Some(run),
            TreeState::Waiting => None,
        };
        run.into_iter().flat_map(move |run| {
            run.done
                .iter()
                .zip(&self.branches)
                .filter(|(done, _)| !**done)
                .map(|(_, b)| &b.prompt.tokens[..])
        })
    }

    /// Frees the blocks of the prompts being computed (a cancelled request).
    pub fn free(self, blocks: &mut BlockManager) {
        if let TreeState::Prefill(run) = self.state {
            for (j, &t) in run.tables.iter().enumerate() {
                if !run.done[j] {
                    blocks.free(t);
                }
            }
        }
    }

    /// Frees the blocks of the prompts being computed, to compute them again later; prompts
    /// already forked are dropped.
    pub fn preempt(&mut self, blocks: &mut BlockManager) {
        let TreeState::Prefill(run) = std::mem::replace(&mut self.state, TreeState::Waiting) else {
            return;
        };
        for (j, &t) in run.tables.iter().enumerate() {
            if !run.done[j] {
                blocks.free(t);
            }
        }
        self.shape = None;
        let mut j = 0;
        self.branches.retain(|_| {
            let keep = !run.done.get(j).copied().unwrap_or(false);
            j += 1;
            keep
        });
    }
}

impl<B: Backend> Scheduler<B> {
    /// Gives a waiting request's prompts blocks, sharing what live sequences of other
    /// requests hold of their prefixes (`live_prefix`), unless it waits for a prefix being
    /// computed; `copies` are the step's copies planned so far.
    pub(super) fn admit_tree(&mut self, r: RequestId, copies: &[CopyOp]) -> Result<Admission> {
        let bs = self.blocks.block_size();
        let total = self.blocks.stats().blocks_total;
        let Some(tree) = self.trees.get_mut(&r) else {
            return Err(internal(format!("request {r}'s prompts vanished")));
        };
        let prompts: Vec<&[u32]> = tree.branches.iter().map(|b| &b.prompt.tokens[..]).collect();
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let shape = tree.shape.get_or_insert_with(|| TreeShape::new(&prompts));
        // Each prompt fits the pool on its own (checked at submission); a tree may not.
        let mut m = 1;
        while m < prompts.len() && shape.blocks(&lens, m + 1, bs) <= total {
            m += 1;
        }
        let Some(tree) = self.trees.get(&r) else {
            return Err(internal(format!("request {r}'s prompts vanished")));
        };
        let prompts: Vec<&[u32]> = tree.branches[..m]
            .iter()
            .map(|b| &b.prompt.tokens[..])
            .collect();
        let live = self.live_share(r, &prompts, copies);
        // The prompts that need not wait go first (a group, as a tree too large for the
        // pool): waiting for all, the live sequences the first need may end meanwhile.
        let m = live.ready_run();
        if m == 0 {
            return Ok(Admission::Waits);
        }
        let prompts = &prompts[..m];
        let Some(shape) = tree.shape.as_ref() else {
            return Err(internal(format!("request {r} lost its shape")));
        };
        let tables: Vec<SeqId> = (0..m as u64).map(|i| self.next_seq + i).collect();
        let admission: Vec<TreePrompt<'_>> = (0..m)
            .map(|j| TreePrompt {
                seq: tables[j],
                tokens: prompts[j],
                donor: shape.donor[j],
                outside: live.outside[j],
            })
            .collect();
        let outside: Vec<_> = live
            .outside
            .iter()
            .map(|&o| self.outside_block(o))
            .collect();
        let Ok(have) = self.blocks.admit_tree(&admission) else {
            return Ok(Admission::NoBlocks);
        };
        self.next_seq += m as u64;
        let blocks: Vec<&[u32]> = tables
            .iter()
            .map(|t| self.blocks.table(*t).map_or(&[][..], |t| &t.blocks[..]))
            .collect();
        let Some(layout) = prompt_tree::layout(prompts, shape, &have, &outside, &blocks, bs) else {
            for t in tables {
                self.blocks.free(t);
            }
            return Err(internal(format!(
                "request {r}: a shared prompt position has no source"
            )));
        };
        let Some(tree) = self.trees.get_mut(&r) else {
            return Err(internal(format!("request {r}'s prompts vanished")));
        };
        for (b, &from) in tree.branches.iter_mut().zip(&layout.from) {
            b.cached.get_or_insert(from);
        }
        let first = !tree.started;
        tree.started = true;
        tree.state = TreeState::Prefill(Box::new(Run {
            tables,
            copies: layout.copies.clone(),
            layout,
            cursor: 0,
            done: vec![false; m],
        }));
        Ok(Admission::Admitted { first })
    }

    /// Plans the next chunk of a tree's stream, up to the budget and `room` chunks.
    pub(super) fn plan_tree(
        &mut self,
        r: RequestId,
        budget: &mut usize,
        mut room: usize,
        plan: &mut StepPlan,
    ) -> Result<()> {
        let Some(tree) = self.trees.get_mut(&r) else {
            return Err(internal(format!("request {r}'s prompts vanished")));
        };
        let TreeState::Prefill(run) = &mut tree.state else {
            return Err(internal(format!("request {r} is planned but not admitted")));
        };
        // Their sources stay put until the step ends, whoever lets them go in this plan.
        for c in &run.copies {
            self.blocks.hold_copy_source(c.src);
        }
        plan.copies.append(&mut run.copies);
        let mut pos = 0;
        for (j, &table) in run.tables.iter().enumerate() {
            let tokens = &tree.branches[j].prompt.tokens;
            let (from, to) = (run.layout.from[j], tokens.len());
            let seg = to - from;
            if run.cursor >= pos + seg {
                pos += seg;
                continue;
            }
            if *budget == 0 || room == 0 {
                break;
            }
            let start = from + run.cursor - pos;
            let len = (to - start).min(*budget);
            let end = start + len;
            let slots = self.blocks.reserve_range(table, start, len);
            let extra = run.layout.extra[j]
                .iter()
                .filter(|(p, _)| (start..end).contains(p))
                .map(|&(p, slot)| (p - start, slot))
                .collect();
            plan.chunks.push(Planned {
                unit: Unit::Tree(r),
                branch: j,
                table,
                start,
                tokens: tokens[start..end].to_vec(),
                slots,
                extra,
                output: end == to,
            });
            run.cursor += len;
            *budget -= len;
            room -= 1;
            pos += seg;
        }
        Ok(())
    }

    /// A prompt of a tree is in the cache: report it and fork its samples (or report the
    /// score), then free its table.
    pub(super) fn on_prompt_output(
        &mut self,
        r: RequestId,
        j: usize,
        out: Output<'_>,
        events: &mut Vec<(RequestId, Event)>,
    ) -> Result<()> {
        let device_rule = self.model.backend().samples_on_device();
        let Some(tree) = self.trees.get_mut(&r) else {
            return Err(internal(format!("request {r}'s prompts vanished")));
        };
        let TreeState::Prefill(run) = &mut tree.state else {
            return Err(internal(format!("request {r} has output but no blocks")));
        };
        let (Some(branch), Some(&table)) = (tree.branches.get(j), run.tables.get(j)) else {
            return Err(internal(format!("request {r} has no prompt {j} running")));
        };
        run.done[j] = true;
        let group_done = run.done.iter().all(|d| *d);
        let len = branch.prompt.tokens.len();
        let cached = branch.cached.unwrap_or(0);
        let mut forks = Vec::new();
        if tree.score {
            let values = match out {
                Output::Logits(v) if !v.is_empty() => v.to_vec(),
                _ => return Err(internal(format!("request {r}: no score values"))),
            };
            events.push((
                r,
                Event::Score {
                    values,
                    prompt_tokens: len,
                    cached,
                },
            ));
        } else {
            for (n, &prompt) in branch.prompt.prompts.iter().enumerate() {
                events.push((
                    r,
                    Event::Prefilled {
                        prompt_tokens: len,
                        // A repeated prompt is wholly shared with its first.
                        cached: if n == 0 { cached } else { len },
                        prompt,
                    },
                ));
            }
            let samples = &branch.prompt.samples;
            if let Output::Tokens(t) = out {
                if t.len() != samples.len() {
                    return Err(internal(format!(
                        "request {r}: {} tokens drawn for {} samples",
                        t.len(),
                        samples.len()
                    )));
                }
            }
            forks = samples.clone();
        }
        let prompt = branch.prompt.tokens.clone();
        let arrival = tree.key.0;
        if group_done {
            let m = run.tables.len();
            tree.branches.drain(..m);
            tree.state = TreeState::Waiting;
            tree.shape = None;
            if tree.branches.is_empty() {
                let key = tree.key;
                self.trees.remove(&r);
                self.order.remove(&key);
            }
        }
        let mut children = Vec::with_capacity(forks.len());
        for (i, s) in forks.into_iter().enumerate() {
            let Some(params) = self.requests.get(&r).and_then(|q| q.samples.get(s)) else {
                return Err(internal(format!("request {r} has no sample {s}")));
            };
            let mut sampler = Sampler::new(params.clone());
            let (token, logits) = match out {
                Output::Logits(logits) => (
                    host_token(device_rule, &mut sampler, logits, 0),
                    Some(logits),
                ),
                Output::Tokens(t) => (t[i], None),
            };
            if let Some(e) = token_event(params, s, token, logits, &self.config) {
                events.push((r, e));
            }
            children.push(self.fork_sample((r, arrival), s, sampler, &prompt, table, token));
        }
        self.blocks.free(table);
        // A sample may be done at once (a stop token, or max_new_tokens = 1).
        for child in children {
            self.check_done(child, r, events);
        }
        self.end_if_done(r);
        Ok(())
    }
}
