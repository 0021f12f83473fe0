//! `smmla` kernels (Armv8.6 int8 matrix multiply: Cortex-A510/A710/X2 and
//! later phones).
//!
//! `smmla` takes two 16-byte operands as 2x8 row-major matrices `X`, `Y` and
//! accumulates the 2x2 product `X·Yᵀ`: lanes `[x0·y0, x0·y1, x1·y0, x1·y1]`.
//! Sixteen codes of each of two rows, zipped by 64-bit halves, are two such
//! operands, so two `smmla` cover 16 elements of two rows against two
//! columns.
//!
//! * Tiles ([`tiles`], generic over the block views of [`super::codes`], so
//!   every integer weight type has them): row pairs against column pairs,
//!   each 16-code vector of a block unpacked and zipped once for all column
//!   pairs, the sub-block scales applied per row lane (`mla` by `[s, s, s',
//!   s']`), all four lanes useful; this is where i8mm pays, in a prefill
//!   matmul.
//!   * Gemm table entries (the matmul over the file's layout, every integer
//!     type): register tiles of 4 weight rows x 4 activation columns,
//!     smaller tiles at the edges, and single dots ([`dot_kernel`]) for an
//!     odd last row or column, decode's one column included.
//!   * 2x2 kernels, offered through `super::dot2x2_table`.
//! * x16 entries (weights packed at load time, [`crate::quant::x16`]), which
//!   the cpu backend uses for every matmul of a type once a table has them,
//!   prefill and decode: two lines of a 4-row register zipped by 32-bit
//!   lanes are two 2x8 row pairs (8 consecutive codes of each row), met by
//!   `smmla` with zipped column pairs; decode's one column and an odd last
//!   column are zipped with themselves ([`x16_column`]), so half of each
//!   `smmla`'s products repeat the column and are dropped.
//! * Single-row table entries ([`dot_kernel`]): 16 weight codes read as a
//!   2x8 matrix against the matching 16 activation codes read the same way;
//!   the diagonal lanes 0 and 3 are chunk0·chunk0 and chunk1·chunk1, and the
//!   off-diagonal lanes are never read (half the MACs wasted). One `smmla`
//!   per 16 bytes and no shuffles, as many as `sdot`.
//!
//! Every path gives an output the same bits whatever its column is batched
//! with (decode, an odd last column, a prefill pair) and whatever row a call
//! starts at, as every other tier does, so prefill and decode of a token
//! agree bit for bit (a restored session or a warm prefix then follows an
//! uninterrupted run through a near-tie). Integer sums are exact in any
//! order; the float steps are what must not change, and all paths take those
//! of a tile lane: per block, one fused multiply-add of the block's integer
//! total by `d·a.d` (x16: by the row's and the column's scales), then the
//! minimum term. A single dot adds its diagonal lanes as integers first and
//! takes those steps in a scalar register; [`x16_column`] gathers its
//! column's lanes of two row pairs with one `uzp1` and takes them 4 rows at
//! a time.
//!
//! The cost, in the release build's inner loops (counted with
//! `aarch64-linux-gnu-objdump`, not timed):
//! * x16, one column, per 32-element block of a 16-row panel: 32 `smmla`
//!   (the dotprod kernel: 32 `sdot`), plus 16 zips pairing the weight rows,
//!   4 `dup` pairing the column with itself and 4 `uzp1`: 163 instructions
//!   for Q4_0 (a few of them accumulator spills), 156 for Q4_1, 143 for Q8_0,
//!   against 128, 134 and 104 for the `sdot` kernel. Decode streams each
//!   weight byte once per token and waits on memory, so these register
//!   instructions should mostly overlap the loads (not measured on a phone).
//! * gemm, one column: 2 `smmla` per row and 32-element block, as before,
//!   and 2 more instructions for the integer sum of the diagonal lanes
//!   (Q4_0 24, Q8_0 20 per row and block; Q4_K 137 per row and 256-element
//!   block). Pairing the column with itself in a 4x2 tile instead would take
//!   as many `smmla` and zip the weight rows too: 103 instructions per 4
//!   rows of Q4_0 against 4 x 24.

