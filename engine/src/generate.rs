//! The generation loop: prompt tokens in, streamed text out.
//!
//! A [`Session`] owns a backend, its KV cache and the exact token sequence the
//! cache holds, so a new prompt that extends the old one (the next chat turn)
//! only prefills what is new. Prefill goes in chunks with a cancellation check
//! between them; decoding checks it before every token. Whatever stops a
//! generation, the cache and its token list stay consistent.

use crate::backend::{Backend, LogitsFor};
use crate::constrain::{ConstrainedSampling, Constraint, GrammarCompiler};
use crate::context::{discard_count, shift_cache, ContextPolicy, ShiftedOut};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model_digest::ModelDigest;
use crate::sampler::{Sampler, SamplerConfig};
use crate::speculative::{DraftModel, PromptLookup};
use crate::text::TextStream;
use sotto_models::tokenizer::Tokenizer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens per prefill step between cancellation checks.
pub(crate) const PREFILL_STEP: usize = 256;

/// How many of the `cached` tokens a forward pass over `next` can keep: the
/// common prefix, but at least the last token of `next` runs again so the
/// pass gives logits. `next` must not be empty.
pub(crate) fn reusable_prefix(cached: &[u32], next: &[u32]) -> usize {
    cached
        .iter()
        .zip(next)
        .take_while(|(a, b)| a == b)
        .count()
        .min(next.len().saturating_sub(1))
}

/// Cancels a running generation from any thread.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks every generation holding a clone of this token to stop at its
    /// next token (or prefill step); safe from any thread.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`CancelToken::cancel`] was called since the last reset.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Clears a cancellation, so the token can serve the next generation.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// How one generation runs.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// How the next token is picked.
    pub sampler: SamplerConfig,
    /// Generated tokens at most (the answer then ends with
    /// [`StopReason::MaxTokens`]).
    pub max_tokens: usize,
    /// Text that ends the answer (not included in it).
    pub stop: Vec<String>,
    /// Cancels the generation from another thread.
    pub cancel: Option<CancelToken>,
    /// Speculative decoding with prompt-lookup drafts (the output is the
    /// same as without; see [`crate::speculative`]); `None` decodes one
    /// token per pass.
    pub prompt_lookup: Option<PromptLookup>,
    /// The output must match this JSON Schema or grammar (see
    /// [`crate::constrain`]); the generation ends with
    /// [`StopReason::GrammarComplete`] when nothing may follow.
    pub constraint: Option<Constraint>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            sampler: SamplerConfig::default(),
            max_tokens: 512,
            stop: Vec::new(),
            cancel: None,
            prompt_lookup: None,
            constraint: None,
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token (EOS, end of turn).
    EndOfGeneration,
    /// One of [`GenerateOptions::stop`] appeared.
    StopString,
    /// [`GenerateOptions::max_tokens`] were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The output matches [`GenerateOptions::constraint`] and the grammar
    /// allows nothing after it.
    GrammarComplete,
}

/// What one generation did and how fast.
#[derive(Clone, Debug)]
pub struct GenerationStats {
    /// Tokens of the prompt (reused ones included).
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was reused from the previous call.
    pub reused_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Wall time of the prompt's prefill.
    pub prefill_time: Duration,
    /// Wall time of the decode steps.
    pub decode_time: Duration,
    /// From the call to the first generated token.
    pub time_to_first_token: Duration,
    /// Why it ended.
    pub stop: StopReason,
    /// Generated token ids, in order (including a final end-of-generation token).
    pub tokens: Vec<u32>,
    /// Draft tokens checked by speculative passes
    /// ([`GenerateOptions::prompt_lookup`]).
    pub drafted_tokens: usize,
    /// Draft tokens the sampler then picked: decode passes saved.
    pub accepted_tokens: usize,
    /// Time the constraint automaton took computing each token's mask and
    /// advancing past the picked token (zero without
    /// [`GenerateOptions::constraint`]).
    pub constraint_time: Duration,
    /// Time compiling the constraint took, before the prefill (a session's
    /// first constraint also builds the vocabulary's token trie).
    pub constraint_compile_time: Duration,
    /// Token masks the constraint automaton computed.
    pub constraint_masks: usize,
}

