//! AVX2 gemm over the x16 panels of `quant::x16` (weights repacked at
//! load time): Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K.
//!
//! A 16-row panel is two groups of eight rows for a 256-bit register: the
//! first and second 32 bytes of each 64-byte line hold the same 4 code
//! bytes of rows 0..8 and 8..16, one row per 32-bit lane, and the first
//! and second 16 bytes of an f16 plane their scales. So the lane kernel of
//! [`super::avx2_lanes`] runs on plain loads from the record, where over
//! the file's layout decode gathers eight rows block by block and sums each
//! row's dot horizontally, and prefill transposes every row group into a
//! scratch panel once per column chunk.
//!
//! **Same bits as the file-layout gemm.** A half record gives each row the
//! very codes, scales and minimums [`super::avx2_gemm::Avx2Gemm::unpack`]
//! gives it, the integer dots are exact, and the float side is that
//! kernel's [`scale_add`], so a matrix multiplies to the same bits packed
//! or not, batched or not.
//!
//! Soundness: the `unsafe fn`s need AVX2, FMA and F16C, which
//! `super::table` checked before handing out the entries that reach
//! [`gemm`]; `gemm` checks the packed shape (`x16::shape_ok`) before the
//! kernels index without bounds checks.

use super::avx2_gemm::{GemmAct, MAX_RUNS, MAX_TERMS};
use super::avx2_lanes::{
    col_of, scale_add, store, word_products, Col, Lanes, COL_CHUNK, LANES, NC,
};
use crate::dispatch::VecDotFn;
use crate::quant::blocks::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ8_0};
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::q6_k::{x16_step, BlockQ6K};
use crate::quant::x16::{self, X16Block, PANEL_ROWS};
use core::arch::x86_64::*;

/// Bytes ahead of the record in use that decode prefetches: the hardware
/// prefetcher stops at page boundaries, and a decoded token streams every
/// matrix from memory once. 16 KiB: on the 1B Q4_K_M sweep model (read
/// from DRAM) decode ran 11.2-12.5 tok/s at 1 thread and 19.5-23.0 at 2
/// prefetching three records ahead (7-10 KB, tuned on an 18432x1536 matrix
/// that turned out to sit in the 32 MiB L3), 11.8-14.3 and 21.7-24.3 at 16
/// KiB (24 KiB alike, 8 KiB and 64 KiB or an L2 hint slower; alternated
/// `sotto bench -p 0 -n 32` runs, 4 December); Q4_0 is indifferent.
const PREFETCH: usize = 16 * 1024;

/// A block type whose x16 record the AVX2 lane kernel reads directly.
pub(super) trait X16Lanes: Lanes + X16Block {
    /// What the runs of a half record share (the k-quants' sub-block
    /// scales, unpacked once per block).
    type Meta: Copy;

    /// The shared part of half `h` of the record at `rec`.
    ///
    /// # Safety
    /// AVX2; `rec` points at a whole record of `Self`; `h < 2`.
    unsafe fn meta(rec: *const u8, h: usize) -> Self::Meta;

    /// Code word `i` (elements `4i..4i + 4` of run `v`) of the eight rows
    /// of half `h`, one row per 32-bit lane, as `unpack` gives them
    /// (unsigned, or signed for Q8_0).
    ///
    /// # Safety
    /// As [`X16Lanes::meta`]; `v < RUNS`, `i < 8`.
    unsafe fn word(rec: *const u8, h: usize, v: usize, i: usize) -> __m256i;

    /// The `i16` multipliers of half `s` of run `v` (`SCALED` types): each
    /// row's sub-block scale in both `i16` of its lane.
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_scale(_: &Self::Meta, _: usize, _: usize) -> __m256i {
        _mm256_set1_epi16(1)
    }

    /// Each row's `sum_s scale[s] * bsum[s]` (`SUB_OFFSET` types), from
    /// the column's [`Col::sum_pairs`].
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sub_offset(_: &Self::Meta, _: &Col) -> __m256i {
        _mm256_setzero_si256()
    }

    /// The column's 16 sub-block sums (`SUB_OFFSET` types) as `i16` pairs
    /// in the order [`X16Lanes::sub_offset`] multiplies them, once per
    /// column block rather than once per half record.
    fn pair_sums(_: &[i16; 16]) -> [i32; 8] {
        [0; 8]
    }

