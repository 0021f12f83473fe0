//! IQ4_XS: 256 weights per super-block as 4-bit indices into the IQ4_NL
//! levels, 8 sub-blocks of 32 with signed 6-bit scales against the f16
//! `d`: `w = d * (ls_j - 32) * KVALUES[q]`. Scale `j` keeps its low nibble
//! in `scales_l[j / 2]` (low nibble for even `j`) and its top two bits in
//! bits `2j..2j + 2` of `scales_h`; each sub-block's 16 code bytes are laid
//! out as one IQ4_NL block. Pairs with Q8_K activations.

use super::blocks::QK_K;
use super::iq4_nl::{best_scale, pack_indices, KVALUES};
use super::q8_k::BlockQ8K;
use super::{nearest_int, signed_absmax, DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 256 weights: IQ4_NL levels with 6-bit sub-block scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4XS {
    pub d: f16,
    pub scales_h: u16,
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == 136);

impl QuantBlock for BlockIQ4XS {
    const DTYPE: DType = DType::IQ4_XS;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockIQ4XS {
    type Act = BlockQ8K;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        vec_dot(w, a)
    }
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.iq4_xs
    }
}

/// The signed scale (-32..32) of sub-block `j` (0..8).
#[inline]
pub fn scale(b: &BlockIQ4XS, j: usize) -> i32 {
    let lo = (b.scales_l[j / 2] >> (4 * (j % 2))) & 0xF;
    let hi = ((b.scales_h >> (2 * j)) & 3) as u8;
    i32::from(lo | (hi << 4)) - 32
}

/// ggml `quantize_iq4_xs` (without an importance matrix): each sub-block's
/// scale by the IQ4 search, the scales to 6 bits against the one of
/// largest magnitude (which maps to -32), then every weight's nearest
/// level against its quantized sub-block scale.
pub fn quantize_row(x: &[f32], out: &mut [BlockIQ4XS]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let scales: [f32; 8] = std::array::from_fn(|j| best_scale(&xb[32 * j..32 * j + 32]));
        let max_scale = signed_absmax(&scales);
        let d = -max_scale / 32.0;
        b.d = f16::from_f32(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.scales_h = 0;
        b.scales_l = [0; 4];
        for (j, s) in scales.iter().enumerate() {
            let l = nearest_int(id * s).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            pack_indices(
                &xb[32 * j..32 * j + 32],
                idl,
                &mut b.qs[16 * j..16 * j + 16],
            );
            let l = (l + 32) as u8;
            b.scales_l[j / 2] |= (l & 0xF) << (4 * (j % 2));
            b.scales_h |= u16::from(l >> 4) << (2 * j);
        }
    }
}

pub fn dequantize_row(blocks: &[BlockIQ4XS], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (j, ys) in yb.chunks_exact_mut(32).enumerate() {
            let dl = d * scale(b, j) as f32;
            let qs = &b.qs[16 * j..16 * j + 16];
            for l in 0..16 {
                ys[l] = dl * f32::from(KVALUES[usize::from(qs[l] & 0xF)]);
                ys[l + 16] = dl * f32::from(KVALUES[usize::from(qs[l] >> 4)]);
            }
        }
    }
}

pub fn vec_dot(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let d4d8 = x.d.to_f32() * y.d;
        for j in 0..8 {
            let (qs, q8) = (&x.qs[16 * j..16 * j + 16], &y.qs[32 * j..32 * j + 32]);
            let sumi: i32 = (0..16)
                .map(|l| {
                    i32::from(q8[l]) * i32::from(KVALUES[usize::from(qs[l] & 0xF)])
                        + i32::from(q8[l + 16]) * i32::from(KVALUES[usize::from(qs[l] >> 4)])
                })
                .sum();
            sum += d4d8 * scale(x, j) as f32 * sumi as f32;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One block from the formula: sub-block j has scale j - 4 (stored
    /// j + 28), d = 0.25, code byte l of each sub-block holds indices
    /// (l, 15 - l).
    #[test]
    fn known_answer() {
        let mut b = BlockIQ4XS {
            d: f16::from_f32(0.25),
            scales_h: 0,
            scales_l: [0; 4],
            qs: [0; 128],
        };
        for j in 0..8 {
            let l = (j + 28) as u8;
            b.scales_l[j / 2] |= (l & 0xF) << (4 * (j % 2));
            b.scales_h |= u16::from(l >> 4) << (2 * j);
            for i in 0..16 {
                b.qs[16 * j + i] = (i as u8) | ((15 - i as u8) << 4);
            }
        }
        let mut y = [0f32; 256];
        dequantize_row(&[b], &mut y);
        for (e, v) in y.iter().enumerate() {
            let (j, l) = (e / 32, e % 32);
            let q = if l < 16 { KVALUES[l] } else { KVALUES[31 - l] };
            assert_eq!(*v, 0.25 * (j as f32 - 4.0) * f32::from(q), "element {e}");
        }
        let mut a: BlockQ8K = Zeroable::zeroed();
        a.d = 0.5;
        a.qs = [2; 256];
        let want: f32 = y.iter().sum();
        assert!((vec_dot(&[b], &[a]) - want).abs() < 1e-3);
    }
}
