//! The "x16" layout: weight blocks regrouped at load time into panels of 16
//! rows, the layout the lane-per-row gemm kernels consume with plain
//! contiguous loads (without it they gather 16 rows per block at run time,
//! which bounds the decode matvec).
//!
//! A matrix of `rows` rows of `bpr` blocks becomes `ceil(rows / 16)` panels,
//! each of `bpr` records, panel-major. A record holds block `b` of the 16
//! rows of its panel, field by field as the block type declares them
//! ([`WeightBlock::X16_FIELDS`]): a field of `len` bytes stored in pieces of
//! `lane` bytes becomes `len / lane` groups of `16 * lane` bytes, where
//! piece `g` of row `r` sits at `16 * lane * g + lane * r`. For the legacy
//! quants:
//!
//! * Q4_0 (`d`, `qs[16]`): one plane of 16 f16 scales (32 bytes), then 4
//!   lines of 64 bytes whose 4-byte lane `r` holds bytes `4k..4k + 4` of
//!   row `r`'s codes;
//! * Q4_1: planes `d` and `m`, then the 4 code lines;
//! * Q8_0: plane `d`, then 8 code lines;
//! * Q5_0: plane `d`, one line of the 32 fifth bits (`qh`), then the 4
//!   code lines of Q4_0.
//!
//! The k-quants put their super-block scales first, then their 6-/8-bit
//! sub-block scales as lines, then their code lines (each type's
//! `X16_FIELDS` documents its record):
//!
//! * Q4_K (2304 bytes): planes `d`, `dmin`, 3 scale lines, 32 `qs` lines;
//! * Q5_K (2816 bytes): as Q4_K with 8 `qh` lines before the `qs` lines;
//! * Q6_K (3360 bytes): plane `d`, 4 scale lines, then its 16 `qh` and
//!   32 `ql` lines in the order the kernels read them, a `qh` line and two
//!   `ql` lines per step ([`super::q6_k::x16_step`]), so decode reads the
//!   record front to back.
//!
//! So every 4-byte lane of a line holds the same bytes of its row as the
//! block does, and a kernel reads the fields of 16 rows with 64-byte loads
//! ([`X16Block::field_start`] gives where each field starts).
//!
//! Rows past the end of the matrix in its last panel are all zero (scale 0,
//! so they contribute nothing). Packing is a byte permutation: every block
//! is recovered exactly by [`unpack_block`]. A block type without fields
//! has no x16 layout and is never packed.

use super::WeightBlock;
use crate::dispatch::{gemm_by_dots, gemm_shape_ok, VecDotFn, X16GemmFn};

/// Rows per panel.
pub const PANEL_ROWS: usize = 16;

/// One field of a block as an x16 record stores it: `len` bytes from
/// `offset` in the block, in pieces of `lane` bytes (2: an f16 plane; 4:
/// the 4-byte lanes the integer dot instructions take).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X16Field {
    pub offset: usize,
    pub len: usize,
    pub lane: usize,
}

impl X16Field {
    /// An f16 at `offset`: a plane of 16 scales.
    pub const fn f16(offset: usize) -> X16Field {
        X16Field {
            offset,
            len: 2,
            lane: 2,
        }
    }
    /// `len` code bytes at `offset` in 4-byte lanes.
    pub const fn codes(offset: usize, len: usize) -> X16Field {
        X16Field {
            offset,
            len,
            lane: 4,
        }
    }
}

/// Facts of a block type's x16 record, derived from its fields (every
/// weight block has them; a type without fields has an empty record).
pub trait X16Block: WeightBlock {
    /// Bytes of one record (16 rows, one block).
    const RECORD: usize = record_bytes(Self::X16_FIELDS);
    /// f16 planes (2-byte fields) before the first 4-byte field: the
    /// scales of the legacy quants.
    const PLANES: usize = planes(Self::X16_FIELDS);
    /// Bytes of the last field: the codes of the legacy quants.
    const CODE_BYTES: usize = last_len(Self::X16_FIELDS);
    /// Byte offset in a record of field `i` of `X16_FIELDS`.
    fn field_start(i: usize) -> usize {
        field_start(Self::X16_FIELDS, i)
    }
}

impl<W: WeightBlock> X16Block for W {}

const fn record_bytes(fields: &[X16Field]) -> usize {
    let mut i = 0;
    let mut n = 0;
    while i < fields.len() {
        n += PANEL_ROWS * fields[i].len;
        i += 1;
    }
    n
}

