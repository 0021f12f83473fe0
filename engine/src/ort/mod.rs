//! ONNX Runtime backend: exported (or foreign) static-shape decoder graphs on
//! an execution-provider chain (QNN HTP, NNAPI, CoreML, XNNPACK, OpenVINO,
//! CPU), loaded at run time from a dynamic ONNX Runtime library.
//!
//! * `runtime`: finding `libonnxruntime`, the process environment and the
//!   log capture the placement report reads;
//! * `ep`: the EP chain as configuration (`"qnn,cpu"`);
//! * `session`: one graph's session: EP registration, CPU-fallback refusal,
//!   QNN context-binary caching, the placement report;
//! * `backend`: [`OrtBackend`](crate::ort::OrtBackend): prefill/decode over a fixed KV cache, KV
//!   hand-over to and from the CPU backend;
//! * `decoder`: [`OrtDecoder`](crate::ort::OrtDecoder), the graphs as an engine
//!   [`Backend`](crate::Backend) on the engine's [`KvCache`](crate::KvCache);
//! * `hybrid`: [`HybridBackend`](crate::ort::HybridBackend), prefill on the graphs (the NPU), decode
//!   on the CPU kernels, one KV cache between them;
//! * `foreign`: [`ForeignDecoder`](crate::ort::ForeignDecoder), a decoder exported by another tool
//!   (optimum's I/O names, dynamic shapes, `config.json`) as an engine
//!   [`Backend`](crate::Backend).

pub(crate) mod backend;
pub(crate) mod calibrate;
pub(crate) mod decoder;
pub(crate) mod ep;
pub(crate) mod foreign;
pub(crate) mod hybrid;
#[cfg(test)]
mod qnn_matmul_tests;
pub(crate) mod runtime;
pub(crate) mod session;

pub use backend::{KvSnapshot, OrtBackend};
pub use calibrate::{export_qdq, export_qdq_scoped};
pub use decoder::OrtDecoder;
pub use ep::{Ep, QnnOptions, EMULATOR_SOC_MODEL};
pub(crate) use foreign::is_foreign_export;
pub use foreign::{ForeignConfig, ForeignDecoder, ForeignIo, KvDtype};
pub use hybrid::{HybridBackend, HybridCounts};
pub use runtime::OrtConfig;
pub use session::Placement;

use std::path::PathBuf;

