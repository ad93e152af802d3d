//! `out = x · wᵀ` for a weight stored [out_features, in_features] in f32, bf16 or f16, read
//! in place (no conversion of the model at load) and accumulated in f32.
//!
//! Each output element is a dot product in the fixed order of [`super::simd`], whatever the
//! number of rows and however the work is tiled or split across threads: results are
//! batch-invariant. Tiles of 4 rows × 3 weight rows keep 12 accumulators in registers.

use super::simd::{fold8, has_avx2};
use crate::weights::{element, DType};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A weight matrix [rows = out features, cols = in features] in its stored type.
#[derive(Clone, Copy)]
pub struct WeightRef<'a> {
    pub dtype: DType,
    pub bytes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

const MR: usize = 4;
const NR: usize = 3;
/// Weight rows per parallel task.
const TASK_ROWS: usize = 16 * NR;

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint columns of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out[i][j] = Σ_k x[i][k] · w[j][k]` for `m` rows of `x`.
pub fn linear(x: &[f32], m: usize, w: WeightRef<'_>, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "linear: x is not m × k");
    assert_eq!(out.len(), m * n, "linear: out is not m × n");
    assert_eq!(w.bytes.len(), n * k * w.dtype.size(), "linear: weight size");
    let ptr = OutPtr(out.as_mut_ptr());
    let avx2 = has_avx2();
    let task = |t: usize| {
        let n0 = t * TASK_ROWS;
        let n1 = (n0 + TASK_ROWS).min(n);
        // Capture the Send wrapper whole, not its raw-pointer field.
        #[allow(clippy::redundant_locals)]
        let ptr = ptr;
        // SAFETY: columns n0..n1 belong to this task only; bounds were asserted above.
        unsafe { block(x, m, w, n0, n1, ptr.0, avx2) }
    };
    let tasks = n.div_ceil(TASK_ROWS);
    // Small products are not worth waking the pool for.
    if m * n * k < 1 << 16 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Up to this many rows, weights are widened in registers rather than into a panel.
const DIRECT_ROWS: usize = 8;

/// Bytes of `x` rows kept hot in L2 while the weight panels stream past them.
const X_BLOCK_BYTES: usize = 192 << 10;

unsafe fn block(
    x: &[f32],
    m: usize,
    w: WeightRef<'_>,
    n0: usize,
    n1: usize,
    out: *mut f32,
    avx2: bool,
) {
    let (n, k) = (w.rows, w.cols);
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // Rows of x in blocks that stay in L2; for each, every panel of NR weight rows is
        // converted to f32 once (into L1) and swept across the block's row tiles.
        let mb = ((X_BLOCK_BYTES / (4 * k.max(1))) / MR * MR).max(MR);
        let mut panel = vec![0f32; NR * k];
        let mut i0 = 0;
        while i0 < m {
            let i1 = (i0 + mb).min(m);
            let mut j = n0;
            while j < n1 {
                let nr = (n1 - j).min(NR);
                let wp = w.bytes.as_ptr().add(j * k * w.dtype.size());
                if m <= DIRECT_ROWS {
                    // Few rows: widen in registers, keeping loads and FMAs interleaved.
                    let mut i = i0;
                    while i < i1 {
                        let mr = (i1 - i).min(MR);
                        avx2_tile_direct(
                            mr,
                            nr,
                            x.as_ptr().add(i * k),
                            wp,
                            w.dtype,
                            k,
                            out.add(i * n + j),
                            n,
                        );
                        i += mr;
                    }
                    j += nr;
                    continue;
                }
                let wf: *const f32 = match w.dtype {
                    DType::F32 => wp as *const f32,
                    dt => {
                        to_f32_avx2(wp, dt, nr * k, panel.as_mut_ptr());
                        panel.as_ptr()
                    }
                };
                let mut i = i0;
                while i < i1 {
                    let mr = (i1 - i).min(MR);
                    avx2_tile(mr, nr, x.as_ptr().add(i * k), wf, k, out.add(i * n + j), n);
                    i += mr;
                }
                j += nr;
            }
            i0 = i1;
        }
        return;
    }
    let _ = avx2;
    let mut i = 0;
    while i < m {
        let mr = (m - i).min(MR);
        let mut j = n0;
        while j < n1 {
            let nr = (n1 - j).min(NR);
            let wp = w.bytes.as_ptr().add(j * k * w.dtype.size());
            portable_tile(
                mr,
                nr,
                x.as_ptr().add(i * k),
                wp,
                w.dtype,
                k,
                out.add(i * n + j),
                n,
            );
            j += nr;
        }
        i += mr;
    }
}

/// Widens `count` bf16/f16 values to f32 (exactly: both convert losslessly).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn to_f32_avx2(src: *const u8, dt: DType, count: usize, dst: *mut f32) {
    let body = count / 8 * 8;
    let mut i = 0;
    while i < body {
        let v = match dt {
            DType::BF16 => LoadBf16::load8(src.add(2 * i)),
            _ => LoadF16::load8(src.add(2 * i)),
        };
        _mm256_storeu_ps(dst.add(i), v);
        i += 8;
    }
    for i in body..count {
        *dst.add(i) = match dt {
            DType::BF16 => LoadBf16::one(src.add(2 * i)),
            _ => LoadF16::one(src.add(2 * i)),
        };
    }
}

/// The portable tile: the same lanes, fold and tail as the AVX2 tile.
#[allow(clippy::too_many_arguments)]
unsafe fn portable_tile(
    mr: usize,
    nr: usize,
    x: *const f32,
    w: *const u8,
    dt: DType,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let wbytes = std::slice::from_raw_parts(w, nr * k * dt.size());
    for r in 0..mr {
        let xr = std::slice::from_raw_parts(x.add(r * k), k);
        for c in 0..nr {
            let body = k / 8 * 8;
            let mut lanes = [0f32; 8];
            for p in (0..body).step_by(8) {
                for l in 0..8 {
                    lanes[l] = xr[p + l].mul_add(element(wbytes, dt, c * k + p + l), lanes[l]);
                }
            }
            let mut s = fold8(&lanes);
            for (p, &xv) in xr.iter().enumerate().skip(body) {
                s = xv.mul_add(element(wbytes, dt, c * k + p), s);
            }
            *out.add(r * ldo + c) = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn avx2_tile(
    mr: usize,
    nr: usize,
    x: *const f32,
    w: *const f32,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let w = w as *const u8;
    match (mr, nr) {
        (4, 3) => tile::<4, 3, LoadF32>(x, w, k, out, ldo),
        (4, 2) => tile::<4, 2, LoadF32>(x, w, k, out, ldo),
        (4, 1) => tile::<4, 1, LoadF32>(x, w, k, out, ldo),
        (3, 3) => tile::<3, 3, LoadF32>(x, w, k, out, ldo),
        (3, 2) => tile::<3, 2, LoadF32>(x, w, k, out, ldo),
        (3, 1) => tile::<3, 1, LoadF32>(x, w, k, out, ldo),
        (2, 3) => tile::<2, 3, LoadF32>(x, w, k, out, ldo),
        (2, 2) => tile::<2, 2, LoadF32>(x, w, k, out, ldo),
        (2, 1) => tile::<2, 1, LoadF32>(x, w, k, out, ldo),
        (1, 3) => tile::<1, 3, LoadF32>(x, w, k, out, ldo),
        (1, 2) => tile::<1, 2, LoadF32>(x, w, k, out, ldo),
        _ => tile::<1, 1, LoadF32>(x, w, k, out, ldo),
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn avx2_tile_direct(
    mr: usize,
    nr: usize,
    x: *const f32,
    w: *const u8,
    dt: DType,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    macro_rules! go {
        ($load:ident) => {
            match (mr, nr) {
                (4, 3) => tile::<4, 3, $load>(x, w, k, out, ldo),
                (4, 2) => tile::<4, 2, $load>(x, w, k, out, ldo),
                (4, 1) => tile::<4, 1, $load>(x, w, k, out, ldo),
                (3, 3) => tile::<3, 3, $load>(x, w, k, out, ldo),
                (3, 2) => tile::<3, 2, $load>(x, w, k, out, ldo),
                (3, 1) => tile::<3, 1, $load>(x, w, k, out, ldo),
                (2, 3) => tile::<2, 3, $load>(x, w, k, out, ldo),
                (2, 2) => tile::<2, 2, $load>(x, w, k, out, ldo),
                (2, 1) => tile::<2, 1, $load>(x, w, k, out, ldo),
                (1, 3) => tile::<1, 3, $load>(x, w, k, out, ldo),
                (1, 2) => tile::<1, 2, $load>(x, w, k, out, ldo),
                _ => tile::<1, 1, $load>(x, w, k, out, ldo),
            }
        };
    }
    match dt {
        DType::F32 => go!(LoadF32),
        DType::BF16 => go!(LoadBf16),
        DType::F16 => go!(LoadF16),
    }
}

#[cfg(target_arch = "x86_64")]
trait Load {
    const SIZE: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    unsafe fn one(p: *const u8) -> f32;
}

#[cfg(target_arch = "x86_64")]
struct LoadF32;
#[cfg(target_arch = "x86_64")]
impl Load for LoadF32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        (p as *const f32).read_unaligned()
    }
}

#[cfg(target_arch = "x86_64")]
struct LoadBf16;
#[cfg(target_arch = "x86_64")]
impl Load for LoadBf16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        f32::from_bits(u32::from((p as *const u16).read_unaligned()) << 16)
    }
}

#[cfg(target_arch = "x86_64")]
struct LoadF16;
#[cfg(target_arch = "x86_64")]
impl Load for LoadF16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        half::f16::from_bits((p as *const u16).read_unaligned()).to_f32()
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const C: usize, L: Load>(
    x: *const f32,
    w: *const u8,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let body = k / 8 * 8;
    let mut p = 0;
    while p < body {
        let mut wv = [_mm256_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = L::load8(w.add((c * k + p) * L::SIZE));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(x.add(r * k + p));
            for c in 0..C {
                row[c] = _mm256_fmadd_ps(xv, wv[c], row[c]);
            }
        }
        p += 8;
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let mut s = super::simd::hsum(*v);
            for q in body..k {
                s = (*x.add(r * k + q)).mul_add(L::one(w.add((c * k + q) * L::SIZE)), s);
            }
            *out.add(r * ldo + c) = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(vals: &[f32], dt: DType) -> Vec<u8> {
        vals.iter()
            .flat_map(|&v| match dt {
                DType::F32 => v.to_le_bytes().to_vec(),
                DType::BF16 => half::bf16::from_f32(v).to_bits().to_le_bytes().to_vec(),
                DType::F16 => half::f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
            })
            .collect()
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_f64_and_is_batch_invariant() {
        for dt in [DType::F32, DType::BF16, DType::F16] {
            for &(m, n, k) in &[
                (1, 1, 1),
                (5, 7, 13),
                (9, 50, 64),
                (17, 100, 203),
                (3, 130, 8),
            ] {
                let x = data(m * k, 1);
                let wv = data(n * k, 2);
                let wb = encode(&wv, dt);
                let w = WeightRef {
                    dtype: dt,
                    bytes: &wb,
                    rows: n,
                    cols: k,
                };
                let mut out = vec![0f32; m * n];
                linear(&x, m, w, &mut out);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| {
                                f64::from(x[i * k + p]) * f64::from(element(&wb, dt, j * k + p))
                            })
                            .sum();
                        let got = f64::from(out[i * n + j]);
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{dt:?} {m}x{n}x{k} [{i}][{j}] {got} vs {want}"
                        );
                    }
                    // Row i alone gives the same bits as row i in the batch.
                    let mut single = vec![0f32; n];
                    linear(&x[i * k..(i + 1) * k], 1, w, &mut single);
                    assert_eq!(
                        single.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        out[i * n..(i + 1) * n]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>(),
                        "{dt:?} row {i} differs alone"
                    );
                }
                // The portable path gives the same bits as the vector path.
                let mut portable = vec![0f32; m * n];
                unsafe { block(&x, m, w, 0, n, portable.as_mut_ptr(), false) };
                assert_eq!(portable, out, "{dt:?} portable path differs");
            }
        }
    }
}
