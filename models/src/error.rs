//! The one error type of sotto-models. Every variant names what was being
//! read (file, key, tensor) so a bad model file is diagnosable from the
//! message alone.

use std::path::PathBuf;

use sotto_kernels::quant::GgmlType;

/// Errors from reading, validating and interpreting model files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening or mapping a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: magic is {found:?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A GGUF version other than 2 or 3.
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// The file ends inside a header field or a tensor.
    #[error("GGUF truncated while reading {what} at offset {offset}: need {needed} bytes, file has {file_size}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where, in bytes from the start.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes the file has.
        file_size: u64,
    },
    /// The header is inconsistent (bad lengths, counts, alignment...).
    #[error("malformed GGUF at offset {offset}: {reason}")]
    Malformed {
        /// Where, in bytes from the start.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A metadata value is present but unusable.
    #[error("metadata key {key:?}: {reason}")]
    BadMetadata {
        /// The key.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// A tensor's entry or data is unusable.
    #[error("tensor {tensor:?}: {reason}")]
    BadTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's type id is no ggml type.
    #[error("tensor {tensor:?}: unknown ggml type id {type_id}")]
    UnknownTensorType {
        /// The tensor's name.
        tensor: String,
        /// The id read.
        type_id: u32,
    },
    /// A tensor the model needs has a type Sotto has no kernels for.
    #[error("tensor {tensor} has type {ggml_type} (ggml type {}), which sotto cannot run", ggml_type.id())]
    UnsupportedTensorType {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
    },
    /// `general.architecture` names no family Sotto implements.
    #[error("unknown architecture {0:?} (supported: {list})", list = crate::arch::supported_architectures().join(", "))]
    UnknownArchitecture(String),
    /// A metadata key the architecture needs is absent.
    #[error("missing required metadata key {key:?}")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata value has the wrong GGUF type.
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongKeyType {
        /// The key.
        key: String,
        /// The type needed.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
    /// A hyper-parameter is out of range or inconsistent with the others.
    #[error("hyper-parameter {key:?}: {reason}")]
    InvalidHyperParameter {
        /// The metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("missing required tensor {tensor:?}")]
    MissingTensor {
        /// The tensor's name.
        tensor: String,
    },
    /// A tensor's shape disagrees with the hyper-parameters.
    #[error("tensor {tensor:?}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The tensor's name.
        tensor: String,
        /// The shape the hyper-parameters call for.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor read as f32 (norms, biases) could not be converted.
    #[error("tensor {tensor:?}: cannot convert {dtype} to f32: {reason}")]
    Dequantize {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        dtype: String,
        /// Why not.
        reason: String,
    },
    /// The tokenizer in the file cannot be built, or text cannot be encoded.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A token id past the vocabulary.
    #[error("token id {id} out of range (vocabulary has {vocab_size} tokens)")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Tokens in the vocabulary.
        vocab_size: usize,
    },
    /// The chat template does not parse or fails to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A file of a Hugging Face folder is missing or malformed (a shard the
    /// index lists, a safetensors header, a tensor dtype Sotto does not
    /// read, a tokenizer.json it cannot translate).
    #[error("{file}: {reason}")]
    HfFolder {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A conversion target Sotto cannot write (an activation-only type).
    #[error("cannot write weights as {dtype}: {reason}")]
    UnsupportedTargetType {
        /// The type asked for.
        dtype: sotto_kernels::quant::DType,
        /// Why not.
        reason: String,
    },
    /// A model whose layout a conversion cannot carry over.
    #[error("cannot convert {tensor:?}: {reason}")]
    Convert {
        /// The tensor (or key) in question.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A `config.json` value is missing, malformed or not supported.
    #[error("config.json {key:?}: {reason}")]
    HfConfig {
        /// The config key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A LoRA adapter file is malformed or uses what Sotto does not apply.
    #[error("LoRA adapter {path}: {reason}")]
    LoraFile {
        /// The adapter file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A PEFT `adapter_config.json` value is missing, malformed or not supported.
    #[error("{path} {key:?}: {reason}")]
    LoraConfig {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A LoRA adapter was made for another base model: a matrix it updates
    /// does not exist in this one, or has another shape, or the
    /// architecture differs.
    #[error("LoRA adapter {path} does not fit this model: {tensor}: {reason}")]
    LoraBaseMismatch {
        /// The adapter file or folder.
        path: PathBuf,
        /// The tensor (or metadata key) that does not fit.
        tensor: String,
        /// How it contradicts the model.
        reason: String,
    },
}

/// Result alias used throughout sotto-models.
pub type Result<T, E = Error> = std::result::Result<T, E>;
