//! Each sample sees the responses in its own seeded order (the paper shuffles them to counter
//! position bias); its scores are mapped back to the original responses before voting.

use crate::rng::{derive, SplitMix64, Stream};

/// The order a sample shows the responses in: `order[j]` is the original index (0-based) of the
/// response shown as "Response j+1".
pub type Order = Vec<usize>;

/// The identity order.
pub fn identity(n: usize) -> Order {
    (0..n).collect()
}

/// The order of sample `sample` of a request seeded with `seed`: a Fisher–Yates shuffle driven
/// by SplitMix64 seeded with `derive(seed, Shuffle, sample)`, so any client can reproduce it.
pub fn sample_order(n: usize, seed: u64, sample: u32) -> Order {
    let mut order = identity(n);
    let mut g = SplitMix64::new(derive(seed, Stream::Shuffle, u64::from(sample)));
    for i in (1..n).rev() {
        let j = g.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Scores in the order the sample saw the responses → scores of the original responses.
///
/// `shown.len()` must equal `order.len()` and `order` must be a permutation; both hold for any
/// order from [`sample_order`] and scores from [`crate::extract_scores`] with the same `n`.
pub fn to_original<T: Copy + Default>(order: &[usize], shown: &[T]) -> Vec<T> {
    debug_assert_eq!(order.len(), shown.len());
    let mut original = vec![T::default(); order.len()];
    for (position, &response) in order.iter().enumerate() {
        original[response] = shown[position];
    }
    original
}

/// The position (0-based) at which a sample showed original response `response`.
pub fn shown_position(order: &[usize], response: usize) -> Option<usize> {
    order.iter().position(|&r| r == response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_permutations_and_reproducible() {
        for n in 1..8 {
            for s in 0..20 {
                let o = sample_order(n, 42, s);
                let mut sorted = o.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, identity(n));
                assert_eq!(o, sample_order(n, 42, s));
            }
        }
    }

    #[test]
    fn samples_see_different_orders() {
        let orders: std::collections::HashSet<Order> =
            (0..32).map(|s| sample_order(4, 9, s)).collect();
        assert!(orders.len() > 10, "only {} distinct orders", orders.len());
    }

    #[test]
    fn reversed_order_maps_back() {
        // Shown: [resp 2, resp 1, resp 0] scored 9, 5, 1 → originals get 1, 5, 9.
        assert_eq!(to_original(&[2, 1, 0], &[9u8, 5, 1]), vec![1, 5, 9]);
        assert_eq!(shown_position(&[2, 1, 0], 0), Some(2));
    }
}
