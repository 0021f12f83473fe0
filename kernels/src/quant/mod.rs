//! Quantized block types and the registry of the types Sotto runs.
//!
//! A type is one file (`q4_0.rs`, `q5_0.rs`, …): its `#[repr(C)]` block,
//! byte-identical to ggml's, with a size assertion, and the block's traits
//! (ggml's `type_traits`, in Rust): [`QuantBlock`] (its [`DType`] and scalar
//! quantize / dequantize references) and, for a weight type,
//! [`WeightBlock`] (the activation type its dot takes, the scalar dot
//! reference, its x16 layout, and its row of a
//! [`crate::dispatch::KernelTable`]), or, for an activation
//! type, [`ActivationBlock`]. Then one line in `registry!` below makes it
//! a [`DType`], gives it its row in every kernel table (the scalar
//! references; an ISA overrides what it implements) and its arms in every
//! dispatch on a `DType` (`with_block!`, `with_weight_block!`).
//!
//! [`GgmlType`] knows every ggml type id (sizes included), so files with
//! types Sotto cannot run still parse; `DType::try_from(GgmlType)` is where
//! those become a typed error.

pub(crate) mod blocks;
pub(crate) mod float;
mod ggml;
pub(crate) mod iq4_nl;
pub(crate) mod iq4_xs;
#[cfg(test)]
mod known_answers;
pub(crate) mod q2_k;
pub(crate) mod q3_k;
pub(crate) mod q4_0;
pub(crate) mod q4_1;
pub(crate) mod q4_k;
pub(crate) mod q5_0;
pub(crate) mod q5_1;
pub(crate) mod q5_k;
pub(crate) mod q6_k;
pub(crate) mod q8_0;
pub(crate) mod q8_1;
pub(crate) mod q8_k;
#[cfg(test)]
pub(crate) mod test_data;
pub(crate) mod x16;

pub use ggml::{GgmlType, GGML_TYPE_COUNT};

use crate::dispatch::{ActivationRow, KernelTable, WeightRow};
use crate::{Error, Result};
use bytemuck::Pod;
use x16::X16Field;

/// A block type of tensor data: `Self::ELEMS` elements in
/// `size_of::<Self>()` bytes (ggml's `blck_size` / `type_size`), with the
/// scalar references every kernel is tested against.
pub trait QuantBlock: Pod + Send + Sync + std::fmt::Debug {
    /// Its registry entry.
    const DTYPE: DType;
    /// Elements per block.
    const ELEMS: usize = Self::DTYPE.block_size();
    /// Encodes `x` (`out.len() * ELEMS` floats) with ggml's quantizer (the
    /// older Q4_K, Q5_K and Q6_K files document a simpler search).
    fn quantize_ref(x: &[f32], out: &mut [Self]);
    /// Decodes `blocks` into `blocks.len() * ELEMS` floats, exactly as ggml.
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]);
}

/// A block type weights come in: its dot product takes activations
/// quantized into `Self::Act` (ggml's `vec_dot_type`), one activation block
/// per weight block.
pub trait WeightBlock: QuantBlock {
    /// The activation block type of its dot.
    type Act: ActivationBlock;
    /// `w · a` over the shorter of the two, the reference of every SIMD dot.
    fn vec_dot_ref(w: &[Self], a: &[Self::Act]) -> f32;
    /// The block's fields as laid out in the load-time x16 panels
    /// (`quant::x16`); empty: the type has no x16 layout and is never
    /// repacked.
    const X16_FIELDS: &'static [X16Field] = &[];
    /// Its row of a kernel table.
    fn weight_row(table: &KernelTable) -> &WeightRow<Self>;
}

/// A block type activations are quantized into before a dot.
pub trait ActivationBlock: QuantBlock {
    /// Its row of a kernel table (the quantizer the ops use).
    fn activation_row(table: &KernelTable) -> &ActivationRow<Self>;
}

