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
//! * Single-row table entries: the 16 bytes of a block half, read as a 2x8
//!   matrix, are multiplied with the matching 16 activation bytes read the
//!   same way; the diagonal lanes 0 and 3 are chunk0·chunk0 and chunk1·chunk1,
//!   whose sum is the 16-element dot, and the off-diagonal lanes are simply
//!   never read. One `smmla` per 16 bytes and no shuffles: the same
//!   instruction count as the `sdot` tier (half the `smmla` MACs are wasted),
//!   so these are not faster than dotprod for a single row; they make a forced
//!   `SOTTO_ISA=i8mm` path run `smmla` end to end.

use super::neon::{f16_to_f32, load_q8, unpack_q4};
use crate::dispatch::VecDotTable;
use crate::quant::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use std::arch::aarch64::*;
use std::arch::asm;

/// Entries of the i8mm tier. Only called by `super::table` after detection.
pub(super) fn overrides(base: VecDotTable) -> VecDotTable {
    VecDotTable {
        q4_0_q8_0,
        q4_1_q8_1,
        q8_0_q8_0,
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
