//! A model exported as a directory: `prefill.onnx`, `decode.onnx` and the
//! manifest, ready for the ort backend.

use std::path::Path;

use sotto_models::Model;

use super::export::{export_decoder, GraphShape, WeightFormat};
use super::manifest::{GraphEntry, Manifest, Quantization, FORMAT_VERSION};
use super::proto::ModelProto;
use super::{Error, Result};

/// Export settings.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Tokens of the prefill graph.
    pub chunk: usize,
    /// KV cache slots of both graphs.
    pub context: usize,
    /// How the weight matrices are stored in the graphs.
    pub format: WeightFormat,
}

/// Writes both graphs of `model` and their manifest into `dir`.
pub fn export_model(model: &Model, dir: &Path, opts: ExportOptions) -> Result<Manifest> {
    let spec = &model.spec;
    let prefill = export_decoder(
        spec,
        &model.weights,
        GraphShape {
            tokens: opts.chunk,
            context: opts.context,
        },
        opts.format,
    )?;
    let decode = export_decoder(
        spec,
        &model.weights,
        GraphShape {
            tokens: 1,
            context: opts.context,
        },
        opts.format,
    )?;
    let quantization = match opts.format {
        WeightFormat::Float => Quantization::Float,
        WeightFormat::MatMulNBits => Quantization::MatMulNBits,
    };
    write_bundle(model, dir, opts, quantization, &prefill, &decode)
}

/// Writes two already built graphs and their manifest into `dir`.
pub fn write_bundle(
    model: &Model,
    dir: &Path,
    opts: ExportOptions,
    quantization: Quantization,
    prefill: &ModelProto,
    decode: &ModelProto,
) -> Result<Manifest> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let spec = &model.spec;
    let prefill = GraphEntry::write(dir, "prefill.onnx", opts.chunk, prefill)?;
    let decode = GraphEntry::write(dir, "decode.onnx", 1, decode)?;
    let source = model
        .gguf
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<memory>".into());
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model: spec.name.clone().unwrap_or_else(|| spec.arch.clone()),
        tokenizer: source,
        n_layer: spec.n_layer,
        n_kv_head: spec.n_kv_head,
        head_dim: spec.head_dim,
        vocab_size: spec.vocab_size,
        context: opts.context,
        chunk: opts.chunk,
        quantization,
        key_dim_order: super::export::rope_row_permutation(spec, 1),
        prefill,
        decode,
    };
    manifest.save(dir)?;
    Ok(manifest)
}
