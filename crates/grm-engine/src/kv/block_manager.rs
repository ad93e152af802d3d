//! Block tables of the sequences over the block pool and the prefix cache: admission of a
//! prompt (reusing cached prefix blocks), a slot per new token (with copy-on-write of a shared
//! partial block), fork, free, and the accounting. Only the scheduler calls this.

use super::block_pool::{BlockId, BlockPool};
use super::prefix_cache::{ChainPos, PrefixCache};
use std::collections::HashMap;

/// Identifies a sequence in the engine.
pub type SeqId = u64;

/// A sequence's blocks: position p lives in `blocks[p / block_size]` at `p % block_size`.
#[derive(Debug, Clone)]
pub struct BlockTable {
    pub blocks: Vec<BlockId>,
    /// Positions with a reserved slot (their KV is written, or is written by this step).
    pub num_tokens: usize,
    /// Where the last block registered in the prefix cache sits in its chain, and how many
    /// are registered.
    chain: ChainPos,
    registered: usize,
}

/// Copy the first `slots` slots of block `src` into block `dst` (copy-on-write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOp {
    pub src: BlockId,
    pub dst: BlockId,
    pub slots: usize,
}

/// Where the KV cache stands, readable at any time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KvStats {
    pub block_size: usize,
    pub blocks_total: usize,
    /// On the free list.
    pub blocks_free: usize,
    /// Referenced by at least one sequence.
    pub blocks_used: usize,
    /// Referenced by more than one sequence (e.g. a prompt forked into k samples).
    pub blocks_shared: usize,
    /// Registered in the prefix cache (used or not).
    pub blocks_cached: usize,
    /// Cached and unreferenced: reusable by a later prompt, evicted when blocks run out.
    pub blocks_evictable: usize,
    pub prefix_hits: u64,
    pub prefix_lookups: u64,
}

impl KvStats {
    /// Blocks a new sequence could get: free, or evictable from the prefix cache.
    pub fn blocks_available(&self) -> usize {
        self.blocks_free + self.blocks_evictable
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBlocks;

/// One prompt of a tree at admission: the id its block table gets, its tokens, the earlier
/// prompt of the tree (its index) whose first positions it shares, with how many, and a live
/// sequence outside the tree whose first positions' KV it may share, with how many (their KV
/// computed already: see `scheduler::live_prefix`).
#[derive(Debug, Clone, Copy)]
pub struct TreePrompt<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
    pub donor: Option<(usize, usize)>,
    pub outside: Option<(SeqId, usize)>,
}

#[derive(Debug)]
pub struct BlockManager {
    pool: BlockPool,
    cache: PrefixCache,
    block_size: usize,
    tables: HashMap<SeqId, BlockTable>,
    prefix_caching: bool,
    /// Sources of this step's copies. One whose last reference goes during the plan (its
    /// other holders preempted) is not freed until [`BlockManager::end_step`] (`deferred`):
    /// freed at once, it could become another copy's destination in the same step, and the
    /// GPU runs a step's copies at once.
    copy_sources: std::collections::HashSet<BlockId>,
    deferred: Vec<BlockId>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        Self::with_cache(
            num_blocks,
            block_size,
            prefix_caching,
            PrefixCache::default(),
        )
    }

    /// A manager over a given prefix cache (tests give it a colliding hash).
    pub fn with_cache(
        num_blocks: usize,
        block_size: usize,
        prefix_caching: bool,
        cache: PrefixCache,
    ) -> Self {
        assert!(block_size > 0);
        Self {
            pool: BlockPool::new(num_blocks),
            cache,
            block_size,
            tables: HashMap::new(),
            prefix_caching,
            copy_sources: Default::default(),
            deferred: Vec::new(),
        }
    }

    /// A block this step copies from: not freed before the step ends, whoever lets it go.
    pub fn hold_copy_source(&mut self, id: BlockId) {
        self.copy_sources.insert(id);
    }

