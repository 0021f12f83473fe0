//! AVX2 + FMA + F16C kernels (Haswell / Zen and later).
//!
//! Integer dots follow the classic ggml shape: 32 codes in one register,
//! `vpmaddubsw` (unsigned x signed bytes -> i16 pairs) then `vpmaddwd` with
//! ones (-> i32), converted to f32 and accumulated with the block's scale by
//! FMA. Two blocks per loop iteration into two accumulators hide the FMA
//! latency. Signed x signed products use the `vpsignb` trick: |x| * sign(y, x).
//!
//! Soundness: the `unsafe fn`s need AVX2, FMA and F16C. The safe wrappers
//! below are private and reach callers only through [`overrides`], which
//! `super::table` calls after `super::supports(Isa::Avx2)` checked those
//! features at run time.

use super::{avx2_attn, avx2_lanes, avx2_x16};
use crate::dispatch::{ActivationRow, AttnBlockKernels, Isa, KernelTable, WeightRow};
use crate::ops::{activation, attention};
use crate::quant::blocks::*;
use crate::quant::iq4_nl::{BlockIQ4NL, KVALUES};
use crate::quant::iq4_xs::BlockIQ4XS;
use crate::quant::q2_k::BlockQ2K;
use crate::quant::q3_k::BlockQ3K;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::q5_1::BlockQ5_1;
use core::arch::x86_64::*;
use half::{bf16, f16};

pub(super) fn overrides(t: KernelTable) -> KernelTable {
    KernelTable {
        isa: Isa::Avx2,
        q4_0: WeightRow {
            dot: q4_0_q8_0,
            gemm: Some(q4_0_q8_0_gemm),
            x16: Some(q4_0_q8_0_x16),
        },
        q4_1: WeightRow {
            dot: q4_1_q8_1,
            gemm: Some(q4_1_q8_1_gemm),
            x16: Some(q4_1_q8_1_x16),
        },
        q8_0: WeightRow {
            dot: q8_0_q8_0,
            gemm: Some(q8_0_q8_0_gemm),
            x16: Some(q8_0_q8_0_x16),
        },
        q4_k: WeightRow {
            dot: q4_k_q8_k,
            gemm: Some(q4_k_q8_k_gemm),
            x16: Some(q4_k_q8_k_x16),
        },
        q5_k: WeightRow {
            dot: q5_k_q8_k,
            ..t.q5_k
        },
        q6_k: WeightRow {
            dot: q6_k_q8_k,
            gemm: Some(q6_k_q8_k_gemm),
            x16: Some(q6_k_q8_k_x16),
        },
        q5_0: WeightRow {
            dot: q5_0_q8_0,
            gemm: Some(q5_0_q8_0_gemm),
            x16: Some(q5_0_q8_0_x16),
        },
        q5_1: WeightRow {
            dot: q5_1_q8_1,
            ..t.q5_1
        },
        q2_k: WeightRow {
            dot: q2_k_q8_k,
            ..t.q2_k
        },
        q3_k: WeightRow {
            dot: q3_k_q8_k,
            ..t.q3_k
        },
        iq4_nl: WeightRow {
            dot: iq4_nl_q8_0,
            ..t.iq4_nl
        },
        iq4_xs: WeightRow {
            dot: iq4_xs_q8_k,
            ..t.iq4_xs
        },
        f16: WeightRow {
            dot: f16_f32,
            ..t.f16
        },
        bf16: WeightRow {
            dot: bf16_f32,
            ..t.bf16
        },
        f32: WeightRow {
            dot: f32_f32,
            ..t.f32
        },
        act_q8_0: ActivationRow {
            quantize: quantize_q8_0,
        },
        act_q8_1: ActivationRow {
            quantize: quantize_q8_1,
        },
        act_q8_k: ActivationRow {
            quantize: quantize_q8_k,
        },
        axpy_f16,
        attn_block: Some(AttnBlockKernels {
            scores: avx2_attn::attn_scores,
            accumulate: avx2_attn::attn_accumulate,
        }),
        attn_tile: Some(super::avx2_attn_tile::KERNELS),
        attn_quant: crate::dispatch::AttnQuantKernels {
            accumulate_q8_0: attn_accumulate_q8_0,
            accumulate_q4_0: attn_accumulate_q4_0,
        },
        silu_mul,
        gelu_tanh_mul,
        softmax_block,
        ..t
    }
}

// ---- safe wrappers: lengths are clamped to the shorter operand ----