use super::codes::{ends_group, for_each_vec, ActCodes, WeightCodes};
use super::dotprod::{self, is_q4_0, X16Panel};
use super::neon::{f16_to_f32, load_f16x4, load_q8};
use crate::dispatch::{gemm_by_dots, gemm_shape_ok, KernelTable, WeightRow};
use crate::quant::blocks::Q8Act;
use crate::quant::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use crate::quant::x16::shape_ok as x16_shape_ok;
use crate::quant::x16::{X16Block, PANEL_ROWS};
use std::arch::aarch64::*;
use std::arch::asm;

/// Entries of the i8mm tier. Only called by `super::table` after detection.
pub(super) fn overrides(base: KernelTable) -> KernelTable {
    KernelTable {
        q4_0: WeightRow {
            dot,
            gemm: Some(gemm),
            x16: Some(q4_0_q8_0_x16),
        },
        q4_1: WeightRow {
            dot,
            gemm: Some(gemm),
            x16: Some(q4_1_q8_1_x16),
        },
        q5_0: WeightRow {
            dot,
            gemm: Some(gemm),
            ..base.q5_0
        },
        q5_1: WeightRow {
            dot,
            gemm: Some(gemm),
            ..base.q5_1
        },
        q8_0: WeightRow {
            dot,
            gemm: Some(gemm),
            x16: Some(q8_0_q8_0_x16),
        },
        q2_k: WeightRow {
            dot,
            gemm: Some(gemm),
            ..base.q2_k
        },
        q3_k: WeightRow {
            dot,
            gemm: Some(gemm),
            ..base.q3_k
        },
        q4_k: WeightRow {
            dot,
            gemm: Some(gemm),
            ..base.q4_k
        },
        q5_k: WeightRow {
            dot,
            gemm: Some(gemm),
            ..base.q5_k
        },
        q6_k: WeightRow {
            dot,
            gemm: Some(gemm),
            ..base.q6_k
        },
        iq4_nl: WeightRow {
            dot,
            gemm: Some(gemm),
            ..base.iq4_nl
        },
        iq4_xs: WeightRow {
            dot,
            gemm: Some(gemm),
            ..base.iq4_xs
        },
        ..base
    }
}

// The safe wrappers are private to `arch::aarch64` and handed out only by
// `super::table` / `super::dot2x2_table` once `supports(Isa::I8mm)` (NEON +
// dotprod + i8mm) holds; each trims its slices to their common length.

/// The integer dot of every weight type (the row's block type picks `W`).
pub(super) fn dot<W: WeightCodes>(w: &[W], a: &[W::Act]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: NEON and i8mm were detected before this fn was handed out.
    unsafe { dot_kernel(&w[..n], &a[..n]) }
}

/// `[w0·a0, w0·a1, w1·a0, w1·a1]` over the blocks all four have.
pub(super) fn dot2x2<W: WeightCodes>(w0: &[W], w1: &[W], a0: &[W::Act], a1: &[W::Act]) -> [f32; 4] {
    // SAFETY: NEON and i8mm were detected before this fn was handed out;
    // `tiles` reads only the blocks all four slices have.
    unsafe { lanes(tiles::<W, 1, 1>([[w0, w1]], [[a0, a1]])[0][0]) }
}

/// The multi-row matmul over the file's layout (see
/// [`crate::dispatch::GemmFn`]): checks the shape (whole rows and columns,
/// an output that holds them all) and takes one dot per output if it does
/// not hold.
fn gemm<W: WeightCodes>(w: &[W], a: &[W::Act], bpr: usize, out: &mut [f32]) {
    if !gemm_shape_ok(w, a, bpr, out) {
        return gemm_by_dots(dot, w, a, bpr, out);
    }
    // SAFETY: NEON and i8mm were detected before this fn was handed out.
    unsafe { gemm_k(w, a, bpr, out) }
}

// The x16 wrappers: a bad shape goes to the dotprod wrapper (which then
// takes the reference path), every other call to `smmla`, one column
// included.

