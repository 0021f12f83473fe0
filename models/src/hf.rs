//! Hugging Face model folders (`config.json`, `*.safetensors`,
//! `tokenizer.json`, `tokenizer_config.json`), read into the same model
//! description as a GGUF file.
//!
//! The folder is translated into what a GGUF file of the same model holds,
//! and everything after that (architecture registry, shape checks, weights,
//! tokenizer, chat template) is the GGUF path unchanged:
//! - `config.json` becomes the architecture's GGUF metadata keys
//!   (`llama.block_count`, ...), the way llama.cpp's converter writes them;
//! - each safetensors tensor becomes a tensor-table entry that points into
//!   its memory-mapped shard (zero copy; F32, F16 and BF16), renamed to its
//!   GGUF name. Hugging Face's `[out, in]` row-major matrices are GGUF's
//!   `ne = [in, out]`: the same bytes;
//! - `tokenizer.json` becomes the `tokenizer.ggml.*` keys (vocabulary,
//!   merges, token types, pre-tokenizer), `tokenizer_config.json` the chat
//!   template and special tokens.
//!
//! One difference is kept rather than copied away: llama.cpp's converter
//! permutes the Q/K rows of Llama-family checkpoints so that rope rotates
//! adjacent pairs (ggml mode 0); a folder keeps Hugging Face's halves, so
//! its decoder rotates NeoX-style pairs `(x[i], x[i + n/2])` instead, which
//! is the same computation on the unpermuted rows.
//!
//! [`open`] gives the view; [`crate::Model::load`] takes a folder path directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use sotto_kernels::quant::GgmlType;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, MetaType, MetaValue, Storage, StrArray, TensorInfo};
use crate::spec::{RopeScaling, RopeSpec, RopeStyle};

/// Within one head of `head_dim` Q or K rows, the Hugging Face row that
/// llama.cpp's converter stores at GGUF row `row`: it interleaves each
/// head's two halves, so GGUF rows `(2i, 2i + 1)` are Hugging Face rows
/// `(i, i + head_dim / 2)`. The one statement of that order for everything
/// that moves rows between the layouts (convert, LoRA adapters).
pub(crate) fn hf_row_of_interleaved(row: usize, head_dim: usize) -> usize {
    (row % 2) * (head_dim / 2) + row / 2
}

/// The files of a folder and the GGUF view built from them.
#[derive(Debug)]
pub struct Folder {
    /// The folder as a GGUF file: metadata and a tensor table into the shards.
    pub gguf: GgufFile,
    /// The decoder's rope pairs differ from the GGUF architecture's default
    /// (Llama-family rows are not permuted in a folder).
    pub rope_style: Option<RopeStyle>,
    /// `tokenizer.json` as the `tokenizers` crate loads it: the encoding
    /// pipeline ([`crate::Tokenizer::from_hf_pipeline`]).
    pub tokenizer: tokenizers::Tokenizer,
}

/// `dir` as a GGUF view; [`crate::Model::load`] builds a model from it, and
/// tools that show or rewrite a model file (inspect, convert) read it here.
pub fn open(dir: &Path) -> Result<Folder> {
    let config = read_json(&dir.join("config.json"))?;
    let arch = Arch::of(&config)?;
    let mut meta = Meta::default();
    meta.str("general.architecture", arch.gguf_name);
    // The name `transformers` saved, else the folder's (what a Hub
    // download is named after).
    let name = config
        .get("_name_or_path")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| dir.file_name().and_then(|n| n.to_str()));
    if let Some(name) = name {
        meta.str("general.name", name);
    }
    let computed = arch.hparams(&config, &mut meta)?;
    tokenizer_metadata(dir, &config, &mut meta)?;
    let (tensors, parts) = tensors(dir, &arch, computed)?;
    let gguf = GgufFile::from_parts(dir.to_path_buf(), meta.0, tensors, parts)?;
    Ok(Folder {
        gguf,
        rope_style: arch.rope_style,
        tokenizer: encoding_pipeline(&dir.join("tokenizer.json"))?,
    })
}