fn q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: AVX2/FMA/F16C were detected before this table was handed out; both slices hold n blocks.
    unsafe { q4_0_q8_0_k(&w[..n], &a[..n]) }
}
fn q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { q4_1_q8_1_k(&w[..n], &a[..n]) }
}
fn q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { q8_0_q8_0_k(&w[..n], &a[..n]) }
}
fn q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { q4_k_q8_k_k(&w[..n], &a[..n]) }
}
fn q5_k_q8_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { q5_k_q8_k_k(&w[..n], &a[..n]) }
}
fn q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { q6_k_q8_k_k(&w[..n], &a[..n]) }
}
fn q5_0_q8_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { q5_0_q8_0_k(&w[..n], &a[..n]) }
}
fn q5_1_q8_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { q5_1_q8_1_k(&w[..n], &a[..n]) }
}
fn q2_k_q8_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { q2_k_q8_k_k(&w[..n], &a[..n]) }
}
fn q3_k_q8_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { q3_k_q8_k_k(&w[..n], &a[..n]) }
}
fn iq4_nl_q8_0(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { iq4_nl_q8_0_k(&w[..n], &a[..n]) }
}
fn iq4_xs_q8_k(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { iq4_xs_q8_k_k(&w[..n], &a[..n]) }
}
fn q4_0_q8_0_gemm(w: &[BlockQ4_0], a: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    avx2_lanes::gemm(q4_0_q8_0, w, a, bpr, out)
}
fn q4_1_q8_1_gemm(w: &[BlockQ4_1], a: &[BlockQ8_1], bpr: usize, out: &mut [f32]) {
    avx2_lanes::gemm(q4_1_q8_1, w, a, bpr, out)
}
fn q8_0_q8_0_gemm(w: &[BlockQ8_0], a: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    avx2_lanes::gemm(q8_0_q8_0, w, a, bpr, out)
}
fn q5_0_q8_0_gemm(w: &[BlockQ5_0], a: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    avx2_lanes::gemm(q5_0_q8_0, w, a, bpr, out)
}
fn q4_0_q8_0_x16(p: &[u8], rows: usize, a: &[BlockQ8_0], bpr: usize, out: &mut [&mut [f32]]) {
    avx2_x16::gemm::<BlockQ4_0>(q4_0_q8_0, p, rows, a, bpr, out)
}
fn q4_1_q8_1_x16(p: &[u8], rows: usize, a: &[BlockQ8_1], bpr: usize, out: &mut [&mut [f32]]) {
    avx2_x16::gemm::<BlockQ4_1>(q4_1_q8_1, p, rows, a, bpr, out)
}
fn q8_0_q8_0_x16(p: &[u8], rows: usize, a: &[BlockQ8_0], bpr: usize, out: &mut [&mut [f32]]) {
    avx2_x16::gemm::<BlockQ8_0>(q8_0_q8_0, p, rows, a, bpr, out)
}
fn q5_0_q8_0_x16(p: &[u8], rows: usize, a: &[BlockQ8_0], bpr: usize, out: &mut [&mut [f32]]) {
    avx2_x16::gemm::<BlockQ5_0>(q5_0_q8_0, p, rows, a, bpr, out)
}
fn q4_k_q8_k_x16(p: &[u8], rows: usize, a: &[BlockQ8K], bpr: usize, out: &mut [&mut [f32]]) {
    avx2_x16::gemm::<BlockQ4K>(q4_k_q8_k, p, rows, a, bpr, out)
}
fn q6_k_q8_k_x16(p: &[u8], rows: usize, a: &[BlockQ8K], bpr: usize, out: &mut [&mut [f32]]) {
    avx2_x16::gemm::<BlockQ6K>(q6_k_q8_k, p, rows, a, bpr, out)
}
fn q4_k_q8_k_gemm(w: &[BlockQ4K], a: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    avx2_lanes::gemm(q4_k_q8_k, w, a, bpr, out)
}
fn q6_k_q8_k_gemm(w: &[BlockQ6K], a: &[BlockQ8K], bpr: usize, out: &mut [f32]) {
    avx2_lanes::gemm(q6_k_q8_k, w, a, bpr, out)
}
fn f32_f32(w: &[f32], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { f32_f32_k(&w[..n], &a[..n]) }
}
fn f16_f32(w: &[f16], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { f16_f32_k(&w[..n], &a[..n]) }
}
fn bf16_f32(w: &[bf16], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { bf16_f32_k(&w[..n], &a[..n]) }
}
fn axpy_f16(alpha: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    // SAFETY: as above.
    unsafe { axpy_f16_k(alpha, &x[..n], &mut y[..n]) }
}
fn softmax_block(x: &mut [f32], scale: f32, prev_max: f32) -> (f32, f32) {
    // SAFETY: as above.
    unsafe { softmax_block_k(x, scale, prev_max) }
}
fn attn_accumulate_q8_0(v: &[BlockQ8_0], hd: usize, p: &[f32], acc: &mut [f32]) {
    // SAFETY: as above; the body is safe, bounds-checked code.
    unsafe { attn_accumulate_q8_0_k(v, hd, p, acc) }
}
fn attn_accumulate_q4_0(v: &[BlockQ4_0], hd: usize, p: &[f32], acc: &mut [f32]) {
    // SAFETY: as above.
    unsafe { attn_accumulate_q4_0_k(v, hd, p, acc) }
}
fn silu_mul(gate: &mut [f32], up: &[f32]) {
    // SAFETY: as above.
    unsafe { silu_mul_k(gate, up) }
}
fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    // SAFETY: as above.
    unsafe { gelu_tanh_mul_k(gate, up) }
}
fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    let n = (x.len() / QK).min(out.len());
    for (xb, b) in x.chunks_exact(QK).zip(&mut out[..n]) {
        // SAFETY: as above; xb holds exactly QK floats.
        let (d, _) = unsafe { quantize_block_k(xb, &mut b.qs) };
        b.d = f16::from_f32(d);
    }
}
fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    let n = (x.len() / QK).min(out.len());
    for (xb, b) in x.chunks_exact(QK).zip(&mut out[..n]) {
        // SAFETY: as above; xb holds exactly QK floats.
        let (d, sum) = unsafe { quantize_block_k(xb, &mut b.qs) };
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(sum as f32 * d);
    }
}

