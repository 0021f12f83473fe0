//! `sdot` kernels (Armv8.2 dot product: Cortex-A55/A76 and later phones).
//!
//! `sdot` multiplies four i8 pairs per i32 lane and accumulates, so one
//! instruction replaces the `smull`/`smull2`/`sadalp` triple of the NEON tier
//! ([`Sdot`], the integer dot of every weight type through [`codes::dot`]).
//! The k-quant dots keep one i32x4 accumulator per super-block and apply the
//! sub-block scales with `mla` by scalar, so the horizontal sum happens once
//! per row.
//!
//! The x16 gemm (`*_x16`, weights packed at load time, see
//! [`crate::quant::x16`]) reads a 64-byte line of a record as four registers
//! of 4 rows each (lane `r` = 4 codes of row `r`) and meets them with `sdot`
//! by element: the activation's 4 bytes matching the line are broadcast from
//! one 32-bit lane, so one instruction advances 4 rows by 4 elements and
//! every weight byte is loaded once per call, with no horizontal sums. The
//! scales of 4 rows are one `fcvtl` of the record's scale plane.

use super::codes::{self, IntDot, WeightCodes};
use super::neon::{f16_to_f32, load_f16x4, load_q8};
use crate::dispatch::{KernelTable, WeightRow};
use crate::quant::blocks::Q8Act;
use crate::quant::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use crate::quant::x16::shape_ok as x16_shape_ok;
use crate::quant::x16::{self, X16Block, PANEL_ROWS};
use std::arch::aarch64::*;
use std::arch::asm;

/// Entries of the dotprod tier. Only called by `super::table` after detection.
pub(super) fn overrides(base: KernelTable) -> KernelTable {
    KernelTable {
        q4_0: WeightRow {
            dot,
            x16: Some(q4_0_q8_0_x16),
            ..base.q4_0
        },
        q4_1: WeightRow {
            dot,
            x16: Some(q4_1_q8_1_x16),
            ..base.q4_1
        },
        q5_0: WeightRow { dot, ..base.q5_0 },
        q5_1: WeightRow { dot, ..base.q5_1 },
        q8_0: WeightRow {
            dot,
            x16: Some(q8_0_q8_0_x16),
            ..base.q8_0
        },
        q2_k: WeightRow { dot, ..base.q2_k },
        q3_k: WeightRow { dot, ..base.q3_k },
        q4_k: WeightRow { dot, ..base.q4_k },
        q5_k: WeightRow { dot, ..base.q5_k },
        q6_k: WeightRow { dot, ..base.q6_k },
        iq4_nl: WeightRow { dot, ..base.iq4_nl },
        iq4_xs: WeightRow { dot, ..base.iq4_xs },
        ..base
    }
}

// The safe wrappers are private to `arch::aarch64` and handed out only by
// `super::table` once `supports(Isa::Dotprod)` (NEON + dotprod) holds; each
// trims both slices to their common length.

