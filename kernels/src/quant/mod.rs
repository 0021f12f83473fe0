//! Quantized block types. One file per type (`q4_0.rs`, `q4_1.rs`, …): the
//! `#[repr(C)]` block with a size assertion, scalar quantize / dequantize / dot
//! references, and the activation type it pairs with. This module holds the
//! registry: [`DType`] with one row of facts per type.
//!
//! CONTRACT (shared by every helper working on kernels; change only with care):
//! - block structs are `#[repr(C)]`, `bytemuck::Pod`, layouts identical to ggml;
//! - `DType` discriminants are ggml's type ids;
//! - the SIMD table in `crate::dispatch::VecDotTable` has one field per
//!   (weight type, activation type) pair.
