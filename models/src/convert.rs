//! Rewriting a model as a GGUF file in another tensor type: what
//! `sotto convert` (Hugging Face folder to GGUF), `sotto quantize` (any
//! model to a block type) and quantization at load ([`Model::load_quantized`])
//! share, so all three produce the same bytes for the same source and type.
//!
//! The output is what llama.cpp's converter and quantizer would write:
//! - every metadata key of the source (a folder's are already the keys
//!   llama.cpp's converter writes: hyper-parameters, `tokenizer.ggml.*`, the
//!   chat template) except the layout bookkeeping (`general.alignment`),
//!   with `general.file_type` (llama.cpp's `llama_ftype`) and, for block
//!   types, `general.quantization_version` set;
//! - weight matrices dequantized and requantized row by row with the
//!   kernels' reference quantizers; vectors (norms, biases) and the tensors
//!   llama.cpp never quantizes stay F32. A matrix whose rows are not whole
//!   blocks of the target takes llama.cpp's fallback for that target (Q4_K
//!   to Q5_0, Q6_K to Q8_0, ...; F16 when the fallback does not fit either),
//!   as its quantizer does with `--pure`;
//! - a Llama-family folder keeps Hugging Face's Q/K row order and runs with
//!   NeoX rope pairs ([`crate::hf`]); the file gets llama.cpp's converter's
//!   row order back (each head's two halves interleaved), the order GGUF's
//!   Llama layout and llama.cpp's rope mode 0 expect.
//!
//! Tensors are written one at a time (each quantized by all cores), so a
//! file conversion holds one output tensor in memory, never the model.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sotto_kernels::quant::{aligned_bytes, dequantize_row, quantize_row, AlignedBytes, DType};

use crate::error::{Error, Result};
use crate::gguf::{
    data_offsets, encode_header, GgufFile, MetaValue, TableEntry, TensorInfo, DEFAULT_ALIGNMENT,
};
use crate::spec::RopeStyle;
use crate::Model;

/// llama.cpp's quantization format version (`GGML_QNT_VERSION`), written as
/// `general.quantization_version` into files with block types.
const QUANTIZATION_VERSION: u32 = 2;

/// A source model and the plan to write it as GGUF in one target type.
pub struct GgufConversion {
    source: GgufFile,
    source_path: PathBuf,
    target: DType,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PlannedTensor>,
    /// A folder source's `tokenizer.json` pipeline, for models loaded
    /// from the conversion ([`Model::load_quantized`]).
    hf_pipeline: Option<tokenizers::Tokenizer>,
}

/// One output tensor: where it comes from and how it is written.
struct PlannedTensor {
    /// Index into the source's tensor table.
    source: usize,
    /// Its type in the output.
    dtype: DType,
    /// Elements per row (ne0; 1 for a vector whose elements are permuted).
    row_len: usize,
    /// `Some(heads)`: rows reordered from Hugging Face's halves to GGUF's
    /// interleaved pairs, `heads` heads of equal size.
    interleave_heads: Option<usize>,
    /// Output bytes.
    n_bytes: usize,
}