/// The integer dot of every weight type (the row's block type picks `W`).
pub(super) fn dot<W: WeightCodes>(w: &[W], a: &[W::Act]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: NEON and dotprod were detected before this fn was handed out.
    unsafe { dot_kernel(&w[..n], &a[..n]) }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_kernel<W: WeightCodes>(w: &[W], a: &[W::Act]) -> f32 {
    // SAFETY: NEON and dotprod are guaranteed by the caller.
    unsafe { codes::dot::<W, Sdot>(w, a) }
}

// The x16 wrappers check the shape (whole columns, `packed` holding exactly
// the panels of `rows` rows, an output that holds every column) and take the
// reference path if it does not hold, so the kernel can index unchecked.

pub(super) fn q4_0_q8_0_x16(
    p: &[u8],
    rows: usize,
    a: &[BlockQ8_0],
    bpr: usize,
    out: &mut [&mut [f32]],
) {
    if !x16_shape_ok::<BlockQ4_0, _>(p, rows, a, bpr, out) {
        return x16::gemm_ref::<BlockQ4_0, _>(dot, p, rows, a, bpr, out);
    }
    // SAFETY: NEON and dotprod were detected before this fn was handed out;
    // the shape was checked just now.
    unsafe { x16_k::<BlockQ4_0, BlockQ8_0>(p, rows, a, bpr, out) }
}

pub(super) fn q4_1_q8_1_x16(
    p: &[u8],
    rows: usize,
    a: &[BlockQ8_1],
    bpr: usize,
    out: &mut [&mut [f32]],
) {
    if !x16_shape_ok::<BlockQ4_1, _>(p, rows, a, bpr, out) {
        return x16::gemm_ref::<BlockQ4_1, _>(dot, p, rows, a, bpr, out);
    }
    // SAFETY: as above.
    unsafe { x16_k::<BlockQ4_1, BlockQ8_1>(p, rows, a, bpr, out) }
}

pub(super) fn q8_0_q8_0_x16(
    p: &[u8],
    rows: usize,
    a: &[BlockQ8_0],
    bpr: usize,
    out: &mut [&mut [f32]],
) {
    if !x16_shape_ok::<BlockQ8_0, _>(p, rows, a, bpr, out) {
        return x16::gemm_ref::<BlockQ8_0, _>(dot, p, rows, a, bpr, out);
    }
    // SAFETY: as above.
    unsafe { x16_k::<BlockQ8_0, BlockQ8_0>(p, rows, a, bpr, out) }
}

/// `acc[i] += Σ_{k<4} x[4i+k]·y[4i+k]`. Through `asm!` because the
/// `vdotq_s32` intrinsic is not stable in Rust yet.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn sdot(mut acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
    // SAFETY: a register-only instruction; the caller guarantees dotprod.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {x:v}.16b, {y:v}.16b",
            acc = inout(vreg) acc,
            x = in(vreg) x,
            y = in(vreg) y,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Multiply-adds of `iters` rounds of 12 independent `sdot` chains on
/// registers (no loads): the peak of the step the gemm kernels use.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn dot_peak(iters: usize) -> u64 {
    const CHAINS: usize = 12;
    let (x, y) = std::hint::black_box((1i8, -1i8));
    let (x, y) = (vdupq_n_s8(x), vdupq_n_s8(y));
    let mut acc = [vdupq_n_s32(0); CHAINS];
    for _ in 0..iters {
        for a in &mut acc {
            // SAFETY: dotprod is a feature of this function.
            *a = unsafe { sdot(*a, x, y) };
        }
    }
    std::hint::black_box(acc);
    (iters * CHAINS * 16) as u64
}

/// The dotprod tier's integer dot: one `sdot`, every lane a product sum.
#[derive(Debug)]
pub(super) struct Sdot;

impl IntDot for Sdot {
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn dot16(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
        // SAFETY: the caller guarantees dotprod.
        unsafe { sdot(acc, x, y) }
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn sum(v: float32x4_t) -> f32 {
        vaddvq_f32(v)
    }
}

/// `acc[i] += Σ_{k<4} x[4i+k]·y[4L+k]`: `sdot` by element, the 4 bytes of
/// lane `L` of `y` broadcast against every lane of `x`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot_lane<const L: i32>(mut acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
    macro_rules! by_element {
        ($lane:literal) => {
            asm!(
                "sdot {acc:v}.4s, {x:v}.16b, {y:v}.4b[{lane}]",
                acc = inout(vreg) acc,
                x = in(vreg) x,
                y = in(vreg) y,
                lane = const $lane,
                options(pure, nomem, nostack, preserves_flags),
            )
        };
    }
    // SAFETY: register-only instructions; the caller guarantees dotprod. The
    // match on the const parameter folds away (an asm lane must be a literal).
    unsafe {
        match L {
            0 => by_element!(0),
            1 => by_element!(1),
            2 => by_element!(2),
            _ => by_element!(3),
        }
    }
    acc
}

