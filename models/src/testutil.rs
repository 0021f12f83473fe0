//! Synthetic model files for tests (this crate's and the workspace's): a
//! tiny but complete GGUF of any supported architecture, in that family's
//! tensor layout, with a byte-level BPE tokenizer, built with
//! [`GgufWriter`] so tests can break any part of it.

use crate::gguf::{GgufWriter, MetaValue};

/// Dimensions of the synthetic decoder.
#[derive(Debug, Clone, Copy)]
pub struct TinyDims {
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
}

impl Default for TinyDims {
    fn default() -> Self {
        TinyDims {
            n_layer: 2,
            d_model: 8,
            n_head: 2,
            n_kv_head: 1,
            head_dim: 4,
            ffn_dim: 16,
        }
    }
}

impl TinyDims {
    /// Two layers of heads of 64 (GQA 2:1) over a 256-wide residual: rows
    /// that are whole blocks of every 32- and 256-element type.
    pub const WHOLE_BLOCKS: TinyDims = TinyDims {
        n_layer: 2,
        d_model: 256,
        n_head: 4,
        n_kv_head: 2,
        head_dim: 64,
        ffn_dim: 512,
    };
}

/// Special tokens of the synthetic vocabulary, after the 256 byte tokens.
pub const TINY_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Merges of the synthetic vocabulary (byte-level text).
pub const TINY_MERGES: [(&str, &str); 4] = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w")];

/// The GPT-2 byte-to-character table (`bytes_to_unicode`).
pub fn byte_level_chars() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 0x100u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                let c = char::from_u32(next).unwrap_or('?');
                next += 1;
                c
            }
        })
        .collect()
}

/// Tokens, token types and merges of the synthetic vocabulary: the 256
/// byte-level characters, one token per merge result, then the specials.
pub fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = byte_level_chars().into_iter().map(String::from).collect();
    let mut types = vec![1i32; tokens.len()];
    for (l, r) in TINY_MERGES {
        tokens.push(format!("{l}{r}"));
        types.push(1);
    }
    for s in TINY_SPECIALS {
        tokens.push(s.to_string());
        types.push(3);
    }
    let merges = TINY_MERGES
        .iter()
        .map(|(l, r)| format!("{l} {r}"))
        .collect();
    (tokens, types, merges)
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) / 16.0)
        .collect()
}

/// Pseudo-random values uniform in `[-scale, scale)` (splitmix64 of
/// `seed` and the index): weights without the repeating rows of
/// [`tiny_model`], whose logits tie exactly, for tests that compare argmaxes
/// across backends.
fn random_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut z = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Every architecture [`tiny_model`] can write.
pub const TINY_ARCHITECTURES: [&str; 7] = [
    "llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "granite",
];

/// A complete tiny model of architecture `arch` (one of
/// [`TINY_ARCHITECTURES`]), in that family's tensor layout: Qwen 2's QKV
/// biases, QK-norm (Qwen 3, Gemma 3), post-norms and tied output (Gemma),
/// Phi-3's fused `attn_qkv` and gate-up `ffn_up`, Granite's scale keys.
pub fn tiny_model(arch: &str, dims: TinyDims) -> GgufWriter {
    tiny_model_with(arch, dims, &mut values)
}

/// `w`'s f32 matrices (2-D tensors) quantized, the i-th to `types[i %
/// types.len()]`: a file mixing quant types as llama.cpp's Q4_K_M ones do.
/// An error names a matrix whose rows are not whole blocks of its type.
pub fn quantize_matrices(
    w: &mut GgufWriter,
    types: &[sotto_kernels::quant::DType],
) -> Result<(), String> {
    use sotto_kernels::quant::quantize_row;
    let matrices = w.tensors.iter_mut().filter(|t| t.dims.len() == 2);
    for (t, &dtype) in matrices.zip(types.iter().cycle()) {
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let values: Vec<f32> = t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let row_bytes = dtype
            .row_bytes(cols)
            .ok_or_else(|| format!("{}: {cols} columns are not whole {dtype} blocks", t.name))?;
        let mut data = vec![0u8; rows * row_bytes];
        for (src, dst) in values.chunks(cols).zip(data.chunks_mut(row_bytes)) {
            quantize_row(dtype, src, dst).map_err(|e| format!("{}: {e}", t.name))?;
        }
        (t.type_id, t.data) = (dtype as u32, data);
    }
    Ok(())
}

