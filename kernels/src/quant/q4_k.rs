//! Q4_K: 256 weights per super-block, 8 sub-blocks of 32 with 6-bit scales
//! and mins packed in 12 bytes; `w = d * sc_j * q - dmin * m_j`. Pairs with
//! Q8_K activations.

use super::blocks::{K_SCALE_SIZE, QK_K};
use super::q8_k::BlockQ8K;
use super::x16::X16Field;
use super::{nearest_int, DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 256 weights: 8 sub-blocks of 32 with 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

impl QuantBlock for BlockQ4K {
    const DTYPE: DType = DType::Q4_K;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ4K {
    type Act = BlockQ8K;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        vec_dot(w, a)
    }
    /// `d` and `dmin` planes, the 12 scale bytes as 3 lines (line `k`:
    /// bytes `4k..4k + 4` of each row), then 32 code lines (line `g`:
    /// `qs[4g..4g + 4]`, so lines `8c..8c + 8` hold sub-block `2c` in their
    /// low nibbles and `2c + 1` in their high ones).
    const X16_FIELDS: &'static [X16Field] = &[
        X16Field::f16(0),
        X16Field::f16(2),
        X16Field::codes(4, K_SCALE_SIZE),
        X16Field::codes(16, QK_K / 2),
    ];
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q4_k
    }
}

/// ggml `get_scale_min_k4`: the 6-bit (scale, min) of sub-block `j` (0..8).
/// Sub-blocks 0..4 keep theirs in the low 6 bits of bytes `j` and `j + 4`;
/// sub-blocks 4..8 split theirs into a nibble in byte `j + 4` and the top two
/// bits of bytes `j - 4` and `j`.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Inverse of [`scale_min_k4`] for eight 6-bit pairs.
pub fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut q = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        let (s, m) = (ls[j] & 63, lm[j] & 63);
        if j < 4 {
            q[j] |= s;
            q[j + 4] |= m;
        } else {
            q[j + 4] = (s & 0xF) | ((m & 0xF) << 4);
            q[j - 4] |= (s >> 4) << 6;
            q[j] |= (m >> 4) << 6;
        }
    }
    q
}

/// Per sub-block (scale, -min) for `nmax` levels ([`fit_scale_min`]), then
/// both quantized to 6 bits against the super-block maxima. Returns (d,
/// dmin, ls, lm).
pub(crate) fn sub_scales_mins(x: &[f32], nmax: f32) -> (f16, f16, [u8; 8], [u8; 8]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, xs) in x.chunks_exact(32).enumerate() {
        (scales[j], mins[j]) = fit_scale_min(xs, nmax);
    }
    let max_scale = scales.iter().copied().fold(0f32, f32::max);
    let max_min = mins.iter().copied().fold(0f32, f32::max);
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        lm[j] = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
    }
    (
        f16::from_f32(max_scale / 63.0),
        f16::from_f32(max_min / 63.0),
        ls,
        lm,
    )
}

/// The (scale, -min) of one sub-block that `x ≈ scale·q - (-min)` with
/// codes `q` in `0..=nmax` fits best, with `min <= 0` (the format stores
/// `-min` unsigned).
///
/// Min/max endpoints waste levels on outliers, so a range of candidate
/// scales around them is tried: each gives codes, the codes give the
/// weighted least-squares (scale, min), and the lowest weighted squared
/// error wins. Weights `rms(x) + |x|` favour the large values that carry
/// most of a dot product (ggml's k-quants weigh the same way).
///
/// `xs` is one sub-block: 32 values (any beyond are not part of the fit).
pub(crate) fn fit_scale_min(xs: &[f32], nmax: f32) -> (f32, f32) {
    // The weights stay on the stack: this runs once per sub-block of every
    // matrix quantized at load.
    let xs = &xs[..xs.len().min(32)];
    let lo = xs.iter().copied().fold(0f32, f32::min);
    let hi = xs.iter().copied().fold(f32::MIN, f32::max);
    if hi.is_nan() || lo.is_nan() || hi <= lo {
        return (0.0, -lo);
    }
    let rms = (xs.iter().map(|v| v * v).sum::<f32>() / xs.len() as f32).sqrt();
    let mut weights = [0f32; 32];
    let weights = &mut weights[..xs.len()];
    for (w, v) in weights.iter_mut().zip(xs) {
        *w = rms + v.abs();
    }
    let error = |scale: f32, min: f32| -> f32 {
        xs.iter()
            .zip(weights.iter())
            .map(|(&v, &w)| {
                let q = if scale > 0.0 {
                    nearest_int((v - min) / scale).clamp(0, nmax as i32) as f32
                } else {
                    0.0
                };
                let e = scale * q + min - v;
                w * e * e
            })
            .sum()
    };
    let mut best = ((hi - lo) / nmax, lo);
    let mut best_err = error(best.0, best.1);
    // Candidate inverse scales (nmax + t) / (hi - lo), t in [-1, 1].
    for step in 0..=20 {
        let iscale = (nmax - 1.0 + 0.1 * step as f32) / (hi - lo);
        let (mut sw, mut sl, mut sl2, mut sx, mut slx) = (0f32, 0f32, 0f32, 0f32, 0f32);
        for (&v, &w) in xs.iter().zip(weights.iter()) {
            let l = nearest_int(iscale * (v - lo)).clamp(0, nmax as i32) as f32;
            sw += w;
            sl += w * l;
            sl2 += w * l * l;
            sx += w * v;
            slx += w * l * v;
        }
        let det = sw * sl2 - sl * sl;
        if det <= 0.0 {
            continue;
        }
        let mut scale = (sw * slx - sx * sl) / det;
        let mut min = (sl2 * sx - sl * slx) / det;
        if min > 0.0 {
            min = 0.0;
            scale = slx / sl2;
        }
        if scale.is_nan() || scale <= 0.0 {
            continue;
        }
        let err = error(scale, min);
        if err < best_err {
            best = (scale, min);
            best_err = err;
        }
    }
    (best.0, -best.1)
}