/// A prefetch hint for the cache line at `p`. `prfm` never faults and has no
/// effect the program can observe, whatever the address.
#[inline(always)]
fn prefetch(p: *const u8) {
    // SAFETY: a hint: no memory is read or written, no fault is possible.
    unsafe {
        asm!(
            "prfm pldl1keep, [{p}]",
            p = in(reg) p,
            options(readonly, nostack, preserves_flags),
        );
    }
}

/// Bytes ahead of the record in use that the decode loop prefetches, as the
/// x86 x16 kernels do (the sequential stream crosses pages, where hardware
/// prefetchers stop). Not measured on a phone core.
const X16_PREFETCH: usize = 2048;

/// Prefetches the `len` bytes [`X16_PREFETCH`] ahead of the record at
/// `rec`, a cache line at a time (decode's one pass over the panels).
#[inline(always)]
pub(super) fn prefetch_ahead(rec: *const u8, len: usize) {
    let ahead = rec.wrapping_add(X16_PREFETCH);
    for l in (0..len).step_by(64) {
        prefetch(ahead.wrapping_add(l));
    }
}

/// Whether `W` is Q4_0 (codes 0..16, `w = d·(q − 8)`): 4-bit codes, no
/// minimum plane.
pub(super) const fn is_q4_0<W: X16Block>() -> bool {
    W::CODE_BYTES == 16 && W::PLANES == 1
}

/// What one call of the x16 column kernels (this tier's and i8mm's)
/// reads: a panel and the activations.
pub(super) struct X16Panel<'a, A> {
    /// `bpr` whole records of `W`.
    pub(super) panel: *const u8,
    pub(super) a: &'a [A],
    /// `8·Σ codes` of every activation block (Q4_0 only, else empty).
    pub(super) q4_0_offsets: &'a [i32],
    pub(super) bpr: usize,
    pub(super) rows: usize,
    /// First row of the panel.
    pub(super) r0: usize,
}

/// `8·Σ codes` of every activation block for Q4_0 weights (their codes
/// 0..16 go through the integer dot as they are; each block's sum then
/// drops that, the same for all 16 rows), empty for the other types.
pub(super) fn q4_0_offsets<W: X16Block, A: Q8Act>(a: &[A]) -> Vec<i32> {
    if !is_q4_0::<W>() {
        return Vec::new();
    }
    a.iter()
        .map(|b| 8 * b.codes().iter().map(|&q| i32::from(q)).sum::<i32>())
        .collect()
}

/// # Safety
/// NEON + dotprod, and the shape checked by `x16_shape_ok`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn x16_k<W: X16Block, A: Q8Act>(
    p: &[u8],
    rows: usize,
    a: &[A],
    bpr: usize,
    out: &mut [&mut [f32]],
) {
    let cols = a.len() / bpr;
    // sdot takes Q4_0's 0..16 codes as they are; each block's integer sum
    // then drops 8·Σa, the same for all 16 rows, computed once per call.
    let q4_0_offsets = q4_0_offsets::<W, A>(a);
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
        // SAFETY: every call reads columns c0..c0 + NC < cols and the 4-row
        // groups g0..g0 + RG <= 4 of the panel; out holds rows for each column.
        unsafe {
            if cols == 1 {
                // decode: all 16 rows at once, two partial sums per group
                // so 8 sdot chains are in flight
                x16_cols::<W, A, 4, 1, 2>(&k, 0, 0, out);
                continue;
            }
            // prefill: 8 rows x 4 columns per pass (each weight byte is
            // still loaded once: the two passes read disjoint registers)
            let mut c0 = 0;
            while c0 + 4 <= cols {
                x16_cols::<W, A, 2, 4, 1>(&k, c0, 0, out);
                x16_cols::<W, A, 2, 4, 1>(&k, c0, 2, out);
                c0 += 4;
            }
            if c0 + 2 <= cols {
                x16_cols::<W, A, 4, 2, 1>(&k, c0, 0, out);
                c0 += 2;
            }
            if c0 < cols {
                x16_cols::<W, A, 4, 1, 2>(&k, c0, 0, out);
            }
        }
    }
}

