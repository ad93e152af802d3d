//! Adaptive k: a request asks for at most k judgements, and sampling stops as soon as the
//! verdict is settled. Two rules:
//!
//! - **Exact**: the best response cannot change, whatever the judgements still to come would
//!   score. Every score is an integer 1..=10, so one more counted judgement moves a response's
//!   reward by 1..=10 and the gap between two responses by at most 9.
//!   *Plain voting*: with r judgements to come, the leader b stays the unique best of all k iff
//!   R_b − R_i > 9r for every other response i (each future judgement may give i 10 and b 1;
//!   one that is invalid, or that the meta RM leaves out, changes nothing).
//!   *Meta-RM voting* (the k_meta judgements with the highest meta scores vote): a future
//!   judgement that enters the top k_meta pushes out the current kept judgement with the lowest
//!   meta score, so whatever comes, the current judgements that vote are a prefix of them sorted
//!   by meta score (score descending, then index — `meta::keep_top`'s order; a later judgement
//!   ranks below an earlier one of equal score). With c valid judgements now, the final vote is
//!   the prefix of length p plus j new judgements, for every p, j with p + j ≤ k_meta, j ≤ r,
//!   and p < c only when the kept set is full (p + j = k_meta). The leader b of the current vote
//!   (the prefix min(c, k_meta), j = 0) is settled iff for every such (p, j):
//!   P_p(b) − P_p(i) > 9j for every i ≠ b, where P_p sums the prefix of length p, and p + j > 0.
//!   A strict margin leaves no tie, so the seeded tie-break never enters. With n = 1 there is no
//!   "best" to settle: the exact rule stops only at k.
//! - **Confident**: the probability that the best response would still change, estimated by
//!   drawing the remaining judgements from the ones seen (a Bayesian bootstrap: Dirichlet weights
//!   over the judgements seen and [`PRIOR`] pseudo-judgements with uniformly random scores), is
//!   at most 1 − confidence. For n = 1 (rating a single response, the RL case) it stops when the
//!   final mean score is within ±0.25 of the current mean with that confidence (a normal
//!   approximation): the reward a trainer gets is then the mean of fewer judgements, its noise
//!   the spread of the scores over √(judgements used) instead of over √k.
//!
//! Nothing is decided before two judgements have voted (one judgement says nothing about how
//! much judgements disagree).

use crate::meta::keep_top;
use crate::rng::SplitMix64;

/// When to stop sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Exact,
    /// `confidence` in (0, 1).
    Confident {
        confidence: f64,
    },
}

/// One judgement seen so far: its scores mapped back to the original responses (None when it
/// is invalid) and its meta score (when the meta RM filters).
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub ballot: Option<Vec<u8>>,
    pub meta: Option<f32>,
}

/// The request's plan: at most `k` judgements of `n` responses, `k_meta` of them voting when
/// the meta RM filters.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub n: usize,
    pub k: usize,
    pub k_meta: Option<usize>,
    pub seed: u64,
}

/// Pseudo-judgements of uniformly random scores in the confident rule's prior: a few judgements
/// that agree by chance must not settle a request (measured on the held-out split: with 1,
/// voting stopped after ~8 judgements 3 points below fixed k = 32; see the README).
const PRIOR: usize = 4;

/// Monte Carlo draws of the confident rule.
const DRAWS: usize = 200;

/// Whether sampling may stop after the judgements `seen` (the first `seen.len()` of `plan.k`).
pub fn settled(rule: Rule, seen: &[Seen], plan: &Plan) -> bool {
    let remaining = plan.k.saturating_sub(seen.len());
    if remaining == 0 {
        return true;
    }
    let votes = seen.iter().filter(|s| s.ballot.is_some()).count();
    if votes < 2 {
        return false;
    }
    match (rule, plan.n) {
        (Rule::Exact, 1) => false,
        (Rule::Exact, _) => exact(seen, plan, remaining),
        (Rule::Confident { confidence }, 1) => confident_rating(seen, plan, remaining, confidence),
        (Rule::Confident { confidence }, _) => confident_best(seen, plan, remaining, confidence),
    }
}

/// The judgements that vote, in the order in which they would give way to new ones (the
/// last first): by meta score when the meta RM filters, else as they came.
fn voting_order<'a>(seen: &'a [Seen], plan: &Plan) -> Vec<&'a [u8]> {
    let mut valid: Vec<(usize, &Seen)> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.ballot.is_some())
        .collect();
    if plan.k_meta.is_some() {
        // keep_top's order: meta score descending (NaN last), then index.
        let key = |s: &Seen| {
            s.meta.map_or(f32::NEG_INFINITY, |m| {
                if m.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    m
                }
            })
        };
        valid.sort_by(|a, b| key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0)));
    }
    valid
        .into_iter()
        .filter_map(|(_, s)| s.ballot.as_deref())
        .collect()
}