/// The k-quants' activations: every prefill token of a Q4_K/Q5_K/Q6_K
/// matrix goes through this, so the scalar reference showed in profiles.
fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    let n = (x.len() / QK_K).min(out.len());
    for (xb, b) in x.chunks_exact(QK_K).zip(&mut out[..n]) {
        // SAFETY: as above; xb holds exactly QK_K floats.
        unsafe { quantize_q8_k_block(xb, b) }
    }
}

// ---- helpers ----

/// IEEE half to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fp16(x: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x.to_bits() as i32)))
}

/// `a * b` of two halves, broadcast, with one conversion (the scalar f16
/// work bounds the legacy-quant loops as much as the dot does).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_halves(a: f16, b: f16) -> __m256 {
    let v = halves(a, b);
    _mm256_broadcastss_ps(_mm_mul_ss(v, _mm_movehdup_ps(v)))
}

/// `[a, b, 0, 0]` as f32, one conversion.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn halves(a: f16, b: f16) -> __m128 {
    let bits = a.to_bits() as u32 | (b.to_bits() as u32) << 16;
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(x: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0..16) in
/// the low lane, high nibbles (16..32) in the high lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: qs is 16 readable bytes; loadu has no alignment requirement.
    let lo = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let hi = _mm_srli_epi16(lo, 4);
    _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
}

/// [`nibbles`] of the 16 bytes at the start of `qs`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_at(qs: &[u8]) -> __m256i {
    debug_assert!(qs.len() >= 16);
    // SAFETY: callers pass at least 16 readable bytes; loadu has no alignment requirement.
    let lo = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let hi = _mm_srli_epi16(lo, 4);
    _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
}

/// 32 bits -> 32 bytes: byte `i` is 0xFF where bit `i` is set, else 0 (the
/// fifth bits of Q5_0 / Q5_1, element order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bit_bytes(bits: u32) -> __m256i {
    // byte i takes byte i / 8 of the word (in both 128-bit lanes), then
    // tests its own bit i % 8
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

/// The 16 IQ4_NL levels in both 128-bit lanes, for `vpshufb` lookups.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn iq4_levels() -> __m256i {
    // SAFETY: KVALUES is 16 readable bytes; loadu has no alignment requirement.
    _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(KVALUES.as_ptr().cast()) })
}

/// Walks `w` and `a` block by block into two float accumulators (hiding the
/// FMA latency); `step(x, y, acc)` adds one block pair.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn two_accumulators<W, A>(
    w: &[W],
    a: &[A],
    mut step: impl FnMut(&W, &A, __m256) -> __m256,
) -> __m256 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
        acc0 = step(&x[0], &y[0], acc0);
        acc1 = step(&x[1], &y[1], acc1);
    }
    let n = w.len().min(a.len());
    if n % 2 == 1 {
        acc0 = step(&w[n - 1], &a[n - 1], acc0);
    }
    _mm256_add_ps(acc0, acc1)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(qs: &[i8; 32]) -> __m256i {
    // SAFETY: qs is 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// Sum of u8 x i8 products, as 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_us8(ux: __m256i, sy: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(ux, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Sum of i8 x i8 products, as 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_s8(x: __m256i, y: __m256i) -> __m256 {
    // SAFETY: same features as this function.
    unsafe { dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)) }
}

