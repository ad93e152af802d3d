//! Evaluating a GRM from judgements drawn once per item.
//!
//! * Accuracy counts ties the way the paper breaks them (at random): a vote whose highest
//!   reward is shared by t responses, the labelled one among them, earns 1/t (its expected
//!   credit); a vote that misses earns 0. A vote with no valid judgement ties all n responses.
//! * voting@k and meta-RM@k for k < k_max are estimated from the k_max judgements drawn for the
//!   item: the mean over `draws` subsets of size k taken uniformly without replacement with a
//!   seeded generator (at k = k_max, the whole set). meta-RM@k keeps the k/2 (at least 1)
//!   judgements with the highest meta scores in the subset, then votes.
//! * For single responses with a correctness label, ROC-AUC of the mean score (Mann–Whitney,
//!   ties counted one half); an item without any valid judgement scores the scale's midpoint.

use crate::adaptive::{settled, Plan, Rule, Seen};
use crate::meta::{default_k_meta, keep_top};
use crate::rng::SplitMix64;
use crate::vote::vote;

/// The judgements drawn for one item: each valid judgement's scores in the original order of
/// the responses (`None`: invalid) and its meta score, if the meta RM scored it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drawn {
    pub ballots: Vec<Option<Vec<u8>>>,
    pub meta: Vec<Option<f32>>,
    /// Tokens each judgement generated (empty when unknown).
    pub tokens: Vec<u32>,
}

impl Drawn {
    pub fn k(&self) -> usize {
        self.ballots.len()
    }

    /// Whether every valid judgement has a meta score (so meta-RM@k can be estimated).
    pub fn has_meta(&self) -> bool {
        self.ballots
            .iter()
            .zip(&self.meta)
            .all(|(b, m)| b.is_none() || m.is_some())
            && self.meta.iter().any(Option::is_some)
    }
}

/// The expected credit of a vote (rewards per response) for labelled best response `best`.
pub fn credit(rewards: &[u32], best: usize) -> f64 {
    let Some(&top) = rewards.iter().max() else {
        return 0.0;
    };
    if rewards.get(best) != Some(&top) {
        return 0.0;
    }
    1.0 / rewards.iter().filter(|&&r| r == top).count() as f64
}

/// The subsets of `0..k_max` of size `k` the estimator averages over.
pub fn subsets(k_max: usize, k: usize, draws: usize, seed: u64) -> Vec<Vec<usize>> {
    if k >= k_max {
        return vec![(0..k_max).collect()];
    }
    let mut g = SplitMix64::new(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..draws.max(1))
        .map(|_| {
            // A partial Fisher–Yates shuffle: the first k of a random permutation.
            let mut idx: Vec<usize> = (0..k_max).collect();
            for i in 0..k {
                let j = i + g.below((k_max - i) as u64) as usize;
                idx.swap(i, j);
            }
            idx.truncate(k);
            idx
        })
        .collect()
}

/// Rewards of the vote over a subset of the drawn judgements (optionally meta-filtered).
pub fn subset_rewards(d: &Drawn, subset: &[usize], n: usize, k_meta: Option<usize>) -> Vec<u32> {
    let chosen: Vec<usize> = match k_meta {
        None => subset.to_vec(),
        Some(m) => {
            let scores: Vec<Option<f32>> = subset
                .iter()
                .map(|&i| d.ballots[i].as_ref().and(d.meta[i]))
                .collect();
            let kept = keep_top(&scores, m);
            subset
                .iter()
                .zip(kept)
                .filter(|(_, k)| *k)
                .map(|(&i, _)| i)
                .collect()
        }
    };
    let ballots = chosen.iter().filter_map(|&i| d.ballots[i].as_deref());
    vote(ballots, n, 0)
        .map(|v| v.rewards)
        .unwrap_or_else(|_| vec![0; n])
}

/// Expected accuracy credit of voting@k (or meta-RM@k) on one item.
pub fn item_credit(
    d: &Drawn,
    n: usize,
    best: usize,
    k: usize,
    meta: bool,
    draws: usize,
    seed: u64,
) -> f64 {
    let sets = subsets(d.k(), k, draws, seed);
    let k_meta = meta.then(|| default_k_meta(k.min(d.k())));
    sets.iter()
        .map(|s| credit(&subset_rewards(d, s, n, k_meta), best))
        .sum::<f64>()
        / sets.len() as f64
}

/// The mean score of a single response over a subset (the midpoint 5.5 without a vote).
pub fn item_mean_score(d: &Drawn, subset: &[usize], k_meta: Option<usize>) -> f64 {
    let r = subset_rewards(d, subset, 1, k_meta);
    let votes = match k_meta {
        None => subset.iter().filter(|&&i| d.ballots[i].is_some()).count(),
        Some(m) => subset
            .iter()
            .filter(|&&i| d.ballots[i].is_some() && d.meta[i].is_some())
            .count()
            .min(m),
    };
    if votes == 0 {
        5.5
    } else {
        f64::from(r[0]) / votes as f64
    }
}

