//! The engine's one error type. Variants carry context (sizes, names) and
//! never the prompt or generated text: those may be private messages.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error("model: {0}")]
    Model(#[from] sotto_models::Error),

    #[error("kernel: {0}")]
    Kernel(#[from] sotto_kernels::Error),

    /// The prompt (plus what is already cached) does not fit the context.
    #[error("prompt of {prompt_tokens} tokens does not fit the context of {context} tokens ({cached} already used, {reserve} reserved for the answer)")]
    ContextOverflow {
        prompt_tokens: usize,
        cached: usize,
        reserve: usize,
        context: usize,
    },

    /// Generation was cancelled from another thread; the cache holds every
    /// token processed before the cancellation and stays usable.
    #[error("generation cancelled after {generated} tokens")]
    Cancelled { generated: usize },

    #[error("invalid sampling parameter {name}: {reason}")]
    InvalidSampling { name: &'static str, reason: String },

    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },

    #[error("KV cache mismatch: {0}")]
    KvCache(String),

    #[error("could not build a thread pool of {threads} threads: {reason}")]
    ThreadPool { threads: usize, reason: String },

    #[error("chat template: {0}")]
    Template(String),

    #[error("backend {backend}: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },

    #[error("empty input: {0}")]
    Empty(&'static str),
}