fn q4_0_q8_0_x16(p: &[u8], rows: usize, a: &[BlockQ8_0], bpr: usize, out: &mut [&mut [f32]]) {
    if !x16_shape_ok::<BlockQ4_0, _>(p, rows, a, bpr, out) {
        return dotprod::q4_0_q8_0_x16(p, rows, a, bpr, out);
    }
    // SAFETY: NEON, dotprod and i8mm were detected before this fn was handed
    // out; the shape was checked just now.
    unsafe { x16_k::<BlockQ4_0, BlockQ8_0>(p, rows, a, bpr, out) }
}

fn q4_1_q8_1_x16(p: &[u8], rows: usize, a: &[BlockQ8_1], bpr: usize, out: &mut [&mut [f32]]) {
    if !x16_shape_ok::<BlockQ4_1, _>(p, rows, a, bpr, out) {
        return dotprod::q4_1_q8_1_x16(p, rows, a, bpr, out);
    }
    // SAFETY: as above.
    unsafe { x16_k::<BlockQ4_1, BlockQ8_1>(p, rows, a, bpr, out) }
}

fn q8_0_q8_0_x16(p: &[u8], rows: usize, a: &[BlockQ8_0], bpr: usize, out: &mut [&mut [f32]]) {
    if !x16_shape_ok::<BlockQ8_0, _>(p, rows, a, bpr, out) {
        return dotprod::q8_0_q8_0_x16(p, rows, a, bpr, out);
    }
    // SAFETY: as above.
    unsafe { x16_k::<BlockQ8_0, BlockQ8_0>(p, rows, a, bpr, out) }
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

/// The i8mm tier's single-row integer dot, in the float order of a tile lane
/// (see [`tiles`]), so that a row's dot has the bits the gemm gives it.
///
/// Each 16-code vector meets its activation vector as two 2x8 matrices in
/// one `smmla`: the diagonal lanes 0 and 3 are elements 0..8 and 8..16, the
/// off-diagonal lanes are never read. A group's sums meet its integer scale
/// (`mla`) as in a tile, and the block's lanes 0 and 3 are added as integers,
/// which gives exactly the integer a tile lane holds (wrapping i32 sums do not
/// depend on their order); then the same scalar float steps as that lane:
/// one fused multiply-add by `d·a.d`, then the minimum term.
///
/// # Safety
/// NEON + i8mm.
#[target_feature(enable = "neon,i8mm")]
unsafe fn dot_kernel<W: WeightCodes>(w: &[W], a: &[W::Act]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        // SAFETY: the caller guarantees NEON.
        let scales = unsafe { wb.scales() };
        let (mut isum, mut t) = (vdupq_n_s32(0), vdupq_n_s32(0));
        for_each_vec!(I => {
            if I < W::VECS {
                // SAFETY: the caller guarantees NEON and i8mm; I < W::VECS.
                t = unsafe { smmla(t, wb.codes16(I), ab.codes16(I)) };
                if ends_group::<W>(I) {
                    isum = vmlaq_n_s32(isum, t, scales[I / W::VECS_PER_SCALE]);
                    t = vdupq_n_s32(0);
                }
            }
        });
        let total = vgetq_lane_s32::<0>(isum).wrapping_add(vgetq_lane_s32::<3>(isum));
        // SAFETY: the caller guarantees NEON.
        let d = unsafe { wb.d() * ab.d() };
        acc = (total as f32).mul_add(d, acc);
        if W::MIN {
            // SAFETY: the caller guarantees NEON.
            acc += unsafe { wb.min_term(ab) };
        }
    }
    acc
}

// ---- tiles: row pairs x column pairs, on any integer weight type ----

/// A 32-element activation block as (elements 0..16, elements 16..32).
type Block = (int8x16_t, int8x16_t);

/// Two 16-code vectors (of two rows, or two columns) as the two 2x8 `smmla`
/// operands over their 16 elements: elements 0..8 of both, then 8..16.
#[inline]
#[target_feature(enable = "neon")]
fn zip_rows(x: int8x16_t, y: int8x16_t) -> [int8x16_t; 2] {
    let (x, y) = (vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y));
    [
        vreinterpretq_s8_s64(vzip1q_s64(x, y)),
        vreinterpretq_s8_s64(vzip2q_s64(x, y)),
    ]
}

