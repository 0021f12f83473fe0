//! Weight tensors as zero-copy views into the model file, grouped the way the
//! decoder description ([`crate::spec::DecoderSpec`]) walks them.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use sotto_kernels::quant::DType;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Storage, TensorInfo};
use crate::spec::{RopeFactors, RopeSpec};

/// One weight matrix (or vector) backed by the memory-mapped file.
#[derive(Clone)]
pub struct Weight {
    /// The tensor's name in the file.
    pub name: String,
    /// Its element type.
    pub dtype: DType,
    /// `[rows, cols]`, row-major; `cols` is ggml's ne0 (the contiguous axis).
    /// A 1-D tensor of `n` elements is `[1, n]`.
    pub shape: [usize; 2],
    storage: Arc<Storage>,
    range: Range<usize>,
}

impl fmt::Debug for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weight")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.range.len())
            .finish()
    }
}

impl Weight {
    /// The weight described by `info` in `gguf`. Tensors of rank 3 or 4 are
    /// accepted only when their extra dimensions are 1.
    pub fn from_gguf(gguf: &GgufFile, info: &TensorInfo) -> Result<Weight> {
        let cols = info.dims[0];
        let rows = info.dims.get(1).copied().unwrap_or(1);
        if info.dims.iter().skip(2).any(|&d| d != 1) {
            return Err(Error::BadTensor {
                tensor: info.name.clone(),
                reason: format!("expected a matrix, found dims {:?}", info.dims),
            });
        }
        Ok(Weight {
            name: info.name.clone(),
            dtype: info.dtype()?,
            shape: [rows, cols],
            storage: Arc::clone(gguf.tensor_storage(info)),
            range: gguf.tensor_range(info),
        })
    }

