//! IQ4_NL: 32 weights per block as 4-bit indices into a fixed non-linear
//! table of 16 levels ([`KVALUES`]), `w = d * KVALUES[q]`, nibbles laid out
//! as Q4_0 (elements 0..16 low, 16..32 high). Pairs with Q8_0 activations.
//! IQ4_XS uses the same levels and the same scale search.

use super::blocks::QK;
use super::q8_0::BlockQ8_0;
use super::{signed_absmax, DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// ggml's `kvalues_iq4nl`: the 16 levels, denser near zero.
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// 32 weights as 4-bit level indices: `w = d * KVALUES[q]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4NL {
    pub d: f16,
    /// low nibbles hold elements 0..16, high nibbles elements 16..32
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);

impl QuantBlock for BlockIQ4NL {
    const DTYPE: DType = DType::IQ4_NL;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockIQ4NL {
    type Act = BlockQ8_0;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        vec_dot(w, a)
    }
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.iq4_nl
    }
}

/// ggml's `best_index_int8`: the index of the level nearest `x` (the
/// upper one on a tie).
pub(crate) fn best_index(x: f32) -> u8 {
    let v = |i: usize| f32::from(KVALUES[i]);
    if x <= v(0) {
        return 0;
    }
    if x >= v(15) {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < v(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - v(hi - 1) < v(hi) - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

/// The scale of one 32-weight block by ggml's IQ4 search
/// (`quantize_row_iq4_nl_impl` with `ntry` 7 and weights `x²`): the scale
/// that maps the value of largest magnitude onto the outermost level, then
/// 15 candidate scales around it, each refit by weighted least squares,
/// keeping the best fit. 0 for an all-zero block.
pub(crate) fn best_scale(xb: &[f32]) -> f32 {
    const NTRY: i32 = 7;
    let max = signed_absmax(xb);
    if max.abs() < 1e-15 {
        return 0.0;
    }
    let fit = |id: f32| {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for &x in xb {
            let q = f32::from(KVALUES[usize::from(best_index(id * x))]);
            let w = x * x;
            sumqx += w * q * x;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let d = -max / f32::from(KVALUES[0]);
    let (sumqx, sumq2) = fit(1.0 / d);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let (sumqx, sumq2) = fit((itry as f32 + f32::from(KVALUES[0])) / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Nibble-packs the level indices of 32 weights (`Q4_0` order).
pub(crate) fn pack_indices(xb: &[f32], id: f32, qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = best_index(id * xb[j]) | (best_index(id * xb[j + QK / 2]) << 4);
    }
}

/// ggml `quantize_iq4_nl` (the quantizer of model files, without an
/// importance matrix): [`best_scale`], stored as f16, and every weight's
/// nearest level against the unrounded scale.
pub fn quantize_row(x: &[f32], out: &mut [BlockIQ4NL]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let d = best_scale(xb);
        b.d = f16::from_f32(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        pack_indices(xb, id, &mut b.qs);
    }
}

pub fn dequantize_row(blocks: &[BlockIQ4NL], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            yb[j] = d * f32::from(KVALUES[usize::from(b.qs[j] & 0xF)]);
            yb[j + QK / 2] = d * f32::from(KVALUES[usize::from(b.qs[j] >> 4)]);
        }
    }
}

pub fn vec_dot(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let d = y.d.to_f32() * x.d.to_f32();
        let sumi: i32 = (0..QK / 2)
            .map(|j| {
                i32::from(y.qs[j]) * i32::from(KVALUES[usize::from(x.qs[j] & 0xF)])
                    + i32::from(y.qs[j + QK / 2]) * i32::from(KVALUES[usize::from(x.qs[j] >> 4)])
            })
            .sum();
        sum += d * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_is_the_nearest_level() {
        for i in -140..=140 {
            let x = i as f32 + 0.25;
            let got = usize::from(best_index(x));
            let nearest = (0..16)
                .min_by(|&a, &b| {
                    (x - f32::from(KVALUES[a]))
                        .abs()
                        .total_cmp(&(x - f32::from(KVALUES[b])).abs())
                })
                .unwrap();
            assert_eq!(got, nearest, "x = {x}");
        }
        // a tie goes to the upper level: halfway between 1 and 13
        assert_eq!(best_index(7.0), 9);
        assert_eq!(best_index(6.999), 8);
    }

    #[test]
    fn known_answer() {
        let mut b = BlockIQ4NL {
            d: f16::from_f32(0.5),
            qs: [0; 16],
        };
        for j in 0..16 {
            b.qs[j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        for j in 0..16 {
            assert_eq!(y[j], 0.5 * f32::from(KVALUES[j]));
            assert_eq!(y[16 + j], 0.5 * f32::from(KVALUES[15 - j]));
        }
        let a = BlockQ8_0 {
            d: f16::from_f32(0.25),
            qs: [2; 32],
        };
        let expect: f32 = y.iter().map(|v| v * 0.5).sum();
        assert_eq!(vec_dot(&[b], &[a]), expect);
    }

    /// A block that is a scaled copy of the levels gets exactly those
    /// levels back, at the f16 of the scale.
    #[test]
    fn a_block_on_the_levels_round_trips() {
        let x: Vec<f32> = (0..32).map(|j| 0.01 * f32::from(KVALUES[j % 16])).collect();
        let mut b = [BlockIQ4NL::zeroed()];
        quantize_row(&x, &mut b);
        for j in 0..16 {
            assert_eq!(usize::from(b[0].qs[j] & 0xF), j);
            assert_eq!(usize::from(b[0].qs[j] >> 4), j);
        }
        assert!((b[0].d.to_f32() - 0.01).abs() < 1e-5, "{}", b[0].d);
    }
}