/// Two 32-element blocks as the four 2x8 `smmla` operands of one block:
/// chunk `k` (elements `8k..8k + 8`) of `x` in the low half, of `y` in the
/// high half.
#[inline]
#[target_feature(enable = "neon")]
fn zip_pair(x: Block, y: Block) -> [int8x16_t; 4] {
    let ([z0, z1], [z2, z3]) = (zip_rows(x.0, y.0), zip_rows(x.1, y.1));
    [z0, z1, z2, z3]
}

/// `[a, a, b, b]`: a row pair's per-lane factor in a tile
/// `[r0·c0, r0·c1, r1·c0, r1·c1]`.
#[inline]
#[target_feature(enable = "neon")]
fn row_lanes(a: f32, b: f32) -> float32x4_t {
    vcombine_f32(vdup_n_f32(a), vdup_n_f32(b))
}

/// `[a, a, b, b]` of integer sub-block scales.
#[inline]
#[target_feature(enable = "neon")]
fn row_lanes_i32(a: i32, b: i32) -> int32x4_t {
    vcombine_s32(vdup_n_s32(a), vdup_n_s32(b))
}

/// `[a, b, a, b]`: a column pair's per-lane factor in a tile.
#[inline]
#[target_feature(enable = "neon")]
fn col_lanes(a: f32, b: f32) -> float32x4_t {
    let ab = vset_lane_f32::<1>(b, vdup_n_f32(a));
    vcombine_f32(ab, ab)
}

#[inline]
#[target_feature(enable = "neon")]
fn lanes(v: float32x4_t) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    // SAFETY: four writable floats; NEON is part of every aarch64 target.
    unsafe { vst1q_f32(out.as_mut_ptr(), v) };
    out
}

/// Row pairs `w[p]` against column pairs `a[q]` over the blocks every slice
/// has: `[[lanes [r0·c0, r0·c1, r1·c0, r1·c1]; CP]; RP]`. Each 16-code
/// vector of a weight block is unpacked and zipped once for all `CP` column
/// pairs, each activation vector once for all `RP` row pairs; a group's
/// `smmla` sums meet the two rows' integer scales in one `mla`, the block's
/// float scales once per block.
///
/// # Safety
/// NEON + i8mm.
#[inline]
#[target_feature(enable = "neon,i8mm")]
#[allow(clippy::needless_range_loop)] // p and q index the tiles and their operands alike
unsafe fn tiles<W: WeightCodes, const RP: usize, const CP: usize>(
    w: [[&[W]; 2]; RP],
    a: [[&[W::Act]; 2]; CP],
) -> [[float32x4_t; CP]; RP] {
    let nb = w
        .iter()
        .flatten()
        .map(|s| s.len())
        .chain(a.iter().flatten().map(|s| s.len()))
        .min()
        .unwrap_or(0);
    let mut acc = [[vdupq_n_f32(0.0); CP]; RP];
    for b in 0..nb {
        let wb: [[&W; 2]; RP] = std::array::from_fn(|p| [&w[p][0][b], &w[p][1][b]]);
        let ab: [[&W::Act; 2]; CP] = std::array::from_fn(|q| [&a[q][0][b], &a[q][1][b]]);
        let mut scales = [[[0i32; 16]; 2]; RP];
        for (s, rows) in scales.iter_mut().zip(&wb) {
            // SAFETY: the caller guarantees NEON.
            *s = unsafe { [rows[0].scales(), rows[1].scales()] };
        }
        let mut isum = [[vdupq_n_s32(0); CP]; RP];
        let mut t = [[vdupq_n_s32(0); CP]; RP];
        for_each_vec!(I => {
            if I < W::VECS {
                let mut wz = [[vdupq_n_s8(0); 2]; RP];
                for (z, rows) in wz.iter_mut().zip(&wb) {
                    // SAFETY: the caller guarantees NEON; I < W::VECS.
                    let (x, y) = unsafe { (rows[0].codes16(I), rows[1].codes16(I)) };
                    *z = zip_rows(x, y);
                }
                let mut az = [[vdupq_n_s8(0); 2]; CP];
                for (z, cols) in az.iter_mut().zip(&ab) {
                    // SAFETY: as above (an activation block has W::VECS vectors).
                    let (x, y) = unsafe { (cols[0].codes16(I), cols[1].codes16(I)) };
                    *z = zip_rows(x, y);
                }
                for p in 0..RP {
                    for q in 0..CP {
                        // SAFETY: the caller guarantees i8mm.
                        t[p][q] = unsafe { smmla(smmla(t[p][q], wz[p][0], az[q][0]), wz[p][1], az[q][1]) };
                    }
                }
                if ends_group::<W>(I) {
                    let g = I / W::VECS_PER_SCALE;
                    for p in 0..RP {
                        let s = row_lanes_i32(scales[p][0][g], scales[p][1][g]);
                        for q in 0..CP {
                            isum[p][q] = vmlaq_s32(isum[p][q], t[p][q], s);
                            t[p][q] = vdupq_n_s32(0);
                        }
                    }
                }
            }
        });
        for p in 0..RP {
            let [r0, r1] = wb[p];
            // SAFETY: the caller guarantees NEON.
            let wd = unsafe { row_lanes(r0.d(), r1.d()) };
            for q in 0..CP {
                let [c0, c1] = ab[q];
                // SAFETY: the caller guarantees NEON.
                let d = vmulq_f32(wd, unsafe { col_lanes(c0.d(), c1.d()) });
                acc[p][q] = vfmaq_f32(acc[p][q], vcvtq_f32_s32(isum[p][q]), d);
                if W::MIN {
                    // SAFETY: the caller guarantees NEON.
                    let mins = unsafe {
                        [
                            r0.min_term(c0),
                            r0.min_term(c1),
                            r1.min_term(c0),
                            r1.min_term(c1),
                        ]
                    };
                    // SAFETY: four readable floats; NEON guaranteed by the caller.
                    acc[p][q] = vaddq_f32(acc[p][q], unsafe { vld1q_f32(mins.as_ptr()) });
                }
            }
        }
    }
    acc
}

