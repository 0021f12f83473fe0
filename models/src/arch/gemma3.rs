//! Gemma 3 (text): QK-norm, post-attention and post-FFN norms, GELU-tanh
//! GLU, NeoX rope, embeddings scaled by `sqrt(d_model)`, and five
//! sliding-window layers for every global one, each kind with its own rope.
//!
//! Choices follow llama.cpp (`LLM_ARCH_GEMMA3`): sliding layers only when
//! `attention.sliding_window` is set and positive; layer `il` is global iff
//! `il % 6 == 5` unless `attention.sliding_window_pattern` says otherwise;
//! sliding layers use `rope.freq_base_swa` (10 000 when absent) with no
//! scaling, global ones the file's base and scaling; the logits are
//! soft-capped only when `final_logit_softcapping` is set; attention scale
//! `1/sqrt(key_length)` except the 27B (62 layers), whose is
//! `1/sqrt(d_model / n_head)`. Gemma's RMSNorm multiplies by `1 + weight`;
//! llama.cpp's converter (which adds 1 to every `*norm.weight`) bakes the
//! `+1` into the GGUF, so the norms here are plain RMSNorm weights.

use super::{Architecture, Hparams};
use crate::error::Result;
use crate::spec::{Activation, AttentionSpec, DecoderSpec, LayerSpec, RopeSpec, RopeStyle};

pub(super) const ARCH: Architecture = Architecture {
    name: "gemma3",
    spec,
};

const SWA_PERIOD: usize = 6;
const LOCAL_ROPE_THETA: f32 = 10_000.0;

fn spec(h: &Hparams<'_>) -> Result<DecoderSpec> {
    let c = h.common()?;
    let window = h.sliding_window()?;
    let sliding = match window {
        Some(_) => h.sliding_layers(c.n_layer, SWA_PERIOD)?,
        None => vec![false; c.n_layer],
    };
    let local_rope = RopeSpec::plain(h.f32("rope.freq_base_swa")?.unwrap_or(LOCAL_ROPE_THETA));
    let scale = if c.n_layer == 62 {
        1.0 / ((c.d_model / c.n_head) as f32).sqrt()
    } else {
        c.head_scale()
    };
    let final_softcap = h.f32("final_logit_softcapping")?.filter(|&c| c != 0.0);
    let embed_scale = (c.d_model as f32).sqrt();
    let global = LayerSpec {
        attention: AttentionSpec {
            scale,
            softcap: None,
            window: None,
        },
        qk_norm: true,
        post_attention_norm: true,
        post_ffn_norm: true,
        ..c.plain_layer()
    };
    Ok(DecoderSpec {
        embed_scale: Some(embed_scale),
        final_logit_softcap: final_softcap,
        ..c.decoder(Activation::GeluTanhGlu, RopeStyle::NeoX, |il| {
            if sliding[il] {
                LayerSpec {
                    rope: local_rope,
                    attention: AttentionSpec {
                        window,
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
