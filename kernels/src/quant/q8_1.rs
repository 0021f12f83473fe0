//! Q8_1: Q8_0 plus `s = d * sum(qs)`, the activation type of Q4_1 weights.

use super::blocks::QK;
use super::{ActivationBlock, DType, QuantBlock};
use crate::dispatch::{ActivationRow, KernelTable};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Activation block paired with Q4_1: like Q8_0 plus `s = d * sum(qs)`, so
/// the weight minimum contributes `m * s` without touching the codes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

impl QuantBlock for BlockQ8_1 {
    const DTYPE: DType = DType::Q8_1;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl ActivationBlock for BlockQ8_1 {
    fn activation_row(t: &KernelTable) -> &ActivationRow<Self> {
        &t.act_q8_1
    }
}

/// ggml `quantize_row_q8_1_ref`: `s` uses the unrounded f32 `d`.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        b.s = f16::from_f32(sum as f32 * d);
    }
}

pub fn dequantize_row(blocks: &[BlockQ8_1], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in yb.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_field_is_d_times_code_sum() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 10.0) * 0.1).collect();
        let mut b = [BlockQ8_1 {
            d: f16::ZERO,
            s: f16::ZERO,
            qs: [0; 32],
        }];
        quantize_row(&x, &mut b);
        let d = 2.1f32 / 127.0;
        let sum: i32 = b[0].qs.iter().map(|&q| q as i32).sum();
        assert_eq!(b[0].s, f16::from_f32(sum as f32 * d));
        assert_eq!(b[0].qs[31], 127);
    }
}
