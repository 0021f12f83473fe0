//! From token bytes to streamed text. Tokens end in the middle of UTF-8
//! characters (byte-level BPE splits emoji and CJK), and a stop string may
//! arrive over several tokens, so text is released only once it is complete
//! UTF-8 and cannot be the start of a stop string.

/// Assembles token bytes into text pieces that are safe to show.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes not yet forming a complete character.
    pending: Vec<u8>,
    /// Decoded text held back because it may begin a stop string.
    held: String,
    stops: Vec<String>,
    stopped: bool,
}

/// What pushing a token's bytes produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece {
    /// Text now safe to emit (may be empty).
    pub text: String,
    /// A stop string completed: generation should end; `text` excludes it.
    pub stop: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            ..Self::default()
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Piece {
        if self.stopped {
            return Piece {
                text: String::new(),
                stop: true,
            };
        }
        self.pending.extend_from_slice(bytes);
        let valid = complete_utf8_prefix(&self.pending);
        // Invalid sequences (not merely incomplete) are replaced, never kept
        // forever: a model can emit a stray continuation byte.
        let (text, rest) = match std::str::from_utf8(&self.pending[..valid]) {
            Ok(s) => (s.to_string(), self.pending[valid..].to_vec()),
            Err(_) => (
                String::from_utf8_lossy(&self.pending[..valid]).into_owned(),
                self.pending[valid..].to_vec(),
            ),
        };
        self.pending = rest;
        self.held.push_str(&text);
        self.release()
    }

    /// Whatever is left at the end of generation (incomplete bytes become
    /// U+FFFD, held text is released).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let mut out = std::mem::take(&mut self.held);
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        out
    }

    fn release(&mut self) -> Piece {
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_string();
            self.held.clear();
            self.pending.clear();
            self.stopped = true;
            return Piece { text, stop: true };
        }
        // Hold back the longest suffix that is a proper prefix of a stop.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if suffix.len() > hold && s.starts_with(suffix) {
                    hold = suffix.len();
                }
            }
        }
        let cut = self.held.len() - hold;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Piece { text, stop: false }
    }
}

/// Length of the longest prefix of `b` that does not end inside a character:
/// a trailing incomplete (but so far valid) sequence is excluded.
fn complete_utf8_prefix(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) => match e.error_len() {
            // incomplete at the end: keep those bytes pending
            None => e.valid_up_to(),
            // invalid in the middle: let the lossy path replace it
            Some(_) => {
                let tail_start = b.len().saturating_sub(3);
                (tail_start..=b.len())
                    .rev()
                    .find(|&i| match std::str::from_utf8(&b[i..]) {
                        Ok(_) => false,
                        Err(e) => e.error_len().is_none() && e.valid_up_to() == 0 && i < b.len(),
                    })
                    .unwrap_or(b.len())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_characters_are_never_split() {
        let mut s = TextStream::new(vec![]);
        let text = "é日本👍🏽!";
        let mut out = String::new();
        for b in text.as_bytes() {
            let p = s.push(&[*b]);
            // every piece is valid UTF-8 by type; check no replacement chars
            assert!(!p.text.contains('\u{FFFD}'));
            out.push_str(&p.text);
        }
        out.push_str(&s.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn stop_string_across_tokens_is_cut_and_never_shown() {
        let mut s = TextStream::new(vec!["\nUser:".to_string()]);
        let mut shown = String::new();
        let mut stopped = false;
        for tok in ["Hello", " there", "\nUs", "er", ":", " more"] {
            let p = s.push(tok.as_bytes());
            shown.push_str(&p.text);
            if p.stop {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(shown, "Hello there");
    }

    #[test]
    fn held_prefix_is_released_when_it_does_not_complete() {
        let mut s = TextStream::new(vec!["STOP".to_string()]);
        assert_eq!(s.push(b"a ST").text, "a ");
        assert_eq!(s.push(b"ay").text, "STay");
        assert_eq!(s.push(b" ST").text, " ");
        assert_eq!(s.finish(), "ST");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = TextStream::new(vec![]);
        let mut out = s.push(&[b'a', 0xFF, b'b']).text;
        out.push_str(&s.push(&[0xE6]).text); // start of a 3-byte char
        out.push_str(&s.finish());
        assert_eq!(out, "a\u{FFFD}b\u{FFFD}");
    }
}
