//! The crate's one error type.

use crate::dispatch::Isa;
use crate::quant::{DType, GgmlType};

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a kernel call or a type lookup was refused. Every variant names the
/// operation (`op`) that refused; nothing was written when it is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A buffer holds the wrong number of elements.
    #[error("{op}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// Elements the shape calls for.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// An argument is out of its range.
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The operation has no kernel for this type (e.g. an activation type
    /// used as a weight).
    #[error("{op}: dtype {dtype:?} is not supported here")]
    UnsupportedDType {
        /// The operation.
        op: &'static str,
        /// The type given.
        dtype: DType,
    },
    /// A row is not a whole number of blocks.
    #[error("{op}: {cols} columns is not a multiple of the {dtype:?} block size {block}")]
    RaggedRow {
        /// The operation.
        op: &'static str,
        /// The row's type.
        dtype: DType,
        /// Elements per row.
        cols: usize,
        /// Elements per block of `dtype`.
        block: usize,
    },
    /// A byte size does not fit in `usize`.
    #[error("{op}: byte size overflows usize")]
    SizeOverflow {
        /// The operation.
        op: &'static str,
    },
    /// Bytes cannot be viewed as blocks: misaligned or a partial block.
    #[error(
        "{op}: data is not aligned to {align} bytes (or not a whole number of {dtype:?} blocks)"
    )]
    Misaligned {
        /// The operation.
        op: &'static str,
        /// The blocks' type.
        dtype: DType,
        /// The alignment it needs, in bytes.
        align: usize,
    },
    /// A ggml type id ggml does not define.
    #[error("ggml type id {id} is not a ggml type (removed, or newer than this build)")]
    UnknownGgmlType {
        /// The id read.
        id: u32,
    },
    /// A ggml type Sotto has no kernels for (files with it still parse).
    #[error("ggml type {ty} (id {}) has no kernels in sotto", ty.id())]
    UnsupportedGgmlType {
        /// The type.
        ty: GgmlType,
    },
    /// A forced ISA (`SOTTO_ISA`, or a table asked for by name) this CPU lacks.
    #[error("instruction set {isa:?} is not available on this CPU")]
    IsaUnavailable {
        /// The ISA asked for.
        isa: Isa,
    },
    /// A name that is no ISA.
    #[error("SOTTO_ISA={value:?} is not one of scalar, avx2, avx512, vnni, neon, dotprod, i8mm")]
    UnknownIsa {
        /// The name given.
        value: String,
    },
}
