//! x86-64 kernels: AVX2 (+FMA, F16C). AVX-512 / VNNI tables reuse the AVX2
//! kernels for now (no AVX-512 hardware to validate dedicated ones on).

use crate::dispatch::{Isa, VecDotTable};

mod avx2;

/// Whether the running CPU can execute the kernels of `isa`.
pub fn supports(isa: Isa) -> bool {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl");
    match isa {
        Isa::Avx2 => avx2,
        Isa::Avx512 => avx512,
        Isa::Vnni => avx512 && is_x86_feature_detected!("avx512vnni"),
        Isa::Scalar | Isa::Neon | Isa::Dotprod | Isa::I8mm => false,
    }
}

/// The table for `isa`, or `None` when the CPU lacks its features.
pub fn table(isa: Isa, scalar: VecDotTable) -> Option<VecDotTable> {
    if !supports(isa) {
        return None;
    }
    match isa {
        Isa::Avx2 | Isa::Avx512 | Isa::Vnni => Some(VecDotTable {
            isa,
            ..avx2::overrides(scalar)
        }),
        Isa::Scalar | Isa::Neon | Isa::Dotprod | Isa::I8mm => None,
    }
}
