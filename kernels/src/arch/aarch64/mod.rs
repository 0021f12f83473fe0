//! aarch64 (phone) kernels: three tiers, each a superset of the one before.
//!
//! * `neon`: baseline Advanced SIMD, present on every aarch64 core. Integer
//!   dots widen with `smull` + `sadalp`; float dots and `axpy_f16` use `fmla`.
//! * `dotprod`: `sdot` (Armv8.2+, Cortex-A55/A76 and later) for the legacy
//!   and k-quant integer dots, and the x16 gemm over weights packed at load
//!   time (`sdot` by element: 4 rows per register, 16 per panel).
//! * `i8mm`: `smmla` (Armv8.6+, Cortex-A510/A710/X2 and later), a 2x8·8x2
//!   int8 tile product. The single-row table entries read each 16-byte half
//!   of a weight block and of its activation block as 2x8 matrices and keep
//!   the diagonal (same `smmla` count as `sdot`, no shuffles); the real
//!   gain, 2 rows x 2 columns with all four results useful, is in its gemm
//!   entries (4x4 register tiles over the file's layout) and its x16 entries
//!   (column pairs over packed panels), and in [`dot2x2_table`]. A lone
//!   column (decode) goes through the same float steps as a column pair, at
//!   some extra instructions (see `i8mm`), so its outputs do not depend on
//!   the batch. K-quants have no x16 layout here and run the gemm entries.
//!
//! The `sdot`/`smmla` intrinsics are still unstable in Rust, so those two
//! instructions are emitted with `asm!` inside functions compiled with the
//! matching target feature; everything else uses `core::arch::aarch64`.
//!
//! Soundness: every kernel is an `unsafe fn` with `#[target_feature]`; the safe
//! wrappers that call them are private to this module tree and reach callers
//! only through [`table`] / [`dot2x2_table`], which hand them out after the
//! runtime check of the features they need.

use crate::dispatch::{Isa, KernelTable};
use crate::quant::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};

mod codes;
mod dotprod;
mod i8mm;
mod neon;
#[cfg(test)]
mod test_support;

/// Multiply-adds of `iters` rounds of the integer dot step's peak loop of
/// `isa` (see [`crate::probe`]); `None` for a tier without one here or a
/// CPU without the tier.
pub fn int8_dot_peak(isa: Isa, iters: usize) -> Option<u64> {
    if !supports(isa) {
        return None;
    }
    match isa {
        // SAFETY: dotprod was just detected.
        Isa::Dotprod | Isa::I8mm => Some(unsafe { dotprod::dot_peak(iters) }),
        _ => None,
    }
}

/// Whether the running CPU can execute the kernels of `isa` (and of every
/// tier below it, which its table also uses).
pub fn supports(isa: Isa) -> bool {
    let neon = std::arch::is_aarch64_feature_detected!("neon");
    let dotprod = neon && std::arch::is_aarch64_feature_detected!("dotprod");
    match isa {
        Isa::Neon => neon,
        Isa::Dotprod => dotprod,
        Isa::I8mm => dotprod && std::arch::is_aarch64_feature_detected!("i8mm"),
        Isa::Scalar | Isa::Avx2 | Isa::AvxVnni | Isa::Avx512 | Isa::Vnni => false,
    }
}

/// The table for `isa`: `scalar` with every entry this tier (and the tiers
/// below it) implements overridden. `None` when the CPU lacks the features or
/// `isa` is not an aarch64 tier.
pub fn table(isa: Isa, scalar: KernelTable) -> Option<KernelTable> {
    if !supports(isa) {
        return None;
    }
    let with_neon = neon::overrides(scalar);
    let table = match isa {
        Isa::Neon => with_neon,
        Isa::Dotprod => dotprod::overrides(with_neon),
        Isa::I8mm => i8mm::overrides(dotprod::overrides(with_neon)),
        Isa::Scalar | Isa::Avx2 | Isa::AvxVnni | Isa::Avx512 | Isa::Vnni => return None,
    };
    Some(KernelTable { isa, ..table })
}

/// Dots of two weight rows with two activation columns:
/// `[w0·a0, w0·a1, w1·a0, w1·a1]`. All four slices hold the same block count.
pub type VecDot2x2Fn<W, A> = fn(w0: &[W], w1: &[W], a0: &[A], a1: &[A]) -> [f32; 4];

/// 2x2 tile kernels (i8mm `smmla`): one instruction yields four dots, so a
/// matmul over two rows and two columns does half the instructions of four
/// single dots.
#[derive(Clone, Copy, Debug)]
pub struct Dot2x2Table {
    pub q4_0_q8_0: VecDot2x2Fn<BlockQ4_0, BlockQ8_0>,
    pub q4_1_q8_1: VecDot2x2Fn<BlockQ4_1, BlockQ8_1>,
    pub q8_0_q8_0: VecDot2x2Fn<BlockQ8_0, BlockQ8_0>,
}