    /// Half `h` of one record against decode's one column: [`half_block`]
    /// unless the type has an order of its own for one column.
    ///
    /// # Safety
    /// As [`half_block`]'s.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half_gemv(rec: *const u8, h: usize, col: &Col, acc: &mut __m256) {
        // SAFETY: the caller's.
        unsafe { half_block::<Self, 1>(rec, h, [col], core::array::from_mut(acc)) }
    }

    /// The half's row scales and its correction coefficients (Q4_1's
    /// minimums in the plane after the scales), one row per lane.
    ///
    /// # Safety
    /// As [`X16Lanes::meta`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(rec: *const u8, h: usize) -> (__m256, [__m256; MAX_TERMS]) {
        let mut m = [_mm256_setzero_ps(); MAX_TERMS];
        // SAFETY: the record starts with PLANES planes of 16 f16, eight per half.
        let d = unsafe {
            for (j, mj) in m.iter_mut().enumerate().take(Self::TERMS) {
                *mj = _mm256_cvtph_ps(_mm_loadu_si128(rec.add(32 * (1 + j) + 16 * h).cast()));
            }
            _mm256_cvtph_ps(_mm_loadu_si128(rec.add(16 * h).cast()))
        };
        (d, m)
    }
}

/// Nibble word `i` of a Q4 record whose code lines start at `lines`: line
/// `i % 4` holds bytes `4 (i % 4)..` of each row, elements `4i..` in its low
/// nibbles for `i < 4` and its high nibbles for `i >= 4` (element `j` of a
/// block is the low nibble of byte `j`, element `16 + j` the high one).
///
/// # Safety
/// AVX2; `lines` points at 4 lines of 64 bytes; `h < 2`, `i < 8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibble_word(lines: *const u8, h: usize, i: usize) -> __m256i {
    // SAFETY: line i % 4's half h is 32 readable bytes.
    let q = unsafe { half_line(lines, h, i % 4) };
    nibbles(q, i >= 4)
}

/// Half `h` of line `l` of the lines from `lines`: that 4-byte word of
/// rows `8h..8h + 8`.
///
/// # Safety
/// `lines` points at more than `l` lines of 64 bytes; `h < 2`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_line(lines: *const u8, h: usize, l: usize) -> __m256i {
    // SAFETY: the caller's line; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(lines.add(64 * l + 32 * h).cast()) }
}

/// The low (or, with `high`, the high) nibbles of every byte of `q`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(q: __m256i, high: bool) -> __m256i {
    let m4 = _mm256_set1_epi8(0x0F);
    if high {
        _mm256_and_si256(_mm256_srli_epi32::<4>(q), m4)
    } else {
        _mm256_and_si256(q, m4)
    }
}

/// Byte `b` of every 32-bit lane of `v` into both `i16` of that lane,
/// zero-extended, or sign-extended with `signed`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn byte_pairs(v: __m256i, b: usize, signed: bool) -> __m256i {
    let b = b as i8;
    if signed {
        let ctrl = _mm256_add_epi8(_mm256_set1_epi8(b), lane_base());
        _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(v, ctrl))
    } else {
        let ctrl = _mm256_add_epi8(
            _mm256_set1_epi32(i32::from_le_bytes([b as u8, 0x80, b as u8, 0x80])),
            lane_base(),
        );
        _mm256_shuffle_epi8(v, ctrl)
    }
}

impl X16Lanes for BlockQ4_0 {
    type Meta = ();
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn meta(_: *const u8, _: usize) {}
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn word(rec: *const u8, h: usize, _: usize, i: usize) -> __m256i {
        // SAFETY: the d plane (32 bytes) precedes the 4 code lines.
        unsafe { nibble_word(rec.add(32), h, i) }
    }
}

impl X16Lanes for BlockQ4_1 {
    type Meta = ();
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn meta(_: *const u8, _: usize) {}
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn word(rec: *const u8, h: usize, _: usize, i: usize) -> __m256i {
        // SAFETY: the d and m planes (64 bytes) precede the 4 code lines.
        unsafe { nibble_word(rec.add(64), h, i) }
    }
}

