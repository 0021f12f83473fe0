//! `smmla` kernels (Armv8.6 int8 matrix multiply: Cortex-A510/A710/X2 and
//! later phones).
//!
//! `smmla` takes two 16-byte operands as 2x8 row-major matrices `X`, `Y` and
//! accumulates the 2x2 product `X·Yᵀ`: lanes `[x0·y0, x0·y1, x1·y0, x1·y1]`.
//! A 32-element block is four 8-element chunks, so four `smmla` cover one
//! block from each of two rows against one block from each of two columns.
//!
//! * 2x2 kernels (`*_2x2`, offered through `super::dot2x2_table`): two weight
//!   rows against two activation columns, all four lanes useful; this is where
//!   i8mm pays, in a prefill matmul.
//! * Gemm table entries (`*_gemm`, the prefill matmul over the file's
//!   layout): a register tile of 4 weight rows x 4 activation columns, each
//!   block's codes unpacked and zipped into row pairs once and used against
//!   two column pairs (four `smmla` per pair of pairs and block); smaller
//!   tiles at the edges and single dots for an odd last row or column.
//! * x16 entries (weights packed at load time, [`crate::quant::x16`]), which
//!   the cpu backend uses for every Q4_0/Q4_1/Q8_0 matmul once a table has
//!   them, so they are the engine's prefill path: for two or more columns,
//!   two lines of a 4-row register zipped by 32-bit lanes are two 2x8 row
//!   pairs (8 consecutive codes of each row), met by `smmla` with zipped
//!   column pairs; decode (one column) and an odd last column take the
//!   dotprod tier's `sdot` kernel.
//! * Single-row table entries: the 16 bytes of a block half, read as a 2x8
//!   matrix, are multiplied with the matching 16 activation bytes read the
//!   same way; the diagonal lanes 0 and 3 are chunk0·chunk0 and chunk1·chunk1,
//!   whose sum is the 16-element dot, and the off-diagonal lanes are simply
//!   never read. One `smmla` per 16 bytes and no shuffles: the same
//!   instruction count as the `sdot` tier (half the `smmla` MACs are wasted),
//!   so these are not faster than dotprod for a single row; they make a forced
//!   `SOTTO_ISA=i8mm` path run `smmla` end to end.

use super::dotprod::{self, is_q4_0, X16Panel};
use super::neon::{f16_to_f32, load_f16x4, load_q8, unpack_q4};
use crate::dispatch::gemm_shape_ok;
use crate::dispatch::{gemm_by_dots, KernelTable, VecDotFn, WeightRow, X16GemmFn};
use crate::quant::blocks::Q8Act;
use crate::quant::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use crate::quant::x16::shape_ok as x16_shape_ok;
use crate::quant::x16::{X16Block, PANEL_ROWS};
use half::f16;
use std::arch::aarch64::*;
use std::arch::asm;

/// Entries of the i8mm tier. Only called by `super::table` after detection.
pub(super) fn overrides(base: KernelTable) -> KernelTable {
    KernelTable {
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
        ..base
    }
}

// The safe wrappers are private to `arch::aarch64` and handed out only by
// `super::table` / `super::dot2x2_table` once `supports(Isa::I8mm)` (NEON +
// dotprod + i8mm) holds; each trims its slices to their common length.

fn q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: NEON and i8mm were detected before this fn was handed out.
    unsafe { q4_0_q8_0_kernel(&w[..n], &a[..n]) }
}

fn q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: NEON and i8mm were detected before this fn was handed out.
    unsafe { q4_1_q8_1_kernel(&w[..n], &a[..n]) }
}

fn q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: NEON and i8mm were detected before this fn was handed out.
    unsafe { q8_0_q8_0_kernel(&w[..n], &a[..n]) }
}

pub(super) fn q4_0_q8_0_2x2(
    w0: &[BlockQ4_0],
    w1: &[BlockQ4_0],
    a0: &[BlockQ8_0],
    a1: &[BlockQ8_0],
) -> [f32; 4] {
    let n = w0.len().min(w1.len()).min(a0.len()).min(a1.len());
    // SAFETY: NEON and i8mm were detected before this fn was handed out.
    unsafe { q4_0_q8_0_2x2_kernel(&w0[..n], &w1[..n], &a0[..n], &a1[..n]) }
}

pub(super) fn q4_1_q8_1_2x2(
    w0: &[BlockQ4_1],
    w1: &[BlockQ4_1],
    a0: &[BlockQ8_1],
    a1: &[BlockQ8_1],
) -> [f32; 4] {
    let n = w0.len().min(w1.len()).min(a0.len()).min(a1.len());
    // SAFETY: NEON and i8mm were detected before this fn was handed out.
    unsafe { q4_1_q8_1_2x2_kernel(&w0[..n], &w1[..n], &a0[..n], &a1[..n]) }
}

pub(super) fn q8_0_q8_0_2x2(
    w0: &[BlockQ8_0],
    w1: &[BlockQ8_0],
    a0: &[BlockQ8_0],
    a1: &[BlockQ8_0],
) -> [f32; 4] {
    let n = w0.len().min(w1.len()).min(a0.len()).min(a1.len());
    // SAFETY: NEON and i8mm were detected before this fn was handed out.
    unsafe { q8_0_q8_0_2x2_kernel(&w0[..n], &w1[..n], &a0[..n], &a1[..n]) }
}