// ---- kernels ----

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_q8_0_k(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    // SAFETY: callers guarantee the features; every load reads whole blocks of the given slices.
    unsafe {
        let block = |x: &BlockQ4_0, y: &BlockQ8_0, acc: __m256| {
            let d = mul_halves(x.d, y.d);
            let qx = _mm256_sub_epi8(nibbles(&x.qs), _mm256_set1_epi8(8));
            _mm256_fmadd_ps(d, dot_s8(qx, load32(&y.qs)), acc)
        };
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut pairs = w.chunks_exact(2).zip(a.chunks_exact(2));
        for (x, y) in &mut pairs {
            acc0 = block(&x[0], &y[0], acc0);
            acc1 = block(&x[1], &y[1], acc1);
        }
        if w.len() % 2 == 1 {
            let i = w.len() - 1;
            acc0 = block(&w[i], &a[i], acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_q8_1_k(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    // SAFETY: callers guarantee the features; every load reads whole blocks of the given slices.
    unsafe {
        // (d, m) x (d, s) with one conversion each
        let mut summs = _mm_setzero_ps();
        let mut block = |x: &BlockQ4_1, y: &BlockQ8_1, acc: __m256| {
            let dm = _mm_mul_ps(halves(x.d, x.m), halves(y.d, y.s));
            summs = _mm_add_ss(summs, _mm_movehdup_ps(dm));
            let d = _mm256_broadcastss_ps(dm);
            _mm256_fmadd_ps(d, dot_us8(nibbles(&x.qs), load32(&y.qs)), acc)
        };
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
            acc0 = block(&x[0], &y[0], acc0);
            acc1 = block(&x[1], &y[1], acc1);
        }
        if w.len() % 2 == 1 {
            let i = w.len() - 1;
            acc0 = block(&w[i], &a[i], acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(summs)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_q8_0_k(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    // SAFETY: callers guarantee the features; every load reads whole blocks of the given slices.
    unsafe {
        let block = |x: &BlockQ8_0, y: &BlockQ8_0, acc: __m256| {
            let d = mul_halves(x.d, y.d);
            _mm256_fmadd_ps(d, dot_s8(load32(&x.qs), load32(&y.qs)), acc)
        };
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
            acc0 = block(&x[0], &y[0], acc0);
            acc1 = block(&x[1], &y[1], acc1);
        }
        if w.len() % 2 == 1 {
            let i = w.len() - 1;
            acc0 = block(&w[i], &a[i], acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_u8x32(p: &[u8]) -> __m256i {
    debug_assert!(p.len() >= 32);
    // SAFETY: callers pass at least 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_i8x32(p: &[i8]) -> __m256i {
    debug_assert!(p.len() >= 32);
    // SAFETY: callers pass at least 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// Per 64-element chunk: low nibbles times sub-block scale 2c, high nibbles
/// times scale 2c + 1, summed as i32; mins go through the Q8_K block sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_q8_k_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: callers guarantee the features; slices of 32 bytes are taken inside whole blocks.
    unsafe {
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = 0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sc = [0i16; 8];
            let mut summs = 0i32;
            for (j, s) in sc.iter_mut().enumerate() {
                let (scale, min) = crate::quant::q4_k::scale_min_k4(j, &x.scales);
                *s = scale as i16;
                summs += min as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
            }
            acc_m += y.d * fp16(x.dmin) * summs as f32;
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let q4 = load_u8x32(&x.qs[32 * c..]);
                let lo = _mm256_and_si256(q4, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), mask);
                let p_lo = _mm256_maddubs_epi16(lo, load_i8x32(&y.qs[64 * c..]));
                let p_hi = _mm256_maddubs_epi16(hi, load_i8x32(&y.qs[64 * c + 32..]));
                let p_lo = _mm256_madd_epi16(p_lo, _mm256_set1_epi16(sc[2 * c]));
                let p_hi = _mm256_madd_epi16(p_hi, _mm256_set1_epi16(sc[2 * c + 1]));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
            }
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(y.d * fp16(x.d)),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
        }
        hsum(acc) - acc_m
    }
}

/// As Q4_K, with the fifth bit of each code from `qh`: element `64c + l`
/// takes bit `2c` of `qh[l]`, element `64c + 32 + l` bit `2c + 1`. The bit
/// is tested with a compare (no per-chunk variable shift) and becomes 16.
/// Codes stay below 32, so `vpmaddubsw` pairs cannot saturate.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_q8_k_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: callers guarantee the features; slices of 32 bytes are taken inside whole blocks.
    unsafe {
        let mask = _mm256_set1_epi8(0x0F);
        let m16 = _mm256_set1_epi8(0x10);
        let fifth = |qh: __m256i, bit: i32| {
            let b = _mm256_set1_epi8(1 << bit);
            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b), b), m16)
        };
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = 0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sc = [0i16; 8];
            let mut summs = 0i32;
            for (j, s) in sc.iter_mut().enumerate() {
                let (scale, min) = crate::quant::q4_k::scale_min_k4(j, &x.scales);
                *s = scale as i16;
                summs += min as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
            }
            acc_m += y.d * fp16(x.dmin) * summs as f32;
            let qh = load_u8x32(&x.qh);
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let q4 = load_u8x32(&x.qs[32 * c..]);
                let lo = _mm256_or_si256(_mm256_and_si256(q4, mask), fifth(qh, 2 * c as i32));
                let hi = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(q4, 4), mask),
                    fifth(qh, 2 * c as i32 + 1),
                );
                let p_lo = _mm256_maddubs_epi16(lo, load_i8x32(&y.qs[64 * c..]));
                let p_hi = _mm256_maddubs_epi16(hi, load_i8x32(&y.qs[64 * c + 32..]));
                let p_lo = _mm256_madd_epi16(p_lo, _mm256_set1_epi16(sc[2 * c]));
                let p_hi = _mm256_madd_epi16(p_hi, _mm256_set1_epi16(sc[2 * c + 1]));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
            }
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(y.d * fp16(x.d)),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
        }
        hsum(acc) - acc_m
    }
}

