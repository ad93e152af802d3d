//! Row-wise operations of the forward pass on the host. Each is the CPU reference of the
//! CUDA kernel of the same name in `kernels/`.

use super::isa::Isa;
use super::simd::{dot_portable as dot, tanh, with_avx2};

with_avx2!(
    /// `x * rsqrt(mean(x²) + eps) * (1 + w)` for each row of `cols`, as HF's Gemma2RMSNorm (in
    /// f32, the weight offset by one).
    pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) => rms_norm_impl
);
with_avx2!(
    /// `residual += rms_norm(x)`, row by row.
    pub fn add_rms_norm(residual: &mut [f32], x: &[f32], w: &[f32], eps: f32) => add_rms_norm_impl
);
/// `gelu_tanh(g) * u`, where gelu_tanh(g) = 0.5·g·(1 + tanh(√(2/π)·(g + 0.044715·g³))).
pub fn gelu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gelu_mul_on(Isa::current(), gate, up, out)
}

/// [`gelu_mul`] on a given path (the same bits on every one).
pub fn gelu_mul_on(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len().min(gate.len()).min(up.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() {
        // SAFETY: the path's features were checked when it was chosen; indices stay below n.
        done = unsafe { avx512::gelu_mul(&gate[..n], &up[..n], &mut out[..n]) };
    } else if isa.avx2() {
        // SAFETY: as above.
        done = unsafe { avx2::gelu_mul(&gate[..n], &up[..n], &mut out[..n]) };
    }
    let _ = isa;
    gelu_mul_impl(&gate[done..n], &up[done..n], &mut out[done..n]);
}

/// `tanh(x / cap) * cap`.
pub fn softcap(x: &mut [f32], cap: f32) {
    softcap_on(Isa::current(), x, cap)
}

/// [`softcap`] on a given path (the same bits on every one).
pub fn softcap_on(isa: Isa, x: &mut [f32], cap: f32) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() {
        // SAFETY: the path's features were checked when it was chosen.
        done = unsafe { avx512::softcap(x, cap) };
    } else if isa.avx2() {
        // SAFETY: as above.
        done = unsafe { avx2::softcap(x, cap) };
    }
    let _ = isa;
    softcap_impl(&mut x[done..], cap);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! Sixteen elements at a time, the same operations in the same order as the scalar code.
    use crate::cpu::simd::tanh16;
    use std::arch::x86_64::*;

    /// Returns how many leading elements it did (a multiple of 16).
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    pub unsafe fn gelu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
        let n = out.len() / 16 * 16;
        let (k, c, half, one) = (
            _mm512_set1_ps(super::SQRT_2_OVER_PI),
            _mm512_set1_ps(0.044_715),
            _mm512_set1_ps(0.5),
            _mm512_set1_ps(1.0),
        );
        for i in (0..n).step_by(16) {
            let g = _mm512_loadu_ps(gate.as_ptr().add(i));
            let u = _mm512_loadu_ps(up.as_ptr().add(i));
            let cube = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(c, g), g), g);
            let inner = _mm512_mul_ps(k, _mm512_add_ps(g, cube));
            let r = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_mul_ps(half, g), _mm512_add_ps(one, tanh16(inner))),
                u,
            );
            _mm512_storeu_ps(out.as_mut_ptr().add(i), r);
        }
        n
    }

    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    pub unsafe fn softcap(x: &mut [f32], cap: f32) -> usize {
        let n = x.len() / 16 * 16;
        let c = _mm512_set1_ps(cap);
        for i in (0..n).step_by(16) {
            let v = _mm512_loadu_ps(x.as_ptr().add(i));
            _mm512_storeu_ps(
                x.as_mut_ptr().add(i),
                _mm512_mul_ps(tanh16(_mm512_div_ps(v, c)), c),
            );
        }
        n
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Eight elements at a time, the same operations in the same order as the scalar code.
    use crate::cpu::simd::tanh8;
    use std::arch::x86_64::*;

    /// Returns how many leading elements it did (a multiple of 8).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
        let n = out.len() / 8 * 8;
        let (k, c, half, one) = (
            _mm256_set1_ps(super::SQRT_2_OVER_PI),
            _mm256_set1_ps(0.044_715),
            _mm256_set1_ps(0.5),
            _mm256_set1_ps(1.0),
        );
        for i in (0..n).step_by(8) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let cube = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(c, g), g), g);
            let inner = _mm256_mul_ps(k, _mm256_add_ps(g, cube));
            let r = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_mul_ps(half, g), _mm256_add_ps(one, tanh8(inner))),
                u,
            );
            _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
        }
        n
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softcap(x: &mut [f32], cap: f32) -> usize {
        let n = x.len() / 8 * 8;
        let c = _mm256_set1_ps(cap);
        for i in (0..n).step_by(8) {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            _mm256_storeu_ps(
                x.as_mut_ptr().add(i),
                _mm256_mul_ps(tanh8(_mm256_div_ps(v, c)), c),
            );
        }
        n
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

#[inline(always)]
fn rms_norm_impl(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let cols = w.len();
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let inv = 1.0 / ((dot(xr, xr) / cols as f32) + eps).sqrt();
        for ((o, &xv), &wv) in or.iter_mut().zip(xr).zip(w) {
            *o = (xv * inv) * (1.0 + wv);
        }
    }
}

#[inline(always)]
fn add_rms_norm_impl(residual: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let cols = w.len();
    for (xr, rr) in x.chunks_exact(cols).zip(residual.chunks_exact_mut(cols)) {
        let inv = 1.0 / ((dot(xr, xr) / cols as f32) + eps).sqrt();
        for ((r, &xv), &wv) in rr.iter_mut().zip(xr).zip(w) {
            *r += (xv * inv) * (1.0 + wv);
        }
    }
}

fn gelu_mul_impl(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let inner = SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g);
        *o = 0.5 * g * (1.0 + tanh(inner)) * u;
    }
}

fn softcap_impl(x: &mut [f32], cap: f32) {
    for v in x {
        *v = tanh(*v / cap) * cap;
    }
}

/// Rotary embedding (HF's rotate-half form) on `heads` heads of one row: for i < d/2,
/// (x_i, x_{i+d/2}) ← (x_i·cos − x_{i+d/2}·sin, x_{i+d/2}·cos + x_i·sin).
pub fn rope_row(row: &mut [f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for h in 0..heads {
        let x = &mut row[h * head_dim..(h + 1) * head_dim];
        for i in 0..half {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * cos[i] - b * sin[i];
            x[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_and_scalar_elementwise_ops_agree() {
        let g: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let u: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut slow = vec![0f32; g.len()];
        gelu_mul_impl(&g, &u, &mut slow);
        let mut b: Vec<f32> = g.iter().map(|x| x * 40.0).collect();
        softcap_impl(&mut b, 30.0);
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let mut fast = vec![0f32; g.len()];
            gelu_mul_on(isa, &g, &u, &mut fast);
            assert_eq!(fast, slow, "gelu_mul on {}", isa.name());
            let mut a: Vec<f32> = g.iter().map(|x| x * 40.0).collect();
            softcap_on(isa, &mut a, 30.0);
            assert_eq!(a, b, "softcap on {}", isa.name());
        }
        // gelu_tanh(1) = 0.841192
        let mut o = [0f32];
        gelu_mul(&[1.0], &[1.0], &mut o);
        assert!((o[0] - 0.841_192).abs() < 1e-5);
    }
}
