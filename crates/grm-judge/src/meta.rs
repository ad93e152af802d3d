//! Meta-RM guided voting: a meta reward model scores every judgement; only the k_meta
//! judgements it rates highest vote.

/// The paper's default: keep half of the k samples (at least one).
pub fn default_k_meta(k: usize) -> usize {
    (k / 2).max(1)
}

/// Which samples to keep: the `k_meta` highest meta scores among the samples that have one
/// (`None` marks an invalid judgement, which is never kept since it cannot vote).
///
/// Equal meta scores are ordered by sample index (lower first), and NaN ranks below every
/// number, so the choice is deterministic.
pub fn keep_top(meta_scores: &[Option<f32>], k_meta: usize) -> Vec<bool> {
    let mut ranked: Vec<(usize, f32)> = meta_scores
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (i, if s.is_nan() { f32::NEG_INFINITY } else { s })))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = vec![false; meta_scores.len()];
    for &(i, _) in ranked.iter().take(k_meta) {
        kept[i] = true;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest() {
        let s = [Some(0.1), Some(0.9), None, Some(0.5), Some(-2.0)];
        assert_eq!(keep_top(&s, 2), vec![false, true, false, true, false]);
    }

    #[test]
    fn ties_go_to_the_lower_index_and_nan_ranks_last() {
        let s = [Some(f32::NAN), Some(0.5), Some(0.5), Some(0.5)];
        assert_eq!(keep_top(&s, 2), vec![false, true, true, false]);
        assert_eq!(keep_top(&s, 4), vec![true, true, true, true]);
    }

    #[test]
    fn invalid_samples_are_never_kept() {
        assert_eq!(
            keep_top(&[None, None, Some(1.0)], 3),
            vec![false, false, true]
        );
    }

    #[test]
    fn default_is_half() {
        assert_eq!(default_k_meta(1), 1);
        assert_eq!(default_k_meta(8), 4);
        assert_eq!(default_k_meta(9), 4);
        assert_eq!(default_k_meta(32), 16);
    }
}
