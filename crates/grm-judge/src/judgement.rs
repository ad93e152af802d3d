//! From k generated judgements to rewards: extraction, mapping back from each sample's order,
//! meta-RM filtering, voting and (when a label is given) SPCT correctness, in one call.

use crate::extract::{extract_scores, Invalid};
use crate::meta::keep_top;
use crate::shuffle::{to_original, Order};
use crate::spct::{is_correct, Label, LabelError, CORRECT_THRESHOLD};
use crate::vote::{vote, VoteResult};
use thiserror::Error;

/// One generated judgement of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The text the GRM generated.
    pub text: String,
    /// The order in which this sample saw the responses.
    pub order: Order,
    /// The meta RM's score of this judgement, when one was asked for.
    pub meta_score: Option<f32>,
}

/// What one judgement amounts to.
#[derive(Debug, Clone, PartialEq)]
pub enum JudgementOutcome {
    /// Scores as written (`shown`, in the sample's order) and mapped back (`original`).
    Valid { shown: Vec<u8>, original: Vec<u8> },
    /// Casts no vote.
    Invalid(Invalid),
}

impl JudgementOutcome {
    pub fn original(&self) -> Option<&[u8]> {
        match self {
            JudgementOutcome::Valid { original, .. } => Some(original),
            JudgementOutcome::Invalid(_) => None,
        }
    }
}

/// One judgement's part in the result.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleVerdict {
    pub outcome: JudgementOutcome,
    /// Whether it voted (valid, and among the top k_meta when the meta RM filters).
    pub kept: bool,
    /// SPCT correctness against the label, when a label was given.
    pub correct: Option<bool>,
}

