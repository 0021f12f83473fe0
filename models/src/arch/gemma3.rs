//! Gemma 3 (text): QK-norm, post-attention and post-FFN norms, GELU-tanh
//! GLU, NeoX rope, tied embeddings scaled by `sqrt(d_model)`, and five
//! sliding-window layers for every global one.
//!
//! Choices follow llama.cpp (`LLM_ARCH_GEMMA3`): swa pattern 6 (layer `il`
//! is global iff `il % 6 == 5`), local rope base 10 000 unscaled,
//! attention scale `1/sqrt(key_length)` except the 27B (62 layers) which
//! uses `1/sqrt(d_model / n_head)`. Gemma's RMSNorm multiplies by
//! `1 + weight`; llama.cpp's converter (`Gemma3Model.modify_tensors`, which
//! adds `norm_shift = 1.0` to every `*norm.weight`) bakes the `+1` into the
//! GGUF, so the norms here are plain RMSNorm weights.

use super::{common_hparams, CommonHparams};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::spec::{Activation, DecoderSpec, RopeSpec, RopeStyle};

/// Every sixth layer attends globally.
const SWA_PATTERN: usize = 6;
const LOCAL_ROPE_THETA: f32 = 10_000.0;

pub(super) fn spec(gguf: &GgufFile, arch: &str) -> Result<DecoderSpec> {
    let h: CommonHparams = common_hparams(gguf, arch)?;
    let window_key = format!("{arch}.attention.sliding_window");
    let window = gguf
        .try_get_usize(&window_key)?
        .ok_or(Error::MissingKey { key: window_key })?;
    let layer_is_sliding = (0..h.n_layer)
        .map(|il| il % SWA_PATTERN < SWA_PATTERN - 1)
        .collect();
    let attn_scale = if h.n_layer == 62 {
        1.0 / ((h.d_model / h.n_head.max(1)) as f32).sqrt()
    } else {
        1.0 / (h.head_dim as f32).sqrt()
    };
    Ok(DecoderSpec {
        arch: arch.to_string(),
        name: gguf.try_get_str("general.name")?.map(str::to_string),
        n_layer: h.n_layer,
        d_model: h.d_model,
        n_head: h.n_head,
        n_kv_head: h.n_kv_head,
        head_dim: h.head_dim,
        ffn_dim: h.ffn_dim,
        vocab_size: h.vocab_size,
        context_length: h.context_length,
        norm_eps: h.norm_eps,
        activation: Activation::GeluTanhGlu,
        rope: RopeSpec {
            theta: h.rope_theta.unwrap_or(1_000_000.0),
            local_theta: Some(LOCAL_ROPE_THETA),
            style: RopeStyle::NeoX,
            n_rot: h.n_rot,
            scaling: h.rope_scaling,
        },
        qk_norm: true,
        post_norms: true,
        sliding_window: Some(window),
        layer_is_sliding,
        tied_embeddings: h.tied_embeddings,
        embed_scale: Some((h.d_model as f32).sqrt()),
        attn_scale,
        attn_logit_softcap: None,
        final_logit_softcap: None,
    })
}
