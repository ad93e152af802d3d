//! `tokenizer.json` through the `tokenizers` crate (pure-Rust features only).

use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer reading special tokens as plain text (for text a client wrote).
    plain: tokenizers::Tokenizer,
    /// The added special tokens, longest first: (text, id).
    specials: Vec<(String, u32)>,
    path: PathBuf,
    bos: Option<u32>,
}

impl Tokenizer {
    /// Reads `dir/tokenizer.json`; `bos` is the model's BOS id (from config.json).
    pub fn load(dir: &Path, bos: Option<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| EngineError::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let mut specials: Vec<(String, u32)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !t.content.is_empty())
            .map(|(id, t)| (t.content, id))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Self {
            inner,
            plain,
            specials,
            path,
            bos,
        })
    }

    /// Token ids of `text` where the byte ranges in `client` (flat bounds `[s0, e0, s1, e1,
    /// ...]`, sorted and disjoint, as the router sends them) were written by a client: there,
    /// text that spells a special token (`<end_of_turn>`, `<unk>`, ...) is plain text. Special
    /// tokens elsewhere (the template's) are read as tokens. The text between them is
    /// tokenized exactly as [`Tokenizer::encode`] would (it also splits at special tokens
    /// first), so a prompt whose client text has none gives the same ids either way.
    pub fn encode_marked(&self, text: &str, client: &[u32], add_bos: bool) -> Result<Vec<u32>> {
        let ranges = self.client_ranges(text, client)?;
        // The trusted regions: everything between the client's ranges.
        let mut trusted = Vec::with_capacity(ranges.len() + 1);
        let mut from = 0;
        for r in &ranges {
            trusted.push(from..r.start);
            from = r.end;
        }
        trusted.push(from..text.len());
        let mut ids = Vec::new();
        let mut gap_start = 0;
        for region in trusted {
            let mut at = region.start;
            while at < region.end {
                let here = &text[at..region.end];
                match self
                    .specials
                    .iter()
                    .find(|(s, _)| here.starts_with(s.as_str()))
                {
                    Some((s, id)) => {
                        self.encode_plain(&text[gap_start..at], &mut ids)?;
                        ids.push(*id);
                        at += s.len();
                        gap_start = at;
                    }
                    None => at += here.chars().next().map_or(1, char::len_utf8),
                }
            }
        }
        self.encode_plain(&text[gap_start..], &mut ids)?;
        if let (true, Some(bos)) = (add_bos, self.bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    fn encode_plain(&self, gap: &str, ids: &mut Vec<u32>) -> Result<()> {
        if gap.is_empty() {
            return Ok(());
        }
        let enc = self
            .plain
            .encode(gap, false)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                message: format!("encoding failed: {e}"),
            })?;
        ids.extend_from_slice(enc.get_ids());
        Ok(())
    }

    /// Checks the client ranges against the text: pairs, in order, on character boundaries.
    fn client_ranges(&self, text: &str, bounds: &[u32]) -> Result<Vec<std::ops::Range<usize>>> {
        if bounds.len() % 2 != 0 {
            return Err(EngineError::Invalid(format!(
                "client text bounds come in pairs; got {}",
                bounds.len()
            )));
        }
        let mut out: Vec<std::ops::Range<usize>> = Vec::with_capacity(bounds.len() / 2);
        for pair in bounds.chunks(2) {
            let (s, e) = (pair[0] as usize, pair[1] as usize);
            let after_last = out.last().map_or(0, |r| r.end);
            if s > e
                || e > text.len()
                || s < after_last
                || !text.is_char_boundary(s)
                || !text.is_char_boundary(e)
            {
                return Err(EngineError::Invalid(format!(
                    "client text range {s}..{e} does not fit the text ({} bytes, ranges sorted and on character boundaries)",
                    text.len()
                )));
            }
            out.push(s..e);
        }
        Ok(out)
    }

    /// Token ids of `text`; special tokens written in the text (`<bos>`, `<start_of_turn>`)
    /// are recognised. With `add_bos`, BOS is put first unless the text already begins with it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                message: format!("encoding failed: {e}"),
            })?;
        let mut ids = enc.get_ids().to_vec();
        if let (true, Some(bos)) = (add_bos, self.bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Text of token ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                message: format!("decoding failed: {e}"),
            })
    }

    /// One token as text and bytes, for log-probability listings: a byte-fallback token
    /// (`<0xE2>`) is its byte; a SentencePiece word start (`▁`) a space.
    pub fn piece(&self, id: u32) -> (String, Vec<u8>) {
        let raw = self.inner.id_to_token(id).unwrap_or_default();
        if let Some(hex) = raw.strip_prefix("<0x").and_then(|r| r.strip_suffix('>')) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return (String::from_utf8_lossy(&[b]).into_owned(), vec![b]);
            }
        }
        let text = if raw.contains('\u{2581}') {
            raw.replace('\u{2581}', " ")
        } else {
            self.inner.decode(&[id], false).unwrap_or(raw)
        };
        let bytes = text.as_bytes().to_vec();
        (text, bytes)
    }

    /// The id of a token by its text, e.g. `<end_of_turn>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
