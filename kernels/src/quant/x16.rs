//! The "x16" layout: legacy-quant weights (Q4_0, Q4_1, Q8_0) regrouped at
//! load time into panels of 16 rows, the layout the lane-per-row gemm kernels
//! consume with plain contiguous loads (without it they gather 16 rows per
//! block at run time, which bounds the decode matvec).
//!
//! A matrix of `rows` rows of `bpr` blocks becomes `ceil(rows / 16)` panels,
//! each of `bpr` records, panel-major. The record of block `b` of panel `p`
//! (rows `16p..16p + 16`):
//!
//! * `PLANES` planes of 16 f16 scales (32 bytes each): `d` of every row, then
//!   (Q4_1) `m` of every row;
//! * `LINES` lines of 64 bytes: 4-byte lane `r` of line `k` holds bytes
//!   `4k..4k + 4` of row `r`'s codes (`qs`), unchanged.
//!
//! Rows past the end of the matrix in its last panel are all zero (scale 0,
//! so they contribute nothing). Packing is a byte permutation: every block
//! is recovered exactly by [`unpack_block`].

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0};
use super::DType;
use crate::dispatch::VecDotFn;
use bytemuck::Pod;
use half::f16;

/// Rows per panel.
pub const PANEL_ROWS: usize = 16;

/// A block type with an x16 layout.
pub trait X16Block: Pod {
    const DTYPE: DType;
    /// f16 scale planes before the code lines.
    const PLANES: usize;
    /// Code bytes of one block (`qs`).
    const CODE_BYTES: usize;
    /// Bytes of one record (16 rows, one block).
    const RECORD: usize = 32 * Self::PLANES + PANEL_ROWS * Self::CODE_BYTES;
    /// The scales in plane order (only the first `PLANES` are stored).
    fn scales(&self) -> [f16; 2];
    fn codes(&self) -> &[u8];
    fn from_parts(scales: [f16; 2], codes: &[u8]) -> Self;
}

impl X16Block for BlockQ4_0 {
    const DTYPE: DType = DType::Q4_0;
    const PLANES: usize = 1;
    const CODE_BYTES: usize = 16;
    fn scales(&self) -> [f16; 2] {
        [self.d, f16::ZERO]
    }
    fn codes(&self) -> &[u8] {
        &self.qs
    }
    fn from_parts(s: [f16; 2], codes: &[u8]) -> Self {
        let mut b = BlockQ4_0 {
            d: s[0],
            qs: [0; 16],
        };
        b.qs.copy_from_slice(codes);
        b
    }
}

impl X16Block for BlockQ4_1 {
    const DTYPE: DType = DType::Q4_1;
    const PLANES: usize = 2;
    const CODE_BYTES: usize = 16;
    fn scales(&self) -> [f16; 2] {
        [self.d, self.m]
    }
    fn codes(&self) -> &[u8] {
        &self.qs
    }
    fn from_parts(s: [f16; 2], codes: &[u8]) -> Self {
        let mut b = BlockQ4_1 {
            d: s[0],
            m: s[1],
            qs: [0; 16],
        };
        b.qs.copy_from_slice(codes);
        b
    }
}

impl X16Block for BlockQ8_0 {
    const DTYPE: DType = DType::Q8_0;
    const PLANES: usize = 1;
    const CODE_BYTES: usize = 32;
    fn scales(&self) -> [f16; 2] {
        [self.d, f16::ZERO]
    }
    fn codes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.qs)
    }
    fn from_parts(s: [f16; 2], codes: &[u8]) -> Self {
        let mut b = BlockQ8_0 {
            d: s[0],
            qs: [0; 32],
        };
        b.qs.copy_from_slice(bytemuck::cast_slice(codes));
        b
    }
}

/// Bytes of the packed form of `rows` rows of `bpr` blocks of `B`.
pub fn packed_bytes<B: X16Block>(rows: usize, bpr: usize) -> Option<usize> {
    rows.div_ceil(PANEL_ROWS)
        .checked_mul(bpr)?
        .checked_mul(B::RECORD)
}

/// The shape checks every SIMD x16 wrapper makes before its kernel: whole
/// columns, an output that holds them all, and `packed` holding exactly the
/// panels of `rows` rows of `bpr` blocks.
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87 (workspace: 1.85)
pub(crate) fn shape_ok<W: X16Block, A>(
    packed: &[u8],
    rows: usize,
    a: &[A],
    bpr: usize,
    out: &[f32],
) -> bool {
    bpr > 0
        && a.len() % bpr == 0
        && packed_bytes::<W>(rows, bpr) == Some(packed.len())
        && rows
            .checked_mul(a.len() / bpr)
            .is_some_and(|n| n <= out.len())
}

/// Byte offset of the code bytes `4k..4k + 4` of row `r` (within its panel)
/// inside a record, and of its scale plane `s`.
#[inline]
fn code_offset<B: X16Block>(r: usize, k: usize) -> usize {
    32 * B::PLANES + 64 * k + 4 * r
}
#[inline]
fn scale_offset(r: usize, plane: usize) -> usize {
    32 * plane + 2 * r
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
            let s = blk.scales();
            for (plane, v) in s.iter().enumerate().take(B::PLANES) {
                let o = scale_offset(lane, plane);
                rec[o..o + 2].copy_from_slice(&v.to_le_bytes());
            }
            for (k, quad) in blk.codes().chunks_exact(4).enumerate() {
                let o = code_offset::<B>(lane, k);
                rec[o..o + 4].copy_from_slice(quad);
            }
        }
    }
}

/// Block `b` of row `r` recovered from packed bytes.
pub fn unpack_block<B: X16Block>(packed: &[u8], bpr: usize, r: usize, b: usize) -> B {
    let (panel, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
    let rec = &packed[(panel * bpr + b) * B::RECORD..][..B::RECORD];
    let mut s = [f16::ZERO; 2];
    for (plane, v) in s.iter_mut().enumerate().take(B::PLANES) {
        let o = scale_offset(lane, plane);
        *v = f16::from_le_bytes([rec[o], rec[o + 1]]);
    }
    let mut codes = [0u8; 32];
    for k in 0..B::CODE_BYTES / 4 {
        let o = code_offset::<B>(lane, k);
        codes[4 * k..4 * k + 4].copy_from_slice(&rec[o..o + 4]);
    }
    B::from_parts(s, &codes[..B::CODE_BYTES])
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
    out: &mut [f32],
) {
    if bpr == 0 {
        return;
    }
    let mut row = vec![B::zeroed(); bpr];
    for r in 0..rows {
        for (b, blk) in row.iter_mut().enumerate() {
            *blk = unpack_block(packed, bpr, r, b);
        }
        for (c, ac) in a.chunks_exact(bpr).enumerate() {
            if let Some(o) = out.get_mut(c * rows + r) {
                *o = dot(&row, ac);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data::random_row;
    use crate::quant::{aligned_bytes, cast_blocks, quantize_row};

    fn round_trip<B: X16Block>(rows: usize, bpr: usize) {
        let cols = bpr * 32;
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

    #[test]
    fn packing_is_a_lossless_permutation() {
        for (rows, bpr) in [(1, 1), (16, 3), (37, 5), (64, 18)] {
            round_trip::<BlockQ4_0>(rows, bpr);
            round_trip::<BlockQ4_1>(rows, bpr);
            round_trip::<BlockQ8_0>(rows, bpr);
        }
        assert_eq!(BlockQ4_0::RECORD, 288);
        assert_eq!(BlockQ4_1::RECORD, 320);
        assert_eq!(BlockQ8_0::RECORD, 544);
    }
}
