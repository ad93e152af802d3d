//! Paged attention on the host: each query row reads its sequence's keys and values through
//! the block table. Scores are `q·k · scale`, softcapped `tanh(s/c)·c`, masked to the causal
//! (and, on sliding layers, windowed) range, soft-maxed in f32. Each row is computed on its
//! own, in one fixed order, so a token's output does not depend on the rest of the batch.

use super::kv::CpuKv;
use super::simd::{axpy, dot, exp, tanh};
use crate::backend::{AttentionMeta, AttentionParams};
use rayon::prelude::*;

/// Attention of `q` ([rows × num_heads·head_dim]) for `layer`; returns the same shape.
pub fn attention(
    kv: &CpuKv,
    layer: usize,
    q: &[f32],
    meta: &AttentionMeta,
    p: AttentionParams,
) -> Vec<f32> {
    let row_len = p.num_heads * p.head_dim;
    let rows = meta.positions.len();
    assert_eq!(q.len(), rows * row_len, "attention: q shape");
    let mut out = vec![0f32; rows * row_len];
    let work = |(t, o): (usize, &mut [f32])| {
        attend_row(kv, layer, &q[t * row_len..(t + 1) * row_len], t, meta, p, o);
    };
    if rows > 1 {
        out.par_chunks_mut(row_len).enumerate().for_each(work);
    } else {
        out.chunks_mut(row_len).enumerate().for_each(work);
    }
    out
}

/// One query row: every head, over keys `lo..=pos`.
fn attend_row(
    kv: &CpuKv,
    layer: usize,
    q: &[f32],
    t: usize,
    meta: &AttentionMeta,
    p: AttentionParams,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let bs = meta.block_size;
    let group = p.num_heads / p.num_kv_heads;
    let pos = meta.positions[t] as usize;
    let blocks = &meta.spans[meta.span_of[t] as usize];
    let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let n = pos + 1 - lo;
    let (keys, values) = (&kv.k[layer], &kv.v[layer]);
    let mut scores = vec![0f32; n];
    for h in 0..p.num_heads {
        let g = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        let mut max = f32::NEG_INFINITY;
        for (i, s) in scores.iter_mut().enumerate() {
            let at = lo + i;
            let o = kv.offset(blocks[at / bs] as usize, g, at % bs);
            let mut v = dot(qh, &keys[o..o + hd]) * p.scale;
            if let Some(c) = p.softcap {
                v = tanh(v / c) * c;
            }
            *s = v;
            max = max.max(v);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = exp(*s - max);
            sum += *s;
        }
        let oh = &mut out[h * hd..(h + 1) * hd];
        for (i, &s) in scores.iter().enumerate() {
            let at = lo + i;
            let o = kv.offset(blocks[at / bs] as usize, g, at % bs);
            axpy(oh, s / sum, &values[o..o + hd]);
        }
    }
}