/// The result of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub samples: Vec<SampleVerdict>,
    pub vote: VoteResult,
    /// Whether the vote agrees with the label: for n ≥ 2 the voted best response is the
    /// labelled one (a tie counts when the seeded draw lands on it, as the paper breaks ties at
    /// random); for n = 1 the mean score equals the rating or, for a binary label, lies on the
    /// labelled side of [`CORRECT_THRESHOLD`]. `None` without a label or without any vote.
    pub correct: Option<bool>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AggregateError {
    #[error("sample {sample} saw {found} responses in its order, expected {expected}")]
    OrderLength {
        sample: usize,
        expected: usize,
        found: usize,
    },
    #[error("meta-RM filtering asked for, but valid sample {sample} has no meta score")]
    MissingMetaScore { sample: usize },
    #[error("k_meta is 0: keep at least one judgement")]
    ZeroKMeta,
    #[error(transparent)]
    Label(#[from] LabelError),
}

/// Extracts, filters and votes. `k_meta = None` is plain voting over every valid judgement;
/// `Some(m)` keeps the m valid judgements with the highest meta scores.
pub fn aggregate(
    judgements: &[Judgement],
    n: usize,
    k_meta: Option<usize>,
    seed: u64,
    label: Option<&Label>,
) -> Result<Aggregate, AggregateError> {
    if let Some(label) = label {
        label.validate(n)?;
    }
    let mut outcomes = Vec::with_capacity(judgements.len());
    for (i, j) in judgements.iter().enumerate() {
        if j.order.len() != n {
            return Err(AggregateError::OrderLength {
                sample: i,
                expected: n,
                found: j.order.len(),
            });
        }
        outcomes.push(match extract_scores(&j.text, n) {
            Ok(shown) => JudgementOutcome::Valid {
                original: to_original(&j.order, &shown),
                shown,
            },
            Err(reason) => JudgementOutcome::Invalid(reason),
        });
    }
    let kept = match k_meta {
        None => outcomes.iter().map(|o| o.original().is_some()).collect(),
        Some(0) => return Err(AggregateError::ZeroKMeta),
        Some(m) => {
            let mut scores = Vec::with_capacity(outcomes.len());
            for (i, (o, j)) in outcomes.iter().zip(judgements).enumerate() {
                scores.push(match (o.original(), j.meta_score) {
                    (None, _) => None,
                    (Some(_), Some(s)) => Some(s),
                    (Some(_), None) => return Err(AggregateError::MissingMetaScore { sample: i }),
                });
            }
            keep_top(&scores, m)
        }
    };
    let ballots = outcomes
        .iter()
        .zip(&kept)
        .filter(|(_, &k)| k)
        .filter_map(|(o, _)| o.original());
    let vote = vote(ballots, n, seed).expect("ballots are mapped back to length n");
    let mut samples = Vec::with_capacity(outcomes.len());
    for (outcome, kept) in outcomes.into_iter().zip(kept) {
        let correct = match label {
            Some(l) => Some(is_correct(outcome.original(), l)?),
            None => None,
        };
        samples.push(SampleVerdict {
            outcome,
            kept,
            correct,
        });
    }
    let correct = match (label, vote.best) {
        (Some(Label::Best(b)), Some(best)) => Some(best == *b),
        (Some(Label::Rating(r)), Some(_)) => Some(vote.means[0].round() as u8 == *r),
        (Some(Label::Correct(c)), Some(_)) => {
            Some((vote.means[0] >= f64::from(CORRECT_THRESHOLD)) == *c)
        }
        _ => None,
    };
    Ok(Aggregate {
        samples,
        vote,
        correct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(text: &str, order: &[usize], meta: Option<f32>) -> Judgement {
        Judgement {
            text: text.into(),
            order: order.to_vec(),
            meta_score: meta,
        }
    }

    /// The worked case: three samples, two of which saw the responses reversed.
    #[test]
    fn reversed_samples_vote_into_the_right_responses() {
        let js = [
            j("Scores: \\boxed{9, 4}", &[0, 1], None),
            j("Scores: \\boxed{3, 8}", &[1, 0], None), // shown: resp 1 then resp 0
            j("Scores: \\boxed{5, 10}", &[1, 0], None),
        ];
        let a = aggregate(&js, 2, None, 0, Some(&Label::Best(0))).unwrap();
        // Response 0 got 9 + 8 + 10 = 27; response 1 got 4 + 3 + 5 = 12.
        assert_eq!(a.vote.rewards, vec![27, 12]);
        assert_eq!(a.vote.means, vec![9.0, 4.0]);
        assert_eq!(a.vote.best, Some(0));
        assert_eq!(a.correct, Some(true));
        assert_eq!(
            a.samples[1].outcome,
            JudgementOutcome::Valid {
                shown: vec![3, 8],
                original: vec![8, 3]
            }
        );
        assert!(a.samples.iter().all(|s| s.kept && s.correct == Some(true)));
    }

    #[test]
    fn invalid_samples_cast_no_vote() {
        let js = [
            j("Scores: \\boxed{9, 4}", &[0, 1], None),
            j("Scores: \\boxed{9}", &[0, 1], None),
            j("no scores at all", &[1, 0], None),
        ];
        let a = aggregate(&js, 2, None, 0, Some(&Label::Best(1))).unwrap();
        assert_eq!(a.vote.votes, 1);
        assert_eq!(a.vote.rewards, vec![9, 4]);
        assert_eq!(a.correct, Some(false));
        assert!(!a.samples[1].kept);
        assert_eq!(a.samples[2].correct, Some(false));
        match &a.samples[1].outcome {
            JudgementOutcome::Invalid(r) => assert_eq!(r.code(), "wrong_count"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn meta_filter_keeps_the_best_judgements() {
        let js = [
            j("\\boxed{2, 9}", &[0, 1], Some(0.1)),
            j("\\boxed{9, 2}", &[0, 1], Some(0.9)),
            j("\\boxed{8, 3}", &[0, 1], Some(0.8)),
            j("garbage", &[0, 1], Some(5.0)),
        ];
        let a = aggregate(&js, 2, Some(2), 0, None).unwrap();
        assert_eq!(
            a.samples.iter().map(|s| s.kept).collect::<Vec<_>>(),
            vec![false, true, true, false]
        );
        assert_eq!(a.vote.rewards, vec![17, 5]);
        assert_eq!(a.correct, None);
    }

    #[test]
    fn errors_name_the_problem() {
        let js = [j("\\boxed{2, 9}", &[0, 1], None)];
        assert_eq!(
            aggregate(&js, 2, Some(1), 0, None),
            Err(AggregateError::MissingMetaScore { sample: 0 })
        );
        assert_eq!(
            aggregate(&js, 3, None, 0, None),
            Err(AggregateError::OrderLength {
                sample: 0,
                expected: 3,
                found: 2
            })
        );
        assert!(matches!(
            aggregate(&js, 2, None, 0, Some(&Label::Best(5))),
            Err(AggregateError::Label(_))
        ));
    }

    #[test]
    fn single_response_labels() {
        let js = [j("\\boxed{7}", &[0], None), j("\\boxed{8}", &[0], None)];
        let a = aggregate(&js, 1, None, 0, Some(&Label::Correct(true))).unwrap();
        assert_eq!(a.correct, Some(true));
        let a = aggregate(&js, 1, None, 0, Some(&Label::Rating(8))).unwrap();
        assert_eq!(a.correct, Some(true)); // mean 7.5 rounds to 8
        assert_eq!(a.samples[0].correct, Some(false));
        assert_eq!(a.samples[1].correct, Some(true));
    }
}
