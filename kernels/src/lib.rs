//! sotto-kernels: the numeric heart of Sotto.
//!
//! * [`quant`]: quant block types (ggml-compatible layouts) with scalar
//!   references, one file per type, the registry that makes them
//!   [`quant::DType`]s, and [`quant::GgmlType`] for every ggml type id.
//! * [`dispatch`]: the kernel tables (one row per weight type, per ISA) and
//!   the one place that reads CPU features (once) and picks the
//!   process-wide table; `SOTTO_ISA` forces a path. Ops take a table.
//! * `arch` (private): per-ISA SIMD implementations. The only place with
//!   `unsafe`.
//! * [`ops`]: safe operators built on the table: matmul (decode matvec and
//!   prefill matmul), RMSNorm, RoPE, softmax, activations, attention.
//! * [`cache`]: the machine's cache sizes (sysfs), for blocking.
//! * [`probe`]: the peak of a tier's integer dot step and a prefetching read, for benchmarks.

// Tests assert by unwrapping; library code may not.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub(crate) mod arch;
pub mod cache;
pub mod dispatch;
mod error;
pub mod ops;
pub mod probe;
pub mod quant;
mod scratch;

pub use error::{Error, Result};