/// The registry: every type Sotto runs, one line each, in ggml id order:
///
/// `DTYPE = block type [weight <row>] [act <row>],`
///
/// where `weight` names the type's [`WeightRow`] in [`KernelTable`] (it is
/// a [`WeightBlock`]) and `act` its [`ActivationRow`] (it is an
/// [`ActivationBlock`]). `registry!([path::to::m], args…)` calls
/// `m! { (args…) the list }`: this module builds [`DType`] and the dispatch
/// macros from it, `crate::dispatch` the kernel table and its scalar rows.
macro_rules! registry {
    ([$($then:tt)*] $(, $($args:tt)*)?) => {
        $($then)*! {
            ($($($args)*)?)
            F32 = f32 [weight f32] [act act_f32],
            F16 = half::f16 [weight f16],
            Q4_0 = $crate::quant::q4_0::BlockQ4_0 [weight q4_0],
            Q4_1 = $crate::quant::q4_1::BlockQ4_1 [weight q4_1],
            Q5_0 = $crate::quant::q5_0::BlockQ5_0 [weight q5_0],
            Q5_1 = $crate::quant::q5_1::BlockQ5_1 [weight q5_1],
            Q8_0 = $crate::quant::q8_0::BlockQ8_0 [weight q8_0] [act act_q8_0],
            Q8_1 = $crate::quant::q8_1::BlockQ8_1 [act act_q8_1],
            Q2_K = $crate::quant::q2_k::BlockQ2K [weight q2_k],
            Q3_K = $crate::quant::q3_k::BlockQ3K [weight q3_k],
            Q4_K = $crate::quant::q4_k::BlockQ4K [weight q4_k],
            Q5_K = $crate::quant::q5_k::BlockQ5K [weight q5_k],
            Q6_K = $crate::quant::q6_k::BlockQ6K [weight q6_k],
            Q8_K = $crate::quant::q8_k::BlockQ8K [act act_q8_k],
            IQ4_NL = $crate::quant::iq4_nl::BlockIQ4NL [weight iq4_nl],
            IQ4_XS = $crate::quant::iq4_xs::BlockIQ4XS [weight iq4_xs],
            BF16 = half::bf16 [weight bf16],
        }
    };
}
pub(crate) use registry;

