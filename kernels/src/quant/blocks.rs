//! Shared block constants, the block types of the first kernels under one
//! path (each is defined in its type's file; later types are imported from
//! theirs) and the view of the 8-bit activation blocks that the legacy gemm
//! kernels share.

pub use super::q4_0::BlockQ4_0;
pub use super::q4_1::BlockQ4_1;
pub use super::q4_k::BlockQ4K;
pub use super::q5_k::BlockQ5K;
pub use super::q6_k::BlockQ6K;
pub use super::q8_0::BlockQ8_0;
pub use super::q8_1::BlockQ8_1;
pub use super::q8_k::BlockQ8K;
use half::f16;

/// Elements per block of the "legacy" quants (Q4_0, Q4_1, Q8_0, Q8_1).
pub const QK: usize = 32;
/// Elements per super-block of the k-quants.
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales/mins in Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// The 32-code 8-bit activation blocks (Q8_0 and Q8_1) as the legacy gemm
/// kernels read them: codes, scale and `s = d * sum(codes)` of Q8_1 (zero
/// for Q8_0, whose weights have no minimum to meet it).
pub(crate) trait Q8Act: Copy {
    fn codes(&self) -> &[i8; QK];
    fn scale(&self) -> f16;
    fn sum_scaled(&self) -> f16;
}

impl Q8Act for BlockQ8_0 {
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

impl Q8Act for BlockQ8_1 {
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
