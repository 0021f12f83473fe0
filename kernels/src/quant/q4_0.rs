//! Q4_0: 32 weights per block, 4-bit codes around 8, `w = d * (q - 8)`.
//! Pairs with Q8_0 activations.

use super::blocks::QK;
use super::q8_0::BlockQ8_0;
use super::x16::X16Field;
use super::{DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 32 weights as 4-bit codes `q` in 0..16: `w = d * (q - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// low nibbles hold elements 0..16, high nibbles elements 16..32
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl QuantBlock for BlockQ4_0 {
    const DTYPE: DType = DType::Q4_0;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ4_0 {
    type Act = BlockQ8_0;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        vec_dot(w, a)
    }
    const X16_FIELDS: &'static [X16Field] = &[X16Field::f16(0), X16Field::codes(2, 16)];
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q4_0
    }
}

/// ggml `quantize_row_q4_0_ref`: the value of largest magnitude maps to -8.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ4_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let max = super::signed_absmax(xb);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[j + QK / 2] * id;
            let q0 = ((x0 + 8.5) as i8).min(15) as u8;
            let q1 = ((x1 + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

pub fn dequantize_row(blocks: &[BlockQ4_0], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            yb[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            yb[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn vec_dot(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            let v0 = (x.qs[j] & 0x0F) as i32 - 8;
            let v1 = (x.qs[j] >> 4) as i32 - 8;
            sumi += v0 * y.qs[j] as i32 + v1 * y.qs[j + QK / 2] as i32;
        }
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One block by hand: d = 0.5, codes 0..16 then 15..0.
    #[test]
    fn known_answer() {
        let mut b = BlockQ4_0 {
            d: f16::from_f32(0.5),
            qs: [0; 16],
        };
        for j in 0..16 {
            b.qs[j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[0], -4.0);
        assert_eq!(y[15], 3.5);
        assert_eq!(y[16], 3.5);
        assert_eq!(y[31], -4.0);
        let a = BlockQ8_0 {
            d: f16::from_f32(0.25),
            qs: [2; 32],
        };
        // sum (q-8) over all 32 codes = 2 * sum_{j<16}(j-8) = 2 * (-8) = -16
        let expect = -16.0 * 2.0 * 0.5 * 0.25;
        assert!((vec_dot(&[b], &[a]) - expect).abs() < 1e-6);
    }

    #[test]
    fn max_magnitude_maps_to_minus_eight() {
        let mut x = [0.1f32; 32];
        x[3] = -3.2;
        let mut b = [BlockQ4_0 {
            d: f16::ZERO,
            qs: [0; 16],
        }];
        quantize_row(&x, &mut b);
        assert_eq!(b[0].d.to_f32(), f16::from_f32(0.4).to_f32());
        assert_eq!(b[0].qs[3] & 0x0F, 0);
    }
}
