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
//! A [`DraftModel`] (a smaller model with the same vocabulary) drafts by
//! greedy decoding instead, for answers that do not repeat their context.
//!
//! The check is exact, whatever the sampler: the logits after an accepted
//! token are those of the true context, the sampler draws from them as it
//! would have without drafting, and a draft token counts only if the drawn
//! token equals it. A rejected draft's keys and values are dropped from the
//! cache before the next pass ([`crate::Session::generate`]).

use crate::backend::{Backend, LogitsFor};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;

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

/// A second, cheaper model that drafts greedily for a [`crate::Session`]
/// ([`crate::Session::set_draft_model`]): same vocabulary, its own backend
/// and KV cache, which follows the session's tokens (the common prefix is
/// kept, the rest re-run) so each draft costs its new tokens only.
pub struct DraftModel {
    backend: Box<dyn Backend>,
    cache: KvCache,
    /// Exactly the tokens whose keys and values are in `cache`.
    tokens: Vec<u32>,
    max_draft: usize,
}

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel")
            .field("backend", &self.backend.name())
            .field("cached", &self.tokens.len())
            .field("max_draft", &self.max_draft)
            .finish()
    }
}

impl DraftModel {
    /// A draft model on `backend` with a KV cache of `context` positions
    /// (the session's), drafting up to `max_draft` tokens per pass.
    pub fn new(backend: Box<dyn Backend>, context: usize, max_draft: usize) -> Result<Self> {
        if max_draft == 0 {
            return Err(Error::DraftModel("max_draft must be at least 1".into()));
        }
        let cache = backend.new_cache(context)?;
        Ok(Self {
            backend,
            cache,
            tokens: Vec::new(),
            max_draft,
        })
    }

    /// Vocabulary size of the draft model.
    pub fn vocab_size(&self) -> usize {
        self.backend.spec().vocab_size
    }

    /// Up to `limit` (and `max_draft`) tokens the draft model's greedy
    /// decoding puts after `history`; fewer when its context is full.
    pub(crate) fn draft(&mut self, history: &[u32], limit: usize) -> Result<Vec<u32>> {
        let limit = limit.min(self.max_draft);
        if limit == 0 || history.is_empty() {
            return Ok(Vec::new());
        }
        let common = crate::generate::reusable_prefix(&self.tokens, history);
        let common = self.cache.truncate(common).min(common);
        self.tokens.truncate(common);
        if history.len() + limit > self.cache.capacity() {
            return Ok(Vec::new());
        }
        let mut logits =
            self.backend
                .forward(&mut self.cache, &history[common..], LogitsFor::Last)?;
        self.tokens.extend_from_slice(&history[common..]);
        let vocab = self.vocab_size();
        let mut out = Vec::with_capacity(limit);
        loop {
            let next = argmax(&logits[logits.len() - vocab..]);
            out.push(next);
            if out.len() == limit {
                return Ok(out);
            }
            logits = self
                .backend
                .forward(&mut self.cache, &[next], LogitsFor::Last)?;
            self.tokens.push(next);
        }
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate() {
        if v > xs[best] {
            best = i;
        }
    }
    best as u32
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
