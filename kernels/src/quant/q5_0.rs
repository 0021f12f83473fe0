//! Q5_0: 32 weights per block, 5-bit codes around 16, `w = d * (q - 16)`:
//! the low 4 bits in nibbles as Q4_0 (elements 0..16 low, 16..32 high),
//! the fifth bit of element `j` in bit `j` of the little-endian `qh`.
//! Pairs with Q8_0 activations.

use super::blocks::QK;
use super::q8_0::BlockQ8_0;
use super::x16::X16Field;
use super::{signed_absmax, DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 32 weights as 5-bit codes `q` in 0..32: `w = d * (q - 16)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    /// fifth bits, element `j` in bit `j` (little-endian u32)
    pub qh: [u8; 4],
    /// low nibbles hold elements 0..16, high nibbles elements 16..32
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

impl QuantBlock for BlockQ5_0 {
    const DTYPE: DType = DType::Q5_0;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ5_0 {
    type Act = BlockQ8_0;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        vec_dot(w, a)
    }
    /// The `d` plane, one `qh` line (the 32 fifth bits of each row), then
    /// the 4 code lines of Q4_0.
    const X16_FIELDS: &'static [X16Field] =
        &[X16Field::f16(0), X16Field::codes(2, 4), X16Field::codes(6, QK / 2)];
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q5_0
    }
}

/// The 5-bit code (0..32) of element `j` of a block.
#[inline]
pub fn code(b: &BlockQ5_0, j: usize) -> u8 {
    let qh = u32::from_le_bytes(b.qh);
    let lo = if j < QK / 2 {
        b.qs[j] & 0x0F
    } else {
        b.qs[j - QK / 2] >> 4
    };
    lo | ((((qh >> j) & 1) as u8) << 4)
}

/// ggml `quantize_row_q5_0_ref`: the value of largest magnitude maps to
/// -16, codes truncated after adding 16.5.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ5_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let max = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = ((xb[j] * id + 16.5) as i8).min(31) as u8;
            let q1 = ((xb[j + QK / 2] * id + 16.5) as i8).min(31) as u8;
            b.qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= u32::from(q0 >> 4) << j;
            qh |= u32::from(q1 >> 4) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

pub fn dequantize_row(blocks: &[BlockQ5_0], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (j, o) in yb.iter_mut().enumerate() {
            *o = (i32::from(code(b, j)) - 16) as f32 * d;
        }
    }
}

pub fn vec_dot(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi: i32 = (0..QK)
            .map(|j| (i32::from(code(x, j)) - 16) * i32::from(y.qs[j]))
            .sum();
        sum += sumi as f32 * (x.d.to_f32() * y.d.to_f32());
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One block by hand: element j has low bits j % 16 and the fifth bit
    /// set for odd j, so code(j) = j % 16 + 16 * (j % 2).
    #[test]
    fn known_answer() {
        let mut b = BlockQ5_0 {
            d: f16::from_f32(0.5),
            qh: 0xAAAA_AAAAu32.to_le_bytes(),
            qs: [0; 16],
        };
        for j in 0..16 {
            b.qs[j] = (j as u8) | ((j as u8) << 4);
        }
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        for (j, v) in y.iter().enumerate() {
            let q = (j % 16 + 16 * (j % 2)) as f32;
            assert_eq!(*v, (q - 16.0) * 0.5, "element {j}");
        }
        let a = BlockQ8_0 {
            d: f16::from_f32(0.25),
            qs: [2; 32],
        };
        let expect: f32 = y.iter().map(|v| v * 0.5).sum();
        assert_eq!(vec_dot(&[b], &[a]), expect);
    }

    #[test]
    fn max_magnitude_maps_to_minus_sixteen_and_rounds_like_ggml() {
        let mut x = [0.0f32; 32];
        x[3] = -3.2;
        x[20] = 1.0; // 1.0 * 5 + 16.5 = 21.5 -> 21
        x[31] = 3.2; // 16 + 16.5 = 32.5 -> 32, clamped to 31
        let mut b = [BlockQ5_0::zeroed()];
        quantize_row(&x, &mut b);
        assert_eq!(b[0].d, f16::from_f32(0.2));
        assert_eq!(code(&b[0], 3), 0);
        assert_eq!(code(&b[0], 20), 21);
        assert_eq!(code(&b[0], 31), 31);
        assert_eq!(code(&b[0], 0), 16);
    }
}
