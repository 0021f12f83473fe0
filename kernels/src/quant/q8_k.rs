//! Q8_K: 256 activations per block with an f32 scale and per-16 sums, the
//! activation type of the k-quants.

use super::blocks::QK_K;
use super::{nearest_int, ActivationBlock, DType, QuantBlock};
use crate::dispatch::{ActivationRow, KernelTable};
use bytemuck::{Pod, Zeroable};

/// Activation block paired with the k-quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    /// sums of each 16 consecutive `qs`
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl QuantBlock for BlockQ8K {
    const DTYPE: DType = DType::Q8_K;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl ActivationBlock for BlockQ8K {
    fn activation_row(t: &KernelTable) -> &ActivationRow<Self> {
        &t.act_q8_k
    }
}

/// ggml `quantize_row_q8_K_ref`: the value of largest magnitude maps to
/// -127, codes rounded half to even, `d = 1 / iscale`.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let max = super::signed_absmax(xb);
        if max == 0.0 {
            b.d = 0.0;
            b.qs = [0; QK_K];
            b.bsums = [0; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

pub fn dequantize_row(blocks: &[BlockQ8K], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (o, &q) in yb.iter_mut().zip(&b.qs) {
            *o = q as f32 * b.d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut x = [0.5f32; 256];
        x[7] = 2.0;
        let mut b = [bytemuck::Zeroable::zeroed()];
        quantize_row(&x, &mut b);
        let b: BlockQ8K = b[0];
        assert_eq!(b.qs[7], -127);
        // 0.5 * -63.5 = -31.75 -> -32
        assert_eq!(b.qs[0], -32);
        assert_eq!(b.d, 1.0 / (-127.0 / 2.0));
        assert_eq!(b.bsums[0], -127 - 15 * 32);
        assert_eq!(b.bsums[1], -16 * 32);
    }
}
