//! AVX-VNNI (VEX-encoded 256-bit `vpdpbusd`: Alder Lake and later client
//! cores, Zen 5; also the 256-bit path of AVX-512 VNNI parts, which select
//! the `vnni` tier instead): the AVX2 legacy-quant dots with `vpdpbusd` as
//! the 4-byte dot step, one instruction where AVX2 needs `vpmaddubsw` +
//! `vpmaddwd`, accumulating in i32 without the i16 saturation.
//!
//! Gemm entries: the AVX2 lane gemm of `avx2_lanes.rs` (still `vpmaddubsw` +
//! `vpmaddwd`), decode included, so that a token's logits do not depend on
//! how it was batched; this tier's dots serve the types without a gemm.
//!
//! Soundness: the `unsafe fn`s need AVX-VNNI, AVX2, FMA and F16C. The safe
//! wrappers below are private and reach callers only through
//! [`overrides`], which `super::table` calls after
//! `super::supports(Isa::AvxVnni)` checked those features at run time.

use super::avx2::{bit_bytes, iq4_levels};
use super::avx2_lanes;
use crate::dispatch::{Isa, KernelTable, WeightRow};
use crate::quant::blocks::*;
use crate::quant::iq4_nl::BlockIQ4NL;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::q5_1::BlockQ5_1;
use core::arch::x86_64::*;
use half::f16;

pub(super) fn overrides(t: KernelTable) -> KernelTable {
    KernelTable {
        isa: Isa::AvxVnni,
        q4_0: WeightRow {
            dot: q4_0_q8_0,
            gemm: Some(q4_0_q8_0_gemm),
            ..t.q4_0
        },
        q4_1: WeightRow {
            dot: q4_1_q8_1,
            gemm: Some(q4_1_q8_1_gemm),
            ..t.q4_1
        },
        q8_0: WeightRow {
            dot: q8_0_q8_0,
            gemm: Some(q8_0_q8_0_gemm),
            ..t.q8_0
        },
        q5_0: WeightRow {
            dot: q5_0_q8_0,
            gemm: Some(q5_0_q8_0_gemm),
            ..t.q5_0
        },
        q5_1: WeightRow {
            dot: q5_1_q8_1,
            ..t.q5_1
        },
        iq4_nl: WeightRow {
            dot: iq4_nl_q8_0,
            ..t.iq4_nl
        },
        ..t
    }
}

// ---- safe wrappers: lengths are clamped to the shorter operand ----

fn q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: AVX-VNNI/AVX2/FMA/F16C were detected before this table was handed out; both slices hold n blocks.
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

// The AVX2 gemm (`vpmaddubsw` + `vpmaddwd`) for prefill and decode alike;
// these dots only for a shape the gemm does not take.

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
fn iq4_nl_q8_0(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: as above.
    unsafe { iq4_nl_q8_0_k(&w[..n], &a[..n]) }
}

// ---- helpers ----

/// `a * b` of two halves, broadcast, with one conversion (scalar f16 work,
/// not the dot, bounds these loops).
#[inline]
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
fn mul_halves(a: f16, b: f16) -> __m256 {
    let bits = a.to_bits() as u32 | (b.to_bits() as u32) << 16;
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    _mm256_broadcastss_ps(_mm_mul_ss(v, _mm_movehdup_ps(v)))
}

#[inline]
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
fn hsum(x: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// 16 bytes of packed nibbles -> 32 unsigned codes: low nibbles (elements
/// 0..16) in the low lane, high nibbles (16..32) in the high lane.
#[inline]
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: qs is 16 readable bytes; loadu has no alignment requirement.
    let lo = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let hi = _mm_srli_epi16::<4>(lo);
    _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
}