impl X16Lanes for BlockQ5_0 {
    type Meta = ();
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn meta(_: *const u8, _: usize) {}
    /// The Q4_0 nibbles with bit 4 from bit `4i + b` of the row's `qh`
    /// (the line after the d plane) in byte `b` of the word.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn word(rec: *const u8, h: usize, _: usize, i: usize) -> __m256i {
        // SAFETY: the d plane (32 bytes), the qh line (64), then 4 code lines.
        let (qh, low) = unsafe { (half_line(rec.add(32), h, 0), nibble_word(rec.add(96), h, i)) };
        // byte i / 2 of each lane's qh into its four bytes, each testing
        // its own bit (4i + b) % 8
        let spread = _mm256_shuffle_epi8(
            qh,
            _mm256_add_epi8(lane_base(), _mm256_set1_epi8((i / 2) as i8)),
        );
        let bit = _mm256_set1_epi32(if i.is_multiple_of(2) {
            0x0804_0201
        } else {
            0x8040_2010u32 as i32
        });
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_or_si256(low, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }
}

impl X16Lanes for BlockQ8_0 {
    type Meta = ();
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn meta(_: *const u8, _: usize) {}
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn word(rec: *const u8, h: usize, _: usize, i: usize) -> __m256i {
        // SAFETY: the d plane (32 bytes) precedes the 8 code lines.
        unsafe { half_line(rec.add(32), h, i) }
    }
}

/// Q4_K: planes `d` and `dmin`, 3 lines of the packed 6-bit scales and
/// mins (`scale_min_k4`'s 12 bytes), 32 `qs` lines. Run `v` (sub-block
/// `v`) is the low (even `v`) or high nibbles of `qs[32 (v / 2)..]`, so its
/// word `i` is line `8 (v / 2) + i`. `Meta`: the sub-blocks' scales,
/// bytes `j` and `4 + j` of each lane for `j < 4`.
impl X16Lanes for BlockQ4K {
    type Meta = [__m256i; 2];
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn meta(rec: *const u8, h: usize) -> [__m256i; 2] {
        // SAFETY: the 3 scale lines follow the two planes (64 bytes).
        let [l0, _, l2] = unsafe { [0, 1, 2].map(|l| half_line(rec.add(64), h, l)) };
        let m6 = _mm256_set1_epi8(0x3F);
        // scale j < 4: q[j] & 63; scale 4 + j: q[8 + j] & 15 | (q[j] >> 6) << 4
        [
            _mm256_and_si256(l0, m6),
            _mm256_or_si256(
                _mm256_and_si256(l2, _mm256_set1_epi8(0x0F)),
                _mm256_and_si256(_mm256_srli_epi16::<2>(l0), _mm256_set1_epi8(0x30)),
            ),
        ]
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn word(rec: *const u8, h: usize, v: usize, i: usize) -> __m256i {
        // SAFETY: the 32 qs lines start at byte 256 of the record.
        let q = unsafe { half_line(rec.add(256), h, 8 * (v / 2) + i) };
        nibbles(q, v % 2 == 1)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_scale(m: &[__m256i; 2], v: usize, _: usize) -> __m256i {
        byte_pairs(m[v / 4], v % 4, false)
    }
    /// `d`, and the eight mins as `unpack` gives them: `-dmin * min`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(rec: *const u8, h: usize) -> (__m256, [__m256; MAX_TERMS]) {
        // SAFETY: the d and dmin planes, then the 3 scale lines.
        let (d, dmin, [_, l1, l2]) = unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(rec.add(16 * h).cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(rec.add(32 + 16 * h).cast())),
                [0, 1, 2].map(|l| half_line(rec.add(64), h, l)),
            )
        };
        // min j < 4: q[4 + j] & 63; min 4 + j: q[8 + j] >> 4 | (q[4 + j] >> 6) << 4
        let lo = _mm256_and_si256(l1, _mm256_set1_epi8(0x3F));
        let hi = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(l2), _mm256_set1_epi8(0x0F)),
            _mm256_and_si256(_mm256_srli_epi16::<2>(l1), _mm256_set1_epi8(0x30)),
        );
        let neg = _mm256_sub_ps(_mm256_setzero_ps(), dmin);
        let m = core::array::from_fn(|j| {
            let bytes = if j < 4 { lo } else { hi };
            // byte j % 4 of each lane, zero-extended to i32
            let ctrl = _mm256_add_epi8(
                _mm256_set1_epi32(i32::from_le_bytes([(j % 4) as u8, 0x80, 0x80, 0x80])),
                lane_base(),
            );
            _mm256_mul_ps(neg, _mm256_cvtepi32_ps(_mm256_shuffle_epi8(bytes, ctrl)))
        });
        (d, m)
    }
}

