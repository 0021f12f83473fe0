//! The peak of the integer dot step the quantized gemm kernels are built
//! on (`vpdpbusd`, AVX-512BW's multiply-add pair, `sdot`), so a benchmark
//! can state prefill as a share of the machine's compute, as it states
//! decode as a share of the measured read bandwidth.

use crate::dispatch::Isa;

/// Runs `iters` rounds of independent dot steps of `isa` on registers (no
/// memory traffic) on the calling thread and returns the multiply-adds
/// (u8 x i8 products summed into i32) done; time the call for the rate.
/// `None` where `isa` has no probe (the tiers with the x16 gemm have one)
/// or the CPU lacks it.
pub fn int8_dot_peak(isa: Isa, iters: usize) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    return crate::arch::x86_64::int8_dot_peak(isa, iters);
    #[cfg(target_arch = "aarch64")]
    return crate::arch::aarch64::int8_dot_peak(isa, iters);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (isa, iters);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::available_isas;

    #[test]
    fn counts_the_work_of_every_tier_it_probes() {
        let mut probed = 0;
        for isa in available_isas() {
            let Some(one) = int8_dot_peak(isa, 1000) else {
                continue;
            };
            probed += 1;
            let two = int8_dot_peak(isa, 2000).unwrap();
            assert!(one > 0 && two == 2 * one, "{isa:?}: {one} then {two}");
        }
        assert!(int8_dot_peak(Isa::Scalar, 10).is_none());
        // the x16 gemm tiers of this CPU, if any, each have one
        let gemm_tiers = available_isas()
            .into_iter()
            .filter(|i| matches!(i, Isa::Vnni | Isa::Avx512 | Isa::Dotprod | Isa::I8mm))
            .count();
        assert_eq!(probed, gemm_tiers);
    }
}
