//! Test-only: seeded random blocks, ggml-formula references evaluated in f64,
//! and the comparison with a per-type error budget that every aarch64 kernel
//! test uses.
//!
//! The references here follow ggml's `dequantize_row_*` / `quantize_row_*_ref`
//! formulas element by element in f64 (no SIMD tricks), independent of both
//! the kernels under test and of `crate::quant`; [`check_table`] compares each
//! tier against them *and* against the crate's scalar table
//! (`crate::dispatch::SCALAR`), so a disagreement between the two references
//! shows up too.

use crate::dispatch::{KernelTable, SCALAR};
use crate::quant::blocks::*;
use crate::quant::iq4_nl::{BlockIQ4NL, KVALUES};
use crate::quant::iq4_xs::BlockIQ4XS;
use crate::quant::q2_k::BlockQ2K;
use crate::quant::q3_k::BlockQ3K;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::q5_1::BlockQ5_1;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Error budgets, relative to the sum of absolute products (so cancellation in
/// the true result cannot make a correct kernel fail). Integer dots only
/// differ from the reference in f32 rounding of the per-block scale products;
/// float dots accumulate thousands of f32 products in a different order.
pub const BUDGET_LEGACY: f64 = 5e-6;
pub const BUDGET_K: f64 = 5e-6;
pub const BUDGET_FLOAT: f64 = 1e-5;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Block counts that exercise the pair/tail paths (odd, even, one, many).
pub const BLOCK_COUNTS: [usize; 6] = [1, 2, 3, 7, 18, 33];
/// Float lengths around the 16-lane unroll and its 4-lane tail.
pub const FLOAT_LENS: [usize; 8] = [1, 3, 4, 15, 16, 17, 64, 1000];

fn scale(r: &mut StdRng) -> f16 {
    let magnitude: f32 = r.gen_range(1e-3..5e-2);
    f16::from_f32(if r.gen_bool(0.1) {
        -magnitude
    } else {
        magnitude
    })
}

fn i8_code(r: &mut StdRng) -> i8 {
    r.gen_range(-127..=127)
}

pub fn q4_0_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ4_0> {
    (0..n)
        .map(|_| BlockQ4_0 {
            d: scale(r),
            qs: std::array::from_fn(|_| r.gen()),
        })
        .collect()
}

pub fn q4_1_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ4_1> {
    (0..n)
        .map(|_| BlockQ4_1 {
            d: scale(r),
            m: f16::from_f32(r.gen_range(-0.3..0.1)),
            qs: std::array::from_fn(|_| r.gen()),
        })
        .collect()
}

pub fn q8_0_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ8_0> {
    (0..n)
        .map(|_| BlockQ8_0 {
            d: scale(r),
            qs: std::array::from_fn(|_| i8_code(r)),
        })
        .collect()
}

pub fn q8_1_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ8_1> {
    (0..n)
        .map(|_| {
            let d = scale(r);
            let qs: [i8; QK] = std::array::from_fn(|_| i8_code(r));
            let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
            BlockQ8_1 {
                d,
                s: f16::from_f32(d.to_f32() * sum as f32),
                qs,
            }
        })
        .collect()
}

pub fn q4k_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ4K> {
    (0..n)
        .map(|_| BlockQ4K {
            d: scale(r),
            dmin: scale(r),
            scales: std::array::from_fn(|_| r.gen()),
            qs: std::array::from_fn(|_| r.gen()),
        })
        .collect()
}

pub fn q5k_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ5K> {
    (0..n)
        .map(|_| BlockQ5K {
            d: scale(r),
            dmin: scale(r),
            scales: std::array::from_fn(|_| r.gen()),
            qh: std::array::from_fn(|_| r.gen()),
            qs: std::array::from_fn(|_| r.gen()),
        })
        .collect()
}

pub fn q6k_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ6K> {
    (0..n)
        .map(|_| BlockQ6K {
            ql: std::array::from_fn(|_| r.gen()),
            qh: std::array::from_fn(|_| r.gen()),
            scales: std::array::from_fn(|_| r.gen()),
            d: scale(r),
        })
        .collect()
}

pub fn q5_0_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ5_0> {
    (0..n)
        .map(|_| BlockQ5_0 {
            d: scale(r),
            qh: r.gen(),
            qs: std::array::from_fn(|_| r.gen()),
        })
        .collect()
}

pub fn q5_1_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ5_1> {
    (0..n)
        .map(|_| BlockQ5_1 {
            d: scale(r),
            m: f16::from_f32(r.gen_range(-0.3..0.1)),
            qh: r.gen(),
            qs: std::array::from_fn(|_| r.gen()),
        })
        .collect()
}

pub fn iq4_nl_blocks(r: &mut StdRng, n: usize) -> Vec<BlockIQ4NL> {
    (0..n)
        .map(|_| BlockIQ4NL {
            d: scale(r),
            qs: std::array::from_fn(|_| r.gen()),
        })
        .collect()
}

pub fn q2k_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ2K> {
    (0..n)
        .map(|_| BlockQ2K {
            scales: std::array::from_fn(|_| r.gen()),
            qs: std::array::from_fn(|_| r.gen()),
            d: scale(r),
            dmin: scale(r),
        })
        .collect()
}

pub fn q3k_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ3K> {
    (0..n)
        .map(|_| BlockQ3K {
            hmask: std::array::from_fn(|_| r.gen()),
            qs: std::array::from_fn(|_| r.gen()),
            scales: std::array::from_fn(|_| r.gen()),
            d: scale(r),
        })
        .collect()
}

pub fn iq4xs_blocks(r: &mut StdRng, n: usize) -> Vec<BlockIQ4XS> {
    (0..n)
        .map(|_| BlockIQ4XS {
            d: scale(r),
            scales_h: r.gen(),
            scales_l: std::array::from_fn(|_| r.gen()),
            qs: std::array::from_fn(|_| r.gen()),
        })
        .collect()
}

pub fn q8k_blocks(r: &mut StdRng, n: usize) -> Vec<BlockQ8K> {
    (0..n)
        .map(|_| {
            let qs: [i8; QK_K] = std::array::from_fn(|_| i8_code(r));
            let bsums = std::array::from_fn(|g| {
                qs[16 * g..16 * g + 16].iter().map(|&q| i16::from(q)).sum()
            });
            BlockQ8K {
                d: r.gen_range(1e-3..5e-2),
                qs,
                bsums,
            }
        })
        .collect()
}

pub fn floats(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-2.0f32..2.0)).collect()
}

