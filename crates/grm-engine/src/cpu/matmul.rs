//! `out = x · wᵀ` for a weight stored [out_features, in_features] in f32, bf16 or f16, read
//! in place (no conversion of the model at load) and accumulated in f32.
//!
//! Each output element is a dot product in one fixed order whatever the number of rows and
//! however the work is tiled or split across threads, so results are batch-invariant: on the
//! portable and AVX2 paths, 8 lanes folded as [`super::simd::fold8`] then the tail in order;
//! on the AVX-512 path, 16 lanes folded as [`super::simd::fold16`] then the tail in order
//! (different bits from the 8-lane paths: see [`super::isa`]). The portable code runs either
//! order, and the tests hold each vector path to it bit for bit.
//!
//! Few rows (decode): weights are widened in registers as they stream past, several weight
//! rows at once so that loads overlap. Many rows (prefill): rows of x in blocks that stay in
//! L2, and for each block every panel of weight rows is widened to f32 once (into L1) and
//! swept across the block's row tiles.
use super::isa::Isa;
use super::simd::{fold16, fold8};
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

/// Weight rows per parallel task (a multiple of every tile width).
const TASK_ROWS: usize = 48;

/// Up to this many rows, weights are widened in registers rather than into a panel.
const DIRECT_ROWS: usize = 8;

