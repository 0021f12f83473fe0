//! Granite 3.x (dense): the Llama block with four scale factors, read from
//! `granite.embedding_scale` (embedding rows), `granite.residual_scale`
//! (each block output before its residual add), `granite.attention.scale`
//! (`q·k`, instead of `1/sqrt(head_dim)`) and `granite.logit_scale`
//! (required; the logits are divided by it), as llama.cpp's
//! `LLM_ARCH_GRANITE` does. Rope is interleaved (the converter permutes
//! Q/K like Llama's); `rope_freqs` applies when present.

use super::{invalid, Architecture, Hparams};
use crate::error::{Error, Result};
use crate::spec::{Activation, AttentionSpec, DecoderSpec, LayerSpec, RopeFactors, RopeStyle};

pub(super) const ARCH: Architecture = Architecture {
    name: "granite",
    spec,
};

fn spec(h: &Hparams<'_>) -> Result<DecoderSpec> {
    let mut c = h.common()?;
    if h.has_tensor("rope_freqs.weight") {
        c.rope.factors = RopeFactors::Fixed;
    }
    let logit_key = h.key("logit_scale");
    let logit_scale = h.f32("logit_scale")?.ok_or(Error::MissingKey { key: logit_key.clone() })?;
    if !(logit_scale.is_finite() && logit_scale > 0.0) {
        return Err(invalid(&logit_key, "must be positive and finite"));
    }
    // Granite switches rope off with `rope.scaling.finetuned = false`; no
    // released dense model does, and the description always has a rope.
    if h.gguf.try_get_bool(&h.key("rope.scaling.finetuned"))? == Some(false) {
        return Err(invalid(
            &h.key("rope.scaling.finetuned"),
            "granite without rope is not supported",
        ));
    }
    // llama.cpp treats 0 as "not set" for these three.
    let set = |x: Option<f32>| x.filter(|&v| v != 0.0);
    let residual_scale = set(h.f32("residual_scale")?);
    let embed_scale = set(h.f32("embedding_scale")?);
    let plain = c.plain_layer();
    let layer = LayerSpec {
        attention: AttentionSpec {
            scale: set(h.f32("attention.scale")?).unwrap_or(plain.attention.scale),
            ..plain.attention
        },
        residual_scale,
        ..plain
    };
    Ok(DecoderSpec {
        embed_scale,
        logit_scale: Some(1.0 / logit_scale),
        ..c.decoder(Activation::SiluGlu, RopeStyle::Interleaved, |_| layer)
    })
}
