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
        q5_0: WeightRow {
            dot: lowbit::q5_0_q8_0,
            gemm: Some(kernels::q5_0_q8_0_gemm),
            x16: Some(kernels::q5_0_q8_0_x16),
        },
        q4_k: WeightRow {
            gemm: Some(kquant::q4_k_gemm),
            x16: Some(kquant::q4_k_x16),
            ..t.q4_k
        },
        q5_k: WeightRow {
            gemm: Some(kquant::q5_k_gemm),
            x16: Some(kquant::q5_k_x16),
            ..t.q5_k
        },
        q6_k: WeightRow {
            dot: kernels::q6_k_q8_k,
            gemm: Some(kquant::q6_k_gemm),
            x16: Some(kquant::q6_k_x16),
        },
        q5_1: WeightRow {
            dot: lowbit::q5_1_q8_1,
            ..t.q5_1
        },
        iq4_nl: WeightRow {
            dot: lowbit::iq4_nl_q8_0,
            ..t.iq4_nl
        },
        q2_k: WeightRow {
            dot: lowbit::q2_k_q8_k,
            ..t.q2_k
        },
        q3_k: WeightRow {
            dot: lowbit::q3_k_q8_k,
            ..t.q3_k
        },
        iq4_xs: WeightRow {
            dot: lowbit::iq4_xs_q8_k,
            ..t.iq4_xs
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

/// The peak loop of `avx512::dot_peak_loop` on `vpdpbusd`.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) fn dot_peak(iters: usize) -> u64 {
    super::avx512::dot_peak_loop(iters, |a, u, s| dot4(a, u, s))
}

super::avx512::legacy_kernels!(
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    super::dot4
);
super::kquant_x16::kquant_kernels!(
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    super::dot4
);
super::avx512_lowbit::lowbit_kernels!(
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    super::dot4
);