/// Codes of sub-block `xs` against the dequantized (scale, min).
pub(crate) fn sub_codes(xs: &[f32], d: f32, dm: f32, nmax: i32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(xs) {
        *o = if d > 0.0 {
            nearest_int((v + dm) / d).clamp(0, nmax) as u8
        } else {
            0
        };
    }
}

pub fn quantize_row(x: &[f32], out: &mut [BlockQ4K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (d, dmin, ls, lm) = sub_scales_mins(xb, 15.0);
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
                15,
                &mut codes[32 * j..32 * j + 32],
            );
        }
        for c in 0..4 {
            for l in 0..32 {
                b.qs[32 * c + l] = codes[64 * c + l] | (codes[64 * c + 32 + l] << 4);
            }
        }
    }
}

pub fn dequantize_row(blocks: &[BlockQ4K], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &b.qs[32 * c..32 * c + 32];
            for l in 0..32 {
                yb[64 * c + l] = d1 * (q[l] & 0xF) as f32 - m1;
                yb[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub fn vec_dot(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        let mut summs = 0i32;
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &x.scales);
            summs += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
            let q = &x.qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let isum: i32 = (0..32)
                .map(|l| ((q[l] >> shift) & 0xF) as i32 * y.qs[32 * j + l] as i32)
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

    #[test]
    fn vec_dot_equals_dot_of_dequantized() {
        use crate::quant::test_data::random_row;
        for seed in 0..20 {
            let w = random_row(512, seed);
            let x = random_row(512, seed + 1000);
            let mut wb = [bytemuck::Zeroable::zeroed(); 2];
            quantize_row(&w, &mut wb);
            let mut ab = [bytemuck::Zeroable::zeroed(); 2];
            crate::quant::q8_k::quantize_row(&x, &mut ab);
            let (mut wf, mut xf) = (vec![0f32; 512], vec![0f32; 512]);
            dequantize_row(&wb, &mut wf);
            crate::quant::q8_k::dequantize_row(&ab, &mut xf);
            let want: f32 = wf.iter().zip(&xf).map(|(a, b)| a * b).sum();
            let got = vec_dot(&wb, &ab);
            assert!(
                (got - want).abs() < 1e-3 * want.abs().max(1.0),
                "seed {seed}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn scale_packing_round_trips() {
        let ls = [1, 63, 17, 32, 48, 5, 60, 33];
        let lm = [62, 0, 9, 40, 31, 63, 16, 7];
        let q = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (ls[j], lm[j]), "sub-block {j}");
        }
    }

    /// One block from the formula: sub-block j has scale j+1, min 2j, d = 1,
    /// dmin = 0.5, every code = 3.
    #[test]
    fn known_answer() {
        let ls = [1, 2, 3, 4, 5, 6, 7, 8];
        let lm = [0, 2, 4, 6, 8, 10, 12, 14];
        let b = BlockQ4K {
            d: f16::from_f32(1.0),
            dmin: f16::from_f32(0.5),
            scales: pack_scale_min_k4(&ls, &lm),
            qs: [0x33; 128],
        };
        let mut y = [0f32; 256];
        dequantize_row(&[b], &mut y);
        for j in 0..8 {
            let expect = (j + 1) as f32 * 3.0 - 0.5 * (2 * j) as f32;
            assert!(
                y[32 * j..32 * j + 32].iter().all(|&v| v == expect),
                "sub-block {j}"
            );
        }
        let mut a: BlockQ8K = bytemuck::Zeroable::zeroed();
        a.d = 0.5;
        a.qs = [2; 256];
        a.bsums = [32; 16];
        let expect: f32 = y.iter().map(|v| v * 1.0).sum();
        assert!((vec_dot(&[b], &[a]) - expect).abs() < 1e-3);
    }
}
