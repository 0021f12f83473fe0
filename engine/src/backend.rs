//! The backend contract: run the decoder over new tokens, appending to a
//! [`KvCache`], and return logits. Backends differ in where the math runs
//! (CPU kernels, ONNX Runtime execution providers, both), never in what a
//! model is: they all execute the same `DecoderSpec`.

use crate::error::Result;
use crate::kv_cache::KvCache;
use sotto_models::spec::DecoderSpec;

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last token's (generation).
    Last,
    /// Every token's (teacher forcing, perplexity, parity tests).
    All,
}

/// An execution path for a decoder: runs tokens on a [`KvCache`] it shapes.
/// `Send`, so a session can move between threads; one call at a time.
pub trait Backend: Send {
    /// A short name for reports ("cpu", "ort-qnn", "hybrid").
    fn name(&self) -> &'static str;
    /// The decoder it runs.
    fn spec(&self) -> &DecoderSpec;
    /// A fresh cache sized for `capacity` positions, laid out as this backend
    /// expects.
    fn new_cache(&self, capacity: usize) -> Result<KvCache>;
    /// Runs `tokens` at positions `cache.len()..`, appends their keys and
    /// values to `cache`, and returns logits `[n, vocab]` (n = 1 or
    /// tokens.len()). On error the cache length is unchanged.
    fn forward(
        &mut self,
        cache: &mut KvCache,
        tokens: &[u32],
        which: LogitsFor,
    ) -> Result<Vec<f32>>;
    /// What the backend runs on, for reports (ISA, EP chain…).
    fn describe(&self) -> String;
    /// The inverse frequencies layer `layer` rotated its cached keys with,
    /// in a cache of `capacity` positions: what a context shift rotates
    /// them back by ([`crate::context`]). A backend that keeps keys and
    /// values of its own beside the [`KvCache`] (candle, device-resident
    /// graphs) cannot have its cache shifted and keeps this default, which
    /// refuses.
    fn rope_inv_freqs(&self, layer: usize, capacity: usize) -> Result<Vec<f64>> {
        let _ = (layer, capacity);
        Err(crate::error::Error::ContextShiftUnsupported {
            backend: self.name(),
        })
    }
}

/// The checks every backend's `forward` makes before touching the cache:
/// tokens present, inside the vocabulary, and fitting the cache. Returns the
/// position of the first new token.
pub(crate) fn check_forward(cache: &KvCache, tokens: &[u32], vocab: usize) -> Result<usize> {
    use crate::error::Error;
    if tokens.is_empty() {
        return Err(Error::Empty("tokens"));
    }
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::TokenOutOfRange { id, vocab });
    }
    let start = cache.len();
    if start + tokens.len() > cache.capacity() {
        return Err(Error::ContextOverflow {
            prompt_tokens: tokens.len(),
            cached: start,
            reserve: 0,
            context: cache.capacity(),
        });
    }
    Ok(start)
}
