//! Prefixes shared across requests while they run, as a radix cache shares them: a prompt
//! being admitted takes the KV of its longest prefix that a live sequence of another request
//! holds (its full blocks by reference, the rest of the block it branches in by copy), and a
//! prompt whose prefix another request is computing right now waits for it rather than
//! computing it a second time.
//!
//! This is what makes the chunks of one request that a worker runs at once (the router cuts a
//! request of k samples into chunks) compute their common header once, and what lets a GRPO
//! group's requests for one query share it without the prefix cache. The prefix cache serves
//! full blocks of sequences that are gone; this serves any position of those that are not.
//!
//! Sources are the samples that hold blocks: every position of theirs but the last was
//! computed in an earlier step, so a copy at the start of this step reads finished KV. A tree
//! being prefilled is a source only of waiting: its positions are computed over steps, by
//! rows that may write them into several tables; once a prompt of it is computed it forks into
//! samples, and those are the sources (or, for a scoring request, the prefix cache).
//!
//! A sample that ends before a waiting prompt is admitted takes its KV with it (the prefix
//! cache keeps its full blocks): chunks that wait for a step budget held by others' samples
//! may compute some positions again.

use super::prompt_tree::lcp;
use super::{Scheduler, SeqState};
use crate::backend::Backend;
use crate::kv::{BlockId, CopyOp, SeqId};
use std::collections::HashSet;

/// What live sequences offer a tree's prompts.
#[derive(Debug, Default)]
pub(super) struct LiveShare {
    /// Per prompt: a sequence holding its first positions' KV, computed, and how many of them
    /// (less than the prompt's length: its last position is computed for its logits).
    pub outside: Vec<Option<(SeqId, usize)>>,
    /// Per prompt: whether a prompt being computed now will hold a longer prefix of it than
    /// any live sequence holds (it waits for that one).
    pub wait: Vec<bool>,
}

impl LiveShare {
    /// How many leading prompts need not wait.
    pub fn ready_run(&self) -> usize {
        self.wait.iter().take_while(|w| !**w).count()
    }
}

impl<B: Backend> Scheduler<B> {
    /// What live sequences offer `prompts`, prompts of waiting request `r`. A source whose
    /// block the prompt would copy from is written by this step's `copies` is used for its
    /// full blocks only.
    pub(super) fn live_share(
        &self,
        r: super::RequestId,
        prompts: &[&[u32]],
        copies: &[CopyOp],
    ) -> LiveShare {
        let bs = self.blocks.block_size();
        let written: HashSet<BlockId> = copies.iter().map(|c| c.dst).collect();
        let mut share = LiveShare {
            outside: vec![None; prompts.len()],
            wait: Vec::new(),
        };
        let mut pending = vec![0usize; prompts.len()];
        for (&seq, s) in &self.seqs {
            let ready = match s.state {
                SeqState::Waiting => continue,
                SeqState::Prefill { computed } => computed,
                SeqState::Decode => s.tokens.len() - 1,
            };
            let Some(table) = self.blocks.table(seq) else {
                continue;
            };
            for (j, p) in prompts.iter().enumerate() {
                let common = lcp(p, &s.tokens).min(p.len() - 1);
                pending[j] = pending[j].max(common);
                let mut n = common.min(ready);
                if n % bs != 0 && table.blocks.get(n / bs).is_none_or(|b| written.contains(b)) {
                    n = n / bs * bs;
                }
                if n > share.outside[j].map_or(0, |(_, m)| m) {
                    share.outside[j] = Some((seq, n));
                }
            }
        }
        for (&other, t) in &self.trees {
            // A scoring request's prompts leave no samples: without the prefix cache, nothing
            // of them stays to share once they are computed, so waiting gains nothing.
            if other == r || (t.scores() && !self.blocks.prefix_caching()) {
                continue;
            }
            for branch in t.computing() {
                for (j, p) in prompts.iter().enumerate() {
                    pending[j] = pending[j].max(lcp(p, branch).min(p.len() - 1));
                }
            }
        }
        share.wait = pending
            .iter()
            .zip(&share.outside)
            .map(|(&later, now)| later > now.map_or(0, |(_, n)| n))
            .collect();
        share
    }

    /// The block a prompt copies the start of its branch block from, for `layout`: the
    /// outside sequence's block at that index when the shared positions end inside it.
    pub(super) fn outside_block(
        &self,
        outside: Option<(SeqId, usize)>,
    ) -> Option<(BlockId, usize)> {
        let bs = self.blocks.block_size();
        let (seq, n) = outside?;
        if n % bs == 0 {
            return None;
        }
        let block = *self.blocks.table(seq)?.blocks.get(n / bs)?;
        Some((block, n))
    }
}
