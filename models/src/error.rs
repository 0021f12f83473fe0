//! The one error type of sotto-models. Every variant names what was being
//! read (file, key, tensor) so a bad model file is diagnosable from the
//! message alone.

use std::path::PathBuf;

use sotto_kernels::quant::GgmlType;

/// Errors from reading, validating and interpreting model files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic is {found:?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error("GGUF truncated while reading {what} at offset {offset}: need {needed} bytes, file has {file_size}")]
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        file_size: u64,
    },
    #[error("malformed GGUF at offset {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
    #[error("metadata key {key:?}: {reason}")]
    BadMetadata { key: String, reason: String },
    #[error("tensor {tensor:?}: {reason}")]
    BadTensor { tensor: String, reason: String },
    #[error("tensor {tensor:?}: unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor} has type {ggml_type} (ggml type {}), which sotto cannot run", ggml_type.id())]
    UnsupportedTensorType { tensor: String, ggml_type: GgmlType },
    #[error("unknown architecture {0:?} (supported: {list})", list = crate::arch::supported_architectures().join(", "))]
    UnknownArchitecture(String),
    #[error("missing required metadata key {key:?}")]
    MissingKey { key: String },
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongKeyType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("hyper-parameter {key:?}: {reason}")]
    InvalidHyperParameter { key: String, reason: String },
    #[error("missing required tensor {tensor:?}")]
    MissingTensor { tensor: String },
    #[error("tensor {tensor:?}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {tensor:?}: cannot convert {dtype} to f32: {reason}")]
    Dequantize {
        tensor: String,
        dtype: String,
        reason: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("token id {id} out of range (vocabulary has {vocab_size} tokens)")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

/// Result alias used throughout sotto-models.
pub type Result<T, E = Error> = std::result::Result<T, E>;