/// Builds [`DType`] from the registry.
macro_rules! define_dtype {
    (() $($d:ident = $b:ty $([weight $w:ident])? $([act $a:ident])?,)*) => {
        /// The tensor types Sotto runs (the registry, `registry!`);
        /// discriminants are ggml's type ids.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        #[allow(non_camel_case_types)]
        pub enum DType {
            $(#[doc = concat!("ggml's `", stringify!($d), "` (`GgmlType::", stringify!($d), "`).")] $d = GgmlType::$d as u32,)*
        }

        impl DType {
            /// Every registered type, in registry order.
            pub const ALL: &'static [DType] = &[$(DType::$d,)*];

            /// The ggml type this is.
            pub const fn ggml_type(self) -> GgmlType {
                match self {
                    $(DType::$d => GgmlType::$d,)*
                }
            }
        }
    };
}
registry!([define_dtype]);

/// `with_block!(dtype, B => expr)`: `expr` with `B` the block type of
/// `dtype` (a [`QuantBlock`]), one arm per registry entry.
macro_rules! with_block {
    ($dtype:expr, $B:ident => $body:expr) => {
        $crate::quant::registry!([$crate::quant::with_block_arms], $dtype, $B, $body)
    };
}
#[allow(unused_imports)] // used in this module by name; exported for others
pub(crate) use with_block;

macro_rules! with_block_arms {
    (($dtype:expr, $B:ident, $body:expr)
     $($d:ident = $b:ty $([weight $w:ident])? $([act $a:ident])?,)*) => {
        match $dtype {
            $($crate::quant::DType::$d => {
                #[allow(dead_code)]
                type $B = $b;
                $body
            })*
        }
    };
}
pub(crate) use with_block_arms;

/// `with_weight_block!(dtype, W => expr, otherwise)`: `expr` with `W` the
/// block type of `dtype` when it is a [`WeightBlock`], `otherwise` for the
/// activation-only types; one arm per registry entry, no fallback arm.
macro_rules! with_weight_block {
    ($dtype:expr, $W:ident => $body:expr, $otherwise:expr) => {
        $crate::quant::registry!(
            [$crate::quant::with_weight_block_arms],
            $dtype,
            $W,
            $body,
            $otherwise
        )
    };
}
pub(crate) use with_weight_block;

macro_rules! with_weight_block_arms {
    (($dtype:expr, $W:ident, $body:expr, $otherwise:expr)
     $($d:ident = $b:ty $([weight $w:ident])? $([act $a:ident])?,)*) => {
        match $dtype {
            $($crate::quant::DType::$d => $crate::quant::weight_arm!($W, $body, $otherwise, $b $(, $w)?),)*
        }
    };
}
pub(crate) use with_weight_block_arms;

/// One arm of [`with_weight_block!`]: the body for a weight type (a row
/// name follows the block type), `otherwise` for the others.
macro_rules! weight_arm {
    ($W:ident, $body:expr, $otherwise:expr, $b:ty, $w:ident) => {{
        type $W = $b;
        $body
    }};
    ($W:ident, $body:expr, $otherwise:expr, $b:ty) => {
        $otherwise
    };
}
pub(crate) use weight_arm;

impl DType {
    /// The type whose ggml id is `id`: [`Error::UnknownGgmlType`] for an id
    /// ggml does not have, [`Error::UnsupportedGgmlType`] for a type Sotto
    /// cannot run.
    pub fn from_ggml_id(id: u32) -> Result<DType> {
        DType::try_from(GgmlType::from_id(id)?)
    }

    /// Its ggml type id (as stored in GGUF tensor infos).
    pub const fn ggml_id(self) -> u32 {
        self as u32
    }

    /// ggml's type name (`"q4_1"`, `"f16"`, …).
    pub const fn name(self) -> &'static str {
        self.ggml_type().name()
    }

    /// Elements per block (1 for the float types).
    pub const fn block_size(self) -> usize {
        self.ggml_type().block_size()
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        self.ggml_type().type_size()
    }

    /// Alignment the block type needs in memory (for zero-copy casts).
    pub fn align(self) -> usize {
        with_block!(self, B => std::mem::align_of::<B>())
    }

    /// Bytes of one row of `cols` elements; `None` when `cols` is not a whole
    /// number of blocks or the size overflows.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        self.ggml_type().row_bytes(cols)
    }

    /// The activation type this weight type's dot takes (ggml's
    /// `vec_dot_type`); `None` for the activation-only types.
    pub fn activation_type(self) -> Option<DType> {
        with_weight_block!(self, W => Some(activation_dtype::<W>()), None)
    }

    /// Whether a matmul with this dtype as weights has kernels.
    pub fn is_weight_type(self) -> bool {
        self.activation_type().is_some()
    }
}

fn activation_dtype<W: WeightBlock>() -> DType {
    <W::Act as QuantBlock>::DTYPE
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reinterpret `bytes` as whole blocks without copying.
pub(crate) fn cast_blocks<'a, B: Pod>(
    op: &'static str,
    dtype: DType,
    bytes: &'a [u8],
) -> Result<&'a [B]> {
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
    with_block!(dtype, B => B::dequantize_ref(cast_blocks::<B>(OP, dtype, src)?, dst));
    Ok(())
}