fn exact(seen: &[Seen], plan: &Plan, remaining: usize) -> bool {
    let order = voting_order(seen, plan);
    let c = order.len();
    let k_meta = plan.k_meta.unwrap_or(plan.k);
    // prefix[p][i]: response i's reward over the first p voting judgements.
    let mut prefix = vec![vec![0i64; plan.n]];
    for b in &order {
        let mut next = prefix.last().cloned().unwrap_or_default();
        for (acc, &s) in next.iter_mut().zip(b.iter()) {
            *acc += i64::from(s);
        }
        prefix.push(next);
    }
    let now = &prefix[c.min(k_meta)];
    let top = now.iter().copied().max().unwrap_or(0);
    let leaders: Vec<usize> = (0..plan.n).filter(|&i| now[i] == top).collect();
    let [b] = leaders[..] else { return false };
    for p in 0..=c.min(k_meta) {
        for j in 0..=remaining.min(k_meta - p) {
            let reachable = (p == c && p + j <= k_meta) || (p < c && p + j == k_meta);
            if !reachable {
                continue;
            }
            if p + j == 0 {
                return false;
            }
            let gap = 9 * j as i64;
            if (0..plan.n).any(|i| i != b && prefix[p][b] - prefix[p][i] <= gap) {
                return false;
            }
        }
    }
    true
}

/// The best response of a set of judgements (None on a tie or without votes).
fn leader(judgements: &[(Option<&[u8]>, Option<f32>)], plan: &Plan) -> Option<usize> {
    let kept: Vec<bool> = match plan.k_meta {
        Some(m) => {
            let metas: Vec<Option<f32>> = judgements
                .iter()
                .map(|(b, m)| b.map(|_| m.unwrap_or(f32::NEG_INFINITY)))
                .collect();
            keep_top(&metas, m)
        }
        None => judgements.iter().map(|(b, _)| b.is_some()).collect(),
    };
    let mut sums = vec![0u32; plan.n];
    let mut any = false;
    for ((b, _), k) in judgements.iter().zip(kept) {
        if let (Some(b), true) = (b, k) {
            any = true;
            for (acc, &s) in sums.iter_mut().zip(b.iter()) {
                *acc += u32::from(s);
            }
        }
    }
    let top = *sums.iter().max()?;
    let mut at = (0..plan.n).filter(|&i| sums[i] == top);
    let first = at.next()?;
    (any && at.next().is_none()).then_some(first)
}

/// Weights of a Bayesian bootstrap: Dirichlet(1, ..., 1) as normalised exponentials.
fn dirichlet(rng: &mut SplitMix64, n: usize) -> Vec<f64> {
    let w: Vec<f64> = (0..n).map(|_| -(1.0 - rng.next_f64()).ln()).collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|x| x / total).collect()
}

fn pick(rng: &mut SplitMix64, weights: &[f64]) -> usize {
    let x = rng.next_f64();
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if x < acc {
            return i;
        }
    }
    weights.len() - 1
}

