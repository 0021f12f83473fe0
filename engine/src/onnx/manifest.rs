//! The manifest written beside exported graphs: what model they come from,
//! their fixed shapes, I/O names, quantization and a sha256 per graph file.
//! Loading checks every graph against it, so a stale or swapped file is a
//! typed error rather than garbage logits.

use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::proto::ModelProto;
use super::{Error, Result};

/// The manifest's file name inside an export directory.
pub const MANIFEST_FILE: &str = "sotto-onnx.json";
/// The manifest layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// How the exported graphs store weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// f32 weights.
    Float,
    /// com.microsoft MatMulNBits, 4 bits, block 32, from the GGUF blocks.
    MatMulNBits,
    /// QDQ: int8 symmetric per-channel MatMul weights (what QNN HTP takes
    /// per channel), uint8 other constants, uint16 activations.
    QdqW8A16,
    /// QDQ as above with uint8 activations.
    QdqW8A8,
    /// Mixed precision: QDQ (int8 per-channel weights, uint16 activations)
    /// on the weight MatMuls only; norms, RoPE, attention and the residual
    /// stream stay float (f16 on QNN HTP).
    QdqMixedW8A16,
    /// Mixed precision as above with uint8 activations.
    QdqMixedW8A8,
}

/// One graph file of an export, as recorded when it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphEntry {
    /// File name inside the manifest's directory.
    pub file: String,
    /// Tokens per run.
    pub tokens: usize,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Graph input names in order.
    pub inputs: Vec<String>,
    /// Graph output names in order.
    pub outputs: Vec<String>,
}

/// The description of an export directory (`sotto-onnx.json`): the model
/// the graphs come from, their fixed shapes and quantization, and one
/// [`GraphEntry`] per graph. Written by [`export_model`](super::export_model)
/// and the QDQ exports, checked by every backend that loads the graphs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version (`FORMAT_VERSION`, 1, when written by this build;
    /// [`Manifest::open`] refuses any other).
    pub format_version: u32,
    /// Model name or file the graphs were exported from.
    pub model: String,
    /// Where the tokenizer comes from (the source GGUF).
    pub tokenizer: String,
    /// Decoder layers of the model.
    pub n_layer: usize,
    /// Key/value heads per layer (the KV cache inputs' head axis).
    pub n_kv_head: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Logits per position.
    pub vocab_size: usize,
    /// KV cache slots of both graphs: the longest sequence, in tokens, the
    /// graphs can hold.
    pub context: usize,
    /// Tokens per run of the prefill graph.
    pub chunk: usize,
    /// How the graphs store weights and activations.
    pub quantization: Quantization,
    /// Per head, the source dimension of each stored key dimension: the
    /// graphs keep keys in NeoX order (see `export::rope_row_permutation`).
    pub key_dim_order: Vec<usize>,
    /// The prefill graph (`chunk` tokens per run).
    pub prefill: GraphEntry,
    /// The decode graph (one token per run).
    pub decode: GraphEntry,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io_names(model: &ModelProto) -> (Vec<String>, Vec<String>) {
    let g = model.graph.clone().unwrap_or_default();
    (
        g.input.iter().map(|v| v.name.clone()).collect(),
        g.output.iter().map(|v| v.name.clone()).collect(),
    )
}

impl GraphEntry {
    /// Writes `model` to `dir/file` and describes it.
    pub(crate) fn write(
        dir: &Path,
        file: &str,
        tokens: usize,
        model: &ModelProto,
    ) -> Result<GraphEntry> {
        let bytes = model.encode_to_vec();
        let path = dir.join(file);
        std::fs::write(&path, &bytes).map_err(|source| Error::Io { path, source })?;
        let (inputs, outputs) = io_names(model);
        Ok(GraphEntry {
            file: file.to_string(),
            tokens,
            sha256: sha256_hex(&bytes),
            inputs,
            outputs,
        })
    }

    /// Reads the graph, checks digest and I/O names, returns its bytes.
    pub fn load(&self, dir: &Path) -> Result<Vec<u8>> {
        let path = dir.join(&self.file);
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let digest = sha256_hex(&bytes);
        if digest != self.sha256 {
            return Err(Error::ManifestMismatch {
                graph: self.file.clone(),
                reason: format!("sha256 {digest}, manifest says {}", self.sha256),
            });
        }
        let model = ModelProto::decode(bytes.as_slice()).map_err(|e| Error::Decode {
            path,
            reason: e.to_string(),
        })?;
        let (inputs, outputs) = io_names(&model);
        if inputs != self.inputs || outputs != self.outputs {
            return Err(Error::ManifestMismatch {
                graph: self.file.clone(),
                reason: "input/output names differ".into(),
            });
        }
        Ok(bytes)
    }
}

impl Manifest {
    /// Where the manifest of export directory `dir` lives.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    /// Writes the manifest as pretty JSON into `dir`, replacing one that
    /// is there. Errors: [`Error::Io`] when the file cannot be written.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path_in(dir);
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, json).map_err(|source| Error::Io { path, source })
    }

    /// Reads and sanity-checks the manifest of `dir` (graphs are checked by
    /// [`GraphEntry::load`]).
    pub fn open(dir: &Path) -> Result<Manifest> {
        let path = Self::path_in(dir);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(Error::Manifest {
                path,
                reason: format!(
                    "format version {} (expected {FORMAT_VERSION})",
                    m.format_version
                ),
            });
        }
        if m.decode.tokens != 1 || m.prefill.tokens != m.chunk || m.chunk > m.context {
            return Err(Error::Manifest {
                path,
                reason: format!(
                    "chunk {} / decode {} / context {}",
                    m.chunk, m.decode.tokens, m.context
                ),
            });
        }
        Ok(m)
    }
}