/// Codes are rebuilt as unsigned 0..64 (4 low bits from `ql`, 2 from `qh`);
/// the offset of 32 is removed as `32 * y` with a second `vpmaddubsw`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_q8_k_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    // SAFETY: callers guarantee the features; slices of 32 bytes are taken inside whole blocks.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x03);
        let m32 = _mm256_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let qh = load_u8x32(&x.qh[32 * n..]);
                let ql0 = load_u8x32(&x.ql[64 * n..]);
                let ql1 = load_u8x32(&x.ql[64 * n + 32..]);
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, m4),
                        _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4),
                    ),
                ];
                for (k, qk) in q.iter().enumerate() {
                    let e = 128 * n + 32 * k;
                    let yv = load_i8x32(&y.qs[e..]);
                    let p = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(*qk, yv),
                        _mm256_maddubs_epi16(m32, yv),
                    );
                    let s = _mm256_set_m128i(
                        _mm_set1_epi16(x.scales[e / 16 + 1] as i16),
                        _mm_set1_epi16(x.scales[e / 16] as i16),
                    );
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
                }
            }
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(y.d * fp16(x.d)),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
        }
        hsum(acc)
    }
}

/// Q5_0: the signed code `q - 16` is the nibble where the fifth bit is
/// set and the nibble minus 16 (its bits with 0xF0 above) where it is not,
/// then a signed dot as for Q8_0.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0_q8_0_k(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let high = _mm256_set1_epi8(0xF0u8 as i8);
    // SAFETY: callers guarantee the features; every load reads whole blocks of the given slices.
    unsafe {
        let acc = two_accumulators(w, a, |x, y, acc| {
            let clear = _mm256_andnot_si256(bit_bytes(u32::from_le_bytes(x.qh)), high);
            let qx = _mm256_or_si256(nibbles(&x.qs), clear);
            _mm256_fmadd_ps(mul_halves(x.d, y.d), dot_s8(qx, load32(&y.qs)), acc)
        });
        hsum(acc)
    }
}

/// Q5_1: unsigned codes (nibble plus 16 where the fifth bit is set) against
/// the activations; the minimum meets Q8_1's `s` as in Q4_1.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_1_q8_1_k(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let sixteen = _mm256_set1_epi8(0x10);
    let mut summs = _mm_setzero_ps();
    // SAFETY: callers guarantee the features; every load reads whole blocks of the given slices.
    unsafe {
        let acc = two_accumulators(w, a, |x, y, acc| {
            let dm = _mm_mul_ps(halves(x.d, x.m), halves(y.d, y.s));
            summs = _mm_add_ss(summs, _mm_movehdup_ps(dm));
            let fifth = _mm256_and_si256(bit_bytes(u32::from_le_bytes(x.qh)), sixteen);
            let qx = _mm256_or_si256(nibbles(&x.qs), fifth);
            _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), dot_us8(qx, load32(&y.qs)), acc)
        });
        hsum(acc) + _mm_cvtss_f32(summs)
    }
}