const fn field_start(fields: &[X16Field], i: usize) -> usize {
    let mut k = 0;
    let mut n = 0;
    while k < i && k < fields.len() {
        n += PANEL_ROWS * fields[k].len;
        k += 1;
    }
    n
}

const fn planes(fields: &[X16Field]) -> usize {
    let mut i = 0;
    while i < fields.len() && fields[i].lane == 2 {
        i += 1;
    }
    i
}

const fn last_len(fields: &[X16Field]) -> usize {
    match fields.last() {
        Some(f) => f.len,
        None => 0,
    }
}

/// Whether `W` has an x16 layout.
pub const fn has_layout<W: WeightBlock>() -> bool {
    !W::X16_FIELDS.is_empty()
}

/// Bytes of the packed form of `rows` rows of `bpr` blocks of `B`.
pub fn packed_bytes<B: X16Block>(rows: usize, bpr: usize) -> Option<usize> {
    rows.div_ceil(PANEL_ROWS)
        .checked_mul(bpr)?
        .checked_mul(B::RECORD)
}

/// The shape checks every SIMD x16 wrapper makes before its kernel: whole
/// columns, an output of at least `rows` for each of them, and `packed`
/// holding exactly the panels of `rows` rows of `bpr` blocks.
pub(crate) fn shape_ok<W: X16Block, A>(
    packed: &[u8],
    rows: usize,
    a: &[A],
    bpr: usize,
    out: &[&mut [f32]],
) -> bool {
    bpr > 0
        && a.len().is_multiple_of(bpr)
        && packed_bytes::<W>(rows, bpr) == Some(packed.len())
        && out
            .get(..a.len() / bpr)
            .is_some_and(|o| o.iter().all(|c| c.len() >= rows))
}

/// Runs the x16 gemm `kernel` into `out`, contiguous: `out[c * rows + r]`
/// (`out.len() >= rows * cols`; a `rows` of 0 writes nothing). For tests.
#[cfg(test)]
pub(crate) fn run_into<A>(
    kernel: X16GemmFn<A>,
    packed: &[u8],
    rows: usize,
    a: &[A],
    bpr: usize,
    out: &mut [f32],
) {
    if rows == 0 {
        return;
    }
    let mut cols: Vec<&mut [f32]> = out.chunks_exact_mut(rows).collect();
    kernel(packed, rows, a, bpr, &mut cols);
}

/// `(block range, record range)` of every piece of row `lane` in a record:
/// where each `lane`-byte piece of the block goes.
fn pieces<B: WeightBlock>(lane: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let mut start = 0;
    B::X16_FIELDS.iter().flat_map(move |f| {
        let base = start;
        start += PANEL_ROWS * f.len;
        (0..f.len / f.lane).map(move |g| {
            (
                f.offset + g * f.lane,
                base + PANEL_ROWS * f.lane * g + f.lane * lane,
                f.lane,
            )
        })
    })
}

