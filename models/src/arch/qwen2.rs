//! Qwen 2 / 2.5: the Llama block with biases on the Q, K and V projections
//! (read like every optional bias, from `attn_{q,k,v}.bias`), NeoX rope.

use super::{Architecture, Hparams};
use crate::error::Result;
use crate::spec::{Activation, DecoderSpec, RopeStyle};

pub(super) const ARCH: Architecture = Architecture {
    name: "qwen2",
    spec,
};

fn spec(h: &Hparams<'_>) -> Result<DecoderSpec> {
    let c = h.common()?;
    let layer = c.plain_layer();
    Ok(c.decoder(Activation::SiluGlu, RopeStyle::NeoX, |_| layer))
}