/// IQ4_NL: the nibbles index the levels with one `vpshufb`, then a signed
/// dot as for Q8_0 (levels within ±127, so the i16 pairs cannot saturate).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_nl_q8_0_k(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    let levels = iq4_levels();
    // SAFETY: callers guarantee the features; every load reads whole blocks of the given slices.
    unsafe {
        let acc = two_accumulators(w, a, |x, y, acc| {
            let qx = _mm256_shuffle_epi8(levels, nibbles(&x.qs));
            _mm256_fmadd_ps(mul_halves(x.d, y.d), dot_s8(qx, load32(&y.qs)), acc)
        });
        hsum(acc)
    }
}

/// IQ4_XS: per sub-block of 32 the level lookup of IQ4_NL, the i16 pair
/// sums weighted by the sub-block's 6-bit scale in the `vpmaddwd`, one
/// conversion per super-block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_xs_q8_k_k(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
    let levels = iq4_levels();
    let mut acc = _mm256_setzero_ps();
    // SAFETY: callers guarantee the features; 16- and 32-byte loads at 16j of qs[128] and 32j of qs[256].
    unsafe {
        for (x, y) in w.iter().zip(a) {
            let mut sumi = _mm256_setzero_si256();
            for j in 0..8 {
                let scale = crate::quant::iq4_xs::scale(x, j) as i16;
                let q = _mm256_shuffle_epi8(levels, nibbles_at(&x.qs[16 * j..]));
                let yv = load_i8x32(&y.qs[32 * j..]);
                let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(yv, q));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pairs, _mm256_set1_epi16(scale)));
            }
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(fp16(x.d) * y.d),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
        }
        hsum(acc)
    }
}

/// Q2_K: for each 32-byte run of codes, four 2-bit planes (shifts 0, 2, 4,
/// 6) each meet 32 activations; the two sub-blocks of a plane take their
/// 4-bit scales per 128-bit lane in the `vpmaddwd`. The mins go through the
/// Q8_K block sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q2_k_q8_k_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let three = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = 0f32;
    // SAFETY: callers guarantee the features; 32-byte loads at 32n of qs[64] and 128n + 32k of qs[256].
    unsafe {
        for (x, y) in w.iter().zip(a) {
            let summs: i32 = (0..16)
                .map(|j| i32::from(y.bsums[j]) * i32::from(x.scales[j] >> 4))
                .sum();
            acc_m += y.d * fp16(x.dmin) * summs as f32;
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let q2 = load_u8x32(&x.qs[32 * n..]);
                for k in 0..4 {
                    let q = _mm256_and_si256(
                        _mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * k as i32)),
                        three,
                    );
                    let pairs = _mm256_maddubs_epi16(q, load_i8x32(&y.qs[128 * n + 32 * k..]));
                    let j = 8 * n + 2 * k;
                    let s = _mm256_set_m128i(
                        _mm_set1_epi16(i16::from(x.scales[j + 1] & 0xF)),
                        _mm_set1_epi16(i16::from(x.scales[j] & 0xF)),
                    );
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pairs, s));
                }
            }
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(y.d * fp16(x.d)),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
        }
        hsum(acc) - acc_m
    }
}

