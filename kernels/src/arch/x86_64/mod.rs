//! x86-64 kernels, four tiers, each table built from the one below and
//! overridden (tract-style):
//!
//! * `avx2`: AVX2 + FMA + F16C, every dot and the activation quantizers,
//!   a gemm over the file's layout with one weight row per 32-bit lane,
//!   for prefill and decode alike (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K;
//!   `avx2_lanes.rs`, the blocks unpacked by `avx2_gemm.rs`), the same
//!   kernel over the x16 panels for those types (`avx2_x16.rs`: the
//!   weights repacked at load, decode without gathers, the same bits), and
//!   attention's block kernels over the f16 cache (`avx2_attn.rs`) and
//!   its tiled kernels (`avx2_attn_tile.rs`: `6 x 16` register tiles).
//! * `avxvnni`: AVX-VNNI (VEX `vpdpbusd` on ymm, for client cores without
//!   AVX-512): the AVX2 table with the Q4_0, Q4_1 and Q8_0 dots on
//!   `vpdpbusd` (for the types without a gemm: decode of the others goes
//!   through the AVX2 gemm, batch-invariant). Selected below `avx512` when
//!   both exist.
//! * `avx512`: AVX-512 F/BW/VL legacy-quant and Q6_K dots, and the
//!   lane-per-row gemm (decode matvec and prefill matmul) for Q4_0, Q4_1
//!   and Q5_0 (`avx512.rs`) and Q4_K, Q5_K, Q6_K (`kquant_x16.rs`), over
//!   the x16 panels and the file's layout.
//! * `vnni`: the same kernels with `vpdpbusd`, plus the Q8_0 gemm.
//!
//! The Q4_K and Q5_K dots, float dots and the quantizers stay on AVX2 in
//! every tier.

use crate::dispatch::{Isa, KernelTable};

/// Asks for the line at `$at + $near` into L1 and the one at `$at + $far`
/// into L2 (`$near` and `$far` constants), for decode's streaming loops.
/// The prefetches are `asm!`, not `_mm_prefetch`: LLVM's scheduler can
/// move intrinsic prefetches of an unrolled loop after its last dot step,
/// where an `asm!` block with side effects keeps its place among the loads
/// (see `kquant_x16.rs`, `prefetch_step`). The caller allows
/// `clippy::pointers_in_nomem_asm_block`: the pointer is only an address.
macro_rules! prefetch_l1_l2 {
    ($at:expr, $near:expr, $far:expr) => {{
        let at: *const u8 = $at;
        // SAFETY: a prefetch reads and writes nothing architecturally and
        // never faults, wherever it points; SSE is part of the x86-64
        // baseline.
        unsafe {
            core::arch::asm!(
                "prefetcht0 [{at} + {near}]",
                at = in(reg) at,
                near = const $near,
                options(nomem, nostack, preserves_flags)
            );
            core::arch::asm!(
                "prefetcht1 [{at} + {far}]",
                at = in(reg) at,
                far = const $far,
                options(nomem, nostack, preserves_flags)
            );
        }
    }};
}

mod avx2;
mod avx2_attn;
mod avx2_attn_tile;
mod avx2_gemm;
mod avx2_lanes;
mod avx2_x16;
mod avx512;
mod avx512_attn;
mod avx512_lowbit;
mod avxvnni;
mod kquant_x16;
mod vnni;

/// Multiply-adds of `iters` rounds of the integer dot step's peak loop of
/// `isa` (see [`crate::probe`]); `None` for a tier without one here (the
/// x16 gemm tiers have one) or a CPU without the tier.
pub fn int8_dot_peak(isa: Isa, iters: usize) -> Option<u64> {
    if !supports(isa) {
        return None;
    }
    match isa {
        // SAFETY: the tier's features were just detected.
        Isa::Vnni => Some(unsafe { vnni::dot_peak(iters) }),
        // SAFETY: as above.
        Isa::Avx512 => Some(unsafe { avx512::dot_peak(iters) }),
        _ => None,
    }
}

/// The AVX-512 tables' tiled attention: the values multiplied as bf16
/// pairs where the CPU has AVX-512 BF16 (`dispatch::ValueDot`), unless
/// `SOTTO_ATTN_BF16=0` (or `off`, `false`, any case) asks for f32
/// products; unset, empty or any other value keeps the bf16 pairs.
pub(super) fn attn_tile_avx512() -> crate::dispatch::AttnTileKernels {
    let off = env_switch("SOTTO_ATTN_BF16") == Some(false);
    if !off && bf16() {
        avx512_attn::KERNELS_BF16
    } else {
        avx512_attn::KERNELS
    }
}

/// A switch set in the environment variable `name`: `Some(true)` for `1`,
/// `on` or `true`, `Some(false)` for `0`, `off` or `false` (any case,
/// spaces around ignored), `None` when unset or anything else.
fn env_switch(name: &str) -> Option<bool> {
    let v = std::env::var(name).ok()?;
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" => Some(true),
        "0" | "off" | "false" => Some(false),
        _ => None,
    }
}

