//! The architecture registry: one file per family, each reading its
//! hyper-parameters (GGUF `{arch}.*` keys, llama.cpp's defaults) into the
//! decoder description ([`DecoderSpec`]). Tensors are read here once for
//! every family, from the names llama.cpp's converter writes, optional ones
//! required exactly when the description says so. Nothing outside this
//! module looks at `general.architecture`.
//!
//! Adding a family is one file with an `ARCH` constant and its module name
//! in the one `families!` line below.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::spec::{
    Activation, AttentionSpec, DecoderSpec, LayerSpec, RopeFactors, RopeScaling, RopeSpec,
    RopeStyle,
};
use crate::weights::{DecoderWeights, LayerWeights, Linear, Weight};

/// One supported family: its `general.architecture` value and how its
/// hyper-parameters map onto the description.
struct Architecture {
    name: &'static str,
    spec: fn(&Hparams<'_>) -> Result<DecoderSpec>,
}

/// Declares each family's module and lists its `ARCH` in `REGISTRY`, so a
/// family is registered in one place.
macro_rules! families {
    ($($family:ident),* $(,)?) => {
        $(mod $family;)*
        /// One row per supported `general.architecture` value.
        const REGISTRY: &[Architecture] = &[$($family::ARCH),*];
    };
}

families![llama, qwen2, qwen3, gemma2, gemma3, phi3, granite];

/// The `general.architecture` values this crate can load.
pub fn supported_architectures() -> Vec<&'static str> {
    REGISTRY.iter().map(|a| a.name).collect()
}

/// The decoder described by `gguf`'s hyper-parameters, validated.
pub fn decoder_spec(gguf: &GgufFile) -> Result<DecoderSpec> {
    let arch = gguf.require_str("general.architecture")?;
    let family = REGISTRY
        .iter()
        .find(|a| a.name == arch)
        .ok_or_else(|| Error::UnknownArchitecture(arch.to_string()))?;
    let spec = (family.spec)(&Hparams { gguf, arch })?;
    validate_spec(&spec)?;
    Ok(spec)
}

/// The weights of `gguf`, shape-checked against `spec`.
pub(crate) fn decoder_weights(gguf: &GgufFile, spec: &DecoderSpec) -> Result<DecoderWeights> {
    let d = spec.d_model;
    let token_embd = matrix(gguf, "token_embd.weight", spec.vocab_size, d)?;
    let layers = spec
        .layers
        .iter()
        .enumerate()
        .map(|(il, layer)| layer_weights(gguf, spec, il, layer))
        .collect::<Result<Vec<_>>>()?;
    let output_norm = matrix(gguf, "output_norm.weight", 1, d)?;
    let output_weight = if spec.tied_embeddings {
        token_embd.clone()
    } else {
        matrix(gguf, "output.weight", spec.vocab_size, d)?
    };
    let output = Linear {
        bias: bias(gguf, "output.bias", spec.vocab_size)?,
        weight: output_weight,
    };
    let half = spec.n_rot / 2;
    let factor = |name: &str, needed: bool| -> Result<Option<Weight>> {
        needed.then(|| matrix(gguf, name, 1, half)).transpose()
    };
    let fixed = spec
        .layers
        .iter()
        .any(|l| l.rope.factors == RopeFactors::Fixed);
    let short_long = spec
        .layers
        .iter()
        .any(|l| matches!(l.rope.factors, RopeFactors::ShortLong { .. }));
    Ok(DecoderWeights {
        token_embd,
        layers,
        output_norm,
        output,
        rope_freqs: factor("rope_freqs.weight", fixed)?,
        rope_factors_short: factor("rope_factors_short.weight", short_long)?,
        rope_factors_long: factor("rope_factors_long.weight", short_long)?,
    })
}

