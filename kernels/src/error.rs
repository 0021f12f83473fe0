//! The crate's one error type.

use crate::dispatch::Isa;
use crate::quant::{DType, GgmlType};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{op}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        op: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
    #[error("{op}: dtype {dtype:?} is not supported here")]
    UnsupportedDType { op: &'static str, dtype: DType },
    #[error("{op}: {cols} columns is not a multiple of the {dtype:?} block size {block}")]
    RaggedRow {
        op: &'static str,
        dtype: DType,
        cols: usize,
        block: usize,
    },
    #[error("{op}: byte size overflows usize")]
    SizeOverflow { op: &'static str },
    #[error(
        "{op}: data is not aligned to {align} bytes (or not a whole number of {dtype:?} blocks)"
    )]
    Misaligned {
        op: &'static str,
        dtype: DType,
        align: usize,
    },
    #[error("ggml type id {id} is not a ggml type (removed, or newer than this build)")]
    UnknownGgmlType { id: u32 },
    #[error("ggml type {ty} (id {}) has no kernels in sotto", ty.id())]
    UnsupportedGgmlType { ty: GgmlType },
    #[error("instruction set {isa:?} is not available on this CPU")]
    IsaUnavailable { isa: Isa },
    #[error("SOTTO_ISA={value:?} is not one of scalar, avx2, avx512, vnni, neon, dotprod, i8mm")]
    UnknownIsa { value: String },
}
