//! Vector primitives with one fixed order of floating-point operations.
//!
//! Every reduction here accumulates in 8 lanes (lane j takes elements j, j+8, …), folds the
//! lanes in one fixed tree and then adds the tail in order, with fused multiply-adds
//! throughout. The AVX2 path and the portable path follow exactly this order, so a value
//! never depends on how many rows were computed with it: the same token gets the same bits in
//! a batch of 1 or of 200, in prefill or in decode. That is what lets prefix caching,
//! preemption and continuous batching leave outputs unchanged.

use super::isa::Isa;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this process's path ([`Isa::current`]) runs the AVX2 + FMA + F16C code (or
/// better): false where the CPU lacks them or `GRM_CPU_ISA=portable`.
#[inline]
pub fn has_avx2() -> bool {
    Isa::current().avx2()
}

/// Defines a safe function that runs an `#[inline(always)]` implementation compiled for
/// AVX2 + FMA + F16C when the CPU has them, and as plain code otherwise. Both compile the same
/// source, and `mul_add` is exact either way, so both give the same bits; the AVX2 build just
/// turns `mul_add` into one instruction instead of a libm call, and vectorizes.
macro_rules! with_avx2 {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:path) => {
        $(#[$m])* $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                if $crate::cpu::simd::has_avx2() {
                    // SAFETY: the CPU features were just checked.
                    return unsafe { fast($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}
pub(crate) use with_avx2;

/// The fixed fold of 8 lanes: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
#[inline]
pub fn fold8(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// The fixed fold of 16 lanes (the AVX-512 matrix products): lane i plus lane i+8, then
/// [`fold8`].
#[inline]
pub fn fold16(l: &[f32; 16]) -> f32 {
    let mut h = [0f32; 8];
    for (i, v) in h.iter_mut().enumerate() {
        *v = l[i] + l[i + 8];
    }
    fold8(&h)
}

/// [`fold16`] on a vector register.
///
/// # Safety
/// The CPU must support AVX-512F and DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline]
pub unsafe fn hsum16(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm512_extractf32x8_ps(v, 1);
    hsum(_mm256_add_ps(lo, hi))
}

/// The same fold on a vector register.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`has_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi); // l0+l4, l1+l5, l2+l6, l3+l7
    let s2 = _mm_add_ps(s, _mm_movehl_ps(s, s)); // (l0+l4)+(l2+l6), (l1+l5)+(l3+l7)
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

/// Σ a[i]·b[i] in the fixed order.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the features were checked just above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

/// The portable dot product; `#[inline(always)]` so that callers compiled for AVX2 get it
/// vectorized in place.
#[inline(always)]
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let body = n / 8 * 8;
    let mut lanes = [0f32; 8];
    for c in (0..body).step_by(8) {
        for j in 0..8 {
            lanes[j] = a[c + j].mul_add(b[c + j], lanes[j]);
        }
    }
    let mut s = fold8(&lanes);
    for i in body..n {
        s = a[i].mul_add(b[i], s);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let body = n / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut c = 0;
    while c < body {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(c)), _mm256_loadu_ps(pb.add(c)), acc);
        c += 8;
    }
    let mut s = hsum(acc);
    for i in body..n {
        s = a[i].mul_add(b[i], s);
    }
    s
}

/// y[i] += a · x[i] (element-wise, so any vector width gives the same bits).
#[inline(always)]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = a.mul_add(x, *y);
    }
}

/// e^x for f32, accurate to about 2 ulp over the range that does not overflow; one scalar
/// definition so that every caller gets identical bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Range reduction x = n·ln2 + r, |r| ≤ ln2/2, then a degree-6 polynomial for e^r
    // (Cephes expf coefficients).
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    if x > 88.72 {
        return f32::INFINITY;
    }
    if x < -103.97 {
        return 0.0;
    }
    // Ties to even, as the vector rounding instruction does.
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5e-1);
    let er = (p * r).mul_add(r, r) + 1.0;
    // 2^n in two steps so that n down to -149 (subnormal results) stays exact.
    let n = n as i32;
    let half = n / 2;
    er * pow2i(half) * pow2i(n - half)
}

#[inline(always)]
fn pow2i(n: i32) -> f32 {
    f32::from_bits(((n + 127).clamp(0, 255) as u32) << 23)
}

/// tanh for f32 with absolute error below 1e-7.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let t = if a < 0.625 {
        // Odd polynomial near 0 (Cephes tanhf), where 1 − 2/(e^{2a}+1) would cancel.
        let z = a * a;
        let mut p = -5.704_988_7e-3_f32;
        p = p.mul_add(z, 2.063_909e-2);
        p = p.mul_add(z, -5.373_971e-2);
        p = p.mul_add(z, 1.333_144_2e-1);
        p = p.mul_add(z, -3.333_328e-1);
        (p * z).mul_add(a, a)
    } else if a > 9.0 {
        1.0
    } else {
        1.0 - 2.0 / (exp(2.0 * a) + 1.0)
    };
    t.copysign(x)
}