fn layer_weights(
    gguf: &GgufFile,
    spec: &DecoderSpec,
    il: usize,
    layer: &LayerSpec,
) -> Result<LayerWeights> {
    let d = spec.d_model;
    let (qd, kvd, ff) = (spec.q_dim(), spec.kv_dim(), spec.ffn_dim);
    let name = |t: &str| format!("blk.{il}.{t}.weight");
    let bias_name = |t: &str| format!("blk.{il}.{t}.bias");
    let norm = |present: bool, t: &str, cols: usize| -> Result<Option<Weight>> {
        present.then(|| matrix(gguf, &name(t), 1, cols)).transpose()
    };
    let linear = |t: &str, rows: usize, cols: usize| -> Result<Linear> {
        Ok(Linear {
            weight: matrix(gguf, &name(t), rows, cols)?,
            bias: bias(gguf, &bias_name(t), rows)?,
        })
    };
    // Fused projections (Phi-3, some converters) become row views: the
    // executors then see one linear per projection.
    let [attn_q, attn_k, attn_v] = if gguf.tensor(&name("attn_qkv")).is_some() {
        let fused = linear("attn_qkv", qd + 2 * kvd, d)?;
        split_linear(&fused, [qd, kvd, kvd])?
    } else {
        [
            linear("attn_q", qd, d)?,
            linear("attn_k", kvd, d)?,
            linear("attn_v", kvd, d)?,
        ]
    };
    let [ffn_gate, ffn_up] = if gguf.tensor(&name("ffn_gate")).is_some() {
        [linear("ffn_gate", ff, d)?, linear("ffn_up", ff, d)?]
    } else {
        // No gate: `ffn_up` holds gate then up (ggml's swiglu takes the
        // first half through the activation).
        let fused = linear("ffn_up", 2 * ff, d)?;
        split_linear(&fused, [ff, ff])?
    };
    Ok(LayerWeights {
        attn_norm: matrix(gguf, &name("attn_norm"), 1, d)?,
        attn_q,
        attn_k,
        attn_v,
        attn_q_norm: norm(layer.qk_norm, "attn_q_norm", spec.head_dim)?,
        attn_k_norm: norm(layer.qk_norm, "attn_k_norm", spec.head_dim)?,
        attn_output: linear("attn_output", d, qd)?,
        post_attention_norm: norm(layer.post_attention_norm, "post_attention_norm", d)?,
        ffn_norm: matrix(gguf, &name("ffn_norm"), 1, d)?,
        ffn_gate,
        ffn_up,
        ffn_down: linear("ffn_down", d, ff)?,
        post_ffw_norm: norm(layer.post_ffn_norm, "post_ffw_norm", d)?,
    })
}