/// [`tiny_model`] with pseudo-random weights drawn from `seed`, uniform in
/// ±0.5 (norm weights around 1, as trained models have them).
pub fn tiny_model_random(arch: &str, dims: TinyDims, seed: u64) -> GgufWriter {
    let mut draw = |n: usize, tensor: usize| {
        let v = random_values(n, seed.wrapping_mul(1000).wrapping_add(tensor as u64), 0.5);
        if n == dims.d_model || n == dims.head_dim {
            v.into_iter().map(|x| 1.0 + x * 0.4).collect()
        } else {
            v
        }
    };
    tiny_model_with(arch, dims, &mut draw)
}

fn tiny_model_with(
    arch: &str,
    dims: TinyDims,
    values: &mut dyn FnMut(usize, usize) -> Vec<f32>,
) -> GgufWriter {
    let (tokens, types, merges) = tiny_vocab();
    let vocab = tokens.len();
    let d = dims.d_model as u64;
    let q = (dims.n_head * dims.head_dim) as u64;
    let kv = (dims.n_kv_head * dims.head_dim) as u64;
    let f = dims.ffn_dim as u64;
    let k = |s: &str| format!("{arch}.{s}");
    let mut w = GgufWriter::new()
        .kv("general.architecture", MetaValue::string(arch))
        .kv("general.name", MetaValue::string("tiny"))
        .kv(&k("block_count"), MetaValue::U32(dims.n_layer as u32))
        .kv(&k("embedding_length"), MetaValue::U32(dims.d_model as u32))
        .kv(
            &k("attention.head_count"),
            MetaValue::U32(dims.n_head as u32),
        )
        .kv(
            &k("attention.head_count_kv"),
            MetaValue::U32(dims.n_kv_head as u32),
        )
        .kv(
            &k("attention.key_length"),
            MetaValue::U32(dims.head_dim as u32),
        )
        .kv(
            &k("feed_forward_length"),
            MetaValue::U32(dims.ffn_dim as u32),
        )
        .kv(&k("context_length"), MetaValue::U32(128))
        .kv(&k("rope.freq_base"), MetaValue::F32(10_000.0))
        .kv(
            &k("rope.dimension_count"),
            MetaValue::U32(dims.head_dim as u32),
        )
        .kv(&k("attention.layer_norm_rms_epsilon"), MetaValue::F32(1e-5))
        .kv("tokenizer.ggml.model", MetaValue::string("gpt2"))
        .kv("tokenizer.ggml.pre", MetaValue::string("smollm"))
        .kv("tokenizer.ggml.tokens", MetaValue::str_array(&tokens))
        .kv("tokenizer.ggml.token_type", MetaValue::i32_array(&types))
        .kv("tokenizer.ggml.merges", MetaValue::str_array(&merges))
        .kv(
            "tokenizer.ggml.bos_token_id",
            MetaValue::U32(vocab as u32 - 2),
        )
        .kv(
            "tokenizer.ggml.eos_token_id",
            MetaValue::U32(vocab as u32 - 1),
        )
        .kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
    match arch {
        "gemma2" | "gemma3" => w = w.kv(&k("attention.sliding_window"), MetaValue::U32(4)),
        "granite" => {
            w = w
                .kv(&k("logit_scale"), MetaValue::F32(4.0))
                .kv(&k("residual_scale"), MetaValue::F32(0.5))
                .kv(&k("embedding_scale"), MetaValue::F32(3.0))
                .kv(&k("attention.scale"), MetaValue::F32(0.25))
        }
        _ => {}
    }
    let qk_norm = matches!(arch, "gemma3" | "qwen3");
    let post_norms = matches!(arch, "gemma2" | "gemma3");
    let fused = arch == "phi3";
    let tied = matches!(arch, "gemma2" | "gemma3");
    let mut seed = 0;
    let mut t = |w: GgufWriter, name: &str, dims: &[u64]| {
        seed += 1;
        let n = dims.iter().product::<u64>() as usize;
        w.tensor_f32(name, dims, &values(n, seed))
    };
    w = t(w, "token_embd.weight", &[d, vocab as u64]);
    for il in 0..dims.n_layer {
        let n = |s: &str| format!("blk.{il}.{s}.weight");
        w = t(w, &n("attn_norm"), &[d]);
        if fused {
            w = t(w, &n("attn_qkv"), &[d, q + 2 * kv]);
        } else {
            w = t(w, &n("attn_q"), &[d, q]);
            w = t(w, &n("attn_k"), &[d, kv]);
            w = t(w, &n("attn_v"), &[d, kv]);
        }
        if arch == "qwen2" {
            let b = |s: &str| format!("blk.{il}.{s}.bias");
            w = t(w, &b("attn_q"), &[q]);
            w = t(w, &b("attn_k"), &[kv]);
            w = t(w, &b("attn_v"), &[kv]);
        }
        w = t(w, &n("attn_output"), &[q, d]);
        w = t(w, &n("ffn_norm"), &[d]);
        if fused {
            w = t(w, &n("ffn_up"), &[d, 2 * f]);
        } else {
            w = t(w, &n("ffn_gate"), &[d, f]);
            w = t(w, &n("ffn_up"), &[d, f]);
        }
        w = t(w, &n("ffn_down"), &[f, d]);
        if qk_norm {
            w = t(w, &n("attn_q_norm"), &[dims.head_dim as u64]);
            w = t(w, &n("attn_k_norm"), &[dims.head_dim as u64]);
        }
        if post_norms {
            w = t(w, &n("post_attention_norm"), &[d]);
            w = t(w, &n("post_ffw_norm"), &[d]);
        }
    }
    w = t(w, "output_norm.weight", &[d]);
    if !tied {
        w = t(w, "output.weight", &[d, vocab as u64]);
    }
    w
}