/// Rows `4·g0 .. 4·(g0 + RG)` of a panel against columns `c0 .. c0 + NC`:
/// `RG` registers of 4 rows per line, `NC` columns, `SPLIT` partial sums per
/// accumulator (1 or 2, for more independent `sdot` chains when `RG·NC` is
/// small).
///
/// # Safety
/// NEON + dotprod; `k.panel` holds `k.bpr` records of `W`; columns
/// `c0 .. c0 + NC` exist in `k.a` (and `k.q4_0_offsets` for Q4_0);
/// `g0 + RG <= 4`; `out` holds `k.rows` outputs of every column.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn x16_cols<W: X16Block, A: Q8Act, const RG: usize, const NC: usize, const SPLIT: usize>(
    k: &X16Panel<'_, A>,
    c0: usize,
    g0: usize,
    out: &mut [&mut [f32]],
) {
    let min = W::PLANES == 2;
    let mut acc = [[vdupq_n_f32(0.0); RG]; NC];
    for b in 0..k.bpr {
        let rec = k.panel.wrapping_add(b * W::RECORD);
        if NC == 1 && RG == 4 {
            prefetch_ahead(rec, W::RECORD);
        }
        let mut act = [[vdupq_n_s8(0); 2]; NC];
        let mut ad = [0.0f32; NC];
        let mut asum = [0.0f32; NC];
        let mut offset = [0i32; NC];
        for c in 0..NC {
            let i = (c0 + c) * k.bpr + b;
            // SAFETY: column c0 + c < cols, so i < cols * bpr = a.len().
            let blk = unsafe { k.a.get_unchecked(i) };
            // SAFETY: 32 code bytes of the block; NEON guaranteed by the caller.
            let (lo, hi) = unsafe { load_q8(blk.codes()) };
            act[c] = [lo, hi];
            ad[c] = f16_to_f32(blk.scale());
            if min {
                asum[c] = f16_to_f32(blk.sum_scaled());
            }
            if is_q4_0::<W>() {
                // SAFETY: q4_0_offsets has one entry per activation block.
                offset[c] = unsafe { *k.q4_0_offsets.get_unchecked(i) };
            }
        }
        // SAFETY: b < bpr, so `rec` is a whole record; its code lines follow
        // the PLANES scale planes of 32 bytes.
        let lines = unsafe { rec.add(32 * W::PLANES) };
        let mut sums = [[[vdupq_n_s32(0); RG]; NC]; SPLIT];
        // SAFETY: `lines` starts the record's code lines; the caller
        // guarantees the features and g0 + RG <= 4.
        unsafe {
            x16_lane::<W, 0, RG, NC, SPLIT>(lines, g0, &act, &mut sums);
            x16_lane::<W, 1, RG, NC, SPLIT>(lines, g0, &act, &mut sums);
            x16_lane::<W, 2, RG, NC, SPLIT>(lines, g0, &act, &mut sums);
            x16_lane::<W, 3, RG, NC, SPLIT>(lines, g0, &act, &mut sums);
        }
        for g in 0..RG {
            // SAFETY: scale plane p holds 16 f16 at 32p; rows 4(g0 + g)..+4
            // are bytes 8(g0 + g)..+8 of it, inside the record.
            let dw = unsafe { load_f16x4(rec.add(8 * (g0 + g))) };
            let mw = if min {
                // SAFETY: as above, in the second (minimum) plane.
                unsafe { load_f16x4(rec.add(32 + 8 * (g0 + g))) }
            } else {
                vdupq_n_f32(0.0)
            };
            for c in 0..NC {
                let mut t = sums[0][c][g];
                for part in &sums[1..] {
                    t = vaddq_s32(t, part[c][g]);
                }
                if is_q4_0::<W>() {
                    t = vsubq_s32(t, vdupq_n_s32(offset[c]));
                }
                acc[c][g] = vfmaq_f32(acc[c][g], vcvtq_f32_s32(t), vmulq_n_f32(dw, ad[c]));
                if min {
                    acc[c][g] = vfmaq_n_f32(acc[c][g], mw, asum[c]);
                }
            }
        }
    }
    for (c, per_col) in acc.iter().enumerate() {
        for (g, v) in per_col.iter().enumerate() {
            let r = k.r0 + 4 * (g0 + g);
            if r >= k.rows {
                continue; // padding rows of the last panel
            }
            let n = (k.rows - r).min(4);
            // SAFETY: column c0 + c < cols exists in out (shape checked).
            let col = unsafe { out.get_unchecked_mut(c0 + c) };
            if n == 4 {
                // SAFETY: r + 4 <= rows <= col.len().
                unsafe { vst1q_f32(col.as_mut_ptr().add(r), *v) };
            } else {
                let mut lanes = [0.0f32; 4];
                // SAFETY: four floats in bounds of `lanes`.
                unsafe { vst1q_f32(lanes.as_mut_ptr(), *v) };
                // SAFETY: r + n <= rows <= col.len().
                unsafe { col.get_unchecked_mut(r..r + n) }.copy_from_slice(&lanes[..n]);
            }
        }
    }
}