/// Q3_K: codes rebuilt unsigned (0..8: two low bits and the mask bit as 4)
/// and dotted as Q2_K's with the signed 6-bit scales; the offset of 4 comes
/// off as `4 * sum(scale * block sum)` from the Q8_K sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q3_k_q8_k_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let (one, three) = (_mm256_set1_epi8(1), _mm256_set1_epi8(3));
    let mut acc = _mm256_setzero_ps();
    let mut acc_off = 0f32;
    // SAFETY: callers guarantee the features; 32-byte loads of hmask[32], at 32n of qs[64] and 128n + 32k of qs[256].
    unsafe {
        for (x, y) in w.iter().zip(a) {
            let sc: [i16; 16] =
                std::array::from_fn(|j| i16::from(crate::quant::q3_k::scale(&x.scales, j)));
            let offset: i32 = (0..16)
                .map(|j| i32::from(sc[j]) * i32::from(y.bsums[j]))
                .sum();
            let hm = load_u8x32(&x.hmask);
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let q3 = load_u8x32(&x.qs[32 * n..]);
                for k in 0..4 {
                    let low = _mm256_and_si256(
                        _mm256_srl_epi16(q3, _mm_cvtsi32_si128(2 * k as i32)),
                        three,
                    );
                    let high = _mm256_and_si256(
                        _mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * n + k) as i32)),
                        one,
                    );
                    let q = _mm256_or_si256(low, _mm256_slli_epi16(high, 2));
                    let pairs = _mm256_maddubs_epi16(q, load_i8x32(&y.qs[128 * n + 32 * k..]));
                    let j = 8 * n + 2 * k;
                    let s = _mm256_set_m128i(_mm_set1_epi16(sc[j + 1]), _mm_set1_epi16(sc[j]));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pairs, s));
                }
            }
            let d = fp16(x.d) * y.d;
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            acc_off += d * (4 * offset) as f32;
        }
        hsum(acc) - acc_off
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_f32_k(w: &[f32], a: &[f32]) -> f32 {
    let n = w.len();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: callers guarantee the features; i + 32 <= n bounds every load.
    unsafe {
        while i + 32 <= n {
            for (k, acc_k) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(w.as_ptr().add(i + 8 * k));
                let y = _mm256_loadu_ps(a.as_ptr().add(i + 8 * k));
                *acc_k = _mm256_fmadd_ps(x, y, *acc_k);
            }
            i += 32;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(s) + w[i..].iter().zip(&a[i..]).map(|(x, y)| x * y).sum::<f32>()
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_f32_k(w: &[f16], a: &[f32]) -> f32 {
    let n = w.len();
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: callers guarantee the features; i + 16 <= n bounds every load.
    unsafe {
        while i + 16 <= n {
            let x0 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(i).cast()));
            let x1 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(i + 8).cast()));
            acc0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(a.as_ptr().add(i)), acc0);
            acc1 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(a.as_ptr().add(i + 8)), acc1);
            i += 16;
        }
        hsum(_mm256_add_ps(acc0, acc1))
            + w[i..]
                .iter()
                .zip(&a[i..])
                .map(|(x, y)| x.to_f32() * y)
                .sum::<f32>()
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_f32_k(w: &[bf16], a: &[f32]) -> f32 {
    let n = w.len();
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: callers guarantee the features; i + 8 <= n bounds every load.
    unsafe {
        while i + 8 <= n {
            // bf16 is the top half of an f32: widen and shift into place.
            let raw = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.as_ptr().add(i).cast()));
            let x = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
            acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(a.as_ptr().add(i)), acc);
            i += 8;
        }
        hsum(acc)
            + w[i..]
                .iter()
                .zip(&a[i..])
                .map(|(x, y)| x.to_f32() * y)
                .sum::<f32>()
    }
}

/// The portable body compiled for AVX2 (8 lanes); no fused multiply-add,
/// so bit-identical to the scalar table.
#[target_feature(enable = "avx2")]
unsafe fn silu_mul_k(gate: &mut [f32], up: &[f32]) {
    activation::silu_mul_body(gate, up)
}

#[target_feature(enable = "avx2")]
unsafe fn softmax_block_k(x: &mut [f32], scale: f32, prev_max: f32) -> (f32, f32) {
    attention::softmax_block_body(x, scale, prev_max)
}

// Attention's value accumulation over Q8_0 / Q4_0 rows: the portable body
// vectorized at 8 lanes (decode 32 codes, then one multiply-add per head).
#[target_feature(enable = "avx2")]
unsafe fn attn_accumulate_q8_0_k(v: &[BlockQ8_0], hd: usize, p: &[f32], acc: &mut [f32]) {
    attention::accumulate_q8_0(v, hd, p, acc)
}

#[target_feature(enable = "avx2")]
unsafe fn attn_accumulate_q4_0_k(v: &[BlockQ4_0], hd: usize, p: &[f32], acc: &mut [f32]) {
    attention::accumulate_q4_0(v, hd, p, acc)
}

#[target_feature(enable = "avx2")]
unsafe fn gelu_tanh_mul_k(gate: &mut [f32], up: &[f32]) {
    activation::gelu_tanh_mul_body(gate, up)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_k(alpha: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len();
    let av = _mm256_set1_ps(alpha);
    let mut i = 0;
    // SAFETY: callers guarantee the features; i + 8 <= n bounds every load and store.
    unsafe {
        while i + 8 <= n {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i).cast()));
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(yp, _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(yp)));
            i += 8;
        }
    }
    for (o, v) in y[i..].iter_mut().zip(&x[i..]) {
        *o += alpha * v.to_f32();
    }
}

