//! Per-ISA SIMD kernels, the only `unsafe` code of the crate. Each
//! architecture module exposes `supports(isa)` and `table(isa, scalar)`,
//! which hands out its kernels only after the runtime feature check.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
