//! Q2_K: 256 weights per super-block as 2-bit codes, 16 sub-blocks of 16
//! with a 4-bit scale and a 4-bit min each (byte `scales[j]`: scale low,
//! min high) against the f16 super-block scales `d` and `dmin`:
//! `w = d * sc_j * q - dmin * m_j`. Element `128n + 32k + l` (k in 0..4)
//! takes bits `2k..2k + 2` of `qs[32n + l]` and sub-block `8n + 2k + l / 16`.
//! Pairs with Q8_K activations.

use super::blocks::QK_K;
use super::q8_k::BlockQ8K;
use super::{nearest_int, DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 256 weights: 2-bit codes, 4-bit scales and mins per 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    /// scale of sub-block j in the low nibble, its min in the high one
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

impl QuantBlock for BlockQ2K {
    const DTYPE: DType = DType::Q2_K;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ2K {
    type Act = BlockQ8K;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        vec_dot(w, a)
    }
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q2_k
    }
}

/// The 2-bit code of element `e` (0..256) of a block.
#[inline]
pub fn code(b: &BlockQ2K, e: usize) -> u8 {
    let (n, k, l) = (e / 128, (e / 32) % 4, e % 32);
    (b.qs[32 * n + l] >> (2 * k)) & 3
}

/// ggml's `make_qkx2_quants`: codes `L` in `0..=nmax` and (scale, -min)
/// for `x ≈ scale * L + min` (min <= 0), minimizing the weighted error
/// (absolute with `use_mad`) over `nstep + 1` candidate scales around the
/// range, each refit by least squares.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        best_error += weights[i] * err(scale * l as f32 + min - x[i]);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error: f32 = (0..n)
                .map(|i| weights[i] * err(this_scale * laux[i] as f32 + this_min - x[i]))
                .fold(0.0, |a, b| a + b);
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml `quantize_row_q2_K_ref`: per 16 weights a `make_qkx2_quants` fit
/// (weights |x|, absolute error), scales and mins to 4 bits against their
/// maxima, then the codes refit to the quantized scale and min.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ2K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut codes = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..16 {
            let xs = &xb[16 * j..16 * j + 16];
            let weights: [f32; 16] = std::array::from_fn(|l| xs[l].abs());
            let (s, m) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut codes[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = s;
            mins[j] = m;
            max_scale = max_scale.max(s);
            max_min = max_min.max(m);
        }
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for (sc, s) in b.scales.iter_mut().zip(&scales) {
                *sc = nearest_int(iscale * s) as u8;
            }
            b.d = f16::from_f32(max_scale / 15.0);
        } else {
            b.scales = [0; 16];
            b.d = f16::ZERO;
        }
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for (sc, m) in b.scales.iter_mut().zip(&mins) {
                *sc |= (nearest_int(iscale * m) as u8) << 4;
            }
            b.dmin = f16::from_f32(max_min / 15.0);
        } else {
            b.dmin = f16::ZERO;
        }
        for j in 0..16 {
            let d = b.d.to_f32() * (b.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = b.dmin.to_f32() * (b.scales[j] >> 4) as f32;
            for (c, &v) in codes[16 * j..16 * j + 16]
                .iter_mut()
                .zip(&xb[16 * j..16 * j + 16])
            {
                *c = nearest_int((v + dm) / d).clamp(0, 3) as u8;
            }
        }
        for n in 0..2 {
            for l in 0..32 {
                let c = |k: usize| codes[128 * n + 32 * k + l];
                b.qs[32 * n + l] = c(0) | (c(1) << 2) | (c(2) << 4) | (c(3) << 6);
            }
        }
    }
}

pub fn dequantize_row(blocks: &[BlockQ2K], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        for (e, o) in yb.iter_mut().enumerate() {
            let sc = b.scales[e / 16];
            let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
            *o = dl * code(b, e) as f32 - ml;
        }
    }
}

pub fn vec_dot(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let summs: i32 = (0..16)
            .map(|j| i32::from(y.bsums[j]) * i32::from(x.scales[j] >> 4))
            .sum();
        let isum: i32 = (0..16)
            .map(|j| {
                let dot: i32 = (16 * j..16 * j + 16)
                    .map(|e| i32::from(code(x, e)) * i32::from(y.qs[e]))
                    .sum();
                i32::from(x.scales[j] & 0xF) * dot
            })
            .sum();
        let dall = y.d * x.d.to_f32();
        let dmin = y.d * x.dmin.to_f32();
        sum += dall * isum as f32 - dmin * summs as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One block from the formula: sub-block j has scale j % 16 and min
    /// 15 - j, d = 0.5, dmin = 0.25; element e has code e % 4, so qs bytes
    /// hold codes k = 0..4 of four elements 32 apart.
    #[test]
    fn known_answer() {
        let mut b = BlockQ2K {
            scales: std::array::from_fn(|j| j as u8 | ((15 - j as u8) << 4)),
            qs: [0; 64],
            d: f16::from_f32(0.5),
            dmin: f16::from_f32(0.25),
        };
        for n in 0..2 {
            for l in 0..32 {
                for k in 0..4 {
                    let e = 128 * n + 32 * k + l;
                    b.qs[32 * n + l] |= ((e % 4) as u8) << (2 * k);
                }
            }
        }
        let mut y = [0f32; 256];
        dequantize_row(&[b], &mut y);
        for (e, v) in y.iter().enumerate() {
            let j = e / 16;
            let want = 0.5 * j as f32 * (e % 4) as f32 - 0.25 * (15 - j) as f32;
            assert_eq!(*v, want, "element {e}");
        }
        let mut a: BlockQ8K = Zeroable::zeroed();
        a.d = 0.5;
        a.qs = [2; 256];
        a.bsums = [32; 16];
        let want: f32 = y.iter().sum();
        assert!((vec_dot(&[b], &[a]) - want).abs() < 1e-3);
    }
}