    /// A matrix held in memory as f32 rather than in the model file (a
    /// LoRA pair read from safetensors, a matrix with an adapter merged in).
    pub fn from_f32(name: String, shape: [usize; 2], values: Vec<f32>) -> Result<Weight> {
        if shape[0].checked_mul(shape[1]) != Some(values.len()) {
            return Err(Error::BadTensor {
                tensor: name,
                reason: format!("{} values do not fill {shape:?}", values.len()),
            });
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_bytes(name, DType::F32, shape, bytes)
    }

    /// A matrix of `dtype` held in memory (ggml block layout, row after row).
    pub fn from_bytes(
        name: String,
        dtype: DType,
        shape: [usize; 2],
        bytes: Vec<u8>,
    ) -> Result<Weight> {
        let want = dtype
            .row_bytes(shape[1])
            .and_then(|rb| rb.checked_mul(shape[0]));
        if want != Some(bytes.len()) {
            return Err(Error::BadTensor {
                tensor: name,
                reason: format!("{} bytes do not hold {shape:?} of {dtype:?}", bytes.len()),
            });
        }
        let range = 0..bytes.len();
        Ok(Weight {
            name,
            dtype,
            shape,
            storage: Arc::new(Storage::Owned(bytes)),
            range,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.shape[0]
    }
    /// Number of columns (elements per row).
    pub fn cols(&self) -> usize {
        self.shape[1]
    }
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    /// The raw (possibly quantized) bytes, ggml block layout, row after row.
    pub fn data(&self) -> &[u8] {
        self.storage.bytes().get(self.range.clone()).unwrap_or(&[])
    }

    /// Whether this weight's bytes are those `gguf`'s own file holds (not
    /// a copy made at load: an adapter merged in, a conversion), so that
    /// what is derived from them can be keyed by the file.
    pub fn is_in_file(&self, gguf: &GgufFile) -> bool {
        gguf.path().is_some() && gguf.is_main_storage(&self.storage)
    }

    /// Tells the OS the file's pages of this tensor are not needed for now
    /// (after a backend copied them into its own layout), so they leave the
    /// process's resident set. Still readable: a later read brings them back.
    pub fn release_pages(&self) {
        self.storage.release(self.range.clone());
    }

    /// Asks for the file's pages of this tensor on 2 MiB pages: a matrix a
    /// backend streams from the file for every token (one it does not
    /// repack). Advice only, and only before its pages are first read.
    pub fn ask_huge_pages(&self) {
        self.storage.ask_huge(self.range.clone());
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols()).unwrap_or(0)
    }

    /// The raw bytes of row `row`, if it exists.
    pub fn row(&self, row: usize) -> Option<&[u8]> {
        let rb = self.row_bytes();
        let start = row.checked_mul(rb)?;
        self.data().get(start..start.checked_add(rb)?)
    }

    /// Dequantized copy of the whole tensor, row-major.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let rb = self.row_bytes();
        let cols = self.cols();
        let data = self.data();
        if rb == 0 || data.len() != rb * self.rows() {
            return Err(self.dequant_error(format!(
                "{} bytes do not hold {:?} of {:?}",
                data.len(),
                self.shape,
                self.dtype
            )));
        }
        let mut out = vec![0f32; self.n_elements()];
        // Float types are converted here so norms and embeddings never
        // depend on the quant kernels; block types go through their
        // reference dequantizer in sotto-kernels.
        match self.dtype {
            DType::F32 => {
                for (d, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DType::F16 => {
                for (d, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                    *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            DType::BF16 => {
                for (d, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                    *d = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            _ => {
                for (src, dst) in data.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
                    sotto_kernels::quant::dequantize_row(self.dtype, src, dst)
                        .map_err(|e| self.dequant_error(e.to_string()))?;
                }
            }
        }
        Ok(out)
    }

    fn dequant_error(&self, reason: String) -> Error {
        Error::Dequantize {
            tensor: self.name.clone(),
            dtype: format!("{:?}", self.dtype),
            reason,
        }
    }

    /// Rows `rows` of this matrix as a matrix of their own, on the same
    /// bytes (how fused projections are split at load). Named
    /// `{name}[start..end]`.
    pub fn row_view(&self, rows: Range<usize>) -> Result<Weight> {
        let rb = self.row_bytes();
        let bad = || Error::BadTensor {
            tensor: self.name.clone(),
            reason: format!("rows {rows:?} of a {:?} matrix", self.shape),
        };
        if rows.start > rows.end || rows.end > self.rows() || rb == 0 {
            return Err(bad());
        }
        let start = self.range.start + rows.start * rb;
        let end = self.range.start + rows.end * rb;
        if end > self.range.end {
            return Err(bad());
        }
        Ok(Weight {
            name: format!("{}[{}..{}]", self.name, rows.start, rows.end),
            dtype: self.dtype,
            shape: [rows.end - rows.start, self.cols()],
            storage: Arc::clone(&self.storage),
            range: start..end,
        })
    }

    /// Fails with [`Error::ShapeMismatch`] unless the shape is `[rows, cols]`.
    pub fn expect_shape(&self, rows: usize, cols: usize) -> Result<()> {
        if self.shape == [rows, cols] {
            Ok(())
        } else {
            Err(Error::ShapeMismatch {
                tensor: self.name.clone(),
                expected: vec![rows, cols],
                found: self.shape.to_vec(),
            })
        }
    }
}

/// A projection `y = W·x (+ b)`: `W` is `[out, in]`, `b` has `out` values.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `W`, `[out, in]`.
    pub weight: Weight,
    /// Dequantized at load (biases are a few kilobytes).
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    /// Output width.
    pub fn rows(&self) -> usize {
        self.weight.rows()
    }
    /// Input width.
    pub fn cols(&self) -> usize {
        self.weight.cols()
    }
}

/// Weights of one transformer block, in the order the block uses them.
/// Shapes are `[rows, cols]` with `cols` the input width. Fused tensors of
/// the file (`attn_qkv`, Phi-3's gate-up `ffn_up`) appear here already split
/// into row views, so executors see one linear per projection. The optional
/// norms are present exactly when the layer's [`crate::spec::LayerSpec`]
/// asks for them (checked at load).
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// `[1, d_model]`
    pub attn_norm: Weight,
    /// `[n_head·head_dim, d_model]`
    pub attn_q: Linear,
    /// `[n_kv_head·head_dim, d_model]`
    pub attn_k: Linear,
    /// `[n_kv_head·head_dim, d_model]`
    pub attn_v: Linear,
    /// `[1, head_dim]` when `qk_norm`
    pub attn_q_norm: Option<Weight>,
    /// `[1, head_dim]` when `qk_norm`
    pub attn_k_norm: Option<Weight>,
    /// `[d_model, n_head·head_dim]`
    pub attn_output: Linear,
    /// `[1, d_model]` when `post_attention_norm`
    pub post_attention_norm: Option<Weight>,
    /// `[1, d_model]`
    pub ffn_norm: Weight,
    /// `[ffn_dim, d_model]`
    pub ffn_gate: Linear,
    /// `[ffn_dim, d_model]`
    pub ffn_up: Linear,
    /// `[d_model, ffn_dim]`
    pub ffn_down: Linear,
    /// `[1, d_model]` when `post_ffn_norm`
    pub post_ffw_norm: Option<Weight>,
}

impl LayerWeights {
    /// The layer's seven projections in execution order: Q, K, V, output,
    /// gate, up, down.
    pub fn linears(&self) -> [&Linear; 7] {
        [
            &self.attn_q,
            &self.attn_k,
            &self.attn_v,
            &self.attn_output,
            &self.ffn_gate,
            &self.ffn_up,
            &self.ffn_down,
        ]
    }
}

/// All weights of a decoder.
#[derive(Debug, Clone)]
pub struct DecoderWeights {
    /// `[vocab_size, d_model]`
    pub token_embd: Weight,
    /// One entry per block, in order.
    pub layers: Vec<LayerWeights>,
    /// `[1, d_model]`
    pub output_norm: Weight,
    /// `[vocab_size, d_model]`; the same data as `token_embd` when tied.
    pub output: Linear,
    /// `[1, n_rot / 2]` divisors of the rope frequencies, present when a
    /// layer's rope says [`RopeFactors::Fixed`] (`rope_freqs.weight`).
    /// Use [`DecoderWeights::rope_inv_freqs`] rather than reading them.
    pub rope_freqs: Option<Weight>,
    /// `[1, n_rot / 2]` each, present for [`RopeFactors::ShortLong`]
    /// (`rope_factors_short.weight`, `rope_factors_long.weight`).
    pub rope_factors_short: Option<Weight>,
    /// The long-context half of [`RopeFactors::ShortLong`].
    pub rope_factors_long: Option<Weight>,
}

impl DecoderWeights {
    /// The inverse frequencies of `rope` for a KV cache of `capacity`
    /// positions: the spec's (scaling included) divided by the file's
    /// factors, as ggml's rope does with its `freq_factors`.
    pub fn rope_inv_freqs(
        &self,
        rope: &RopeSpec,
        n_rot: usize,
        capacity: usize,
    ) -> Result<Vec<f64>> {
        let mut freqs = rope.inv_freqs(n_rot);
        let factors = match rope.factors {
            RopeFactors::None => None,
            RopeFactors::Fixed => Some(("rope_freqs.weight", &self.rope_freqs)),
            RopeFactors::ShortLong { .. } if rope.uses_long_factors(capacity) => {
                Some(("rope_factors_long.weight", &self.rope_factors_long))
            }
            RopeFactors::ShortLong { .. } => {
                Some(("rope_factors_short.weight", &self.rope_factors_short))
            }
        };
        if let Some((name, w)) = factors {
            let w = w.as_ref().ok_or_else(|| Error::MissingTensor {
                tensor: name.to_string(),
            })?;
            let factors = w.to_f32()?;
            if factors.len() != freqs.len() {
                return Err(Error::ShapeMismatch {
                    tensor: w.name.clone(),
                    expected: vec![1, freqs.len()],
                    found: w.shape.to_vec(),
                });
            }
            for (f, d) in freqs.iter_mut().zip(factors) {
                *f /= d as f64;
            }
        }
        Ok(freqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    #[test]
    fn weight_views_rows_of_the_file_and_dequantizes_f32() {
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let bytes = GgufWriter::new()
            .tensor_f32("m", &[4, 3], &values)
            .tensor_f32("v", &[4], &values[..4])
            .to_bytes();
        let gguf = GgufFile::from_bytes(bytes).unwrap();
        let m = Weight::from_gguf(&gguf, gguf.tensor("m").unwrap()).unwrap();
        assert_eq!(m.shape, [3, 4]);
        assert_eq!(m.row_bytes(), 16);
        assert_eq!(
            m.row(1).unwrap(),
            gguf.tensor_bytes(gguf.tensor("m").unwrap())
                .get(16..32)
                .unwrap()
        );
        assert!(m.row(3).is_none());
        assert_eq!(m.to_f32().unwrap(), values);
        let halves: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let g16 = GgufFile::from_bytes(GgufWriter::new().tensor("h", &[4], 1, halves).to_bytes())
            .unwrap();
        let h = Weight::from_gguf(&g16, g16.tensor("h").unwrap()).unwrap();
        assert_eq!(h.to_f32().unwrap(), vec![1.5, -2.0, 0.25, 8.0]);
        let rows = m.row_view(1..3).unwrap();
        assert_eq!(rows.shape, [2, 4]);
        assert_eq!(rows.name, "m[1..3]");
        assert_eq!(rows.to_f32().unwrap(), values[4..12].to_vec());
        assert_eq!(
            rows.row_view(1..2).unwrap().to_f32().unwrap(),
            values[8..12].to_vec()
        );
        // A reversed range is one of the bad inputs under test.
        #[allow(clippy::reversed_empty_ranges)]
        for bad in [2..4, 3..2] {
            assert!(
                matches!(m.row_view(bad.clone()), Err(Error::BadTensor { .. })),
                "{bad:?}"
            );
        }
        let v = Weight::from_gguf(&gguf, gguf.tensor("v").unwrap()).unwrap();
        assert_eq!(v.shape, [1, 4]);
        let err = v.expect_shape(1, 5).unwrap_err();
        assert!(
            matches!(err, Error::ShapeMismatch { ref tensor, .. } if tensor == "v"),
            "{err}"
        );
    }
}