/// Tile results of rows `r0 ..` and columns `c0 ..` into the column-major
/// output (`out[c * rows + r]`).
///
/// # Panics
/// If `out` lacks an output of the tile (the wrappers check the shape).
#[inline]
#[target_feature(enable = "neon")]
fn store_tiles<const RP: usize, const CP: usize>(
    t: &[[float32x4_t; CP]; RP],
    (r0, c0): (usize, usize),
    rows: usize,
    out: &mut [f32],
) {
    for (p, per_row_pair) in t.iter().enumerate() {
        for (q, v) in per_row_pair.iter().enumerate() {
            let (r, c) = (r0 + 2 * p, c0 + 2 * q);
            let [rc, rc1, r1c, r1c1] = lanes(*v);
            out[c * rows + r] = rc;
            out[(c + 1) * rows + r] = rc1;
            out[c * rows + r + 1] = r1c;
            out[(c + 1) * rows + r + 1] = r1c1;
        }
    }
}

/// # Safety
/// NEON + i8mm, and the shape checked by `gemm_shape_ok`.
#[target_feature(enable = "neon,i8mm")]
unsafe fn gemm_k<W: WeightCodes>(w: &[W], a: &[W::Act], bpr: usize, out: &mut [f32]) {
    let (rows, cols) = (w.len() / bpr, a.len() / bpr);
    let (rows2, cols2) = (rows & !1, cols & !1);
    let row = |r: usize| &w[r * bpr..(r + 1) * bpr];
    let col = |c: usize| &a[c * bpr..(c + 1) * bpr];
    let col_pairs = |c0: usize| [[col(c0), col(c0 + 1)], [col(c0 + 2), col(c0 + 3)]];
    let mut r0 = 0;
    while r0 + 4 <= rows2 {
        let rp = [[row(r0), row(r0 + 1)], [row(r0 + 2), row(r0 + 3)]];
        let mut c0 = 0;
        while c0 + 4 <= cols2 {
            // SAFETY: NEON + i8mm guaranteed by the caller (also below).
            let t = unsafe { tiles::<W, 2, 2>(rp, col_pairs(c0)) };
            store_tiles(&t, (r0, c0), rows, out);
            c0 += 4;
        }
        if c0 < cols2 {
            // SAFETY: as above.
            let t = unsafe { tiles::<W, 2, 1>(rp, [[col(c0), col(c0 + 1)]]) };
            store_tiles(&t, (r0, c0), rows, out);
        }
        r0 += 4;
    }
    if r0 < rows2 {
        let rp = [[row(r0), row(r0 + 1)]];
        let mut c0 = 0;
        while c0 + 4 <= cols2 {
            // SAFETY: as above.
            let t = unsafe { tiles::<W, 1, 2>(rp, col_pairs(c0)) };
            store_tiles(&t, (r0, c0), rows, out);
            c0 += 4;
        }
        if c0 < cols2 {
            // SAFETY: as above.
            let t = unsafe { tiles::<W, 1, 1>(rp, [[col(c0), col(c0 + 1)]]) };
            store_tiles(&t, (r0, c0), rows, out);
        }
    }
    // an odd last row against every column, an odd last column (decode's
    // only one) against the other rows: single dots, whose float steps are
    // those of a tile lane (`dot_kernel`), so these outputs have the bits
    // they get in a tile of a larger or shifted product
    if rows % 2 == 1 {
        let r = rows - 1;
        for c in 0..cols {
            // SAFETY: as above.
            out[c * rows + r] = unsafe { dot_kernel(row(r), col(c)) };
        }
    }
    if cols % 2 == 1 {
        let c = cols - 1;
        for r in 0..rows2 {
            // SAFETY: as above.
            out[c * rows + r] = unsafe { dot_kernel(row(r), col(c)) };
        }
    }
}