/// Packs `w` (`rows` rows of `bpr` blocks, row-major) into `out`, which must
/// hold [`packed_bytes`] bytes (it is overwritten entirely).
///
/// # Panics
/// If the sizes disagree (a caller bug; `ops::PackedMatrix` checks them).
#[allow(clippy::panic)]
pub fn pack<B: X16Block>(w: &[B], bpr: usize, out: &mut [u8]) {
    let rows = w.len().checked_div(bpr).unwrap_or(0);
    if packed_bytes::<B>(rows, bpr) != Some(out.len()) || rows * bpr != w.len() {
        panic!(
            "x16::pack: {} blocks / {bpr} per row into {} bytes",
            w.len(),
            out.len()
        );
    }
    out.fill(0);
    if bpr == 0 {
        return;
    }
    for (r, row) in w.chunks_exact(bpr).enumerate() {
        let (panel, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
        for (b, blk) in row.iter().enumerate() {
            let rec = &mut out[(panel * bpr + b) * B::RECORD..][..B::RECORD];
            let bytes = bytemuck::bytes_of(blk);
            for (from, to, n) in pieces::<B>(lane) {
                rec[to..to + n].copy_from_slice(&bytes[from..from + n]);
            }
        }
    }
}

/// Block `b` of row `r` recovered from packed bytes.
pub fn unpack_block<B: X16Block>(packed: &[u8], bpr: usize, r: usize, b: usize) -> B {
    let (panel, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
    let rec = &packed[(panel * bpr + b) * B::RECORD..][..B::RECORD];
    let mut blk = B::zeroed();
    let bytes = bytemuck::bytes_of_mut(&mut blk);
    for (to, from, n) in pieces::<B>(lane) {
        bytes[to..to + n].copy_from_slice(&rec[from..from + n]);
    }
    blk
}

/// The reference packed gemm, with the contract of
/// [`crate::dispatch::X16GemmFn`]: every output through `dot` on the
/// recovered row. Used by tests and by tables without an x16 kernel.
pub fn gemm_ref<B: X16Block, A>(
    dot: VecDotFn<B, A>,
    packed: &[u8],
    rows: usize,
    a: &[A],
    bpr: usize,
    out: &mut [&mut [f32]],
) {
    if bpr == 0 {
        return;
    }
    let mut row = vec![B::zeroed(); bpr];
    for r in 0..rows {
        for (b, blk) in row.iter_mut().enumerate() {
            *blk = unpack_block(packed, bpr, r, b);
        }
        for (ac, oc) in a.chunks_exact(bpr).zip(out.iter_mut()) {
            if let Some(o) = oc.get_mut(r) {
                *o = dot(&row, ac);
            }
        }
    }
}

/// A gemm over the file's layout ([`crate::dispatch::GemmFn`]'s contract)
/// through an x16 kernel: each 16-row panel is packed into a scratch
/// record run (a byte permutation, a small fraction of the products when
/// several columns share it) and multiplied there. The multi-row entry of
/// the types whose SIMD kernels exist only for the x16 layout.
pub fn gemm_by_panels<B: X16Block>(
    kernel: X16GemmFn<B::Act>,
    w: &[B],
    a: &[B::Act],
    bpr: usize,
    out: &mut [f32],
) {
    if !gemm_shape_ok(w, a, bpr, out) {
        return gemm_by_dots(B::vec_dot_ref, w, a, bpr, out);
    }
    let (rows, cols) = (w.len() / bpr, a.len() / bpr);
    let mut panel = vec![0u8; bpr * B::RECORD];
    for (pi, chunk) in w.chunks(PANEL_ROWS * bpr).enumerate() {
        let nr = chunk.len() / bpr;
        pack(chunk, bpr, &mut panel);
        let r0 = pi * PANEL_ROWS;
        // the panel's rows of every column, written in place
        let mut part: Vec<&mut [f32]> = out
            .chunks_exact_mut(rows)
            .take(cols)
            .map(|c| &mut c[r0..r0 + nr])
            .collect();
        kernel(&panel, nr, a, bpr, &mut part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data::random_row;
    use crate::quant::{aligned_bytes, cast_blocks, quantize_row, DType};

    fn round_trip<B: X16Block>(rows: usize, bpr: usize) {
        let cols = bpr * B::ELEMS;
        let src = random_row(rows * cols, (rows * 31 + bpr) as u64);
        let rb = B::DTYPE.row_bytes(cols).unwrap();
        let mut q = aligned_bytes(rows * rb);
        for r in 0..rows {
            quantize_row(
                B::DTYPE,
                &src[r * cols..(r + 1) * cols],
                &mut q.as_bytes_mut()[r * rb..(r + 1) * rb],
            )
            .unwrap();
        }
        let w: &[B] = cast_blocks("test", B::DTYPE, q.as_bytes()).unwrap();
        let mut p = vec![0xAAu8; packed_bytes::<B>(rows, bpr).unwrap()];
        pack(w, bpr, &mut p);
        for r in 0..rows {
            for b in 0..bpr {
                let got: B = unpack_block(&p, bpr, r, b);
                assert_eq!(
                    bytemuck::bytes_of(&got),
                    bytemuck::bytes_of(&w[r * bpr + b]),
                    "{} row {r} block {b}",
                    B::DTYPE
                );
            }
        }
        // padding rows of the last panel are zero
        let padded = rows.next_multiple_of(PANEL_ROWS);
        for r in rows..padded {
            for b in 0..bpr {
                let z: B = unpack_block(&p, bpr, r, b);
                assert!(bytemuck::bytes_of(&z).iter().all(|&x| x == 0));
            }
        }
    }

    /// Every layout covers its block exactly once, in pieces of its lane.
    fn fields_cover_the_block<B: X16Block>() {
        let size = std::mem::size_of::<B>();
        let mut seen = vec![0u8; size];
        for f in B::X16_FIELDS {
            assert!(f.lane == 2 || f.lane == 4, "{}", B::DTYPE);
            assert_eq!(f.len % f.lane, 0, "{}", B::DTYPE);
            for s in &mut seen[f.offset..f.offset + f.len] {
                *s += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "{}: {seen:?}", B::DTYPE);
        assert_eq!(B::RECORD, PANEL_ROWS * size);
    }

    #[test]
    fn packing_is_a_lossless_permutation() {
        fn every_layout<B: X16Block>() {
            if !has_layout::<B>() {
                return;
            }
            fields_cover_the_block::<B>();
            for (rows, bpr) in [(1, 1), (16, 3), (37, 5), (64, 18)] {
                round_trip::<B>(rows, bpr);
            }
        }
        for &d in DType::ALL {
            crate::quant::with_weight_block!(d, W => every_layout::<W>(), ());
        }
        use crate::quant::blocks::*;
        assert_eq!(BlockQ4_0::RECORD, 288);
        assert_eq!(BlockQ4_1::RECORD, 320);
        assert_eq!(BlockQ8_0::RECORD, 544);
        assert_eq!((BlockQ4_1::PLANES, BlockQ4_1::CODE_BYTES), (2, 16));
        assert_eq!((BlockQ8_0::PLANES, BlockQ8_0::CODE_BYTES), (1, 32));
        use crate::quant::{q5_0::BlockQ5_0, q6_k::BlockQ6K};
        assert_eq!(BlockQ5_0::RECORD, 352);
        assert_eq!(BlockQ4K::RECORD, 2304);
        assert_eq!(BlockQ5K::RECORD, 2816);
        assert_eq!(BlockQ6K::RECORD, 3360);
        assert_eq!([1, 2, 3].map(BlockQ4K::field_start), [32, 64, 64 + 3 * 64]);
        assert_eq!(BlockQ5K::field_start(4), 64 + 3 * 64 + 8 * 64);
        for (n, i) in (0..2).flat_map(|n| (0..8).map(move |i| (n, i))) {
            let step = 2 + 3 * (8 * n + i);
            assert_eq!(
                BlockQ6K::field_start(step),
                crate::quant::q6_k::x16_step(n, i)
            );
        }
        assert_eq!(BlockQ6K::field_start(2), 32 + 4 * 64);
        assert_eq!(BlockQ5_0::field_start(2), 32 + 64);
    }

    /// The k-quant records by hand: lane `r` of a line holds the bytes of
    /// row `r`, so a 64-byte load at a line reads the same 4 bytes of 16 rows.
    #[test]
    fn k_quant_lines_hold_each_rows_bytes() {
        use crate::quant::q6_k::BlockQ6K;
        use bytemuck::Zeroable;
        let rows: Vec<BlockQ6K> = (0..16u8)
            .map(|r| {
                let mut b = BlockQ6K::zeroed();
                let bytes = bytemuck::bytes_of_mut(&mut b);
                for (i, v) in bytes.iter_mut().enumerate() {
                    *v = (i as u8).wrapping_mul(7) ^ r;
                }
                b
            })
            .collect();
        let mut p = vec![0u8; BlockQ6K::RECORD];
        pack(&rows, 1, &mut p);
        for (r, b) in rows.iter().enumerate() {
            let d = b.d.to_bits().to_le_bytes();
            assert_eq!(&p[2 * r..2 * r + 2], &d);
            // scale line 2, lane r: scales 8..12 of row r
            let s = BlockQ6K::field_start(1) + 2 * 64 + 4 * r;
            assert_eq!(
                &p[s..s + 4],
                bytemuck::cast_slice::<i8, u8>(&b.scales[8..12])
            );
            // ql line 31 (step 15's third line), lane r: ql[124..128]
            let q = crate::quant::q6_k::x16_step(1, 7) + 2 * 64 + 4 * r;
            assert_eq!(&p[q..q + 4], &b.ql[124..128]);
            // qh line 9 (step 9's first), lane r: qh[36..40]
            let h = crate::quant::q6_k::x16_step(1, 1) + 4 * r;
            assert_eq!(&p[h..h + 4], &b.qh[36..40]);
            // ql line 3 (step 3's second), lane r: ql[12..16]
            let q = crate::quant::q6_k::x16_step(0, 3) + 64 + 4 * r;
            assert_eq!(&p[q..q + 4], &b.ql[12..16]);
        }
    }
}
