//! The AVX2 gemm's view of the weight blocks it takes (Q4_0, Q4_1, Q5_0,
//! Q8_0, Q4_K, Q6_K) and of their activation blocks: each weight block
//! unpacked into runs of 32 byte codes (unsigned, or signed for Q8_0), the
//! k-quants' sub-block scales as `i16` multipliers, the block scale, and the
//! coefficients of the correction terms (Q4_1's minimum against Q8_1's `s`,
//! Q4_K's mins against the Q8_K sums). The kernel that uses them, with one
//! weight row per 32-bit lane, is [`super::avx2_lanes`].
//!
//! Integer products of these codes are exact: codes below 64 against codes
//! within ±128 cannot saturate the `i16` pairs; Q8_0 x Q8_0 uses the
//! `vpsignb` trick as the dot does.
//!
//! Soundness: [`Avx2Gemm::unpack`] needs AVX2, FMA and F16C; it is called
//! only from the kernel, reached through table entries that `super::table`
//! hands out after `super::supports` checked those features.

use super::avx2::{bit_bytes, fp16, nibbles};
use crate::quant::blocks::*;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::WeightBlock;
use core::arch::x86_64::*;

/// The most 32-code runs per block (the k-quants' 256 elements).
pub(super) const MAX_RUNS: usize = 8;

/// The most correction terms per block (Q4_K: one per 32-element
/// sub-block).
pub(super) const MAX_TERMS: usize = 8;

/// An 8-bit activation block as the gemm reads it.
pub(super) trait GemmAct: Copy {
    /// The block's codes: `32 * RUNS` of the weight type.
    fn codes(&self) -> &[i8];
    /// The block's scale.
    fn scale(&self) -> f32;
}

impl GemmAct for BlockQ8_0 {
    fn codes(&self) -> &[i8] {
        &self.qs
    }
    fn scale(&self) -> f32 {
        self.d.to_f32()
    }
}

impl GemmAct for BlockQ8_1 {
    fn codes(&self) -> &[i8] {
        &self.qs
    }
    fn scale(&self) -> f32 {
        self.d.to_f32()
    }
}

impl GemmAct for BlockQ8K {
    fn codes(&self) -> &[i8] {
        &self.qs
    }
    fn scale(&self) -> f32 {
        self.d
    }
}

/// A weight block as the gemm unpacks it: `w · a = d_w * d_a * sum_v
/// madd(maddubs(codes[v], a[v]), scales[v]) + sum_j mins[j] * terms(a)[j]`
/// over its `RUNS` runs of 32 codes.
pub(super) trait Avx2Gemm: WeightBlock {
    /// 32-code runs per block (at most [`MAX_RUNS`]).
    const RUNS: usize;
    /// Runs carry `i16` multipliers (the k-quants' sub-block scales);
    /// otherwise ones.
    const SCALED: bool;
    /// Signed codes (Q8_0), dotted with the `vpsignb` trick.
    const SIGNED: bool;
    /// Unsigned codes that stand for `code - OFFSET` (Q4_0: 8, Q5_0: 16):
    /// `OFFSET * (y[2i] + y[2i + 1])` comes off each `i16` pair, exact in
    /// integers as in the reference dot (the float correction terms would
    /// cancel against the code sums and round differently).
    const OFFSET: i8 = 0;
    /// Correction terms per block (at most [`MAX_TERMS`]).
    const TERMS: usize;

    /// Writes the block's `RUNS` code vectors, its scale vectors (when
    /// `SCALED`) and its `TERMS` correction coefficients; returns its
    /// scale `d_w`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available; `codes` and `scales` hold `RUNS`
    /// vectors, `mins` `TERMS` floats.
    unsafe fn unpack(&self, codes: &mut [__m256i], scales: &mut [__m256i], mins: &mut [f32])
        -> f32;

    /// The activation side of the correction terms of a block with scale
    /// `d` (`s.len() == TERMS`).
    fn act_terms(a: &Self::Act, d: f32, s: &mut [f32]);
}

impl Avx2Gemm for BlockQ4_0 {
    const RUNS: usize = 1;
    const SCALED: bool = false;
    const SIGNED: bool = false;
    const OFFSET: i8 = 8;
    const TERMS: usize = 0;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], _: &mut [__m256i], _: &mut [f32]) -> f32 {
        // SAFETY: the caller guarantees the features.
        codes[0] = unsafe { nibbles(&self.qs) };
        // SAFETY: as above.
        unsafe { fp16(self.d) }
    }
    fn act_terms(_: &BlockQ8_0, _: f32, _: &mut [f32]) {}
}

impl Avx2Gemm for BlockQ4_1 {
    const RUNS: usize = 1;
    const SCALED: bool = false;
    const SIGNED: bool = false;
    const TERMS: usize = 1;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], _: &mut [__m256i], mins: &mut [f32]) -> f32 {
        // SAFETY: the caller guarantees the features.
        codes[0] = unsafe { nibbles(&self.qs) };
        // SAFETY: as above.
        mins[0] = unsafe { fp16(self.m) };
        // SAFETY: as above.
        unsafe { fp16(self.d) }
    }
    /// Q8_1's stored `s` (an f16), as the reference dot uses it.
    fn act_terms(a: &BlockQ8_1, _: f32, s: &mut [f32]) {
        s[0] = a.s.to_f32();
    }
}

