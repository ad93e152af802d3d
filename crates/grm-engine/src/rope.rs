//! RoPE tables, computed on the host for every backend.

/// The cos and sin tables of one position: angle_i = pos · θ^(−2i/d), computed in f64 and
/// rounded once.
pub fn rope_tables(pos: u32, head_dim: usize, theta: f64, cos: &mut [f32], sin: &mut [f32]) {
    let half = head_dim / 2;
    for i in 0..half {
        let inv_freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
        let angle = f64::from(pos) * inv_freq;
        cos[i] = angle.cos() as f32;
        sin[i] = angle.sin() as f32;
    }
}
