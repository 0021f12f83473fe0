//! AVX-512 (F/BW/VL) single dots of the types beyond the legacy four: Q5_0,
//! Q5_1 and IQ4_NL (32-element blocks against Q8_0 / Q8_1, two blocks per
//! register in the layout of `avx512.rs`'s single dots) and Q2_K, Q3_K and
//! IQ4_XS (256-element super-blocks against Q8_K, 64 codes per register).
//! Written once as a macro that the AVX-512BW tier instantiates with its
//! `vpmaddubsw` + `vpmaddwd` 4-byte dot step and the VNNI tier with
//! `vpdpbusd`, as `legacy_kernels!`.
//!
//! * Q5_0 / Q5_1: the fifth bits of two blocks become a 64-bit mask in the
//!   register's element order, and 16 under that mask is or-ed onto the
//!   nibbles (one `vmovdqu8` with zero-masking).
//! * IQ4_NL / IQ4_XS: the levels by `vpshufb` (the 16-level table in every
//!   128-bit lane), then `|x| . (y * sign(x))` (no `vpsignb` on AVX-512: `y`
//!   is negated under the mask of negative levels), exact in the i16 pairs.
//! * Q2_K / Q3_K: a 32-byte run of codes broadcast to both halves, shifted
//!   per half (`vpsrlvw`) to two 2-bit planes, so a register holds 64
//!   consecutive elements: four sub-blocks of 16, one per 128-bit lane,
//!   whose scales multiply the i32 lanes (`vpmulld`, exact in integers).
//!
//! Codes entering the dot step are unsigned and below 32 (or |level| <= 127
//! under the sign trick), so the AVX-512BW tier's i16 pairs cannot
//! saturate. Soundness: as `avx512.rs`; the safe wrappers reach callers only
//! through the tiers' `overrides`, after `super::supports` checked the
//! features.

