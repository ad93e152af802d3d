//! Choosing the next token: greedy at temperature 0, otherwise temperature, top-k and top-p
//! (nucleus) sampling from a ChaCha8 stream seeded per sample, so that the same seed and the
//! same logits give the same token, whatever else the engine is doing.

use crate::cpu::simd::exp;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How one sample draws its tokens and when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens whose probability reaches top_p (1 = all).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Generation ends after any of these (the model's eos and `<end_of_turn>` by default).
    pub stop_tokens: Vec<u32>,
    /// Ignore stop tokens and always generate max_new_tokens.
    pub ignore_stop: bool,
    /// Send each token as it is drawn (`Event::Token`), not only the finished sample.
    pub stream: bool,
    /// With each streamed token, its log-probability and those of the `n` most likely tokens
    /// (0..=20): the model's own distribution (softcapped logits, before temperature and
    /// top-p/top-k). Such a sample is drawn on the host.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            max_new_tokens: 256,
            stop_tokens: Vec::new(),
            ignore_stop: false,
            stream: false,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Checks the values, naming the field and its limit.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature is {}; it must be a finite number >= 0",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p is {}; it must lie in (0, 1]", self.top_p));
        }
        if self.max_new_tokens == 0 {
            return Err("max_new_tokens is 0; it must be at least 1".into());
        }
        if let Some(n) = self.logprobs.filter(|&n| n > crate::logprobs::MAX_TOP) {
            return Err(format!(
                "logprobs asks for {n} alternatives; the limit is {}",
                crate::logprobs::MAX_TOP
            ));
        }
        Ok(())
    }
}

/// One sample's token chooser.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token given the logits of the last position.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 || self.params.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<f32> = logits.iter().map(|&l| exp((l - max) * inv_t)).collect();
        let vocab = probs.len();
        let k = self.params.top_k;
        let need_sort = (k > 0 && k < vocab) || self.params.top_p < 1.0;
        // u in [0, 1): 53 random bits.
        let u = (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        if !need_sort {
            let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
            return pick(probs.iter().copied().enumerate(), u * total)
                .unwrap_or_else(|| argmax(logits));
        }
        // Most likely first; equal probabilities by token id, so the order is total.
        let mut order: Vec<u32> = (0..vocab as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        if k > 0 && k < vocab {
            for &t in &order[k..] {
                probs[t as usize] = 0.0;
            }
            order.truncate(k);
        }
        if self.params.top_p < 1.0 {
            let total: f64 = order.iter().map(|&t| f64::from(probs[t as usize])).sum();
            let target = f64::from(self.params.top_p) * total;
            let mut cum = 0.0;
            let mut keep = order.len();
            for (i, &t) in order.iter().enumerate() {
                cum += f64::from(probs[t as usize]);
                if cum >= target {
                    keep = i + 1;
                    break;
                }
            }
            order.truncate(keep);
        }
        let total: f64 = order.iter().map(|&t| f64::from(probs[t as usize])).sum();
        pick(
            order.iter().map(|&t| (t as usize, probs[t as usize])),
            u * total,
        )
        .unwrap_or(order[0])
    }
}

/// The token where the running sum of probabilities passes `target`.
fn pick(items: impl Iterator<Item = (usize, f32)>, target: f64) -> Option<u32> {
    let mut cum = 0.0;
    let mut last = None;
    for (t, p) in items {
        if p <= 0.0 {
            continue;
        }
        cum += f64::from(p);
        last = Some(t as u32);
        if cum > target {
            return last;
        }
    }
    last
}

/// The index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_p,
            top_k,
            seed,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0, 1.0, 0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7 % 13) as f32) * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(0.8, 0.9, 20, seed));
            (0..30).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_choice() {
        let logits = [5.0, 4.0, 0.0, -10.0, 4.5];
        let mut s = Sampler::new(params(1.0, 1.0, 2, 3));
        for _ in 0..200 {
            assert!(matches!(s.sample(&logits), 0 | 4));
        }
        // p(0) ≈ 0.51, p(4) ≈ 0.31: top_p 0.5 keeps token 0 alone.
        let mut s = Sampler::new(params(1.0, 0.5, 0, 3));
        for _ in 0..200 {
            assert_eq!(s.sample(&logits), 0);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens with probabilities 0.75 / 0.25 at temperature 1.
        let logits = [3f32.ln(), 0.0];
        let mut s = Sampler::new(params(1.0, 1.0, 0, 11));
        let n = 20_000;
        let zeros = (0..n).filter(|_| s.sample(&logits) == 0).count();
        let frac = zeros as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    #[test]
    fn bad_params_name_the_field() {
        assert!(params(-1.0, 1.0, 0, 0)
            .validate()
            .unwrap_err()
            .starts_with("temperature"));
        assert!(params(1.0, 0.0, 0, 0)
            .validate()
            .unwrap_err()
            .starts_with("top_p"));
    }
}
