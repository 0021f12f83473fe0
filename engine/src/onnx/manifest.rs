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

pub const MANIFEST_FILE: &str = "sotto-onnx.json";
pub const FORMAT_VERSION: u32 = 1;

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphEntry {
    /// File name inside the manifest's directory.
    pub file: String,
    /// Tokens per run.
    pub tokens: usize,
    pub sha256: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Model name or file the graphs were exported from.
    pub model: String,
    /// Where the tokenizer comes from (the source GGUF).
    pub tokenizer: String,
    pub n_layer: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context: usize,
    pub chunk: usize,
    pub quantization: Quantization,
    /// Per head, the source dimension of each stored key dimension: the
    /// graphs keep keys in NeoX order (see `export::rope_row_permutation`).
    pub key_dim_order: Vec<usize>,
    pub prefill: GraphEntry,
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
    pub fn write(dir: &Path, file: &str, tokens: usize, model: &ModelProto) -> Result<GraphEntry> {
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
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

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
