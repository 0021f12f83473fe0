//! Llama family (Llama 2/3, SmolLM, TinyLlama, Mistral-style dense models
//! converted as `llama`): pre-norm RMSNorm, SwiGLU, GQA, rope.
//!
//! Rope is ggml mode 0 (interleaved pairs): llama.cpp's converter permutes
//! the Q/K rows of HF checkpoints so that adjacent pairs rotate together.

use super::{common_hparams, CommonHparams};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::spec::{Activation, DecoderSpec, RopeSpec, RopeStyle};

pub(super) fn spec(gguf: &GgufFile, arch: &str) -> Result<DecoderSpec> {
    let h: CommonHparams = common_hparams(gguf, arch)?;
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
        activation: Activation::SiluGlu,
        rope: RopeSpec {
            // llama.cpp's default when the key is absent.
            theta: h.rope_theta.unwrap_or(10_000.0),
            local_theta: None,
            style: RopeStyle::Interleaved,
            n_rot: h.n_rot,
            scaling: h.rope_scaling,
        },
        qk_norm: false,
        post_norms: false,
        sliding_window: None,
        layer_is_sliding: vec![false; h.n_layer],
        tied_embeddings: h.tied_embeddings,
        embed_scale: None,
        attn_scale: 1.0 / (h.head_dim as f32).sqrt(),
        attn_logit_softcap: None,
        final_logit_softcap: None,
    })
}
