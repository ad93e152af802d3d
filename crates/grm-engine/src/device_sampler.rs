//! The sampling rule of the GPU (`kernels/sample.cu`), written plainly: its CPU reference.
//! Unlike [`crate::sampler::Sampler`] it keeps no random state: the uniform draw comes from
//! (seed, step) by SplitMix64, and the nucleus is found by bisection on a probability
//! threshold instead of a sort, both of which suit one GPU block per row.

/// What one row is sampled with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSampling {
    /// 0 is greedy.
    pub temperature: f32,
    /// In (0, 1]; 1 keeps every token.
    pub top_p: f32,
    pub seed: u64,
    /// The index of the token being drawn in its sample (0 for the first).
    pub step: u64,
}

/// Bisection steps of the nucleus threshold (sample.cu's BISECTION_STEPS).
const BISECTION_STEPS: usize = 40;

pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The uniform draw in [0, 1) of a row: 24 random bits.
pub fn uniform(seed: u64, step: u64) -> f32 {
    (splitmix64(seed ^ splitmix64(step)) >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// The token the GPU picks for one row of logits (up to the order of its float sums).
pub fn sample_row(logits: &[f32], s: RowSampling) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    if s.temperature == 0.0 {
        return best as u32;
    }
    let (max, inv_t) = (logits[best], 1.0 / s.temperature);
    let p: Vec<f32> = logits.iter().map(|&l| ((l - max) * inv_t).exp()).collect();
    let total: f32 = p.iter().sum();
    let mut thr = 0.0f32;
    if s.top_p < 1.0 {
        let target = s.top_p * total;
        let (mut lo, mut hi) = (0.0f32, 1.0f32);
        for _ in 0..BISECTION_STEPS {
            let mid = 0.5 * (lo + hi);
            let kept: f32 = p.iter().filter(|&&v| v >= mid).sum();
            if kept >= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        thr = lo;
    }
    let kept_total: f32 = p.iter().filter(|&&v| v >= thr).sum();
    let goal = uniform(s.seed, s.step) * kept_total;
    let mut run = 0.0f32;
    let mut last = best;
    for (i, &v) in p.iter().enumerate() {
        // A token of probability 0 (underflow at a low temperature) is never drawn.
        if v < thr || v <= 0.0 {
            continue;
        }
        last = i;
        run += v;
        if run > goal {
            break;
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: f32, top_p: f32, seed: u64, step: u64) -> RowSampling {
        RowSampling {
            temperature: t,
            top_p,
            seed,
            step,
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(sample_row(&[0.1, 3.0, 3.0, -1.0], row(0.0, 1.0, 1, 0)), 1);
    }

    #[test]
    fn follows_the_distribution_and_the_nucleus() {
        // p = 0.75 / 0.25 at temperature 1.
        let logits = [3f32.ln(), 0.0];
        let n = 20_000;
        let zeros = (0..n)
            .filter(|&i| sample_row(&logits, row(1.0, 1.0, 7, i)) == 0)
            .count();
        let frac = zeros as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
        // p ≈ 0.51 / 0.31 / ...: top_p 0.5 keeps the first alone, 0.8 the first two.
        let logits = [5.0, 4.0, 0.0, -10.0, 4.5];
        for i in 0..500 {
            assert_eq!(sample_row(&logits, row(1.0, 0.5, 3, i)), 0);
            assert!(matches!(sample_row(&logits, row(1.0, 0.8, 3, i)), 0 | 4));
        }
        // The same (seed, step) gives the same token; different steps differ somewhere.
        let wide: Vec<f32> = (0..100).map(|i| ((i * 37 % 11) as f32) * 0.2).collect();
        let draw = |seed| {
            (0..50)
                .map(|i| sample_row(&wide, row(0.9, 0.95, seed, i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(4), draw(4));
        assert_ne!(draw(4), draw(5));
    }
}