/// One Q8_K block, bit-exact with `q8_k::quantize_row`: the value of
/// largest magnitude (the first of equals) maps to -127, codes rounded half
/// to even, then the per-16 sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_k_block(x: &[f32], b: &mut BlockQ8K) {
    let sign = _mm256_set1_ps(-0.0);
    // four running maxima, so the 32 steps are not one chain of latencies
    let mut m = [_mm256_setzero_ps(); 4];
    for xs in x.chunks_exact(32) {
        for (k, mk) in m.iter_mut().enumerate() {
            // SAFETY: xs is 32 readable floats, k < 4.
            let v = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * k)) };
            *mk = _mm256_max_ps(*mk, _mm256_andnot_ps(sign, v));
        }
    }
    let m = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
    let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    // the first value of that magnitude, 8 at a time (a scalar search took
    // as long as the rest of the block)
    let target = _mm256_set1_ps(amax);
    let max = x
        .chunks_exact(8)
        .find_map(|xs| {
            // SAFETY: xs is 8 readable floats.
            let v = unsafe { _mm256_loadu_ps(xs.as_ptr()) };
            let hits = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, v), target);
            let mask = _mm256_movemask_ps(hits);
            (mask != 0).then(|| xs[mask.trailing_zeros() as usize])
        })
        .unwrap_or(0.0);
    if max == 0.0 {
        b.d = 0.0;
        b.qs = [0; QK_K];
        b.bsums = [0; QK_K / 16];
        return;
    }
    let iscale = -127.0 / max;
    let is = _mm256_set1_ps(iscale);
    let top = _mm256_set1_epi32(127);
    for (xs, qs) in x.chunks_exact(32).zip(b.qs.chunks_exact_mut(32)) {
        let r = |k: usize| {
            // SAFETY: xs holds 32 floats, k < 4.
            let v = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * k)) };
            _mm256_min_epi32(
                _mm256_cvtps_epi32(_mm256_round_ps(
                    _mm256_mul_ps(v, is),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                )),
                top,
            )
        };
        let (i0, i1, i2, i3) = (r(0), r(1), r(2), r(3));
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        let ordered =
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: qs is 32 writable bytes.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), ordered) };
    }
    for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = qs.iter().map(|&q| q as i16).sum();
    }
    b.d = 1.0 / iscale;
}

/// Quantizes 32 floats to i8 with `d = amax / 127` (rounding to nearest
/// even, where the reference rounds ties away from zero: equal except at
/// exact halves). Returns (d, sum of codes).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_k(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    // SAFETY: callers guarantee the features and x.len() == 32; qs is 32 writable bytes.
    unsafe {
        let p = x.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vk in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vk));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let r = |vk: __m256| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(vk, id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        };
        let (i0, i1, i2, i3) = (r(v[0]), r(v[1]), r(v[2]), r(v[3]));
        let s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        let s4 = _mm_add_epi32(_mm256_extracti128_si256(s, 1), _mm256_castsi256_si128(s));
        let s4 = _mm_hadd_epi32(s4, s4);
        let sum = _mm_cvtsi128_si32(_mm_hadd_epi32(s4, s4));
        // packs interleave 128-bit lanes; the permute restores element order
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        let ordered =
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qs.as_mut_ptr().cast(), ordered);
        (d, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{available_isas, Isa};
    use crate::quant::{q8_k, test_data::random_row};
    use bytemuck::Zeroable;

    /// The Q8_K quantizer equals the reference bit for bit: random rows, a
    /// zero block, and blocks whose largest magnitude comes with both signs
    /// (the first one sets the scale's sign), in one 8-float load or apart,
    /// first or last.
    #[test]
    fn q8_k_quantizer_is_bit_exact() {
        if !available_isas().contains(&Isa::Avx2) {
            return;
        }
        let mut rows: Vec<Vec<f32>> = (0..4).map(|s| random_row(4 * QK_K, 70 + s)).collect();
        rows.push(vec![0.0; QK_K]);
        for (first, second) in [
            (3usize, 5usize),
            (5, 200),
            (200, 5),
            (0, 255),
            (255, 0),
            (248, 255),
        ] {
            let mut x = random_row(QK_K, first as u64);
            x[first] = -9.0;
            x[second] = 9.0;
            rows.push(x);
        }
        for (i, x) in rows.iter().enumerate() {
            let nb = x.len() / QK_K;
            let mut got = vec![BlockQ8K::zeroed(); nb];
            let mut want = vec![BlockQ8K::zeroed(); nb];
            quantize_q8_k(x, &mut got);
            q8_k::quantize_row(x, &mut want);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.d.to_bits(), w.d.to_bits(), "row {i}");
                assert_eq!(g.qs, w.qs, "row {i}");
                assert_eq!(g.bsums, w.bsums, "row {i}");
            }
        }
    }
}