impl Avx2Gemm for BlockQ5_0 {
    const RUNS: usize = 1;
    const SCALED: bool = false;
    const SIGNED: bool = false;
    const OFFSET: i8 = 16;
    const TERMS: usize = 0;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], _: &mut [__m256i], _: &mut [f32]) -> f32 {
        let fifth = _mm256_and_si256(
            bit_bytes(u32::from_le_bytes(self.qh)),
            _mm256_set1_epi8(0x10),
        );
        // SAFETY: the caller guarantees the features.
        codes[0] = _mm256_or_si256(unsafe { nibbles(&self.qs) }, fifth);
        // SAFETY: as above.
        unsafe { fp16(self.d) }
    }
    fn act_terms(_: &BlockQ8_0, _: f32, _: &mut [f32]) {}
}

impl Avx2Gemm for BlockQ8_0 {
    const RUNS: usize = 1;
    const SCALED: bool = false;
    const SIGNED: bool = true;
    const TERMS: usize = 0;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], _: &mut [__m256i], _: &mut [f32]) -> f32 {
        // SAFETY: qs is 32 readable bytes; loadu has no alignment requirement.
        codes[0] = unsafe { _mm256_loadu_si256(self.qs.as_ptr().cast()) };
        // SAFETY: the caller guarantees the features.
        unsafe { fp16(self.d) }
    }
    fn act_terms(_: &BlockQ8_0, _: f32, _: &mut [f32]) {}
}

/// Runs `2c` and `2c + 1` are the low and high nibbles of `qs[32c..]`,
/// each with its sub-block's 6-bit scale; the mins meet the Q8_K sums of
/// the two 16-element halves of the run.
impl Avx2Gemm for BlockQ4K {
    const RUNS: usize = 8;
    const SCALED: bool = true;
    const SIGNED: bool = false;
    const TERMS: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(
        &self,
        codes: &mut [__m256i],
        scales: &mut [__m256i],
        mins: &mut [f32],
    ) -> f32 {
        let mask = _mm256_set1_epi8(0x0F);
        for c in 0..4 {
            // SAFETY: qs[32c..32c + 32] is inside qs[128]; loadu has no alignment requirement.
            let q4 = unsafe { _mm256_loadu_si256(self.qs[32 * c..].as_ptr().cast()) };
            codes[2 * c] = _mm256_and_si256(q4, mask);
            codes[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q4, 4), mask);
        }
        // SAFETY: the caller guarantees the features.
        let (d, dmin) = unsafe { (fp16(self.d), fp16(self.dmin)) };
        for j in 0..8 {
            let (sc, m) = crate::quant::q4_k::scale_min_k4(j, &self.scales);
            scales[j] = _mm256_set1_epi16(i16::from(sc));
            mins[j] = -dmin * f32::from(m);
        }
        d
    }
    fn act_terms(a: &BlockQ8K, d: f32, s: &mut [f32]) {
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = d * f32::from(a.bsums[2 * j] + a.bsums[2 * j + 1]);
        }
    }
}

/// Codes rebuilt unsigned (0..64) as in the dot, run `4n + k` covering
/// elements `128n + 32k..`, its two 16-element sub-blocks' scales in the
/// two 128-bit lanes; the offset of 32 comes off each `i16` pair before the
/// scales, exact in integers as in the dot (`63 * 128 * 2 + 32 * 128 * 2`
/// fits an `i16`).
impl Avx2Gemm for BlockQ6K {
    const RUNS: usize = 8;
    const SCALED: bool = true;
    const SIGNED: bool = false;
    const OFFSET: i8 = 32;
    const TERMS: usize = 0;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], scales: &mut [__m256i], _: &mut [f32]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x03);
        for n in 0..2 {
            // SAFETY: 32-byte loads at 32n of qh[64] and 64n, 64n + 32 of ql[128].
            let (qh, ql0, ql1) = unsafe {
                (
                    _mm256_loadu_si256(self.qh[32 * n..].as_ptr().cast()),
                    _mm256_loadu_si256(self.ql[64 * n..].as_ptr().cast()),
                    _mm256_loadu_si256(self.ql[64 * n + 32..].as_ptr().cast()),
                )
            };
            let high = |shift: i32| {
                let h = match shift {
                    0 => qh,
                    2 => _mm256_srli_epi16(qh, 2),
                    4 => _mm256_srli_epi16(qh, 4),
                    _ => _mm256_srli_epi16(qh, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
            };
            codes[4 * n] = _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0));
            codes[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), high(2));
            codes[4 * n + 2] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(4));
            codes[4 * n + 3] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(6));
        }
        for (v, s) in scales.iter_mut().enumerate().take(8) {
            *s = _mm256_set_m128i(
                _mm_set1_epi16(i16::from(self.scales[2 * v + 1])),
                _mm_set1_epi16(i16::from(self.scales[2 * v])),
            );
        }
        // SAFETY: the caller guarantees the features.
        unsafe { fp16(self.d) }
    }
    fn act_terms(_: &BlockQ8K, _: f32, _: &mut [f32]) {}
}
