//! Qwen 3 (dense): the Qwen 2 block without QKV biases, with RMSNorm over
//! each head of Q and K before rope (QK-norm).

use super::{Architecture, Hparams};
use crate::error::Result;
use crate::spec::{Activation, DecoderSpec, LayerSpec, RopeStyle};

pub(super) const ARCH: Architecture = Architecture {
    name: "qwen3",
    spec,
};

fn spec(h: &Hparams<'_>) -> Result<DecoderSpec> {
    let c = h.common()?;
    let layer = LayerSpec {
        qk_norm: true,
        ..c.plain_layer()
    };
    Ok(c.decoder(Activation::SiluGlu, RopeStyle::NeoX, |_| layer))
}