/// The 2x2 tile kernels, when the CPU has i8mm.
pub fn dot2x2_table() -> Option<Dot2x2Table> {
    if !supports(Isa::I8mm) {
        return None;
    }
    Some(Dot2x2Table {
        q4_0_q8_0: i8mm::dot2x2,
        q4_1_q8_1: i8mm::dot2x2,
        q8_0_q8_0: i8mm::dot2x2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SOTTO_EXPECT_AARCH64=neon,dotprod,i8mm` (set by
    /// scripts/test-aarch64.sh for a given `QEMU_CPU`) pins what detection must
    /// report, so a silently missing tier fails CI instead of skipping tests.
    #[test]
    fn detection_matches_expected_cpu() {
        let Ok(expected) = std::env::var("SOTTO_EXPECT_AARCH64") else {
            return;
        };
        let expected: Vec<&str> = expected.split(',').map(str::trim).collect();
        for (name, isa) in [
            ("neon", Isa::Neon),
            ("dotprod", Isa::Dotprod),
            ("i8mm", Isa::I8mm),
        ] {
            assert_eq!(
                supports(isa),
                expected.contains(&name),
                "{name}: detected {} but SOTTO_EXPECT_AARCH64={expected:?}",
                supports(isa)
            );
        }
    }

    #[test]
    fn table_is_none_for_foreign_isas_and_tagged_when_supported() {
        let scalar = crate::dispatch::SCALAR;
        for isa in [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512, Isa::Vnni] {
            assert!(table(isa, scalar).is_none(), "{isa:?}");
        }
        for isa in [Isa::Neon, Isa::Dotprod, Isa::I8mm] {
            match table(isa, scalar) {
                Some(t) => assert_eq!(t.isa, isa),
                None => assert!(!supports(isa)),
            }
        }
        assert_eq!(dot2x2_table().is_some(), supports(Isa::I8mm));
    }

    /// Addresses of (dot, gemm, x16) of every integer weight row.
    fn integer_rows(t: &KernelTable) -> Vec<(&'static str, usize, Option<usize>, Option<usize>)> {
        macro_rules! rows {
            ($($f:ident),*) => {
                vec![$((
                    stringify!($f),
                    t.$f.dot as usize,
                    t.$f.gemm.map(|f| f as usize),
                    t.$f.x16.map(|f| f as usize),
                )),*]
            };
        }
        rows!(q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs)
    }

    /// The types with x16 kernels (weights packed at load time) on aarch64.
    const X16_TYPES: [&str; 3] = ["q4_0", "q4_1", "q8_0"];

    /// Every integer weight type has its own dot on every tier (not the
    /// tier below's, not the scalar reference's), so the reference tests
    /// above run each tier's kernels; the multi-row kernels sit in the tiers
    /// that have them: x16 (packed weights) from dotprod up, i8mm's own
    /// (`smmla` for column pairs); the `smmla` gemm (file layout) in i8mm
    /// only, for every integer type. A lost entry fails here instead of
    /// silently falling back to the tier below or to single dots.
    #[test]
    fn every_integer_type_has_its_own_entries_per_tier() {
        let scalar = crate::dispatch::SCALAR;
        let mut below = integer_rows(&scalar);
        for isa in [Isa::Neon, Isa::Dotprod, Isa::I8mm] {
            let Some(t) = table(isa, scalar) else {
                continue;
            };
            let rows = integer_rows(&t);
            for ((name, dot, gemm, x16), (_, below_dot, _, below_x16)) in rows.iter().zip(&below) {
                assert_ne!(dot, below_dot, "{isa} {name}: the dot of the tier below");
                assert_eq!(gemm.is_some(), isa == Isa::I8mm, "{isa} {name} gemm");
                let packed = isa != Isa::Neon && X16_TYPES.contains(name);
                assert_eq!(x16.is_some(), packed, "{isa} {name} x16");
                if packed {
                    assert_ne!(x16, below_x16, "{isa} {name}: the x16 of the tier below");
                }
            }
            below = rows;
        }
    }

    /// Under `SOTTO_ISA=<tier>` (scripts/test-aarch64.sh) the process-wide
    /// table must be exactly that tier, and its entries must match the
    /// references: the forced path is the one the ops tests then run on.
    #[test]
    fn forced_path_is_the_process_table() {
        let Ok(forced) = std::env::var("SOTTO_ISA") else {
            return;
        };
        let Ok(isa) = Isa::parse(&forced) else {
            return;
        };
        if !matches!(isa, Isa::Neon | Isa::Dotprod | Isa::I8mm) {
            return;
        }
        match crate::dispatch::try_table() {
            Ok(t) => {
                assert_eq!(t.isa, isa, "SOTTO_ISA={forced}");
                test_support::check_table(t, 0xF0_2CED);
            }
            Err(e) => assert!(
                !supports(isa),
                "SOTTO_ISA={forced} supported but refused: {e}"
            ),
        }
    }

    /// Every entry of every tier's table against the reference, through the
    /// table itself, so a wrong wiring (say q4_0 pointing at the q8_0 kernel)
    /// fails even when each kernel is right.
    #[test]
    fn every_table_entry_matches_reference() {
        let scalar = crate::dispatch::SCALAR;
        for isa in [Isa::Neon, Isa::Dotprod, Isa::I8mm] {
            if let Some(t) = table(isa, scalar) {
                test_support::check_table(&t, 0x5077_0000 ^ isa as u64);
            }
        }
    }
}