/// Dequantized values (f64) of each type, ggml element order.
pub fn deq_q4_0(b: &BlockQ4_0) -> [f64; QK] {
    let d = f64::from(b.d.to_f32());
    std::array::from_fn(|j| {
        let code = if j < 16 {
            b.qs[j] & 0xF
        } else {
            b.qs[j - 16] >> 4
        };
        d * (f64::from(code) - 8.0)
    })
}

pub fn deq_q4_1(b: &BlockQ4_1) -> [f64; QK] {
    let (d, m) = (f64::from(b.d.to_f32()), f64::from(b.m.to_f32()));
    std::array::from_fn(|j| {
        let code = if j < 16 {
            b.qs[j] & 0xF
        } else {
            b.qs[j - 16] >> 4
        };
        d * f64::from(code) + m
    })
}

pub fn deq_q8_0(b: &BlockQ8_0) -> [f64; QK] {
    let d = f64::from(b.d.to_f32());
    std::array::from_fn(|j| d * f64::from(b.qs[j]))
}

/// ggml `get_scale_min_k4`: 8 six-bit (scale, min) pairs packed in 12 bytes.
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

pub fn deq_q4k(b: &BlockQ4K) -> [f64; QK_K] {
    let (d, dmin) = (f64::from(b.d.to_f32()), f64::from(b.dmin.to_f32()));
    std::array::from_fn(|i| {
        let (chunk, l) = (i / 64, i % 64);
        let sub = 2 * chunk + l / 32;
        let byte = b.qs[32 * chunk + l % 32];
        let code = if l < 32 { byte & 0xF } else { byte >> 4 };
        let (sc, m) = scale_min_k4(sub, &b.scales);
        d * f64::from(sc) * f64::from(code) - dmin * f64::from(m)
    })
}

pub fn deq_q5k(b: &BlockQ5K) -> [f64; QK_K] {
    let (d, dmin) = (f64::from(b.d.to_f32()), f64::from(b.dmin.to_f32()));
    std::array::from_fn(|i| {
        let (chunk, l) = (i / 64, i % 64);
        let sub = 2 * chunk + l / 32;
        let byte = b.qs[32 * chunk + l % 32];
        let low = if l < 32 { byte & 0xF } else { byte >> 4 };
        let high = (b.qh[l % 32] >> sub) & 1;
        let (sc, m) = scale_min_k4(sub, &b.scales);
        d * f64::from(sc) * f64::from(low + 16 * high) - dmin * f64::from(m)
    })
}

