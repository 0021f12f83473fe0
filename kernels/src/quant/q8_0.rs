//! Q8_0: 32 values per block as signed bytes, `x = d * q`. Both a weight
//! type and the activation type of Q4_0 and Q8_0 weights.

use super::blocks::QK;
use super::x16::X16Field;
use super::{ActivationBlock, DType, QuantBlock, WeightBlock};
use crate::dispatch::{ActivationRow, KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 32 values as signed bytes: `x = d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl QuantBlock for BlockQ8_0 {
    const DTYPE: DType = DType::Q8_0;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ8_0 {
    type Act = BlockQ8_0;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        vec_dot(w, a)
    }
    const X16_FIELDS: &'static [X16Field] = &[X16Field::f16(0), X16Field::codes(2, 32)];
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q8_0
    }
}

impl ActivationBlock for BlockQ8_0 {
    fn activation_row(t: &KernelTable) -> &ActivationRow<Self> {
        &t.act_q8_0
    }
}

/// ggml `quantize_row_q8_0_ref`: `d = amax / 127`, codes rounded half away
/// from zero.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
    }
}

pub fn dequantize_row(blocks: &[BlockQ8_0], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in yb.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

pub fn vec_dot(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut x = [0f32; 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = i as f32 - 16.0;
        }
        let mut b = [BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; 32],
        }];
        quantize_row(&x, &mut b);
        assert_eq!(b[0].d, f16::from_f32(16.0 / 127.0));
        assert_eq!(b[0].qs[0], -127);
        // 1 * 127/16 = 7.9375 -> 8
        assert_eq!(b[0].qs[17], 8);
        let zero = [0f32; 32];
        quantize_row(&zero, &mut b);
        assert!(b[0].qs.iter().all(|&q| q == 0));
        let one = BlockQ8_0 {
            d: f16::from_f32(1.0),
            qs: [3; 32],
        };
        let two = BlockQ8_0 {
            d: f16::from_f32(0.5),
            qs: [-2; 32],
        };
        assert_eq!(vec_dot(&[one], &[two]), -96.0);
    }
}
