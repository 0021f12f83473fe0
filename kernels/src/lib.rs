//! sotto-kernels: the numeric heart of Sotto.
//!
//! * [`quant`]: quant block types (ggml-compatible layouts) with scalar
//!   references, one file per type, and the [`quant::DType`] registry.
//! * [`dispatch`]: the one place that reads CPU features (once) and picks a
//!   kernel table; `SOTTO_ISA` forces a path.
//! * [`arch`]: per-ISA SIMD implementations. The only place with `unsafe`.
//! * [`ops`]: safe operators built on the table: matmul (decode matvec and
//!   prefill matmul), RMSNorm, RoPE, softmax, activations, attention.

pub mod arch;
pub mod dispatch;
mod error;
pub mod ops;
pub mod quant;

pub use error::{Error, Result};