impl GenerationStats {
    /// Prompt tokens per second of prefill (reused tokens not counted).
    pub fn prefill_tps(&self) -> f64 {
        let new = (self.prompt_tokens - self.reused_tokens) as f64;
        new / self.prefill_time.as_secs_f64().max(1e-9)
    }
    /// Generated tokens per second of decode (the first token, which comes
    /// from the prefill, not counted).
    pub fn decode_tps(&self) -> f64 {
        // the first token comes from the prefill logits
        let n = self.generated_tokens.saturating_sub(1) as f64;
        n / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// A backend, a tokenizer and one KV cache: the generation loop. A new
/// prompt that starts with the cached tokens reuses their keys and values.
/// `Send`, not `Sync`: one thread at a time (cancel through a
/// [`CancelToken`]).
pub struct Session {
    backend: Box<dyn Backend>,
    tokenizer: Arc<Tokenizer>,
    cache: KvCache,
    /// Exactly the tokens whose keys/values are in `cache`.
    tokens: Vec<u32>,
    /// Drafts tokens for speculative decoding when set (and
    /// [`GenerateOptions::prompt_lookup`] is not).
    draft_model: Option<DraftModel>,
    /// What a full context does.
    policy: ContextPolicy,
    /// What context shifts dropped from between `tokens`' kept prefix and
    /// the rest: prompts are whole token streams, mapped past the gap.
    shifted: ShiftedOut,
    /// Compiles [`GenerateOptions::constraint`]s for this tokenizer.
    grammars: GrammarCompiler,
    /// The model file the backend's weights come from, which a saved
    /// session is bound to; `None` when the session was not opened through
    /// a [`crate::LoadedModel`] (or applies adapters).
    model_digest: Option<Arc<ModelDigest>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("backend", &self.backend.name())
            .field("cached", &self.tokens.len())
            .finish()
    }
}

impl Session {
    /// A session with a KV cache of `context` tokens; the backend's error
    /// if it cannot allocate one that size.
    pub fn new(
        backend: Box<dyn Backend>,
        tokenizer: Arc<Tokenizer>,
        context: usize,
    ) -> Result<Self> {
        let cache = backend.new_cache(context)?;
        Ok(Self {
            backend,
            tokenizer,
            cache,
            tokens: Vec::new(),
            draft_model: None,
            policy: ContextPolicy::Error,
            shifted: ShiftedOut::default(),
            grammars: GrammarCompiler::default(),
            model_digest: None,
        })
    }

    /// What a full context does from now on (see [`ContextPolicy`]). A
    /// shift keeping another prefix than earlier shifts of this cache drops
    /// the cache (two gaps cannot be mapped).
    pub fn set_context_policy(&mut self, policy: ContextPolicy) {
        if let Some(kept) = self.shifted.keep() {
            if policy
                .shift_keep(self.cache.capacity())
                .is_some_and(|k| k != kept)
            {
                self.reset();
            }
        }
        self.policy = policy;
    }

    /// What a full context does.
    pub fn context_policy(&self) -> ContextPolicy {
        self.policy
    }

    /// Tokens of the conversation that context shifts dropped from the
    /// cache since the last [`Session::reset`].
    pub fn shifted_out(&self) -> usize {
        self.shifted.dropped()
    }