impl std::fmt::Debug for GgufConversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufConversion")
            .field("source", &self.source_path)
            .field("target", &self.target)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufConversion {
    /// Plans writing the model at `source` (a GGUF file or a Hugging Face
    /// folder) with its weight matrices in `target`.
    pub fn plan(source: &Path, target: DType) -> Result<GgufConversion> {
        if source.is_dir() {
            let folder = crate::hf::open(source)?;
            let mut plan =
                Self::plan_parsed(folder.gguf, folder.rope_style, source.to_path_buf(), target)?;
            plan.hf_pipeline = Some(folder.tokenizer);
            return Ok(plan);
        }
        Self::plan_parsed(GgufFile::open(source)?, None, source.to_path_buf(), target)
    }

    /// What a file for llama.cpp needs and a folder's metadata view may
    /// lack: llama.cpp's name for the pre-tokenizer, and Llama 3 rope
    /// scaling as the `rope_freqs` tensor llama.cpp reads (not written
    /// here yet).
    fn check_llama_cpp_can_run(&self) -> Result<()> {
        let has = |key: &str| self.metadata.iter().any(|(k, _)| k == key);
        let value = |key: &str| {
            self.metadata.iter().find_map(|(k, v)| match v {
                MetaValue::String(s) if k == key => Some(s.as_str()),
                _ => None,
            })
        };
        if value("tokenizer.ggml.model") == Some("gpt2") && !has("tokenizer.ggml.pre") {
            return Err(Error::Convert {
                tensor: "tokenizer.ggml.pre".into(),
                reason: "the folder's tokenizer.json splits text in a way llama.cpp has no name \
                         for, so llama.cpp would tokenize the file differently"
                    .into(),
            });
        }
        if value("tokenizer.ggml.model") == Some("llama") && !has("tokenizer.ggml.scores") {
            return Err(Error::Convert {
                tensor: "tokenizer.ggml.scores".into(),
                reason: "llama.cpp merges a SentencePiece vocabulary by token scores, which a \
                         folder's tokenizer.json does not hold"
                    .into(),
            });
        }
        let scaling_llama3 = self.metadata.iter().any(|(k, v)| {
            k.ends_with(".rope.scaling.type") && *v == MetaValue::String("llama3".into())
        });
        if scaling_llama3 && self.source.tensor("rope_freqs.weight").is_none() {
            return Err(Error::Convert {
                tensor: "rope_freqs.weight".into(),
                reason: "llama.cpp reads Llama 3 rope scaling from this tensor, which a \
                         conversion from a folder does not write yet"
                    .into(),
            });
        }
        Ok(())
    }

    fn plan_parsed(
        source: GgufFile,
        rope_style: Option<RopeStyle>,
        source_path: PathBuf,
        target: DType,
    ) -> Result<GgufConversion> {
        let file_type = llama_ftype(target).ok_or_else(|| Error::UnsupportedTargetType {
            dtype: target,
            reason: "it is an activation type, with no weight kernels in Sotto or llama.cpp".into(),
        })?;
        let spec = crate::arch::decoder_spec(&source)?;
        let interleave = match rope_style {
            None => None,
            Some(style) if style == spec.rope_style => None,
            Some(RopeStyle::NeoX) if spec.rope_style == RopeStyle::Interleaved => {
                Some((spec.n_head, spec.n_kv_head))
            }
            Some(style) => {
                return Err(Error::Convert {
                    tensor: "attn_q/attn_k".into(),
                    reason: format!(
                        "the source's rope pairs are {style:?} and {}'s GGUF layout is {:?}: no \
                         row order conversion between them",
                        spec.arch, spec.rope_style
                    ),
                })
            }
        };
        let mut tensors = Vec::with_capacity(source.tensors().len());
        for (i, info) in source.tensors().iter().enumerate() {
            info.dtype()?; // the source must be readable
            let dtype = output_type(info, target);
            let heads = interleave.and_then(|(n_head, n_kv_head)| {
                let (_, field) = info.name.strip_prefix("blk.")?.split_once('.')?;
                match field {
                    "attn_q.weight" | "attn_q.bias" => Some(n_head),
                    "attn_k.weight" | "attn_k.bias" => Some(n_kv_head),
                    _ => None,
                }
            });
            let row_len = match (heads, info.dims.len()) {
                (Some(_), 1) => 1,
                _ => info.dims.first().copied().unwrap_or(1),
            };
            let n_rows = info.n_elements() / row_len.max(1);
            if let Some(h) = heads {
                if h == 0 || !n_rows.is_multiple_of(2 * h) {
                    return Err(Error::Convert {
                        tensor: info.name.clone(),
                        reason: format!(
                            "{n_rows} rows do not split into {h} heads of an even size"
                        ),
                    });
                }
            }
            let n_bytes = dtype
                .row_bytes(row_len)
                .and_then(|b| b.checked_mul(n_rows))
                .ok_or_else(|| Error::Convert {
                    tensor: info.name.clone(),
                    reason: format!("rows of {row_len} do not fit {dtype}"),
                })?;
            tensors.push(PlannedTensor {
                source: i,
                dtype,
                row_len,
                interleave_heads: heads,
                n_bytes,
            });
        }
        let mut metadata: Vec<(String, MetaValue)> = source
            .metadata()
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "general.alignment" | "general.file_type" | "general.quantization_version"
                )
            })
            .cloned()
            .collect();
        metadata.push(("general.file_type".into(), MetaValue::U32(file_type)));
        if target.block_size() > 1 {
            metadata.push((
                "general.quantization_version".into(),
                MetaValue::U32(QUANTIZATION_VERSION),
            ));
        }
        Ok(GgufConversion {
            source,
            source_path,
            target,
            metadata,
            tensors,
            hf_pipeline: None,
        })
    }

    /// The type asked for (matrices whose rows do not fit it take a
    /// fallback: [`GgufConversion::type_counts`]).
    pub fn target(&self) -> DType {
        self.target
    }

    /// How many output tensors each type holds.
    pub fn type_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(t.dtype.name()).or_insert(0) += 1;
        }
        counts
    }

    /// Size of the output file in bytes.
    pub fn output_size(&self) -> usize {
        let (header, offsets) = self.header();
        let last = self.tensors.len().checked_sub(1);
        header.len()
            + last.map_or(0, |i| {
                (offsets[i] as usize + self.tensors[i].n_bytes).div_ceil(DEFAULT_ALIGNMENT)
                    * DEFAULT_ALIGNMENT
            })
    }

    fn header(&self) -> (Vec<u8>, Vec<u64>) {
        let sizes: Vec<usize> = self.tensors.iter().map(|t| t.n_bytes).collect();
        let offsets = data_offsets(&sizes, DEFAULT_ALIGNMENT);
        let dims: Vec<Vec<u64>> = self
            .tensors
            .iter()
            .map(|t| self.info(t).dims.iter().map(|&d| d as u64).collect())
            .collect();
        let table: Vec<TableEntry<'_>> = self
            .tensors
            .iter()
            .zip(&offsets)
            .zip(&dims)
            .map(|((t, &offset), dims)| TableEntry {
                name: &self.info(t).name,
                dims,
                type_id: t.dtype.ggml_id(),
                offset,
            })
            .collect();
        let header = encode_header(3, DEFAULT_ALIGNMENT, &self.metadata, &table);
        (header, offsets)
    }

    fn info(&self, t: &PlannedTensor) -> &TensorInfo {
        &self.source.tensors()[t.source]
    }

    /// Writes the GGUF image to `out`, one tensor at a time; `path` names
    /// the destination in I/O errors.
    fn write_to(&self, out: &mut impl Write, path: &Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let (header, offsets) = self.header();
        out.write_all(&header).map_err(io)?;
        let mut written = 0u64;
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            let pad = offset - written;
            out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
            let data = self.convert_tensor(t)?;
            out.write_all(data.as_bytes()).map_err(io)?;
            written = offset + t.n_bytes as u64;
        }
        let end = written.div_ceil(DEFAULT_ALIGNMENT as u64) * DEFAULT_ALIGNMENT as u64;
        out.write_all(&vec![0u8; (end - written) as usize])
            .map_err(io)?;
        Ok(())
    }

    /// Writes the file at `path`: into a temporary file beside it, renamed
    /// over `path` once complete, so `path` is never a partial file.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        self.check_llama_cpp_can_run()?;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io { path: p, source }
        };
        let name = path.file_name().ok_or_else(|| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
        })?;
        // Unique per process and call: concurrent writers of one path each
        // rename a complete file of their own.
        static WRITES: AtomicUsize = AtomicUsize::new(0);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".{}-{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = path.with_file_name(tmp_name);
        let result = (|| {
            let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut out, &tmp)?;
            let file = out.into_inner().map_err(|e| Error::Io {
                path: tmp.clone(),
                source: e.into_error(),
            })?;
            file.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, path).map_err(io(path))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The converted model as a GGUF image held in memory.
    pub fn to_gguf(&self) -> Result<GgufFile> {
        let mut image = Vec::with_capacity(self.output_size());
        self.write_to(&mut image, &self.source_path)?;
        GgufFile::from_bytes(image)
    }

    /// One tensor converted: rows dequantized from the source, reordered
    /// if planned, quantized to the output type, split over the cores.
    fn convert_tensor(&self, t: &PlannedTensor) -> Result<AlignedBytes> {
        let info = self.info(t);
        let src_type = info.dtype()?;
        let src = self.source.tensor_bytes(info);
        let src_row = src_type
            .row_bytes(t.row_len)
            .ok_or_else(|| Error::Convert {
                tensor: info.name.clone(),
                reason: format!("rows of {} are not whole {src_type} blocks", t.row_len),
            })?;
        let dst_row = t.n_bytes / (info.n_elements() / t.row_len).max(1);
        let n_rows = info.n_elements() / t.row_len;
        let mut out = aligned_bytes(t.n_bytes);
        if n_rows == 0 || dst_row == 0 {
            return Ok(out);
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rows_per_chunk = n_rows.div_ceil(threads).max(1);
        let source_row = |r: usize| match t.interleave_heads {
            None => r,
            Some(heads) => {
                let per_head = n_rows / heads;
                let (head, within) = (r / per_head, r % per_head);
                head * per_head + crate::hf::hf_row_of_interleaved(within, per_head)
            }
        };
        let convert_rows = |first: usize, dst: &mut [u8]| -> Result<()> {
            let mut src_buf = aligned_bytes(src_row);
            let mut values = vec![0f32; t.row_len];
            for (k, dst) in dst.chunks_exact_mut(dst_row).enumerate() {
                let s = source_row(first + k) * src_row;
                src_buf.as_bytes_mut().copy_from_slice(&src[s..s + src_row]);
                let bad = |e: sotto_kernels::Error| Error::Dequantize {
                    tensor: info.name.clone(),
                    dtype: src_type.to_string(),
                    reason: e.to_string(),
                };
                dequantize_row(src_type, src_buf.as_bytes(), &mut values).map_err(bad)?;
                quantize_row(t.dtype, &values, dst).map_err(|e| Error::Convert {
                    tensor: info.name.clone(),
                    reason: format!("quantizing to {}: {e}", t.dtype),
                })?;
            }
            Ok(())
        };
        // Each worker gets whole rows of an aligned buffer, so every chunk
        // starts on a row (and block) boundary.
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let workers: Vec<_> = out
                .as_bytes_mut()
                .chunks_mut(rows_per_chunk * dst_row)
                .enumerate()
                .map(|(c, dst)| {
                    let convert_rows = &convert_rows;
                    scope.spawn(move || convert_rows(c * rows_per_chunk, dst))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(Error::Convert {
                            tensor: info.name.clone(),
                            reason: "a conversion worker panicked".into(),
                        })
                    })
                })
                .collect()
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(out)
    }
}

