//! Quantized block types. One file per type (`q4_0.rs`, `q4_1.rs`, …): the
//! scalar quantize / dequantize / dot references of the block laid out in
//! [`blocks`], and the activation type it pairs with. This module holds the
//! registry: [`DType`] with one row of facts per type, and byte-level
//! `quantize_row` / `dequantize_row` that check sizes and alignment.
//!
//! CONTRACT (shared by every helper working on kernels; change only with care):
//! - block structs are `#[repr(C)]`, `bytemuck::Pod`, layouts identical to ggml;
//! - `DType` discriminants are ggml's type ids;
//! - the SIMD table in `crate::dispatch::VecDotTable` has one field per
//!   (weight type, activation type) pair.

pub mod blocks;
pub mod float;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
#[cfg(test)]
pub(crate) mod test_data;
pub mod x16;

use crate::{Error, Result};
use blocks::*;
use bytemuck::Pod;

/// Tensor element types, discriminants = ggml type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
    Q8_1 = 9,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
}

impl DType {
    pub const ALL: [DType; 11] = [
        DType::F32,
        DType::F16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q8_0,
        DType::Q8_1,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
        DType::BF16,
    ];

    pub fn from_ggml_id(id: u32) -> Option<DType> {
        Self::ALL.into_iter().find(|d| *d as u32 == id)
    }

    pub fn ggml_id(self) -> u32 {
        self as u32
    }

    /// ggml's type name (`"q4_1"`, `"f16"`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q8_0 => "q8_0",
            DType::Q8_1 => "q8_1",
            DType::Q4_K => "q4_K",
            DType::Q5_K => "q5_K",
            DType::Q6_K => "q6_K",
            DType::Q8_K => "q8_K",
            DType::BF16 => "bf16",
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 | DType::Q8_1 => QK,
            DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q8_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use std::mem::size_of;
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => size_of::<BlockQ4_0>(),
            DType::Q4_1 => size_of::<BlockQ4_1>(),
            DType::Q8_0 => size_of::<BlockQ8_0>(),
            DType::Q8_1 => size_of::<BlockQ8_1>(),
            DType::Q4_K => size_of::<BlockQ4K>(),
            DType::Q5_K => size_of::<BlockQ5K>(),
            DType::Q6_K => size_of::<BlockQ6K>(),
            DType::Q8_K => size_of::<BlockQ8K>(),
        }
    }

    /// Alignment the block type needs in memory (for zero-copy casts).
    pub fn align(self) -> usize {
        use std::mem::align_of;
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => align_of::<BlockQ4_0>(),
            DType::Q4_1 => align_of::<BlockQ4_1>(),
            DType::Q8_0 => align_of::<BlockQ8_0>(),
            DType::Q8_1 => align_of::<BlockQ8_1>(),
            DType::Q4_K => align_of::<BlockQ4K>(),
            DType::Q5_K => align_of::<BlockQ5K>(),
            DType::Q6_K => align_of::<BlockQ6K>(),
            DType::Q8_K => align_of::<BlockQ8K>(),
        }
    }

    /// Bytes of one row of `cols` elements; `None` when `cols` is not a whole
    /// number of blocks or the size overflows.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let bs = self.block_size();
        if cols % bs != 0 {
            return None;
        }
        (cols / bs).checked_mul(self.type_size())
    }

    /// The activation type this weight type's dot product pairs with (ggml's
    /// `vec_dot_type`).
    pub fn vec_dot_type(self) -> DType {
        match self {
            DType::Q4_0 | DType::Q8_0 => DType::Q8_0,
            DType::Q4_1 | DType::Q8_1 => DType::Q8_1,
            DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q8_K => DType::Q8_K,
            DType::F32 | DType::F16 | DType::BF16 => DType::F32,
        }
    }

    /// Whether a matmul with this dtype as weights has a kernel.
    pub fn has_vec_dot(self) -> bool {
        !matches!(self, DType::Q8_1 | DType::Q8_K)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reinterpret `bytes` as whole blocks without copying.
pub fn cast_blocks<'a, B: Pod>(op: &'static str, dtype: DType, bytes: &'a [u8]) -> Result<&'a [B]> {
    bytemuck::try_cast_slice(bytes).map_err(|_| Error::Misaligned {
        op,
        dtype,
        align: dtype.align(),
    })
}

fn cast_blocks_mut<'a, B: Pod>(
    op: &'static str,
    dtype: DType,
    bytes: &'a mut [u8],
) -> Result<&'a mut [B]> {
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| Error::Misaligned {
        op,
        dtype,
        align: dtype.align(),
    })
}