/// A JSON file the folder must have: missing is [`Error::HfFolder`] (the
/// folder is incomplete), unreadable [`Error::Io`].
/// `tokenizer.json` loaded by the `tokenizers` crate, with any truncation
/// or padding it configures turned off (the engine encodes whole prompts).
fn encoding_pipeline(path: &Path) -> Result<tokenizers::Tokenizer> {
    let mut t = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::HfFolder {
        file: path.to_path_buf(),
        reason: format!("the tokenizers crate cannot load it: {e}"),
    })?;
    t.with_padding(None);
    t.with_truncation(None).map_err(|e| Error::HfFolder {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(t)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::HfFolder {
                file: path.to_path_buf(),
                reason: "missing: a Hugging Face model folder needs it".into(),
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| Error::HfFolder {
        file: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// GGUF metadata under construction, in insertion order.
#[derive(Default)]
struct Meta(Vec<(String, MetaValue)>);

impl Meta {
    fn put(&mut self, key: &str, v: MetaValue) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), v));
    }
    fn str(&mut self, key: &str, v: &str) {
        self.put(key, MetaValue::String(v.to_string()));
    }
    fn u32(&mut self, key: &str, v: u32) {
        self.put(key, MetaValue::U32(v));
    }
    fn f32(&mut self, key: &str, v: f32) {
        self.put(key, MetaValue::F32(v));
    }
    fn bool(&mut self, key: &str, v: bool) {
        self.put(key, MetaValue::Bool(v));
    }
}

/// What one `model_type` needs: its GGUF architecture, its config keys and
/// its tensor names.
struct Arch {
    model_type: String,
    gguf_name: &'static str,
    rope_style: Option<RopeStyle>,
    /// Gemma's RMSNorm multiplies by `1 + weight`: a folder stores
    /// `weight`, GGUF (and the decoder) the sum.
    norm_plus_one: bool,
}

/// Gemma's layer norms in `transformers` (four per layer, the second
/// after attention, not before the FFN as Llama's
/// `post_attention_layernorm` is).
const GEMMA_NORMS: [(&str, &str); 6] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    (
        "post_attention_layernorm.weight",
        "post_attention_norm.weight",
    ),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
];

