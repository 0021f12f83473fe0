//! Block layouts, byte-identical to ggml's. Each type's file (`q4_0.rs`, …)
//! adds its scalar references; the layouts live together so the SIMD code in
//! `arch/` and the references agree on one definition.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per block of the "legacy" quants (Q4_0, Q4_1, Q8_0, Q8_1).
pub const QK: usize = 32;
/// Elements per super-block of the k-quants.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales/mins in Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// 32 weights as 4-bit codes `q` in 0..16: `w = d * (q - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    /// low nibbles hold elements 0..16, high nibbles elements 16..32
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// 32 weights as 4-bit codes with a minimum: `w = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// 32 values as signed bytes: `x = d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Activation block paired with Q4_1: like Q8_0 plus `s = d * sum(qs)`, so
/// the weight minimum contributes `m * s` without touching the codes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// The activation side of the legacy gemm kernels (Q8_0 and Q8_1 blocks):
/// codes, scale and `s = d * sum(codes)` of Q8_1 (zero for Q8_0, whose
/// weights have no minimum to meet it).
pub(crate) trait ActBlock: Copy {
    fn codes(&self) -> &[i8; QK];
    fn scale(&self) -> f16;
    fn sum_scaled(&self) -> f16;
}

impl ActBlock for BlockQ8_0 {
    fn codes(&self) -> &[i8; QK] {
        &self.qs
    }
    fn scale(&self) -> f16 {
        self.d
    }
    fn sum_scaled(&self) -> f16 {
        f16::ZERO
    }
}

impl ActBlock for BlockQ8_1 {
    fn codes(&self) -> &[i8; QK] {
        &self.qs
    }
    fn scale(&self) -> f16 {
        self.d
    }
    fn sum_scaled(&self) -> f16 {
        self.s
    }
}

/// 256 weights: 8 sub-blocks of 32 with 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// 256 weights: Q4_K plus one high bit per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

/// 256 weights as 6-bit codes in 16 sub-blocks with 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// Activation block paired with the k-quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    /// sums of each 16 consecutive `qs`
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
