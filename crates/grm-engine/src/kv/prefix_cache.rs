//! The cross-request prefix cache: full blocks keyed by a hash chain of their tokens
//! (each block's key covers every token before it), kept after their sequences end and
//! evicted least-recently-used when free blocks run out.
//!
//! A hit is exact, not probable: an entry records its tokens and the cached block before it,
//! and a lookup walks the chain from the first block, so each hit is checked against a parent
//! that was itself checked. A block leaves the cache only with all its cached descendants, so
//! an entry's parent block id always names the parent it was computed after, even when the
//! id is reused. (A wider hash would only make a wrong hit unlikely; this makes it impossible,
//! and the test below forces colliding keys to show it.)

use super::block_pool::BlockId;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The key of a full block: hash of the previous block's key and this block's tokens.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: stable within a build. Only an index: hits are verified.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The chain's starting value (the key of "no previous block").
pub const ROOT_HASH: u64 = 0x05ee_d0fb_10c5;

/// Where a chain stands: the last cached block walked (`None` before the first), its key, and
/// the serial number of its registration (a block id is reused; a registration is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainPos {
    pub block: Option<BlockId>,
    pub key: u64,
    serial: u64,
}

impl ChainPos {
    pub const ROOT: ChainPos = ChainPos {
        block: None,
        key: ROOT_HASH,
        serial: 0,
    };
}

#[derive(Debug, Clone)]
struct Entry {
    key: u64,
    serial: u64,
    parent: ChainPos,
    tokens: Vec<u32>,
    /// Cached blocks registered right after this one.
    children: Vec<BlockId>,
    /// Position in the LRU list while unreferenced.
    lru_tick: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct PrefixCache {
    hash: fn(u64, &[u32]) -> u64,
    by_key: HashMap<u64, BlockId>,
    entries: HashMap<BlockId, Entry>,
    /// Unreferenced cached blocks, oldest first.
    lru: BTreeMap<u64, BlockId>,
    tick: u64,
    serials: u64,
    pub hits: u64,
    pub lookups: u64,
}

impl Default for PrefixCache {
    fn default() -> Self {
        Self::with_hash(chain_hash)
    }
}

impl PrefixCache {
    /// A cache indexed by another hash function (tests force collisions with one).
    pub fn with_hash(hash: fn(u64, &[u32]) -> u64) -> Self {
        Self {
            hash,
            by_key: HashMap::new(),
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            serials: 0,
            hits: 0,
            lookups: 0,
        }
    }

    /// The cached block holding exactly these tokens right after `parent`, if any, and the
    /// chain position after it.
    pub fn lookup(&mut self, parent: ChainPos, tokens: &[u32]) -> Option<ChainPos> {
        self.lookups += 1;
        let key = (self.hash)(parent.key, tokens);
        let &id = self.by_key.get(&key)?;
        let e = &self.entries[&id];
        if e.parent != parent || e.tokens != tokens {
            return None;
        }
        self.hits += 1;
        Some(ChainPos {
            block: Some(id),
            key,
            serial: e.serial,
        })
    }

    /// Whether `pos` names a registration that is still cached.
    fn is_cached(&self, pos: ChainPos) -> bool {
        match pos.block {
            None => true,
            Some(b) => self.entries.get(&b).is_some_and(|e| e.serial == pos.serial),
        }
    }

