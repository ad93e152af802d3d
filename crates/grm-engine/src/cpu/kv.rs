//! KV storage on the host. Per layer and block, for each KV head: the keys transposed,
//! [head_dim][block_size] (so eight keys' scores come from one vector FMA per dimension),
//! and the values as [block_size][head_dim] (so a value row is added with vector FMAs). The
//! CUDA backend keeps the same layout.

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

    /// Start of one head's region in one block (the same for K and V).
    #[inline]
    pub fn head_base(&self, block: usize, head: usize) -> usize {
        (block * self.kv_heads + head) * self.block_size * self.head_dim
    }

    /// Key element (dimension d) of a slot: `k[head_base + d·block_size + slot]`.
    #[inline]
    pub fn key(&self, layer: usize, block: usize, head: usize, slot: usize, d: usize) -> f32 {
        self.k[layer][self.head_base(block, head) + d * self.block_size + slot]
    }

    /// The value row of a slot.
    #[inline]
    pub fn value(&self, layer: usize, block: usize, head: usize, slot: usize) -> &[f32] {
        let o = self.head_base(block, head) + slot * self.head_dim;
        &self.v[layer][o..o + self.head_dim]
    }

    /// Writes one token's K and V ([kv_heads × head_dim] each) at a global slot
    /// (block × block_size + offset).
    pub fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let (b, s) = (slot / self.block_size, slot % self.block_size);
        let (hd, bs) = (self.head_dim, self.block_size);
        for h in 0..self.kv_heads {
            let base = self.head_base(b, h);
            let keys = &mut self.k[layer];
            for d in 0..hd {
                keys[base + d * bs + s] = k[h * hd + d];
            }
            self.v[layer][base + s * hd..base + (s + 1) * hd]
                .copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }

    /// Copy-on-write: the first `op.slots` slots of a block into another, in every layer.
    pub fn copy(&mut self, op: CopyOp) {
        let (hd, bs, n) = (self.head_dim, self.block_size, op.slots);
        for layer in 0..self.k.len() {
            for h in 0..self.kv_heads {
                let src = self.head_base(op.src as usize, h);
                let dst = self.head_base(op.dst as usize, h);
                for d in 0..hd {
                    self.k[layer].copy_within(src + d * bs..src + d * bs + n, dst + d * bs);
                }
                self.v[layer].copy_within(src..src + n * hd, dst);
            }
        }
    }

    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.k.first().map_or(0, Vec::len) * 4
    }
}
