//! sotto-engine: running a model.
//!
//! * [`backend`]: the [`Backend`] trait every execution path implements; the
//!   CPU one ([`cpu::CpuBackend`]) runs the generic decoder on sotto-kernels.
//! * [`kv_cache`]: the head-major KV cache (f16, q8_0 or q4_0 keys and values), shared currency of backends.
//! * [`sampler`]: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded.
//! * [`generate`]: the loop ([`Session`]): prefix reuse, chunked prefill,
//!   streaming text that never splits a UTF-8 character, stop strings,
//!   cancellation from another thread, typed context overflow.
//! * [`chat`]: conversations through the model's chat template.
//! * [`context`]: what a full context does ([`ContextPolicy`]): error,
//!   llama.cpp's context shift, or whole turns trimmed by the chat layer.
//! * [`constrain`]: output constrained by a JSON Schema, a Lark grammar or a
//!   GBNF grammar (llama.cpp's syntax, translated to Lark)
//!   (token masks from llguidance, `constrain` feature).
//! * [`tools`]: tool calling through the chat template, calls generated
//!   under the tools' grammar and parsed into typed [`ToolCall`]s.
//! * [`open`]: the one entry point: a model file and a [`BackendChoice`]
//!   (cpu, ort with its EP chain, hybrid, a foreign export, candle) in, a
//!   [`LoadedModel`] that hands out sessions out.
//! * [`onnx`] / `ort`: static-graph export and, behind the `ort` feature,
//!   the ONNX Runtime backends: `ort::OrtDecoder` (the exported graphs on an
//!   execution-provider chain such as QNN HTP), `ort::HybridBackend`
//!   (prefill on the graphs, decode on the CPU kernels, one KV cache) and
//!   `ort::ForeignDecoder` (a decoder exported by another tool, optimum's
//!   I/O names and dynamic shapes).

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

/// The engine behind the bridge's `Assistant` trait, behind the `bridge`
/// feature: per-conversation KV caches, context windowing.
#[cfg(feature = "bridge")]
pub mod assistant;
pub mod backend;
pub mod chat;
pub mod constrain;
pub mod context;
pub mod cpu;
pub mod error;
pub mod generate;
pub mod kv_cache;
pub mod model_digest;
pub mod open;
pub mod sampler;
/// Sessions and chats saved sealed and restored (the `bridge` feature,
/// whose sealing they use).
#[cfg(feature = "bridge")]
pub mod session_file;
pub mod speculative;
pub(crate) mod text;
pub mod tools;

/// candle-transformers' quantized Llama as a reference backend and benchmark
/// baseline, behind the `candle` feature.
#[cfg(feature = "candle")]
pub mod candle_backend;
/// ONNX export of the generic decoder description (static-shape graphs).
pub mod onnx;
/// ONNX Runtime backend with execution-provider chains (QNN HTP, NNAPI, ...).
#[cfg(feature = "ort")]
pub mod ort;

#[cfg(feature = "bridge")]
pub use assistant::{AssistantConfig, EngineAssistant};
pub use backend::{Backend, LogitsFor};
pub use chat::{Chat, Reply};
pub use constrain::{Constraint, GrammarSyntax, TextMatch};
pub use context::{ContextPolicy, TurnWindow};
pub use cpu::{user_cache_dir, CpuBackend, PackedCache, PackedCacheStatus};
pub use error::{Error, Result};
pub use generate::{CancelToken, GenerateOptions, GenerationStats, Session, StopReason};
pub use kv_cache::{KvCache, KvRotations, KvType, KvTypes};
pub use model_digest::ModelDigest;
pub use open::{
    export_graphs, AdapterSpec, BackendChoice, BackendKind, CpuOptions, GraphTarget, LoadedModel,
    OrtOptions,
};
pub use sampler::{Sampler, SamplerConfig};
#[cfg(feature = "bridge")]
pub use session_file::SessionFileProblem;
pub use tools::{parse_tool_calls, Tool, ToolCall, ToolCallFormat, ToolReply};