/// Q6_K: plane `d`, 4 lines of the 16 signed sub-block scales, then 16
/// code steps of a `qh` line and two `ql` lines ([`x16_step`]). Run
/// `v = 4n + k` (elements `128n + 32k..`) takes the low (`k < 2`) or high
/// nibbles of `ql[64n + 32 (k % 2)..]` and bits `2k..2k + 2` of
/// `qh[32n..]`: its word `i` is `ql` line `16n + 8 (k % 2) + i` (line
/// `1 + k % 2` of step `8n + i`) and `qh` line `8n + i` (the step's line
/// 0). `Meta`: the 4 scale lines.
impl X16Lanes for BlockQ6K {
    type Meta = [__m256i; 4];
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn meta(rec: *const u8, h: usize) -> [__m256i; 4] {
        // SAFETY: the 4 scale lines follow the d plane (32 bytes).
        unsafe { [0, 1, 2, 3].map(|l| half_line(rec.add(32), h, l)) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn word(rec: *const u8, h: usize, v: usize, i: usize) -> __m256i {
        let (n, k) = (v / 4, v % 4);
        // SAFETY: the record's qh and ql lines.
        let (ql, qh) = unsafe {
            let step = rec.add(x16_step(n, i));
            (half_line(step, h, 1 + k % 2), half_line(step, h, 0))
        };
        q6k_word(ql, qh, k)
    }
    /// Scale `2v + s` (the run's first or second 16 codes), sign-extended.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_scale(m: &[__m256i; 4], v: usize, s: usize) -> __m256i {
        let j = 2 * v + s;
        byte_pairs(m[j / 4], j % 4, true)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sub_offset(m: &[__m256i; 4], col: &Col) -> __m256i {
        let mut off = _mm256_setzero_si256();
        for (l, &line) in m.iter().enumerate() {
            // scales 4l, 4l + 2 and 4l + 1, 4l + 3 as i16 pairs
            let even = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(line));
            let odd = _mm256_srai_epi16::<8>(line);
            let [e, o] = [0, 1].map(|j| _mm256_set1_epi32(col.sum_pairs[2 * l + j]));
            off = _mm256_add_epi32(off, _mm256_madd_epi16(even, e));
            off = _mm256_add_epi32(off, _mm256_madd_epi16(odd, o));
        }
        off
    }
    /// Line `l`'s pairs: sums `(4l, 4l + 2)`, then `(4l + 1, 4l + 3)`.
    fn pair_sums(s: &[i16; 16]) -> [i32; 8] {
        let pair = |a: i16, b: i16| i32::from(a as u16) | i32::from(b) << 16;
        core::array::from_fn(|j| {
            let (l, odd) = (j / 2, j % 2);
            pair(s[4 * l + odd], s[4 * l + odd + 2])
        })
    }
    /// Decode's order: per code word `i` of each 128-element half `n` of
    /// the block, the `qh` line and its two `ql` lines are read once and
    /// give that word of all four runs `4n..4n + 4`, each run's products
    /// scaled per word pair. Run by run ([`half_block`]), each `qh` line
    /// served four runs and each `ql` line two, and with one column to
    /// amortize them LLVM kept the lines on the stack between runs. The
    /// integer sums are exact, so the outputs are [`half_block`]'s bits.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half_gemv(rec: *const u8, h: usize, col: &Col, acc: &mut __m256) {
        // SAFETY: a whole record, h < 2.
        let meta = unsafe { Self::meta(rec, h) };
        let mut isum = _mm256_setzero_si256();
        // the quarters' (n, s) as constants, so their loops unroll and
        // their scale shuffles and offsets fold (as `run`'s)
        // SAFETY: as this function's.
        unsafe {
            q6k_quarter::<0, 0>(rec, h, &meta, col, &mut isum);
            q6k_quarter::<0, 1>(rec, h, &meta, col, &mut isum);
            q6k_quarter::<1, 0>(rec, h, &meta, col, &mut isum);
            q6k_quarter::<1, 1>(rec, h, &meta, col, &mut isum);
        }
        // SAFETY: as this function's.
        unsafe { half_finish::<Self, 1>(rec, h, &meta, [isum], [col], core::array::from_mut(acc)) };
    }
}

