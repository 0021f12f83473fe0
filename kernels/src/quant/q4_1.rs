//! Q4_1: 32 weights per block, 4-bit codes with a minimum, `w = d * q + m`.
//! Pairs with Q8_1 activations (whose `s` folds the minimum in).

use super::blocks::QK;
use super::q8_1::BlockQ8_1;
use super::x16::X16Field;
use super::{DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 32 weights as 4-bit codes with a minimum: `w = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

impl QuantBlock for BlockQ4_1 {
    const DTYPE: DType = DType::Q4_1;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ4_1 {
    type Act = BlockQ8_1;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        vec_dot(w, a)
    }
    const X16_FIELDS: &'static [X16Field] =
        &[X16Field::f16(0), X16Field::f16(2), X16Field::codes(4, 16)];
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q4_1
    }
}

/// ggml `quantize_row_q4_1_ref`.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ4_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let min = xb.iter().copied().fold(f32::MAX, f32::min);
        let max = xb.iter().copied().fold(f32::MIN, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[j + QK / 2] - min) * id;
            let q0 = ((x0 + 0.5) as i8).min(15) as u8;
            let q1 = ((x1 + 0.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

pub fn dequantize_row(blocks: &[BlockQ4_1], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        for j in 0..QK / 2 {
            yb[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            yb[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

pub fn vec_dot(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += (x.qs[j] & 0x0F) as i32 * y.qs[j] as i32
                + (x.qs[j] >> 4) as i32 * y.qs[j + QK / 2] as i32;
        }
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ4_1 {
            d: f16::from_f32(0.5),
            m: f16::from_f32(-1.0),
            qs: [0; 16],
        };
        for j in 0..16 {
            b.qs[j] = (j as u8) | (3 << 4);
        }
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[0], -1.0);
        assert_eq!(y[15], 6.5);
        assert_eq!(y[20], 0.5);
        // activations all 1 * d=0.5: sum q = 120 + 16*3 = 168; s = d*sum(qs) = 0.5*64
        let a = BlockQ8_1 {
            d: f16::from_f32(0.5),
            s: f16::from_f32(32.0),
            qs: [2; 32],
        };
        let expect: f32 = y.iter().sum::<f32>() * 1.0;
        assert!(
            (vec_dot(&[b], &[a]) - expect).abs() < 1e-4,
            "{} vs {expect}",
            vec_dot(&[b], &[a])
        );
    }
}
