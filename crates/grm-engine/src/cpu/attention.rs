//! Paged attention on the host: each query row reads its sequence's keys and values through
//! the block table. This is the CPU reference of `kernels/attention.cu`.
//!
//! For each head, over the keys j = lo..=pos of the row (lo = pos − window + 1 on sliding
//! layers), exactly:
//!   s_j = (Σ_d q_d·k_jd, fused multiply-adds in order of d) · scale, then tanh(s_j/c)·c;
//!   e_j = exp(s_j − max s); Σe in 8 lanes by (j − lo) mod 8, folded in the fixed order;
//!   out_d = (Σ_j e_j·v_jd, in order of j) · (1/Σe).
//! The AVX2 and AVX-512 paths compute the same operations in the same order as the portable
//! one (scores with one key per lane, the sum of e in its 8 lanes, each output dimension in
//! its own lane), so every path gives the same bits, and each row is computed on its own: a
//! token's output never depends on the rest of the batch.

use super::isa::Isa;
use super::kv::CpuKv;
use super::simd::{exp, fold8, tanh};
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
    attention_on(Isa::current(), kv, layer, q, meta, p)
}

/// [`attention`] on a given path (the same bits on every one).
pub fn attention_on(
    isa: Isa,
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
        let qrow = &q[t * row_len..(t + 1) * row_len];
        #[cfg(target_arch = "x86_64")]
        if isa.avx512() && kv.block_size % 16 == 0 && p.head_dim % 16 == 0 {
            // SAFETY: the path's features were checked when it was chosen; shapes are
            // multiples of 16 as the kernel needs.
            unsafe { avx512::attend_row(kv, layer, qrow, t, meta, p, o) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if isa.avx2() && kv.block_size % 8 == 0 && p.head_dim % 8 == 0 {
            // SAFETY: as above, for multiples of 8.
            unsafe { avx2::attend_row(kv, layer, qrow, t, meta, p, o) };
            return;
        }
        attend_row(kv, layer, qrow, t, meta, p, o);
    };
    if rows > 1 {
        out.par_chunks_mut(row_len).enumerate().for_each(work);
    } else {
        out.chunks_mut(row_len).enumerate().for_each(work);
    }
    out
}

/// The keys a row sees: `lo..=pos`.
fn key_range(meta: &AttentionMeta, t: usize, window: Option<usize>) -> (usize, usize) {
    let pos = meta.positions[t] as usize;
    (window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos)
}

/// The portable row: the definition above, written plainly.
pub fn attend_row(
    kv: &CpuKv,
    layer: usize,
    q: &[f32],
    t: usize,
    meta: &AttentionMeta,
    p: AttentionParams,
    out: &mut [f32],
) {
    let (hd, bs) = (p.head_dim, meta.block_size);
    let group = p.num_heads / p.num_kv_heads;
    let blocks = &meta.spans[meta.span_of[t] as usize];
    let (lo, pos) = key_range(meta, t, p.window);
    let mut e = vec![0f32; pos + 1 - lo];
    for h in 0..p.num_heads {
        let g = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        for (i, s) in e.iter_mut().enumerate() {
            let j = lo + i;
            let (b, slot) = (blocks[j / bs] as usize, j % bs);
            let mut acc = 0f32;
            for (d, &qd) in qh.iter().enumerate() {
                acc = qd.mul_add(kv.key(layer, b, g, slot, d), acc);
            }
            let mut v = acc * p.scale;
            if let Some(c) = p.softcap {
                v = tanh(v / c) * c;
            }
            *s = v;
        }
        let max = e.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut lanes = [0f32; 8];
        for (i, s) in e.iter_mut().enumerate() {
            *s = exp(*s - max);
            lanes[i % 8] += *s;
        }
        let inv = 1.0 / fold8(&lanes);
        let oh = &mut out[h * hd..(h + 1) * hd];
        oh.fill(0.0);
        for (i, &w) in e.iter().enumerate() {
            let j = lo + i;
            let vrow = kv.value(layer, blocks[j / bs] as usize, g, j % bs);
            for (o, &v) in oh.iter_mut().zip(vrow) {
                *o = w.mul_add(v, *o);
            }
        }
        for o in oh.iter_mut() {
            *o *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::cpu::simd::{exp8, tanh8};
    use std::arch::x86_64::*;

    /// The AVX2 row (block_size and head_dim multiples of 8).
    ///
    /// # Safety
    /// AVX2, FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend_row(
        kv: &CpuKv,
        layer: usize,
        q: &[f32],
        t: usize,
        meta: &AttentionMeta,
        p: AttentionParams,
        out: &mut [f32],
    ) {
        let (hd, bs) = (p.head_dim, meta.block_size);
        let group = p.num_heads / p.num_kv_heads;
        let blocks = &meta.spans[meta.span_of[t] as usize];
        let (lo, pos) = key_range(meta, t, p.window);
        let n = pos + 1 - lo;
        // Scores of whole blocks, then the valid range [lo - first, ...) is used.
        let first_block = lo / bs;
        let last_block = pos / bs;
        let base = first_block * bs;
        let mut s = vec![0f32; (last_block + 1 - first_block) * bs];
        let keys = &kv.k[layer];
        let scale = _mm256_set1_ps(p.scale);
        for h in 0..p.num_heads {
            let g = h / group;
            let qh = q.as_ptr().add(h * hd);
            // Scores, eight keys per vector: lane = slot.
            for (bi, b) in (first_block..=last_block).enumerate() {
                let kb = keys.as_ptr().add(kv.head_base(blocks[b] as usize, g));
                for chunk in (0..bs).step_by(8) {
                    let mut acc = _mm256_setzero_ps();
                    for d in 0..hd {
                        acc = _mm256_fmadd_ps(
                            _mm256_set1_ps(*qh.add(d)),
                            _mm256_loadu_ps(kb.add(d * bs + chunk)),
                            acc,
                        );
                    }
                    let mut v = _mm256_mul_ps(acc, scale);
                    if let Some(c) = p.softcap {
                        let c = _mm256_set1_ps(c);
                        v = _mm256_mul_ps(tanh8(_mm256_div_ps(v, c)), c);
                    }
                    _mm256_storeu_ps(s.as_mut_ptr().add(bi * bs + chunk), v);
                }
            }
            let e = &mut s[lo - base..lo - base + n];
            let max = e.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // exp, and the sum in lanes by index mod 8 (a zero-padded tail adds nothing).
            let vmax = _mm256_set1_ps(max);
            let mut lanes = _mm256_setzero_ps();
            let full = n / 8 * 8;
            for i in (0..full).step_by(8) {
                let x = exp8(_mm256_sub_ps(_mm256_loadu_ps(e.as_ptr().add(i)), vmax));
                _mm256_storeu_ps(e.as_mut_ptr().add(i), x);
                lanes = _mm256_add_ps(lanes, x);
            }
            let mut tail = [0f32; 8];
            for i in full..n {
                e[i] = exp(e[i] - max);
                tail[i - full] = e[i];
            }
            lanes = _mm256_add_ps(lanes, _mm256_loadu_ps(tail.as_ptr()));
            let mut l = [0f32; 8];
            _mm256_storeu_ps(l.as_mut_ptr(), lanes);
            let inv = _mm256_set1_ps(1.0 / fold8(&l));
            // Values: out_d = Σ_j e_j·v_jd in order of j, eight dimensions per register.
            let oh = out.as_mut_ptr().add(h * hd);
            for d0 in (0..hd).step_by(64) {
                let width = (hd - d0).min(64) / 8;
                let mut acc = [_mm256_setzero_ps(); 8];
                for (i, &w) in e.iter().enumerate() {
                    let j = lo + i;
                    let vrow = kv
                        .value(layer, blocks[j / bs] as usize, g, j % bs)
                        .as_ptr()
                        .add(d0);
                    let wv = _mm256_set1_ps(w);
                    for (r, a) in acc.iter_mut().enumerate().take(width) {
                        *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(vrow.add(8 * r)), *a);
                    }
                }
                for (r, a) in acc.iter().enumerate().take(width) {
                    _mm256_storeu_ps(oh.add(d0 + 8 * r), _mm256_mul_ps(*a, inv));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::cpu::simd::{exp16, tanh16};
    use std::arch::x86_64::*;

    /// The AVX-512 row (block_size and head_dim multiples of 16): the query heads that share a
    /// KV head are done together, up to four at a time, so each key and value row is loaded
    /// once for all of them and their FMA chains overlap; sixteen keys' scores per vector,
    /// sixteen output dimensions per register. Per head, the operations and their order are
    /// those of the portable row.
    ///
    /// # Safety
    /// AVX-512F/DQ, AVX2 and FMA must be available.
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    pub unsafe fn attend_row(
        kv: &CpuKv,
        layer: usize,
        q: &[f32],
        t: usize,
        meta: &AttentionMeta,
        p: AttentionParams,
        out: &mut [f32],
    ) {
        let group = p.num_heads / p.num_kv_heads;
        for g in 0..p.num_kv_heads {
            let mut h0 = 0;
            while h0 < group {
                let hn = (group - h0).min(4);
                let h = g * group + h0;
                match hn {
                    4 => heads::<4>(kv, layer, q, t, meta, p, out, g, h),
                    3 => heads::<3>(kv, layer, q, t, meta, p, out, g, h),
                    2 => heads::<2>(kv, layer, q, t, meta, p, out, g, h),
                    _ => heads::<1>(kv, layer, q, t, meta, p, out, g, h),
                }
                h0 += hn;
            }
        }
    }

    /// Query heads h..h+H, all reading KV head g.
    // Indexing by head and by register keeps the H×R accumulators in registers.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    unsafe fn heads<const H: usize>(
        kv: &CpuKv,
        layer: usize,
        q: &[f32],
        t: usize,
        meta: &AttentionMeta,
        p: AttentionParams,
        out: &mut [f32],
        g: usize,
        h: usize,
    ) {
        let (hd, bs) = (p.head_dim, meta.block_size);
        let blocks = &meta.spans[meta.span_of[t] as usize];
        let (lo, pos) = key_range(meta, t, p.window);
        let n = pos + 1 - lo;
        let first_block = lo / bs;
        let last_block = pos / bs;
        let base = first_block * bs;
        let width = (last_block + 1 - first_block) * bs;
        let mut s = vec![0f32; H * width];
        let keys = kv.k[layer].as_ptr();
        let values = kv.v[layer].as_ptr();
        let scale = _mm512_set1_ps(p.scale);
        let qh = q.as_ptr().add(h * hd);
        // Scores: per sixteen keys, Σ_d q_d·k_d in order of d, one chain per head.
        let chunks = width / 16;
        let chunk_ptr = |c: usize| {
            let (bi, off) = ((c * 16) / bs, (c * 16) % bs);
            keys.add(kv.head_base(blocks[first_block + bi] as usize, g) + off)
        };
        let finish = |acc: __m512| {
            let mut v = _mm512_mul_ps(acc, scale);
            if let Some(c) = p.softcap {
                let c = _mm512_set1_ps(c);
                v = _mm512_mul_ps(tanh16(_mm512_div_ps(v, c)), c);
            }
            v
        };
        let mut c = 0;
        while c + 2 <= chunks {
            let (k0, k1) = (chunk_ptr(c), chunk_ptr(c + 1));
            let mut a0 = [_mm512_setzero_ps(); H];
            let mut a1 = [_mm512_setzero_ps(); H];
            for d in 0..hd {
                let (x0, x1) = (
                    _mm512_loadu_ps(k0.add(d * bs)),
                    _mm512_loadu_ps(k1.add(d * bs)),
                );
                for j in 0..H {
                    let qd = _mm512_set1_ps(*qh.add(j * hd + d));
                    a0[j] = _mm512_fmadd_ps(qd, x0, a0[j]);
                    a1[j] = _mm512_fmadd_ps(qd, x1, a1[j]);
                }
            }
            for j in 0..H {
                _mm512_storeu_ps(s.as_mut_ptr().add(j * width + c * 16), finish(a0[j]));
                _mm512_storeu_ps(s.as_mut_ptr().add(j * width + c * 16 + 16), finish(a1[j]));
            }
            c += 2;
        }
        if c < chunks {
            let k0 = chunk_ptr(c);
            let mut a0 = [_mm512_setzero_ps(); H];
            for d in 0..hd {
                let x0 = _mm512_loadu_ps(k0.add(d * bs));
                for j in 0..H {
                    a0[j] = _mm512_fmadd_ps(_mm512_set1_ps(*qh.add(j * hd + d)), x0, a0[j]);
                }
            }
            for j in 0..H {
                _mm512_storeu_ps(s.as_mut_ptr().add(j * width + c * 16), finish(a0[j]));
            }
        }
        // Softmax weights per head: exp(s - max), the sum in 8 lanes by index mod 8, in order.
        let mut inv = [_mm512_setzero_ps(); H];
        for j in 0..H {
            let e = &mut s[j * width + lo - base..j * width + lo - base + n];
            let max = e.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let vmax = _mm512_set1_ps(max);
            let mut lanes = _mm256_setzero_ps();
            let full = n / 16 * 16;
            for i in (0..full).step_by(16) {
                let x = exp16(_mm512_sub_ps(_mm512_loadu_ps(e.as_ptr().add(i)), vmax));
                _mm512_storeu_ps(e.as_mut_ptr().add(i), x);
                lanes = _mm256_add_ps(lanes, _mm512_castps512_ps256(x));
                lanes = _mm256_add_ps(lanes, _mm512_extractf32x8_ps(x, 1));
            }
            let mut tail = [0f32; 16];
            for i in full..n {
                e[i] = exp(e[i] - max);
                tail[i - full] = e[i];
            }
            lanes = _mm256_add_ps(lanes, _mm256_loadu_ps(tail.as_ptr()));
            lanes = _mm256_add_ps(lanes, _mm256_loadu_ps(tail.as_ptr().add(8)));
            let mut l = [0f32; 8];
            _mm256_storeu_ps(l.as_mut_ptr(), lanes);
            inv[j] = _mm512_set1_ps(1.0 / fold8(&l));
        }
        // Values: out_d = Σ_j e_j·v_jd in order of j, per head; each value row loaded once.
        let e0 = s.as_ptr().add(lo - base);
        for d0 in (0..hd).step_by(64) {
            let wd = (hd - d0).min(64) / 16;
            let mut acc = [[_mm512_setzero_ps(); 4]; H];
            for i in 0..n {
                let key = lo + i;
                let vrow =
                    values.add(kv.head_base(blocks[key / bs] as usize, g) + (key % bs) * hd + d0);
                let mut v = [_mm512_setzero_ps(); 4];
                for (r, x) in v.iter_mut().enumerate().take(wd) {
                    *x = _mm512_loadu_ps(vrow.add(16 * r));
                }
                for j in 0..H {
                    let w = _mm512_set1_ps(*e0.add(j * width + i));
                    for r in 0..wd {
                        acc[j][r] = _mm512_fmadd_ps(w, v[r], acc[j][r]);
                    }
                }
            }
            for j in 0..H {
                let oh = out.as_mut_ptr().add((h + j) * hd + d0);
                for r in 0..wd {
                    _mm512_storeu_ps(oh.add(16 * r), _mm512_mul_ps(acc[j][r], inv[j]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path this CPU runs equals the portable row bit for bit, across windows, softcaps,
    /// GQA, rows that start mid-block, and block sizes and head sizes that the vector paths
    /// take (16) or leave to narrower code (8, 24).
    #[test]
    fn every_path_equals_the_portable_row() {
        for (bs, hd, kvh, heads) in [
            (8, 24, 2, 6),
            (16, 32, 2, 6),
            (16, 64, 1, 5),
            (32, 80, 2, 4),
        ] {
            let (layers, blocks) = (1, 12);
            let mut kv = CpuKv::new(layers, blocks, bs, kvh, hd);
            let mut x = 1u32;
            let mut rnd = move || {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 8) as f32 / (1 << 24) as f32 * 4.0 - 2.0
            };
            // A scrambled block table for one sequence of 80 positions.
            let table: Vec<u32> = vec![7, 2, 9, 0, 11, 5, 3, 8, 1, 10];
            let len = 80.min(table.len() * bs);
            for pos in 0..len {
                let k: Vec<f32> = (0..kvh * hd).map(|_| rnd() * 3.0).collect();
                let v: Vec<f32> = (0..kvh * hd).map(|_| rnd()).collect();
                kv.write(0, table[pos / bs] as usize * bs + pos % bs, &k, &v);
            }
            let positions: Vec<u32> = vec![0, 5, 8, 17, 40, 63, 79];
            let meta = AttentionMeta {
                span_of: vec![0; positions.len()],
                positions: positions.clone(),
                spans: vec![table],
                block_size: bs,
            };
            let q: Vec<f32> = (0..positions.len() * heads * hd)
                .map(|_| rnd() * 3.0)
                .collect();
            for (window, softcap) in [
                (None, Some(50.0)),
                (Some(11), Some(5.0)),
                (Some(3), None),
                (None, None),
            ] {
                let p = AttentionParams {
                    num_heads: heads,
                    num_kv_heads: kvh,
                    head_dim: hd,
                    scale: 0.2,
                    softcap,
                    window,
                };
                let mut slow = vec![0f32; positions.len() * heads * hd];
                for (t, o) in slow.chunks_mut(heads * hd).enumerate() {
                    attend_row(
                        &kv,
                        0,
                        &q[t * heads * hd..(t + 1) * heads * hd],
                        t,
                        &meta,
                        p,
                        o,
                    );
                }
                for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                    let fast = attention_on(isa, &kv, 0, &q, &meta, p);
                    assert_eq!(
                        fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{} block {bs} head_dim {hd} window {window:?} softcap {softcap:?}",
                        isa.name()
                    );
                }
            }
        }
    }
}