impl Model {
    /// Loads the model at `path` (GGUF file or Hugging Face folder) with its
    /// weight matrices quantized to `target` in memory: the same bytes
    /// [`GgufConversion::write_file`] writes for that type, so the model
    /// equals the one loaded from that file.
    pub fn load_quantized(path: impl AsRef<Path>, target: DType) -> Result<Model> {
        let mut plan = GgufConversion::plan(path.as_ref(), target)?;
        let gguf = plan.to_gguf()?;
        Model::build(gguf, None, plan.hf_pipeline.take())?.ready()
    }
}

/// The tensor type of `info` in a file whose weights are `target`: what
/// llama.cpp's quantizer (`--pure`) and converter choose.
fn output_type(info: &TensorInfo, target: DType) -> DType {
    let name = info.name.as_str();
    // llama.cpp quantizes matrices named `*weight` except norms, MoE router
    // gates and position/token-type embeddings; vectors are written F32.
    let matrix = info.dims.len() >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight";
    if !matrix {
        return DType::F32;
    }
    fitting_type(target, info.dims[0])
}

/// `target`, or llama.cpp's fallback when rows of `cols` are not whole
/// blocks of it (F16 when the fallback does not fit either).
fn fitting_type(target: DType, cols: usize) -> DType {
    let fits = |t: DType| cols.is_multiple_of(t.block_size());
    if fits(target) {
        return target;
    }
    let fallback = match target {
        DType::Q2_K | DType::Q3_K => DType::Q4_0,
        DType::Q4_K => DType::Q5_0,
        DType::Q5_K => DType::Q5_1,
        DType::Q6_K => DType::Q8_0,
        DType::IQ4_XS => DType::IQ4_NL,
        other => other,
    };
    if fits(fallback) {
        fallback
    } else {
        DType::F16
    }
}

