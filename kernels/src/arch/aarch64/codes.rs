//! What the aarch64 integer kernels read of a block, the same on every
//! tier: its codes as signed byte vectors of 16 consecutive elements, the
//! integer scales that meet them, its float scale and its minimum term.
//!
//! Every integer weight type is one [`WeightCodes`] impl here; the NEON and
//! dotprod single-row dot ([`dot`]) is generic over those views and over the
//! tier's 16-byte integer dot ([`IntDot`]: `smull`/`sadalp` on NEON, `sdot`
//! on dotprod), and i8mm's single-row dot and 2x2 tiles are generic over the
//! same views (its dot keeps the float steps of a tile lane, so it has its
//! own loop). So a new type is one impl here and one table line per tier.
//!
//! Accumulation follows ggml's integer dots: per block, the codes' products
//! are summed in i32 lanes, each group of vectors meets its integer sub-block
//! scale (`mla`), and only then does the block's float scale apply, so the
//! horizontal sum happens once per row.

use super::neon::f16_to_f32;
use crate::quant::blocks::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1,
    K_SCALE_SIZE,
};
use crate::quant::iq4_nl::{BlockIQ4NL, KVALUES};
use crate::quant::iq4_xs::{self, BlockIQ4XS};
use crate::quant::q2_k::BlockQ2K;
use crate::quant::q3_k::BlockQ3K;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::q5_1::BlockQ5_1;
use crate::quant::WeightBlock;
use std::arch::aarch64::*;

