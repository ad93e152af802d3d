//! The pool of KV blocks: a free list and a reference count per block.

/// Index of a block in the KV storage.
pub type BlockId = u32;

#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_counts: Vec<u32>,
    free: Vec<BlockId>,
    /// Blocks with a reference count of at least one, and of at least two: kept as counts are
    /// changed, since every step reads them.
    used: usize,
    shared: usize,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_counts: vec![0; num_blocks],
            // Popped from the end: hand out low ids first (easier to read in tests and dumps).
            free: (0..num_blocks as BlockId).rev().collect(),
            used: 0,
            shared: 0,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// A free block with one reference, if any is left.
    pub fn alloc(&mut self) -> Option<BlockId> {
        let id = self.free.pop()?;
        debug_assert_eq!(self.ref_counts[id as usize], 0);
        self.ref_counts[id as usize] = 1;
        self.used += 1;
        Some(id)
    }

    /// Takes one more reference to a block that is in use (or cached and unreferenced).
    pub fn retain(&mut self, id: BlockId) {
        let rc = &mut self.ref_counts[id as usize];
        *rc += 1;
        match *rc {
            1 => self.used += 1,
            2 => self.shared += 1,
            _ => {}
        }
    }

    /// Drops one reference; returns whether the block is now unreferenced. The caller decides
    /// whether it goes back to the free list ([`BlockPool::put_free`]) or stays cached.
    pub fn release(&mut self, id: BlockId) -> bool {
        let rc = &mut self.ref_counts[id as usize];
        assert!(*rc > 0, "release of unreferenced block {id}");
        *rc -= 1;
        match *rc {
            0 => self.used -= 1,
            1 => self.shared -= 1,
            _ => {}
        }
        *rc == 0
    }

    /// Returns an unreferenced block to the free list.
    pub fn put_free(&mut self, id: BlockId) {
        debug_assert_eq!(self.ref_counts[id as usize], 0);
        self.free.push(id);
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.ref_counts[id as usize]
    }

    /// Blocks referenced at least once, and more than once.
    pub fn used_and_shared(&self) -> (usize, usize) {
        (self.used, self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_counts_equal_a_scan_of_the_reference_counts() {
        let mut p = BlockPool::new(16);
        let mut held: Vec<BlockId> = Vec::new();
        let mut rng = 0x2545_f491_u64;
        for _ in 0..5000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            match rng % 3 {
                0 => held.extend(p.alloc()),
                1 if !held.is_empty() => {
                    let id = held[(rng >> 8) as usize % held.len()];
                    p.retain(id);
                    held.push(id);
                }
                _ if !held.is_empty() => {
                    let id = held.swap_remove((rng >> 8) as usize % held.len());
                    if p.release(id) {
                        p.put_free(id);
                    }
                }
                _ => {}
            }
            let scan = p.ref_counts.iter().fold((0, 0), |(u, s), &rc| {
                (u + usize::from(rc > 0), s + usize::from(rc > 1))
            });
            assert_eq!(p.used_and_shared(), scan);
            assert_eq!(p.num_free(), 16 - scan.0);
        }
    }
}
