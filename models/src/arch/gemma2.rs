//! Gemma 2: GELU-tanh GLU, NeoX rope, post-attention and post-FFN norms,
//! embeddings scaled by `sqrt(d_model)` and tied to the output, soft-capped
//! attention scores and logits, and sliding-window layers alternating with
//! global ones.
//!
//! Choices follow llama.cpp (`LLM_ARCH_GEMMA2`): window 4096 unless
//! `attention.sliding_window` says otherwise; layer `il` slides iff
//! `il % 2 == 0` unless `attention.sliding_window_pattern` says otherwise;
//! sliding layers use `rope.freq_base_swa` when present and the global
//! rope otherwise (scaling included); soft-caps 50 (attention) and 30
//! (logits) unless the `*_logit_softcapping` keys say otherwise; attention
//! scale `1/sqrt(key_length)` except the 27B (46 layers), whose is
//! `1/sqrt(d_model / n_head)`. Gemma's RMSNorm multiplies by `1 + weight`;
//! llama.cpp's converter bakes the `+1` into the GGUF, so the norms here are
//! plain RMSNorm weights. The output is always the embedding table.

use super::{Architecture, Hparams};
use crate::error::Result;
use crate::spec::{Activation, AttentionSpec, DecoderSpec, LayerSpec, RopeSpec, RopeStyle};

pub(super) const ARCH: Architecture = Architecture {
    name: "gemma2",
    spec,
};

const DEFAULT_WINDOW: usize = 4096;
const SWA_PERIOD: usize = 2;
const ATTN_SOFTCAP: f32 = 50.0;
const FINAL_SOFTCAP: f32 = 30.0;

fn spec(h: &Hparams<'_>) -> Result<DecoderSpec> {
    let mut c = h.common()?;
    c.tied_embeddings = true;
    let window = h.usize("attention.sliding_window")?.unwrap_or(DEFAULT_WINDOW);
    let sliding = h.sliding_layers(c.n_layer, SWA_PERIOD)?;
    let local_rope = RopeSpec {
        theta: h.f32("rope.freq_base_swa")?.unwrap_or(c.rope.theta),
        ..c.rope
    };
    let scale = if c.n_layer == 46 {
        1.0 / ((c.d_model / c.n_head) as f32).sqrt()
    } else {
        c.head_scale()
    };
    let softcap = h.f32("attn_logit_softcapping")?.unwrap_or(ATTN_SOFTCAP);
    let final_softcap = h.f32("final_logit_softcapping")?.unwrap_or(FINAL_SOFTCAP);
    let embed_scale = (c.d_model as f32).sqrt();
    let global = LayerSpec {
        attention: AttentionSpec {
            scale,
            softcap: Some(softcap),
            window: None,
        },
        post_attention_norm: true,
        post_ffn_norm: true,
        ..c.plain_layer()
    };
    Ok(DecoderSpec {
        embed_scale: Some(embed_scale),
        final_logit_softcap: Some(final_softcap),
        ..c.decoder(Activation::GeluTanhGlu, RopeStyle::NeoX, |il| {
            if sliding[il] {
                LayerSpec {
                    rope: local_rope,
                    attention: AttentionSpec {
                        window: Some(window),
                        ..global.attention
                    },
                    ..global
                }
            } else {
                global
            }
        })
    })
}