    /// llama.cpp's context shift: drops cached tokens `keep..keep + n`,
    /// moves the later ones down and rotates their keys back by `n`
    /// positions in every layer, nothing recomputed (see
    /// [`crate::context`]). Later prompts that repeat the whole stream
    /// (dropped tokens included) still reuse the cache. A typed error,
    /// and the cache untouched, when the range is not cached, the backend
    /// keeps keys of its own ([`Error::ContextShiftUnsupported`]), or an
    /// earlier shift kept another prefix.
    pub fn shift_context(&mut self, keep: usize, n: usize) -> Result<()> {
        // Keys and values of unpicked draft tokens go first.
        self.cache.truncate(self.tokens.len());
        if keep
            .checked_add(n)
            .is_none_or(|end| end > self.tokens.len())
        {
            return Err(Error::KvCache(format!(
                "cannot shift out {n} tokens after {keep} of {} cached",
                self.tokens.len()
            )));
        }
        if !self.shifted.accepts(keep) {
            return Err(Error::KvCache(format!(
                "earlier shifts kept {:?} tokens, this one {keep}",
                self.shifted.keep()
            )));
        }
        match shift_cache(self.backend.as_ref(), &mut self.cache, keep, n) {
            Ok(()) => {
                self.shifted.record(&self.tokens, keep, n);
                self.tokens.drain(keep..keep + n);
                Ok(())
            }
            Err(e) => {
                // Refused before moving anything, or the cache kept its
                // first `keep` entries only.
                self.truncate_cached(self.cache.len());
                Err(e)
            }
        }
    }

    /// Keeps the first `n` cached tokens (and their gap, if any is before),
    /// or fewer when a sliding-window ring no longer holds their window;
    /// returns how many it kept.
    fn truncate_cached(&mut self, n: usize) -> usize {
        let n = self.cache.truncate(n.min(self.tokens.len()));
        self.tokens.truncate(n);
        if self.shifted.keep().is_some_and(|keep| n <= keep) {
            self.shifted.clear();
        }
        n
    }

    /// Binds the session to the model its weights come from (for saving).
    pub(crate) fn bind_model(&mut self, digest: Arc<ModelDigest>) {
        self.model_digest = Some(digest);
    }
    /// The model it is bound to, if any.
    #[cfg(feature = "bridge")]
    pub(crate) fn model_digest(&self) -> Option<&ModelDigest> {
        self.model_digest.as_deref()
    }
    /// Replaces the cache and the tokens it holds at once (a restored
    /// session); `tokens.len()` must equal `cache.len()`.
    #[cfg(feature = "bridge")]
    pub(crate) fn replace_state(&mut self, cache: KvCache, tokens: Vec<u32>) {
        debug_assert_eq!(cache.len(), tokens.len());
        self.cache = cache;
        self.tokens = tokens;
        // A restored cache holds a prefix of its conversation (no gap).
        self.shifted.clear();
    }

    /// Speculative decoding with `draft` drafting (`None` turns it off):
    /// the answers stay the same, decoding gets faster where the draft
    /// model guesses the session's model. A typed error when its
    /// vocabulary differs.
    pub fn set_draft_model(&mut self, draft: Option<DraftModel>) -> Result<()> {
        if let Some(d) = &draft {
            let ours = self.backend.spec().vocab_size;
            if d.vocab_size() != ours {
                return Err(Error::DraftModel(format!(
                    "its vocabulary has {} tokens, the session's model {ours}",
                    d.vocab_size()
                )));
            }
        }
        self.draft_model = draft;
        Ok(())
    }

    /// Tokens the KV cache holds at most.
    pub fn context(&self) -> usize {
        self.cache.capacity()
    }
    /// The tokens whose keys and values are cached, in order.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.tokens
    }
    /// The backend it runs on.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
    /// The KV cache.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
    /// The tokenizer prompts are encoded with.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }
    /// Drops the cached prefix (a new conversation).
    pub fn reset(&mut self) {
        self.truncate_cached(0);
    }