/// The ONNX Runtime backends' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an ONNX Runtime backend could not load, run or hand over its KV
/// cache. The engine's own [`crate::Error`] wraps this one (`Error::Ort`)
/// with the source kept, so callers can match, for instance,
/// [`Error::FallbackRefused`] or [`Error::DynamicShape`] to fall back to
/// another backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A library the backend loads at run time is not there.
    #[error("{what} not found (looked at {searched:?}); run scripts/ort-deps.sh or set {env}")]
    LibraryMissing {
        /// Which library (ONNX Runtime, the QNN EP, the QNN HTP backend).
        what: &'static str,
        /// Every path tried, in order.
        searched: Vec<PathBuf>,
        /// The environment variable that points at it.
        env: &'static str,
    },
    /// The ONNX Runtime library was found but could not be loaded or
    /// initialised (wrong version, missing symbols). The first attempt's
    /// outcome is kept for the process: later sessions report it again.
    #[error("could not load ONNX Runtime from {path}: {reason}")]
    RuntimeLoad {
        /// The library file.
        path: PathBuf,
        /// The loader's or ONNX Runtime's message.
        reason: String,
    },
    /// The EP chain names a provider this runtime cannot offer.
    #[error("execution provider {ep} is not available in this ONNX Runtime: {reason}")]
    EpUnavailable {
        /// ONNX Runtime's name of the provider (`QNNExecutionProvider`).
        ep: String,
        /// Why: not built in, no device, or its library failed to register.
        reason: String,
    },
    /// An EP chain entry names no provider this crate knows.
    #[error(
        "unknown execution provider {0:?} (expected qnn, nnapi, coreml, xnnpack, openvino or cpu)"
    )]
    UnknownEp(String),
    /// An option in the chain (`qnn:soc_model=57`) this EP does not take,
    /// or a value it cannot parse.
    #[error("execution provider option {option:?} of {ep}: {reason}")]
    BadEpOption {
        /// The chain entry's provider name.
        ep: String,
        /// The option as written.
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// NPU-only sessions need every shape fixed.
    #[error(
        "graph input {input} has a dynamic shape {shape:?}; NPU-only sessions need static shapes"
    )]
    DynamicShape {
        /// The input's name.
        input: String,
        /// Its shape, `None` for each symbolic axis (empty if the graph
        /// gives none).
        shape: Vec<Option<i64>>,
    },
    /// With CPU fallback refused, some node could not be placed on the
    /// chain. `rejected` holds the EP's per-node verdicts when it gave any.
    #[error("CPU fallback is disabled but the graph does not fit the EP chain: {source}{}", rejected_nodes(.rejected))]
    FallbackRefused {
        /// The QNN EP's validation failures, one line per node.
        rejected: Vec<String>,
        /// ONNX Runtime's session-creation error.
        #[source]
        source: ort::Error,
    },
    /// A graph does not behave as the backend expects (a missing output,
    /// a logits tensor of the wrong size, too little calibration input);
    /// the text says which.
    #[error("graph: {0}")]
    Graph(String),
    /// Exporting graphs, or checking them against their manifest, failed.
    #[error("onnx: {0}")]
    Onnx(#[from] crate::onnx::Error),
    /// Reading a graph or configuration file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A token id at or past the vocabulary size.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The id given.
        id: u32,
        /// The model's vocabulary size.
        vocab: usize,
    },
    /// The positions already cached plus the new tokens exceed the graphs'
    /// fixed KV cache.
    #[error("{needed} positions do not fit the graphs' context of {context}")]
    ContextOverflow {
        /// Positions the call would need.
        needed: usize,
        /// KV cache slots of the graphs.
        context: usize,
    },
    /// The graphs were exported from a model of another shape.
    #[error("graphs in {dir} have {field} = {graphs}, the model has {model}")]
    ModelMismatch {
        /// The export directory.
        dir: PathBuf,
        /// The hyper-parameter that differs (`n_layer`, `vocab_size`, ...).
        field: &'static str,
        /// Its value in the manifest.
        graphs: usize,
        /// Its value in the model.
        model: usize,
    },
    /// A foreign export lacks one of the decoder inputs or outputs.
    #[error("{model}: the graph has no {kind} named {name:?}")]
    MissingIo {
        /// The `.onnx` file.
        model: PathBuf,
        /// `"input"` or `"output"`.
        kind: &'static str,
        /// The name looked for.
        name: String,
    },
    /// A foreign graph takes an input the decoder loop does not feed.
    #[error("{model}: the graph takes an input {name:?} beyond the usual decoder inputs (input_ids, attention_mask, position_ids, past_key_values.N.key/value)")]
    UnexpectedInput {
        /// The `.onnx` file.
        model: PathBuf,
        /// The input's name.
        name: String,
    },
    /// A foreign graph disagrees with its config.json.
    #[error("{model}: the graph has {field} = {graph}, config.json says {config}")]
    ConfigMismatch {
        /// The `.onnx` file.
        model: PathBuf,
        /// The hyper-parameter that differs.
        field: &'static str,
        /// Its value read from the graph's I/O.
        graph: usize,
        /// Its value in `config.json`.
        config: usize,
    },
    /// A foreign graph's tensor has an element type the decoder loop cannot
    /// feed or read.
    #[error("{model}: {name} is {dtype}; supported: {supported}")]
    UnsupportedDtype {
        /// The `.onnx` file.
        model: PathBuf,
        /// The input or output.
        name: String,
        /// Its ONNX element type.
        dtype: String,
        /// What the loop takes there.
        supported: &'static str,
    },
    /// A config.json that cannot describe a decoder.
    #[error("{path}: {reason}")]
    Config {
        /// The `config.json` file.
        path: PathBuf,
        /// The missing or inconsistent field.
        reason: String,
    },
    /// Moving the KV cache between the graphs and the engine's
    /// [`KvCache`](crate::KvCache) failed: their layer, head or
    /// dimension counts differ.
    #[error("KV hand-over: {0}")]
    Kv(String),
    /// A lock shared by the process's sessions was poisoned by a panic.
    #[error("ONNX Runtime {what} lock poisoned by an earlier panic")]
    Poisoned {
        /// Which shared state.
        what: &'static str,
    },
    /// ONNX Runtime itself failed (session creation or a run).
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