/// Run `4n + k`'s code word from its `ql` line (low nibbles for `k < 2`,
/// high ones above) and its `qh` line (bits `2k..2k + 2` of each byte,
/// moved to bits 4..6).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_word(ql: __m256i, qh: __m256i, k: usize) -> __m256i {
    let (lo, hi) = match k {
        0 => (ql, _mm256_slli_epi16::<4>(qh)),
        1 => (ql, _mm256_slli_epi16::<2>(qh)),
        2 => (_mm256_srli_epi16::<4>(ql), qh),
        _ => (_mm256_srli_epi16::<4>(ql), _mm256_srli_epi16::<2>(qh)),
    };
    _mm256_or_si256(
        _mm256_and_si256(lo, _mm256_set1_epi8(0x0F)),
        _mm256_and_si256(hi, _mm256_set1_epi8(0x30)),
    )
}

/// Sub-block half `S` (words `4S..4S + 4`) of runs `4N..4N + 4` of half
/// `h` of a Q6_K record against one column, added to the rows' `isum`
/// ([`BlockQ6K`]'s `half_gemv`).
///
/// # Safety
/// AVX2/FMA/F16C; `rec` points at a whole record, `h < 2`, `meta` is the
/// half's; the column's codes are its block's 256.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_quarter<const N: usize, const S: usize>(
    rec: *const u8,
    h: usize,
    meta: &[__m256i; 4],
    col: &Col,
    isum: &mut __m256i,
) {
    // SAFETY: the features are enabled here.
    let sc: [__m256i; 4] =
        core::array::from_fn(|k| unsafe { BlockQ6K::run_scale(meta, 4 * N + k, S) });
    for g in 0..2 {
        let mut pairs = [_mm256_setzero_si256(); 4];
        for i in 4 * S + 2 * g..4 * S + 2 * g + 2 {
            // SAFETY: the record's qh line and the two ql lines of word i.
            let (qh, qa, qb) = unsafe {
                let step = rec.add(x16_step(N, i));
                (
                    half_line(step, h, 0),
                    half_line(step, h, 1),
                    half_line(step, h, 2),
                )
            };
            let words = [qa, qb, qa, qb];
            let words: [__m256i; 4] = core::array::from_fn(|k| q6k_word(words[k], qh, k));
            for (k, (pc, w)) in pairs.iter_mut().zip(words).enumerate() {
                // SAFETY: word i of run 4N + k of the column's codes.
                let y = unsafe {
                    col.codes
                        .add(32 * (4 * N + k) + 4 * i)
                        .cast::<i32>()
                        .read_unaligned()
                };
                *pc = _mm256_add_epi16(*pc, _mm256_maddubs_epi16(w, _mm256_set1_epi32(y)));
            }
        }
        for (pc, sk) in pairs.into_iter().zip(sc) {
            *isum = _mm256_add_epi32(*isum, _mm256_madd_epi16(pc, sk));
        }
    }
}

/// Byte offsets `0, 4, 8, 12` of the 32-bit lanes of each 128-bit half, in
/// every byte of the lane: added to a `vpshufb` control of in-lane byte
/// indexes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_base() -> __m256i {
    _mm256_setr_epi8(
        0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12,
        12, 12, 12,
    )
}

/// `out[c][r] = w[r] · a[c]` over packed weights (see
/// `dispatch::X16GemmFn`), decode included; through `dot` on the recovered
/// rows for a shape the kernel does not take (which `ops::matmul` never
/// passes).
pub(super) fn gemm<W>(
    dot: VecDotFn<W, W::Act>,
    p: &[u8],
    rows: usize,
    a: &[W::Act],
    bpr: usize,
    out: &mut [&mut [f32]],
) where
    W: X16Lanes,
    W::Act: GemmAct,
{
    if !x16::shape_ok::<W, _>(p, rows, a, bpr, out)
        || W::RUNS > MAX_RUNS
        || W::TERMS > MAX_TERMS
        || !LANES.is_multiple_of(W::GROUP * W::HALVES)
    {
        return x16::gemm_ref::<W, _>(dot, p, rows, a, bpr, out);
    }
    let cols: Vec<Col> = a
        .iter()
        .map(|b| {
            let mut c = col_of::<W>(b);
            if W::SUB_OFFSET {
                c.sum_pairs = W::pair_sums(W::act_sums(b));
            }
            c
        })
        .collect();
    if a.len() == bpr {
        // SAFETY: only reached through tables built after AVX2/FMA/F16C
        // were detected; `p` holds the panels of rows x bpr blocks, `cols`
        // one column and `out[0]` a float per row (x16::shape_ok).
        return unsafe { gemv::<W>(p, rows, &cols, bpr, out[0]) };
    }
    // SAFETY: as above, `cols` holding a.len() / bpr columns.
    unsafe { gemm_k::<W>(p, rows, &cols, bpr, out) }
}

