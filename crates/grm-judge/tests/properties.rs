//! Property tests of the method's invariants.

use grm_judge::{aggregate, extract_scores, sample_order, shuffle::to_original, vote, Judgement};
use proptest::prelude::*;

fn ballots(n: usize, k: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(1u8..=10, n), k)
}

fn boxed(scores: &[u8]) -> String {
    let list: Vec<String> = scores.iter().map(u8::to_string).collect();
    format!(
        "Specific Criteria: c\nAnalysis: a\nScores: \\boxed{{{}}}",
        list.join(", ")
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn mapping_back_inverts_the_shuffle(n in 1usize..12, seed: u64, sample: u32,
                                        scores in prop::collection::vec(1u8..=10, 12)) {
        let order = sample_order(n, seed, sample);
        let original = &scores[..n];
        // What the sample saw: position j shows original response order[j].
        let shown: Vec<u8> = order.iter().map(|&r| original[r]).collect();
        prop_assert_eq!(to_original(&order, &shown), original.to_vec());
    }

    #[test]
    fn the_vote_does_not_depend_on_sample_order(
        (n, bs) in (1usize..6).prop_flat_map(|n| (Just(n), ballots(n, 12))),
        seed: u64,
        rot in 0usize..12,
    ) {
        let refs: Vec<&[u8]> = bs.iter().map(Vec::as_slice).collect();
        let mut moved = refs.clone();
        moved.rotate_left(rot % refs.len());
        moved.reverse();
        prop_assert_eq!(vote(refs, n, seed).unwrap(), vote(moved, n, seed).unwrap());
    }

    #[test]
    fn rewards_lie_in_k_to_10k(
        (n, bs) in (1usize..6, 1usize..33).prop_flat_map(|(n, k)| (Just(n), ballots(n, k))),
        seed: u64,
    ) {
        let k = bs.len() as u32;
        let v = vote(bs.iter().map(Vec::as_slice), n, seed).unwrap();
        prop_assert_eq!(v.votes, k);
        for r in v.rewards {
            prop_assert!(k <= r && r <= 10 * k, "reward {} outside [{}, {}]", r, k, 10 * k);
        }
        prop_assert!(v.best.is_some());
    }

    #[test]
    fn k_meta_equal_to_k_is_plain_voting(
        (n, bs) in (1usize..5).prop_flat_map(|n| (Just(n), ballots(n, 8))),
        metas in prop::collection::vec(-5f32..5.0, 8),
        seed: u64,
    ) {
        let js: Vec<Judgement> = bs.iter().zip(&metas).enumerate().map(|(s, (b, &m))| {
            let order = sample_order(n, seed, s as u32);
            let shown: Vec<u8> = order.iter().map(|&r| b[r]).collect();
            Judgement { text: boxed(&shown), order, meta_score: Some(m) }
        }).collect();
        let plain = aggregate(&js, n, None, seed, None).unwrap();
        let meta = aggregate(&js, n, Some(js.len()), seed, None).unwrap();
        prop_assert_eq!(&plain.vote, &meta.vote);
        // And the mapped-back ballots are the ones we started from.
        prop_assert_eq!(plain.vote.rewards, (0..n).map(|i| bs.iter().map(|b| u32::from(b[i])).sum()).collect::<Vec<u32>>());
    }

    #[test]
    fn extraction_never_panics_and_returns_only_valid_scores(bytes in prop::collection::vec(any::<u8>(), 0..256), n in 1usize..6) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(s) = extract_scores(&text, n) {
            prop_assert_eq!(s.len(), n);
            prop_assert!(s.iter().all(|&x| (1..=10).contains(&x)));
        }
    }

    #[test]
    fn extraction_of_box_like_text_never_panics(text in "[\\\\boxed{}\\[\\], 0-9a-z+\\-.\n]{0,64}", n in 1usize..4) {
        if let Ok(s) = extract_scores(&text, n) {
            prop_assert_eq!(s.len(), n);
            prop_assert!(s.iter().all(|&x| (1..=10).contains(&x)));
        }
    }

    #[test]
    fn well_formed_boxes_round_trip(scores in prop::collection::vec(1u8..=10, 1..8), prefix in "[a-z :\n]{0,40}") {
        let text = format!("{prefix}{}", boxed(&scores));
        prop_assert_eq!(extract_scores(&text, scores.len()).unwrap(), scores);
    }
}