/// Checks that `n_elems` elements of `dtype` occupy exactly `n_bytes`.
fn check_row(op: &'static str, dtype: DType, n_elems: usize, n_bytes: usize) -> Result<()> {
    let expected = dtype.row_bytes(n_elems).ok_or(Error::RaggedRow {
        op,
        dtype,
        cols: n_elems,
        block: dtype.block_size(),
    })?;
    if expected != n_bytes {
        return Err(Error::ShapeMismatch {
            op,
            expected,
            got: n_bytes,
        });
    }
    Ok(())
}

/// Decode one row of `dtype` (`src` raw bytes, little-endian ggml layout)
/// into `dst.len()` floats.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    const OP: &str = "dequantize_row";
    check_row(OP, dtype, dst.len(), src.len())?;
    match dtype {
        DType::F32 => float::dequantize_row_f32(cast_blocks(OP, dtype, src)?, dst),
        DType::F16 => float::dequantize_row_f16(cast_blocks(OP, dtype, src)?, dst),
        DType::BF16 => float::dequantize_row_bf16(cast_blocks(OP, dtype, src)?, dst),
        DType::Q4_0 => q4_0::dequantize_row(cast_blocks(OP, dtype, src)?, dst),
        DType::Q4_1 => q4_1::dequantize_row(cast_blocks(OP, dtype, src)?, dst),
        DType::Q8_0 => q8_0::dequantize_row(cast_blocks(OP, dtype, src)?, dst),
        DType::Q8_1 => q8_1::dequantize_row(cast_blocks(OP, dtype, src)?, dst),
        DType::Q4_K => q4_k::dequantize_row(cast_blocks(OP, dtype, src)?, dst),
        DType::Q5_K => q5_k::dequantize_row(cast_blocks(OP, dtype, src)?, dst),
        DType::Q6_K => q6_k::dequantize_row(cast_blocks(OP, dtype, src)?, dst),
        DType::Q8_K => q8_k::dequantize_row(cast_blocks(OP, dtype, src)?, dst),
    }
    Ok(())
}