pub fn deq_q6k(b: &BlockQ6K) -> [f64; QK_K] {
    let d = f64::from(b.d.to_f32());
    std::array::from_fn(|i| {
        let (half, k) = (i / 128, i % 128);
        let (quarter, l) = (k / 32, k % 32);
        let ql = &b.ql[64 * half..];
        let qh = b.qh[32 * half + l];
        let low = match quarter {
            0 => ql[l] & 0xF,
            1 => ql[l + 32] & 0xF,
            2 => ql[l] >> 4,
            _ => ql[l + 32] >> 4,
        };
        let high = (qh >> (2 * quarter)) & 3;
        let code = i32::from(low | (high << 4)) - 32;
        let sc = b.scales[8 * half + 2 * quarter + l / 16];
        d * f64::from(sc) * f64::from(code)
    })
}

/// The 4-bit code of element `j` of a 32-weight block in the Q4_0 nibble
/// order (elements 0..16 low nibbles, 16..32 high).
fn nibble(qs: &[u8; 16], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0xF
    } else {
        qs[j - 16] >> 4
    }
}

/// Q5 codes: the nibble plus bit `j` of the little-endian `qh` as bit 4.
fn q5_code(qs: &[u8; 16], qh: [u8; 4], j: usize) -> f64 {
    let high = (u32::from_le_bytes(qh) >> j) & 1;
    f64::from(u32::from(nibble(qs, j)) | (high << 4))
}

pub fn deq_q5_0(b: &BlockQ5_0) -> [f64; QK] {
    let d = f64::from(b.d.to_f32());
    std::array::from_fn(|j| d * (q5_code(&b.qs, b.qh, j) - 16.0))
}

pub fn deq_q5_1(b: &BlockQ5_1) -> [f64; QK] {
    let (d, m) = (f64::from(b.d.to_f32()), f64::from(b.m.to_f32()));
    std::array::from_fn(|j| d * q5_code(&b.qs, b.qh, j) + m)
}

pub fn deq_iq4_nl(b: &BlockIQ4NL) -> [f64; QK] {
    let d = f64::from(b.d.to_f32());
    std::array::from_fn(|j| d * f64::from(KVALUES[usize::from(nibble(&b.qs, j))]))
}

/// ggml `dequantize_row_q2_K`: per 128 weights, four 2-bit planes of the
/// same 32 bytes, 16 weights per scale byte (scale low, min high).
pub fn deq_q2k(b: &BlockQ2K) -> [f64; QK_K] {
    let (d, dmin) = (f64::from(b.d.to_f32()), f64::from(b.dmin.to_f32()));
    std::array::from_fn(|i| {
        let (half, plane, l) = (i / 128, (i / 32) % 4, i % 32);
        let code = (b.qs[32 * half + l] >> (2 * plane)) & 3;
        let sc = b.scales[i / 16];
        d * f64::from(sc & 0xF) * f64::from(code) - dmin * f64::from(sc >> 4)
    })
}

/// ggml `dequantize_row_q3_K`: Q2_K's planes for the low two bits, bit
/// `4·half + plane` of `hmask[l]` as the third (clear: minus 4), 6-bit
/// scales around 32.
pub fn deq_q3k(b: &BlockQ3K) -> [f64; QK_K] {
    let d = f64::from(b.d.to_f32());
    let scale = |j: usize| {
        let low = if j < 8 {
            b.scales[j] & 0xF
        } else {
            b.scales[j - 8] >> 4
        };
        let high = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        f64::from(low | (high << 4)) - 32.0
    };
    std::array::from_fn(|i| {
        let (half, plane, l) = (i / 128, (i / 32) % 4, i % 32);
        let low = (b.qs[32 * half + l] >> (2 * plane)) & 3;
        let set = (b.hmask[l] >> (4 * half + plane)) & 1 == 1;
        let code = f64::from(low) - if set { 0.0 } else { 4.0 };
        d * scale(i / 16) * code
    })
}