    /// Registers a full block after `parent` and returns the chain position after it. Where
    /// the same tokens after the same parent are cached already (another sequence computed
    /// them), the position is that block's, so what follows is registered after it. Nothing is
    /// registered after a parent that is not cached (no lookup could reach it), nor when the
    /// key is taken by other tokens.
    pub fn insert(&mut self, id: BlockId, parent: ChainPos, tokens: &[u32]) -> ChainPos {
        let key = (self.hash)(parent.key, tokens);
        let uncached = ChainPos {
            block: Some(id),
            key,
            serial: u64::MAX,
        };
        if !self.is_cached(parent) {
            return uncached;
        }
        if let Some(&other) = self.by_key.get(&key) {
            let e = &self.entries[&other];
            if e.parent == parent && e.tokens == tokens {
                return ChainPos {
                    block: Some(other),
                    key,
                    serial: e.serial,
                };
            }
            return uncached;
        }
        if self.entries.contains_key(&id) {
            return uncached;
        }
        self.serials += 1;
        let serial = self.serials;
        if let Some(p) = parent.block.and_then(|p| self.entries.get_mut(&p)) {
            p.children.push(id);
        }
        self.by_key.insert(key, id);
        self.entries.insert(
            id,
            Entry {
                key,
                serial,
                parent,
                tokens: tokens.to_vec(),
                children: Vec::new(),
                lru_tick: None,
            },
        );
        ChainPos {
            block: Some(id),
            key,
            serial,
        }
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

    /// Evicts the least recently used unreferenced block for reuse. Its cached descendants
    /// leave the cache with it; those that were unreferenced are returned in `freed` for the
    /// free list. (Sequences release their blocks last first, so descendants are normally
    /// evicted before their ancestors and `freed` stays empty.)
    pub fn evict(&mut self, freed: &mut Vec<BlockId>) -> Option<BlockId> {
        let (_, id) = self.lru.pop_first()?;
        if let Some(parent) = self.entries.get(&id).map(|e| e.parent) {
            if let Some(p) = parent.block.filter(|_| self.is_cached(parent)) {
                if let Some(p) = self.entries.get_mut(&p) {
                    p.children.retain(|&c| c != id);
                }
            }
        }
        let mut stack = vec![id];
        while let Some(b) = stack.pop() {
            let Some(e) = self.entries.remove(&b) else {
                continue;
            };
            self.by_key.remove(&e.key);
            if let Some(t) = e.lru_tick {
                self.lru.remove(&t);
                if b != id {
                    freed.push(b);
                }
            }
            stack.extend(e.children);
        }
        Some(id)
    }

    /// Cached blocks, and how many of them are unreferenced.
    pub fn counts(&self) -> (usize, usize) {
        (self.entries.len(), self.lru.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every first block gets the same key, whatever its tokens.
    fn colliding(parent: u64, tokens: &[u32]) -> u64 {
        if parent == ROOT_HASH {
            7
        } else {
            chain_hash(parent, tokens)
        }
    }

    #[test]
    fn a_colliding_ancestor_never_serves_a_descendant_computed_after_another_prefix() {
        let mut c = PrefixCache::with_hash(colliding);
        let a0 = c.insert(10, ChainPos::ROOT, &[1, 1]);
        let a1 = c.insert(11, a0, &[5, 5]);
        // Released first to last (the order that leaves descendants behind).
        c.park(10);
        c.park(11);
        let mut freed = Vec::new();
        assert_eq!(c.evict(&mut freed), Some(10));
        assert_eq!(
            freed,
            vec![11],
            "the descendant leaves the cache with its parent"
        );
        assert_eq!(c.counts(), (0, 0));
        // Block 10 is reused for another first block whose key collides with the old one.
        let b0 = c.insert(10, ChainPos::ROOT, &[2, 2]);
        assert_eq!(b0.key, a0.key);
        assert_eq!(c.lookup(ChainPos::ROOT, &[2, 2]), Some(b0));
        // [2, 2, 5, 5] must not be served block 11, computed after [1, 1].
        assert_eq!(c.lookup(b0, &[5, 5]), None);
        assert_ne!(c.lookup(b0, &[5, 5]), Some(a1));
    }

    #[test]
    fn a_block_whose_parent_is_not_cached_is_not_registered() {
        let mut c = PrefixCache::with_hash(colliding);
        let a0 = c.insert(10, ChainPos::ROOT, &[1, 1]);
        // Another first block with the colliding key is not cached...
        let b0 = c.insert(20, ChainPos::ROOT, &[2, 2]);
        assert_eq!(c.counts(), (1, 0));
        // ...so neither is what follows it, though its key is free.
        c.insert(21, b0, &[5, 5]);
        assert_eq!(c.counts(), (1, 0));
        assert_eq!(c.lookup(a0, &[5, 5]), None);
        assert_eq!(c.lookup(ChainPos::ROOT, &[2, 2]), None);
    }

    #[test]
    fn a_block_computed_twice_is_cached_once_and_the_chain_goes_on_through_it() {
        let mut c = PrefixCache::default();
        let a0 = c.insert(10, ChainPos::ROOT, &[1, 1]);
        // Another sequence computed the same first block into block 20.
        let b0 = c.insert(20, ChainPos::ROOT, &[1, 1]);
        assert_eq!(b0, a0);
        let b1 = c.insert(21, b0, &[5, 5]);
        assert_eq!(c.counts(), (2, 0));
        let hit = c.lookup(ChainPos::ROOT, &[1, 1]).expect("first block");
        assert_eq!(hit.block, Some(10));
        assert_eq!(c.lookup(hit, &[5, 5]), Some(b1));
    }
}