/// A file [`write_temp`] wrote, alone in a fresh folder under the system's
/// temporary directory; the folder goes, with whatever a test put next to
/// the file, when this drops, so no test leaves files behind.
#[derive(Debug)]
pub struct TempFile {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TempFile {
    /// Where the file is.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl std::ops::Deref for TempFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::path::Path> for TempFile {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

/// Writes `bytes` to `<name>.gguf` in a fresh folder named
/// `sotto-models-test-<name>-…` under the system's temporary directory.
pub fn write_temp(name: &str, bytes: &[u8]) -> std::io::Result<TempFile> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("sotto-models-test-{name}-"))
        .tempdir()?;
    let path = dir.path().join(format!("{name}.gguf"));
    std::fs::write(&path, bytes)?;
    Ok(TempFile { path, _dir: dir })
}

/// The rank of [`tiny_lora_adapter`].
pub const TINY_LORA_RANK: usize = 2;

/// A LoRA adapter as llama.cpp writes it (`general.type = adapter`,
/// `adapter.lora.alpha` 4, rank [`TINY_LORA_RANK`]) for a [`tiny_model`] of
/// `arch` and `dims`: pseudo-random updates of `blk.0.attn_q` and
/// `blk.1.ffn_down`, drawn from `seed`.
pub fn tiny_lora_adapter(arch: &str, dims: TinyDims, seed: u64) -> GgufWriter {
    let d = dims.d_model as u64;
    let q = (dims.n_head * dims.head_dim) as u64;
    let f = dims.ffn_dim as u64;
    let r = TINY_LORA_RANK as u64;
    let draw = |n: u64, k: u64| random_values(n as usize, seed * 10 + k, 0.5);
    GgufWriter::new()
        .kv("general.architecture", MetaValue::string(arch))
        .kv("general.type", MetaValue::string("adapter"))
        .kv("adapter.type", MetaValue::string("lora"))
        .kv("adapter.lora.alpha", MetaValue::F32(4.0))
        .tensor_f32("blk.0.attn_q.weight.lora_a", &[d, r], &draw(d * r, 1))
        .tensor_f32("blk.0.attn_q.weight.lora_b", &[r, q], &draw(r * q, 2))
        .tensor_f32("blk.1.ffn_down.weight.lora_a", &[f, r], &draw(f * r, 3))
        .tensor_f32("blk.1.ffn_down.weight.lora_b", &[r, d], &draw(r * d, 4))
}