/// A tier's integer dot of 16 byte pairs.
pub(super) trait IntDot {
    /// `acc` plus the products of `x` and `y`, left in lanes whose
    /// [`IntDot::sum`] is their total (every product counted once).
    ///
    /// # Safety
    /// The CPU has the tier's features.
    unsafe fn dot16(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t;
    /// The total of the lanes [`IntDot::dot16`] fills, after they were
    /// scaled lane by lane (the other lanes are not read).
    ///
    /// # Safety
    /// NEON.
    unsafe fn sum(v: float32x4_t) -> f32;
}

/// An activation block as the integer kernels read it.
pub(super) trait ActCodes: Copy {
    /// Codes of elements `16i .. 16i + 16`.
    ///
    /// # Safety
    /// NEON.
    ///
    /// # Panics
    /// If the block has no vector `i` (a caller bug: `i` is a loop constant).
    unsafe fn codes16(&self, i: usize) -> int8x16_t;
    /// # Safety
    /// NEON.
    unsafe fn d(&self) -> f32;
}

/// A weight block as the integer kernels read it: `w·a` over a block is
/// `d·a.d · Σ_g scale_g · Σ_{i in g} codes16(i)·a.codes16(i) + min_term(a)`,
/// where group `g` is the vectors `g·VECS_PER_SCALE ..`.
pub(super) trait WeightCodes: WeightBlock<Act: ActCodes> {
    /// 16-code vectors per block.
    const VECS: usize;
    /// Vectors that share one integer scale (`VECS`: the block has only `d`).
    const VECS_PER_SCALE: usize;
    /// Whether [`WeightCodes::min_term`] can be non-zero.
    const MIN: bool;
    /// Codes of elements `16i .. 16i + 16`, as signed bytes.
    ///
    /// # Safety
    /// NEON.
    ///
    /// # Panics
    /// If `i >= VECS` (a caller bug: `i` is a loop constant).
    unsafe fn codes16(&self, i: usize) -> int8x16_t;
    /// The integer scale of each group of `VECS_PER_SCALE` vectors (the
    /// first `VECS / VECS_PER_SCALE`).
    ///
    /// # Safety
    /// NEON.
    unsafe fn scales(&self) -> [i32; 16];
    /// # Safety
    /// NEON.
    unsafe fn d(&self) -> f32;
    /// What the dot with `a` adds to the scaled code products: the weight
    /// minimum against the activation sums (0 without `MIN`).
    ///
    /// # Safety
    /// NEON.
    unsafe fn min_term(&self, a: &Self::Act) -> f32;
}

/// `$body` once for each vector index `$i` = 0..16, each a constant, so
/// every view's unpacking of vector `$i` folds to straight-line code (a loop
/// over a runtime index keeps the index arithmetic and its branches, and
/// LLVM does not reliably unroll it).
macro_rules! for_each_vec {
    ($i:ident => $body:block) => {
        for_each_vec!(@ $i $body 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (@ $i:ident $body:block $($n:literal)*) => {
        $({
            const $i: usize = $n;
            $body
        })*
    };
}
pub(super) use for_each_vec;

/// Whether vector `i` closes its group (the group's scale applies then).
pub(super) const fn ends_group<W: WeightCodes>(i: usize) -> bool {
    (i + 1).is_multiple_of(W::VECS_PER_SCALE)
}

/// `Σ w·a` over the common blocks: the single-row dot of every tier.
///
/// # Safety
/// The CPU has `D`'s features; the caller is compiled with them, so once
/// this inlines there, `D`'s instructions inline too.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot<W: WeightCodes, D: IntDot>(w: &[W], a: &[W::Act]) -> f32 {
    let mut sum = vdupq_n_f32(0.0);
    let mut mins = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        // SAFETY: the caller guarantees NEON.
        let scales = unsafe { wb.scales() };
        let (mut isum, mut p) = (vdupq_n_s32(0), vdupq_n_s32(0));
        for_each_vec!(I => {
            if I < W::VECS {
                // SAFETY: the caller guarantees NEON and D's features; I is
                // below W::VECS.
                p = unsafe { D::dot16(p, wb.codes16(I), ab.codes16(I)) };
                if ends_group::<W>(I) {
                    isum = vmlaq_n_s32(isum, p, scales[I / W::VECS_PER_SCALE]);
                    p = vdupq_n_s32(0);
                }
            }
        });
        // SAFETY: the caller guarantees NEON.
        let d = unsafe { wb.d() * ab.d() };
        sum = vfmaq_n_f32(sum, vcvtq_f32_s32(isum), d);
        if W::MIN {
            // SAFETY: the caller guarantees NEON.
            mins += unsafe { wb.min_term(ab) };
        }
    }
    // SAFETY: the caller guarantees NEON.
    unsafe { D::sum(sum) + mins }
}

// ---- loads and bit fields ----

/// 16 bytes of `bytes` from `at`.
///
/// # Panics
/// If they are not all inside (a caller bug: offsets are constants).
#[inline]
#[target_feature(enable = "neon")]
fn ld_u8(bytes: &[u8], at: usize) -> uint8x16_t {
    let s = &bytes[at..at + 16];
    // SAFETY: `s` holds 16 readable bytes; NEON is part of every aarch64
    // target.
    unsafe { vld1q_u8(s.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn ld_i8(bytes: &[i8], at: usize) -> int8x16_t {
    let s = &bytes[at..at + 16];
    // SAFETY: as in `ld_u8`.
    unsafe { vld1q_s8(s.as_ptr()) }
}

/// The low (`high == false`) or high nibbles of `q`.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(q: uint8x16_t, high: bool) -> uint8x16_t {
    if high {
        vshrq_n_u8::<4>(q)
    } else {
        vandq_u8(q, vdupq_n_u8(0x0F))
    }
}

/// `q >> shift` for the even shifts 0..8 of the 2-bit fields.
#[inline]
#[target_feature(enable = "neon")]
fn shr_even(q: uint8x16_t, shift: usize) -> uint8x16_t {
    match shift {
        0 => q,
        2 => vshrq_n_u8::<2>(q),
        4 => vshrq_n_u8::<4>(q),
        _ => vshrq_n_u8::<6>(q),
    }
}

/// `value` in every byte where `mask` has bit `bit` set, else 0.
#[inline]
#[target_feature(enable = "neon")]
fn where_bit(mask: uint8x16_t, bit: usize, value: u8) -> uint8x16_t {
    vandq_u8(vtstq_u8(mask, vdupq_n_u8(1 << bit)), vdupq_n_u8(value))
}

/// 0x10 for every element of half `i` (elements `16i ..`) of a Q5 block
/// whose fifth bit is set: element `e` is bit `e % 8` of byte `e / 8`.
#[inline]
#[target_feature(enable = "neon")]
fn fifth_bits(qh: &[u8; 4], i: usize) -> uint8x16_t {
    let bytes = vcombine_u8(vdup_n_u8(qh[2 * i]), vdup_n_u8(qh[2 * i + 1]));
    let bit_of_lane = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
    vandq_u8(vtstq_u8(bytes, bit_of_lane), vdupq_n_u8(0x10))
}

/// The IQ4 levels of 16 4-bit indices.
#[inline]
#[target_feature(enable = "neon")]
fn iq4_levels(indices: uint8x16_t) -> int8x16_t {
    // SAFETY: KVALUES is 16 readable bytes.
    let levels = unsafe { vld1q_s8(KVALUES.as_ptr()) };
    vqtbl1q_s8(levels, indices)
}

#[inline]
#[target_feature(enable = "neon")]
fn signed(q: uint8x16_t, offset: i8) -> int8x16_t {
    vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(offset))
}

/// The 8 six-bit (scale, min) pairs of Q4_K/Q5_K (ggml `get_scale_min_k4`):
/// sub-blocks 0..4 keep theirs in the low 6 bits of bytes 0..8; sub-blocks
/// 4..8 take 4 bits from bytes 8..12 and their top 2 bits from the spare high
/// bits of bytes 0..8.
pub(super) fn unpack_scales_mins(q: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..4 {
        scales[j] = q[j] & 63;
        mins[j] = q[j + 4] & 63;
        scales[j + 4] = (q[j + 8] & 0x0F) | ((q[j] >> 6) << 4);
        mins[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    (scales, mins)
}

/// The 16 signed six-bit scales of Q3_K, four at a time per u32: scale `j`
/// keeps its low nibble in byte `j` (`j < 8`) or the high nibble of byte
/// `j - 8`, and its top two bits at bits `2·(j / 4)` of byte `8 + j % 4`.
fn q3_k_scales(s: &[u8; 12]) -> [i32; 16] {
    let word = |k: usize| u32::from_le_bytes([s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]]);
    let (w0, w1, top) = (word(0), word(1), word(2));
    let nibbles = [
        w0 & 0x0F0F_0F0F,
        w1 & 0x0F0F_0F0F,
        (w0 >> 4) & 0x0F0F_0F0F,
        (w1 >> 4) & 0x0F0F_0F0F,
    ];
    let mut out = [0i32; 16];
    for (g, low) in nibbles.into_iter().enumerate() {
        let group = low | (((top >> (2 * g)) & 0x0303_0303) << 4);
        for (o, b) in out[4 * g..4 * g + 4].iter_mut().zip(group.to_le_bytes()) {
            *o = i32::from(b) - 32;
        }
    }
    out
}

/// `Σ_j mins[j]·bsums[j]` over 16 sub-blocks of 16.
#[inline]
#[target_feature(enable = "neon")]
fn mins16_dot_bsums(mins: uint8x16_t, bsums: &[i16; 16]) -> i32 {
    // SAFETY: 16 readable i16; NEON is part of every aarch64 target.
    let (b0, b1) = unsafe { (vld1q_s16(bsums.as_ptr()), vld1q_s16(bsums.as_ptr().add(8))) };
    let m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins)));
    let m1 = vreinterpretq_s16_u16(vmovl_high_u8(mins));
    let prod = vmull_s16(vget_low_s16(b0), vget_low_s16(m0));
    let prod = vmlal_high_s16(prod, b0, m0);
    let prod = vmlal_s16(prod, vget_low_s16(b1), vget_low_s16(m1));
    vaddvq_s32(vmlal_high_s16(prod, b1, m1))
}

