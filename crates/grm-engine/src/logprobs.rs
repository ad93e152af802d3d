//! Log-probabilities of a drawn token and of the most likely ones, from a row of logits: the
//! model's own distribution (log-softmax of the softcapped logits, before temperature and
//! nucleus or top-k cuts), as OpenAI-style APIs report them.

/// Alternatives per token at most (OpenAI's `top_logprobs` limit).
pub const MAX_TOP: usize = 20;

/// A drawn token's log-probability and the `top` most likely tokens' (most likely first; ties
/// by token id).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of `logits` at `token`, and the `top` best; summed in f64 in a fixed order.
pub fn of(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let lp = |l: f32| (l as f64 - log_z) as f32;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() == top && l <= best[top - 1].1 {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i as u32, l));
            best.truncate(top);
        }
    }
    TokenLogprobs {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: best.into_iter().map(|(t, l)| (t, lp(l))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_the_best_in_order() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let r = of(&logits, 2, 3);
        assert!((r.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = r.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2], "most likely first, ties by id");
        let total: f64 = logits.iter().map(|&l| ((l as f64) - z.ln()).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(of(&logits, 0, 0).top.is_empty());
        assert_eq!(of(&logits, 9, 1).logprob, f32::NEG_INFINITY);
    }
}
