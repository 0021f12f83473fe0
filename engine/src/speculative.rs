//! Prompt-lookup drafting: speculative decoding with no second model.
//!
//! Answers often repeat their context (a summary quotes the text, a code
//! edit copies most of the code). The tokens that followed the last
//! occurrence of the conversation's newest n-gram are a cheap guess of what
//! comes next; the decoder checks the whole guess in one batched forward
//! pass, which costs about what one decode step costs on a memory-bound
//! CPU, and every guessed token the model would have produced itself is a
//! decode step saved.
//!
//! The check is exact, whatever the sampler: the logits after an accepted
//! token are those of the true context, the sampler draws from them as it
//! would have without drafting, and a draft token counts only if the drawn
//! token equals it. A rejected draft's keys and values are dropped from the
//! cache before the next pass ([`crate::Session::generate`]).

/// How prompt-lookup drafts are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptLookup {
    /// Longest suffix n-gram searched for in the history (tried first).
    pub max_ngram: usize,
    /// Shortest one; shorter suffixes match more often and guess worse.
    pub min_ngram: usize,
    /// Draft tokens per pass at most.
    pub max_draft: usize,
}

impl Default for PromptLookup {
    /// llama.cpp's prompt-lookup example's defaults are of this order: a
    /// 3..1-gram and 10 tokens; 8 keeps a rejected pass cheap.
    fn default() -> Self {
        Self {
            max_ngram: 3,
            min_ngram: 1,
            max_draft: 8,
        }
    }
}

impl PromptLookup {
    /// The draft after `history`: the tokens that followed the most recent
    /// earlier occurrence of its longest matching suffix n-gram, at most
    /// `limit` (and [`PromptLookup::max_draft`]) of them; empty when the
    /// suffix never occurred before.
    pub fn draft<'h>(&self, history: &'h [u32], limit: usize) -> &'h [u32] {
        let limit = limit.min(self.max_draft);
        if limit == 0 || self.min_ngram == 0 {
            return &[];
        }
        let len = history.len();
        for n in (self.min_ngram..=self.max_ngram).rev() {
            if len <= n {
                continue;
            }
            let suffix = &history[len - n..];
            // The most recent occurrence that has at least one token after
            // it before the suffix itself.
            let found = (0..len - n)
                .rev()
                .find(|&start| &history[start..start + n] == suffix);
            if let Some(start) = found {
                let from = start + n;
                let to = (from + limit).min(len);
                return &history[from..to];
            }
        }
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_most_recent_longest_match() {
        let p = PromptLookup::default();
        // "1 2 3 4 5 ... 1 2 3" -> the 3-gram matched at the start: 4 5 9 1 2 3.
        let h = [1, 2, 3, 4, 5, 9, 1, 2, 3];
        assert_eq!(p.draft(&h, 3), &[4, 5, 9]);
        assert_eq!(p.draft(&h, 100), &[4, 5, 9, 1, 2, 3]);
        // Most recent occurrence wins.
        let h = [7, 1, 8, 7, 1, 9, 7, 1];
        assert_eq!(p.draft(&h, 2), &[9, 7]);
        // Falls back to shorter n-grams: only "5" recurs.
        let h = [5, 6, 1, 2, 5];
        assert_eq!(p.draft(&h, 4), &[6, 1, 2, 5]);
    }

    #[test]
    fn nothing_to_draft() {
        let p = PromptLookup::default();
        assert!(p.draft(&[], 8).is_empty());
        assert!(p.draft(&[1], 8).is_empty());
        assert!(p.draft(&[1, 2, 3, 4], 8).is_empty());
        assert!(p.draft(&[1, 2, 1], 0).is_empty());
        let off = PromptLookup {
            min_ngram: 0,
            ..PromptLookup::default()
        };
        assert!(off.draft(&[1, 2, 1], 8).is_empty());
        let capped = PromptLookup {
            max_draft: 1,
            ..PromptLookup::default()
        };
        assert_eq!(capped.draft(&[1, 2, 3, 1], 8), &[2]);
    }

    #[test]
    fn a_repeated_token_run_drafts_itself() {
        let p = PromptLookup::default();
        assert_eq!(p.draft(&[4, 4, 4, 4], 8), &[4]);
    }
}
