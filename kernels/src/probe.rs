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

/// How far ahead [`sum_words`] asks for lines when told to: the distance
/// of the x16 decode loops' prefetch, a couple of records.
pub const READ_PREFETCH_BYTES: usize = 1024;

/// The wrapping sum of `xs`, read as a bandwidth probe reads: plainly
/// (`ahead` is `None`), or as a decode streams its weights, each 64-byte
/// step first asking for the line `ahead` bytes on into L1. A plain
/// sequential read is held to the lines the hardware prefetcher keeps in
/// flight, which a single core's kernels beat with these hints, so a probe
/// takes the better of the two reads (the same plain sum on targets
/// without the hint here). Eight accumulators, so the adds are no chain.
pub fn sum_words(xs: &[u64], ahead: Option<usize>) -> u64 {
    let mut acc = [0u64; 8];
    let mut lines = xs.chunks_exact(8);
    for (i, line) in (&mut lines).enumerate() {
        if let Some(ahead) = ahead {
            crate::arch::prefetch_l1_at(xs, 64 * i + ahead);
        }
        for (a, &x) in acc.iter_mut().zip(line) {
            *a = a.wrapping_add(x);
        }
    }
    let tail = lines
        .remainder()
        .iter()
        .fold(0u64, |a, &x| a.wrapping_add(x));
    acc.iter().fold(tail, |a, &x| a.wrapping_add(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::available_isas;

    #[test]
    fn both_reads_sum_every_word() {
        for n in [0usize, 1, 7, 8, 9, 1000, 4099] {
            let xs: Vec<u64> = (0..n as u64)
                .map(|x| x.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .collect();
            let want = xs.iter().fold(0u64, |a, &x| a.wrapping_add(x));
            for ahead in [
                None,
                Some(0),
                Some(64),
                Some(READ_PREFETCH_BYTES),
                Some(1 << 20),
            ] {
                assert_eq!(sum_words(&xs, ahead), want, "{n} words, {ahead:?} ahead");
            }
        }
    }

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
