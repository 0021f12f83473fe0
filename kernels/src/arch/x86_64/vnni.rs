//! AVX-512 VNNI (Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4 and later):
//! the AVX-512 legacy-quant kernels of `avx512.rs` with `vpdpbusd` as the
//! 4-byte dot step (one instruction where AVX-512BW needs two, and no i16
//! saturation, which also makes the Q8_0 gemm exact here).
//!
//! Soundness: as in `avx512.rs`; the kernels need the features named in the
//! macro invocation below, which `super::supports(Isa::Vnni)` checks before
//! `super::table` hands out [`overrides`].

use crate::dispatch::{Isa, KernelTable, WeightRow};
use core::arch::x86_64::*;

pub(super) fn overrides(t: KernelTable) -> KernelTable {
    KernelTable {
        isa: Isa::Vnni,
        q4_0: WeightRow {
            dot: kernels::q4_0_q8_0,
            gemm: Some(kernels::q4_0_q8_0_gemm),
            x16: Some(kernels::q4_0_q8_0_x16),
        },
        q4_1: WeightRow {
            dot: kernels::q4_1_q8_1,
            gemm: Some(kernels::q4_1_q8_1_gemm),
            x16: Some(kernels::q4_1_q8_1_x16),
        },
        q8_0: WeightRow {
            dot: kernels::q8_0_q8_0,
            gemm: Some(kernels::q8_0_q8_0_gemm),
            x16: Some(kernels::q8_0_q8_0_x16),
        },
        q6_k: WeightRow {
            dot: kernels::q6_k_q8_k,
            ..t.q6_k
        },
        ..t
    }
}

/// Sum of `u[i] * s[i]` over each 4 bytes, added to the i32 lanes of `acc`
/// (exact for any u8 x i8 codes of a block).
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
fn dot4(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(acc, u, s)
}

super::avx512::legacy_kernels!(
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    super::dot4
);