    /// Runs `tokens` after the cached ones and returns logits for every new
    /// position `[tokens.len(), vocab]` (teacher forcing).
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_fits(tokens.len(), 0)?;
        let logits = self
            .backend
            .forward(&mut self.cache, tokens, LogitsFor::All)?;
        self.tokens.extend_from_slice(tokens);
        Ok(logits)
    }

    fn check_fits(&self, new: usize, reserve: usize) -> Result<()> {
        let cached = self.tokens.len();
        if cached + new + reserve > self.cache.capacity() {
            return Err(Error::ContextOverflow {
                prompt_tokens: new,
                cached,
                reserve,
                context: self.cache.capacity(),
            });
        }
        Ok(())
    }

    /// Generates after `prompt` (the whole conversation so far, as tokens).
    /// The longest cached prefix of `prompt` is reused (past the gap of
    /// earlier context shifts). `on_text` receives complete UTF-8 pieces
    /// as they become final. Under [`ContextPolicy::Shift`] a prompt of
    /// any length runs, shifting the context as it fills.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<GenerationStats> {
        let t0 = Instant::now();
        if prompt.is_empty() {
            return Err(Error::Empty("prompt"));
        }
        let mut sampler = Sampler::new(opts.sampler.clone())?;
        // An invalid schema or grammar fails here, before the cache changes.
        let mut constraint = opts
            .constraint
            .as_ref()
            .map(|c| ConstrainedSampling::new(c, &self.tokenizer, &self.grammars))
            .transpose()?;
        let cancelled = || opts.cancel.as_ref().is_some_and(|c| c.is_cancelled());

        let capacity = self.cache.capacity();
        let keep = self.policy.shift_keep(capacity);
        if (keep.is_none() && prompt.len() + 1 > capacity) || capacity < 2 {
            return Err(Error::ContextOverflow {
                prompt_tokens: prompt.len(),
                cached: 0,
                reserve: 1,
                context: capacity,
            });
        }
        let mapped = if self.shifted.is_empty() {
            None
        } else {
            let mapped = self.shifted.map_prompt(&self.tokens, prompt);
            if mapped.is_none() {
                // It leaves the stream inside the gap.
                self.truncate_cached(self.shifted.keep().unwrap_or(0));
            }
            mapped
        };
        let run = mapped.as_deref().unwrap_or(prompt);
        let common = reusable_prefix(&self.tokens, run);
        let common = self.truncate_cached(common);

        let mut logits = Vec::new();
        let mut at = common;
        while at < run.len() {
            if cancelled() {
                return Err(Error::Cancelled { generated: 0 });
            }
            let mut n = (run.len() - at).min(PREFILL_STEP);
            if let Some(keep) = keep {
                n = n.min(capacity - keep);
                let over = (self.tokens.len() + n).saturating_sub(capacity);
                if over > 0 {
                    let len = self.tokens.len();
                    self.shift_context(keep, discard_count(len, keep, over))?;
                }
            }
            let chunk = &run[at..at + n];
            logits = self
                .backend
                .forward(&mut self.cache, chunk, LogitsFor::Last)?;
            self.tokens.extend_from_slice(chunk);
            at += n;
        }
        let prefill_time = t0.elapsed();

        let mut stream = TextStream::new(opts.stop.clone());
        let mut out_tokens = Vec::new();
        let mut ttft = Duration::ZERO;
        let t_decode = Instant::now();
        let mut spec = Speculation::default();
        let decoded = self.decode(
            logits,
            opts,
            &mut sampler,
            constraint.as_mut(),
            &mut stream,
            &mut out_tokens,
            &mut spec,
            &mut |first| {
                if first {
                    ttft = t0.elapsed();
                }
            },
            on_text,
        );
        // Keys and values of draft tokens the sampler did not pick are
        // dropped whatever ended the loop, so the cache holds exactly
        // `self.tokens` again.
        self.cache.truncate(self.tokens.len());
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(&rest);
        }
        let stop = decoded?;
        Ok(GenerationStats {
            prompt_tokens: prompt.len(),
            // Prompt tokens not prefilled: the cached prefix and the gap.
            reused_tokens: prompt.len() - (run.len() - common),
            generated_tokens: out_tokens.len(),
            prefill_time,
            decode_time: t_decode.elapsed(),
            time_to_first_token: ttft,
            stop,
            tokens: out_tokens,
            drafted_tokens: spec.drafted,
            accepted_tokens: spec.accepted,
            constraint_time: constraint.as_ref().map_or(Duration::ZERO, |c| c.time),
            constraint_compile_time: constraint
                .as_ref()
                .map_or(Duration::ZERO, |c| c.compile_time),
            constraint_masks: constraint.as_ref().map_or(0, |c| c.masks),
        })
    }

    /// The decode loop after the prefill's `logits`. With prompt lookup, a
    /// pass runs the sampled token and a draft after it; the draft tokens'
    /// logits rows wait in `spec.ahead`, and while the sampler keeps
    /// picking the next draft token, its row is the next logits and no pass
    /// runs. Until the caller truncates, the cache may hold unpicked draft
    /// tokens after `self.tokens`.
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &mut self,
        mut logits: Vec<f32>,
        opts: &GenerateOptions,
        sampler: &mut Sampler,
        mut constraint: Option<&mut ConstrainedSampling>,
        stream: &mut TextStream,
        out_tokens: &mut Vec<u32>,
        spec: &mut Speculation,
        on_token: &mut dyn FnMut(bool),
        on_text: &mut dyn FnMut(&str),
    ) -> Result<StopReason> {
        let cancelled = || opts.cancel.as_ref().is_some_and(|c| c.is_cancelled());
        let vocab = self.backend.spec().vocab_size;
        let mut row = logits.len() - vocab;
        loop {
            if out_tokens.len() >= opts.max_tokens {
                return Ok(StopReason::MaxTokens);
            }
            if cancelled() {
                return Err(Error::Cancelled {
                    generated: out_tokens.len(),
                });
            }
            if let Some(c) = constraint.as_deref_mut() {
                c.mask(&mut logits[row..row + vocab])?;
            }
            let next = sampler.sample(&logits[row..row + vocab], &self.tokens)?;
            on_token(out_tokens.is_empty());
            out_tokens.push(next);
            if self.tokenizer.is_end_of_generation(next) {
                // Under a constraint the mask allowed it: the output is complete.
                return Ok(StopReason::EndOfGeneration);
            }
            let complete = match constraint.as_deref_mut() {
                Some(c) => {
                    c.advance(next)?;
                    c.is_complete()
                }
                None => false,
            };
            let piece = stream.push(&self.tokenizer.token_bytes(next)?);
            if !piece.text.is_empty() {
                on_text(&piece.text);
            }
            if piece.stop {
                return Ok(StopReason::StopString);
            }
            if complete {
                // Like a stop string, the last token is not run: the cache
                // holds exactly `self.tokens`.
                return Ok(StopReason::GrammarComplete);
            }
            if self.tokens.len() >= self.cache.capacity() {
                let capacity = self.cache.capacity();
                let Some(keep) = self.policy.shift_keep(capacity) else {
                    return Ok(StopReason::ContextFull);
                };
                spec.ahead.clear();
                let len = self.tokens.len();
                self.shift_context(keep, discard_count(len, keep, 1))?;
            }
            // The draft's next token was picked: its keys and values are
            // cached and its logits row is waiting.
            if spec.ahead.first() == Some(&next) {
                spec.ahead.remove(0);
                spec.accepted += 1;
                self.tokens.push(next);
                row += vocab;
                continue;
            }
            self.cache.truncate(self.tokens.len());
            spec.ahead.clear();
            self.tokens.push(next);
            // Room after `next` in the cache and in the answer.
            let room = (self.cache.capacity() - self.tokens.len())
                .min(opts.max_tokens.saturating_sub(out_tokens.len()));
            let draft = match (&opts.prompt_lookup, &mut self.draft_model) {
                (Some(lookup), _) => Ok(lookup.draft(&self.tokens, room).to_vec()),
                (None, Some(model)) => model.draft(&self.tokens, room),
                (None, None) => Ok(Vec::new()),
            };
            self.tokens.pop();
            let draft = draft?;
            if draft.is_empty() {
                logits = self
                    .backend
                    .forward(&mut self.cache, &[next], LogitsFor::Last)?;
                row = 0;
            } else {
                let batch: Vec<u32> = std::iter::once(next).chain(draft.iter().copied()).collect();
                logits = self
                    .backend
                    .forward(&mut self.cache, &batch, LogitsFor::All)?;
                row = 0;
                spec.drafted += draft.len();
                spec.ahead = draft;
            }
            self.tokens.push(next);
        }
    }
}

/// Draft tokens checked and picked in one generation, and the ones whose
/// logits rows wait for the sampler.
#[derive(Default)]
struct Speculation {
    ahead: Vec<u32>,
    drafted: usize,
    accepted: usize,
}