#[inline]
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
fn load32(qs: &[i8; 32]) -> __m256i {
    // SAFETY: qs is 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// Walks the blocks two at a time into two float accumulators (hiding the
/// FMA latency), `block` giving the i32 lanes of one block's dot and `scale`
/// its scale product.
#[inline]
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
fn blocks<W, A>(
    w: &[W],
    a: &[A],
    scale: impl Fn(&W, &A) -> __m256,
    block: impl Fn(&W, &A) -> __m256i,
) -> f32 {
    let step = |x: &W, y: &A, acc: __m256| {
        _mm256_fmadd_ps(scale(x, y), _mm256_cvtepi32_ps(block(x, y)), acc)
    };
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
        acc0 = step(&x[0], &y[0], acc0);
        acc1 = step(&x[1], &y[1], acc1);
    }
    let n = w.len().min(a.len());
    if n % 2 == 1 {
        acc0 = step(&w[n - 1], &a[n - 1], acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

// ---- kernels ----

#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
unsafe fn q4_0_q8_0_k(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let eight = _mm256_set1_epi8(8);
    blocks(
        w,
        a,
        |x, y| mul_halves(x.d, y.d),
        |x, y| {
            // (q - 8) . y = q . y - 8 . y, both with unsigned left operands
            let ys = load32(&y.qs);
            let z = _mm256_setzero_si256();
            _mm256_sub_epi32(
                _mm256_dpbusd_avx_epi32(z, nibbles(&x.qs), ys),
                _mm256_dpbusd_avx_epi32(z, eight, ys),
            )
        },
    )
}

#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
unsafe fn q4_1_q8_1_k(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    // (d, m) of the weights times (d, s) of the activations with one
    // conversion each: the scalar f16 work, not the dot, bounds this loop.
    let halves = |d: f16, m: f16| {
        let bits = d.to_bits() as u32 | (m.to_bits() as u32) << 16;
        _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
    };
    let mut summs = _mm_setzero_ps();
    let mut step = |x: &BlockQ4_1, y: &BlockQ8_1, acc: __m256| {
        let dm = _mm_mul_ps(halves(x.d, x.m), halves(y.d, y.s));
        summs = _mm_add_ss(summs, _mm_movehdup_ps(dm));
        let d = _mm256_broadcastss_ps(dm);
        let p = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), nibbles(&x.qs), load32(&y.qs));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc)
    };
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)) {
        acc0 = step(&x[0], &y[0], acc0);
        acc1 = step(&x[1], &y[1], acc1);
    }
    if w.len() % 2 == 1 {
        let i = w.len() - 1;
        acc0 = step(&w[i], &a[i], acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(summs)
}

#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
unsafe fn q8_0_q8_0_k(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    blocks(
        w,
        a,
        |x, y| mul_halves(x.d, y.d),
        |x, y| {
            // x . y = |x| . (y * sign(x)), exact in i32 (no i16 pairs here)
            let (xs, ys) = (load32(&x.qs), load32(&y.qs));
            _mm256_dpbusd_avx_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(xs, xs),
                _mm256_sign_epi8(ys, xs),
            )
        },
    )
}

/// Q5_0 as Q4_0: `(q - 16) . y = q . y - 16 . y` with the unsigned 5-bit
/// codes (nibble plus 16 where the fifth bit is set).
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
unsafe fn q5_0_q8_0_k(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let sixteen = _mm256_set1_epi8(16);
    blocks(
        w,
        a,
        |x, y| mul_halves(x.d, y.d),
        |x, y| {
            let ys = load32(&y.qs);
            let fifth = _mm256_and_si256(bit_bytes(u32::from_le_bytes(x.qh)), sixteen);
            let z = _mm256_setzero_si256();
            _mm256_sub_epi32(
                _mm256_dpbusd_avx_epi32(z, _mm256_or_si256(nibbles(&x.qs), fifth), ys),
                _mm256_dpbusd_avx_epi32(z, sixteen, ys),
            )
        },
    )
}

/// Q5_1 as Q4_1, with the unsigned 5-bit codes.
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
unsafe fn q5_1_q8_1_k(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let sixteen = _mm256_set1_epi8(16);
    let mut summs = 0f32;
    let dots = blocks(
        w,
        a,
        |x, y| mul_halves(x.d, y.d),
        |x, y| {
            let fifth = _mm256_and_si256(bit_bytes(u32::from_le_bytes(x.qh)), sixteen);
            let q = _mm256_or_si256(nibbles(&x.qs), fifth);
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), q, load32(&y.qs))
        },
    );
    for (x, y) in w.iter().zip(a) {
        summs += _mm256_cvtss_f32(mul_halves(x.m, y.s));
    }
    dots + summs
}

/// IQ4_NL: levels by `vpshufb`, then `|x| . (y * sign(x))` as for Q8_0.
#[target_feature(enable = "avxvnni,avx2,fma,f16c")]
unsafe fn iq4_nl_q8_0_k(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    let levels = iq4_levels();
    blocks(
        w,
        a,
        |x, y| mul_halves(x.d, y.d),
        |x, y| {
            let xs = _mm256_shuffle_epi8(levels, nibbles(&x.qs));
            _mm256_dpbusd_avx_epi32(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(xs, xs),
                _mm256_sign_epi8(load32(&y.qs), xs),
            )
        },
    )
}