impl Arch {
    fn of(config: &Value) -> Result<Arch> {
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| config_error("model_type", "missing"))?;
        let (gguf_name, rope_style) = match model_type {
            // llama.cpp's converter permutes these families' Q/K rows.
            "llama" | "mistral" => ("llama", Some(RopeStyle::NeoX)),
            "qwen2" => ("qwen2", None),
            "qwen3" => ("qwen3", None),
            "granite" => ("granite", Some(RopeStyle::NeoX)),
            "phi3" => ("phi3", None),
            "gemma2" => ("gemma2", None),
            "gemma3_text" => ("gemma3", None),
            other => {
                return Err(config_error(
                    "model_type",
                    &format!(
                        "{other:?} is not supported from a folder (llama, mistral, granite, \
                         qwen2, qwen3, phi3, gemma2, gemma3_text)"
                    ),
                ))
            }
        };
        Ok(Arch {
            model_type: model_type.to_string(),
            gguf_name,
            rope_style,
            norm_plus_one: gguf_name.starts_with("gemma"),
        })
    }

    /// The architecture's hyper-parameters as llama.cpp's converter writes
    /// them.
    /// Also returns the F32 tensors llama.cpp's converter computes from
    /// `config.json` (Phi-3's rope factors), as (GGUF name, values).
    fn hparams(&self, c: &Value, meta: &mut Meta) -> Result<Vec<(String, Vec<f32>)>> {
        let a = self.gguf_name;
        let n_head = req_u32(c, "num_attention_heads")?;
        let d_model = req_u32(c, "hidden_size")?;
        meta.u32(
            &format!("{a}.block_count"),
            req_u32(c, "num_hidden_layers")?,
        );
        meta.u32(&format!("{a}.embedding_length"), d_model);
        meta.u32(
            &format!("{a}.feed_forward_length"),
            req_u32(c, "intermediate_size")?,
        );
        meta.u32(&format!("{a}.attention.head_count"), n_head);
        meta.u32(
            &format!("{a}.attention.head_count_kv"),
            opt_u32(c, "num_key_value_heads")?.unwrap_or(n_head),
        );
        if let Some(ctx) = opt_u32(c, "max_position_embeddings")? {
            meta.u32(&format!("{a}.context_length"), ctx);
        }
        meta.f32(
            &format!("{a}.attention.layer_norm_rms_epsilon"),
            opt_f32(c, "rms_norm_eps")?.unwrap_or(1e-6),
        );
        meta.f32(
            &format!("{a}.rope.freq_base"),
            opt_f32(c, "rope_theta")?.unwrap_or(10_000.0),
        );
        let head_dim = head_dim(c)?;
        meta.u32(&format!("{a}.attention.key_length"), head_dim);
        meta.u32(&format!("{a}.attention.value_length"), head_dim);
        meta.u32(&format!("{a}.rope.dimension_count"), head_dim);
        meta.u32(&format!("{a}.vocab_size"), req_u32(c, "vocab_size")?);
        let window = opt_u32(c, "sliding_window")?;
        match (self.model_type.as_str(), window) {
            // Mistral-style: every layer, unless the config says it is off.
            ("mistral", Some(w))
                if c.get("use_sliding_window").and_then(Value::as_bool) != Some(false) =>
            {
                meta.u32(&format!("{a}.attention.sliding_window"), w);
            }
            ("gemma2" | "gemma3_text" | "phi3", Some(w)) => {
                meta.u32(&format!("{a}.attention.sliding_window"), w);
            }
            _ => {}
        }
        let computed = rope_scaling(c, a, meta)?;
        if a == "granite" {
            for (key, gguf_key) in [
                ("embedding_multiplier", "embedding_scale"),
                ("residual_multiplier", "residual_scale"),
                ("attention_multiplier", "attention.scale"),
                ("logits_scaling", "logit_scale"),
            ] {
                if let Some(x) = opt_f32(c, key)? {
                    meta.f32(&format!("{a}.{gguf_key}"), x);
                }
            }
        }
        if self.norm_plus_one {
            self.gemma_hparams(c, meta)?;
        }
        // Gemma names it `hidden_activation` (its `hidden_act` is legacy).
        let (act_key, want): (&str, &[&str]) = if self.norm_plus_one {
            ("hidden_activation", &["gelu_pytorch_tanh", "gelu_tanh"])
        } else {
            ("hidden_act", &["silu"])
        };
        if let Some(act) = c.get(act_key).and_then(Value::as_str) {
            if !want.contains(&act) {
                return Err(config_error(
                    act_key,
                    &format!("{act:?}: {} uses {}", self.model_type, want[0]),
                ));
            }
        }
        Ok(computed)
    }

    /// Gemma 2 and 3: soft-caps, which layers slide, the local layers' rope
    /// base, as llama.cpp's converter writes them.
    fn gemma_hparams(&self, c: &Value, meta: &mut Meta) -> Result<()> {
        let a = self.gguf_name;
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            match (opt_f32(c, key)?, a) {
                (Some(cap), _) => meta.f32(&format!("{a}.{key}"), cap),
                // Gemma 2's defaults (50, 30) apply only where the key is
                // absent; a null turns the cap off.
                (None, "gemma2") if c.get(key).is_some() => meta.f32(&format!("{a}.{key}"), 0.0),
                _ => {}
            }
        }
        if a == "gemma3" && opt_f32(c, "attn_logit_softcapping")?.is_some() {
            return Err(config_error(
                "attn_logit_softcapping",
                "Gemma 3 has no attention soft-cap",
            ));
        }
        if let Some(base) = opt_f32(c, "rope_local_base_freq")? {
            meta.f32(&format!("{a}.rope.freq_base_swa"), base);
        }
        if let Some(types) = c.get("layer_types").and_then(Value::as_array) {
            let flags = types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(MetaValue::Bool(true)),
                    Some("full_attention") => Ok(MetaValue::Bool(false)),
                    _ => Err(config_error(
                        "layer_types",
                        &format!("{t} is not a layer kind"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            meta.put(
                &format!("{a}.attention.sliding_window_pattern"),
                MetaValue::Array(MetaType::Bool, flags),
            );
        } else if let Some(period) = opt_u32(c, "sliding_window_pattern")? {
            meta.u32(&format!("{a}.attention.sliding_window_pattern"), period);
        }
        Ok(())
    }

    /// The GGUF name of a Hugging Face tensor, or `None` for one the decoder
    /// does not read (rotary caches some checkpoints store).
    fn gguf_tensor_name(&self, hf: &str) -> Option<String> {
        const GLOBAL: [(&str, &str); 3] = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ];
        const LAYER: [(&str, &str); 17] = [
            // Phi-3's fused projections (`ffn_up` holds gate then up).
            ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
            ("mlp.gate_up_proj.weight", "ffn_up.weight"),
            ("self_attn.q_proj.weight", "attn_q.weight"),
            ("self_attn.k_proj.weight", "attn_k.weight"),
            ("self_attn.v_proj.weight", "attn_v.weight"),
            ("self_attn.o_proj.weight", "attn_output.weight"),
            ("self_attn.q_proj.bias", "attn_q.bias"),
            ("self_attn.k_proj.bias", "attn_k.bias"),
            ("self_attn.v_proj.bias", "attn_v.bias"),
            ("self_attn.q_norm.weight", "attn_q_norm.weight"),
            ("self_attn.k_norm.weight", "attn_k_norm.weight"),
            ("mlp.gate_proj.weight", "ffn_gate.weight"),
            ("mlp.up_proj.weight", "ffn_up.weight"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
            ("input_layernorm.weight", "attn_norm.weight"),
            ("post_attention_layernorm.weight", "ffn_norm.weight"),
            ("self_attn.rotary_emb.inv_freq", ""),
        ];
        if let Some((_, g)) = GLOBAL.iter().find(|(h, _)| *h == hf) {
            return Some((*g).to_string());
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, field) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let norms: &[(&str, &str)] = if self.norm_plus_one {
            &GEMMA_NORMS
        } else {
            &[]
        };
        let (_, g) = norms
            .iter()
            .chain(LAYER.iter())
            .find(|(h, _)| *h == field)?;
        (!g.is_empty()).then(|| format!("blk.{layer}.{g}"))
    }
}

/// `rope_scaling` of `config.json` as llama.cpp's converter writes it:
/// `linear` as `{arch}.rope.scaling.*` keys, Llama 3's (`llama3`) and
/// Phi-3's (`longrope`) as the per-pair frequency divisor tensors it
/// computes, returned as (GGUF name, values). Other kinds are refused
/// rather than run unscaled.
fn rope_scaling(c: &Value, a: &str, meta: &mut Meta) -> Result<Vec<(String, Vec<f32>)>> {
    let s = match c.get("rope_scaling") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(s) => s,
    };
    // `transformers` has called the kind both `type` and `rope_type`.
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| config_error("rope_scaling", &format!("{s} names no rope_type")))?;
    let num = |key: &str| {
        opt_f32(s, key)?.ok_or_else(|| config_error(&format!("rope_scaling.{key}"), "missing"))
    };
    match kind {
        "default" => {}
        "linear" => {
            meta.str(&format!("{a}.rope.scaling.type"), "linear");
            meta.f32(&format!("{a}.rope.scaling.factor"), num("factor")?);
        }
        // As llama.cpp's converter writes it: each rotated pair's
        // frequency divisor, in a `rope_freqs` tensor (which the decoder
        // reads as GGUF files give it, and a converted file carries).
        "llama3" => {
            let original = opt_u32(s, "original_max_position_embeddings")?.ok_or_else(|| {
                config_error("rope_scaling.original_max_position_embeddings", "missing")
            })?;
            let scaled = RopeSpec {
                scaling: RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_context: original as usize,
                },
                ..RopeSpec::plain(opt_f32(c, "rope_theta")?.unwrap_or(10_000.0))
            };
            let n_rot = head_dim(c)? as usize;
            let plain = RopeSpec::plain(scaled.theta).inv_freqs(n_rot);
            let divisors = plain
                .iter()
                .zip(scaled.inv_freqs(n_rot))
                .map(|(p, s)| (p / s) as f32)
                .collect();
            return Ok(vec![("rope_freqs.weight".into(), divisors)]);
        }
        // Phi-3's: per-pair frequency divisors for short and long contexts,
        // and a factor on cos and sin that llama.cpp's converter derives
        // from the context extension when the config does not give it.
        "longrope" | "su" if a == "phi3" => {
            let original = opt_u32(s, "original_max_position_embeddings")?
                .or(opt_u32(c, "original_max_position_embeddings")?)
                .ok_or_else(|| config_error("original_max_position_embeddings", "missing"))?;
            let context = req_u32(c, "max_position_embeddings")?;
            let extension = context as f32 / original as f32;
            let attn_factor = match opt_f32(s, "attention_factor")? {
                Some(f) => f,
                None if extension > 1.0 => (1.0 + extension.ln() / (original as f32).ln()).sqrt(),
                None => 1.0,
            };
            meta.u32(
                &format!("{a}.rope.scaling.original_context_length"),
                original,
            );
            meta.f32(&format!("{a}.rope.scaling.attn_factor"), attn_factor);
            let factors = |key: &str| -> Result<Vec<f32>> {
                s.get(key)
                    .and_then(Value::as_array)
                    .and_then(|v| v.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                    .ok_or_else(|| {
                        config_error(&format!("rope_scaling.{key}"), "not an array of numbers")
                    })
            };
            return Ok(vec![
                ("rope_factors_long.weight".into(), factors("long_factor")?),
                ("rope_factors_short.weight".into(), factors("short_factor")?),
            ]);
        }
        other => {
            return Err(config_error(
                "rope_scaling",
                &format!(
                    "{other:?} is not supported from a folder (linear, llama3, Phi-3's longrope)"
                ),
            ))
        }
    }
    Ok(Vec::new())
}