/// `Σ_j mins[j]·(bsums[2j] + bsums[2j + 1])` over 8 sub-blocks of 32.
#[inline]
#[target_feature(enable = "neon")]
fn mins8_dot_bsums(mins: &[u8; 8], bsums: &[i16; 16]) -> i32 {
    // SAFETY: 16 readable i16 and 8 readable bytes; NEON is part of every
    // aarch64 target.
    let (b0, b1, m) = unsafe {
        (
            vld1q_s16(bsums.as_ptr()),
            vld1q_s16(bsums.as_ptr().add(8)),
            vld1_u8(mins.as_ptr()),
        )
    };
    let per_sub = vpaddq_s16(b0, b1);
    let m = vreinterpretq_s16_u16(vmovl_u8(m));
    let prod = vmull_s16(vget_low_s16(per_sub), vget_low_s16(m));
    vaddvq_s32(vmlal_high_s16(prod, per_sub, m))
}

// ---- activations ----

impl ActCodes for BlockQ8_0 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        ld_i8(&self.qs, 16 * i)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
}

impl ActCodes for BlockQ8_1 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        ld_i8(&self.qs, 16 * i)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
}

impl ActCodes for BlockQ8K {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        ld_i8(&self.qs, 16 * i)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d(&self) -> f32 {
        self.d
    }
}

