//! The cross-request prefix cache: full blocks keyed by a hash chain of their tokens
//! (each block's key covers every token before it), kept after their sequences end and
//! evicted least-recently-used when free blocks run out.

use super::block_pool::BlockId;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The key of a full block: hash of the previous block's key and this block's tokens.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: stable within a build, and hits are verified against the
    // stored tokens, so a collision can never serve the wrong KV.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The chain's starting value (the key of "no previous block").
pub const ROOT_HASH: u64 = 0x05ee_d0fb_10c5;

#[derive(Debug, Clone)]
struct Entry {
    key: u64,
    parent: u64,
    tokens: Vec<u32>,
    /// Position in the LRU list while unreferenced.
    lru_tick: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct PrefixCache {
    by_key: HashMap<u64, BlockId>,
    entries: HashMap<BlockId, Entry>,
    /// Unreferenced cached blocks, oldest first.
    lru: BTreeMap<u64, BlockId>,
    tick: u64,
    pub hits: u64,
    pub lookups: u64,
}

impl PrefixCache {
    /// The cached block holding exactly these tokens after this parent, if any.
    pub fn lookup(&mut self, parent: u64, tokens: &[u32]) -> Option<(BlockId, u64)> {
        self.lookups += 1;
        let key = chain_hash(parent, tokens);
        let &id = self.by_key.get(&key)?;
        let e = &self.entries[&id];
        if e.parent != parent || e.tokens != tokens {
            return None;
        }
        self.hits += 1;
        Some((id, key))
    }

    /// Registers a full block; a block already registered under this key stays (the new
    /// one is then simply not cached).
    pub fn insert(&mut self, id: BlockId, parent: u64, tokens: &[u32]) -> u64 {
        let key = chain_hash(parent, tokens);
        if self.entries.contains_key(&id) || self.by_key.contains_key(&key) {
            return key;
        }
        self.by_key.insert(key, id);
        self.entries.insert(
            id,
            Entry {
                key,
                parent,
                tokens: tokens.to_vec(),
                lru_tick: None,
            },
        );
        key
    }

    pub fn contains(&self, id: BlockId) -> bool {
        self.entries.contains_key(&id)
    }

    /// A cached block lost its last reference: it becomes evictable.
    pub fn park(&mut self, id: BlockId) {
        let tick = self.tick;
        self.tick += 1;
        if let Some(e) = self.entries.get_mut(&id) {
            e.lru_tick = Some(tick);
            self.lru.insert(tick, id);
        }
    }

    /// A parked block is referenced again.
    pub fn unpark(&mut self, id: BlockId) {
        if let Some(e) = self.entries.get_mut(&id) {
            if let Some(t) = e.lru_tick.take() {
                self.lru.remove(&t);
            }
        }
    }

    /// Evicts the least recently used unreferenced block, returning it for reuse.
    pub fn evict(&mut self) -> Option<BlockId> {
        let (_, id) = self.lru.pop_first()?;
        if let Some(e) = self.entries.remove(&id) {
            self.by_key.remove(&e.key);
        }
        Some(id)
    }

    /// Cached blocks, and how many of them are unreferenced.
    pub fn counts(&self) -> (usize, usize) {
        (self.entries.len(), self.lru.len())
    }
}
