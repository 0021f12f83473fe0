//! The one dispatch point. CPU features are read once; the best table is
//! cached; `SOTTO_ISA=scalar|avx2|avx512|vnni|neon|dotprod|i8mm` forces a path
//! (an unavailable forced path is an error, never a silent downgrade).
//!
//! CONTRACT: `VecDotTable` has one field per (weight, activation) pair; every
//! field of the scalar table points at the reference in `quant/<type>.rs`;
//! per-ISA tables start from the scalar one and override what they implement.

use crate::quant::blocks::*;
use half::{bf16, f16};

/// Dot product of `w` and `a` (same element count).
pub type VecDotFn<W, A> = fn(w: &[W], a: &[A]) -> f32;
/// Quantize a row of f32 activations (len = blocks * block size) into blocks.
pub type QuantizeFn<A> = fn(x: &[f32], out: &mut [A]);

#[derive(Clone, Copy, Debug)]
pub struct VecDotTable {
    pub isa: crate::dispatch::Isa,
    pub q4_0_q8_0: VecDotFn<BlockQ4_0, BlockQ8_0>,
    pub q4_1_q8_1: VecDotFn<BlockQ4_1, BlockQ8_1>,
    pub q8_0_q8_0: VecDotFn<BlockQ8_0, BlockQ8_0>,
    pub q4_k_q8_k: VecDotFn<BlockQ4K, BlockQ8K>,
    pub q5_k_q8_k: VecDotFn<BlockQ5K, BlockQ8K>,
    pub q6_k_q8_k: VecDotFn<BlockQ6K, BlockQ8K>,
    pub f16_f32: VecDotFn<f16, f32>,
    pub bf16_f32: VecDotFn<bf16, f32>,
    pub f32_f32: VecDotFn<f32, f32>,
    pub quantize_q8_0: QuantizeFn<BlockQ8_0>,
    pub quantize_q8_1: QuantizeFn<BlockQ8_1>,
    pub quantize_q8_k: QuantizeFn<BlockQ8K>,
}

/// Instruction-set paths, from the portable reference up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
    /// AVX-512 VNNI (or AVX-VNNI) integer dot products.
    Vnni,
    Neon,
    Dotprod,
    I8mm,
}