/// ggml `dequantize_row_iq4_xs`: eight IQ4_NL sub-blocks of 32 with 6-bit
/// scales around 32 (low nibble in `scales_l`, top bits in `scales_h`).
pub fn deq_iq4xs(b: &BlockIQ4XS) -> [f64; QK_K] {
    let d = f64::from(b.d.to_f32());
    std::array::from_fn(|i| {
        let sub = i / 32;
        let low = (b.scales_l[sub / 2] >> (4 * (sub % 2))) & 0xF;
        let high = ((b.scales_h >> (2 * sub)) & 3) as u8;
        let ls = f64::from(low | (high << 4)) - 32.0;
        let (l, byte) = (i % 32, b.qs[16 * sub + i % 16]);
        let index = if l < 16 { byte & 0xF } else { byte >> 4 };
        d * ls * f64::from(KVALUES[usize::from(index)])
    })
}

pub fn deq_q8k(b: &BlockQ8K) -> [f64; QK_K] {
    std::array::from_fn(|j| f64::from(b.d) * f64::from(b.qs[j]))
}

/// (dot, sum of |products|) over dequantized blocks.
fn dot_deq<const N: usize, W, A>(
    w: &[W],
    a: &[A],
    deq_w: impl Fn(&W) -> [f64; N],
    deq_a: impl Fn(&A) -> [f64; N],
) -> (f64, f64) {
    let (mut dot, mut mag) = (0.0, 0.0);
    for (wb, ab) in w.iter().zip(a) {
        for (x, y) in deq_w(wb).iter().zip(deq_a(ab).iter()) {
            dot += x * y;
            mag += (x * y).abs();
        }
    }
    (dot, mag)
}

/// A weight type with a minimum against Q8_1 as ggml computes it: the
/// minimum meets the activation through the stored `s` (itself rounded to
/// f16), not through the codes. `codes` dequantizes with `d = 1, m = 0`.
fn ref_min_q8_1<W>(
    w: &[W],
    a: &[BlockQ8_1],
    codes: impl Fn(&W) -> [f64; QK],
    d_m: impl Fn(&W) -> (f16, f16),
) -> (f64, f64) {
    let (mut dot, mut mag) = (0.0, 0.0);
    for (wb, ab) in w.iter().zip(a) {
        let (d, m) = d_m(wb);
        let (dw, da) = (f64::from(d.to_f32()), f64::from(ab.d.to_f32()));
        for (c, &q) in codes(wb).iter().zip(ab.qs.iter()) {
            let p = dw * da * c * f64::from(q);
            dot += p;
            mag += p.abs();
        }
        let min_term = f64::from(m.to_f32()) * f64::from(ab.s.to_f32());
        dot += min_term;
        mag += min_term.abs();
    }
    (dot, mag)
}

pub fn ref_q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> (f64, f64) {
    let codes = |b: &BlockQ4_1| {
        deq_q4_1(&BlockQ4_1 {
            d: f16::ONE,
            m: f16::ZERO,
            qs: b.qs,
        })
    };
    ref_min_q8_1(w, a, codes, |b| (b.d, b.m))
}

pub fn ref_q5_1_q8_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> (f64, f64) {
    let codes = |b: &BlockQ5_1| {
        deq_q5_1(&BlockQ5_1 {
            d: f16::ONE,
            m: f16::ZERO,
            ..*b
        })
    };
    ref_min_q8_1(w, a, codes, |b| (b.d, b.m))
}