// ---- x16: smmla over the packed panels ----

/// Column pairs through `smmla` tiles, an odd last column (decode's only
/// one) through [`x16_column`], in the same float steps.
///
/// # Safety
/// NEON + dotprod + i8mm, and the shape checked by `x16_shape_ok`.
#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn x16_k<W: X16Block, A: Q8Act>(
    p: &[u8],
    rows: usize,
    a: &[A],
    bpr: usize,
    out: &mut [&mut [f32]],
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
                // holds rows for each column; the caller guarantees the features.
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
        if cols2 < cols {
            // SAFETY: as above, for column cols2 < cols.
            unsafe { x16_column::<W, A>(&k, cols2, out) };
        }
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
    out: &mut [&mut [f32]],
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
                    // SAFETY: columns c, c + 1 < cols exist in out, each
                    // with rows > r + dr outputs (shape checked).
                    unsafe {
                        *out.get_unchecked_mut(c).get_unchecked_mut(r + dr) = pair[0];
                        *out.get_unchecked_mut(c + 1).get_unchecked_mut(r + dr) = pair[1];
                    }
                }
            }
        }
    }
}

/// All 16 rows of a panel against column `c` alone, in the float steps of
/// [`x16_tiles`]: the column is zipped with itself into the `smmla`
/// operands (half of each `smmla`'s products are the same column again and
/// are dropped), met by the same row pairs. The integer lanes of column
/// `c`, lanes 0 and 2 of a 2x2 tile, of two row pairs are gathered by one
/// `uzp1` into the 4 rows of a register, and the float steps of a tile lane
/// follow, 4 rows at a time: the same products `d·a.d` and `m·a.s`, the same
/// fused multiply-adds in the same order. One pass over the panel,
/// prefetching ahead as the dotprod decode kernel does.
///
/// # Safety
/// NEON + i8mm; `k.panel` holds `k.bpr` records of `W`; column `c` exists in
/// `k.a` (and `k.q4_0_offsets` for Q4_0); `out` holds `k.rows` outputs of
/// every column.
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn x16_column<W: X16Block, A: Q8Act>(k: &X16Panel<'_, A>, c: usize, out: &mut [&mut [f32]]) {
    let min = W::PLANES == 2;
    let bpr = k.bpr;
    let mut acc = [vdupq_n_f32(0.0); 4];
    for b in 0..bpr {
        let rec = k.panel.wrapping_add(b * W::RECORD);
        dotprod::prefetch_ahead(rec, W::RECORD);
        let i = c * bpr + b;
        // SAFETY: column c < cols, so i < cols * bpr = a.len().
        let x = unsafe { k.a.get_unchecked(i) };
        // SAFETY: 32 code bytes; NEON guaranteed by the caller.
        let codes = unsafe { load_q8(x.codes()) };
        let az = zip_pair(codes, codes);
        let ad = f16_to_f32(x.scale());
        let asum = if min { f16_to_f32(x.sum_scaled()) } else { 0.0 };
        let offset = if is_q4_0::<W>() {
            // SAFETY: q4_0_offsets has one entry per activation block.
            vdupq_n_s32(unsafe { *k.q4_0_offsets.get_unchecked(i) })
        } else {
            vdupq_n_s32(0)
        };
        for (g, acc) in acc.iter_mut().enumerate() {
            // SAFETY: b < bpr, so `rec` is a whole record: its code lines
            // follow the PLANES scale planes; g < 4.
            let ops = unsafe { x16_row_pairs::<W>(rec.add(32 * W::PLANES), g) };
            let mut t = [vdupq_n_s32(0); 2];
            for (t, pair) in t.iter_mut().zip(&ops) {
                for (w, a) in pair.iter().zip(&az) {
                    // SAFETY: i8mm guaranteed by the caller.
                    *t = unsafe { smmla(*t, *w, *a) };
                }
            }
            // rows 4g..4g + 4 against c: lanes 0 and 2 of both row pairs
            let mut t = vuzp1q_s32(t[0], t[1]);
            if is_q4_0::<W>() {
                t = vsubq_s32(t, offset);
            }
            // SAFETY: scale plane p holds 16 f16 at 32p; rows 4g..4g + 4 are
            // bytes 8g..8g + 8 of it.
            let dw = unsafe { load_f16x4(rec.add(8 * g)) };
            *acc = vfmaq_f32(*acc, vcvtq_f32_s32(t), vmulq_n_f32(dw, ad));
            if min {
                // SAFETY: as above, in the second (minimum) plane.
                let mw = unsafe { load_f16x4(rec.add(32 + 8 * g)) };
                *acc = vfmaq_n_f32(*acc, mw, asum);
            }
        }
    }
    for (g, v) in acc.iter().enumerate() {
        let r = k.r0 + 4 * g;
        if r >= k.rows {
            continue; // padding rows of the last panel
        }
        // SAFETY: column c < cols exists in out (shape checked).
        let col = unsafe { out.get_unchecked_mut(c) };
        if r + 4 <= k.rows {
            // SAFETY: r + 4 <= rows <= col.len().
            unsafe { vst1q_f32(col.as_mut_ptr().add(r), *v) };
        } else {
            let mut lanes = [0.0f32; 4];
            // SAFETY: four floats in bounds of `lanes`.
            unsafe { vst1q_f32(lanes.as_mut_ptr(), *v) };
            for (dr, x) in lanes.into_iter().enumerate().take(k.rows - r) {
                // SAFETY: r + dr < rows <= col.len().
                unsafe { *col.get_unchecked_mut(r + dr) = x };
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
                dot(&w, &a),
                ref_q4_0_q8_0(&w, &a),
                BUDGET_LEGACY,
            );
            let (w, a) = (q4_1_blocks(&mut r, n), q8_1_blocks(&mut r, n));
            assert_close(
                &format!("q4_1 n={n}"),
                dot(&w, &a),
                ref_q4_1_q8_1(&w, &a),
                BUDGET_LEGACY,
            );
            let (w, a) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            assert_close(
                &format!("q8_0 n={n}"),
                dot(&w, &a),
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
            let got = dot2x2(&w0, &w1, &a0, &a1);
            check_2x2(
                &format!("q4_0 2x2 n={n}"),
                got,
                [&w0, &w1],
                [&a0, &a1],
                ref_q4_0_q8_0,
            );

            let (w0, w1) = (q4_1_blocks(&mut r, n), q4_1_blocks(&mut r, n));
            let (a0, a1) = (q8_1_blocks(&mut r, n), q8_1_blocks(&mut r, n));
            let got = dot2x2(&w0, &w1, &a0, &a1);
            check_2x2(
                &format!("q4_1 2x2 n={n}"),
                got,
                [&w0, &w1],
                [&a0, &a1],
                ref_q4_1_q8_1,
            );

            let (w0, w1) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            let (a0, a1) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            let got = dot2x2(&w0, &w1, &a0, &a1);
            check_2x2(
                &format!("q8_0 2x2 n={n}"),
                got,
                [&w0, &w1],
                [&a0, &a1],
                ref_q8_0_q8_0,
            );
        }
    }

    /// `rows` x `cols` of `W` against its activations (`bpr` blocks each):
    /// every single-row dot and every 2x2 tile has the bits the gemm gives
    /// that output, so a caller on `dot` (the gemm's fallback for a bad
    /// shape) or `dot2x2` gets what a batched product gets. Exact equality is
    /// the property: these paths share one float order by construction.
    fn check_dot_bits<W: WeightCodes>(what: &str, w: &[W], a: &[W::Act], bpr: usize) {
        let (rows, cols) = (w.len() / bpr, a.len() / bpr);
        let mut all = vec![f32::NAN; rows * cols];
        gemm(w, a, bpr, &mut all);
        let row = |r: usize| &w[r * bpr..(r + 1) * bpr];
        let col = |c: usize| &a[c * bpr..(c + 1) * bpr];
        let at = |r: usize, c: usize| all[c * rows + r].to_bits();
        for r in 0..rows {
            for c in 0..cols {
                let one = dot(row(r), col(c)).to_bits();
                assert_eq!(one, at(r, c), "{what} bpr={bpr}: dot of row {r} col {c}");
            }
        }
        for r in 0..rows - 1 {
            for c in 0..cols - 1 {
                let got = dot2x2(row(r), row(r + 1), col(c), col(c + 1)).map(f32::to_bits);
                let want = [at(r, c), at(r, c + 1), at(r + 1, c), at(r + 1, c + 1)];
                assert_eq!(got, want, "{what} bpr={bpr}: 2x2 from row {r} col {c}");
            }
        }
    }

    #[test]
    fn dots_and_tiles_have_the_bits_of_the_gemm() {
        if !i8mm() {
            return;
        }
        let mut r = rng(24);
        // 5 rows x 3 columns: 4-row and 2-row tiles, a column pair and an
        // odd last row and column
        let (rows, cols) = (5, 3);
        for bpr in [1, 3] {
            let (m, n) = (rows * bpr, cols * bpr);
            let (w, a) = (q4_0_blocks(&mut r, m), q8_0_blocks(&mut r, n));
            check_dot_bits("q4_0", &w, &a, bpr);
            let (w, a) = (q4_1_blocks(&mut r, m), q8_1_blocks(&mut r, n));
            check_dot_bits("q4_1", &w, &a, bpr);
            let (w, a) = (q5_0_blocks(&mut r, m), q8_0_blocks(&mut r, n));
            check_dot_bits("q5_0", &w, &a, bpr);
            let (w, a) = (q5_1_blocks(&mut r, m), q8_1_blocks(&mut r, n));
            check_dot_bits("q5_1", &w, &a, bpr);
            let (w, a) = (q8_0_blocks(&mut r, m), q8_0_blocks(&mut r, n));
            check_dot_bits("q8_0", &w, &a, bpr);
            let (w, a) = (iq4_nl_blocks(&mut r, m), q8_0_blocks(&mut r, n));
            check_dot_bits("iq4_nl", &w, &a, bpr);
            let a = q8k_blocks(&mut r, n);
            check_dot_bits("q2_k", &q2k_blocks(&mut r, m), &a, bpr);
            check_dot_bits("q3_k", &q3k_blocks(&mut r, m), &a, bpr);
            check_dot_bits("q4_k", &q4k_blocks(&mut r, m), &a, bpr);
            check_dot_bits("q5_k", &q5k_blocks(&mut r, m), &a, bpr);
            check_dot_bits("q6_k", &q6k_blocks(&mut r, m), &a, bpr);
            check_dot_bits("iq4_xs", &iq4xs_blocks(&mut r, m), &a, bpr);
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
        let got = dot2x2(&w0, &w1, &a0, &a1);
        check_2x2(
            "q8_0 2x2 prefix",
            got,
            [&w0[..3], &w1[..3]],
            [&a0[..3], &a1[..3]],
            ref_q8_0_q8_0,
        );
    }
}