/// Defines the kernels of one tier in a `mod lowbit`, with `$features` the
/// target features and `$dot4` the 4-byte dot step; uses the single-dot
/// helpers of the tier's `mod kernels` (`legacy_kernels!`).
macro_rules! lowbit_kernels {
    ($features:literal, $dot4:path) => {
        mod lowbit {
            use super::kernels::{fp16, interleave2, mul_halves, nibbles2, pairs};
            use crate::quant::blocks::*;
            use crate::quant::iq4_nl::{BlockIQ4NL, KVALUES};
            use crate::quant::iq4_xs::BlockIQ4XS;
            use crate::quant::q2_k::BlockQ2K;
            use crate::quant::q3_k::BlockQ3K;
            use crate::quant::q5_0::BlockQ5_0;
            use crate::quant::q5_1::BlockQ5_1;
            use core::arch::x86_64::*;

            // ---- safe wrappers: lengths are clamped to the shorter operand ----

            pub(in super::super) fn q5_0_q8_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: the tier's features were detected before its table was handed out; both slices hold n blocks.
                unsafe { q5_0_q8_0_k(&w[..n], &a[..n]) }
            }
            pub(in super::super) fn q5_1_q8_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: as above.
                unsafe { q5_1_q8_1_k(&w[..n], &a[..n]) }
            }
            pub(in super::super) fn iq4_nl_q8_0(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: as above.
                unsafe { iq4_nl_q8_0_k(&w[..n], &a[..n]) }
            }
            pub(in super::super) fn iq4_xs_q8_k(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: as above.
                unsafe { iq4_xs_q8_k_k(&w[..n], &a[..n]) }
            }
            pub(in super::super) fn q2_k_q8_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: as above.
                unsafe { q2_k_q8_k_k(&w[..n], &a[..n]) }
            }
            pub(in super::super) fn q3_k_q8_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: as above.
                unsafe { q3_k_q8_k_k(&w[..n], &a[..n]) }
            }

            // ---- helpers ----

            /// The fifth bits of two Q5 blocks as a mask in the layout of
            /// `nibbles2`: [block 0 elements 0..16, block 1 0..16, block 0
            /// 16..32, block 1 16..32].
            #[inline]
            fn fifth_bits(qh0: [u8; 4], qh1: [u8; 4]) -> __mmask64 {
                let (h0, h1) = (
                    u32::from_le_bytes(qh0) as u64,
                    u32::from_le_bytes(qh1) as u64,
                );
                (h0 & 0xFFFF) | (h1 & 0xFFFF) << 16 | (h0 >> 16) << 32 | (h1 >> 16) << 48
            }

            /// The 16 IQ4_NL levels in every 128-bit lane.
            #[inline]
            #[target_feature(enable = $features)]
            fn levels() -> __m512i {
                // SAFETY: KVALUES is 16 readable bytes; loadu has no alignment requirement.
                _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(KVALUES.as_ptr().cast()) })
            }

            /// `$dot4` of signed `x` (|x| <= 127) and `y` as `|x| . (y * sign(x))`.
            #[inline]
            #[target_feature(enable = $features)]
            fn dot_signed(x: __m512i, y: __m512i) -> __m512i {
                let z = _mm512_setzero_si512();
                let y = _mm512_mask_sub_epi8(y, _mm512_movepi8_mask(x), z, y);
                $dot4(z, _mm512_abs_epi8(x), y)
            }

            /// 32 bytes at the start of `p` in both 256-bit halves.
            ///
            /// # Safety
            /// `p` holds at least 32 bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn broadcast32(p: &[u8]) -> __m512i {
                debug_assert!(p.len() >= 32);
                // SAFETY: per the contract; loadu has no alignment requirement.
                _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(p.as_ptr().cast()) })
            }

            /// 64 bytes at the start of `p`.
            ///
            /// # Safety
            /// `p` holds at least 64 bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load64(p: &[i8]) -> __m512i {
                debug_assert!(p.len() >= 64);
                // SAFETY: per the contract; loadu has no alignment requirement.
                unsafe { _mm512_loadu_si512(p.as_ptr().cast()) }
            }

            /// i16 shift counts: `lo` in the low 256 bits, `hi` in the high.
            #[inline]
            #[target_feature(enable = $features)]
            fn shifts(lo: i16, hi: i16) -> __m512i {
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_set1_epi16(lo)),
                    _mm256_set1_epi16(hi),
                )
            }

            /// i32 lanes `[s[j] x4, s[j+1] x4, s[j+2] x4, s[j+3] x4]` of the
            /// 16 scales in `s`.
            #[inline]
            #[target_feature(enable = $features)]
            fn four_scales(s: __m512i, j: i32) -> __m512i {
                let idx = _mm512_add_epi32(
                    _mm512_set1_epi32(j),
                    _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                );
                _mm512_permutexvar_epi32(idx, s)
            }

            // ---- 32-element blocks: two per register ----

            #[target_feature(enable = $features)]
            fn q5_0_q8_0_k(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
                let sixteen = _mm512_set1_epi8(16);
                pairs(
                    w,
                    a,
                    |x, y| mul_halves(x.d, y.d),
                    |x0, x1, y0, y1| {
                        // (q - 16) . y = q . y - 16 . y, both with unsigned left operands
                        let ys = interleave2(&y0.qs, &y1.qs);
                        let fifth = _mm512_maskz_mov_epi8(fifth_bits(x0.qh, x1.qh), sixteen);
                        let q = _mm512_or_si512(nibbles2(&x0.qs, &x1.qs), fifth);
                        let z = _mm512_setzero_si512();
                        _mm512_sub_epi32($dot4(z, q, ys), $dot4(z, sixteen, ys))
                    },
                )
            }

            #[target_feature(enable = $features)]
            fn q5_1_q8_1_k(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
                let sixteen = _mm512_set1_epi8(16);
                let mins: f32 = w.iter().zip(a).map(|(x, y)| mul_halves(x.m, y.s)).sum();
                let dots = pairs(
                    w,
                    a,
                    |x, y| mul_halves(x.d, y.d),
                    |x0, x1, y0, y1| {
                        let ys = interleave2(&y0.qs, &y1.qs);
                        let fifth = _mm512_maskz_mov_epi8(fifth_bits(x0.qh, x1.qh), sixteen);
                        let q = _mm512_or_si512(nibbles2(&x0.qs, &x1.qs), fifth);
                        $dot4(_mm512_setzero_si512(), q, ys)
                    },
                );
                dots + mins
            }

            #[target_feature(enable = $features)]
            fn iq4_nl_q8_0_k(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
                let levels = levels();
                pairs(
                    w,
                    a,
                    |x, y| mul_halves(x.d, y.d),
                    |x0, x1, y0, y1| {
                        let xs = _mm512_shuffle_epi8(levels, nibbles2(&x0.qs, &x1.qs));
                        dot_signed(xs, interleave2(&y0.qs, &y1.qs))
                    },
                )
            }

            // ---- super-blocks: 64 codes per register ----

            /// Four registers of 64 elements (two sub-blocks of 32 each):
            /// the 32 code bytes of the pair split into low and high
            /// nibbles give [sb 0..16, sb' 0..16, sb 16..32, sb' 16..32],
            /// and the activations are put in that order with one lane
            /// shuffle.
            #[target_feature(enable = $features)]
            unsafe fn iq4_xs_q8_k_k(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
                let levels = levels();
                let m4 = _mm256_set1_epi8(0x0F);
                let mut acc = _mm512_setzero_ps();
                for (x, y) in w.iter().zip(a) {
                    let sc: [i32; 16] =
                        std::array::from_fn(|j| crate::quant::iq4_xs::scale(x, j % 8));
                    // SAFETY: sc is 64 readable bytes.
                    let sc = unsafe { _mm512_loadu_si512(sc.as_ptr().cast()) };
                    let pair = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
                    let mut sumi = _mm512_setzero_si512();
                    for r in 0..4 {
                        // SAFETY: 32 bytes at 32r of qs[128] and 64 at 64r of qs[256].
                        let (raw, yv) = unsafe {
                            (
                                _mm256_loadu_si256(x.qs.as_ptr().add(32 * r).cast()),
                                load64(&y.qs[64 * r..]),
                            )
                        };
                        let idx = _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(_mm256_and_si256(raw, m4)),
                            _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4),
                        );
                        let xs = _mm512_shuffle_epi8(levels, idx);
                        let ys = _mm512_shuffle_i64x2::<0b11_01_10_00>(yv, yv);
                        let s = _mm512_permutexvar_epi32(
                            _mm512_add_epi32(pair, _mm512_set1_epi32(2 * r as i32)),
                            sc,
                        );
                        sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(dot_signed(xs, ys), s));
                    }
                    acc = _mm512_fmadd_ps(
                        _mm512_set1_ps(fp16(x.d) * y.d),
                        _mm512_cvtepi32_ps(sumi),
                        acc,
                    );
                }
                _mm512_reduce_add_ps(acc)
            }

            /// The 16 i32 values `s(j)` of a super-block, as a register.
            #[inline]
            #[target_feature(enable = $features)]
            fn scales16(s: impl Fn(usize) -> i32) -> __m512i {
                let v: [i32; 16] = std::array::from_fn(s);
                // SAFETY: v is 64 readable bytes.
                unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
            }

            /// `sum(s[j] * bsums[j])` over the 16 sub-blocks.
            #[inline]
            #[target_feature(enable = $features)]
            fn weighted_bsums(s: __m512i, y: &BlockQ8K) -> i32 {
                // SAFETY: bsums is 16 i16 = 32 readable bytes.
                let sums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
                let b = _mm512_cvtepi16_epi32(sums);
                _mm512_reduce_add_epi32(_mm512_mullo_epi32(b, s))
            }

            #[target_feature(enable = $features)]
            unsafe fn q2_k_q8_k_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
                let three = _mm512_set1_epi8(3);
                let mut acc = _mm512_setzero_ps();
                let mut acc_m = 0f32;
                for (x, y) in w.iter().zip(a) {
                    let sc = scales16(|j| i32::from(x.scales[j] & 0xF));
                    let mins = scales16(|j| i32::from(x.scales[j] >> 4));
                    acc_m += y.d * fp16(x.dmin) * weighted_bsums(mins, y) as f32;
                    let mut sumi = _mm512_setzero_si512();
                    for n in 0..2 {
                        // SAFETY: 32 bytes at 32n of qs[64].
                        let q2 = unsafe { broadcast32(&x.qs[32 * n..]) };
                        for h in 0..2 {
                            let q = _mm512_and_si512(
                                _mm512_srlv_epi16(q2, shifts(4 * h as i16, 4 * h as i16 + 2)),
                                three,
                            );
                            // SAFETY: 64 bytes at 128n + 64h of qs[256].
                            let yv = unsafe { load64(&y.qs[128 * n + 64 * h..]) };
                            let d = $dot4(_mm512_setzero_si512(), q, yv);
                            let s = four_scales(sc, (8 * n + 4 * h) as i32);
                            sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(d, s));
                        }
                    }
                    acc = _mm512_fmadd_ps(
                        _mm512_set1_ps(y.d * fp16(x.d)),
                        _mm512_cvtepi32_ps(sumi),
                        acc,
                    );
                }
                _mm512_reduce_add_ps(acc) - acc_m
            }

            #[target_feature(enable = $features)]
            unsafe fn q3_k_q8_k_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
                let (one, three) = (_mm512_set1_epi8(1), _mm512_set1_epi8(3));
                let mut acc = _mm512_setzero_ps();
                let mut acc_off = 0f32;
                for (x, y) in w.iter().zip(a) {
                    let sc = scales16(|j| i32::from(crate::quant::q3_k::scale(&x.scales, j)));
                    let d = fp16(x.d) * y.d;
                    acc_off += d * (4 * weighted_bsums(sc, y)) as f32;
                    // SAFETY: hmask is 32 bytes.
                    let hm = unsafe { broadcast32(&x.hmask) };
                    let mut sumi = _mm512_setzero_si512();
                    for n in 0..2 {
                        // SAFETY: 32 bytes at 32n of qs[64].
                        let q3 = unsafe { broadcast32(&x.qs[32 * n..]) };
                        for h in 0..2 {
                            let k = 2 * h as i16;
                            let low = _mm512_and_si512(
                                _mm512_srlv_epi16(q3, shifts(2 * k, 2 * k + 2)),
                                three,
                            );
                            let bit = 4 * n as i16 + k;
                            let high =
                                _mm512_and_si512(_mm512_srlv_epi16(hm, shifts(bit, bit + 1)), one);
                            let q = _mm512_or_si512(low, _mm512_slli_epi16::<2>(high));
                            // SAFETY: 64 bytes at 128n + 64h of qs[256].
                            let yv = unsafe { load64(&y.qs[128 * n + 64 * h..]) };
                            let dq = $dot4(_mm512_setzero_si512(), q, yv);
                            let s = four_scales(sc, (8 * n + 4 * h) as i32);
                            sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(dq, s));
                        }
                    }
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
                }
                _mm512_reduce_add_ps(acc) - acc_off
            }
        }
    };
}

pub(super) use lowbit_kernels;