    /// The step's copies have run: sources nobody holds any more are freed.
    pub fn end_step(&mut self) {
        self.copy_sources.clear();
        for id in std::mem::take(&mut self.deferred) {
            self.unreferenced(id);
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    pub fn table(&self, seq: SeqId) -> Option<&BlockTable> {
        self.tables.get(&seq)
    }

    pub fn stats(&self) -> KvStats {
        let (used, shared) = self.pool.used_and_shared();
        let (cached, evictable) = self.cache.counts();
        KvStats {
            block_size: self.block_size,
            blocks_total: self.pool.num_blocks(),
            blocks_free: self.pool.num_free(),
            blocks_used: used,
            blocks_shared: shared,
            blocks_cached: cached,
            blocks_evictable: evictable,
            prefix_hits: self.cache.hits,
            prefix_lookups: self.cache.lookups,
        }
    }

    /// Blocks a new sequence could get now: free, or evictable from the prefix cache. Counted,
    /// not scanned: admission asks this for every waiting sequence in every step.
    pub fn available(&self) -> usize {
        self.pool.num_free() + self.cache.counts().1
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    fn alloc(&mut self) -> Option<BlockId> {
        if let Some(id) = self.pool.alloc() {
            return Some(id);
        }
        let mut freed = Vec::new();
        let id = self.cache.evict(&mut freed)?;
        // Descendants evicted with it (only when released out of order) are free now.
        for b in freed {
            self.pool.put_free(b);
        }
        self.pool.retain(id);
        Some(id)
    }

    fn release(&mut self, id: BlockId) {
        if self.pool.release(id) {
            if self.copy_sources.contains(&id) {
                self.deferred.push(id);
            } else {
                self.unreferenced(id);
            }
        }
    }

    /// A block nobody references: kept in the prefix cache, or free.
    fn unreferenced(&mut self, id: BlockId) {
        if self.cache.contains(id) {
            self.cache.park(id);
        } else {
            self.pool.put_free(id);
        }
    }

    fn retain(&mut self, id: BlockId) {
        self.pool.retain(id);
        if self.pool.ref_count(id) == 1 {
            self.cache.unpark(id);
        }
    }

    /// Gives a new sequence blocks for its whole prompt, reusing cached full blocks of its
    /// prefix. Returns how many leading tokens are already in the cache (their KV need not be
    /// computed). At least one token is always left to compute, so the caller gets logits.
    /// Changes nothing when the blocks do not suffice.
    pub fn admit(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, OutOfBlocks> {
        let have = self.admit_tree(&[TreePrompt {
            seq,
            tokens,
            donor: None,
            outside: None,
        }])?;
        Ok(have[0])
    }

    /// Admits the prompts of a tree at once, all or none: each gets blocks for its whole
    /// prompt, reusing cached full blocks of its prefix, and sharing with its donor (an
    /// earlier prompt of the slice) and with its outside sequence the blocks that lie wholly
    /// in their common prefix. The block a prompt branches in is its own. Returns, per
    /// prompt, how many leading tokens it holds in shared full blocks computed before (from
    /// the prefix cache or the outside sequence; at most its length − 1).
    pub fn admit_tree(&mut self, prompts: &[TreePrompt<'_>]) -> Result<Vec<usize>, OutOfBlocks> {
        let bs = self.block_size;
        let mut hits: Vec<Vec<(BlockId, ChainPos)>> = Vec::with_capacity(prompts.len());
        // Whether a prompt's walk through the cache ended on a miss (not at its end).
        let mut missed: Vec<bool> = Vec::with_capacity(prompts.len());
        let hits_before = self.cache.hits;
        for (j, p) in prompts.iter().enumerate() {
            assert!(!p.tokens.is_empty() && !self.tables.contains_key(&p.seq));
            assert!(p.donor.is_none_or(|(d, s)| d < j && s < p.tokens.len()));
            assert!(p
                .outside
                .is_none_or(|(o, s)| s < p.tokens.len() && self.tables.contains_key(&o)));
            let mut mine = Vec::new();
            let mut miss = false;
            // Blocks wholly shared with the donor were looked up by the donor: the same
            // tokens after the same chain give the same answer.
            if let Some((d, shared)) = p.donor {
                let k = hits[d].len().min(shared / bs);
                mine.extend_from_slice(&hits[d][..k]);
                miss = k < shared / bs && missed[d];
            }
            if self.prefix_caching && !miss {
                let mut chain = mine.last().map_or(ChainPos::ROOT, |h| h.1);
                let usable = &p.tokens[..p.tokens.len() - 1];
                for chunk in usable.chunks_exact(bs).skip(mine.len()) {
                    match self.cache.lookup(chain, chunk) {
                        Some(at) => {
                            let Some(id) = at.block else { break };
                            mine.push((id, at));
                            chain = at;
                        }
                        None => {
                            miss = true;
                            break;
                        }
                    }
                }
            }
            hits.push(mine);
            missed.push(miss);
        }
        let mut distinct_hits: Vec<BlockId> = hits.iter().flatten().map(|h| h.0).collect();
        distinct_hits.sort_unstable();
        distinct_hits.dedup();
        let parked_hits = distinct_hits
            .iter()
            .filter(|&&id| self.pool.ref_count(id) == 0)
            .count();
        // Per prompt: its blocks less its hits or, where more, the blocks of its donor's or its
        // outside sequence's.
        let new: usize = prompts
            .iter()
            .zip(&hits)
            .map(|(p, h)| {
                let from_donor = p.donor.map_or(0, |(_, s)| s / bs);
                let from_outside = p.outside.map_or(0, |(_, s)| s / bs);
                self.blocks_for(p.tokens.len()) - h.len().max(from_donor).max(from_outside)
            })
            .sum();
        if new > self.available() - parked_hits {
            // Undo the hit count of lookups that did not lead to admission.
            self.cache.hits = hits_before;
            return Err(OutOfBlocks);
        }
        // Hits first: a parked hit must not be evicted by the allocations below.
        for &(id, _) in hits.iter().flatten() {
            self.retain(id);
        }
        let mut have = Vec::with_capacity(prompts.len());
        for (j, p) in prompts.iter().enumerate() {
            let n = self.blocks_for(p.tokens.len());
            let mut table = BlockTable {
                blocks: hits[j].iter().map(|h| h.0).collect(),
                num_tokens: hits[j].len() * bs,
                chain: hits[j].last().map_or(ChainPos::ROOT, |h| h.1),
                registered: hits[j].len(),
            };
            // The outside sequence's blocks before the donor's: they are computed, while the
            // donor's may be computed in this step.
            if let Some((o, shared)) = p.outside {
                for b in table.blocks.len()..shared / bs {
                    let id = self.tables[&o].blocks[b];
                    self.retain(id);
                    table.blocks.push(id);
                }
            }
            let served = table.blocks.len() * bs;
            table.num_tokens = served;
            if let Some((d, shared)) = p.donor {
                let donor = &prompts[d].seq;
                for b in table.blocks.len()..shared / bs {
                    let id = self.tables[donor].blocks[b];
                    self.retain(id);
                    table.blocks.push(id);
                }
            }
            while table.blocks.len() < n {
                let Some(id) = self.alloc() else {
                    unreachable!("availability was checked")
                };
                table.blocks.push(id);
            }
            have.push(served);
            self.tables.insert(p.seq, table);
        }
        Ok(have)
    }

    /// Reserves the slots of the next `count` positions of an admitted prompt (chunked
    /// prefill); their blocks were allocated at admission.
    pub fn reserve_prompt(&mut self, seq: SeqId, count: usize) -> Vec<usize> {
        let start = self.tables.get(&seq).expect("admitted sequence").num_tokens;
        self.reserve_range(seq, start, count)
    }

    /// [`BlockManager::reserve_prompt`] from position `start` on, for a prompt of a tree whose
    /// positions before `start` other prompts compute (they are computed before, or in the
    /// same step, as the stream of the tree goes).
    pub fn reserve_range(&mut self, seq: SeqId, start: usize, count: usize) -> Vec<usize> {
        let bs = self.block_size;
        let t = self.tables.get_mut(&seq).expect("admitted sequence");
        assert!(start >= t.num_tokens, "prompt slots reserved twice");
        assert!(
            start + count <= t.blocks.len() * bs,
            "prompt slots beyond admission"
        );
        t.num_tokens = start + count;
        (start..start + count)
            .map(|p| t.blocks[p / bs] as usize * bs + p % bs)
            .collect()
    }

    /// Reserves the slot of the next position of a sequence, allocating a block when the last
    /// is full, or copying a shared partial last block (the copy is returned for the KV
    /// storage to perform before the slot is written).
    pub fn append_slot(&mut self, seq: SeqId) -> Result<(usize, Option<CopyOp>), OutOfBlocks> {
        let bs = self.block_size;
        let (pos, last, have) = {
            let t = &self.tables[&seq];
            (t.num_tokens, t.blocks.last().copied(), t.blocks.len())
        };
        let mut copy = None;
        if pos == have * bs {
            let id = self.alloc().ok_or(OutOfBlocks)?;
            self.tables.get_mut(&seq).expect("seq").blocks.push(id);
        } else if let Some(last) = last.filter(|&b| self.pool.ref_count(b) > 1) {
            let id = self.alloc().ok_or(OutOfBlocks)?;
            // Not free before the step's copies have run (end_step).
            self.copy_sources.insert(last);
            self.release(last);
            *self
                .tables
                .get_mut(&seq)
                .expect("seq")
                .blocks
                .last_mut()
                .expect("block") = id;
            copy = Some(CopyOp {
                src: last,
                dst: id,
                slots: pos % bs,
            });
        }
        let t = self.tables.get_mut(&seq).expect("seq");
        t.num_tokens += 1;
        Ok((t.blocks[pos / bs] as usize * bs + pos % bs, copy))
    }

    /// Registers the sequence's newly full blocks in the prefix cache. `tokens` are the
    /// sequence's tokens from position 0 (at least `num_tokens` of them).
    pub fn register_full_blocks(&mut self, seq: SeqId, tokens: &[u32]) {
        if !self.prefix_caching {
            return;
        }
        let bs = self.block_size;
        let Some(t) = self.tables.get_mut(&seq) else {
            return;
        };
        let full = t.num_tokens.min(tokens.len()) / bs;
        while t.registered < full {
            let i = t.registered;
            t.chain = self
                .cache
                .insert(t.blocks[i], t.chain, &tokens[i * bs..(i + 1) * bs]);
            t.registered += 1;
        }
    }

    /// A new sequence sharing every block of `parent` (its prompt, typically).
    pub fn fork(&mut self, parent: SeqId, child: SeqId) {
        let t = self.tables[&parent].clone();
        for &id in &t.blocks {
            self.retain(id);
        }
        self.tables.insert(child, t);
    }

    /// Drops a sequence's blocks (cached ones stay reusable until evicted). Last block first,
    /// as vLLM does: a prefix's tail then enters the LRU before its head and is evicted first,
    /// so an eviction never takes a prefix's head and, with it, every cached block after it.
    pub fn free(&mut self, seq: SeqId) {
        if let Some(t) = self.tables.remove(&seq) {
            for &id in t.blocks.iter().rev() {
                self.release(id);
            }
        }
    }

    /// Sequences with a block table.
    pub fn num_sequences(&self) -> usize {
        self.tables.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_shares_and_copy_on_write_splits() {
        let mut m = BlockManager::new(16, 4, true);
        let prompt: Vec<u32> = (0..10).collect(); // 2 full blocks + 2 tokens
        assert_eq!(m.admit(1, &prompt), Ok(0));
        let slots = m.reserve_prompt(1, 10);
        assert_eq!(slots.len(), 10);
        m.register_full_blocks(1, &prompt);
        for c in 2..5 {
            m.fork(1, c);
        }
        let s = m.stats();
        assert_eq!((s.blocks_used, s.blocks_shared), (3, 3));
        // The first append of each child copies the shared partial block.
        let (slot, copy) = m.append_slot(2).unwrap();
        let copy = copy.expect("copy-on-write");
        assert_eq!(copy.slots, 2);
        assert_eq!(slot, copy.dst as usize * 4 + 2);
        // The full prompt blocks stay shared by all four.
        let s = m.stats();
        assert_eq!(s.blocks_used, 4);
        assert_eq!(s.blocks_shared, 3);
        // The copy's source is not free until the step that copies it ends, so that no other
        // copy of the step can be given it.
        for c in 1..5 {
            m.free(c);
        }
        assert_eq!(
            m.stats().blocks_free,
            16 - 2 - 1,
            "the copy's source, until the step ends"
        );
        m.end_step();
        let s = m.stats();
        assert_eq!(s.blocks_used, 0);
        assert_eq!(s.blocks_available(), 16);
        assert_eq!(s.blocks_cached, 2);
    }

    #[test]
    fn prefix_cache_serves_full_blocks_and_leaves_one_token() {
        let mut m = BlockManager::new(8, 4, true);
        let a: Vec<u32> = (0..9).collect();
        m.admit(1, &a).unwrap();
        m.reserve_prompt(1, 9);
        m.register_full_blocks(1, &a);
        m.free(1);
        // Same first 8 tokens, then different.
        let b: Vec<u32> = (0..8).chain([99, 98]).collect();
        assert_eq!(m.admit(2, &b), Ok(8));
        assert_eq!(m.stats().prefix_hits, 2);
        // A prompt that is exactly the cached blocks recomputes its last block.
        let c: Vec<u32> = (0..8).collect();
        assert_eq!(m.admit(3, &c), Ok(4));
    }

    #[test]
    fn admission_is_all_or_nothing_and_eviction_is_lru() {
        let mut m = BlockManager::new(4, 2, true);
        let a = [1u32, 2, 3, 4, 5];
        m.admit(1, &a).unwrap(); // 3 blocks
        m.reserve_prompt(1, 5);
        m.register_full_blocks(1, &a);
        assert_eq!(m.admit(2, &[7, 7, 7, 7, 7]), Err(OutOfBlocks));
        assert_eq!(m.stats().blocks_free, 1);
        m.free(1);
        // Two cached blocks are evictable; a 4-block prompt evicts both.
        assert_eq!(m.stats().blocks_evictable, 2);
        m.admit(2, &[7, 7, 7, 7, 7, 7, 7]).unwrap();
        let s = m.stats();
        assert_eq!((s.blocks_free, s.blocks_cached, s.blocks_used), (0, 0, 4));
    }

    /// Every first block gets the same key, whatever its tokens.
    fn colliding(parent: u64, tokens: &[u32]) -> u64 {
        if parent == super::super::prefix_cache::ROOT_HASH {
            7
        } else {
            super::super::prefix_cache::chain_hash(parent, tokens)
        }
    }

    #[test]
    fn a_hash_collision_at_an_ancestor_does_not_serve_the_wrong_kv() {
        let cache = PrefixCache::with_hash(colliding);
        let mut m = BlockManager::with_cache(4, 2, true, cache);
        let a = [1u32, 1, 5, 5, 9];
        m.admit(1, &a).unwrap();
        m.reserve_prompt(1, 5);
        m.register_full_blocks(1, &a);
        m.free(1);
        // [2, 2]'s key collides with the cached [1, 1]: it is neither served nor cached...
        let b = [2u32, 2, 5, 5, 8];
        assert_eq!(m.admit(2, &b), Ok(0));
        m.reserve_prompt(2, 5);
        m.register_full_blocks(2, &b);
        m.free(2);
        // ...and [5, 5] after it is never the block computed after [1, 1].
        assert_eq!(m.admit(3, &b), Ok(0));
        m.free(3);
        // (Seq 2 took the tail of the first prefix; its head is still served.)
        assert_eq!(m.admit(4, &a), Ok(2));
        m.free(4);
        let s = m.stats();
        assert_eq!(s.blocks_used, 0);
        assert_eq!(s.blocks_free + s.blocks_evictable, 4);
    }

    #[test]
    fn eviction_takes_a_freed_prefix_from_its_tail() {
        let mut m = BlockManager::new(4, 2, true);
        let a: Vec<u32> = (1..8).collect(); // 3 full blocks + 1 token
        m.admit(1, &a).unwrap();
        m.reserve_prompt(1, 7);
        m.register_full_blocks(1, &a);
        m.free(1);
        assert_eq!(m.stats().blocks_evictable, 3);
        // Two blocks: the free one and one evicted, the prefix's last.
        m.admit(2, &[9, 9, 9, 9]).unwrap();
        m.free(2);
        let s = m.stats();
        assert_eq!((s.blocks_cached, s.blocks_used), (2, 0));
        // The first two blocks of the prefix are still served.
        assert_eq!(m.admit(3, &a), Ok(4));
    }
}
