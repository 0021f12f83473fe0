//! Q3_K: 256 weights per super-block as 3-bit codes around 4, 16
//! sub-blocks of 16 with signed 6-bit scales against the f16 `d`:
//! `w = d * (sc_j - 32) * (q - 4)`. Element `128n + 32k + l` (k in 0..4)
//! takes its low two bits from bits `2k..2k + 2` of `qs[32n + l]`, its high
//! bit from bit `4n + k` of `hmask[l]` (set: +4), and sub-block
//! `8n + 2k + l / 16`. Scale `j` keeps its low nibble in byte `j` (j < 8) or
//! the high nibble of byte `j - 8`, its top two bits in bits
//! `2 (j / 4)..` of byte `8 + j % 4`. Pairs with Q8_K activations.

use super::blocks::QK_K;
use super::q8_k::BlockQ8K;
use super::{nearest_int, signed_absmax, DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 256 weights: 3-bit codes (2 low bits + a high-bit mask), 6-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

impl QuantBlock for BlockQ3K {
    const DTYPE: DType = DType::Q3_K;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ3K {
    type Act = BlockQ8K;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        vec_dot(w, a)
    }
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q3_k
    }
}

/// The signed scale (-32..32) of sub-block `j` (0..16).
#[inline]
pub fn scale(scales: &[u8; 12], j: usize) -> i8 {
    let lo = if j < 8 {
        scales[j] & 0xF
    } else {
        scales[j - 8] >> 4
    };
    let hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i8 - 32
}

/// The signed code (-4..4) of element `e` (0..256) of a block.
#[inline]
pub fn code(b: &BlockQ3K, e: usize) -> i8 {
    let (n, k, l) = (e / 128, (e / 32) % 4, e % 32);
    let low = ((b.qs[32 * n + l] >> (2 * k)) & 3) as i8;
    let high = (b.hmask[l] >> (4 * n + k)) & 1;
    low - if high == 1 { 0 } else { 4 }
}

/// ggml's `make_q3_quants` with its RMSE refinement: codes `L` in
/// `0..2 * nmax` (offset by `nmax`) and the scale, weighting each element
/// by `x²` and moving codes one at a time while the fit improves.
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < 1e-15 {
        l_out[..x.len()].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (l, &v) in l_out.iter_mut().zip(x) {
        *l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as i8;
        let w = v * v;
        sumlx += w * v * *l as f32;
        suml2 += w * *l as f32 * *l as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (l, &v) in l_out.iter_mut().zip(x) {
            let w = v * v;
            let mut slx = sumlx - w * v * *l as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * *l as f32 * *l as f32;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(*l) {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for l in l_out.iter_mut().take(x.len()) {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml `quantize_row_q3_K_ref`: per 16 weights a `make_q3_quants` fit,
/// the scales to 6 bits against the one of largest magnitude (which maps
/// to -32), then the codes refit to the quantized scales.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ3K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut codes = [0i8; QK_K];
        let mut scales = [0f32; 16];
        for (j, s) in scales.iter_mut().enumerate() {
            *s = make_q3_quants(4, &xb[16 * j..16 * j + 16], &mut codes[16 * j..16 * j + 16]);
        }
        let max_scale = signed_absmax(&scales);
        b.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, s) in scales.iter().enumerate() {
                let l = (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    b.scales[j] = l & 0xF;
                } else {
                    b.scales[j - 8] |= (l & 0xF) << 4;
                }
                b.scales[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
            }
            b.d = f16::from_f32(1.0 / iscale);
        } else {
            b.d = f16::ZERO;
        }
        for j in 0..16 {
            let d = b.d.to_f32() * f32::from(scale(&b.scales, j));
            if d == 0.0 {
                continue;
            }
            for (c, &v) in codes[16 * j..16 * j + 16]
                .iter_mut()
                .zip(&xb[16 * j..16 * j + 16])
            {
                *c = (nearest_int(v / d).clamp(-4, 3) + 4) as i8;
            }
        }
        b.hmask = [0; 32];
        for (e, c) in codes.iter_mut().enumerate() {
            if *c > 3 {
                b.hmask[e % 32] |= 1 << (e / 32);
                *c -= 4;
            }
        }
        for n in 0..2 {
            for l in 0..32 {
                let c = |k: usize| codes[128 * n + 32 * k + l] as u8;
                b.qs[32 * n + l] = c(0) | (c(1) << 2) | (c(2) << 4) | (c(3) << 6);
            }
        }
    }
}

pub fn dequantize_row(blocks: &[BlockQ3K], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (e, o) in yb.iter_mut().enumerate() {
            let dl = d * f32::from(scale(&b.scales, e / 16));
            *o = dl * f32::from(code(b, e));
        }
    }
}

pub fn vec_dot(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let isum: i32 = (0..16)
            .map(|j| {
                let dot: i32 = (16 * j..16 * j + 16)
                    .map(|e| i32::from(code(x, e)) * i32::from(y.qs[e]))
                    .sum();
                i32::from(scale(&x.scales, j)) * dot
            })
            .sum();
        sum += x.d.to_f32() * y.d * isum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_packing_matches_ggmls_layout() {
        // scale j = j - 16 + 32 (6-bit), packed as quantize_row does
        let mut s = [0u8; 12];
        for j in 0..16 {
            let l = (j as u8 + 16) & 63;
            if j < 8 {
                s[j] = l & 0xF;
            } else {
                s[j - 8] |= (l & 0xF) << 4;
            }
            s[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
        }
        for j in 0..16 {
            assert_eq!(scale(&s, j), j as i8 - 16, "sub-block {j}");
        }
    }

    /// One block from the formula: every low-bit pair 2 (0b10), the high
    /// bit set on even elements, all scales 1 (stored 33), d = 0.5.
    #[test]
    fn known_answer() {
        let mut b = BlockQ3K {
            hmask: [0x55; 32],
            qs: [0xAA; 64],
            scales: [0; 12],
            d: f16::from_f32(0.5),
        };
        for j in 0..16 {
            let l = 33u8;
            if j < 8 {
                b.scales[j] = l & 0xF;
            } else {
                b.scales[j - 8] |= (l & 0xF) << 4;
            }
            b.scales[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
        }
        let mut y = [0f32; 256];
        dequantize_row(&[b], &mut y);
        for (e, v) in y.iter().enumerate() {
            // high bit of element e: bit 4n + k of hmask[l] = 0x55 -> set iff (4n + k) even
            let (n, k) = (e / 128, (e / 32) % 4);
            let q = if (4 * n + k) % 2 == 0 { 2 } else { -2 };
            assert_eq!(*v, 0.5 * q as f32, "element {e}");
        }
    }
}