/// Whether decode's x16 loops of the legacy types (Q4_0 … Q8_0) and of
/// Q6_K prefetch ahead of the record in use (into L1 and L2, where
/// prefill's ask for L1 only): on Intel cores only, unless `SOTTO_DECODE_PREFETCH` ([`env_switch`]) says. A
/// Xeon core's DRAM stream is bound by its outstanding misses (a plain
/// read: 11 GiB/s on 1 thread), and the prefetches took the stream bench's
/// Q4_0 decode from 9.9 to 13.1 GiB/s and Q6_K's from 12.0 to 15.6; on an
/// AMD EPYC (Zen 4) the hardware prefetcher alone read faster (see the
/// loops' comments). The switch is a measured heuristic of two hosts, so
/// the variable lets a bench compare both paths on any one; they do the
/// same arithmetic, and the kernel tests run both ([`forcing_decode_prefetch`]).
pub(crate) fn decode_prefetch() -> bool {
    #[cfg(test)]
    if let Some(forced) = FORCED_DECODE_PREFETCH.get() {
        return forced;
    }
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        env_switch("SOTTO_DECODE_PREFETCH").unwrap_or_else(|| {
            #[allow(unused_unsafe)]
            // SAFETY: leaf 0 of cpuid exists on every x86-64 CPU.
            let id = unsafe { core::arch::x86_64::__cpuid(0) };
            // the vendor string is ebx, edx, ecx: "Genu" "ineI" "ntel"
            [id.ebx, id.edx, id.ecx] == [*b"Genu", *b"ineI", *b"ntel"].map(u32::from_le_bytes)
        })
    })
}

#[cfg(test)]
thread_local! {
    /// [`decode_prefetch`]'s answer on this thread, set by
    /// [`forcing_decode_prefetch`].
    static FORCED_DECODE_PREFETCH: std::cell::Cell<Option<bool>> =
        const { std::cell::Cell::new(None) };
}

/// Runs `f` with [`decode_prefetch`] answering `on` on this thread (the
/// kernel tests call the x16 entries on their own thread), so the tests
/// run both paths whatever the CPU's vendor.
#[cfg(test)]
pub(crate) fn forcing_decode_prefetch<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let before = FORCED_DECODE_PREFETCH.replace(Some(on));
    let out = f();
    FORCED_DECODE_PREFETCH.set(before);
    out
}

/// The AVX-512 tables' tiled attention with f32 value products.
pub(crate) fn attn_tile_avx512_f32() -> Option<crate::dispatch::AttnTileKernels> {
    supports(Isa::Avx512).then_some(avx512_attn::KERNELS)
}

/// AVX-512 BF16, with the AVX-512 its kernels also use.
fn bf16() -> bool {
    supports(Isa::Avx512) && is_x86_feature_detected!("avx512bf16")
}

/// Every AVX-512 tiled attention this CPU runs, whichever the tables took.
#[cfg(test)]
pub(crate) fn attn_tile_avx512_variants() -> Vec<crate::dispatch::AttnTileKernels> {
    let mut all = Vec::new();
    if supports(Isa::Avx512) {
        all.push(avx512_attn::KERNELS);
    }
    if bf16() {
        all.push(avx512_attn::KERNELS_BF16);
    }
    all
}

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
        Isa::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
        Isa::Avx512 => avx512,
        Isa::Vnni => avx512 && is_x86_feature_detected!("avx512vnni"),
        Isa::Scalar | Isa::Neon | Isa::Dotprod | Isa::I8mm => false,
    }
}

/// The table for `isa`, or `None` when the CPU lacks its features.
pub fn table(isa: Isa, scalar: KernelTable) -> Option<KernelTable> {
    if !supports(isa) {
        return None;
    }
    let with_avx2 = avx2::overrides(scalar);
    let table = match isa {
        Isa::Avx2 => with_avx2,
        Isa::AvxVnni => avxvnni::overrides(with_avx2),
        Isa::Avx512 => avx512::overrides(with_avx2),
        Isa::Vnni => vnni::overrides(avx512::overrides(with_avx2)),
        Isa::Scalar | Isa::Neon | Isa::Dotprod | Isa::I8mm => return None,
    };
    Some(KernelTable { isa, ..table })
}

/// How far ahead of the key (or value) row a direct kernel reads it asks
/// the caches for the same bytes: a decode step reads its KV head's rows
/// once, from memory (the weights streaming through between two layers
/// evict them), and a read that waits for each 4 KiB page's hardware
/// prefetch to start again runs at a third of the weights' bandwidth.
/// 32 rows of a 128-wide f16 head are 8 KiB, two pages ahead.
pub(super) const AHEAD: usize = 32;

/// Asks L1 for line `line` of the row `row` of `hd` f16 values at `base`;
/// the address may lie past the slice (a prefetch reads nothing).
#[inline(always)]
pub(super) fn prefetch_line(base: *const half::f16, row: usize, hd: usize, line: usize) {
    let at = base
        .wrapping_add(row * hd)
        .cast::<i8>()
        .wrapping_add(64 * line);
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch neither reads nor faults architecturally.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(at) };
}

/// A key or value row's element: f32 from a widened tile
/// (the tiled attention kernels), or f16 from the cache.
/// Whether a tiled `accumulate` kernel can index these shapes: `v` whole
/// rows of `hd`, `acc` a row per `lim`, `p` ATTN_TILE weights per row, no
/// row past the values or the tile. Else the reference runs on
/// [`widened`] values.
pub(super) fn accumulate_fits<T>(
    v: &[T],
    hd: usize,
    p: &[f32],
    lim: &[usize],
    acc: &[f32],
) -> bool {
    use crate::dispatch::ATTN_TILE;
    hd > 0
        && v.len().is_multiple_of(hd)
        && acc.len() == lim.len() * hd
        && p.len() >= lim.len() * ATTN_TILE
        && lim.iter().all(|&n| n <= (v.len() / hd).min(ATTN_TILE))
}

/// `v` as f32.
pub(super) fn widened<T: Elem>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.widen()).collect()
}

pub(super) trait Elem: Copy {
    const F16: bool;
    fn widen(self) -> f32;
}
impl Elem for f32 {
    const F16: bool = false;
    fn widen(self) -> f32 {
        self
    }
}
impl Elem for half::f16 {
    const F16: bool = true;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}
