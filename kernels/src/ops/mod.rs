//! Safe operators on top of the dispatch table. No `unsafe` here: every
//! SIMD path is reached through [`crate::dispatch::KernelTable`].

pub(crate) mod activation;
pub(crate) mod attention;
pub(crate) mod attention_tiled;
pub(crate) mod hadamard;
mod kv_plane;
mod matmul;
mod norm;
mod rope;

pub use activation::{
    gelu_tanh_mul, gelu_tanh_mul_with, silu_mul, silu_mul_with, softcap, softmax,
};
pub use attention::{attention, attention_kv_with, attention_with, AttentionParams, KvLayout};
pub use hadamard::Hadamard;
pub use kv_plane::{KvPlane, KvRows, KvType};
pub use matmul::{
    matmul, matmul_packed, matmul_packed_group, matmul_packed_group_with, matmul_packed_with,
    matmul_with, PackedMatrix, PackedSource, QMatrix,
};
pub use norm::{rms_norm, rms_norm_in_place};
pub use rope::{RopeCache, RopeStyle};

/// Elements from which a row-wise operator over many rows (a prompt's
/// norms, rotations and residual adds) takes the pool, rows split across
/// it: on the calling thread they left the rest of the pool waiting, ~1 %
/// of a Llama-3.2-1B-shaped prefill on 2 threads. Each row's arithmetic is
/// the same either way; a decoded token's rows stay on one thread.
pub const PARALLEL_MIN: usize = 1 << 15;