// ---- 32-weight blocks: two vectors, one float scale ----

/// The views of a 32-weight block with one scale and no integer scales.
macro_rules! one_scale {
    () => {
        const VECS: usize = 2;
        const VECS_PER_SCALE: usize = 2;
        #[inline]
        #[target_feature(enable = "neon")]
        unsafe fn scales(&self) -> [i32; 16] {
            [1; 16]
        }
        #[inline]
        #[target_feature(enable = "neon")]
        unsafe fn d(&self) -> f32 {
            f16_to_f32(self.d)
        }
    };
}

impl WeightCodes for BlockQ4_0 {
    one_scale!();
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        signed(nibbles(ld_u8(&self.qs, 0), i == 1), 8)
    }
    unsafe fn min_term(&self, _: &BlockQ8_0) -> f32 {
        0.0
    }
}

impl WeightCodes for BlockQ4_1 {
    one_scale!();
    const MIN: bool = true;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        signed(nibbles(ld_u8(&self.qs, 0), i == 1), 0)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn min_term(&self, a: &BlockQ8_1) -> f32 {
        f16_to_f32(self.m) * f16_to_f32(a.s)
    }
}

impl WeightCodes for BlockQ5_0 {
    one_scale!();
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        let low = nibbles(ld_u8(&self.qs, 0), i == 1);
        signed(vorrq_u8(low, fifth_bits(&self.qh, i)), 16)
    }
    unsafe fn min_term(&self, _: &BlockQ8_0) -> f32 {
        0.0
    }
}

impl WeightCodes for BlockQ5_1 {
    one_scale!();
    const MIN: bool = true;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        let low = nibbles(ld_u8(&self.qs, 0), i == 1);
        signed(vorrq_u8(low, fifth_bits(&self.qh, i)), 0)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn min_term(&self, a: &BlockQ8_1) -> f32 {
        f16_to_f32(self.m) * f16_to_f32(a.s)
    }
}

impl WeightCodes for BlockQ8_0 {
    one_scale!();
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        ld_i8(&self.qs, 16 * i)
    }
    unsafe fn min_term(&self, _: &BlockQ8_0) -> f32 {
        0.0
    }
}

impl WeightCodes for BlockIQ4NL {
    one_scale!();
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        iq4_levels(nibbles(ld_u8(&self.qs, 0), i == 1))
    }
    unsafe fn min_term(&self, _: &BlockQ8_0) -> f32 {
        0.0
    }
}

// ---- 256-weight super-blocks: sixteen vectors, integer sub-block scales ----

/// Q2_K: element `128n + 32k + l` is bits `2k..` of `qs[32n + l]`, so
/// vector `8n + 2k + h` is bits `2k..` of `qs[32n + 16h ..]`; one 4-bit
/// scale and min per vector.
impl WeightCodes for BlockQ2K {
    const VECS: usize = 16;
    const VECS_PER_SCALE: usize = 1;
    const MIN: bool = true;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        let (n, k, h) = (i / 8, (i % 8) / 2, i % 2);
        let q = shr_even(ld_u8(&self.qs, 32 * n + 16 * h), 2 * k);
        vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(3)))
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn scales(&self) -> [i32; 16] {
        std::array::from_fn(|j| i32::from(self.scales[j] & 0x0F))
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn min_term(&self, a: &BlockQ8K) -> f32 {
        let mins = vshrq_n_u8::<4>(ld_u8(&self.scales, 0));
        -(a.d * f16_to_f32(self.dmin)) * mins16_dot_bsums(mins, &a.bsums) as f32
    }
}