/// Half `h` of one record against `N` columns: the eight rows' exact
/// integer dots, summed in `i16` over `GROUP` words and scaled per
/// sub-block as the file-layout kernel does, then [`scale_add`] per column.
///
/// # Safety
/// AVX2/FMA/F16C; `rec` points at a whole record; each column's `codes`
/// point at its block's `32 * RUNS` codes (and `sums` at its 16 sums for
/// `SUB_OFFSET` types).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_block<W: X16Lanes, const N: usize>(
    rec: *const u8,
    h: usize,
    cols: [&Col; N],
    acc: &mut [__m256; N],
) {
    // SAFETY: a whole record, h < 2.
    let meta = unsafe { W::meta(rec, h) };
    let mut isum = [_mm256_setzero_si256(); N];
    // One call per run with the run's index a constant, so each run's word
    // offsets, nibble halves, shifts and scale shuffles fold into the code:
    // as a loop over `v` (which LLVM kept rolled) they were branches and
    // jump tables in the hottest loop of a k-quant decode.
    // SAFETY: as this function's, passed on.
    unsafe {
        run::<W, N, 0>(rec, h, &meta, &cols, &mut isum);
        run::<W, N, 1>(rec, h, &meta, &cols, &mut isum);
        run::<W, N, 2>(rec, h, &meta, &cols, &mut isum);
        run::<W, N, 3>(rec, h, &meta, &cols, &mut isum);
        run::<W, N, 4>(rec, h, &meta, &cols, &mut isum);
        run::<W, N, 5>(rec, h, &meta, &cols, &mut isum);
        run::<W, N, 6>(rec, h, &meta, &cols, &mut isum);
        run::<W, N, 7>(rec, h, &meta, &cols, &mut isum);
    }
    // SAFETY: as this function's.
    unsafe { half_finish::<W, N>(rec, h, &meta, isum, cols, acc) };
}

/// The float side of half `h` of a record against `N` columns, the rows'
/// exact integer dots `isum` in hand: the sub-block offset off them
/// (`SUB_OFFSET` types), then [`scale_add`] per column.
///
/// # Safety
/// AVX2/FMA/F16C; `rec` points at a whole record, `h < 2`, `meta` is the
/// half's.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_finish<W: X16Lanes, const N: usize>(
    rec: *const u8,
    h: usize,
    meta: &W::Meta,
    mut isum: [__m256i; N],
    cols: [&Col; N],
    acc: &mut [__m256; N],
) {
    if W::SUB_OFFSET {
        for (s, col) in isum.iter_mut().zip(cols) {
            // SAFETY: the features are enabled here.
            let off = unsafe { W::sub_offset(meta, col) };
            *s = _mm256_sub_epi32(
                *s,
                _mm256_mullo_epi32(off, _mm256_set1_epi32(W::OFFSET.into())),
            );
        }
    }
    // SAFETY: a whole record, h < 2.
    let (d, m) = unsafe { W::scales(rec, h) };
    for ((a, s), col) in acc.iter_mut().zip(isum).zip(cols) {
        // SAFETY: the features are enabled here.
        unsafe { scale_add::<W>(s, d, &m[..W::TERMS], col, a) };
    }
}

/// Run `V` of half `h` of the record at `rec` against `N` columns, added to
/// the rows' integer sums `isum` (nothing for `V >= RUNS`; `RUNS` is at most
/// [`MAX_RUNS`], 8, which `gemm` checked).
///
/// # Safety
/// As [`half_block`]'s, `meta` being the half's.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<W: X16Lanes, const N: usize, const V: usize>(
    rec: *const u8,
    h: usize,
    meta: &W::Meta,
    cols: &[&Col; N],
    isum: &mut [__m256i; N],
) {
    if V >= W::RUNS {
        return;
    }
    for g in 0..LANES / W::GROUP {
        // the words of a group lie in one sub-block (GROUP * HALVES divides 8)
        // SAFETY: the features are enabled here.
        let sc = unsafe { W::run_scale(meta, V, g * W::GROUP * W::HALVES / LANES) };
        let mut pairs = [_mm256_setzero_si256(); N];
        for i in g * W::GROUP..(g + 1) * W::GROUP {
            // SAFETY: V < RUNS, i < 8, a whole record.
            let xi = unsafe { W::word(rec, h, V, i) };
            // SAFETY: word i of run V of each column's codes.
            unsafe { word_products::<W, N>(xi, cols, V, i, &mut pairs) };
        }
        for (s, pc) in isum.iter_mut().zip(pairs) {
            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pc, sc));
        }
    }
}