/// `head_dim`, else `hidden_size / num_attention_heads`.
fn head_dim(c: &Value) -> Result<u32> {
    match opt_u32(c, "head_dim")? {
        Some(h) => Ok(h),
        None => {
            let n_head = req_u32(c, "num_attention_heads")?;
            if n_head == 0 {
                return Err(config_error("num_attention_heads", "must be positive"));
            }
            Ok(req_u32(c, "hidden_size")? / n_head)
        }
    }
}

fn config_error(key: &str, reason: &str) -> Error {
    Error::HfConfig {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn opt_u32(c: &Value, key: &str) -> Result<Option<u32>> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| config_error(key, &format!("{v} is not a count"))),
    }
}

fn req_u32(c: &Value, key: &str) -> Result<u32> {
    opt_u32(c, key)?.ok_or_else(|| config_error(key, "missing"))
}

fn opt_f32(c: &Value, key: &str) -> Result<Option<f32>> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| config_error(key, &format!("{v} is not a number"))),
    }
}

/// The shards of the folder, memory-mapped, and every tensor the decoder
/// reads with its shard and offset.
/// Tensor-table entries, each with the index of the shard it lives in.
type ShardTensors = Vec<(TensorInfo, usize)>;

fn tensors(
    dir: &Path,
    arch: &Arch,
    computed: Vec<(String, Vec<f32>)>,
) -> Result<(ShardTensors, Vec<Arc<Storage>>)> {
    let index = dir.join("model.safetensors.index.json");
    // With an index, each tensor is read from the shard it names, and every
    // tensor it names must be there.
    let mut weight_map: HashMap<String, String> = HashMap::new();
    let files: Vec<PathBuf> = if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::HfFolder {
                file: index.clone(),
                reason: "no weight_map object".into(),
            })?;
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| Error::HfFolder {
                file: index.clone(),
                reason: format!("weight_map[{tensor:?}] is not a file name"),
            })?;
            if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                return Err(Error::HfFolder {
                    file: index.clone(),
                    reason: format!(
                        "weight_map[{tensor:?}] = {shard:?} is not a file in the folder"
                    ),
                });
            }
            weight_map.insert(tensor.clone(), shard.to_string());
        }
        let mut names: Vec<&str> = weight_map.values().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names.iter().map(|n| dir.join(n)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut parts = Vec::with_capacity(files.len());
    let mut out = Vec::new();
    let mut found: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (part, file) in files.iter().enumerate() {
        if !file.exists() {
            return Err(Error::HfFolder {
                file: file.clone(),
                reason: "missing (listed by the index, or the only weights file)".into(),
            });
        }
        let storage = Arc::new(Storage::map(file, false)?);
        let bytes = storage.bytes();
        let (header_len, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::HfFolder {
                file: file.clone(),
                reason: format!("not a safetensors file: {e}"),
            })?;
        // Offsets in the header count from the end of the 8-byte length and
        // the JSON header.
        let data_start = 8 + header_len;
        let shard_name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        for (name, info) in header.tensors() {
            let Some(gguf_name) = arch.gguf_tensor_name(&name) else {
                continue;
            };
            if !weight_map.is_empty() {
                match weight_map.get(&name) {
                    Some(listed) if listed == shard_name => {
                        found.insert(name.clone());
                    }
                    // A copy the index does not point at is not read.
                    _ => continue,
                }
            }
            let ggml_type = match info.dtype {
                safetensors::Dtype::F32 => GgmlType::F32,
                safetensors::Dtype::F16 => GgmlType::F16,
                safetensors::Dtype::BF16 => GgmlType::BF16,
                other => {
                    return Err(Error::HfFolder {
                        file: file.clone(),
                        reason: format!(
                            "tensor {name}: dtype {other:?} is not supported (F32, F16, BF16)"
                        ),
                    })
                }
            };
            let dims: Vec<usize> = info.shape.iter().rev().copied().collect();
            let (start, end) = info.data_offsets;
            out.push((
                TensorInfo {
                    name: gguf_name,
                    dims: if dims.is_empty() { vec![1] } else { dims },
                    ggml_type,
                    offset: data_start + start,
                    n_bytes: end.saturating_sub(start),
                },
                part,
            ));
        }
        parts.push(storage);
    }
    let mut owned = Computed::default();
    if arch.norm_plus_one {
        owned.add_one_to_norms(&mut out, &parts)?;
    }
    for (name, values) in computed {
        if out.iter().any(|(t, _)| t.name == name) {
            continue; // the checkpoint stores it: the stored one is read
        }
        let dims = vec![values.len()];
        out.push((owned.push(name, dims, &values), parts.len()));
    }
    if !owned.buf.is_empty() {
        parts.push(Arc::new(Storage::Owned(owned.buf)));
    }
    let mut lost: Vec<(&String, &String)> = weight_map
        .iter()
        .filter(|(name, _)| arch.gguf_tensor_name(name).is_some() && !found.contains(*name))
        .collect();
    lost.sort();
    if let Some((name, shard)) = lost.first() {
        return Err(Error::HfFolder {
            file: dir.join(shard),
            reason: format!(
                "tensor {name} is not in it, though the index says so ({} such tensors)",
                lost.len()
            ),
        });
    }
    Ok((out, parts))
}

