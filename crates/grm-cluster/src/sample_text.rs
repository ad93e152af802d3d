//! A streamed sample's text, token by token: decoded incrementally (a window of recent tokens,
//! so that a piece's leading space and a character split over byte tokens come out right), cut
//! at the first stop string, and sent without what could still turn out to be the start of a
//! stop string or of an unfinished character.

use grm_engine::Tokenizer;

pub struct SampleText {
    tokens: Vec<u32>,
    /// Decoding window: text of `tokens[prefix..read]` is already in `text`.
    prefix: usize,
    read: usize,
    text: String,
    /// Bytes of `text` sent.
    sent: usize,
    stops: std::sync::Arc<[String]>,
    /// Where the first stop string begins, once found.
    stopped_at: Option<usize>,
}

impl SampleText {
    pub fn new(stops: std::sync::Arc<[String]>) -> Self {
        Self {
            tokens: Vec::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
            sent: 0,
            stops,
            stopped_at: None,
        }
    }

    /// Adds a drawn token; returns whether the text now holds a stop string (from then on
    /// the sample is over and later tokens are ignored).
    pub fn push(&mut self, token: u32, tokenizer: &Tokenizer) -> bool {
        if self.stopped_at.is_some() {
            return true;
        }
        self.tokens.push(token);
        let before = tokenizer
            .decode(&self.tokens[self.prefix..self.read])
            .unwrap_or_default();
        let now = tokenizer
            .decode(&self.tokens[self.prefix..])
            .unwrap_or_default();
        // An unfinished character (byte tokens still to come) waits for the rest.
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            if let Some(new) = now.strip_prefix(before.as_str()) {
                let from = self.text.len();
                self.text.push_str(new);
                self.prefix = self.read;
                self.read = self.tokens.len();
                self.find_stop(from);
            }
        }
        self.stopped_at.is_some()
    }

    fn find_stop(&mut self, added_from: usize) {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        // A stop string may begin before the new text: search from just before it.
        let mut from = added_from.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stopped_at = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
    }

    /// The text to send now: all of it up to a stop string once one is found; otherwise
    /// all but a tail that could begin a stop string (or everything, when `finished`).
    pub fn take_delta(&mut self, finished: bool) -> String {
        let end = match self.stopped_at {
            Some(at) => at,
            None if finished => self.text.len(),
            None => self.text.len() - self.held_back(),
        };
        if end <= self.sent {
            return String::new();
        }
        let d = self.text[self.sent..end].to_string();
        self.sent = end;
        d
    }

    /// Bytes at the end of the text that are the start of some stop string.
    fn held_back(&self) -> usize {
        let t = self.text.as_bytes();
        let mut hold = 0;
        for s in self.stops.iter() {
            let s = s.as_bytes();
            for n in (1..s.len().min(t.len() + 1)).rev() {
                if n > hold && t.ends_with(&s[..n]) {
                    hold = n;
                    break;
                }
            }
        }
        // On a character boundary.
        let mut keep = self.text.len() - hold;
        while !self.text.is_char_boundary(keep) {
            keep -= 1;
        }
        self.text.len() - keep
    }

    /// The whole text, cut before the stop string when one was found.
    pub fn text(&self) -> &str {
        &self.text[..self.stopped_at.unwrap_or(self.text.len())]
    }

    pub fn stopped(&self) -> bool {
        self.stopped_at.is_some()
    }

    /// Tokens drawn (those after a stop string included).
    pub fn tokens(&self) -> usize {
        self.tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../grm-engine/tests/fixtures/tiny-judge");
        Tokenizer::load(&dir, Some(2)).unwrap()
    }

    fn feed(t: &Tokenizer, text: &str, stops: &[&str]) -> (Vec<String>, SampleText) {
        let stops: std::sync::Arc<[String]> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = SampleText::new(stops);
        let mut deltas = Vec::new();
        for id in t.encode(text, false).unwrap() {
            let stop = s.push(id, t);
            deltas.push(s.take_delta(false));
            if stop {
                break;
            }
        }
        deltas.push(s.take_delta(true));
        (deltas, s)
    }

    #[test]
    fn deltas_add_up_to_the_decoded_text_non_ascii_included() {
        let t = tokenizer();
        let text = "Scores: ünïcødé 日本 \\boxed{8, 3} done";
        let (deltas, s) = feed(&t, text, &[]);
        let whole = t.decode(&t.encode(text, false).unwrap()).unwrap();
        assert_eq!(deltas.concat(), whole);
        assert_eq!(s.text(), whole);
        assert!(!s.stopped());
    }

    #[test]
    fn the_text_ends_before_the_first_stop_string_and_none_of_it_is_sent() {
        let t = tokenizer();
        let (deltas, s) = feed(
            &t,
            "Analysis: fine. Scores: \\boxed{8, 3} and more",
            &["Scores", "xyz"],
        );
        assert!(s.stopped());
        assert_eq!(s.text(), "Analysis: fine. ");
        assert_eq!(deltas.concat(), "Analysis: fine. ");
        assert!(deltas.iter().all(|d| !d.contains("Sc")), "{deltas:?}");
    }
}