/// Bytes of `x` rows kept hot in L2 while the weight panels stream past them.
const X_BLOCK_BYTES: usize = 192 << 10;

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint columns of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out[i][j] = Σ_k x[i][k] · w[j][k]` for `m` rows of `x`, on this process's path.
pub fn linear(x: &[f32], m: usize, w: WeightRef<'_>, out: &mut [f32]) {
    linear_on(Isa::current(), x, m, w, out)
}

/// [`linear`] on a given path (which the CPU must be able to run: [`Isa::available`]).
pub fn linear_on(isa: Isa, x: &[f32], m: usize, w: WeightRef<'_>, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "linear: x is not m × k");
    assert_eq!(out.len(), m * n, "linear: out is not m × n");
    assert_eq!(w.bytes.len(), n * k * w.dtype.size(), "linear: weight size");
    assert!(
        isa.available(),
        "linear: this CPU cannot run {}",
        isa.name()
    );
    let ptr = OutPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let n0 = t * TASK_ROWS;
        let n1 = (n0 + TASK_ROWS).min(n);
        // Capture the Send wrapper whole, not its raw-pointer field.
        #[allow(clippy::redundant_locals)]
        let ptr = ptr;
        // SAFETY: columns n0..n1 belong to this task only; bounds were asserted above, and
        // the path's features were checked.
        unsafe { block(isa, x, m, w, n0, n1, ptr.0) }
    };
    let tasks = n.div_ceil(TASK_ROWS);
    // Small products are not worth waking the pool for.
    if m * n * k < 1 << 16 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Columns n0..n1 of `out` for every row.
unsafe fn block(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: WeightRef<'_>,
    n0: usize,
    n1: usize,
    out: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => return avx512::block(x, m, w, n0, n1, out),
        Isa::Avx2 => return avx2::block(x, m, w, n0, n1, out),
        Isa::Portable => {}
    }
    let _ = isa;
    portable_block::<8>(x, m, w, n0, n1, out)
}

/// The portable product in the order of `L` lanes (8: the portable and AVX2 paths; 16: the
/// AVX-512 path): the same lanes, fold and tail as the vector tiles.
unsafe fn portable_block<const L: usize>(
    x: &[f32],
    m: usize,
    w: WeightRef<'_>,
    n0: usize,
    n1: usize,
    out: *mut f32,
) {
    let (n, k, dt) = (w.rows, w.cols, w.dtype);
    let body = k / L * L;
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for c in n0..n1 {
            let mut lanes = [0f32; 16];
            for p in (0..body).step_by(L) {
                for l in 0..L {
                    lanes[l] = xr[p + l].mul_add(element(w.bytes, dt, c * k + p + l), lanes[l]);
                }
            }
            let mut s = if L == 8 {
                fold8(lanes[..8].try_into().expect("8 lanes"))
            } else {
                fold16(&lanes)
            };
            for (p, &xv) in xr.iter().enumerate().skip(body) {
                s = xv.mul_add(element(w.bytes, dt, c * k + p), s);
            }
            *out.add(r * n + c) = s;
        }
    }
}

/// How a weight element type is widened to f32 vectors (exactly: bf16 and f16 convert
/// losslessly).
#[cfg(target_arch = "x86_64")]
trait Load {
    const SIZE: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    unsafe fn load16(p: *const u8) -> __m512;
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
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_loadu_ps(p as *const f32)
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
    unsafe fn load16(p: *const u8) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
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
    unsafe fn load16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        half::f16::from_bits((p as *const u16).read_unaligned()).to_f32()
    }
}

/// Calls `$tile::<R, C, $load>(args)` for the runtime (mr, nr) of a tile: R in 1..=4, C in
/// 1..=4 or 8.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch {
    ($tile:ident, $load:ty, $mr:expr, $nr:expr, ($($a:expr),*)) => {
        match ($mr, $nr) {
            (1, 8) => $tile::<1, 8, $load>($($a),*),
            (2, 8) => $tile::<2, 8, $load>($($a),*),
            (3, 8) => $tile::<3, 8, $load>($($a),*),
            (4, 4) => $tile::<4, 4, $load>($($a),*),
            (4, 3) => $tile::<4, 3, $load>($($a),*),
            (4, 2) => $tile::<4, 2, $load>($($a),*),
            (4, 1) => $tile::<4, 1, $load>($($a),*),
            (3, 4) => $tile::<3, 4, $load>($($a),*),
            (3, 3) => $tile::<3, 3, $load>($($a),*),
            (3, 2) => $tile::<3, 2, $load>($($a),*),
            (3, 1) => $tile::<3, 1, $load>($($a),*),
            (2, 4) => $tile::<2, 4, $load>($($a),*),
            (2, 3) => $tile::<2, 3, $load>($($a),*),
            (2, 2) => $tile::<2, 2, $load>($($a),*),
            (2, 1) => $tile::<2, 1, $load>($($a),*),
            (1, 4) => $tile::<1, 4, $load>($($a),*),
            (1, 3) => $tile::<1, 3, $load>($($a),*),
            (1, 2) => $tile::<1, 2, $load>($($a),*),
            _ => $tile::<1, 1, $load>($($a),*),
        }
    };
}

/// Sweeps columns n0..n1 for rows i0..i1 with tiles of at most `mr_max` rows (`mr_wide` where
/// a tile takes 8 weight rows) and `nr_max` weight rows (8 only where it is whole): `tile(mr,
/// nr, i, j)` does one tile.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sweep(
    (i0, i1): (usize, usize),
    (n0, n1): (usize, usize),
    nr_max: usize,
    mr_max: usize,
    mr_wide: usize,
    mut tile: impl FnMut(usize, usize, usize, usize),
) {
    let mut j = n0;
    while j < n1 {
        let left = n1 - j;
        let nr = if nr_max >= 8 && left >= 8 {
            8
        } else {
            left.min(4).min(nr_max)
        };
        let mut i = i0;
        while i < i1 {
            let mr = (i1 - i).min(if nr == 8 { mr_wide } else { mr_max });
            tile(mr, nr, i, j);
            i += mr;
        }
        j += nr;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Eight lanes: the reference order, as the portable code.
    use super::*;

    const MR: usize = 4;
    const NR: usize = 3;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block(
        x: &[f32],
        m: usize,
        w: WeightRef<'_>,
        n0: usize,
        n1: usize,
        out: *mut f32,
    ) {
        let (n, k) = (w.rows, w.cols);
        let (xp, sz) = (x.as_ptr(), w.dtype.size());
        if m <= DIRECT_ROWS {
            // Few rows: widen in registers, keeping loads and FMAs interleaved.
            sweep((0, m), (n0, n1), NR, MR, MR, |mr, nr, i, j| {
                let (xi, wj, o) = (
                    xp.add(i * k),
                    w.bytes.as_ptr().add(j * k * sz),
                    out.add(i * n + j),
                );
                match w.dtype {
                    DType::F32 => dispatch!(tile, LoadF32, mr, nr, (xi, wj, k, o, n)),
                    DType::BF16 => dispatch!(tile, LoadBf16, mr, nr, (xi, wj, k, o, n)),
                    DType::F16 => dispatch!(tile, LoadF16, mr, nr, (xi, wj, k, o, n)),
                }
            });
            return;
        }
        let mb = ((X_BLOCK_BYTES / (4 * k.max(1))) / MR * MR).max(MR);
        let mut panel = vec![0f32; NR * k];
        let mut i0 = 0;
        while i0 < m {
            let i1 = (i0 + mb).min(m);
            let mut j = n0;
            while j < n1 {
                let nr = (n1 - j).min(NR);
                let wp = w.bytes.as_ptr().add(j * k * sz);
                let wf: *const u8 = match w.dtype {
                    DType::F32 => wp,
                    dt => {
                        to_f32(wp, dt, nr * k, panel.as_mut_ptr());
                        panel.as_ptr() as *const u8
                    }
                };
                let mut i = i0;
                while i < i1 {
                    let mr = (i1 - i).min(MR);
                    dispatch!(
                        tile,
                        LoadF32,
                        mr,
                        nr,
                        (xp.add(i * k), wf, k, out.add(i * n + j), n)
                    );
                    i += mr;
                }
                j += nr;
            }
            i0 = i1;
        }
    }

    /// Widens `count` bf16/f16 values to f32 (exact, so the AVX-512 path uses it too).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn to_f32(src: *const u8, dt: DType, count: usize, dst: *mut f32) {
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
                let mut s = crate::cpu::simd::hsum(*v);
                for q in body..k {
                    s = (*x.add(r * k + q)).mul_add(L::one(w.add((c * k + q) * L::SIZE)), s);
                }
                *out.add(r * ldo + c) = s;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! Sixteen lanes (the order of `portable_block::<16>`).
    use super::*;
    use crate::cpu::simd::hsum16;

    /// Rows per tile where a tile takes 8 weight rows (then 8·MR_WIDE accumulators), and
    /// otherwise.
    const MR_WIDE: usize = 3;
    const MR: usize = 4;
    /// Weight rows per panel.
    const NR: usize = 8;
    /// Bytes of `x` rows kept in L2 while the weight panels pass.
    const X_BLOCK_BYTES: usize = 512 << 10;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub unsafe fn block(
        x: &[f32],
        m: usize,
        w: WeightRef<'_>,
        n0: usize,
        n1: usize,
        out: *mut f32,
    ) {
        let (n, k) = (w.rows, w.cols);
        let (xp, sz) = (x.as_ptr(), w.dtype.size());
        if m <= DIRECT_ROWS {
            // Few rows: widen in registers as the weights stream past.
            sweep((0, m), (n0, n1), NR, MR, MR_WIDE, |mr, nr, i, j| {
                let (xi, wj, o) = (
                    xp.add(i * k),
                    w.bytes.as_ptr().add(j * k * sz),
                    out.add(i * n + j),
                );
                match w.dtype {
                    DType::F32 => dispatch!(tile, LoadF32, mr, nr, (xi, wj, k, o, n)),
                    DType::BF16 => dispatch!(tile, LoadBf16, mr, nr, (xi, wj, k, o, n)),
                    DType::F16 => dispatch!(tile, LoadF16, mr, nr, (xi, wj, k, o, n)),
                }
            });
            return;
        }
        // Many rows: each panel of NR weight rows widened to f32 once per block of x rows.
        let mb = ((X_BLOCK_BYTES / (4 * k.max(1))) / MR_WIDE * MR_WIDE).max(MR_WIDE);
        let mut panel = vec![0f32; NR * k];
        let mut i0 = 0;
        while i0 < m {
            let i1 = (i0 + mb).min(m);
            let mut j0 = n0;
            while j0 < n1 {
                let j1 = (j0 + NR).min(n1);
                let wp = w.bytes.as_ptr().add(j0 * k * sz);
                let wf: *const u8 = match w.dtype {
                    DType::F32 => wp,
                    dt => {
                        super::avx2::to_f32(wp, dt, (j1 - j0) * k, panel.as_mut_ptr());
                        panel.as_ptr() as *const u8
                    }
                };
                sweep((i0, i1), (j0, j1), NR, MR, MR_WIDE, |mr, nr, i, j| {
                    let wj = wf.add((j - j0) * k * 4);
                    dispatch!(
                        tile,
                        LoadF32,
                        mr,
                        nr,
                        (xp.add(i * k), wj, k, out.add(i * n + j), n)
                    )
                });
                j0 = j1;
            }
            i0 = i1;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const C: usize, L: Load>(
        x: *const f32,
        w: *const u8,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let body = k / 16 * 16;
        let mut p = 0;
        while p < body {
            let mut wv = [_mm512_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = L::load16(w.add((c * k + p) * L::SIZE));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(r * k + p));
                for c in 0..C {
                    row[c] = _mm512_fmadd_ps(xv, wv[c], row[c]);
                }
            }
            p += 16;
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let mut s = hsum16(*v);
                for q in body..k {
                    s = (*x.add(r * k + q)).mul_add(L::one(w.add((c * k + q) * L::SIZE)), s);
                }
                *out.add(r * ldo + c) = s;
            }
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

    /// Every path this CPU can run: within 1e-4 of f64, each row alone equal to the row in the
    /// batch, and the bits of the portable code in the path's order.
    #[test]
    fn every_path_matches_f64_the_portable_order_and_is_batch_invariant() {
        for dt in [DType::F32, DType::BF16, DType::F16] {
            for &(m, n, k) in &[
                (1, 1, 1),
                (1, 61, 40),
                (5, 7, 13),
                (9, 50, 64),
                (17, 100, 203),
                (3, 130, 8),
                (2, 97, 37),
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
                for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                    let tag = format!("{} {dt:?} {m}x{n}x{k}", isa.name());
                    let mut out = vec![0f32; m * n];
                    linear_on(isa, &x, m, w, &mut out);
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
                                "{tag} [{i}][{j}] {got} vs {want}"
                            );
                        }
                        // Row i alone gives the same bits as row i in the batch.
                        let mut single = vec![0f32; n];
                        linear_on(isa, &x[i * k..(i + 1) * k], 1, w, &mut single);
                        assert_eq!(
                            bits(&single),
                            bits(&out[i * n..(i + 1) * n]),
                            "{tag}: row {i} differs alone"
                        );
                    }
                    let mut slow = vec![0f32; m * n];
                    unsafe {
                        if isa.lanes() == 16 {
                            portable_block::<16>(&x, m, w, 0, n, slow.as_mut_ptr())
                        } else {
                            portable_block::<8>(&x, m, w, 0, n, slow.as_mut_ptr())
                        }
                    }
                    assert_eq!(
                        bits(&out),
                        bits(&slow),
                        "{tag}: differs from the portable code"
                    );
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
