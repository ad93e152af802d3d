//! Reading the scores out of a judgement.
//!
//! The scores are the last `\boxed{...}` (or `[[...]]`) in the text: comma-separated integers
//! 1..=10, one per response, in the order the sample saw the responses. Anything else makes the
//! judgement invalid, with the reason: it casts no vote, and nothing is guessed.

use std::fmt;

/// The lowest and highest score a judgement may give.
pub const MIN_SCORE: i64 = 1;
pub const MAX_SCORE: i64 = 10;

/// Why a judgement cast no vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Neither `\boxed{` nor `[[` appears in the text.
    NoBox,
    /// The last box opens but never closes.
    Unclosed { marker: &'static str },
    /// The last box holds nothing but whitespace.
    Empty,
    /// An entry of the last box is not an integer (1-based position in the box).
    NotInteger { position: usize, text: String },
    /// The box holds a different number of scores than there are responses.
    WrongCount { expected: usize, found: usize },
    /// A score lies outside 1..=10 (1-based position in the box).
    OutOfRange { position: usize, value: String },
}

impl Invalid {
    /// A stable machine-readable name of the reason (metrics labels, proto enums).
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::NoBox => "no_box",
            Invalid::Unclosed { .. } => "unclosed_box",
            Invalid::Empty => "empty_box",
            Invalid::NotInteger { .. } => "not_integer",
            Invalid::WrongCount { .. } => "wrong_count",
            Invalid::OutOfRange { .. } => "out_of_range",
        }
    }

    /// Every code, for pre-registering metric labels and documenting the proto.
    pub const CODES: [&'static str; 6] = [
        "no_box",
        "unclosed_box",
        "empty_box",
        "not_integer",
        "wrong_count",
        "out_of_range",
    ];
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.code())?;
        match self {
            Invalid::NoBox => write!(f, "no \\boxed{{...}} or [[...]] with the scores"),
            Invalid::Unclosed { marker } => write!(f, "the last {marker} is never closed"),
            Invalid::Empty => write!(f, "the last box is empty"),
            Invalid::NotInteger { position, text } => {
                write!(
                    f,
                    "score {position} is not an integer: {:?}",
                    truncate(text, 40)
                )
            }
            Invalid::WrongCount { expected, found } => {
                write!(f, "expected {expected} scores, found {found}")
            }
            Invalid::OutOfRange { position, value } => write!(
                f,
                "score {position} is {} (allowed {MIN_SCORE}..={MAX_SCORE})",
                truncate(value, 40)
            ),
        }
    }
}

impl std::error::Error for Invalid {}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// The scores of a judgement of `n` responses, in the order the judgement lists them.
pub fn extract_scores(text: &str, n: usize) -> Result<Vec<u8>, Invalid> {
    let inner = last_box(text)?;
    if inner.trim().is_empty() {
        return Err(Invalid::Empty);
    }
    let entries: Vec<&str> = inner.split(',').map(str::trim).collect();
    let mut values = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        values.push(parse_integer(entry).ok_or_else(|| Invalid::NotInteger {
            position: i + 1,
            text: entry.to_string(),
        })?);
    }
    if values.len() != n {
        return Err(Invalid::WrongCount {
            expected: n,
            found: values.len(),
        });
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            IntText::Small(x) if (MIN_SCORE..=MAX_SCORE).contains(x) => Ok(*x as u8),
            _ => Err(Invalid::OutOfRange {
                position: i + 1,
                value: entries[i].to_string(),
            }),
        })
        .collect()
}

/// The text inside the last box, whichever form it takes.
fn last_box(text: &str) -> Result<&str, Invalid> {
    const BOXED: &str = "\\boxed{";
    const BRACKETS: &str = "[[";
    let boxed = text.rfind(BOXED);
    let brackets = text.rfind(BRACKETS);
    let (start, open, close, marker) = match (boxed, brackets) {
        (None, None) => return Err(Invalid::NoBox),
        (Some(b), Some(k)) if k > b => (k, BRACKETS, "]]", BRACKETS),
        (Some(b), _) => (b, BOXED, "}", "\\boxed{"),
        (None, Some(k)) => (k, BRACKETS, "]]", BRACKETS),
    };
    let body = &text[start + open.len()..];
    match body.find(close) {
        Some(end) => Ok(&body[..end]),
        None => Err(Invalid::Unclosed { marker }),
    }
}