/// Decode: each panel's records in order, both halves of a record against
/// the column, the bytes [`PREFETCH`] ahead requested.
///
/// # Safety
/// AVX2/FMA/F16C; `p` holds the panels of `rows` rows of `bpr` blocks,
/// `cols` one column of `bpr` blocks, `out` at least `rows` floats.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv<W: X16Lanes>(p: &[u8], rows: usize, cols: &[Col], bpr: usize, out: &mut [f32]) {
    for (pi, r0) in (0..rows).step_by(PANEL_ROWS).enumerate() {
        let nr = (rows - r0).min(PANEL_ROWS);
        // SAFETY: panel pi's bpr records lie in p (x16::shape_ok).
        let panel = unsafe { p.as_ptr().add(pi * bpr * W::RECORD) };
        let mut acc = [_mm256_setzero_ps(); 2];
        for (b, col) in cols.iter().enumerate().take(bpr) {
            // SAFETY: b < bpr: a record of the panel.
            let rec = unsafe { panel.add(b * W::RECORD) };
            let ahead = rec.wrapping_add(PREFETCH);
            for l in (0..W::RECORD).step_by(64) {
                // a prefetch never faults, past the end included
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l).cast());
            }
            let [a0, a1] = &mut acc;
            // SAFETY: a whole record; the column's block b.
            unsafe {
                W::half_gemv(rec, 0, col, a0);
                if nr > LANES {
                    W::half_gemv(rec, 1, col, a1);
                }
            }
        }
        // SAFETY: out holds rows r0..r0 + nr.
        unsafe {
            let o = out.as_mut_ptr().add(r0);
            store(acc[0], o, nr.min(LANES));
            if nr > LANES {
                store(acc[1], o.add(LANES), nr - LANES);
            }
        }
    }
}

/// Prefill: per chunk of [`COL_CHUNK`] columns, per panel half, the half's
/// records against the chunk's columns [`NC`] at a time (the half stays in
/// the first cache levels while its column groups pass).
///
/// # Safety
/// AVX2/FMA/F16C; `p` holds the panels of `rows` rows of `bpr` blocks,
/// `cols` `cols.len() / bpr` columns of `bpr` blocks, `out` at least
/// `rows` floats for each column.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_k<W: X16Lanes>(
    p: &[u8],
    rows: usize,
    cols: &[Col],
    bpr: usize,
    out: &mut [&mut [f32]],
) {
    let ncols = cols.len() / bpr;
    let o = out;
    for c0 in (0..ncols).step_by(COL_CHUNK) {
        let end = (c0 + COL_CHUNK).min(ncols);
        for (pi, p0) in (0..rows).step_by(PANEL_ROWS).enumerate() {
            // SAFETY: panel pi's bpr records lie in p.
            let panel = unsafe { p.as_ptr().add(pi * bpr * W::RECORD) };
            for h in 0..2 {
                let r0 = p0 + h * LANES;
                if r0 >= rows {
                    break;
                }
                let nr = (rows - r0).min(LANES);
                let mut c = c0;
                while c < end {
                    // NC at a time, the 1..3 left in one pass over the half
                    let n = (end - c).min(NC);
                    // SAFETY: the panel's bpr records; columns c..c + n
                    // below end <= ncols; rows r0..r0 + nr below rows.
                    unsafe {
                        match n {
                            1 => cols_group::<W, 1>(panel, h, cols, bpr, c, o, rows, r0, nr),
                            2 => cols_group::<W, 2>(panel, h, cols, bpr, c, o, rows, r0, nr),
                            3 => cols_group::<W, 3>(panel, h, cols, bpr, c, o, rows, r0, nr),
                            _ => cols_group::<W, NC>(panel, h, cols, bpr, c, o, rows, r0, nr),
                        }
                    }
                    c += n;
                }
            }
        }
    }
}

