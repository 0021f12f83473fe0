//! Per-ISA SIMD kernels, the only `unsafe` code of the crate. Each
//! architecture module exposes `supports(isa)` and `table(isa, scalar)`,
//! which hands out its kernels only after the runtime feature check.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// Asks for the cache line `offset` bytes into `x` in L1; `offset` may
/// point past `x` (a hint for a stream the caller reads on; nothing on
/// targets without one here).
pub(crate) fn prefetch_l1_at<T>(x: &[T], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = x.as_ptr().cast::<i8>().wrapping_add(offset);
        // SAFETY: a prefetch reads nothing architecturally and never
        // faults, wherever it points; SSE is part of the x86-64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, offset);
}

/// Asks for the cache lines of `x` in L2: a hint, for data the caller
/// reads soon (nothing on targets without one here).
pub(crate) fn prefetch_l2<T>(x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let p = x.as_ptr().cast::<i8>();
        for off in (0..std::mem::size_of_val(x)).step_by(64) {
            // SAFETY: a prefetch reads nothing architecturally, and the
            // address is inside `x`; SSE is part of the x86-64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}
