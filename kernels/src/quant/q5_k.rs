//! Q5_K: Q4_K plus a fifth bit per weight in `qh`; `w = d * sc_j * q -
//! dmin * m_j` with q in 0..32. Pairs with Q8_K activations.

use super::blocks::{K_SCALE_SIZE, QK_K};
use super::q4_k::{pack_scale_min_k4, scale_min_k4, sub_codes, sub_scales_mins};
use super::q8_k::BlockQ8K;
use super::x16::X16Field;
use super::{DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 256 weights: Q4_K plus one high bit per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl QuantBlock for BlockQ5K {
    const DTYPE: DType = DType::Q5_K;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ5K {
    type Act = BlockQ8K;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        vec_dot(w, a)
    }
    /// Q4_K's record with the fifth bits between the scales and the codes:
    /// 8 `qh` lines (line `h`: `qh[4h..4h + 4]`, the bits of elements
    /// `64c + 4h..` at bit `2c` and `64c + 32 + 4h..` at bit `2c + 1`).
    const X16_FIELDS: &'static [X16Field] = &[
        X16Field::f16(0),
        X16Field::f16(2),
        X16Field::codes(4, K_SCALE_SIZE),
        X16Field::codes(16, QK_K / 8),
        X16Field::codes(48, QK_K / 2),
    ];
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q5_k
    }
}

pub fn quantize_row(x: &[f32], out: &mut [BlockQ5K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (d, dmin, ls, lm) = sub_scales_mins(xb, 31.0);
        b.d = d;
        b.dmin = dmin;
        b.scales = pack_scale_min_k4(&ls, &lm);
        let mut codes = [0u8; QK_K];
        for j in 0..8 {
            let dj = d.to_f32() * ls[j] as f32;
            let mj = dmin.to_f32() * lm[j] as f32;
            sub_codes(
                &xb[32 * j..32 * j + 32],
                dj,
                mj,
                31,
                &mut codes[32 * j..32 * j + 32],
            );
        }
        b.qh = [0; 32];
        for c in 0..4 {
            for l in 0..32 {
                let lo = codes[64 * c + l];
                let hi = codes[64 * c + 32 + l];
                b.qs[32 * c + l] = (lo & 0xF) | ((hi & 0xF) << 4);
                b.qh[l] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
            }
        }
    }
}

/// The 5-bit code of element `e` (0..256) of a block.
#[inline]
fn code(b: &BlockQ5K, e: usize) -> u8 {
    let (c, l, high) = (e / 64, e % 32, (e / 32) % 2);
    let lo = (b.qs[32 * c + l] >> (4 * high)) & 0xF;
    let hbit = (b.qh[l] >> (2 * c + high)) & 1;
    lo | (hbit << 4)
}

pub fn dequantize_row(blocks: &[BlockQ5K], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &b.scales);
            let (dj, mj) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                yb[32 * j + l] = dj * code(b, 32 * j + l) as f32 - mj;
            }
        }
    }
}

pub fn vec_dot(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        let mut summs = 0i32;
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &x.scales);
            summs += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
            let isum: i32 = (0..32)
                .map(|l| code(x, 32 * j + l) as i32 * y.qs[32 * j + l] as i32)
                .sum();
            sumi += sc as i32 * isum;
        }
        sum += y.d * x.d.to_f32() * sumi as f32 - y.d * x.dmin.to_f32() * summs as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's layout: element 64c + l takes bit 2c of qh[l], element
    /// 64c + 32 + l takes bit 2c + 1.
    #[test]
    fn known_answer() {
        let mut b = BlockQ5K {
            d: f16::from_f32(1.0),
            dmin: f16::from_f32(1.0),
            scales: pack_scale_min_k4(&[1; 8], &[16; 8]),
            qh: [0; 32],
            qs: [0; 128],
        };
        b.qh[5] = 0b0001_0000; // element 128 + 5: bit 2c for c = 2
        b.qh[6] = 0b1000_0000; // element 192 + 32 + 6
        b.qs[32 * 2 + 5] = 0x07;
        let mut y = [0f32; 256];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[133], 16.0 + 7.0 - 16.0);
        assert_eq!(y[230], 16.0 - 16.0);
        assert_eq!(y[0], -16.0);
        assert_eq!(y.iter().filter(|&&v| v != -16.0).count(), 2);
    }
}