// The gemm wrappers check the shape (whole rows and columns, an output that
// holds them all) and take one dot per output if it does not hold, so the
// kernel can index unchecked.

fn q4_0_q8_0_gemm(w: &[BlockQ4_0], a: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    if !gemm_shape_ok(w, a, bpr, out) {
        return gemm_by_dots(q4_0_q8_0, w, a, bpr, out);
    }
    // SAFETY: NEON and i8mm were detected before this fn was handed out; the
    // shape was checked just now.
    unsafe { gemm_k(w, a, bpr, out, q4_0_q8_0) }
}

fn q4_1_q8_1_gemm(w: &[BlockQ4_1], a: &[BlockQ8_1], bpr: usize, out: &mut [f32]) {
    if !gemm_shape_ok(w, a, bpr, out) {
        return gemm_by_dots(q4_1_q8_1, w, a, bpr, out);
    }
    // SAFETY: as above.
    unsafe { gemm_k(w, a, bpr, out, q4_1_q8_1) }
}

fn q8_0_q8_0_gemm(w: &[BlockQ8_0], a: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    if !gemm_shape_ok(w, a, bpr, out) {
        return gemm_by_dots(q8_0_q8_0, w, a, bpr, out);
    }
    // SAFETY: as above.
    unsafe { gemm_k(w, a, bpr, out, q8_0_q8_0) }
}

// The x16 wrappers: one column, a bad shape (the dotprod wrapper then takes
// the reference path) or an odd last column go to the dotprod kernel; the
// column pairs to `smmla`.

fn q4_0_q8_0_x16(p: &[u8], rows: usize, a: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    if !x16_shape_ok::<BlockQ4_0, _>(p, rows, a, bpr, out) || a.len() / bpr < 2 {
        return dotprod::q4_0_q8_0_x16(p, rows, a, bpr, out);
    }
    // SAFETY: NEON, dotprod and i8mm were detected before this fn was handed
    // out; the shape was checked just now.
    unsafe { x16_k::<BlockQ4_0, BlockQ8_0>(p, rows, a, bpr, out, dotprod::q4_0_q8_0_x16) }
}

fn q4_1_q8_1_x16(p: &[u8], rows: usize, a: &[BlockQ8_1], bpr: usize, out: &mut [f32]) {
    if !x16_shape_ok::<BlockQ4_1, _>(p, rows, a, bpr, out) || a.len() / bpr < 2 {
        return dotprod::q4_1_q8_1_x16(p, rows, a, bpr, out);
    }
    // SAFETY: as above.
    unsafe { x16_k::<BlockQ4_1, BlockQ8_1>(p, rows, a, bpr, out, dotprod::q4_1_q8_1_x16) }
}

fn q8_0_q8_0_x16(p: &[u8], rows: usize, a: &[BlockQ8_0], bpr: usize, out: &mut [f32]) {
    if !x16_shape_ok::<BlockQ8_0, _>(p, rows, a, bpr, out) || a.len() / bpr < 2 {
        return dotprod::q8_0_q8_0_x16(p, rows, a, bpr, out);
    }
    // SAFETY: as above.
    unsafe { x16_k::<BlockQ8_0, BlockQ8_0>(p, rows, a, bpr, out, dotprod::q8_0_q8_0_x16) }
}

