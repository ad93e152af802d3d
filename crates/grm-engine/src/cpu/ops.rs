//! Row-wise operations of the forward pass on the host. Each is the CPU reference of the
//! CUDA kernel of the same name in `kernels/`.

use super::simd::{dot, tanh};

/// `x * rsqrt(mean(x²) + eps) * (1 + w)` for each row of `cols`, as HF's Gemma2RMSNorm (in
/// f32, the weight offset by one).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let cols = w.len();
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let inv = 1.0 / ((dot(xr, xr) / cols as f32) + eps).sqrt();
        for ((o, &xv), &wv) in or.iter_mut().zip(xr).zip(w) {
            *o = (xv * inv) * (1.0 + wv);
        }
    }
}

/// `residual += rms_norm(x)`, row by row.
pub fn add_rms_norm(residual: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let cols = w.len();
    for (xr, rr) in x.chunks_exact(cols).zip(residual.chunks_exact_mut(cols)) {
        let inv = 1.0 / ((dot(xr, xr) / cols as f32) + eps).sqrt();
        for ((r, &xv), &wv) in rr.iter_mut().zip(xr).zip(w) {
            *r += (xv * inv) * (1.0 + wv);
        }
    }
}

/// `gelu_tanh(g) * u`, where gelu_tanh(g) = 0.5·g·(1 + tanh(√(2/π)·(g + 0.044715·g³))).
pub fn gelu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let inner = SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g);
        *o = 0.5 * g * (1.0 + tanh(inner)) * u;
    }
}

/// `tanh(x / cap) * cap`.
pub fn softcap(x: &mut [f32], cap: f32) {
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