/// Encode `src` into one row of `dtype` with the scalar reference quantizer.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    const OP: &str = "quantize_row";
    check_row(OP, dtype, src.len(), dst.len())?;
    with_block!(dtype, B => B::quantize_ref(src, cast_blocks_mut::<B>(OP, dtype, dst)?));
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
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
    /// The bytes, writable.
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
            assert_eq!(DType::from_ggml_id(id), Ok(d));
            assert_eq!(d.ggml_id(), id);
            assert_eq!(d.block_size(), bs, "{d}");
            assert_eq!(d.type_size(), ts, "{d}");
        }
        assert_eq!(
            DType::from_ggml_id(4),
            Err(Error::UnknownGgmlType { id: 4 })
        );
        assert_eq!(
            DType::from_ggml_id(16),
            Err(Error::UnsupportedGgmlType {
                ty: GgmlType::IQ2_XXS
            })
        );
        assert_eq!(DType::Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(DType::Q4_1.row_bytes(577), None);
        assert_eq!(DType::Q4_K.row_bytes(576), None);
        assert_eq!(DType::F32.row_bytes(usize::MAX), None);
        assert_eq!(DType::Q4_K.activation_type(), Some(DType::Q8_K));
        assert_eq!(DType::Q4_1.activation_type(), Some(DType::Q8_1));
        assert_eq!(DType::BF16.activation_type(), Some(DType::F32));
        assert_eq!(DType::Q8_K.activation_type(), None);
    }

    /// Every registry entry: the block struct has ggml's size, its
    /// `ELEMS` is ggml's block size, and a weight type's activation blocks
    /// cover the same elements as its own (one per weight block).
    #[test]
    fn every_block_type_has_ggmls_size() {
        struct Facts {
            size: usize,
            elems: usize,
            act_elems: Option<usize>,
            dtype: DType,
        }
        for &d in DType::ALL {
            let f = with_block!(d, B => Facts {
                size: std::mem::size_of::<B>(),
                elems: B::ELEMS,
                act_elems: None,
                dtype: B::DTYPE,
            });
            fn act_elems<W: WeightBlock>() -> usize {
                <W::Act as QuantBlock>::ELEMS
            }
            let act_elems = with_weight_block!(d, W => Some(act_elems::<W>()), None);
            let f = Facts { act_elems, ..f };
            assert_eq!(f.dtype, d);
            assert_eq!(f.size, d.type_size(), "{d}");
            assert_eq!(f.elems, d.block_size(), "{d}");
            if let Some(a) = f.act_elems {
                assert_eq!(a, f.elems, "{d}: activation blocks per weight block");
            }
            assert!(d.align() <= 8, "{d}: AlignedBytes holds 8-aligned bytes");
        }
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

    /// Every type: a row that is not whole blocks, bytes one block short or
    /// long (blocks past the row), and misaligned bytes are typed errors
    /// from both directions, and leave the output untouched.
    #[test]
    fn every_type_rejects_bad_rows() {
        for &d in DType::ALL {
            let (bs, ts) = (d.block_size(), d.type_size());
            let n = 4 * bs;
            let x = test_data::random_row(n, d as u64);
            let mut q = aligned_bytes(d.row_bytes(n).unwrap() + ts + 8);
            let bytes = q.as_bytes_mut();
            for bad in [d.row_bytes(n).unwrap() - ts, d.row_bytes(n).unwrap() + ts] {
                bytes.fill(0xA5);
                assert!(
                    matches!(
                        quantize_row(d, &x, &mut bytes[..bad]),
                        Err(Error::ShapeMismatch { .. })
                    ),
                    "{d} quantize {bad} bytes"
                );
                assert!(bytes.iter().all(|&b| b == 0xA5), "{d}: output written");
                let mut y = vec![7f32; n];
                assert!(
                    matches!(
                        dequantize_row(d, &bytes[..bad], &mut y),
                        Err(Error::ShapeMismatch { .. })
                    ),
                    "{d} dequantize {bad} bytes"
                );
                assert!(y.iter().all(|&v| v == 7.0), "{d}: output written");
            }
            if bs > 1 {
                let mut y = vec![0f32; n + 1];
                assert!(
                    matches!(
                        quantize_row(d, &x[..n - 1], &mut bytes[..d.row_bytes(n).unwrap()]),
                        Err(Error::RaggedRow { .. })
                    ),
                    "{d} quantize ragged"
                );
                assert!(
                    matches!(
                        dequantize_row(d, &bytes[..d.row_bytes(n).unwrap()], &mut y),
                        Err(Error::RaggedRow { .. })
                    ),
                    "{d} dequantize ragged"
                );
            }
            if d.align() > 1 {
                let rb = d.row_bytes(n).unwrap();
                let mut y = vec![0f32; n];
                assert!(
                    matches!(
                        dequantize_row(d, &bytes[1..rb + 1], &mut y),
                        Err(Error::Misaligned { .. })
                    ),
                    "{d} misaligned"
                );
            }
        }
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