#[cfg(target_arch = "x86_64")]
mod v8 {
    //! Eight-lane versions of [`super::exp`] and [`super::tanh`]: the same operations in the
    //! same order, so every lane equals the scalar result bit for bit.
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }

    #[inline(always)]
    unsafe fn pow2i(n: __m256i) -> __m256 {
        let biased = _mm256_min_epi32(
            _mm256_max_epi32(
                _mm256_add_epi32(n, _mm256_set1_epi32(127)),
                _mm256_setzero_si256(),
            ),
            _mm256_set1_epi32(255),
        );
        _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23))
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[inline(always)]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        let over = _mm256_cmp_ps(x, splat(88.72), _CMP_GT_OQ);
        let under = _mm256_cmp_ps(x, splat(-103.97), _CMP_LT_OQ);
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, splat(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fmadd_ps(
            n,
            splat(2.121_944_4e-4),
            _mm256_fmadd_ps(n, splat(-0.693_359_4), x),
        );
        let mut p = splat(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, splat(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, splat(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, splat(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, splat(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, splat(5e-1));
        let er = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), splat(1.0));
        let ni = _mm256_cvtps_epi32(n);
        // n / 2 truncated toward zero, as Rust's integer division.
        let half = _mm256_srai_epi32(_mm256_add_epi32(ni, _mm256_srli_epi32(ni, 31)), 1);
        let res = _mm256_mul_ps(
            _mm256_mul_ps(er, pow2i(half)),
            pow2i(_mm256_sub_epi32(ni, half)),
        );
        let res = _mm256_blendv_ps(res, splat(f32::INFINITY), over);
        _mm256_blendv_ps(res, _mm256_setzero_ps(), under)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[inline(always)]
    pub unsafe fn tanh8(x: __m256) -> __m256 {
        let sign = splat(-0.0);
        let a = _mm256_andnot_ps(sign, x);
        let z = _mm256_mul_ps(a, a);
        let mut p = splat(-5.704_988_7e-3);
        p = _mm256_fmadd_ps(p, z, splat(2.063_909e-2));
        p = _mm256_fmadd_ps(p, z, splat(-5.373_971e-2));
        p = _mm256_fmadd_ps(p, z, splat(1.333_144_2e-1));
        p = _mm256_fmadd_ps(p, z, splat(-3.333_328e-1));
        let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), a, a);
        let e = exp8(_mm256_mul_ps(splat(2.0), a));
        let mid = _mm256_sub_ps(
            splat(1.0),
            _mm256_div_ps(splat(2.0), _mm256_add_ps(e, splat(1.0))),
        );
        let t = _mm256_blendv_ps(mid, small, _mm256_cmp_ps(a, splat(0.625), _CMP_LT_OQ));
        let t = _mm256_blendv_ps(t, splat(1.0), _mm256_cmp_ps(a, splat(9.0), _CMP_GT_OQ));
        _mm256_or_ps(t, _mm256_and_ps(sign, x))
    }
}
#[cfg(target_arch = "x86_64")]
pub use v8::{exp8, tanh8};