fn confident_best(seen: &[Seen], plan: &Plan, remaining: usize, confidence: f64) -> bool {
    let now: Vec<(Option<&[u8]>, Option<f32>)> =
        seen.iter().map(|s| (s.ballot.as_deref(), s.meta)).collect();
    let Some(best) = leader(&now, plan) else {
        return false;
    };
    let metas: Vec<f32> = seen.iter().filter_map(|s| s.meta).collect();
    let mut rng =
        SplitMix64::new(plan.seed ^ (seen.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let allowed = ((1.0 - confidence) * DRAWS as f64).floor() as usize;
    let mut changed = 0;
    let mut prior = vec![0u8; plan.n];
    for _ in 0..DRAWS {
        // Weights over the judgements seen, and the prior pseudo-judgements last (their
        // weight PRIOR: Gamma(PRIOR) as a sum of exponentials).
        let mut w = dirichlet(&mut rng, seen.len() + PRIOR);
        let prior_weight: f64 = w.drain(seen.len()..).sum();
        w.push(prior_weight);
        let mut all = now.clone();
        let mut fresh: Vec<Vec<u8>> = Vec::new();
        let mut fresh_meta: Vec<Option<f32>> = Vec::new();
        for _ in 0..remaining {
            let i = pick(&mut rng, &w);
            if i < seen.len() {
                all.push(now[i]);
            } else {
                for s in prior.iter_mut() {
                    *s = 1 + rng.below(10) as u8;
                }
                fresh.push(prior.clone());
                fresh_meta.push(if metas.is_empty() {
                    None
                } else {
                    Some(metas[rng.below(metas.len() as u64) as usize])
                });
            }
        }
        for (b, m) in fresh.iter().zip(&fresh_meta) {
            all.push((Some(b.as_slice()), *m));
        }
        if leader(&all, plan) != Some(best) {
            changed += 1;
            if changed > allowed {
                return false;
            }
        }
    }
    true
}

/// The z of a two-sided normal interval of this confidence (Acklam's rational approximation of
/// the inverse normal CDF, good to 1e-9 relative error).
fn z_of(confidence: f64) -> f64 {
    let p = 1.0 - (1.0 - confidence) / 2.0;
    let a = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    let b = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    let c = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    let d = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p_high = 1.0 - 0.02425;
    if p > p_high {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    }
}

/// How far the final mean score may lie from the current one, in score points.
pub const RATING_TOLERANCE: f64 = 0.25;

fn confident_rating(seen: &[Seen], plan: &Plan, remaining: usize, confidence: f64) -> bool {
    let scores: Vec<f64> = voting_order(seen, plan)
        .iter()
        .take(plan.k_meta.unwrap_or(usize::MAX))
        .map(|b| f64::from(b[0]))
        .collect();
    let m = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / m;
    // Sample variance with one prior point of variance 1, so that two equal scores do not
    // claim a certainty they do not have.
    let ss: f64 = scores.iter().map(|s| (s - mean).powi(2)).sum();
    let var = (ss + 1.0) / m;
    let (r, k) = (remaining as f64, plan.k as f64);
    // final = (m·current + r·future) / k: it moves by r/k times the future mean's distance
    // from the current one, whose variance is var/r + var/m.
    let sd = (r / k) * (var / r + var / m).sqrt();
    z_of(confidence) * sd <= RATING_TOLERANCE
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    fn v(scores: &[u8]) -> Seen {
        Seen {
            ballot: Some(scores.to_vec()),
            meta: None,
        }
    }

    fn plan(n: usize, k: usize, k_meta: Option<usize>) -> Plan {
        Plan {
            n,
            k,
            k_meta,
            seed: 7,
        }
    }

    #[test]
    fn exact_stops_when_the_gap_outruns_the_judgements_to_come() {
        let p = plan(2, 8, None);
        // 9 points per judgement to come: after 5 of 8, a gap of 27 is not enough, 28 is.
        let mut seen: Vec<Seen> = (0..4).map(|_| v(&[10, 3])).collect();
        seen.push(v(&[9, 3]));
        // Gap: 4·7 + 6 = 34 > 27.
        assert!(settled(Rule::Exact, &seen, &p));
        let close: Vec<Seen> = vec![v(&[10, 4]), v(&[8, 3]), v(&[9, 5]), v(&[7, 4]), v(&[8, 4])];
        // Gap 22 ≤ 27: the rest could still turn it.
        assert!(!settled(Rule::Exact, &close, &p));
        // n = 1: nothing to settle before k.
        assert!(!settled(
            Rule::Exact,
            &[v(&[9]), v(&[9])],
            &plan(1, 4, None)
        ));
        assert!(settled(Rule::Exact, &[v(&[9]), v(&[9])], &plan(1, 2, None)));
        // Too few votes.
        let one = [
            v(&[10, 1]),
            Seen {
                ballot: None,
                meta: None,
            },
        ];
        assert!(!settled(Rule::Exact, &one, &plan(2, 3, None)));
    }

    #[test]
    fn with_a_meta_rm_new_judgements_can_push_out_the_kept_ones() {
        // k = 6, k_meta = 3: three strong votes for response 0 with high meta scores, one weak
        // judgement against it with a low one.
        let s = |b: &[u8], m: f32| Seen {
            ballot: Some(b.to_vec()),
            meta: Some(m),
        };
        let seen = vec![
            s(&[10, 1], 0.9),
            s(&[10, 1], 0.8),
            s(&[10, 1], 0.7),
            s(&[1, 10], 0.1),
        ];
        // Two to come; they may enter the top 3 and push out two of the three: then one kept
        // vote (gap 9) against two new ones (9 · 2 = 18): not settled.
        assert!(!settled(Rule::Exact, &seen, &plan(2, 6, Some(3))));
        // With k_meta = 5 at most one is pushed out (the weak one first): the kept votes then
        // keep a gap of 27 against two new ones (18), or 18 against one (9): settled.
        assert!(settled(Rule::Exact, &seen, &plan(2, 6, Some(5))));
        // Plain voting over 7: three to come could add 27 against the gap of 18.
        assert!(!settled(Rule::Exact, &seen, &plan(2, 7, None)));
    }

    #[test]
    fn confident_stops_on_agreement_not_on_a_split() {
        let agree: Vec<Seen> = (0..6).map(|_| v(&[9, 2])).collect();
        let conf = Rule::Confident { confidence: 0.95 };
        assert!(settled(conf, &agree, &plan(2, 32, None)));
        let split: Vec<Seen> = (0..6)
            .map(|i| if i % 2 == 0 { v(&[9, 2]) } else { v(&[2, 9]) })
            .collect();
        assert!(!settled(conf, &split, &plan(2, 32, None)));
        // n = 1: agreeing ratings settle, scattered ones do not.
        let steady: Vec<Seen> = (0..8).map(|_| v(&[7])).collect();
        assert!(settled(conf, &steady, &plan(1, 32, None)));
        let scattered: Vec<Seen> = [1u8, 10, 2, 9, 3, 8].iter().map(|&s| v(&[s])).collect();
        assert!(!settled(conf, &scattered, &plan(1, 32, None)));
        assert!((z_of(0.95) - 1.959964).abs() < 1e-5);
    }

    /// A random stream of k judgements: each valid with probability 0.8, scores leaning
    /// towards one response, meta scores at random.
    fn streams() -> impl Strategy<Value = (usize, usize, Option<usize>, Vec<Seen>)> {
        (2usize..=4, 2usize..=24, any::<bool>(), any::<u64>()).prop_map(|(n, k, meta, seed)| {
            let mut rng = SplitMix64::new(seed);
            let favourite = rng.below(n as u64) as usize;
            let lean = rng.below(6) as u8;
            let seen = (0..k)
                .map(|_| Seen {
                    ballot: (rng.below(10) < 8).then(|| {
                        (0..n)
                            .map(|i| {
                                let s = 1 + rng.below(10) as u8;
                                if i == favourite {
                                    (s + lean).min(10)
                                } else {
                                    s
                                }
                            })
                            .collect()
                    }),
                    meta: meta.then(|| (rng.below(5) as f32) / 4.0),
                })
                .collect();
            let k_meta = meta.then(|| 1 + (rng.below(k as u64) as usize));
            (n, k, k_meta, seen)
        })
    }

    /// The best of a set of judgements as the method votes (meta::keep_top, vote::vote), and
    /// whether it was a tie.
    fn final_best(seen: &[Seen], n: usize, k_meta: Option<usize>) -> (Option<usize>, bool) {
        let kept = match k_meta {
            Some(m) => keep_top(
                &seen
                    .iter()
                    .map(|s| s.ballot.as_ref().and(s.meta))
                    .collect::<Vec<_>>(),
                m,
            ),
            None => seen.iter().map(|s| s.ballot.is_some()).collect(),
        };
        let ballots = seen
            .iter()
            .zip(kept)
            .filter(|(_, k)| *k)
            .filter_map(|(s, _)| s.ballot.as_deref());
        let v = crate::vote::vote(ballots, n, 3).unwrap();
        (v.best, v.tie)
    }

    #[test]
    fn the_property_below_is_not_vacuous() {
        // Over many streams the exact rule does stop early, often.
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut stopped, mut total) = (0, 0);
        for _ in 0..500 {
            let (n, k, k_meta, seen) = streams().new_tree(&mut runner).unwrap().current();
            let p = Plan {
                n,
                k,
                k_meta,
                seed: 1,
            };
            total += 1;
            if (1..k).any(|m| settled(Rule::Exact, &seen[..m], &p)) {
                stopped += 1;
            }
        }
        assert!(
            stopped * 5 > total,
            "stopped early in {stopped} of {total} streams"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The exact rule never changes the best response: wherever it stops, the leader then
        /// is the unique best of all k judgements, with or without the meta RM.
        #[test]
        fn the_exact_rule_never_changes_best((n, k, k_meta, seen) in streams()) {
            let p = Plan { n, k, k_meta, seed: 1 };
            for m in 1..k {
                if settled(Rule::Exact, &seen[..m], &p) {
                    let (early, early_tie) = final_best(&seen[..m], n, k_meta);
                    let (full, full_tie) = final_best(&seen, n, k_meta);
                    prop_assert!(early.is_some() && !early_tie && !full_tie);
                    prop_assert_eq!(early, full, "stopped after {} of {}", m, k);
                    break;
                }
            }
        }
    }
}
