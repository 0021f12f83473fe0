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
// Reading graphs back (parsing, element types, shapes) and quantizing them
// are the ONNX Runtime backend's (the `ort` feature); the export alone only
// writes graphs.
#[cfg_attr(not(feature = "ort"), allow(dead_code))]
pub(crate) mod proto;
#[cfg_attr(not(feature = "ort"), allow(dead_code))]
pub(crate) mod qdq;

pub use bundle::{export_model, ExportOptions};
pub use export::WeightFormat;
pub use manifest::{GraphEntry, Manifest, Quantization};
pub use qdq::{ActivationType, QdqScope};

/// The export's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an export, or the check of exported graphs against their manifest,
/// failed. An export builds both graphs in memory and writes them before
/// the manifest, so a failure while writing can leave graph files the
/// directory's manifest (old or absent) does not describe; loading refuses
/// such a directory ([`Error::ManifestMismatch`] or [`Error::Manifest`])
/// until it is exported again. The engine's own [`crate::Error`] wraps this
/// one with the source kept.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model uses something the static graphs cannot express (an
    /// architecture feature, or a graph without a body); the text names it.
    #[error("ONNX export does not support {0}")]
    Unsupported(String),
    /// A weight could not be read or converted for the graph.
    #[error("weight {tensor}: {reason}")]
    Weight {
        /// The GGUF tensor name.
        tensor: String,
        /// What was wrong with it.
        reason: String,
    },
    /// QDQ quantization needs the observed range of this float value and
    /// calibration did not produce one.
    #[error("no calibrated range for {0}")]
    MissingRange(String),
    /// Reading or writing a graph or manifest file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The manifest is missing, not valid JSON, or of another format
    /// version.
    #[error("manifest {path}: {reason}")]
    Manifest {
        /// The manifest file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A graph file differs from what its manifest recorded (digest or
    /// input/output names): stale or swapped files, re-export.
    #[error("graph {graph} does not match its manifest: {reason}")]
    ManifestMismatch {
        /// The graph's file name inside the export directory.
        graph: String,
        /// Which check failed, with both values.
        reason: String,
    },
    /// A graph file is not a decodable ONNX protobuf.
    #[error("{path} is not an ONNX model: {reason}")]
    Decode {
        /// The graph file.
        path: std::path::PathBuf,
        /// The protobuf decoder's message.
        reason: String,
    },
}