/// Q3_K: the Q2_K layout for the low two bits; the third is bit `4n + k`
/// of `hmask[16h + l]`, and a clear bit means `-4`.
impl WeightCodes for BlockQ3K {
    const VECS: usize = 16;
    const VECS_PER_SCALE: usize = 1;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        let (n, k, h) = (i / 8, (i % 8) / 2, i % 2);
        let low = vandq_u8(
            shr_even(ld_u8(&self.qs, 32 * n + 16 * h), 2 * k),
            vdupq_n_u8(3),
        );
        let high = where_bit(ld_u8(&self.hmask, 16 * h), 4 * n + k, 4);
        signed(vorrq_u8(low, high), 4)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn scales(&self) -> [i32; 16] {
        q3_k_scales(&self.scales)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    unsafe fn min_term(&self, _: &BlockQ8K) -> f32 {
        0.0
    }
}

/// Q4_K: 64-weight chunk `c` is the low then the high nibbles of
/// `qs[32c .. 32c + 32]`; one 6-bit scale and min per 32 weights.
impl WeightCodes for BlockQ4K {
    const VECS: usize = 16;
    const VECS_PER_SCALE: usize = 2;
    const MIN: bool = true;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        let (c, r) = (i / 4, i % 4);
        let q = nibbles(ld_u8(&self.qs, 32 * c + 16 * (r % 2)), r >= 2);
        vreinterpretq_s8_u8(q)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn scales(&self) -> [i32; 16] {
        let (scales, _) = unpack_scales_mins(&self.scales);
        std::array::from_fn(|j| scales.get(j).map_or(0, |&s| i32::from(s)))
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn min_term(&self, a: &BlockQ8K) -> f32 {
        let (_, mins) = unpack_scales_mins(&self.scales);
        -(a.d * f16_to_f32(self.dmin)) * mins8_dot_bsums(&mins, &a.bsums) as f32
    }
}

/// Q5_K: Q4_K plus a fifth bit, bit `j` of `qh[l]` for weight `l` of
/// 32-weight sub-block `j`.
impl WeightCodes for BlockQ5K {
    const VECS: usize = 16;
    const VECS_PER_SCALE: usize = 2;
    const MIN: bool = true;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        let (c, r) = (i / 4, i % 4);
        let low = nibbles(ld_u8(&self.qs, 32 * c + 16 * (r % 2)), r >= 2);
        let high = where_bit(ld_u8(&self.qh, 16 * (r % 2)), i / 2, 0x10);
        vreinterpretq_s8_u8(vorrq_u8(low, high))
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn scales(&self) -> [i32; 16] {
        let (scales, _) = unpack_scales_mins(&self.scales);
        std::array::from_fn(|j| scales.get(j).map_or(0, |&s| i32::from(s)))
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn min_term(&self, a: &BlockQ8K) -> f32 {
        let (_, mins) = unpack_scales_mins(&self.scales);
        -(a.d * f16_to_f32(self.dmin)) * mins8_dot_bsums(&mins, &a.bsums) as f32
    }
}

/// Q6_K: per 128-weight half `n`, vector `8n + k` takes the low (k < 4) or
/// high nibbles of `ql[64n + 16·(k % 4) ..]` and bits `2·(k / 2)..` of
/// `qh[32n + 16·(k % 2) ..]`, around 32; one i8 scale per vector.
impl WeightCodes for BlockQ6K {
    const VECS: usize = 16;
    const VECS_PER_SCALE: usize = 1;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        let (n, k) = (i / 8, i % 8);
        let low = nibbles(ld_u8(&self.ql, 64 * n + 16 * (k % 4)), k >= 4);
        let high = shr_even(ld_u8(&self.qh, 32 * n + 16 * (k % 2)), 2 * (k / 2));
        let high = vshlq_n_u8::<4>(vandq_u8(high, vdupq_n_u8(3)));
        signed(vorrq_u8(low, high), 32)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn scales(&self) -> [i32; 16] {
        self.scales.map(i32::from)
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    unsafe fn min_term(&self, _: &BlockQ8K) -> f32 {
        0.0
    }
}

/// IQ4_XS: 32-weight sub-block `j` is laid out as an IQ4_NL block in
/// `qs[16j ..]`, with a signed six-bit scale.
impl WeightCodes for BlockIQ4XS {
    const VECS: usize = 16;
    const VECS_PER_SCALE: usize = 2;
    const MIN: bool = false;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn codes16(&self, i: usize) -> int8x16_t {
        iq4_levels(nibbles(ld_u8(&self.qs, 16 * (i / 2)), i % 2 == 1))
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn scales(&self) -> [i32; 16] {
        std::array::from_fn(|j| if j < 8 { iq4_xs::scale(self, j) } else { 0 })
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    unsafe fn min_term(&self, _: &BlockQ8K) -> f32 {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::quant::q3_k;

    #[test]
    fn scale_unpacking_matches_ggml() {
        let mut r = rng(10);
        for _ in 0..50 {
            let q: [u8; K_SCALE_SIZE] = std::array::from_fn(|_| rand::Rng::gen(&mut r));
            let (scales, mins) = unpack_scales_mins(&q);
            for j in 0..8 {
                assert_eq!((scales[j], mins[j]), scale_min_k4(j, &q), "sub-block {j}");
            }
            let s3 = q3_k_scales(&q);
            for (j, &s) in s3.iter().enumerate() {
                assert_eq!(s, i32::from(q3_k::scale(&q, j)), "q3_k sub-block {j}");
            }
        }
    }

    /// Each vector of every type's codes against the element-by-element f64
    /// dequantization of test_support (with `d = 1` and no minimum where the
    /// type has them, so the codes times the integer scales remain).
    #[test]
    fn codes_and_scales_match_dequantization() {
        fn check<W: WeightCodes>(what: &str, blocks: &[W], deq: impl Fn(&W) -> Vec<f64>) {
            for (n, b) in blocks.iter().enumerate() {
                let want = deq(b);
                // SAFETY: NEON is part of every aarch64 target (also below).
                let (scales, d) = unsafe { (b.scales(), f64::from(b.d())) };
                for i in 0..W::VECS {
                    let mut lanes = [0i8; 16];
                    // SAFETY: 16 writable bytes; NEON is part of every aarch64 target.
                    unsafe { vst1q_s8(lanes.as_mut_ptr(), b.codes16(i)) };
                    let scale = f64::from(scales[i / W::VECS_PER_SCALE]);
                    for (l, &c) in lanes.iter().enumerate() {
                        let e = 16 * i + l;
                        let got = d * scale * f64::from(c);
                        assert!(
                            (got - want[e]).abs() <= 1e-9 * want[e].abs().max(1.0),
                            "{what} block {n} element {e}: {got} vs {}",
                            want[e]
                        );
                    }
                }
            }
        }
        let mut r = rng(15);
        let no_min = |mut b: BlockQ5_1| {
            b.m = half::f16::ZERO;
            b
        };
        check("q5_0", &q5_0_blocks(&mut r, 9), |b| deq_q5_0(b).to_vec());
        let q5_1: Vec<_> = q5_1_blocks(&mut r, 9).into_iter().map(no_min).collect();
        check("q5_1", &q5_1, |b| deq_q5_1(b).to_vec());
        check("iq4_nl", &iq4_nl_blocks(&mut r, 9), |b| {
            deq_iq4_nl(b).to_vec()
        });
        check("q3_k", &q3k_blocks(&mut r, 5), |b| deq_q3k(b).to_vec());
        check("q6_k", &q6k_blocks(&mut r, 5), |b| deq_q6k(b).to_vec());
        check("iq4_xs", &iq4xs_blocks(&mut r, 5), |b| {
            deq_iq4xs(b).to_vec()
        });
        let mut q2: Vec<_> = q2k_blocks(&mut r, 5);
        q2.iter_mut().for_each(|b| b.dmin = half::f16::ZERO);
        check("q2_k", &q2, |b| deq_q2k(b).to_vec());
        let mut q4: Vec<_> = q4k_blocks(&mut r, 5);
        q4.iter_mut().for_each(|b| b.dmin = half::f16::ZERO);
        check("q4_k", &q4, |b| deq_q4k(b).to_vec());
        let mut q5: Vec<_> = q5k_blocks(&mut r, 5);
        q5.iter_mut().for_each(|b| b.dmin = half::f16::ZERO);
        check("q5_k", &q5, |b| deq_q5k(b).to_vec());
    }
}
