//! The engine's one error type. Variants carry context (sizes, names) and
//! never the prompt or generated text: those may be private messages.
//! Errors of the libraries a backend runs on (ONNX Runtime, the ONNX
//! exporter) are kept as typed sources, so callers match them (a refused
//! CPU fallback, a dynamic shape) instead of reading strings.

use std::path::PathBuf;
use thiserror::Error;

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong opening a model, running it or exporting it.
#[derive(Debug, Error)]
pub enum Error {
    /// The model file could not be opened or is not a model the engine
    /// reads (missing file, bad magic, truncated, unknown architecture…).
    #[error("{path}: {source}")]
    ModelFile {
        /// The file given to [`LoadedModel::open`](crate::LoadedModel::open).
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: sotto_models::Error,
    },

    /// A model-level failure after loading (tokenizer, chat template data).
    #[error("model: {0}")]
    Model(#[from] sotto_models::Error),

    /// A kernel refused its inputs, or the kernel dispatch could not run
    /// the instruction-set path asked for.
    #[error("kernel: {0}")]
    Kernel(#[from] sotto_kernels::Error),

    /// The prompt (plus what is already cached) does not fit the context.
    #[error("prompt of {prompt_tokens} tokens does not fit the context of {context} tokens ({cached} already used, {reserve} reserved for the answer)")]
    ContextOverflow {
        /// Tokens of the new prompt.
        prompt_tokens: usize,
        /// Tokens already in the cache.
        cached: usize,
        /// Positions kept free for the answer.
        reserve: usize,
        /// Capacity of the cache.
        context: usize,
    },

    /// The backend keeps keys and values of its own beside the KV cache,
    /// so the cache cannot be shifted under it
    /// ([`ContextPolicy::Shift`](crate::context::ContextPolicy::Shift)).
    #[error("backend {backend} cannot shift its context: it keeps keys and values of its own")]
    ContextShiftUnsupported {
        /// The backend's name.
        backend: &'static str,
    },

    /// The newest message of a conversation does not fit the context by
    /// itself, whatever older turns are dropped
    /// ([`ContextPolicy::TrimTurns`](crate::context::ContextPolicy::TrimTurns)).
    #[error("a message of {tokens} tokens does not fit: {available} tokens are available")]
    MessageTooLong {
        /// Tokens of the message.
        tokens: usize,
        /// Tokens the context leaves for it.
        available: usize,
    },

    /// Generation was cancelled from another thread; the cache holds every
    /// token processed before the cancellation and stays usable.
    #[error("generation cancelled after {generated} tokens")]
    Cancelled {
        /// Tokens generated before the cancellation.
        generated: usize,
    },

    /// A sampling parameter out of its range.
    #[error("invalid sampling parameter {name}: {reason}")]
    InvalidSampling {
        /// The parameter (`temperature`, `top_p`…).
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// A token id the model's vocabulary does not have.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },

    /// A KV cache of another shape than the backend's.
    #[error("KV cache mismatch: {0}")]
    KvCache(String),

    /// A KV element type that is not known or does not fit the model
    /// (`--kv-type`; a block type needs a head size that is a multiple of 32).
    #[error("KV cache type: {0}")]
    KvType(String),

    /// A quantized KV cache given to code that exchanges f16 keys and
    /// values (ONNX Runtime's graphs, the candle backend).
    #[error("{what} needs an f16 KV cache, not {kv}")]
    KvTypeUnsupported {
        /// What refused it.
        what: &'static str,
        /// The cache's types (`K` or `K,V`).
        kv: String,
    },

    /// The CPU backend's worker pool could not be started.
    #[error("could not build a thread pool of {threads} threads: {reason}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// The pool builder's reason.
        reason: String,
    },

    /// The chat template failed to render the conversation.
    #[error("chat template: {0}")]
    Template(String),

    /// A backend refused to run for a reason of its own (candle's model
    /// reader, graphs and CPU model of different shapes in `hybrid`).
    #[error("backend {backend}: {reason}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// What it said.
        reason: String,
    },

    /// ONNX Runtime (or the graphs it runs) failed; `source` is the typed
    /// [`ort::Error`](crate::ort::Error): match it for
    /// `FallbackRefused`, `DynamicShape`, `LibraryMissing`, …
    #[cfg(feature = "ort")]
    #[error("{backend}: {source}")]
    Ort {
        /// The backend that ran the graphs (`ort`, `ort-foreign`, `hybrid`).
        backend: &'static str,
        /// ONNX Runtime's error.
        #[source]
        source: crate::ort::Error,
    },

    /// Exporting graphs failed (unsupported weight type, I/O, manifest).
    #[error("onnx export: {0}")]
    Onnx(#[from] crate::onnx::Error),

    /// The description asks for a backend whose cargo feature this build
    /// of sotto-engine was compiled without.
    #[error("backend {backend} needs the `{feature}` feature of sotto-engine, which this build was compiled without")]
    FeatureDisabled {
        /// The backend asked for.
        backend: &'static str,
        /// The cargo feature that brings it.
        feature: &'static str,
    },

    /// A backend description that cannot be opened as given.
    #[error("backend description: {0}")]
    InvalidDescription(String),

    /// A required input was empty.
    #[error("empty input: {0}")]
    Empty(&'static str),

    /// A GBNF grammar (llama.cpp's syntax) that does not parse or names a
    /// rule it does not define: where (1-based line and column) and why.
    #[error("GBNF grammar, line {line}, column {column}: {reason}")]
    GrammarSyntax {
        /// Line of the grammar text.
        line: usize,
        /// Column, in characters.
        column: usize,
        /// What was expected there.
        reason: String,
    },

    /// A JSON Schema or grammar the constraint automaton refuses (not
    /// JSON, a Lark syntax error, an unsatisfiable schema), reported before
    /// any token is generated.
    #[error("invalid {kind}: {reason}")]
    InvalidConstraint {
        /// `JSON Schema`, `grammar`, `GBNF grammar` or `vocabulary`.
        kind: &'static str,
        /// The compiler's message.
        reason: String,
    },

    /// The constraint automaton failed during a generation (no token of the
    /// vocabulary continues the output, an internal error).
    #[error("constrained decoding: {0}")]
    ConstraintFailed(String),

    /// A model's answer holds no tool call the format's parser reads.
    #[error("tool call ({format}): {reason}")]
    ToolCallParse {
        /// `hermes`, `llama3-json` or `mistral`.
        format: &'static str,
        /// What was wrong.
        reason: String,
    },

    /// A draft model that cannot draft for this session's model (another
    /// vocabulary).
    #[error("draft model: {0}")]
    DraftModel(String),

    /// A saved session could not be written, or a session file was
    /// refused (tampered, truncated, another key, another model, another
    /// version or geometry); the session it was to go into is unchanged.
    #[cfg(feature = "bridge")]
    #[error("session file {path}: {problem}")]
    SessionFile {
        /// The session file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        problem: crate::session_file::SessionFileProblem,
    },
}

#[cfg(feature = "ort")]
impl From<crate::ort::Error> for Error {
    fn from(source: crate::ort::Error) -> Self {
        Error::Ort {
            backend: "ort",
            source,
        }
    }
}
