//! KV storage on the host: per layer, K and V as [block][kv_head][slot][head_dim] f32, the
//! layout the CUDA backend uses too (a head's keys within a block are contiguous).

use crate::kv::CopyOp;

pub struct CpuKv {
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub num_blocks: usize,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl CpuKv {
    pub fn new(
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let per_layer = num_blocks * block_size * kv_heads * head_dim;
        Self {
            block_size,
            kv_heads,
            head_dim,
            num_blocks,
            k: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..layers).map(|_| vec![0.0; per_layer]).collect(),
        }
    }

    /// Offset of (block, kv head, slot within the block).
    #[inline]
    pub fn offset(&self, block: usize, head: usize, slot: usize) -> usize {
        ((block * self.kv_heads + head) * self.block_size + slot) * self.head_dim
    }

    /// Writes one token's K and V ([kv_heads × head_dim] each) at a global slot
    /// (block × block_size + offset).
    pub fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let (b, s) = (slot / self.block_size, slot % self.block_size);
        let hd = self.head_dim;
        for h in 0..self.kv_heads {
            let o = self.offset(b, h, s);
            self.k[layer][o..o + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            self.v[layer][o..o + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }

    pub fn copy(&mut self, op: CopyOp) {
        let hd = self.head_dim;
        for layer in 0..self.k.len() {
            for h in 0..self.kv_heads {
                let src = self.offset(op.src as usize, h, 0);
                let dst = self.offset(op.dst as usize, h, 0);
                let n = op.slots * hd;
                self.k[layer].copy_within(src..src + n, dst);
                self.v[layer].copy_within(src..src + n, dst);
            }
        }
    }

    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.k.first().map_or(0, Vec::len) * 4
    }
}