/// Rows `r0..r0 + nr` (half `h` of the panel at `panel`) against columns
/// `c..c + N`, into `o` (a slice of at least `rows` per column).
///
/// # Safety
/// AVX2/FMA/F16C; `panel` points at `bpr` whole records; columns `c..c +
/// N` exist in `cols` (of `bpr` blocks each) and in `o`, which holds
/// `rows` floats for each of them; rows `r0..r0 + nr` below `rows`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn cols_group<W: X16Lanes, const N: usize>(
    panel: *const u8,
    h: usize,
    cols: &[Col],
    bpr: usize,
    c: usize,
    o: &mut [&mut [f32]],
    rows: usize,
    r0: usize,
    nr: usize,
) {
    debug_assert!(r0 + nr <= rows);
    let mut acc = [_mm256_setzero_ps(); N];
    for b in 0..bpr {
        // SAFETY: column c + j's block b, inside cols.
        let at: [&Col; N] =
            core::array::from_fn(|j| unsafe { cols.get_unchecked((c + j) * bpr + b) });
        // SAFETY: record b of the panel.
        unsafe { half_block::<W, N>(panel.add(b * W::RECORD), h, at, &mut acc) };
    }
    for (j, &v) in acc.iter().enumerate() {
        // SAFETY: column c + j's rows r0..r0 + nr lie in o.
        unsafe { store(v, o.get_unchecked_mut(c + j).as_mut_ptr().add(r0), nr) };
    }
}

#[cfg(test)]
mod tests {
    use crate::dispatch::{gemm_by_dots, table_for, Isa};
    use crate::quant::test_data::random_row;
    use crate::quant::x16;
    use crate::quant::{with_weight_block, DType, QuantBlock, WeightBlock};
    use bytemuck::Zeroable;

    /// Packed or in the file's layout, one column or many, every output
    /// of the AVX2 tier has the same bits (the module's promise), over
    /// partial panels and halves, the column groups and their tails.
    #[test]
    fn packed_outputs_equal_the_file_layout_gemm_bit_for_bit() {
        let Ok(t) = table_for(Isa::Avx2) else {
            return;
        };
        fn check<W: WeightBlock>(t: &crate::dispatch::KernelTable) {
            let row = t.weight::<W>();
            let (Some(kernel), Some(gemm)) = (row.x16, row.gemm) else {
                return;
            };
            for (rows, cols, bpr) in [
                (1, 1, 1),
                (8, 7, 3),
                (9, 1, 7),
                (16, 36, 2),
                (40, 6, 18),
                (17, 35, 2),
                (32, 1, 4),
            ] {
                let n = bpr * W::ELEMS;
                let seed = (rows * 131 + cols * 7 + bpr) as u64;
                let (wf, xf) = (random_row(rows * n, seed), random_row(cols * n, seed + 1));
                let mut w = vec![W::zeroed(); rows * bpr];
                let mut a = vec![W::Act::zeroed(); cols * bpr];
                W::quantize_ref(&wf, &mut w);
                W::Act::quantize_ref(&xf, &mut a);
                let mut p = vec![0u8; x16::packed_bytes::<W>(rows, bpr).unwrap()];
                x16::pack(&w, bpr, &mut p);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let (mut packed, mut file) = (vec![f32::NAN; rows * cols], vec![0f32; rows * cols]);
                x16::run_into(kernel, &p, rows, &a, bpr, &mut packed);
                gemm(&w, &a, bpr, &mut file);
                let what = format!("{} {rows}x{cols}x{bpr}", W::DTYPE);
                assert_eq!(bits(&packed), bits(&file), "{what}");
                // and within the scalar dots' reach (not a shared mistake)
                let mut want = vec![0f32; rows * cols];
                gemm_by_dots(W::vec_dot_ref, &w, &a, bpr, &mut want);
                for (g, e) in packed.iter().zip(&want) {
                    assert!(
                        (g - e).abs() <= 1e-3 * (1.0 + e.abs()),
                        "{what}: {g} vs {e}"
                    );
                }
            }
        }
        let mut covered = 0;
        for &d in DType::ALL {
            covered += with_weight_block!(d, W => {
                check::<W>(t);
                usize::from(t.weight::<W>().x16.is_some())
            }, 0);
        }
        assert!(covered >= 6, "{covered} x16 entries on AVX2");
    }
}
