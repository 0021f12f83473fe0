//! ONNX export of the generic decoder description as static-shape graphs
//! for NPUs (and the CPU EP), with no ONNX Runtime dependency:
//!
//! * `proto`: the ONNX protobuf messages, hand-written for prost;
//! * `graph`: a small graph builder;
//! * `nbits`: GGUF Q4_0/Q4_1 blocks re-packed for `MatMulNBits`;
//! * `export`: the decoder as a prefill graph (a fixed chunk) and a decode
//!   graph (one token), KV cache as fixed-size inputs/outputs;
//! * `qdq`: float graph → QDQ graph (uint8 per-channel weights, uint16
//!   activations) from calibrated ranges;
//! * `manifest`: the JSON manifest written beside the graphs and checked
//!   on load.

pub(crate) mod bundle;
pub(crate) mod export;
pub(crate) mod graph;
pub(crate) mod manifest;
pub(crate) mod nbits;
pub(crate) mod proto;
pub(crate) mod qdq;

pub use bundle::{export_model, ExportOptions};
pub use export::{export_decoder, GraphShape, WeightFormat};
pub use manifest::{GraphEntry, Manifest, Quantization};
pub use qdq::{ActivationType, QdqScope, WeightType};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ONNX export does not support {0}")]
    Unsupported(String),
    #[error("weight {tensor}: {reason}")]
    Weight { tensor: String, reason: String },
    #[error("no calibrated range for {0}")]
    MissingRange(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path}: {reason}")]
    Manifest {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("graph {graph} does not match its manifest: {reason}")]
    ManifestMismatch { graph: String, reason: String },
    #[error("{path} is not an ONNX model: {reason}")]
    Decode {
        path: std::path::PathBuf,
        reason: String,
    },
}
