//! The architecture registry: one file per family, each mapping GGUF
//! hyper-parameter keys and tensor names onto the generic
//! [`DecoderSpec`] and [`DecoderWeights`]. Nothing outside this module looks
//! at `general.architecture`.

mod gemma3;
mod llama;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::spec::{DecoderSpec, RopeScaling};
use crate::weights::{DecoderWeights, LayerWeights, Weight};

/// Reads one family's spec from a GGUF file.
type SpecLoader = fn(&GgufFile, &str) -> Result<DecoderSpec>;

/// One registry row per supported `general.architecture` value.
const REGISTRY: &[(&str, SpecLoader)] = &[("llama", llama::spec), ("gemma3", gemma3::spec)];

/// The `general.architecture` values this crate can load.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3"];

/// The decoder described by `gguf`'s hyper-parameters.
pub fn decoder_spec(gguf: &GgufFile) -> Result<DecoderSpec> {
    let arch = gguf.require_str("general.architecture")?;
    let loader = REGISTRY
        .iter()
        .find(|(name, _)| *name == arch)
        .map(|(_, loader)| *loader)
        .ok_or_else(|| Error::UnknownArchitecture(arch.to_string()))?;
    let spec = loader(gguf, arch)?;
    validate_spec(&spec)?;
    Ok(spec)
}

/// The weights of `gguf`, shape-checked against `spec`. Tensor names are the
/// ones llama.cpp's converter writes; they are shared by every family, and
/// the optional ones are required exactly when the spec says so.
pub fn decoder_weights(gguf: &GgufFile, spec: &DecoderSpec) -> Result<DecoderWeights> {
    let d = spec.d_model;
    let token_embd = matrix(gguf, "token_embd.weight", spec.vocab_size, d)?;
    let mut layers = Vec::with_capacity(spec.n_layer);
    for il in 0..spec.n_layer {
        let name = |t: &str| format!("blk.{il}.{t}.weight");
        let opt = |present: bool, t: &str, cols: usize| -> Result<Option<Weight>> {
            present.then(|| matrix(gguf, &name(t), 1, cols)).transpose()
        };
        layers.push(LayerWeights {
            attn_norm: matrix(gguf, &name("attn_norm"), 1, d)?,
            attn_q: matrix(gguf, &name("attn_q"), spec.q_dim(), d)?,
            attn_k: matrix(gguf, &name("attn_k"), spec.kv_dim(), d)?,
            attn_v: matrix(gguf, &name("attn_v"), spec.kv_dim(), d)?,
            attn_output: matrix(gguf, &name("attn_output"), d, spec.q_dim())?,
            attn_q_norm: opt(spec.qk_norm, "attn_q_norm", spec.head_dim)?,
            attn_k_norm: opt(spec.qk_norm, "attn_k_norm", spec.head_dim)?,
            post_attention_norm: opt(spec.post_norms, "post_attention_norm", d)?,
            ffn_norm: matrix(gguf, &name("ffn_norm"), 1, d)?,
            ffn_gate: matrix(gguf, &name("ffn_gate"), spec.ffn_dim, d)?,
            ffn_up: matrix(gguf, &name("ffn_up"), spec.ffn_dim, d)?,
            ffn_down: matrix(gguf, &name("ffn_down"), d, spec.ffn_dim)?,
            post_ffw_norm: opt(spec.post_norms, "post_ffw_norm", d)?,
        });
    }
    let output_norm = matrix(gguf, "output_norm.weight", 1, d)?;
    let output = if spec.tied_embeddings {
        token_embd.clone()
    } else {
        matrix(gguf, "output.weight", spec.vocab_size, d)?
    };
    let rope_freqs = gguf
        .tensor("rope_freqs.weight")
        .map(|_| matrix(gguf, "rope_freqs.weight", 1, spec.rope.n_rot / 2))
        .transpose()?;
    Ok(DecoderWeights {
        token_embd,
        layers,
        output_norm,
        output,
        rope_freqs,
    })
}

fn matrix(gguf: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Weight> {
    let info = gguf.tensor(name).ok_or_else(|| Error::MissingTensor {
        tensor: name.to_string(),
    })?;
    let w = Weight::from_gguf(gguf, info).map_err(|_| Error::ShapeMismatch {
        tensor: name.to_string(),
        expected: vec![rows, cols],
        found: info.dims.iter().rev().copied().collect(),
    })?;
    w.expect_shape(rows, cols)?;
    Ok(w)
}

/// Hyper-parameters every family reads the same way, under `{arch}.`.
struct CommonHparams {
    n_layer: usize,
    d_model: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    ffn_dim: usize,
    vocab_size: usize,
    context_length: usize,
    norm_eps: f32,
    n_rot: usize,
    rope_theta: Option<f32>,
    rope_scaling: RopeScaling,
    tied_embeddings: bool,
}

fn common_hparams(gguf: &GgufFile, arch: &str) -> Result<CommonHparams> {
    let key = |k: &str| format!("{arch}.{k}");
    let n_layer = gguf.require_usize(&key("block_count"))?;
    let d_model = gguf.require_usize(&key("embedding_length"))?;
    let n_head = gguf.require_usize(&key("attention.head_count"))?;
    // A per-layer array of head counts exists for heterogeneous models; none
    // of the supported families use it, so an array here is an error.
    let n_kv_head = gguf
        .try_get_usize(&key("attention.head_count_kv"))?
        .unwrap_or(n_head);
    let head_dim = match gguf.try_get_usize(&key("attention.key_length"))? {
        Some(k) => k,
        None => {
            if n_head == 0 {
                return Err(invalid(&key("attention.head_count"), "must be positive"));
            }
            d_model / n_head
        }
    };
    let ffn_dim = gguf.require_usize(&key("feed_forward_length"))?;
    let vocab_size = match gguf.try_get_usize(&key("vocab_size"))? {
        Some(v) => v,
        None => match gguf.try_get_array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len(),
            None => gguf
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .ok_or_else(|| Error::MissingKey {
                    key: key("vocab_size"),
                })?,
        },
    };
    let context_length = gguf.require_usize(&key("context_length"))?;
    let norm_eps = gguf.require_f32(&key("attention.layer_norm_rms_epsilon"))?;
    let n_rot = gguf
        .try_get_usize(&key("rope.dimension_count"))?
        .unwrap_or(head_dim);
    let rope_theta = gguf.try_get_f32(&key("rope.freq_base"))?;
    let rope_scaling = rope_scaling(gguf, arch)?;
    let tied_embeddings = gguf.tensor("output.weight").is_none();
    Ok(CommonHparams {
        n_layer,
        d_model,
        n_head,
        n_kv_head,
        head_dim,
        ffn_dim,
        vocab_size,
        context_length,
        norm_eps,
        n_rot,
        rope_theta,
        rope_scaling,
        tied_embeddings,
    })
}

