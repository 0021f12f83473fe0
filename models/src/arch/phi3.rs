//! Phi-3 / Phi-3.5 / Phi-4-mini: the Llama block with fused projections
//! (`attn_qkv`, and `ffn_up` holding gate then up: split into row views at
//! load), NeoX rope, and for long-context models `longrope` (`su`) scaling:
//! per-pair frequency divisors `rope_factors_short`/`rope_factors_long`
//! chosen by the context size against `rope.scaling.original_context_length`,
//! and `rope.scaling.attn_factor` on cos and sin.
//!
//! As in llama.cpp, `attention.sliding_window` is read but not applied
//! (llama.cpp disables Phi-3's sliding window: its converters do not record
//! which layers slide), so attention is full on every layer.

use super::{Architecture, Hparams};
use crate::error::Result;
use crate::spec::{Activation, DecoderSpec, RopeFactors, RopeStyle};

pub(super) const ARCH: Architecture = Architecture {
    name: "phi3",
    spec,
};

fn spec(h: &Hparams<'_>) -> Result<DecoderSpec> {
    let mut c = h.common()?;
    if h.has_tensor("rope_factors_long.weight") || h.has_tensor("rope_factors_short.weight") {
        let original_context = h
            .usize("rope.scaling.original_context_length")?
            .unwrap_or(c.context_length);
        c.rope.factors = RopeFactors::ShortLong { original_context };
    }
    let layer = c.plain_layer();
    Ok(c.decoder(Activation::SiluGlu, RopeStyle::NeoX, |_| layer))
}