/// An integer as written: small enough to range-check, or too large to matter.
enum IntText {
    Small(i64),
    Huge,
}

/// An optional sign followed by ASCII digits; nothing else is an integer here ("7.0", "7/10",
/// "seven" are not).
fn parse_integer(s: &str) -> Option<IntText> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match s.parse::<i64>() {
        Ok(v) => IntText::Small(v),
        Err(_) => IntText::Huge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str, n: usize) -> Vec<u8> {
        extract_scores(text, n).unwrap()
    }
    fn bad(text: &str, n: usize) -> Invalid {
        extract_scores(text, n).unwrap_err()
    }

    #[test]
    fn reads_the_boxed_scores() {
        let text = "Specific Criteria: x\nAnalysis: y\nScores: \\boxed{7, 3}\n";
        assert_eq!(ok(text, 2), vec![7, 3]);
        assert_eq!(ok("Scores: \\boxed{10}", 1), vec![10]);
        assert_eq!(ok("Scores: \\boxed{ 1 ,10 , 5 }.", 3), vec![1, 10, 5]);
    }

    #[test]
    fn accepts_double_brackets() {
        assert_eq!(ok("Scores: [[4, 9]]", 2), vec![4, 9]);
    }

    #[test]
    fn takes_the_last_box_of_either_form() {
        assert_eq!(ok("\\boxed{1, 1} then [[2, 3]]", 2), vec![2, 3]);
        assert_eq!(ok("[[2, 3]] then \\boxed{4, 5}", 2), vec![4, 5]);
        assert_eq!(
            ok("e.g. \\boxed{x, x}\nScores: \\boxed{6, 8}", 2),
            vec![6, 8]
        );
    }

    #[test]
    fn a_later_malformed_box_invalidates() {
        let text = "Scores: \\boxed{7, 3}\nActually \\boxed{7, three}";
        assert_eq!(
            bad(text, 2),
            Invalid::NotInteger {
                position: 2,
                text: "three".into()
            }
        );
        assert_eq!(
            bad("\\boxed{7, 3} and then \\boxed{8, ", 2),
            Invalid::Unclosed { marker: "\\boxed{" }
        );
    }

    #[test]
    fn each_reason_is_specific() {
        assert_eq!(bad("Scores: 7, 3", 2), Invalid::NoBox);
        assert_eq!(bad("\\boxed{  }", 2), Invalid::Empty);
        assert_eq!(
            bad("\\boxed{7, 3, 2}", 2),
            Invalid::WrongCount {
                expected: 2,
                found: 3
            }
        );
        assert_eq!(
            bad("\\boxed{0, 3}", 2),
            Invalid::OutOfRange {
                position: 1,
                value: "0".into()
            }
        );
        assert_eq!(
            bad("\\boxed{3, 11}", 2),
            Invalid::OutOfRange {
                position: 2,
                value: "11".into()
            }
        );
        assert_eq!(
            bad("\\boxed{-3, 5}", 2),
            Invalid::OutOfRange {
                position: 1,
                value: "-3".into()
            }
        );
        assert_eq!(
            bad("\\boxed{7.5, 3}", 2),
            Invalid::NotInteger {
                position: 1,
                text: "7.5".into()
            }
        );
        assert_eq!(bad("\\boxed{7,,3}", 2).code(), "not_integer");
        assert_eq!(
            bad("\\boxed{99999999999999999999999, 3}", 2).code(),
            "out_of_range"
        );
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            bad("\\boxed{7}", 2).to_string(),
            "wrong_count: expected 2 scores, found 1"
        );
        assert_eq!(
            bad("\\boxed{11}", 1).to_string(),
            "out_of_range: score 1 is 11 (allowed 1..=10)"
        );
        assert!(bad("nothing", 1).to_string().starts_with("no_box: "));
    }

    #[test]
    fn codes_list_every_reason() {
        for r in [
            Invalid::NoBox,
            Invalid::Unclosed { marker: "[[" },
            Invalid::Empty,
            Invalid::NotInteger {
                position: 1,
                text: String::new(),
            },
            Invalid::WrongCount {
                expected: 1,
                found: 2,
            },
            Invalid::OutOfRange {
                position: 1,
                value: String::new(),
            },
        ] {
            assert!(Invalid::CODES.contains(&r.code()));
        }
    }
}