/// Encode `src` into one row of `dtype` with the scalar reference quantizer.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    const OP: &str = "quantize_row";
    check_row(OP, dtype, src.len(), dst.len())?;
    match dtype {
        DType::F32 => float::quantize_row_f32(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::F16 => float::quantize_row_f16(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::BF16 => float::quantize_row_bf16(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::Q4_0 => q4_0::quantize_row(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::Q4_1 => q4_1::quantize_row(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::Q8_0 => q8_0::quantize_row(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::Q8_1 => q8_1::quantize_row(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::Q4_K => q4_k::quantize_row(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::Q5_K => q5_k::quantize_row(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::Q6_K => q6_k::quantize_row(src, cast_blocks_mut(OP, dtype, dst)?),
        DType::Q8_K => q8_k::quantize_row(src, cast_blocks_mut(OP, dtype, dst)?),
    }
    Ok(())
}

/// Allocate a zeroed, correctly aligned byte buffer for `n_elems` of `dtype`
/// (a `Vec<u8>` is only 1-aligned, so the bytes live in a `Vec<u64>`).
pub fn aligned_bytes(n_bytes: usize) -> AlignedBytes {
    AlignedBytes {
        words: vec![0u64; n_bytes.div_ceil(8)],
        len: n_bytes,
    }
}

/// Owned bytes aligned for every block type (8 bytes).
#[derive(Clone, Debug)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}

/// ggml's `nearest_int`: round half to even.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Signed value of largest magnitude in `x` (0 for an empty slice).
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = 0f32;
    for &v in x {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_facts_match_ggml() {
        let expect = [
            (DType::F32, 0, 1, 4),
            (DType::F16, 1, 1, 2),
            (DType::Q4_0, 2, 32, 18),
            (DType::Q4_1, 3, 32, 20),
            (DType::Q8_0, 8, 32, 34),
            (DType::Q8_1, 9, 32, 36),
            (DType::Q4_K, 12, 256, 144),
            (DType::Q5_K, 13, 256, 176),
            (DType::Q6_K, 14, 256, 210),
            (DType::Q8_K, 15, 256, 292),
            (DType::BF16, 30, 1, 2),
        ];
        for (d, id, bs, ts) in expect {
            assert_eq!(DType::from_ggml_id(id), Some(d));
            assert_eq!(d.ggml_id(), id);
            assert_eq!(d.block_size(), bs, "{d}");
            assert_eq!(d.type_size(), ts, "{d}");
        }
        assert_eq!(DType::from_ggml_id(4), None);
        assert_eq!(DType::from_ggml_id(31), None);
        assert_eq!(DType::Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(DType::Q4_1.row_bytes(577), None);
        assert_eq!(DType::Q4_K.row_bytes(576), None);
        assert_eq!(DType::F32.row_bytes(usize::MAX), None);
        assert_eq!(DType::Q4_K.vec_dot_type(), DType::Q8_K);
        assert_eq!(DType::Q4_1.vec_dot_type(), DType::Q8_1);
        assert_eq!(DType::BF16.vec_dot_type(), DType::F32);
    }

    #[test]
    fn dequantize_row_rejects_bad_input() {
        let mut dst = vec![0f32; 32];
        assert!(matches!(
            dequantize_row(DType::Q4_0, &[0u8; 17], &mut dst),
            Err(Error::ShapeMismatch {
                expected: 18,
                got: 17,
                ..
            })
        ));
        let mut dst = vec![0f32; 33];
        assert!(matches!(
            dequantize_row(DType::Q4_0, &[0u8; 18], &mut dst),
            Err(Error::RaggedRow { .. })
        ));
        // 1 byte offset breaks the 2-byte alignment of the f16 scale
        let buf = aligned_bytes(40);
        let mut dst = vec![0f32; 32];
        assert!(matches!(
            dequantize_row(DType::Q4_1, &buf.as_bytes()[1..21], &mut dst),
            Err(Error::Misaligned { .. })
        ));
        assert!(dequantize_row(DType::Q4_1, &buf.as_bytes()[2..22], &mut dst).is_ok());
    }

    /// quantize → dequantize stays within each type's error budget, relative
    /// to the largest magnitude of each row.
    #[test]
    fn round_trip_within_budget() {
        let budgets = [
            (DType::F32, 1e-7),
            (DType::F16, 1e-3),
            (DType::BF16, 8e-3),
            (DType::Q8_0, 8e-3),
            (DType::Q8_1, 8e-3),
            (DType::Q8_K, 8e-3),
            (DType::Q4_0, 0.13),
            (DType::Q4_1, 0.07),
            (DType::Q4_K, 0.1),
            (DType::Q5_K, 0.05),
            (DType::Q6_K, 0.04),
        ];
        for (dtype, budget) in budgets {
            for seed in 0..4 {
                let x = test_data::random_row(512, seed);
                let mut q = aligned_bytes(dtype.row_bytes(512).unwrap_or(0));
                quantize_row(dtype, &x, q.as_bytes_mut()).unwrap();
                let mut y = vec![0f32; 512];
                dequantize_row(dtype, q.as_bytes(), &mut y).unwrap();
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = x
                    .iter()
                    .zip(&y)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= budget * amax,
                    "{dtype}: max err {err} > {budget} * {amax}"
                );
            }
        }
    }
}