/// `{arch}.rope.scaling.type` (`none` | `linear` | `llama3`) and its
/// parameters. Older files give only `rope.scale_linear`. Llama 3.1 GGUFs
/// carry their scaling as a `rope_freqs.weight` tensor instead; the
/// llama3 keys are read when a converter wrote them.
fn rope_scaling(gguf: &GgufFile, arch: &str) -> Result<RopeScaling> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    let factor_key = key("scaling.factor");
    let factor = gguf
        .try_get_f32(&factor_key)?
        .or(gguf.try_get_f32(&key("scale_linear"))?);
    let kind = gguf.try_get_str(&key("scaling.type"))?;
    let positive = |f: Option<f32>, k: &str| -> Result<f32> {
        match f {
            Some(f) if f.is_finite() && f > 0.0 => Ok(f),
            Some(f) => Err(invalid(
                k,
                &format!("must be positive and finite, found {f}"),
            )),
            None => Err(Error::MissingKey { key: k.to_string() }),
        }
    };
    Ok(match kind {
        None | Some("none") => match factor {
            Some(f) if f != 1.0 && kind.is_none() => RopeScaling::Linear {
                factor: positive(Some(f), &factor_key)?,
            },
            _ => RopeScaling::None,
        },
        Some("linear") => match positive(factor, &factor_key)? {
            1.0 => RopeScaling::None,
            f => RopeScaling::Linear { factor: f },
        },
        Some("llama3") => {
            let low_key = key("scaling.low_freq_factor");
            let high_key = key("scaling.high_freq_factor");
            let orig_key = key("scaling.original_context_length");
            RopeScaling::Llama3 {
                factor: positive(factor, &factor_key)?,
                low_freq_factor: positive(gguf.try_get_f32(&low_key)?, &low_key)?,
                high_freq_factor: positive(gguf.try_get_f32(&high_key)?, &high_key)?,
                original_context: gguf.require_usize(&orig_key)?,
            }
        }
        Some(other) => {
            return Err(invalid(
                &key("scaling.type"),
                &format!("unsupported rope scaling {other:?} (supported: none, linear, llama3)"),
            ))
        }
    })
}

fn invalid(key: &str, reason: &str) -> Error {
    Error::InvalidHyperParameter {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Consistency checks every backend relies on, so none has to re-check.
fn validate_spec(s: &DecoderSpec) -> Result<()> {
    let k = |name: &str| format!("{}.{name}", s.arch);
    let positive = [
        ("block_count", s.n_layer),
        ("embedding_length", s.d_model),
        ("attention.head_count", s.n_head),
        ("attention.head_count_kv", s.n_kv_head),
        ("attention.key_length", s.head_dim),
        ("feed_forward_length", s.ffn_dim),
        ("vocab_size", s.vocab_size),
        ("context_length", s.context_length),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err(invalid(&k(name), "must be positive"));
        }
    }
    // Caps far above any real model keep hostile values from overflowing
    // the shape arithmetic downstream.
    const CAP: usize = 1 << 24;
    for (name, v) in positive {
        if v > CAP && name != "context_length" {
            return Err(invalid(&k(name), &format!("{v} is implausibly large")));
        }
    }
    if s.n_head % s.n_kv_head != 0 {
        return Err(invalid(
            &k("attention.head_count_kv"),
            &format!(
                "{} query heads are not a multiple of {} kv heads",
                s.n_head, s.n_kv_head
            ),
        ));
    }
    if s.rope.n_rot == 0 || s.rope.n_rot > s.head_dim || s.rope.n_rot % 2 != 0 {
        return Err(invalid(
            &k("rope.dimension_count"),
            &format!("{} must be even and in 1..={}", s.rope.n_rot, s.head_dim),
        ));
    }
    if !(s.rope.theta.is_finite() && s.rope.theta > 0.0) {
        return Err(invalid(&k("rope.freq_base"), "must be positive and finite"));
    }
    if !(s.norm_eps.is_finite() && s.norm_eps > 0.0) {
        return Err(invalid(
            &k("attention.layer_norm_rms_epsilon"),
            "must be positive and finite",
        ));
    }
    if s.layer_is_sliding.len() != s.n_layer {
        return Err(invalid(
            &k("block_count"),
            "sliding-window pattern length differs",
        ));
    }
    if s.layer_is_sliding.iter().any(|&b| b) && s.sliding_window.unwrap_or(0) == 0 {
        return Err(invalid(&k("attention.sliding_window"), "must be positive"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
