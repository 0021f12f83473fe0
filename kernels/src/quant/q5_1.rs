//! Q5_1: 32 weights per block, 5-bit codes with a minimum, `w = d * q + m`,
//! the bits laid out as in Q5_0. Pairs with Q8_1 activations (whose `s`
//! folds the minimum in).

use super::blocks::QK;
use super::q8_1::BlockQ8_1;
use super::{DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 32 weights as 5-bit codes `q` in 0..32 with a minimum: `w = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    /// fifth bits, element `j` in bit `j` (little-endian u32)
    pub qh: [u8; 4],
    /// low nibbles hold elements 0..16, high nibbles elements 16..32
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

impl QuantBlock for BlockQ5_1 {
    const DTYPE: DType = DType::Q5_1;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ5_1 {
    type Act = BlockQ8_1;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        vec_dot(w, a)
    }
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q5_1
    }
}

/// The 5-bit code (0..32) of element `j` of a block.
#[inline]
pub fn code(b: &BlockQ5_1, j: usize) -> u8 {
    let qh = u32::from_le_bytes(b.qh);
    let lo = if j < QK / 2 {
        b.qs[j] & 0x0F
    } else {
        b.qs[j - QK / 2] >> 4
    };
    lo | ((((qh >> j) & 1) as u8) << 4)
}

/// ggml `quantize_row_q5_1_ref`: 31 steps from the minimum to the maximum,
/// codes rounded half up.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ5_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let min = xb.iter().copied().fold(f32::MAX, f32::min);
        let max = xb.iter().copied().fold(f32::MIN, f32::max);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            // codes stay in 0..=31: (x - min) * id <= 31 up to rounding
            let q0 = ((xb[j] - min) * id + 0.5) as u8;
            let q1 = ((xb[j + QK / 2] - min) * id + 0.5) as u8;
            b.qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= u32::from((q0 >> 4) & 1) << j;
            qh |= u32::from((q1 >> 4) & 1) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

pub fn dequantize_row(blocks: &[BlockQ5_1], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (j, o) in yb.iter_mut().enumerate() {
            *o = f32::from(code(b, j)) * d + m;
        }
    }
}

pub fn vec_dot(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi: i32 = (0..QK)
            .map(|j| i32::from(code(x, j)) * i32::from(y.qs[j]))
            .sum();
        sum += (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ5_1 {
            d: f16::from_f32(0.5),
            m: f16::from_f32(-1.0),
            qh: 0x8000_0001u32.to_le_bytes(),
            qs: [0; 16],
        };
        for j in 0..16 {
            b.qs[j] = (j as u8) | (3 << 4);
        }
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[0], 16.0 * 0.5 - 1.0);
        assert_eq!(y[15], 15.0 * 0.5 - 1.0);
        assert_eq!(y[20], 3.0 * 0.5 - 1.0);
        assert_eq!(y[31], 19.0 * 0.5 - 1.0);
        // activations all 2 * d=0.5 (value 1): s = d * sum(qs) = 0.5 * 64
        let a = BlockQ8_1 {
            d: f16::from_f32(0.5),
            s: f16::from_f32(32.0),
            qs: [2; 32],
        };
        let expect: f32 = y.iter().sum();
        assert_eq!(vec_dot(&[b], &[a]), expect);
    }
}