pub fn ref_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> (f64, f64) {
    dot_deq(w, a, deq_q4_0, deq_q8_0)
}
pub fn ref_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> (f64, f64) {
    dot_deq(w, a, deq_q8_0, deq_q8_0)
}
pub fn ref_q5_0_q8_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> (f64, f64) {
    dot_deq(w, a, deq_q5_0, deq_q8_0)
}
pub fn ref_iq4_nl_q8_0(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> (f64, f64) {
    dot_deq(w, a, deq_iq4_nl, deq_q8_0)
}
pub fn ref_q2k_q8k(w: &[BlockQ2K], a: &[BlockQ8K]) -> (f64, f64) {
    dot_deq(w, a, deq_q2k, deq_q8k)
}
pub fn ref_q3k_q8k(w: &[BlockQ3K], a: &[BlockQ8K]) -> (f64, f64) {
    dot_deq(w, a, deq_q3k, deq_q8k)
}
pub fn ref_iq4xs_q8k(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> (f64, f64) {
    dot_deq(w, a, deq_iq4xs, deq_q8k)
}
pub fn ref_q4k_q8k(w: &[BlockQ4K], a: &[BlockQ8K]) -> (f64, f64) {
    dot_deq(w, a, deq_q4k, deq_q8k)
}
pub fn ref_q5k_q8k(w: &[BlockQ5K], a: &[BlockQ8K]) -> (f64, f64) {
    dot_deq(w, a, deq_q5k, deq_q8k)
}
pub fn ref_q6k_q8k(w: &[BlockQ6K], a: &[BlockQ8K]) -> (f64, f64) {
    dot_deq(w, a, deq_q6k, deq_q8k)
}

fn dot_floats(w: impl Iterator<Item = f32>, a: &[f32]) -> (f64, f64) {
    w.zip(a).fold((0.0, 0.0), |(dot, mag), (x, &y)| {
        let p = f64::from(x) * f64::from(y);
        (dot + p, mag + p.abs())
    })
}
pub fn ref_f32_f32(w: &[f32], a: &[f32]) -> (f64, f64) {
    dot_floats(w.iter().copied(), a)
}
pub fn ref_f16_f32(w: &[f16], a: &[f32]) -> (f64, f64) {
    dot_floats(w.iter().map(|x| x.to_f32()), a)
}
pub fn ref_bf16_f32(w: &[bf16], a: &[f32]) -> (f64, f64) {
    dot_floats(w.iter().map(|x| x.to_f32()), a)
}

/// ggml `quantize_row_q8_0_ref` (round half away from zero, like `roundf`).
pub fn ref_quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xb, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (d, id) = q8_scale(xb);
        y.d = f16::from_f32(d);
        for (q, &v) in y.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
    }
}

/// ggml `quantize_row_q8_1_ref`: q8_0 plus `s = d * sum(qs)`.
pub fn ref_quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xb, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (d, id) = q8_scale(xb);
        y.d = f16::from_f32(d);
        let mut sum = 0i32;
        for (q, &v) in y.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
            sum += i32::from(*q);
        }
        y.s = f16::from_f32(sum as f32 * d);
    }
}