#[cfg(target_arch = "x86_64")]
mod v16 {
    //! Sixteen-lane versions of [`super::exp`] and [`super::tanh`] for AVX-512: the same
    //! operations in the same order, so every lane equals the scalar result bit for bit.
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }

    #[inline(always)]
    unsafe fn pow2i(n: __m512i) -> __m512 {
        let biased = _mm512_min_epi32(
            _mm512_max_epi32(
                _mm512_add_epi32(n, _mm512_set1_epi32(127)),
                _mm512_setzero_si512(),
            ),
            _mm512_set1_epi32(255),
        );
        _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23))
    }

    /// # Safety
    /// AVX-512F must be available.
    #[inline(always)]
    pub unsafe fn exp16(x: __m512) -> __m512 {
        let over = _mm512_cmp_ps_mask(x, splat(88.72), _CMP_GT_OQ);
        let under = _mm512_cmp_ps_mask(x, splat(-103.97), _CMP_LT_OQ);
        let n = _mm512_roundscale_ps(
            _mm512_mul_ps(x, splat(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm512_fmadd_ps(
            n,
            splat(2.121_944_4e-4),
            _mm512_fmadd_ps(n, splat(-0.693_359_4), x),
        );
        let mut p = splat(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, splat(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, splat(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, splat(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, splat(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, splat(5e-1));
        let er = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), splat(1.0));
        let ni = _mm512_cvtps_epi32(n);
        let half = _mm512_srai_epi32(_mm512_add_epi32(ni, _mm512_srli_epi32(ni, 31)), 1);
        let res = _mm512_mul_ps(
            _mm512_mul_ps(er, pow2i(half)),
            pow2i(_mm512_sub_epi32(ni, half)),
        );
        let res = _mm512_mask_blend_ps(over, res, splat(f32::INFINITY));
        _mm512_mask_blend_ps(under, res, _mm512_setzero_ps())
    }

    /// # Safety
    /// AVX-512F and DQ must be available.
    #[inline(always)]
    pub unsafe fn tanh16(x: __m512) -> __m512 {
        let sign = splat(-0.0);
        let a = _mm512_andnot_ps(sign, x);
        let z = _mm512_mul_ps(a, a);
        let mut p = splat(-5.704_988_7e-3);
        p = _mm512_fmadd_ps(p, z, splat(2.063_909e-2));
        p = _mm512_fmadd_ps(p, z, splat(-5.373_971e-2));
        p = _mm512_fmadd_ps(p, z, splat(1.333_144_2e-1));
        p = _mm512_fmadd_ps(p, z, splat(-3.333_328e-1));
        let small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), a, a);
        let e = exp16(_mm512_mul_ps(splat(2.0), a));
        let mid = _mm512_sub_ps(
            splat(1.0),
            _mm512_div_ps(splat(2.0), _mm512_add_ps(e, splat(1.0))),
        );
        let t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, splat(0.625), _CMP_LT_OQ), mid, small);
        let t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, splat(9.0), _CMP_GT_OQ), t, splat(1.0));
        _mm512_or_ps(t, _mm512_and_ps(sign, x))
    }
}
#[cfg(target_arch = "x86_64")]
pub use v16::{exp16, tanh16};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_paths_agree_bit_for_bit() {
        for n in [0usize, 1, 7, 8, 9, 31, 64, 100, 777] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021)
                .collect();
            assert_eq!(
                dot(&a, &b).to_bits(),
                dot_portable(&a, &b).to_bits(),
                "n={n}"
            );
            let exact: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot(&a, &b)) - exact).abs() < 1e-4 * (1.0 + exact.abs()));
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut x = -100.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            // Subnormal results keep absolute, not relative, precision.
            let err = if x < -87.0 {
                (got - want).abs() / 1e-38
            } else {
                ((got - want) / want).abs()
            };
            assert!(err < 3e-7, "exp({x}) = {got}, want {want}");
            x += 0.0371;
        }
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_and_tanh_equal_the_scalar_ones() {
        use std::arch::x86_64::*;
        if !has_avx2() {
            eprintln!("skipped: no AVX2 on this CPU");
            return;
        }
        let mut xs: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 0.003_7).collect();
        xs.extend([
            0.0,
            -0.0,
            0.625,
            -0.625,
            9.0,
            88.72,
            88.73,
            -103.97,
            -104.0,
            -150.0,
            1e-30,
            f32::MIN_POSITIVE,
        ]);
        while xs.len() % 8 != 0 {
            xs.push(1.0);
        }
        for c in xs.chunks_exact(8) {
            let (mut e, mut t) = ([0f32; 8], [0f32; 8]);
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                _mm256_storeu_ps(e.as_mut_ptr(), exp8(v));
                _mm256_storeu_ps(t.as_mut_ptr(), tanh8(v));
            }
            for i in 0..8 {
                assert_eq!(e[i].to_bits(), exp(c[i]).to_bits(), "exp({})", c[i]);
                assert_eq!(t[i].to_bits(), tanh(c[i]).to_bits(), "tanh({})", c[i]);
            }
        }
        if !Isa::Avx512.available() {
            eprintln!("skipped the 16-lane forms: no AVX-512 on this CPU");
            return;
        }
        #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
        unsafe fn both16(c: &[f32]) -> ([f32; 16], [f32; 16]) {
            let (mut e, mut t) = ([0f32; 16], [0f32; 16]);
            let v = _mm512_loadu_ps(c.as_ptr());
            _mm512_storeu_ps(e.as_mut_ptr(), exp16(v));
            _mm512_storeu_ps(t.as_mut_ptr(), tanh16(v));
            (e, t)
        }
        while xs.len() % 16 != 0 {
            xs.push(-1.0);
        }
        for c in xs.chunks_exact(16) {
            let (e, t) = unsafe { both16(c) };
            for i in 0..16 {
                assert_eq!(e[i].to_bits(), exp(c[i]).to_bits(), "exp16({})", c[i]);
                assert_eq!(t[i].to_bits(), tanh(c[i]).to_bits(), "tanh16({})", c[i]);
            }
        }
        // The 16-lane fold on a register equals fold16.
        let l: [f32; 16] = std::array::from_fn(|i| (i as f32 * 1.37).sin() * 1e3);
        #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
        unsafe fn reg_fold(l: &[f32; 16]) -> f32 {
            hsum16(_mm512_loadu_ps(l.as_ptr()))
        }
        assert_eq!(unsafe { reg_fold(&l) }.to_bits(), fold16(&l).to_bits());
    }

    #[test]
    fn tanh_is_accurate() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = f64::from(x).tanh();
            let got = f64::from(tanh(x));
            assert!(
                (got - want).abs() < 1.2e-7,
                "tanh({x}) = {got}, want {want}"
            );
            x += 0.00713;
        }
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(-1e-30), -1e-30);
    }
}