/// `acc += X·Yᵀ` for 2x8 int8 matrices. Through `asm!` because the
/// `vmmlaq_s32` intrinsic is not stable in Rust yet.
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn smmla(mut acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
    // SAFETY: a register-only instruction; the caller guarantees i8mm.
    unsafe {
        asm!(
            "smmla {acc:v}.4s, {x:v}.16b, {y:v}.16b",
            acc = inout(vreg) acc,
            x = in(vreg) x,
            y = in(vreg) y,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Blocks as (elements 0..16, elements 16..32) vector pairs.
type Block = (int8x16_t, int8x16_t);

/// `[r0·c0, r0·c1, r1·c0, r1·c1]` over one 32-element block of each: the
/// 64-bit zips put chunk k of both rows (or columns) in one register.
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn tile(acc: int32x4_t, r0: Block, r1: Block, c0: Block, c1: Block) -> int32x4_t {
    let mut acc = acc;
    for (r0h, r1h, c0h, c1h) in [(r0.0, r1.0, c0.0, c1.0), (r0.1, r1.1, c0.1, c1.1)] {
        let (r0h, r1h) = (vreinterpretq_s64_s8(r0h), vreinterpretq_s64_s8(r1h));
        let (c0h, c1h) = (vreinterpretq_s64_s8(c0h), vreinterpretq_s64_s8(c1h));
        let rows_even = vreinterpretq_s8_s64(vzip1q_s64(r0h, r1h));
        let rows_odd = vreinterpretq_s8_s64(vzip2q_s64(r0h, r1h));
        let cols_even = vreinterpretq_s8_s64(vzip1q_s64(c0h, c1h));
        let cols_odd = vreinterpretq_s8_s64(vzip2q_s64(c0h, c1h));
        // SAFETY: the caller guarantees i8mm.
        acc = unsafe { smmla(smmla(acc, rows_even, cols_even), rows_odd, cols_odd) };
    }
    acc
}

/// Per-lane f32 scales of a 2x2 tile: `[r0·c0, r0·c1, r1·c0, r1·c1]`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn outer(r: [f32; 2], c: [f32; 2]) -> float32x4_t {
    let lanes = [r[0] * c[0], r[0] * c[1], r[1] * c[0], r[1] * c[1]];
    // SAFETY: four floats in bounds; the caller guarantees NEON.
    unsafe { vld1q_f32(lanes.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn store(v: float32x4_t) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    // SAFETY: four floats in bounds; the caller guarantees NEON.
    unsafe { vst1q_f32(out.as_mut_ptr(), v) };
    out
}

/// Σ x·y over one 32-element block, in lanes 0 and 3 (lanes 1 and 2 hold
/// cross-chunk products nobody reads).
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn diagonal_dot32(x: Block, y: Block) -> int32x4_t {
    // SAFETY: the caller guarantees i8mm.
    unsafe { smmla(smmla(vdupq_n_s32(0), x.0, y.0), x.1, y.1) }
}

/// Lanes 0 and 3 of the accumulated diagonal tiles.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn diagonal_sum(v: float32x4_t) -> f32 {
    vgetq_lane_f32::<0>(v) + vgetq_lane_f32::<3>(v)
}

#[target_feature(enable = "neon,i8mm")]
unsafe fn q4_0_q8_0_kernel(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = vdupq_n_f32(0.0);
    for (wb, ab) in w.iter().zip(a) {
        // SAFETY: NEON + i8mm guaranteed by the caller; loads stay inside the blocks.
        let lanes = unsafe { diagonal_dot32(unpack_q4(&wb.qs, 8), load_q8(&ab.qs)) };
        sum = vfmaq_n_f32(
            sum,
            vcvtq_f32_s32(lanes),
            f16_to_f32(wb.d) * f16_to_f32(ab.d),
        );
    }
    // SAFETY: NEON guaranteed by the caller.
    unsafe { diagonal_sum(sum) }
}

#[target_feature(enable = "neon,i8mm")]
unsafe fn q4_1_q8_1_kernel(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut sum = vdupq_n_f32(0.0);
    let mut min_terms = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        // SAFETY: NEON + i8mm guaranteed by the caller; loads stay inside the blocks.
        let lanes = unsafe { diagonal_dot32(unpack_q4(&wb.qs, 0), load_q8(&ab.qs)) };
        sum = vfmaq_n_f32(
            sum,
            vcvtq_f32_s32(lanes),
            f16_to_f32(wb.d) * f16_to_f32(ab.d),
        );
        min_terms += f16_to_f32(wb.m) * f16_to_f32(ab.s);
    }
    // SAFETY: NEON guaranteed by the caller.
    unsafe { diagonal_sum(sum) + min_terms }
}

#[target_feature(enable = "neon,i8mm")]
unsafe fn q8_0_q8_0_kernel(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = vdupq_n_f32(0.0);
    for (wb, ab) in w.iter().zip(a) {
        // SAFETY: NEON + i8mm guaranteed by the caller; loads stay inside the blocks.
        let lanes = unsafe { diagonal_dot32(load_q8(&wb.qs), load_q8(&ab.qs)) };
        sum = vfmaq_n_f32(
            sum,
            vcvtq_f32_s32(lanes),
            f16_to_f32(wb.d) * f16_to_f32(ab.d),
        );
    }
    // SAFETY: NEON guaranteed by the caller.
    unsafe { diagonal_sum(sum) }
}

#[target_feature(enable = "neon,i8mm")]
unsafe fn q4_0_q8_0_2x2_kernel(
    w0: &[BlockQ4_0],
    w1: &[BlockQ4_0],
    a0: &[BlockQ8_0],
    a1: &[BlockQ8_0],
) -> [f32; 4] {
    let mut sum = vdupq_n_f32(0.0);
    for (((r0, r1), c0), c1) in w0.iter().zip(w1).zip(a0).zip(a1) {
        // SAFETY: NEON + i8mm guaranteed by the caller; loads stay inside the blocks.
        let (lanes, scales) = unsafe {
            (
                tile(
                    vdupq_n_s32(0),
                    unpack_q4(&r0.qs, 8),
                    unpack_q4(&r1.qs, 8),
                    load_q8(&c0.qs),
                    load_q8(&c1.qs),
                ),
                outer(
                    [f16_to_f32(r0.d), f16_to_f32(r1.d)],
                    [f16_to_f32(c0.d), f16_to_f32(c1.d)],
                ),
            )
        };
        sum = vfmaq_f32(sum, vcvtq_f32_s32(lanes), scales);
    }
    // SAFETY: NEON guaranteed by the caller.
    unsafe { store(sum) }
}

#[target_feature(enable = "neon,i8mm")]
unsafe fn q4_1_q8_1_2x2_kernel(
    w0: &[BlockQ4_1],
    w1: &[BlockQ4_1],
    a0: &[BlockQ8_1],
    a1: &[BlockQ8_1],
) -> [f32; 4] {
    let mut sum = vdupq_n_f32(0.0);
    for (((r0, r1), c0), c1) in w0.iter().zip(w1).zip(a0).zip(a1) {
        // SAFETY: NEON + i8mm guaranteed by the caller; loads stay inside the blocks.
        let (lanes, scales, min_terms) = unsafe {
            (
                tile(
                    vdupq_n_s32(0),
                    unpack_q4(&r0.qs, 0),
                    unpack_q4(&r1.qs, 0),
                    load_q8(&c0.qs),
                    load_q8(&c1.qs),
                ),
                outer(
                    [f16_to_f32(r0.d), f16_to_f32(r1.d)],
                    [f16_to_f32(c0.d), f16_to_f32(c1.d)],
                ),
                outer(
                    [f16_to_f32(r0.m), f16_to_f32(r1.m)],
                    [f16_to_f32(c0.s), f16_to_f32(c1.s)],
                ),
            )
        };
        sum = vaddq_f32(vfmaq_f32(sum, vcvtq_f32_s32(lanes), scales), min_terms);
    }
    // SAFETY: NEON guaranteed by the caller.
    unsafe { store(sum) }
}

#[target_feature(enable = "neon,i8mm")]
unsafe fn q8_0_q8_0_2x2_kernel(
    w0: &[BlockQ8_0],
    w1: &[BlockQ8_0],
    a0: &[BlockQ8_0],
    a1: &[BlockQ8_0],
) -> [f32; 4] {
    let mut sum = vdupq_n_f32(0.0);
    for (((r0, r1), c0), c1) in w0.iter().zip(w1).zip(a0).zip(a1) {
        // SAFETY: NEON + i8mm guaranteed by the caller; loads stay inside the blocks.
        let (lanes, scales) = unsafe {
            (
                tile(
                    vdupq_n_s32(0),
                    load_q8(&r0.qs),
                    load_q8(&r1.qs),
                    load_q8(&c0.qs),
                    load_q8(&c1.qs),
                ),
                outer(
                    [f16_to_f32(r0.d), f16_to_f32(r1.d)],
                    [f16_to_f32(c0.d), f16_to_f32(c1.d)],
                ),
            )
        };
        sum = vfmaq_f32(sum, vcvtq_f32_s32(lanes), scales);
    }
    // SAFETY: NEON guaranteed by the caller.
    unsafe { store(sum) }
}

// ---- gemm: register tiles of row pairs x column pairs ----

/// The weight side of the tile kernels.
trait TileWeight: Copy {
    /// Q4_1: `w = d·q + m`, so each output gains `m·s` of its column.
    const MIN: bool;
    /// The codes as signed bytes in element order (`w = d·code (+ m)`).
    ///
    /// # Safety
    /// NEON.
    unsafe fn codes(&self) -> Block;
    fn d(&self) -> f16;
    fn m(&self) -> f16;
}

impl TileWeight for BlockQ4_0 {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn codes(&self) -> Block {
        // SAFETY: the caller guarantees NEON; 16 bytes of codes.
        unsafe { unpack_q4(&self.qs, 8) }
    }
    fn d(&self) -> f16 {
        self.d
    }
    fn m(&self) -> f16 {
        f16::ZERO
    }
}

impl TileWeight for BlockQ4_1 {
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn codes(&self) -> Block {
        // SAFETY: the caller guarantees NEON; 16 bytes of codes.
        unsafe { unpack_q4(&self.qs, 0) }
    }
    fn d(&self) -> f16 {
        self.d
    }
    fn m(&self) -> f16 {
        self.m
    }
}

impl TileWeight for BlockQ8_0 {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn codes(&self) -> Block {
        // SAFETY: the caller guarantees NEON; 32 bytes of codes.
        unsafe { load_q8(&self.qs) }
    }
    fn d(&self) -> f16 {
        self.d
    }
    fn m(&self) -> f16 {
        f16::ZERO
    }
}

/// Two blocks as the four 2x8 `smmla` operands of one block: chunk `k`
/// (elements `8k..8k + 8`) of `x` in the low half, of `y` in the high half.
#[inline]
#[target_feature(enable = "neon")]
fn zip_pair(x: Block, y: Block) -> [int8x16_t; 4] {
    let (x0, x1) = (vreinterpretq_s64_s8(x.0), vreinterpretq_s64_s8(x.1));
    let (y0, y1) = (vreinterpretq_s64_s8(y.0), vreinterpretq_s64_s8(y.1));
    [
        vreinterpretq_s8_s64(vzip1q_s64(x0, y0)),
        vreinterpretq_s8_s64(vzip2q_s64(x0, y0)),
        vreinterpretq_s8_s64(vzip1q_s64(x1, y1)),
        vreinterpretq_s8_s64(vzip2q_s64(x1, y1)),
    ]
}

/// `[a, a, b, b]`: a row pair's per-lane factor in a tile
/// `[r0·c0, r0·c1, r1·c0, r1·c1]`.
#[inline]
#[target_feature(enable = "neon")]
fn row_lanes(a: f32, b: f32) -> float32x4_t {
    vcombine_f32(vdup_n_f32(a), vdup_n_f32(b))
}

/// `[a, b, a, b]`: a column pair's per-lane factor in a tile.
#[inline]
#[target_feature(enable = "neon")]
fn col_lanes(a: f32, b: f32) -> float32x4_t {
    let ab = vset_lane_f32::<1>(b, vdup_n_f32(a));
    vcombine_f32(ab, ab)
}

/// # Safety
/// NEON + i8mm, and the shape checked by `gemm_shape_ok`.
#[target_feature(enable = "neon,i8mm")]
unsafe fn gemm_k<W: TileWeight, A: Q8Act>(
    w: &[W],
    a: &[A],
    bpr: usize,
    out: &mut [f32],
    dot: VecDotFn<W, A>,
) {
    let (rows, cols) = (w.len() / bpr, a.len() / bpr);
    let (rows2, cols2) = (rows & !1, cols & !1);
    let k = Tiles { w, a, bpr, rows };
    let mut r0 = 0;
    while r0 + 4 <= rows2 {
        let mut c0 = 0;
        while c0 + 4 <= cols2 {
            // SAFETY: rows r0..r0 + 2RP <= rows2 and columns c0..c0 + 2CP
            // <= cols2 exist (whole rows and columns, checked by the
            // wrapper); out holds rows * cols; the caller guarantees the
            // features. The same holds for the three calls below.
            unsafe { gemm_tile::<W, A, 2, 2>(&k, r0, c0, out) };
            c0 += 4;
        }
        if c0 < cols2 {
            // SAFETY: as above.
            unsafe { gemm_tile::<W, A, 2, 1>(&k, r0, c0, out) };
        }
        r0 += 4;
    }
    if r0 < rows2 {
        let mut c0 = 0;
        while c0 + 4 <= cols2 {
            // SAFETY: as above.
            unsafe { gemm_tile::<W, A, 1, 2>(&k, r0, c0, out) };
            c0 += 4;
        }
        if c0 < cols2 {
            // SAFETY: as above.
            unsafe { gemm_tile::<W, A, 1, 1>(&k, r0, c0, out) };
        }
    }
    // an odd last row against every column, an odd last column against the
    // other rows: single dots
    let row = |r: usize| &w[r * bpr..(r + 1) * bpr];
    let col = |c: usize| &a[c * bpr..(c + 1) * bpr];
    if rows % 2 == 1 {
        let r = rows - 1;
        for c in 0..cols {
            out[c * rows + r] = dot(row(r), col(c));
        }
    }
    if cols % 2 == 1 {
        let c = cols - 1;
        for r in 0..rows2 {
            out[c * rows + r] = dot(row(r), col(c));
        }
    }
}

/// What a tile reads.
struct Tiles<'a, W, A> {
    w: &'a [W],
    a: &'a [A],
    bpr: usize,
    rows: usize,
}

/// Rows `r0 .. r0 + 2·RP` against columns `c0 .. c0 + 2·CP`: `RP·CP` 2x2
/// `smmla` accumulators, each block's weight codes unpacked and zipped once
/// for all `CP` column pairs and each activation block zipped once for all
/// `RP` row pairs.
///
/// # Safety
/// NEON + i8mm; those rows and columns exist in `k.w` / `k.a` (whole rows
/// of `k.bpr` blocks) and `out` holds `k.rows` outputs of every column.
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn gemm_tile<W: TileWeight, A: Q8Act, const RP: usize, const CP: usize>(
    k: &Tiles<'_, W, A>,
    r0: usize,
    c0: usize,
    out: &mut [f32],
) {
    let bpr = k.bpr;
    let mut acc = [[vdupq_n_f32(0.0); CP]; RP];
    for b in 0..bpr {
        let mut wz = [[vdupq_n_s8(0); 4]; RP];
        let mut wd = [vdupq_n_f32(0.0); RP];
        let mut wm = [vdupq_n_f32(0.0); RP];
        for (p, ((z, d), m)) in wz.iter_mut().zip(&mut wd).zip(&mut wm).enumerate() {
            // SAFETY: rows r0 + 2p and r0 + 2p + 1 exist: their block b is
            // inside k.w.
            let (x, y) = unsafe {
                (
                    k.w.get_unchecked((r0 + 2 * p) * bpr + b),
                    k.w.get_unchecked((r0 + 2 * p + 1) * bpr + b),
                )
            };
            // SAFETY: NEON guaranteed by the caller.
            *z = zip_pair(unsafe { x.codes() }, unsafe { y.codes() });
            *d = row_lanes(f16_to_f32(x.d()), f16_to_f32(y.d()));
            if W::MIN {
                *m = row_lanes(f16_to_f32(x.m()), f16_to_f32(y.m()));
            }
        }
        let mut az = [[vdupq_n_s8(0); 4]; CP];
        let mut ad = [vdupq_n_f32(0.0); CP];
        let mut asum = [vdupq_n_f32(0.0); CP];
        for (q, ((z, d), s)) in az.iter_mut().zip(&mut ad).zip(&mut asum).enumerate() {
            // SAFETY: columns c0 + 2q and c0 + 2q + 1 exist: their block b is
            // inside k.a.
            let (x, y) = unsafe {
                (
                    k.a.get_unchecked((c0 + 2 * q) * bpr + b),
                    k.a.get_unchecked((c0 + 2 * q + 1) * bpr + b),
                )
            };
            // SAFETY: 32 code bytes each; NEON guaranteed by the caller.
            *z = zip_pair(unsafe { load_q8(x.codes()) }, unsafe { load_q8(y.codes()) });
            *d = col_lanes(f16_to_f32(x.scale()), f16_to_f32(y.scale()));
            if W::MIN {
                *s = col_lanes(f16_to_f32(x.sum_scaled()), f16_to_f32(y.sum_scaled()));
            }
        }
        for p in 0..RP {
            for q in 0..CP {
                let mut t = vdupq_n_s32(0);
                for i in 0..4 {
                    // SAFETY: i8mm guaranteed by the caller.
                    t = unsafe { smmla(t, wz[p][i], az[q][i]) };
                }
                let v = vfmaq_f32(acc[p][q], vcvtq_f32_s32(t), vmulq_f32(wd[p], ad[q]));
                acc[p][q] = if W::MIN {
                    vfmaq_f32(v, wm[p], asum[q])
                } else {
                    v
                };
            }
        }
    }
    let rows = k.rows;
    for (p, per_row_pair) in acc.iter().enumerate() {
        for (q, v) in per_row_pair.iter().enumerate() {
            let (r, c) = (r0 + 2 * p, c0 + 2 * q);
            // SAFETY: rows r, r + 1 < rows and columns c, c + 1 < cols, so
            // every index is below rows * cols <= out.len().
            unsafe {
                *out.get_unchecked_mut(c * rows + r) = vgetq_lane_f32::<0>(*v);
                *out.get_unchecked_mut((c + 1) * rows + r) = vgetq_lane_f32::<1>(*v);
                *out.get_unchecked_mut(c * rows + r + 1) = vgetq_lane_f32::<2>(*v);
                *out.get_unchecked_mut((c + 1) * rows + r + 1) = vgetq_lane_f32::<3>(*v);
            }
        }
    }
}

// ---- x16: smmla over the packed panels ----

/// The even columns through `smmla` tiles, an odd last one through `odd`.
///
/// # Safety
/// NEON + dotprod + i8mm, the shape checked by `x16_shape_ok`, and at least
/// two columns.
#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn x16_k<W: X16Block, A: Q8Act>(
    p: &[u8],
    rows: usize,
    a: &[A],
    bpr: usize,
    out: &mut [f32],
    odd: X16GemmFn<A>,
) {
    let cols = a.len() / bpr;
    // smmla takes Q4_0's 0..16 codes as they are; each block's integer sum
    // then drops 8·Σa of its column, computed once per call.
    let q4_0_offsets = dotprod::q4_0_offsets::<W, A>(a);
    let cols2 = cols & !1;
    for (pi, r0) in (0..rows).step_by(PANEL_ROWS).enumerate() {
        let k = X16Panel {
            // SAFETY: panel pi < ceil(rows / 16) exists: p holds exactly
            // ceil(rows / 16) * bpr records (checked by the wrapper).
            panel: unsafe { p.as_ptr().add(pi * bpr * W::RECORD) },
            a,
            q4_0_offsets: &q4_0_offsets,
            bpr,
            rows,
            r0,
        };
        let mut c0 = 0;
        while c0 + 4 <= cols2 {
            for half in 0..2 {
                // SAFETY: columns c0..c0 + 4 <= cols exist; half < 2; out
                // holds rows * cols; the caller guarantees the features.
                unsafe { x16_tiles::<W, A, 2>(&k, c0, half, out) };
            }
            c0 += 4;
        }
        if c0 < cols2 {
            for half in 0..2 {
                // SAFETY: as above, for columns c0..c0 + 2 <= cols.
                unsafe { x16_tiles::<W, A, 1>(&k, c0, half, out) };
            }
        }
    }
    if cols2 < cols {
        odd(
            p,
            rows,
            &a[cols2 * bpr..],
            bpr,
            &mut out[cols2 * rows..cols * rows],
        );
    }
}