/// ROC-AUC of `scores` for telling `positive` items from the rest (0.5 when one class is
/// empty).
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> f64 {
    let pos: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|(_, &p)| p)
        .map(|(&s, _)| s)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|(_, &p)| !p)
        .map(|(&s, _)| s)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return 0.5;
    }
    let mut wins = 0.0;
    for &p in &pos {
        for &q in &neg {
            wins += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawn(ballots: &[Option<&[u8]>], meta: &[Option<f32>]) -> Drawn {
        Drawn {
            tokens: Vec::new(),
            ballots: ballots.iter().map(|b| b.map(|b| b.to_vec())).collect(),
            meta: meta.to_vec(),
        }
    }

    #[test]
    fn ties_earn_their_expected_credit() {
        assert_eq!(credit(&[9, 3], 0), 1.0);
        assert_eq!(credit(&[9, 3], 1), 0.0);
        assert_eq!(credit(&[5, 5, 2], 0), 0.5);
        assert_eq!(credit(&[5, 5, 5], 2), 1.0 / 3.0);
        assert_eq!(credit(&[0, 0], 1), 0.5); // no vote: a random pick
    }

    #[test]
    fn subsets_are_distinct_indices_of_the_right_size() {
        for s in subsets(10, 4, 50, 1) {
            let mut t = s.clone();
            t.sort_unstable();
            t.dedup();
            assert_eq!(t.len(), 4);
            assert!(t.iter().all(|&i| i < 10));
        }
        assert_eq!(subsets(5, 5, 9, 1), vec![vec![0, 1, 2, 3, 4]]);
    }

    /// Four judgements of a pair, label 0: two vote for 0, one for 1, one is invalid. By hand:
    /// voting@4 = 1 (rewards 8+7+2 = 17 vs 3+2+9 = 14); voting@1 = the chance a single draw is
    /// a correct vote = 2/4 + 1/4 · ½ (the invalid one ties) = 0.625.
    #[test]
    fn voting_at_k_matches_a_hand_computation() {
        let d = drawn(
            &[Some(&[8, 3]), Some(&[7, 2]), Some(&[2, 9]), None],
            &[None; 4],
        );
        assert_eq!(item_credit(&d, 2, 0, 4, false, 1, 0), 1.0);
        let est = item_credit(&d, 2, 0, 1, false, 20_000, 3);
        assert!((est - 0.625).abs() < 0.01, "{est}");
    }

    /// With meta scores, meta-RM@4 keeps the two judgements (k/2) the meta RM rates highest:
    /// the wrong one (0.9) and the first (0.5), so the vote is 8+2 = 10 vs 3+9 = 12: response 1.
    #[test]
    fn meta_at_k_keeps_the_top_half() {
        let d = drawn(
            &[Some(&[8, 3]), Some(&[7, 2]), Some(&[2, 9]), None],
            &[Some(0.5), Some(0.1), Some(0.9), None],
        );
        assert_eq!(subset_rewards(&d, &[0, 1, 2, 3], 2, Some(2)), vec![10, 12]);
        assert_eq!(item_credit(&d, 2, 0, 4, true, 1, 0), 0.0);
        assert_eq!(item_credit(&d, 2, 1, 4, true, 1, 0), 1.0);
        assert!(d.has_meta());
    }

    #[test]
    fn roc_auc_by_hand() {
        // Positives 9, 7; negatives 7, 2: pairs (9>7, 9>2, 7=7, 7>2) = 3.5 / 4.
        assert_eq!(
            roc_auc(&[9.0, 7.0, 7.0, 2.0], &[true, true, false, false]),
            0.875
        );
        assert_eq!(roc_auc(&[1.0, 2.0], &[true, true]), 0.5);
        let d = drawn(&[Some(&[8]), None, Some(&[6])], &[None; 3]);
        assert_eq!(item_mean_score(&d, &[0, 1, 2], None), 7.0);
        assert_eq!(item_mean_score(&d, &[1], None), 5.5);
    }
}

/// How many of an item's drawn judgements adaptive sampling would use, drawing them in
/// `order` (a permutation of them) as the router does: without a meta RM the rule is weighed
/// after every judgement, with one (`k_meta`) at the end of each wave of `wave`.
pub fn adaptive_used(
    d: &Drawn,
    n: usize,
    rule: Rule,
    k_meta: Option<usize>,
    wave: usize,
    order: &[usize],
    seed: u64,
) -> usize {
    let plan = Plan {
        n,
        k: order.len(),
        k_meta,
        seed,
    };
    let mut seen: Vec<Seen> = Vec::with_capacity(order.len());
    for (m, &i) in order.iter().enumerate() {
        seen.push(Seen {
            ballot: d.ballots[i].clone(),
            meta: d.meta.get(i).copied().flatten(),
        });
        let at_check = k_meta.is_none() || (m + 1) % wave.max(1) == 0;
        if at_check && settled(rule, &seen, &plan) {
            return m + 1;
        }
    }
    order.len()
}

/// A random permutation of `0..k` for the `draw`-th run of an item (seeded).
pub fn permutation(k: usize, seed: u64, draw: usize) -> Vec<usize> {
    let mut g = SplitMix64::new(seed ^ (draw as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut idx: Vec<usize> = (0..k).collect();
    for i in (1..k).rev() {
        let j = g.below(i as u64 + 1) as usize;
        idx.swap(i, j);
    }
    idx
}