/// Consecutive row blocks of `fused` as linears of their own.
fn split_linear<const N: usize>(fused: &Linear, rows: [usize; N]) -> Result<[Linear; N]> {
    let mut start = 0;
    let mut parts = Vec::with_capacity(N);
    for n in rows {
        parts.push(Linear {
            weight: fused.weight.row_view(start..start + n)?,
            bias: fused.bias.as_ref().map(|b| b[start..start + n].to_vec()),
        });
        start += n;
    }
    parts.try_into().map_err(|_| Error::BadTensor {
        tensor: fused.weight.name.clone(),
        reason: "split into the wrong number of parts".into(),
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

/// The optional bias `name` of a linear with `rows` outputs, as f32.
fn bias(gguf: &GgufFile, name: &str, rows: usize) -> Result<Option<Vec<f32>>> {
    if gguf.tensor(name).is_none() {
        return Ok(None);
    }
    let values = matrix(gguf, name, 1, rows)?.to_f32()?;
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(Error::BadTensor {
            tensor: name.to_string(),
            reason: format!("non-finite bias value {bad}"),
        });
    }
    Ok(Some(values))
}

/// A family's view of the file: keys under `{arch}.`, with the readers
/// every family shares.
struct Hparams<'a> {
    gguf: &'a GgufFile,
    arch: &'a str,
}

impl Hparams<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn f32(&self, k: &str) -> Result<Option<f32>> {
        self.gguf.try_get_f32(&self.key(k))
    }

    fn usize(&self, k: &str) -> Result<Option<usize>> {
        self.gguf.try_get_usize(&self.key(k))
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.gguf.tensor(name).is_some()
    }

    /// `{arch}.attention.sliding_window`, `None` when absent or 0.
    fn sliding_window(&self) -> Result<Option<usize>> {
        Ok(self.usize("attention.sliding_window")?.filter(|&w| w > 0))
    }

    /// Which layers slide: `{arch}.attention.sliding_window_pattern` as a
    /// per-layer array of booleans (or 0/1), or as a period `n` (layer `il`
    /// slides unless `il % n == n - 1`; 0 means all), else `default_period`
    /// (llama.cpp's `set_swa_pattern`).
    fn sliding_layers(&self, n_layer: usize, default_period: usize) -> Result<Vec<bool>> {
        let key = self.key("attention.sliding_window_pattern");
        let period = match self.gguf.get(&key) {
            None => default_period,
            Some(MetaValue::Array(_, items)) => {
                let flags = items
                    .iter()
                    .map(|v| match v {
                        MetaValue::Bool(b) => Some(*b),
                        other => other.as_u64().map(|x| x != 0),
                    })
                    .collect::<Option<Vec<bool>>>()
                    .ok_or_else(|| invalid(&key, "expected an array of booleans"))?;
                if flags.len() != n_layer {
                    return Err(invalid(
                        &key,
                        &format!("{} entries for {n_layer} layers", flags.len()),
                    ));
                }
                return Ok(flags);
            }
            Some(_) => self
                .gguf
                .try_get_usize(&key)?
                .ok_or_else(|| invalid(&key, "expected a period or an array"))?,
        };
        Ok((0..n_layer)
            .map(|il| period == 0 || il % period < period - 1)
            .collect())
    }

    /// What every family reads the same way.
    fn common(&self) -> Result<Common> {
        let gguf = self.gguf;
        let n_layer = gguf.require_usize(&self.key("block_count"))?;
        // Every layer has its own tensors (at least `attn_norm`), so a count
        // above the tensor table's length is a lie; checking it here, before
        // anything is sized by it, keeps the per-layer descriptions this
        // count allocates bounded by the file.
        if n_layer > gguf.tensors().len() {
            return Err(invalid(
                &self.key("block_count"),
                &format!(
                    "{n_layer} layers but the file has only {} tensors",
                    gguf.tensors().len()
                ),
            ));
        }
        let d_model = gguf.require_usize(&self.key("embedding_length"))?;
        let n_head = gguf.require_usize(&self.key("attention.head_count"))?;
        // A per-layer array of head counts exists for heterogeneous models;
        // none of the supported families use it, so an array here is an error.
        let n_kv_head = self.usize("attention.head_count_kv")?.unwrap_or(n_head);
        if n_head == 0 {
            return Err(invalid(
                &self.key("attention.head_count"),
                "must be positive",
            ));
        }
        let head_dim = self
            .usize("attention.key_length")?
            .unwrap_or(d_model / n_head);
        if let Some(v) = self.usize("attention.value_length")? {
            if v != head_dim {
                return Err(invalid(
                    &self.key("attention.value_length"),
                    &format!("{v} differs from the key length {head_dim}"),
                ));
            }
        }
        let ffn_dim = gguf.require_usize(&self.key("feed_forward_length"))?;
        let vocab_size = match self.usize("vocab_size")? {
            Some(v) => v,
            None => match gguf
                .get("tokenizer.ggml.tokens")
                .and_then(MetaValue::array_len)
            {
                Some(n) => n,
                None => gguf
                    .tensor("token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
                    .ok_or_else(|| Error::MissingKey {
                        key: self.key("vocab_size"),
                    })?,
            },
        };
        let context_length = gguf.require_usize(&self.key("context_length"))?;
        let norm_eps = gguf.require_f32(&self.key("attention.layer_norm_rms_epsilon"))?;
        let n_rot = self.usize("rope.dimension_count")?.unwrap_or(head_dim);
        let rope = RopeSpec {
            // llama.cpp's default when the key is absent.
            theta: self.f32("rope.freq_base")?.unwrap_or(10_000.0),
            scaling: self.rope_scaling()?,
            factors: RopeFactors::None,
            attn_factor: self.f32("rope.scaling.attn_factor")?.unwrap_or(1.0),
        };
        Ok(Common {
            arch: self.arch.to_string(),
            name: gguf.try_get_str("general.name")?.map(str::to_string),
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
            rope,
            tied_embeddings: !self.has_tensor("output.weight"),
        })
    }

    /// `{arch}.rope.scaling.type` (`none` | `linear` | `llama3` |
    /// `longrope`) and its parameters; older files give only
    /// `rope.scale_linear`. `longrope` (Phi-3) keeps the frequencies: its
    /// factors are tensors (see [`RopeFactors::ShortLong`]). As in
    /// llama.cpp, a factor without a type means linear.
    fn rope_scaling(&self) -> Result<RopeScaling> {
        let factor_key = self.key("rope.scaling.factor");
        let factor = self
            .f32("rope.scaling.factor")?
            .or(self.f32("rope.scale_linear")?);
        let type_key = self.key("rope.scaling.type");
        let kind = self.gguf.try_get_str(&type_key)?;
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
            Some("none") | Some("longrope") => RopeScaling::None,
            None | Some("linear") => match factor {
                None | Some(0.0) => RopeScaling::None,
                Some(f) => match positive(Some(f), &factor_key)? {
                    1.0 => RopeScaling::None,
                    f => RopeScaling::Linear { factor: f },
                },
            },
            Some("llama3") => {
                let low_key = self.key("rope.scaling.low_freq_factor");
                let high_key = self.key("rope.scaling.high_freq_factor");
                let orig_key = self.key("rope.scaling.original_context_length");
                RopeScaling::Llama3 {
                    factor: positive(factor, &factor_key)?,
                    low_freq_factor: positive(self.gguf.try_get_f32(&low_key)?, &low_key)?,
                    high_freq_factor: positive(self.gguf.try_get_f32(&high_key)?, &high_key)?,
                    original_context: self.gguf.require_usize(&orig_key)?,
                }
            }
            Some(other) => {
                return Err(invalid(
                    &type_key,
                    &format!(
                        "unsupported rope scaling {other:?} (supported: none, linear, llama3, longrope)"
                    ),
                ))
            }
        })
    }
}

