//! Text that remembers which parts a client wrote. A prompt is the template's own text with
//! the client's conversation, responses, criteria and judgements put in; only the template's
//! text may carry control tokens (`<bos>`, `<start_of_turn>`, ...). Whatever a client wrote is
//! read as plain text, even where it spells a control token, so a response cannot end the
//! judging prompt or fake the model's turn — and is never refused for it.

use std::ops::Range;

/// A text and the byte ranges of it that a client wrote (sorted, disjoint, non-empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Marked {
    pub text: String,
    pub client: Vec<Range<usize>>,
}

impl Marked {
    /// Text the template (the operator) wrote.
    pub fn trusted(text: &str) -> Self {
        Self {
            text: text.to_string(),
            client: Vec::new(),
        }
    }

    /// Text a client wrote.
    pub fn client(text: &str) -> Self {
        Self {
            text: text.to_string(),
            client: if text.is_empty() {
                Vec::new()
            } else {
                vec![0..text.len()]
            },
        }
    }

    /// Appends `other`, shifting its ranges and merging a range that continues the last one.
    pub fn push(&mut self, other: &Marked) {
        let base = self.text.len();
        self.text.push_str(&other.text);
        for r in &other.client {
            let r = r.start + base..r.end + base;
            match self.client.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => self.client.push(r),
            }
        }
    }

    pub fn push_trusted(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// The pieces joined with a trusted separator.
    pub fn join(parts: &[Marked], separator: &str) -> Marked {
        let mut out = Marked::default();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push_trusted(separator);
            }
            out.push(p);
        }
        out
    }

    /// The ranges as a flat list of bounds `[start0, end0, start1, end1, ...]` (the wire form).
    pub fn bounds(&self) -> Vec<u32> {
        self.client
            .iter()
            .flat_map(|r| [r.start as u32, r.end as u32])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_text_and_merge_when_adjacent() {
        let mut m = Marked::trusted("<bos>A: ");
        m.push(&Marked::client("hi <eos>"));
        m.push(&Marked::client("!"));
        m.push_trusted("\n");
        m.push(&Marked::client(""));
        assert_eq!(m.text, "<bos>A: hi <eos>!\n");
        assert_eq!(m.client, vec![8..17]);
        assert_eq!(&m.text[8..17], "hi <eos>!");
        assert_eq!(m.bounds(), vec![8, 17]);
        let j = Marked::join(&[Marked::client("a"), Marked::client("b")], ", ");
        assert_eq!(j.text, "a, b");
        assert_eq!(j.client, vec![0..1, 3..4]);
    }
}
