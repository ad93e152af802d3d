//! The SPCT data rules: when a judgement is correct against a label, the ±1 rule-based RL
//! reward, and the rejective-sampling filter of SPCT's first stage.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A judgement of one response is counted correct for a binary label when it scores at least
/// this much and the label says correct (or below it and the label says incorrect): the upper
/// half of the 1..=10 scale.
pub const CORRECT_THRESHOLD: u8 = 6;

/// What is known to be right about a request's responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// n ≥ 2: the index (0-based) of the best response.
    Best(usize),
    /// n = 1: the ground-truth score 1..=10 (the paper's rule: correct iff equal).
    Rating(u8),
    /// n = 1: whether the response is correct; judged by [`CORRECT_THRESHOLD`].
    Correct(bool),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("label.best is {best} but there are {n} responses (allowed 0..{n})")]
    BestOutOfRange { best: usize, n: usize },
    #[error(
        "label.best needs at least 2 responses; with 1 response give label.rating or label.correct"
    )]
    BestNeedsTwo,
    #[error("label.{kind} applies to a single response, but there are {n}; give label.best")]
    NeedsSingle { kind: &'static str, n: usize },
    #[error("label.rating is {rating} (allowed 1..=10)")]
    RatingOutOfRange { rating: u8 },
}

impl Label {
    /// Checks the label against the number of responses.
    pub fn validate(&self, n: usize) -> Result<(), LabelError> {
        match *self {
            Label::Best(_) if n < 2 => Err(LabelError::BestNeedsTwo),
            Label::Best(best) if best >= n => Err(LabelError::BestOutOfRange { best, n }),
            Label::Rating(_) if n != 1 => Err(LabelError::NeedsSingle { kind: "rating", n }),
            Label::Rating(rating) if !(1..=10).contains(&rating) => {
                Err(LabelError::RatingOutOfRange { rating })
            }
            Label::Correct(_) if n != 1 => Err(LabelError::NeedsSingle { kind: "correct", n }),
            _ => Ok(()),
        }
    }
}

/// Whether a judgement is correct: for n ≥ 2 the labelled best response scores strictly more
/// than every other; for n = 1 the score equals the rating (or agrees with the binary label).
/// An invalid judgement (`None`) is never correct.
pub fn is_correct(scores: Option<&[u8]>, label: &Label) -> Result<bool, LabelError> {
    let Some(scores) = scores else {
        return Ok(false);
    };
    label.validate(scores.len())?;
    Ok(match *label {
        Label::Best(best) => scores
            .iter()
            .enumerate()
            .all(|(i, &s)| i == best || s < scores[best]),
        Label::Rating(rating) => scores[0] == rating,
        Label::Correct(correct) => (scores[0] >= CORRECT_THRESHOLD) == correct,
    })
}

/// The rule-based RL reward of SPCT's second stage: +1 for a correct judgement, −1 otherwise.
pub fn rl_reward(correct: bool) -> i32 {
    if correct {
        1
    } else {
        -1
    }
}

/// What rejective sampling does with one item's N judgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Keep these judgements (indices of the correct ones) as fine-tuning data.
    Keep(Vec<usize>),
    /// Every judgement was correct: the item is too easy to teach anything; drop it.
    AllCorrect,
    /// No judgement was correct: nothing to keep.
    NoneCorrect,
}

/// Rejective fine-tuning's filter: drop incorrect judgements, and drop the item when all its
/// judgements are correct.
pub fn reject(correct: &[bool]) -> Rejection {
    let kept: Vec<usize> = (0..correct.len()).filter(|&i| correct[i]).collect();
    if kept.is_empty() {
        Rejection::NoneCorrect
    } else if kept.len() == correct.len() {
        Rejection::AllCorrect
    } else {
        Rejection::Keep(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_must_be_strictly_highest() {
        let best1 = Label::Best(1);
        assert_eq!(is_correct(Some(&[3, 8, 5]), &best1), Ok(true));
        assert_eq!(is_correct(Some(&[8, 8, 5]), &best1), Ok(false));
        assert_eq!(is_correct(Some(&[9, 8, 5]), &best1), Ok(false));
        assert_eq!(is_correct(None, &best1), Ok(false));
    }

    #[test]
    fn single_response_rules() {
        assert_eq!(is_correct(Some(&[7]), &Label::Rating(7)), Ok(true));
        assert_eq!(is_correct(Some(&[6]), &Label::Rating(7)), Ok(false));
        assert_eq!(is_correct(Some(&[6]), &Label::Correct(true)), Ok(true));
        assert_eq!(is_correct(Some(&[5]), &Label::Correct(true)), Ok(false));
        assert_eq!(is_correct(Some(&[5]), &Label::Correct(false)), Ok(true));
    }

    #[test]
    fn labels_are_checked_against_n() {
        assert_eq!(Label::Best(0).validate(1), Err(LabelError::BestNeedsTwo));
        assert_eq!(
            Label::Best(2).validate(2),
            Err(LabelError::BestOutOfRange { best: 2, n: 2 })
        );
        assert_eq!(
            Label::Rating(5).validate(2),
            Err(LabelError::NeedsSingle {
                kind: "rating",
                n: 2
            })
        );
        assert_eq!(
            Label::Rating(0).validate(1),
            Err(LabelError::RatingOutOfRange { rating: 0 })
        );
        assert!(Label::Correct(true).validate(1).is_ok());
    }

    #[test]
    fn rewards_are_plus_minus_one() {
        assert_eq!(rl_reward(true), 1);
        assert_eq!(rl_reward(false), -1);
    }

    #[test]
    fn rejection_drops_incorrect_and_too_easy() {
        assert_eq!(reject(&[true, false, true]), Rejection::Keep(vec![0, 2]));
        assert_eq!(reject(&[true, true]), Rejection::AllCorrect);
        assert_eq!(reject(&[false, false]), Rejection::NoneCorrect);
    }
}