/// F32 tensors made at open (Gemma's norms plus one, Phi-3's rope factors)
/// in one buffer, which becomes the folder's last part.
#[derive(Default)]
struct Computed {
    buf: Vec<u8>,
}

impl Computed {
    /// Appends `values` as tensor `name` and returns its table entry.
    fn push(&mut self, name: String, dims: Vec<usize>, values: &[f32]) -> TensorInfo {
        let offset = self.buf.len();
        for v in values {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        TensorInfo {
            name,
            dims,
            ggml_type: GgmlType::F32,
            offset,
            n_bytes: values.len() * 4,
        }
    }

    /// Gemma's norm weights as the decoder multiplies by them (`1 + weight`);
    /// their entries in `tensors` then point into this buffer, the part
    /// after `parts`.
    fn add_one_to_norms(
        &mut self,
        tensors: &mut ShardTensors,
        parts: &[Arc<Storage>],
    ) -> Result<()> {
        for (info, part) in tensors.iter_mut() {
            if !info.name.ends_with("norm.weight") {
                continue;
            }
            let bytes = parts[*part]
                .bytes()
                .get(info.offset..info.offset + info.n_bytes)
                .ok_or_else(|| Error::BadTensor {
                    tensor: info.name.clone(),
                    reason: "its data runs past the end of its file".into(),
                })?;
            let n: usize = info.dims.iter().product();
            let mut values = vec![0f32; n];
            let bad = |e: sotto_kernels::Error| Error::BadTensor {
                tensor: info.name.clone(),
                reason: e.to_string(),
            };
            let dtype = info.ggml_type.dtype().map_err(bad)?;
            sotto_kernels::quant::dequantize_row(dtype, bytes, &mut values).map_err(bad)?;
            values.iter_mut().for_each(|v| *v += 1.0);
            let name = std::mem::take(&mut info.name);
            let dims = std::mem::take(&mut info.dims);
            *info = self.push(name, dims, &values);
            *part = parts.len();
        }
        Ok(())
    }
}

/// `tokenizer.json` (and the special tokens of `tokenizer_config.json`,
/// `generation_config.json` and `config.json`) as the `tokenizer.ggml.*`
/// keys llama.cpp's converter writes.
fn tokenizer_metadata(dir: &Path, config: &Value, meta: &mut Meta) -> Result<()> {
    let path = dir.join("tokenizer.json");
    let tj = read_json(&path)?;
    let bad = |reason: String| Error::HfFolder {
        file: path.clone(),
        reason,
    };
    let model = tj.get("model").ok_or_else(|| bad("no model".into()))?;
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "BPE" {
        return Err(bad(format!(
            "model type {kind:?}: only BPE vocabularies are read yet"
        )));
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no model.vocab".into()))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab.len()];
    let place = |text: &str, id: &Value, tokens: &mut Vec<Option<String>>| -> Result<()> {
        let id = id
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .ok_or_else(|| bad(format!("token {text:?} has id {id}")))?;
        if id >= tokens.len() {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some(text.to_string());
        Ok(())
    };
    for (text, id) in vocab {
        place(text, id, &mut tokens)?;
    }
    let mut types: HashMap<usize, i32> = HashMap::new();
    for added in tj
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(text), Some(id)) = (
            added.get("content").and_then(Value::as_str),
            added.get("id"),
        ) else {
            return Err(bad(format!("added token {added} without content or id")));
        };
        place(text, id, &mut tokens)?;
        let special = added
            .get("special")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // llama.cpp's token types: 3 control, 4 user-defined.
        if let Some(i) = id.as_u64() {
            types.insert(i as usize, if special { 3 } else { 4 });
        }
    }
    // The model's vocabulary size can exceed the tokenizer's (padding rows
    // of the embedding): llama.cpp's converter fills them with [PAD{i}].
    let vocab_size = opt_u32(config, "vocab_size")?.map_or(tokens.len(), |v| v as usize);
    if tokens.len() < vocab_size {
        tokens.resize(vocab_size, None);
    }
    let mut token_types = Vec::with_capacity(tokens.len());
    let mut texts = StrArray::with_capacity(tokens.len(), 0);
    // SentencePiece-style BPE (Llama 2, Mistral, Gemma): `▁` for spaces and
    // `<0xNN>` byte tokens, which decode as bytes, not as GPT-2's byte map.
    let sentencepiece = model.get("byte_fallback").and_then(Value::as_bool) == Some(true);
    for (i, t) in tokens.into_iter().enumerate() {
        match t {
            Some(t) => {
                let byte = sentencepiece
                    && t.len() == 6
                    && t.starts_with("<0x")
                    && t.ends_with('>')
                    && u8::from_str_radix(&t[3..5], 16).is_ok();
                // llama.cpp's token types: 1 normal, 6 byte.
                let default = if byte { 6 } else { 1 };
                texts.push(&t);
                token_types.push(MetaValue::I32(types.get(&i).copied().unwrap_or(default)));
            }
            None => {
                texts.push(&format!("[PAD{i}]"));
                token_types.push(MetaValue::I32(5));
            }
        }
    }
    let merges: StrArray = model
        .get("merges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) => match (
                pair.first().and_then(Value::as_str),
                pair.get(1).and_then(Value::as_str),
            ) {
                (Some(l), Some(r)) if pair.len() == 2 => Ok(format!("{l} {r}")),
                _ => Err(bad(format!("merge {m} is not a pair of strings"))),
            },
            other => Err(bad(format!("merge {other} is not a string or a pair"))),
        })
        .collect::<Result<_>>()?;
    let by_text: HashMap<String, u32> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    if sentencepiece {
        meta.str("tokenizer.ggml.model", "llama");
        // Whether a text run gets a leading `▁`, as its normalizer or
        // pre-tokenizer says (decoding drops that space again).
        let json = tj.to_string();
        meta.bool(
            "tokenizer.ggml.add_space_prefix",
            json.contains("\"prepend_scheme\":\"always\"")
                || json.contains("\"prepend_scheme\":\"first\"")
                || json.contains("\"type\":\"Prepend\""),
        );
    } else {
        meta.str("tokenizer.ggml.model", "gpt2");
    }
    // The folder encodes through tokenizer.json itself; llama.cpp's name
    // for its pre-tokenizer matters only to a GGUF written from it, and is
    // left out when there is none (`sotto convert` refuses such a folder).
    if let Some(pre) = pre_tokenizer_name(&tj).filter(|_| !sentencepiece) {
        meta.str("tokenizer.ggml.pre", pre);
    }
    meta.put("tokenizer.ggml.tokens", MetaValue::Strings(texts));
    meta.put(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaType::I32, token_types),
    );
    meta.put("tokenizer.ggml.merges", MetaValue::Strings(merges));

    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() {
        read_json(&tc_path)?
    } else {
        Value::Null
    };
    let special = |key: &str| -> Option<u32> {
        let text = match tc.get(key) {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
            _ => None,
        };
        text.and_then(|t| by_text.get(t).copied())
    };
    // generation_config.json (what `generate` stops on) before config.json;
    // either may hold a list of ids, whose first is the end of sequence.
    let gc_path = dir.join("generation_config.json");
    let gc = if gc_path.exists() {
        read_json(&gc_path)?
    } else {
        Value::Null
    };
    let id_of = |key: &str| {
        [&gc, config].into_iter().find_map(|c| {
            let v = c.get(key)?;
            let first = match v {
                Value::Array(ids) => ids.first()?,
                v => v,
            };
            first.as_u64().and_then(|i| u32::try_from(i).ok())
        })
    };
    if let Some(bos) = special("bos_token").or_else(|| id_of("bos_token_id")) {
        meta.u32("tokenizer.ggml.bos_token_id", bos);
    }
    if let Some(eos) = special("eos_token").or_else(|| id_of("eos_token_id")) {
        meta.u32("tokenizer.ggml.eos_token_id", eos);
    }
    if let Some(unk) = special("unk_token") {
        meta.u32("tokenizer.ggml.unknown_token_id", unk);
    }
    if let Some(pad) = special("pad_token") {
        meta.u32("tokenizer.ggml.padding_token_id", pad);
    }
    meta.bool("tokenizer.ggml.add_bos_token", adds_bos(&tj, &tc));
    match tc.get("chat_template") {
        Some(Value::String(t)) => meta.str("tokenizer.chat_template", t),
        Some(Value::Array(named)) => {
            let default = named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str);
            if let Some(t) = default {
                meta.str("tokenizer.chat_template", t);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether encoding adds BOS: the post-processor's template says so for
/// fast tokenizers (it is what `transformers` runs); else
/// `add_bos_token`.
fn adds_bos(tj: &Value, tc: &Value) -> bool {
    let starts_with_special = |pp: &Value| {
        pp.get("single")
            .and_then(Value::as_array)
            .and_then(|s| s.first())
            .is_some_and(|first| first.get("SpecialToken").is_some())
    };
    match tj.get("post_processor") {
        Some(pp) if pp.get("type").and_then(Value::as_str) == Some("TemplateProcessing") => {
            starts_with_special(pp)
        }
        Some(pp) if pp.get("type").and_then(Value::as_str) == Some("Sequence") => pp
            .get("processors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(starts_with_special),
        _ => tc
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// llama.cpp's name (`tokenizer.ggml.pre`) for the pre-tokenizer of
/// `tokenizer.json`, recognized by its structure (and, for a regex split,
/// by the regex llama.cpp's converter matches too); `None` for one llama.cpp
/// has no name for.
fn pre_tokenizer_name(tj: &Value) -> Option<&'static str> {
    // The split regexes of Llama 3 and Qwen 2 as their tokenizer.json files
    // write them (the digit runs differ).
    const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let pre = tj.get("pre_tokenizer").unwrap_or(&Value::Null);
    let ty = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let byte_level = |v: &Value, regex: bool| {
        ty(v) == "ByteLevel" && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true) == regex
    };
    fn split_regex(v: &Value) -> Option<&str> {
        if v.get("type")?.as_str()? != "Split" {
            return None;
        }
        v.get("pattern")?.get("Regex")?.as_str()
    }
    match ty(pre).as_str() {
        "ByteLevel" if byte_level(pre, true) => Some("gpt2"),
        "Sequence" => {
            let steps: Vec<&Value> = pre
                .get("pretokenizers")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            match steps.as_slice() {
                [digits, bl]
                    if ty(digits) == "Digits"
                        && digits.get("individual_digits").and_then(Value::as_bool)
                            == Some(true)
                        && byte_level(bl, true) =>
                {
                    Some("smollm")
                }
                [bl] if byte_level(bl, true) => Some("gpt2"),
                [split, bl] if byte_level(bl, false) => match split_regex(split)? {
                    LLAMA3_SPLIT => Some("llama-bpe"),
                    QWEN2_SPLIT => Some("qwen2"),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}