/// Hyper-parameters every family reads the same way, and the decoder they
/// make with per-layer choices left to the family.
struct Common {
    arch: String,
    name: Option<String>,
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
    /// The rope of the file's keys (global layers).
    rope: RopeSpec,
    tied_embeddings: bool,
}

impl Common {
    /// `1/sqrt(head_dim)`, the attention scale of most families.
    fn head_scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// A plain pre-norm layer: the family's rope, full causal attention at
    /// the head scale, no optional norm or scale.
    fn plain_layer(&self) -> LayerSpec {
        LayerSpec {
            rope: self.rope,
            attention: AttentionSpec {
                scale: self.head_scale(),
                softcap: None,
                window: None,
            },
            qk_norm: false,
            post_attention_norm: false,
            post_ffn_norm: false,
            residual_scale: None,
        }
    }

    /// The decoder of these hyper-parameters with `layer(il)` as layer `il`.
    fn decoder(
        self,
        activation: Activation,
        rope_style: RopeStyle,
        layer: impl Fn(usize) -> LayerSpec,
    ) -> DecoderSpec {
        DecoderSpec {
            layers: (0..self.n_layer).map(layer).collect(),
            arch: self.arch,
            name: self.name,
            n_layer: self.n_layer,
            d_model: self.d_model,
            n_head: self.n_head,
            n_kv_head: self.n_kv_head,
            head_dim: self.head_dim,
            ffn_dim: self.ffn_dim,
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            norm_eps: self.norm_eps,
            activation,
            rope_style,
            n_rot: self.n_rot,
            tied_embeddings: self.tied_embeddings,
            embed_scale: None,
            logit_scale: None,
            final_logit_softcap: None,
        }
    }
}

fn invalid(key: &str, reason: &str) -> Error {
    Error::InvalidHyperParameter {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Consistency checks every executor relies on, so none has to re-check.
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
    if !s.n_head.is_multiple_of(s.n_kv_head) {
        return Err(invalid(
            &k("attention.head_count_kv"),
            &format!(
                "{} query heads are not a multiple of {} kv heads",
                s.n_head, s.n_kv_head
            ),
        ));
    }
    if s.n_rot == 0 || s.n_rot > s.head_dim || !s.n_rot.is_multiple_of(2) {
        return Err(invalid(
            &k("rope.dimension_count"),
            &format!("{} must be even and in 1..={}", s.n_rot, s.head_dim),
        ));
    }
    let finite_positive = |x: f32| x.is_finite() && x > 0.0;
    if !finite_positive(s.norm_eps) {
        return Err(invalid(
            &k("attention.layer_norm_rms_epsilon"),
            "must be positive and finite",
        ));
    }
    if s.layers.len() != s.n_layer {
        return Err(invalid(
            &k("block_count"),
            "per-layer description length differs",
        ));
    }
    let scales = [
        ("embedding_scale", s.embed_scale),
        ("logit_scale", s.logit_scale),
        ("final_logit_softcapping", s.final_logit_softcap),
    ];
    for (name, v) in scales {
        if v.is_some_and(|x| !finite_positive(x)) {
            return Err(invalid(&k(name), "must be positive and finite"));
        }
    }
    for l in &s.layers {
        if !finite_positive(l.rope.theta) {
            return Err(invalid(&k("rope.freq_base"), "must be positive and finite"));
        }
        if !finite_positive(l.rope.attn_factor) {
            return Err(invalid(
                &k("rope.scaling.attn_factor"),
                "must be positive and finite",
            ));
        }
        let a = &l.attention;
        if !finite_positive(a.scale) {
            return Err(invalid(
                &k("attention.scale"),
                "must be positive and finite",
            ));
        }
        if a.softcap.is_some_and(|c| !finite_positive(c)) {
            return Err(invalid(
                &k("attn_logit_softcapping"),
                "must be positive and finite",
            ));
        }
        if a.window == Some(0) {
            return Err(invalid(&k("attention.sliding_window"), "must be positive"));
        }
        if l.residual_scale.is_some_and(|x| !finite_positive(x)) {
            return Err(invalid(&k("residual_scale"), "must be positive and finite"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