fn q8_scale(xb: &[f32]) -> (f32, f32) {
    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

#[track_caller]
pub fn assert_close(what: &str, got: f32, (want, magnitude): (f64, f64), budget: f64) {
    assert!(
        magnitude > 0.0,
        "{what}: degenerate input (all products zero)"
    );
    let err = (f64::from(got) - want).abs() / magnitude;
    assert!(
        err <= budget,
        "{what}: got {got}, want {want}, error {err:e} of magnitude {magnitude} > budget {budget:e}"
    );
}

/// Quantizer output against the reference: `d` (and `s`) equal up to f16
/// rounding, codes within one step (f32 products may round a tie either way),
/// and the block reconstructing its input within half a step (plus the f16
/// rounding of `d`, which the codes do not see: up to 127·2⁻¹¹ of a step).
#[track_caller]
pub fn assert_q8_blocks_close(
    what: &str,
    x: &[f32],
    got: (&[f16], &[[i8; QK]]),
    want: (&[f16], &[[i8; QK]]),
) {
    for (i, xb) in x.chunks_exact(QK).enumerate() {
        let (dg, dw) = (got.0[i].to_f32(), want.0[i].to_f32());
        assert!(
            (dg - dw).abs() <= dw.abs() * 1e-3,
            "{what} block {i}: d {dg} vs {dw}"
        );
        for (j, (&qg, &qw)) in got.1[i].iter().zip(want.1[i].iter()).enumerate() {
            assert!(
                (i32::from(qg) - i32::from(qw)).abs() <= 1,
                "{what} block {i}[{j}]: {qg} vs {qw}"
            );
            let err = (dg * f32::from(qg) - xb[j]).abs();
            assert!(
                err <= 0.57 * dg.abs() + 1e-6,
                "{what} block {i}[{j}]: reconstruction error {err}"
            );
        }
    }
}

/// `kernel` against the f64 reference and the crate's scalar reference,
/// both within `budget` of the f64 magnitude.
#[track_caller]
pub fn check_dot<W, A>(
    what: &str,
    kernel: fn(&[W], &[A]) -> f32,
    scalar: fn(&[W], &[A]) -> f32,
    w: &[W],
    a: &[A],
    reference: fn(&[W], &[A]) -> (f64, f64),
    budget: f64,
) {
    let (want, magnitude) = reference(w, a);
    let got = kernel(w, a);
    assert_close(what, got, (want, magnitude), budget);
    assert_close(
        &format!("{what} (crate scalar reference)"),
        scalar(w, a),
        (want, magnitude),
        budget,
    );
    assert_close(
        &format!("{what} vs crate scalar"),
        got,
        (f64::from(scalar(w, a)), magnitude),
        2.0 * budget,
    );
}

/// `y += alpha·x` against the same update in f64, from a random `y`.
#[track_caller]
pub fn check_axpy(what: &str, kernel: fn(f32, &[f16], &mut [f32]), x: &[f16], y0: &[f32]) {
    let alpha = 0.37f32;
    let mut got = y0.to_vec();
    kernel(alpha, x, &mut got);
    let mut scalar = y0.to_vec();
    (SCALAR.axpy_f16)(alpha, x, &mut scalar);
    for (i, ((&g, &s), (&y, h))) in got.iter().zip(&scalar).zip(y0.iter().zip(x)).enumerate() {
        let want = f64::from(y) + f64::from(alpha) * h.to_f64();
        let tol = 1e-6 * (f64::from(y).abs() + (f64::from(alpha) * h.to_f64()).abs()) + 1e-30;
        assert!(
            (f64::from(g) - want).abs() <= tol,
            "{what}[{i}]: got {g}, want {want}"
        );
        assert!(
            (f64::from(s) - want).abs() <= tol,
            "{what}[{i}]: crate scalar {s}, want {want}"
        );
    }
}

/// Every dot and quantizer of `t` against the references, over all test sizes.
pub fn check_table(t: &KernelTable, seed: u64) {
    let mut r = rng(seed);
    let isa = t.isa;
    for n in BLOCK_COUNTS {
        let legacy = |what: &str| format!("{isa} {what}_q8 n={n}");
        let (w, a) = (q4_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
        let (d, s) = (t.q4_0.dot, SCALAR.q4_0.dot);
        check_dot(&legacy("q4_0"), d, s, &w, &a, ref_q4_0_q8_0, BUDGET_LEGACY);
        let (w, a) = (q4_1_blocks(&mut r, n), q8_1_blocks(&mut r, n));
        let (d, s) = (t.q4_1.dot, SCALAR.q4_1.dot);
        check_dot(&legacy("q4_1"), d, s, &w, &a, ref_q4_1_q8_1, BUDGET_LEGACY);
        let (w, a) = (q5_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
        let (d, s) = (t.q5_0.dot, SCALAR.q5_0.dot);
        check_dot(&legacy("q5_0"), d, s, &w, &a, ref_q5_0_q8_0, BUDGET_LEGACY);
        let (w, a) = (q5_1_blocks(&mut r, n), q8_1_blocks(&mut r, n));
        let (d, s) = (t.q5_1.dot, SCALAR.q5_1.dot);
        check_dot(&legacy("q5_1"), d, s, &w, &a, ref_q5_1_q8_1, BUDGET_LEGACY);
        let (w, a) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
        let (d, s) = (t.q8_0.dot, SCALAR.q8_0.dot);
        check_dot(&legacy("q8_0"), d, s, &w, &a, ref_q8_0_q8_0, BUDGET_LEGACY);
        let (w, a) = (iq4_nl_blocks(&mut r, n), q8_0_blocks(&mut r, n));
        let (d, s) = (t.iq4_nl.dot, SCALAR.iq4_nl.dot);
        check_dot(
            &legacy("iq4_nl"),
            d,
            s,
            &w,
            &a,
            ref_iq4_nl_q8_0,
            BUDGET_LEGACY,
        );

        let k = |what: &str| format!("{isa} {what}_q8_k n={n}");
        let a = q8k_blocks(&mut r, n);
        let w = q2k_blocks(&mut r, n);
        let (d, s) = (t.q2_k.dot, SCALAR.q2_k.dot);
        check_dot(&k("q2_k"), d, s, &w, &a, ref_q2k_q8k, BUDGET_K);
        let w = q3k_blocks(&mut r, n);
        let (d, s) = (t.q3_k.dot, SCALAR.q3_k.dot);
        check_dot(&k("q3_k"), d, s, &w, &a, ref_q3k_q8k, BUDGET_K);
        let w = q4k_blocks(&mut r, n);
        let (d, s) = (t.q4_k.dot, SCALAR.q4_k.dot);
        check_dot(&k("q4_k"), d, s, &w, &a, ref_q4k_q8k, BUDGET_K);
        let w = q5k_blocks(&mut r, n);
        let (d, s) = (t.q5_k.dot, SCALAR.q5_k.dot);
        check_dot(&k("q5_k"), d, s, &w, &a, ref_q5k_q8k, BUDGET_K);
        let w = q6k_blocks(&mut r, n);
        let (d, s) = (t.q6_k.dot, SCALAR.q6_k.dot);
        check_dot(&k("q6_k"), d, s, &w, &a, ref_q6k_q8k, BUDGET_K);
        let w = iq4xs_blocks(&mut r, n);
        let (d, s) = (t.iq4_xs.dot, SCALAR.iq4_xs.dot);
        check_dot(&k("iq4_xs"), d, s, &w, &a, ref_iq4xs_q8k, BUDGET_K);

        let x = floats(&mut r, n * QK);
        let mut got = vec![
            BlockQ8_0 {
                d: f16::ZERO,
                qs: [0; QK]
            };
            n
        ];
        let mut want = got.clone();
        (t.act_q8_0.quantize)(&x, &mut got);
        ref_quantize_q8_0(&x, &mut want);
        let mut scalar = want.clone();
        (SCALAR.act_q8_0.quantize)(&x, &mut scalar);
        assert!(
            want.iter()
                .zip(&scalar)
                .all(|(p, q)| p.d == q.d && p.qs == q.qs),
            "quantize_q8_0: references disagree"
        );
        let d = |b: &[BlockQ8_0]| b.iter().map(|b| b.d).collect::<Vec<_>>();
        let q = |b: &[BlockQ8_0]| b.iter().map(|b| b.qs).collect::<Vec<_>>();
        assert_q8_blocks_close(
            &format!("{isa} quantize_q8_0 n={n}"),
            &x,
            (&d(&got), &q(&got)),
            (&d(&want), &q(&want)),
        );

        let mut got = vec![
            BlockQ8_1 {
                d: f16::ZERO,
                s: f16::ZERO,
                qs: [0; QK]
            };
            n
        ];
        let mut want = got.clone();
        (t.act_q8_1.quantize)(&x, &mut got);
        ref_quantize_q8_1(&x, &mut want);
        let mut scalar = want.clone();
        (SCALAR.act_q8_1.quantize)(&x, &mut scalar);
        assert!(
            want.iter()
                .zip(&scalar)
                .all(|(p, q)| p.d == q.d && p.s == q.s && p.qs == q.qs),
            "quantize_q8_1: references disagree"
        );
        let d = |b: &[BlockQ8_1]| b.iter().map(|b| b.d).collect::<Vec<_>>();
        let q = |b: &[BlockQ8_1]| b.iter().map(|b| b.qs).collect::<Vec<_>>();
        assert_q8_blocks_close(
            &format!("{isa} quantize_q8_1 n={n}"),
            &x,
            (&d(&got), &q(&got)),
            (&d(&want), &q(&want)),
        );
        for (i, b) in got.iter().enumerate() {
            let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
            let s = sum as f32 * b.d.to_f32();
            assert!(
                (b.s.to_f32() - s).abs() <= s.abs() * 1e-3 + 1e-6,
                "{isa} quantize_q8_1 block {i}: s {} vs {s}",
                b.s
            );
        }
    }
    for n in FLOAT_LENS {
        let (w, a) = (floats(&mut r, n), floats(&mut r, n));
        check_dot(
            &format!("{isa} f32_f32 n={n}"),
            t.f32.dot,
            SCALAR.f32.dot,
            &w,
            &a,
            ref_f32_f32,
            BUDGET_FLOAT,
        );
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        check_dot(
            &format!("{isa} f16_f32 n={n}"),
            t.f16.dot,
            SCALAR.f16.dot,
            &w16,
            &a,
            ref_f16_f32,
            BUDGET_FLOAT,
        );
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        check_dot(
            &format!("{isa} bf16_f32 n={n}"),
            t.bf16.dot,
            SCALAR.bf16.dot,
            &wb,
            &a,
            ref_bf16_f32,
            BUDGET_FLOAT,
        );
        check_axpy(&format!("{isa} axpy_f16 n={n}"), t.axpy_f16, &w16, &a);
    }
}
