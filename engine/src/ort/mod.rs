//! ONNX Runtime backend: exported (or foreign) static-shape decoder graphs on
//! an execution-provider chain (QNN HTP, NNAPI, CoreML, XNNPACK, OpenVINO,
//! CPU), loaded at run time from a dynamic ONNX Runtime library.
//!
//! * `runtime`: finding `libonnxruntime`, the process environment and the
//!   log capture the placement report reads;
//! * `ep`: the EP chain as configuration (`"qnn,cpu"`);
//! * `session`: one graph's session: EP registration, CPU-fallback refusal,
//!   QNN context-binary caching, the placement report;
//! * `backend`: [`OrtBackend`]: prefill/decode over a fixed KV cache, KV
//!   hand-over to and from the CPU backend;
//! * `decoder`: [`OrtDecoder`], the graphs as an engine
//!   [`Backend`](crate::Backend) on the engine's [`KvCache`](crate::KvCache);
//! * `hybrid`: [`HybridBackend`], prefill on the graphs (the NPU), decode
//!   on the CPU kernels, one KV cache between them;
//! * `foreign`: [`ForeignDecoder`], a decoder exported by another tool
//!   (optimum's I/O names, dynamic shapes, `config.json`) as an engine
//!   [`Backend`](crate::Backend).

pub(crate) mod backend;
pub(crate) mod calibrate;
pub(crate) mod decoder;
pub(crate) mod ep;
pub(crate) mod foreign;
pub(crate) mod hybrid;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod qnn_matmul_tests;
pub(crate) mod runtime;
pub(crate) mod session;

pub use backend::{KvSnapshot, OrtBackend};
pub use calibrate::{export_qdq, export_qdq_scoped};
pub use decoder::OrtDecoder;
pub use ep::{Ep, QnnOptions};
pub(crate) use foreign::is_foreign_export;
pub use foreign::{ForeignConfig, ForeignDecoder, ForeignIo, KvDtype};
pub use hybrid::{HybridBackend, HybridCounts};
pub use runtime::OrtConfig;
pub use session::Placement;

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A library the backend loads at run time is not there.
    #[error("{what} not found (looked at {searched:?}); run scripts/ort-deps.sh or set {env}")]
    LibraryMissing {
        what: &'static str,
        searched: Vec<PathBuf>,
        env: &'static str,
    },
    #[error("could not load ONNX Runtime from {path}: {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },
    /// The EP chain names a provider this runtime cannot offer.
    #[error("execution provider {ep} is not available in this ONNX Runtime: {reason}")]
    EpUnavailable { ep: String, reason: String },
    #[error(
        "unknown execution provider {0:?} (expected qnn, nnapi, coreml, xnnpack, openvino or cpu)"
    )]
    UnknownEp(String),
    /// An option in the chain (`qnn:soc_model=57`) this EP does not take,
    /// or a value it cannot parse.
    #[error("execution provider option {option:?} of {ep}: {reason}")]
    BadEpOption {
        ep: String,
        option: String,
        reason: String,
    },
    /// NPU-only sessions need every shape fixed.
    #[error(
        "graph input {input} has a dynamic shape {shape:?}; NPU-only sessions need static shapes"
    )]
    DynamicShape {
        input: String,
        shape: Vec<Option<i64>>,
    },
    /// With CPU fallback refused, some node could not be placed on the
    /// chain. `rejected` holds the EP's per-node verdicts when it gave any.
    #[error("CPU fallback is disabled but the graph does not fit the EP chain: {source}{}", rejected_nodes(.rejected))]
    FallbackRefused {
        rejected: Vec<String>,
        #[source]
        source: ort::Error,
    },
    #[error("graph: {0}")]
    Graph(String),
    #[error("onnx: {0}")]
    Onnx(#[from] crate::onnx::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("{needed} positions do not fit the graphs' context of {context}")]
    ContextOverflow { needed: usize, context: usize },
    /// The graphs were exported from a model of another shape.
    #[error("graphs in {dir} have {field} = {graphs}, the model has {model}")]
    ModelMismatch {
        dir: PathBuf,
        field: &'static str,
        graphs: usize,
        model: usize,
    },
    /// A foreign export lacks one of the decoder inputs or outputs.
    #[error("{model}: the graph has no {kind} named {name:?}")]
    MissingIo {
        model: PathBuf,
        kind: &'static str,
        name: String,
    },
    /// A foreign graph takes an input the decoder loop does not feed.
    #[error("{model}: the graph takes an input {name:?} beyond the usual decoder inputs (input_ids, attention_mask, position_ids, past_key_values.N.key/value)")]
    UnexpectedInput { model: PathBuf, name: String },
    /// A foreign graph disagrees with its config.json.
    #[error("{model}: the graph has {field} = {graph}, config.json says {config}")]
    ConfigMismatch {
        model: PathBuf,
        field: &'static str,
        graph: usize,
        config: usize,
    },
    #[error("{model}: {name} is {dtype}; supported: {supported}")]
    UnsupportedDtype {
        model: PathBuf,
        name: String,
        dtype: String,
        supported: &'static str,
    },
    /// A config.json that cannot describe a decoder.
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("KV hand-over: {0}")]
    Kv(String),
    /// A lock shared by the process's sessions was poisoned by a panic.
    #[error("ONNX Runtime {what} lock poisoned by an earlier panic")]
    Poisoned { what: &'static str },
    #[error("onnxruntime: {0}")]
    Ort(#[from] ort::Error),
}

fn rejected_nodes(rejected: &[String]) -> String {
    if rejected.is_empty() {
        String::new()
    } else {
        format!(" [{}]", rejected.join("; "))
    }
}

/// Session-builder calls return the builder for recovery; the error itself
/// is what is kept.
impl From<ort::Error<ort::session::builder::SessionBuilder>> for Error {
    fn from(e: ort::Error<ort::session::builder::SessionBuilder>) -> Self {
        Error::Ort(e.into())
    }
}