/// The `sdot`s of byte lane `L` of the activation registers: for Q8_0 the
/// lines `L` and `4 + L` (elements `4L..` and `16 + 4L..`), for Q4 the low
/// and high nibbles of line `L` (the same elements).
///
/// # Safety
/// NEON + dotprod; `lines` points at the code lines of a whole record of
/// `W`; `g0 + RG <= 4`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
#[allow(clippy::needless_range_loop)] // g indexes the sums and the line registers alike
unsafe fn x16_lane<
    W: X16Block,
    const L: i32,
    const RG: usize,
    const NC: usize,
    const SPLIT: usize,
>(
    lines: *const u8,
    g0: usize,
    act: &[[int8x16_t; 2]; NC],
    sums: &mut [[[int32x4_t; RG]; NC]; SPLIT],
) {
    let line = L as usize;
    if W::CODE_BYTES == 32 {
        for h in 0..2 {
            for g in 0..RG {
                // SAFETY: line 4h + L < 8 lines of 64 bytes, register
                // g0 + g < 4 of 16 bytes: inside the record.
                let w = unsafe { vld1q_s8(lines.add(64 * (4 * h + line) + 16 * (g0 + g)).cast()) };
                for c in 0..NC {
                    let s = &mut sums[h % SPLIT][c][g];
                    // SAFETY: dotprod guaranteed by the caller.
                    *s = unsafe { sdot_lane::<L>(*s, w, act[c][h]) };
                }
            }
        }
    } else {
        let mask = vdupq_n_u8(0x0F);
        for g in 0..RG {
            // SAFETY: line L < 4 lines of 64 bytes, register g0 + g < 4.
            let q = unsafe { vld1q_u8(lines.add(64 * line + 16 * (g0 + g))) };
            let lo = vreinterpretq_s8_u8(vandq_u8(q, mask));
            let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
            for c in 0..NC {
                // SAFETY: dotprod guaranteed by the caller.
                unsafe {
                    sums[0][c][g] = sdot_lane::<L>(sums[0][c][g], lo, act[c][0]);
                    sums[1 % SPLIT][c][g] = sdot_lane::<L>(sums[1 % SPLIT][c][g], hi, act[c][1]);
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
    use half::f16;

    fn dotprod() -> bool {
        super::super::supports(Isa::Dotprod)
    }

    #[test]
    fn sdot_matches_scalar_lane_sums() {
        if !dotprod() {
            return;
        }
        let x: [i8; 16] = std::array::from_fn(|i| ((i as i32 - 8) * 15) as i8);
        let y: [i8; 16] = std::array::from_fn(|i| (127 - 17 * i as i32) as i8);
        let mut lanes = [0i32; 4];
        // SAFETY: dotprod detected above; arrays are 16 bytes, lanes 4 i32.
        unsafe {
            let r = sdot(vdupq_n_s32(100), vld1q_s8(x.as_ptr()), vld1q_s8(y.as_ptr()));
            vst1q_s32(lanes.as_mut_ptr(), r);
        }
        for (lane, got) in lanes.iter().enumerate() {
            let want: i32 = 100
                + (0..4)
                    .map(|k| i32::from(x[4 * lane + k]) * i32::from(y[4 * lane + k]))
                    .sum::<i32>();
            assert_eq!(*got, want, "lane {lane}");
        }
    }

    #[test]
    fn legacy_dots_match_reference() {
        if !dotprod() {
            return;
        }
        let mut r = rng(11);
        for n in BLOCK_COUNTS {
            let (w, a) = (q4_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            assert_close(
                "q4_0_q8_0",
                dot(&w, &a),
                ref_q4_0_q8_0(&w, &a),
                BUDGET_LEGACY,
            );
            let (w, a) = (q4_1_blocks(&mut r, n), q8_1_blocks(&mut r, n));
            assert_close(
                "q4_1_q8_1",
                dot(&w, &a),
                ref_q4_1_q8_1(&w, &a),
                BUDGET_LEGACY,
            );
            let (w, a) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            assert_close(
                "q8_0_q8_0",
                dot(&w, &a),
                ref_q8_0_q8_0(&w, &a),
                BUDGET_LEGACY,
            );
        }
    }

    #[test]
    fn k_quant_dots_match_reference() {
        if !dotprod() {
            return;
        }
        let mut r = rng(12);
        for n in BLOCK_COUNTS {
            let a = q8k_blocks(&mut r, n);
            let w = q4k_blocks(&mut r, n);
            assert_close(
                &format!("q4_k n={n}"),
                dot(&w, &a),
                ref_q4k_q8k(&w, &a),
                BUDGET_K,
            );
            let w = q5k_blocks(&mut r, n);
            assert_close(
                &format!("q5_k n={n}"),
                dot(&w, &a),
                ref_q5k_q8k(&w, &a),
                BUDGET_K,
            );
            let w = q6k_blocks(&mut r, n);
            assert_close(
                &format!("q6_k n={n}"),
                dot(&w, &a),
                ref_q6k_q8k(&w, &a),
                BUDGET_K,
            );
        }
    }

    /// One hot weight at a time finds any element-order mix-up that random
    /// data might average away: the dot must pick exactly that activation.
    #[test]
    fn k_quant_element_order_matches_reference() {
        if !dotprod() {
            return;
        }
        let mut r = rng(13);
        let a = q8k_blocks(&mut r, 1);
        for i in (0..256).step_by(7) {
            let mut w = q6k_blocks(&mut r, 1);
            w[0].d = f16::ONE;
            let ref_one = ref_q6k_q8k(&w, &a);
            assert_close(&format!("q6_k random {i}"), dot(&w, &a), ref_one, BUDGET_K);
            // all codes at 32 (value 0) except weight i
            w[0].ql = [0; 128];
            w[0].qh = [0xAA; 64];
            w[0].scales = [1; 16];
            let (half, k) = (i / 128, i % 128);
            let (quarter, l) = (k / 32, k % 32);
            let byte = 64 * half + l + if quarter % 2 == 1 { 32 } else { 0 };
            w[0].ql[byte] |= if quarter >= 2 { 0x50 } else { 0x05 };
            let want = f64::from(a[0].d) * 5.0 * f64::from(a[0].qs[i]);
            let got = dot(&w, &a);
            assert!(
                (f64::from(got) - want).abs() <= want.abs() * 1e-5 + 1e-9,
                "q6_k weight {i}: {got} vs {want}"
            );
            assert!(
                (ref_q6k_q8k(&w, &a).0 - want).abs() <= want.abs() * 1e-9 + 1e-12,
                "reference q6_k weight {i}"
            );
        }
    }

    #[test]
    fn mismatched_lengths_use_the_common_prefix() {
        if !dotprod() {
            return;
        }
        let mut r = rng(14);
        let (w, a) = (q4k_blocks(&mut r, 4), q8k_blocks(&mut r, 2));
        assert_close(
            "q4_k prefix",
            dot(&w, &a),
            ref_q4k_q8k(&w[..2], &a),
            BUDGET_K,
        );
    }
}