/// The `smmla` operands of 4-row register `g` of a record's lines: for each
/// of its row pairs (rows `4g, 4g+1` and `4g+2, 4g+3`), the four 2x8 chunks
/// of a block (elements `8ch .. 8ch + 8` of both rows).
///
/// Lines `2j` and `2j + 1` hold bytes `8j .. 8j + 8` of every row, so their
/// 32-bit zip is exactly the two rows' 8 consecutive bytes: for Q8_0 those
/// are chunk `j`; for Q4 the low nibbles are chunk `j` and the high nibbles
/// chunk `2 + j` (elements `16 + 8j ..`).
///
/// # Safety
/// NEON; `lines` points at the code lines of a whole record of `W`; `g < 4`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn x16_row_pairs<W: X16Block>(lines: *const u8, g: usize) -> [[int8x16_t; 4]; 2] {
    let mut ops = [[vdupq_n_s8(0); 4]; 2];
    let reg = |line: usize| {
        // SAFETY: line < LINES (CODE_BYTES / 4) of 64 bytes and g < 4, so
        // the 16 bytes are inside the record (the caller's contract).
        unsafe { vreinterpretq_u32_u8(vld1q_u8(lines.add(64 * line + 16 * g))) }
    };
    let lines_count = W::CODE_BYTES / 4;
    for j in 0..lines_count / 2 {
        let (x, y) = (reg(2 * j), reg(2 * j + 1));
        let pairs = [
            vreinterpretq_u8_u32(vzip1q_u32(x, y)),
            vreinterpretq_u8_u32(vzip2q_u32(x, y)),
        ];
        for (op, z) in ops.iter_mut().zip(pairs) {
            if W::CODE_BYTES == 32 {
                op[j] = vreinterpretq_s8_u8(z);
            } else {
                op[j] = vreinterpretq_s8_u8(vandq_u8(z, vdupq_n_u8(0x0F)));
                op[2 + j] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(z));
            }
        }
    }
    ops
}

