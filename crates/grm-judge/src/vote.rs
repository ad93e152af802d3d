//! Voting: the reward of a response is the sum of its scores over the valid samples.

use crate::rng::{derive, SplitMix64, Stream};
use thiserror::Error;

/// The outcome of a vote over n responses.
#[derive(Debug, Clone, PartialEq)]
pub struct VoteResult {
    /// Sum of scores per response, over the ballots counted (in [votes, 10·votes]).
    pub rewards: Vec<u32>,
    /// `rewards[i] / votes`, or 0 when no ballot was counted.
    pub means: Vec<f64>,
    /// Number of ballots counted (the same for every response).
    pub votes: u32,
    /// The response with the highest reward; `None` when no ballot was counted.
    pub best: Option<usize>,
    /// Whether more than one response shares the highest reward (best was then drawn among
    /// them with the request's seed).
    pub tie: bool,
    /// Every response that shares the highest reward (just `best` when there is no tie).
    pub tied: Vec<usize>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VoteError {
    #[error("ballot {ballot} has {found} scores, expected {expected} (one per response)")]
    WrongLength {
        ballot: usize,
        expected: usize,
        found: usize,
    },
}

/// Sums the ballots (each the scores of the n original responses, already mapped back from the
/// sample's shuffled order). Ties for the best reward are broken by a choice seeded with `seed`,
/// so the result does not depend on the order of the ballots.
pub fn vote<'a, I>(ballots: I, n: usize, seed: u64) -> Result<VoteResult, VoteError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut rewards = vec![0u32; n];
    let mut votes = 0u32;
    for (b, ballot) in ballots.into_iter().enumerate() {
        if ballot.len() != n {
            return Err(VoteError::WrongLength {
                ballot: b,
                expected: n,
                found: ballot.len(),
            });
        }
        for (r, &s) in rewards.iter_mut().zip(ballot) {
            *r += u32::from(s);
        }
        votes += 1;
    }
    let means = rewards
        .iter()
        .map(|&r| {
            if votes == 0 {
                0.0
            } else {
                f64::from(r) / f64::from(votes)
            }
        })
        .collect();
    if votes == 0 || n == 0 {
        return Ok(VoteResult {
            rewards,
            means,
            votes,
            best: None,
            tie: false,
            tied: Vec::new(),
        });
    }
    let top = rewards.iter().copied().max().unwrap_or(0);
    let tied: Vec<usize> = (0..n).filter(|&i| rewards[i] == top).collect();
    let best = if tied.len() == 1 {
        tied[0]
    } else {
        let mut g = SplitMix64::new(derive(seed, Stream::TieBreak, 0));
        tied[g.below(tied.len() as u64) as usize]
    };
    Ok(VoteResult {
        rewards,
        means,
        votes,
        best: Some(best),
        tie: tied.len() > 1,
        tied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_means() {
        let b: [&[u8]; 3] = [&[7, 3], &[6, 4], &[8, 2]];
        let v = vote(b, 2, 0).unwrap();
        assert_eq!(v.rewards, vec![21, 9]);
        assert_eq!(v.means, vec![7.0, 3.0]);
        assert_eq!(v.votes, 3);
        assert_eq!(v.best, Some(0));
        assert!(!v.tie);
        assert_eq!(v.tied, vec![0]);
    }

    #[test]
    fn ties_are_flagged_and_broken_by_the_seed() {
        let b: [&[u8]; 2] = [&[5, 5, 1], &[5, 5, 1]];
        let picks: std::collections::HashSet<usize> = (0..64)
            .map(|seed| {
                let v = vote(b, 3, seed).unwrap();
                assert!(v.tie);
                assert_eq!(v.tied, vec![0, 1]);
                v.best.unwrap()
            })
            .collect();
        assert_eq!(picks, [0, 1].into_iter().collect());
        assert_eq!(vote(b, 3, 5).unwrap(), vote(b, 3, 5).unwrap());
    }

    #[test]
    fn no_ballots_no_best() {
        let v = vote(std::iter::empty(), 2, 0).unwrap();
        assert_eq!(v.best, None);
        assert_eq!(v.votes, 0);
        assert_eq!(v.means, vec![0.0, 0.0]);
    }

    #[test]
    fn wrong_length_is_an_error() {
        let b: [&[u8]; 1] = [&[1, 2, 3]];
        assert_eq!(
            vote(b, 2, 0).unwrap_err(),
            VoteError::WrongLength {
                ballot: 0,
                expected: 2,
                found: 3
            }
        );
    }
}
