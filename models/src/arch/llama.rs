//! Llama family (Llama 2/3, SmolLM, TinyLlama, Mistral-style dense models
//! converted as `llama`): pre-norm RMSNorm, SwiGLU, GQA, rope.
//!
//! Rope is ggml mode 0 (interleaved pairs): llama.cpp's converter permutes
//! the Q/K rows of HF checkpoints so that adjacent pairs rotate together.
//! Llama 3.1+ files carry their long-context scaling as a `rope_freqs`
//! tensor (the converter computes the llama3 wavelength blend into it).
//! A file that sets `llama.attention.sliding_window` gets Mistral-style
//! sliding-window attention on every layer (or on the layers of
//! `sliding_window_pattern`); llama.cpp's own `llama` graph ignores the key.

use super::{Architecture, Hparams};
use crate::error::Result;
use crate::spec::{Activation, AttentionSpec, DecoderSpec, LayerSpec, RopeFactors, RopeStyle};

pub(super) const ARCH: Architecture = Architecture {
    name: "llama",
    spec,
};

fn spec(h: &Hparams<'_>) -> Result<DecoderSpec> {
    let mut c = h.common()?;
    if h.has_tensor("rope_freqs.weight") {
        c.rope.factors = RopeFactors::Fixed;
    }
    let window = h.sliding_window()?;
    let sliding = match window {
        Some(_) => h.sliding_layers(c.n_layer, 0)?,
        None => vec![false; c.n_layer],
    };
    let plain = c.plain_layer();
    Ok(c.decoder(Activation::SiluGlu, RopeStyle::Interleaved, |il| LayerSpec {
        attention: AttentionSpec {
            window: window.filter(|_| sliding[il]),
            ..plain.attention
        },
        ..plain
    }))
}