/// Rows `r0 + 8·half .. + 8` of a panel (4 row pairs) against columns
/// `c0 .. c0 + 2·CP` (`CP` column pairs): `4·CP` 2x2 `smmla` accumulators.
///
/// # Safety
/// NEON + i8mm; `k.panel` holds `k.bpr` records of `W`; columns
/// `c0 .. c0 + 2·CP` exist in `k.a` (and `k.q4_0_offsets` for Q4_0);
/// `half < 2`; `out` holds `k.rows` outputs of every column.
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn x16_tiles<W: X16Block, A: Q8Act, const CP: usize>(
    k: &X16Panel<'_, A>,
    c0: usize,
    half: usize,
    out: &mut [f32],
) {
    let min = W::PLANES == 2;
    let bpr = k.bpr;
    let mut acc = [[vdupq_n_f32(0.0); CP]; 4];
    for b in 0..bpr {
        let mut az = [[vdupq_n_s8(0); 4]; CP];
        let mut ad = [vdupq_n_f32(0.0); CP];
        let mut asum = [vdupq_n_f32(0.0); CP];
        let mut offset = [vdupq_n_s32(0); CP];
        for (q, z) in az.iter_mut().enumerate() {
            let (i, j) = ((c0 + 2 * q) * bpr + b, (c0 + 2 * q + 1) * bpr + b);
            // SAFETY: columns c0 + 2q and c0 + 2q + 1 exist: i, j < a.len().
            let (x, y) = unsafe { (k.a.get_unchecked(i), k.a.get_unchecked(j)) };
            // SAFETY: 32 code bytes each; NEON guaranteed by the caller.
            *z = zip_pair(unsafe { load_q8(x.codes()) }, unsafe { load_q8(y.codes()) });
            ad[q] = col_lanes(f16_to_f32(x.scale()), f16_to_f32(y.scale()));
            if min {
                asum[q] = col_lanes(f16_to_f32(x.sum_scaled()), f16_to_f32(y.sum_scaled()));
            }
            if is_q4_0::<W>() {
                // SAFETY: q4_0_offsets has one entry per activation block.
                let (oi, oj) = unsafe {
                    (
                        *k.q4_0_offsets.get_unchecked(i),
                        *k.q4_0_offsets.get_unchecked(j),
                    )
                };
                let ij = vset_lane_s32::<1>(oj, vdup_n_s32(oi));
                offset[q] = vcombine_s32(ij, ij);
            }
        }
        let rec = k.panel.wrapping_add(b * W::RECORD);
        for j in 0..2 {
            let g = 2 * half + j;
            // SAFETY: b < bpr, so `rec` is a whole record: its code lines
            // follow the PLANES scale planes; g < 4.
            let ops = unsafe { x16_row_pairs::<W>(rec.add(32 * W::PLANES), g) };
            // SAFETY: scale plane p holds 16 f16 at 32p; rows 4g..4g + 4 are
            // bytes 8g..8g + 8 of it.
            let dw = unsafe { load_f16x4(rec.add(8 * g)) };
            let mw = if min {
                // SAFETY: as above, in the second (minimum) plane.
                unsafe { load_f16x4(rec.add(32 + 8 * g)) }
            } else {
                vdupq_n_f32(0.0)
            };
            // row pair h of the register: lanes [d, d, d', d'] of its rows
            let wd = [vzip1q_f32(dw, dw), vzip2q_f32(dw, dw)];
            let wm = [vzip1q_f32(mw, mw), vzip2q_f32(mw, mw)];
            for h in 0..2 {
                for q in 0..CP {
                    let mut t = vdupq_n_s32(0);
                    for ch in 0..4 {
                        // SAFETY: i8mm guaranteed by the caller.
                        t = unsafe { smmla(t, ops[h][ch], az[q][ch]) };
                    }
                    if is_q4_0::<W>() {
                        t = vsubq_s32(t, offset[q]);
                    }
                    let a = &mut acc[2 * j + h][q];
                    *a = vfmaq_f32(*a, vcvtq_f32_s32(t), vmulq_f32(wd[h], ad[q]));
                    if min {
                        *a = vfmaq_f32(*a, wm[h], asum[q]);
                    }
                }
            }
        }
    }
    let rows = k.rows;
    for (rp, per_pair) in acc.iter().enumerate() {
        let r = k.r0 + 8 * half + 2 * rp;
        for (q, v) in per_pair.iter().enumerate() {
            let c = c0 + 2 * q;
            let mut lanes = [0.0f32; 4];
            // SAFETY: four floats in bounds of `lanes`.
            unsafe { vst1q_f32(lanes.as_mut_ptr(), *v) };
            // lanes [r·c, r·c+1, r+1·c, r+1·c+1]; padding rows are dropped
            for (dr, pair) in lanes.chunks_exact(2).enumerate() {
                if r + dr < rows {
                    // SAFETY: row r + dr < rows and columns c, c + 1 < cols,
                    // so both indices are below rows * cols <= out.len().
                    unsafe {
                        *out.get_unchecked_mut(c * rows + r + dr) = pair[0];
                        *out.get_unchecked_mut((c + 1) * rows + r + dr) = pair[1];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::dispatch::Isa;

    fn i8mm() -> bool {
        super::super::supports(Isa::I8mm)
    }

    #[test]
    fn smmla_is_a_2x8_by_8x2_product() {
        if !i8mm() {
            return;
        }
        let x: [i8; 16] = std::array::from_fn(|i| ((i as i32 - 7) * 13) as i8);
        let y: [i8; 16] = std::array::from_fn(|i| (120 - 15 * i as i32) as i8);
        let mut lanes = [0i32; 4];
        // SAFETY: i8mm detected above; arrays are 16 bytes, lanes 4 i32.
        unsafe {
            let r = smmla(vdupq_n_s32(-5), vld1q_s8(x.as_ptr()), vld1q_s8(y.as_ptr()));
            vst1q_s32(lanes.as_mut_ptr(), r);
        }
        for row in 0..2 {
            for col in 0..2 {
                let want: i32 = -5
                    + (0..8)
                        .map(|k| i32::from(x[8 * row + k]) * i32::from(y[8 * col + k]))
                        .sum::<i32>();
                assert_eq!(lanes[2 * row + col], want, "row {row} col {col}");
            }
        }
    }

    #[test]
    fn single_row_dots_match_reference() {
        if !i8mm() {
            return;
        }
        let mut r = rng(21);
        for n in BLOCK_COUNTS {
            let (w, a) = (q4_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            assert_close(
                &format!("q4_0 n={n}"),
                q4_0_q8_0(&w, &a),
                ref_q4_0_q8_0(&w, &a),
                BUDGET_LEGACY,
            );
            let (w, a) = (q4_1_blocks(&mut r, n), q8_1_blocks(&mut r, n));
            assert_close(
                &format!("q4_1 n={n}"),
                q4_1_q8_1(&w, &a),
                ref_q4_1_q8_1(&w, &a),
                BUDGET_LEGACY,
            );
            let (w, a) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            assert_close(
                &format!("q8_0 n={n}"),
                q8_0_q8_0(&w, &a),
                ref_q8_0_q8_0(&w, &a),
                BUDGET_LEGACY,
            );
        }
    }

    /// Each lane of a 2x2 result against the reference dot of its row/column.
    fn check_2x2<W, A>(
        what: &str,
        got: [f32; 4],
        w: [&[W]; 2],
        a: [&[A]; 2],
        reference: fn(&[W], &[A]) -> (f64, f64),
    ) {
        for (lane, value) in got.into_iter().enumerate() {
            let (row, col) = (lane / 2, lane % 2);
            assert_close(
                &format!("{what} row {row} col {col}"),
                value,
                reference(w[row], a[col]),
                BUDGET_LEGACY,
            );
        }
    }

    #[test]
    fn two_by_two_tiles_match_reference() {
        if !i8mm() {
            return;
        }
        let mut r = rng(22);
        for n in BLOCK_COUNTS {
            let (w0, w1) = (q4_0_blocks(&mut r, n), q4_0_blocks(&mut r, n));
            let (a0, a1) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            let got = q4_0_q8_0_2x2(&w0, &w1, &a0, &a1);
            check_2x2(
                &format!("q4_0 2x2 n={n}"),
                got,
                [&w0, &w1],
                [&a0, &a1],
                ref_q4_0_q8_0,
            );

            let (w0, w1) = (q4_1_blocks(&mut r, n), q4_1_blocks(&mut r, n));
            let (a0, a1) = (q8_1_blocks(&mut r, n), q8_1_blocks(&mut r, n));
            let got = q4_1_q8_1_2x2(&w0, &w1, &a0, &a1);
            check_2x2(
                &format!("q4_1 2x2 n={n}"),
                got,
                [&w0, &w1],
                [&a0, &a1],
                ref_q4_1_q8_1,
            );

            let (w0, w1) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            let (a0, a1) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            let got = q8_0_q8_0_2x2(&w0, &w1, &a0, &a1);
            check_2x2(
                &format!("q8_0 2x2 n={n}"),
                got,
                [&w0, &w1],
                [&a0, &a1],
                ref_q8_0_q8_0,
            );
        }
    }

    #[test]
    fn two_by_two_uses_the_shortest_common_length() {
        if !i8mm() {
            return;
        }
        let mut r = rng(23);
        let (w0, w1) = (q8_0_blocks(&mut r, 4), q8_0_blocks(&mut r, 3));
        let (a0, a1) = (q8_0_blocks(&mut r, 5), q8_0_blocks(&mut r, 4));
        let got = q8_0_q8_0_2x2(&w0, &w1, &a0, &a1);
        check_2x2(
            "q8_0 2x2 prefix",
            got,
            [&w0[..3], &w1[..3]],
            [&a0[..3], &a1[..3]],
            ref_q8_0_q8_0,
        );
    }
}