/// llama.cpp's `llama_ftype` for a file whose weights are `target` (the
/// `_S` variant where the k-quants have several mixes: no tensor is
/// promoted); `None` for the activation-only types, which no file holds.
fn llama_ftype(target: DType) -> Option<u32> {
    Some(match target {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::Q5_0 => 8,
        DType::Q5_1 => 9,
        DType::Q2_K => 10,
        DType::Q3_K => 11,
        DType::Q4_K => 14,
        DType::Q5_K => 16,
        DType::Q6_K => 18,
        DType::IQ4_NL => 25,
        DType::IQ4_XS => 30,
        DType::BF16 => 32,
        DType::Q8_1 | DType::Q8_K => return None,
    })
}

/// The weight type named `name` (ggml's names, any case: `q4_0`, `Q4_K`,
/// `f16`, `bf16`).
pub fn parse_weight_type(name: &str) -> Option<DType> {
    DType::ALL
        .iter()
        .copied()
        .find(|d| d.is_weight_type() && d.name().eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{tiny_model_random, write_temp, TinyDims, TINY_ARCHITECTURES};

    /// Rows that are whole blocks of every 32- and 256-element type.
    fn dims() -> TinyDims {
        TinyDims::WHOLE_BLOCKS
    }

    fn dequantized(gguf: &GgufFile, name: &str) -> Vec<f32> {
        let info = gguf.tensor(name).unwrap();
        let mut out = vec![0f32; info.n_elements()];
        let dtype = info.dtype().unwrap();
        let row_bytes = dtype.row_bytes(info.dims[0]).unwrap();
        let bytes = gguf.tensor_bytes(info);
        for (src, dst) in bytes.chunks(row_bytes).zip(out.chunks_mut(info.dims[0])) {
            let mut aligned = aligned_bytes(row_bytes);
            aligned.as_bytes_mut().copy_from_slice(src);
            dequantize_row(dtype, aligned.as_bytes(), dst).unwrap();
        }
        out
    }

    fn convert(source: GgufFile, rope: Option<RopeStyle>, target: DType) -> GgufFile {
        GgufConversion::plan_parsed(source, rope, PathBuf::from("memory"), target)
            .unwrap()
            .to_gguf()
            .unwrap()
    }

    #[test]
    fn every_architecture_converts_and_loads_in_every_weight_type() {
        for arch in TINY_ARCHITECTURES {
            let bytes = tiny_model_random(arch, dims(), 7).to_bytes();
            for &target in DType::ALL.iter().filter(|d| d.is_weight_type()) {
                let source = GgufFile::from_bytes(bytes.clone()).unwrap();
                let out = convert(source, None, target);
                let source = GgufFile::from_bytes(bytes.clone()).unwrap();
                for info in out.tensors() {
                    let want = if info.dims.len() >= 2 {
                        target
                    } else {
                        DType::F32
                    };
                    assert_eq!(info.dtype().unwrap(), want, "{arch} {target} {}", info.name);
                    // The reference quantizer's error on uniform ±0.5 values:
                    // a quarter of a 2-bit step at worst.
                    let (a, b) = (
                        dequantized(&source, &info.name),
                        dequantized(&out, &info.name),
                    );
                    let worst = a
                        .iter()
                        .zip(&b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                    assert!(worst < 0.3, "{arch} {target} {}: {worst}", info.name);
                }
                assert_eq!(out.get_u32("general.file_type"), llama_ftype(target));
                assert_eq!(
                    out.get_u32("general.quantization_version").is_some(),
                    target.block_size() > 1
                );
                let model =
                    Model::from_gguf(out).unwrap_or_else(|e| panic!("{arch} {target}: {e}"));
                assert_eq!(model.spec.arch, arch);
            }
        }
    }

    #[test]
    fn converting_to_f32_keeps_every_value_and_key() {
        let bytes = tiny_model_random("llama", dims(), 3).to_bytes();
        let source = GgufFile::from_bytes(bytes.clone()).unwrap();
        let out = convert(GgufFile::from_bytes(bytes).unwrap(), None, DType::F32);
        for (key, value) in source.metadata() {
            if key != "general.alignment" && key != "general.file_type" {
                assert_eq!(out.get(key), Some(value), "{key}");
            }
        }
        for info in source.tensors() {
            assert_eq!(
                dequantized(&source, &info.name),
                dequantized(&out, &info.name),
                "{}",
                info.name
            );
        }
    }

    /// A folder's NeoX halves become GGUF's interleaved pairs: llama.cpp's
    /// converter's permutation (each head's rows `[2, hd/2]` transposed to
    /// `[hd/2, 2]`), written here as the index arithmetic of numpy's
    /// reshape/swapaxes rather than the converter's own loop.
    #[test]
    fn neox_rows_are_interleaved_per_head() {
        let d = dims();
        let bytes = tiny_model_random("llama", d, 5).to_bytes();
        let source = GgufFile::from_bytes(bytes.clone()).unwrap();
        let out = convert(
            GgufFile::from_bytes(bytes).unwrap(),
            Some(RopeStyle::NeoX),
            DType::F32,
        );
        for (name, heads) in [
            ("blk.1.attn_q.weight", d.n_head),
            ("blk.1.attn_k.weight", d.n_kv_head),
        ] {
            let (src, dst) = (dequantized(&source, name), dequantized(&out, name));
            let cols = d.d_model;
            let hd = d.head_dim;
            for head in 0..heads {
                for half in 0..2 {
                    for j in 0..hd / 2 {
                        let from = head * hd + half * hd / 2 + j;
                        let to = head * hd + j * 2 + half;
                        assert_eq!(
                            &dst[to * cols..(to + 1) * cols],
                            &src[from * cols..(from + 1) * cols],
                            "{name} head {head} half {half} j {j}"
                        );
                    }
                }
            }
        }
        let v = "blk.1.attn_v.weight";
        assert_eq!(dequantized(&source, v), dequantized(&out, v));
    }

    #[test]
    fn ragged_rows_fall_back_as_llama_cpp_does() {
        assert_eq!(fitting_type(DType::Q4_K, 576), DType::Q5_0);
        assert_eq!(fitting_type(DType::Q5_K, 576), DType::Q5_1);
        assert_eq!(fitting_type(DType::Q6_K, 576), DType::Q8_0);
        assert_eq!(fitting_type(DType::Q2_K, 576), DType::Q4_0);
        assert_eq!(fitting_type(DType::IQ4_XS, 576), DType::IQ4_NL);
        assert_eq!(fitting_type(DType::Q4_K, 1536), DType::Q4_K);
        assert_eq!(fitting_type(DType::Q4_0, 40), DType::F16);
        assert_eq!(fitting_type(DType::Q6_K, 40), DType::F16);
        assert_eq!(fitting_type(DType::BF16, 7), DType::BF16);
    }

    #[test]
    fn activation_types_and_bad_paths_are_typed_errors() {
        let bytes = tiny_model_random("llama", dims(), 1).to_bytes();
        for target in [DType::Q8_1, DType::Q8_K] {
            let err = GgufConversion::plan_parsed(
                GgufFile::from_bytes(bytes.clone()).unwrap(),
                None,
                PathBuf::from("memory"),
                target,
            )
            .unwrap_err();
            assert!(matches!(err, Error::UnsupportedTargetType { .. }), "{err}");
        }
        let path = write_temp("convert-src", &bytes).unwrap();
        let plan = GgufConversion::plan(&path, DType::Q8_0).unwrap();
        let missing_dir = path.with_file_name("no-such-dir").join("out.gguf");
        assert!(matches!(
            plan.write_file(&missing_dir),
            Err(Error::Io { .. })
        ));
        let out = path.with_file_name("converted.gguf");
        plan.write_file(&out).unwrap();
        assert_eq!(
            std::fs::metadata(&out).unwrap().len() as usize,
            plan.output_size()
        );
        let from_file = GgufFile::open(&out).unwrap();
        let in_memory = plan.to_gguf().unwrap();
        for info in in_memory.tensors() {
            assert_eq!(
                from_file.tensor_bytes(from_file.tensor(&info.name).unwrap()),
                in_memory.tensor_bytes(info)
            );
        }
        assert!(matches!(
            GgufConversion::plan(&path.with_file_name("absent.gguf"), DType::F16),
            Err(Error::Io { .. })
        ));
        assert_eq!(parse_weight_type("Q4_k"), Some(DType::Q4_K));
        assert_eq!(parse_weight_type("q8_1"), None);
        assert_eq!(parse_weight_type("q9"), None);
    }
}
