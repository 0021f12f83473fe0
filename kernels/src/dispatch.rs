//! The one dispatch point. CPU features are read once; the best table is
//! cached; `SOTTO_ISA=scalar|avx2|avxvnni|avx512|vnni|neon|dotprod|i8mm` forces a path
//! (an unavailable forced path is an error, never a silent downgrade).
//!
//! CONTRACT: [`KernelTable`] has one [`WeightRow`] per weight type and one
//! [`ActivationRow`] per activation type, keyed by the block type (the
//! registry in `crate::quant` generates both lists); a weight type reaches
//! its activation quantizer through its `Act` type's row. Every row of the
//! scalar table holds the references of `quant/<type>.rs`; per-ISA tables
//! start from the tier below and override what they implement
//! (`KernelTable { q4_0: WeightRow { dot: kernel, ..t.q4_0 }, ..t }`), so a
//! new type or entry never breaks an architecture's table.

use crate::ops::{activation, attention};
use crate::quant::{float, registry, ActivationBlock, WeightBlock};
use crate::{Error, Result};
use half::f16;
use std::sync::OnceLock;

/// Dot product of `w` and `a` (same element count; kernels use the shorter).
pub type VecDotFn<W, A> = fn(w: &[W], a: &[A]) -> f32;
/// Quantize a row of f32 activations (len = blocks * block size) into blocks.
pub type QuantizeFn<A> = fn(x: &[f32], out: &mut [A]);
/// `y += alpha * x` over the shorter of the two.
pub type AxpyFn<X> = fn(alpha: f32, x: &[X], y: &mut [f32]);
/// Scores of a block of keys for a few query heads sharing them:
/// `out[g * nk + j] = k_j · q_g`, with `nk = k.len() / head_dim` key rows
/// and `q.len() / head_dim` queries (`quant::float::attn_scores_f16` is the
/// reference).
pub type AttnScoresFn = fn(k: &[f16], head_dim: usize, q: &[f32], out: &mut [f32]);
/// `acc_g += sum_j p[g * nk + j] * v_j` over a block of `nk = v.len() /
/// head_dim` value rows (`quant::float::attn_accumulate_f16` is the
/// reference).
pub type AttnAccumulateFn = fn(v: &[f16], head_dim: usize, p: &[f32], acc: &mut [f32]);

/// Attention's block kernels: each key and value row of the f16 cache is
/// converted once for all the query heads of a group, and the output rows
/// stay in registers across a block of keys. A table without them runs
/// attention on [`KernelTable::axpy_f16`] and the f16 dot.
#[derive(Clone, Copy, Debug)]
pub struct AttnBlockKernels {
    /// `q·k` of every (head, key) pair of the block.
    pub scores: AttnScoresFn,
    /// The softmax-weighted sum of the block's value rows into each head's
    /// output.
    pub accumulate: AttnAccumulateFn,
}

/// Keys per tile of the tiled f16 attention (`ops::attention_tiled`): the
/// keys of a key tile ([`KeyTile`]), and the stride of a row of scores.
pub const ATTN_TILE: usize = 64;

/// Widens the `k.len() / head_dim` key rows of `k` into keys `col0..` of
/// a key tile laid out as the table's [`KeyTile`] says
/// (`ops::attention_tiled::load_keys_ref` is the reference).
pub type AttnLoadKeysFn = fn(k: &[f16], head_dim: usize, col0: usize, kt: &mut [f32]);
/// Scores of the tile's first `nk` keys for `q.len() / head_dim` query
/// rows: `out[r * ATTN_TILE + j]` is `q_r · k_j`, summed in the order of
/// the table's [`KeyTile`]; columns from `nk` up to the next vector may be
/// written with anything (`ops::attention_tiled::scores_ref`).
pub type AttnTileScoresFn = fn(kt: &[f32], head_dim: usize, nk: usize, q: &[f32], out: &mut [f32]);

/// How a table's tiled kernels lay out a key tile (`head_dim x ATTN_TILE`
/// floats) and sum a score over it, each layout with the order its kernels
/// run fast in. Part of the table, so every tiling of one table gives a
/// score the same bits. Over heads of 64 to 256 elements one chain rounds
/// about twice as far from the exact score as eight do, and the softmax
/// turns a score's absolute error into its weight's relative error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTile {
    /// Transposed, `kt[d * ATTN_TILE + j] = k_j[d]`, for scores as
    /// broadcast-FMA gemms with no horizontal sum; a score is one FMA
    /// chain over the head in order, `s = fma(q[d], k[d], s)` from zero.
    Columns,
    /// The cache's rows widened, `kt[j * head_dim + d] = k_j[d]`; a score
    /// is eight FMA chains from zero (element `d` into chain `d % 8`, in
    /// order, over the head's whole groups of 8), summed as chain `i` plus
    /// chain `i + 4`, those `i` plus `i + 2`, then `0` plus `1`, then plus
    /// the products `q[d] * k[d]` past the last whole 8, summed in order:
    /// the AVX2 block kernels' scores (an 8-lane FMA chain and `hsum`'s
    /// tree), bit for bit.
    Rows,
}

impl KeyTile {
    /// Where element `d` of key `j` lies in a tile of this layout.
    pub fn at(self, head_dim: usize, j: usize, d: usize) -> usize {
        match self {
            KeyTile::Columns => d * ATTN_TILE + j,
            KeyTile::Rows => j * head_dim + d,
        }
    }
}

/// How a table's tiled kernels multiply the softmax weights by the values,
/// per row `r` of the output (its first `lim[r]` keys, in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDot {
    /// `acc_r[d] = fma(p_j, v_j[d], acc_r[d])` for each key `j` in order.
    F32,
    /// The keys in pairs from the tile's first, `(2i, 2i + 1)`, weights
    /// and values rounded to bf16 (to nearest even, denormals to zero)
    /// and multiplied exactly, each pair as AVX-512 BF16's `vdpbf16ps`
    /// adds it: `acc += p_2i+1 v_2i+1`, then `acc += p_2i v_2i`, each sum
    /// rounded to f32 and a denormal sum flushed to zero; a row's odd last
    /// key is paired with a zero weight and a zero value. Twice the
    /// products per instruction of an f32 FMA, for 8-bit weights and
    /// values summed in f32: their error is below that of the 8-bit
    /// activations the output projection quantizes next.
    Bf16Pairs,
}

/// Per row `r` of `acc` (`lim.len()` rows of `head_dim`), over its keys
/// `j < lim[r]` in order, `acc_r += p[r * ATTN_TILE + j] * v_j` as the
/// table's [`ValueDot`] says, with `v` rows of `head_dim` (f32, or f16
/// widened) (`ops::attention_tiled::accumulate_ref`).
pub type AttnTileAccumulateFn<V> =
    fn(v: &[V], head_dim: usize, p: &[f32], lim: &[usize], acc: &mut [f32]);
/// Per row `r` (`lim.len()` of them), the online-softmax step over its
/// first `lim[r]` scores of `scores` (rows of ATTN_TILE), scaled by
/// `scale`: the running `m[r]`, `l[r]` and output row `acc_r` (rows of
/// `acc.len() / lim.len()`) updated, the scores turned into weights
/// (`ops::attention_tiled::softmax_ref`: the table's softmax step per row).
pub type AttnTileSoftmaxFn = fn(
    scores: &mut [f32],
    lim: &[usize],
    scale: f32,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
);

/// The tiled f16 attention's kernels: each key and value tile is widened
/// once for every query row of a unit (tokens times the heads of a group),
/// and scores and outputs are register-blocked small gemms, each result
/// summed in one fixed order (a score in its [`KeyTile`]'s), so their bits
/// never depend on how rows or keys are tiled (prefill and decode agree
/// bit for bit). Every entry is exact against its scalar reference.
#[derive(Clone, Copy, Debug)]
pub struct AttnTileKernels {
    /// The layout of `load_keys`' tiles and the order `scores` and
    /// `scores_f16` sum a score in.
    pub key_tile: KeyTile,
    /// Key rows into a key tile.
    pub load_keys: AttnLoadKeysFn,
    /// Value rows widened to f32, as they lie (`out.len()` values).
    pub load_values: fn(v: &[f16], out: &mut [f32]),
    /// Scores of a tile for many query rows.
    pub scores: AttnTileScoresFn,
    /// The online-softmax step of many rows over a tile's scores.
    pub softmax: AttnTileSoftmaxFn,
    /// How `accumulate` and `accumulate_f16` multiply and sum.
    pub value_dot: ValueDot,
    /// Softmax-weighted value rows into many output rows.
    pub accumulate: AttnTileAccumulateFn<f32>,
    /// `load_keys` then `scores` in one pass over `k`'s rows (at most
    /// [`ATTN_TILE`], `nk` = all of them), the tile kept in registers: for
    /// a few rows (a decode step), where storing and reloading the tile
    /// cost more than its FMAs. The same bits.
    pub scores_f16: fn(k: &[f16], head_dim: usize, q: &[f32], out: &mut [f32]),
    /// `load_values` then `accumulate`, each value row widened in
    /// registers: the same bits.
    pub accumulate_f16: AttnTileAccumulateFn<f16>,
}

/// `acc_g += sum_j p[g * nk + j] * v_j` over a block of `nk` value rows
/// stored as blocks (`B`: Q8_0 or Q4_0, `head_dim / 32` per row):
/// `ops::attention::accumulate_q8_0` / `accumulate_q4_0` are the
/// references.
pub type AttnAccumulateBlocksFn<B> = fn(v: &[B], head_dim: usize, p: &[f32], acc: &mut [f32]);

/// Attention's value accumulation over a quantized KV cache (its keys are
/// scored by the weight rows' q8_0 / q4_0 kernels).
#[derive(Clone, Copy, Debug)]
pub struct AttnQuantKernels {
    /// Q8_0 value rows.
    pub accumulate_q8_0: AttnAccumulateBlocksFn<crate::quant::blocks::BlockQ8_0>,
    /// Q4_0 value rows.
    pub accumulate_q4_0: AttnAccumulateBlocksFn<crate::quant::blocks::BlockQ4_0>,
}

/// One online-softmax step over a block of attention scores: scale them,
/// raise the running max, exponentiate against it; returns `(max, sum)`.
pub type SoftmaxBlockFn = fn(scores: &mut [f32], scale: f32, prev_max: f32) -> (f32, f32);
/// A gated activation in place: `gate[i] = act(gate[i]) * up[i]` over the
/// shorter of the two.
pub type GluFn = fn(gate: &mut [f32], up: &[f32]);
/// Many weight rows times many activation columns in one call:
/// `out[c * rows + r] = w[r] · a[c]`, where `w` holds `rows` rows and `a`
/// holds `cols` columns, each of `bpr` blocks (`rows = w.len() / bpr`,
/// `cols = a.len() / bpr`, `out.len() >= rows * cols`). A kernel unpacks each
/// weight block once for all columns, and the decode matvec (`cols == 1`)
/// shares each activation load across several rows.
pub type GemmFn<W, A> = fn(w: &[W], a: &[A], bpr: usize, out: &mut [f32]);
/// The gemm over weights repacked at load time into the x16 panels of
/// `quant::x16` (crate-private): `packed` holds `rows` rows (whole panels) of `bpr`
/// blocks, `a` holds `cols` columns; `out[c][r] = w[r] · a[c]`, each of
/// the first `cols` outputs at least `rows` long. Column by column, so a
/// band of rows writes straight into the token-major outputs of a prefill
/// (`out[c]` a piece of token `c`'s row) with no copy through a buffer.
/// `quant::x16::gemm_ref` is the reference.
pub type X16GemmFn<A> = fn(packed: &[u8], rows: usize, a: &[A], bpr: usize, out: &mut [&mut [f32]]);

/// What a table without a [`GemmFn`] for a type does: one `dot` per output,
/// weight row outer so the row stays hot in L1 across the columns. Also the
/// reference the gemm kernels are tested against.
pub fn gemm_by_dots<W, A>(dot: VecDotFn<W, A>, w: &[W], a: &[A], bpr: usize, out: &mut [f32]) {
    if bpr == 0 {
        return;
    }
    let rows = w.len() / bpr;
    for (r, wr) in w.chunks_exact(bpr).enumerate() {
        for (c, ac) in a.chunks_exact(bpr).enumerate() {
            if let Some(o) = out.get_mut(c * rows + r) {
                *o = dot(wr, ac);
            }
        }
    }
}

/// The shape checks every SIMD gemm wrapper makes before its kernel (which
/// then indexes without bounds checks): whole rows and columns, and an
/// output that holds them all.
pub(crate) fn gemm_shape_ok<W, A>(w: &[W], a: &[A], bpr: usize, out: &[f32]) -> bool {
    bpr > 0
        && w.len().is_multiple_of(bpr)
        && a.len().is_multiple_of(bpr)
        && (w.len() / bpr)
            .checked_mul(a.len() / bpr)
            .is_some_and(|n| n <= out.len())
}

/// The kernels of one weight type (ggml's `type_traits_cpu` row): its dot
/// against its activation type, and optionally a multi-row gemm over the
/// file's layout and one over the x16 panels (a table with an `x16` entry
/// wants the type repacked at load time).
#[derive(Debug)]
pub struct WeightRow<W: WeightBlock> {
    /// The dot of one row of weight blocks with as many activation blocks.
    pub dot: VecDotFn<W, W::Act>,
    /// `None`: [`gemm_by_dots`] over `dot`.
    pub gemm: Option<GemmFn<W, W::Act>>,
    /// `None`: keep the file's layout. Only for types with an x16 layout
    /// (`WeightBlock::X16_FIELDS`).
    pub x16: Option<X16GemmFn<W::Act>>,
}

impl<W: WeightBlock> Clone for WeightRow<W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W: WeightBlock> Copy for WeightRow<W> {}

impl<W: WeightBlock> WeightRow<W> {
    /// The scalar reference row.
    pub const fn reference() -> WeightRow<W> {
        WeightRow {
            dot: W::vec_dot_ref,
            gemm: None,
            x16: None,
        }
    }
}

/// The kernels of one activation type: its quantizer.
#[derive(Debug)]
pub struct ActivationRow<A: ActivationBlock> {
    /// Quantizes `out.len() * A::ELEMS` floats into activation blocks.
    pub quantize: QuantizeFn<A>,
}

impl<A: ActivationBlock> Clone for ActivationRow<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A: ActivationBlock> Copy for ActivationRow<A> {}

impl<A: ActivationBlock> ActivationRow<A> {
    /// The scalar reference row.
    pub const fn reference() -> ActivationRow<A> {
        ActivationRow {
            quantize: A::quantize_ref,
        }
    }
}

/// Builds [`KernelTable`] and [`SCALAR`] from the registry.
macro_rules! define_table {
    (() $($d:ident = $b:ty $([weight $w:ident])? $([act $a:ident])?,)*) => {
        /// One ISA's kernels: a row per weight type and per activation type
        /// (see the module docs), and attention's f16 axpy.
        #[derive(Clone, Copy, Debug)]
        pub struct KernelTable {
            /// The instruction set these kernels need.
            pub isa: Isa,
            $(
                $(#[doc = concat!("Kernels of ", stringify!($d), " weights.")] pub $w: WeightRow<$b>,)?
                $(#[doc = concat!("The quantizer to ", stringify!($d), " activations.")] pub $a: ActivationRow<$b>,)?
            )*
            /// Attention's value accumulation over the f16 KV cache.
            pub axpy_f16: AxpyFn<f16>,
            /// `None`: attention by single dots and axpys.
            pub attn_block: Option<AttnBlockKernels>,
            /// `None`: the f16 cache through `attn_block` (or single dots).
            pub attn_tile: Option<AttnTileKernels>,
            /// Attention over a Q8_0 / Q4_0 value cache.
            pub attn_quant: AttnQuantKernels,
            /// Attention's online-softmax step.
            pub softmax_block: SoftmaxBlockFn,
            /// SwiGLU's `silu(gate) * up`.
            pub silu_mul: GluFn,
            /// GeGLU's `gelu_tanh(gate) * up`.
            pub gelu_tanh_mul: GluFn,
        }

        /// The scalar references: correct everywhere, the baseline every SIMD
        /// table starts from and is tested against.
        pub const SCALAR: KernelTable = KernelTable {
            isa: Isa::Scalar,
            $($($w: WeightRow::reference(),)? $($a: ActivationRow::reference(),)?)*
            axpy_f16: float::axpy_f16,
            attn_block: None,
            attn_tile: None,
            attn_quant: AttnQuantKernels {
                accumulate_q8_0: attention::accumulate_q8_0,
                accumulate_q4_0: attention::accumulate_q4_0,
            },
            softmax_block: attention::softmax_block_ref,
            silu_mul: activation::silu_mul_ref,
            gelu_tanh_mul: activation::gelu_tanh_mul_ref,
        };
    };
}
registry!([define_table]);

impl KernelTable {
    /// The row of weight type `W`.
    pub fn weight<W: WeightBlock>(&self) -> &WeightRow<W> {
        W::weight_row(self)
    }
    /// The quantizer of activation type `A`.
    pub fn quantizer<A: ActivationBlock>(&self) -> QuantizeFn<A> {
        A::activation_row(self).quantize
    }
}

/// Instruction-set paths, from the portable reference up (on each
/// architecture the later available one is preferred).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, the reference every other path is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA (+ F16C).
    Avx2,
    /// AVX-VNNI: VEX-encoded 256-bit integer dot products (client cores
    /// without AVX-512); ranked below `Avx512`.
    AvxVnni,
    /// x86-64 AVX-512 (F, BW, VL).
    Avx512,
    /// AVX-512 VNNI integer dot products.
    Vnni,
    /// aarch64 Advanced SIMD.
    Neon,
    /// aarch64 NEON with the `sdot` integer dot product.
    Dotprod,
    /// aarch64 int8 matrix multiply (`smmla`).
    I8mm,
}

impl Isa {
    /// Every ISA this crate knows, scalar first (the available ones: [`available_isas`]).
    pub const ALL: [Isa; 8] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512,
        Isa::Vnni,
        Isa::Neon,
        Isa::Dotprod,
        Isa::I8mm,
    ];

    /// The `SOTTO_ISA` spelling (also used in bench names).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Vnni => "vnni",
            Isa::Neon => "neon",
            Isa::Dotprod => "dotprod",
            Isa::I8mm => "i8mm",
        }
    }

    /// The ISA spelled `s` (case and surrounding space ignored, as [`Isa::name`]
    /// writes it); [`Error::UnknownIsa`] otherwise.
    pub fn parse(s: &str) -> Result<Isa> {
        let s = s.trim().to_ascii_lowercase();
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or(Error::UnknownIsa { value: s })
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Builds the table of `isa` if this CPU can run it (each architecture's
/// `table` refuses the other architectures' paths).
fn build(isa: Isa) -> Option<KernelTable> {
    if isa == Isa::Scalar {
        return Some(SCALAR);
    }
    #[cfg(target_arch = "x86_64")]
    return crate::arch::x86_64::table(isa, SCALAR);
    #[cfg(target_arch = "aarch64")]
    return crate::arch::aarch64::table(isa, SCALAR);
    #[allow(unreachable_code)]
    None
}

/// Every path this CPU can run, best last.
pub fn available_isas() -> Vec<Isa> {
    Isa::ALL
        .into_iter()
        .filter(|&i| table_for(i).is_ok())
        .collect()
}

/// The table of a specific path (tests and benches run every available one
/// in one process). Built once per path.
pub fn table_for(isa: Isa) -> Result<&'static KernelTable> {
    static TABLES: [OnceLock<Option<KernelTable>>; Isa::ALL.len()] =
        [const { OnceLock::new() }; Isa::ALL.len()];
    let idx = Isa::ALL.iter().position(|&i| i == isa).unwrap_or(0);
    TABLES[idx]
        .get_or_init(|| build(isa))
        .as_ref()
        .ok_or(Error::IsaUnavailable { isa })
}

/// `t` (a table of [`table_for`]) with its tiled attention multiplying
/// the values in f32 ([`ValueDot::F32`]), or `t` itself where it does
/// already: for a model whose attention output meets no 8-bit
/// quantization next (its output projection in float weights), where
/// bf16 value products would be the largest error of the layer.
pub fn with_f32_values(t: &'static KernelTable) -> &'static KernelTable {
    if t.attn_tile.is_none_or(|tk| tk.value_dot == ValueDot::F32) {
        return t;
    }
    static TABLES: [OnceLock<KernelTable>; Isa::ALL.len()] =
        [const { OnceLock::new() }; Isa::ALL.len()];
    let idx = Isa::ALL.iter().position(|&i| i == t.isa).unwrap_or(0);
    TABLES[idx].get_or_init(|| KernelTable {
        attn_tile: f32_values_tile(t.isa),
        ..*t
    })
}

/// The tiled attention with f32 value products of `isa`'s table.
fn f32_values_tile(isa: Isa) -> Option<AttnTileKernels> {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Vnni) {
        return crate::arch::x86_64::attn_tile_avx512_f32();
    }
    table_for(isa).ok()?.attn_tile
}

/// The best path of this CPU, or the one `SOTTO_ISA` names.
fn select(forced: Option<&str>) -> Result<&'static KernelTable> {
    match forced {
        Some(name) if !name.trim().is_empty() => table_for(Isa::parse(name)?),
        _ => {
            let best = Isa::ALL
                .into_iter()
                .rev()
                .find(|&i| table_for(i).is_ok())
                .unwrap_or(Isa::Scalar);
            table_for(best)
        }
    }
}

/// The process-wide table, chosen once. An engine calls this at start-up so
/// a bad `SOTTO_ISA` (unknown, or unavailable on this CPU) is reported
/// instead of silently running another path, and hands the table down; the
/// ops' convenience entries without a table (`ops::matmul`, …) use it too
/// and propagate the same error.
pub fn try_table() -> Result<&'static KernelTable> {
    static CHOSEN: OnceLock<Result<&'static KernelTable>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| select(std::env::var("SOTTO_ISA").ok().as_deref()))
        .clone()
}

/// Infallible access for diagnostics: the chosen table, or the scalar one
/// when `SOTTO_ISA` is invalid (whose error [`try_table`] reports).
pub fn table() -> &'static KernelTable {
    try_table().unwrap_or(&SCALAR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data::random_row;
    use crate::quant::x16;
    use crate::quant::{with_weight_block, DType, QuantBlock};
    use bytemuck::Zeroable;

    fn blocks<B: QuantBlock>(x: &[f32]) -> Vec<B> {
        let mut b = vec![B::zeroed(); x.len() / B::ELEMS];
        B::quantize_ref(x, &mut b);
        b
    }

    fn dequantized<B: QuantBlock>(b: &[B]) -> Vec<f32> {
        let mut y = vec![0f32; b.len() * B::ELEMS];
        B::dequantize_ref(b, &mut y);
        y
    }

    fn close(got: f32, want: f32, scale: f32, budget: f32, what: &str) {
        assert!(
            (got - want).abs() <= budget * scale.max(1e-6),
            "{what}: {got} vs {want} (scale {scale})"
        );
    }

    /// `x` (`nb` blocks of `A`) quantized by `t` and by the reference give
    /// the same values within one code step (the SIMD quantizers round
    /// ties to even where some references round them away from zero).
    fn check_activation_row<A: ActivationBlock>(isa: Isa, t: &KernelTable, x: &[f32]) {
        let (mut got, mut want) = (
            vec![A::zeroed(); x.len() / A::ELEMS],
            vec![A::zeroed(); x.len() / A::ELEMS],
        );
        (t.quantizer::<A>())(x, &mut got);
        A::quantize_ref(x, &mut want);
        let (g, w) = (dequantized(&got), dequantized(&want));
        for (i, (xb, (gb, wb))) in x
            .chunks(A::ELEMS.max(32))
            .zip(g.chunks(A::ELEMS.max(32)).zip(w.chunks(A::ELEMS.max(32))))
            .enumerate()
        {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (p, q) in gb.iter().zip(wb) {
                close(
                    *p,
                    *q,
                    amax,
                    1.01 / 127.0,
                    &format!("{isa} quantize {} block {i}", A::DTYPE),
                );
            }
        }
    }

    /// Block counts per length: odd and even counts of every block size,
    /// and float lengths with tails past the SIMD widths.
    fn block_counts(elems: usize) -> &'static [usize] {
        match elems {
            1 => &[256, 1536, 1003, 224, 17],
            32 => &[1, 3, 7, 48, 72],
            _ => &[1, 3, 6, 9],
        }
    }

    /// The dot and the activation quantizer of `W`'s row in `t` against the
    /// references, over several lengths.
    fn check_weight_row<W: WeightBlock>(isa: Isa, t: &KernelTable) {
        let row = t.weight::<W>();
        for (k, &nb) in block_counts(W::ELEMS).iter().enumerate() {
            let n = nb * W::ELEMS;
            let seed = (W::DTYPE as u64) << 8 | k as u64;
            let (w, x) = (random_row(n, seed), random_row(n, seed + 77));
            let l1 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum::<f32>();
            let what = format!("{isa} {} n={n}", W::DTYPE);
            let (wb, ab): (Vec<W>, Vec<W::Act>) = (blocks(&w), blocks(&x));
            close(
                (row.dot)(&wb, &ab),
                W::vec_dot_ref(&wb, &ab),
                l1,
                1e-5,
                &format!("{what} dot"),
            );
            // the activations the ops quantize for this type, through its
            // activation type's row: the same dot within one code step
            check_activation_row::<W::Act>(isa, t, &x);
            let mut fast = vec![<W::Act>::zeroed(); ab.len()];
            (t.quantizer::<W::Act>())(&x, &mut fast);
            let wl1: f32 = dequantized(&wb).iter().map(|v| v.abs()).sum();
            let xmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            close(
                W::vec_dot_ref(&wb, &fast),
                W::vec_dot_ref(&wb, &ab),
                wl1 * xmax,
                1.01 / 127.0,
                &format!("{what} dot on the table's activations"),
            );
        }
    }

    /// A table's attention block kernels against the references, for
    /// 1..=6 query heads over `n` keys of several head sizes.
    fn check_attn_block(isa: Isa, b: AttnBlockKernels, n: usize) {
        for hd in [16usize, 40, 64, 80, 256] {
            let k: Vec<f16> = random_row(n * hd, 21 + n as u64)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect();
            for g in 1..=6usize {
                let q = random_row(g * hd, 7 + g as u64);
                let (mut fast, mut reference) = (vec![0f32; g * n], vec![0f32; g * n]);
                (b.scores)(&k, hd, &q, &mut fast);
                float::attn_scores_f16(&k, hd, &q, &mut reference);
                let scale = hd as f32;
                for (a, r) in fast.iter().zip(&reference) {
                    close(
                        *a,
                        *r,
                        scale,
                        1e-5,
                        &format!("{isa} attn scores hd={hd} g={g} n={n}"),
                    );
                }
                // each head alone gets the bits it gets beside the others
                // (decode and prefill group the heads differently)
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for h in 0..g {
                    let mut one = vec![0f32; n];
                    (b.scores)(&k, hd, &q[h * hd..(h + 1) * hd], &mut one);
                    let what = format!("{isa} attn scores hd={hd} g={g} n={n}: head {h} alone");
                    assert_eq!(bits(&one), bits(&fast[h * n..(h + 1) * n]), "{what}");
                    // and each key alone the bits it gets in the block (a
                    // block ends at a different key in decode and prefill)
                    for j in [0, n / 2, n - 1] {
                        let mut s = [0f32];
                        (b.scores)(
                            &k[j * hd..(j + 1) * hd],
                            hd,
                            &q[h * hd..(h + 1) * hd],
                            &mut s,
                        );
                        assert_eq!(s[0].to_bits(), fast[h * n + j].to_bits(), "{what}, key {j}");
                    }
                }
                let acc0 = random_row(g * hd, 3 + g as u64);
                let (mut fast, mut reference) = (acc0.clone(), acc0.clone());
                let p: Vec<f32> = random_row(g * n, 9).iter().map(|v| v.abs()).collect();
                (b.accumulate)(&k, hd, &p, &mut fast);
                float::attn_accumulate_f16(&k, hd, &p, &mut reference);
                for h in 0..g {
                    let mut one = acc0[h * hd..(h + 1) * hd].to_vec();
                    (b.accumulate)(&k, hd, &p[h * n..(h + 1) * n], &mut one);
                    let what = format!("{isa} attn accumulate hd={hd} g={g} n={n}: head {h} alone");
                    assert_eq!(bits(&one), bits(&fast[h * hd..(h + 1) * hd]), "{what}");
                }
                for (a, r) in fast.iter().zip(&reference) {
                    close(
                        *a,
                        *r,
                        1.0 + n as f32,
                        1e-5,
                        &format!("{isa} attn accumulate hd={hd} g={g} n={n}"),
                    );
                }
            }
        }
    }

    /// The tile's softmax step against its reference, bit for bit: ragged
    /// rows up to `nk` scores, scores large enough to reach the exponential's
    /// clamp, rows starting fresh, rows whose max the tile raises (their
    /// output rescaled) and rows it does not.
    fn check_attn_tile_softmax(isa: Isa, tk: AttnTileKernels, hd: usize, rows: usize, nk: usize) {
        use crate::ops::attention_tiled as r;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let lim: Vec<usize> = (0..rows).map(|r| nk - (r * 5) % nk).collect();
        let s0: Vec<f32> = random_row(rows * ATTN_TILE, 7 + nk as u64)
            .iter()
            .enumerate()
            .map(|(i, x)| x * [1.0, 40.0, 3000.0][i / ATTN_TILE % 3])
            .collect();
        let m0: Vec<f32> = (0..rows)
            .map(|r| [f32::NEG_INFINITY, -0.5, 0.05, 500.0][r % 4])
            .collect();
        let l0: Vec<f32> = (0..rows).map(|r| [0.0, 1.5, 7.0][r % 3]).collect();
        let acc0 = random_row(rows * hd, 8);
        let what = format!("{isa} softmax hd={hd} rows={rows} nk={nk}");
        for scale in [0.125f32, 1.0] {
            let (mut sf, mut sw) = (s0.clone(), s0.clone());
            let (mut mf, mut mw) = (m0.clone(), m0.clone());
            let (mut lf, mut lw) = (l0.clone(), l0.clone());
            let (mut af, mut aw) = (acc0.clone(), acc0.clone());
            (tk.softmax)(&mut sf, &lim, scale, &mut mf, &mut lf, &mut af);
            r::softmax_ref(&mut sw, &lim, scale, &mut mw, &mut lw, &mut aw);
            for (row, &n) in lim.iter().enumerate() {
                let at = row * ATTN_TILE;
                assert_eq!(bits(&sf[at..at + n]), bits(&sw[at..at + n]), "{what}");
            }
            assert_eq!((mf, bits(&lf)), (mw, bits(&lw)), "{what}");
            assert_eq!(bits(&af), bits(&aw), "{what}");
        }
    }

    /// A table's tiled attention kernels against the references, bit for
    /// bit (each result summed in the reference's order), over
    /// head sizes with and without a tail, row counts around the kernels'
    /// row tiles, partial key tiles and ragged per-row key counts.
    fn check_attn_tile(isa: Isa, tk: AttnTileKernels) {
        use crate::ops::attention_tiled as r;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for hd in [8usize, 16, 40, 44, 64, 80, 128] {
            for (col0, n) in [(0usize, 64usize), (0, 5), (3, 40), (17, 47), (60, 4)] {
                let k: Vec<f16> = random_row(n * hd, (hd + n) as u64)
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect();
                let mut fast = random_row(hd * ATTN_TILE, 1);
                let mut want = fast.clone();
                (tk.load_keys)(&k, hd, col0, &mut fast);
                r::load_keys_ref(tk.key_tile, &k, hd, col0, &mut want);
                assert_eq!(
                    bits(&fast),
                    bits(&want),
                    "{isa} load_keys hd={hd} {col0}+{n}"
                );
                let (mut fast, mut want) = (vec![0f32; k.len()], vec![1f32; k.len()]);
                (tk.load_values)(&k, &mut fast);
                r::load_values_ref(&k, &mut want);
                assert_eq!(bits(&fast), bits(&want), "{isa} load_values hd={hd} {n}");
            }
            let kt = random_row(hd * ATTN_TILE, 2 + hd as u64);
            for rows in [1usize, 2, 3, 5, 6, 7, 9, 13, 17, 40] {
                let q = random_row(rows * hd, 3 + rows as u64);
                for nk in [1usize, 5, 16, 17, 33, 63, 64] {
                    let mut fast = vec![f32::NAN; rows * ATTN_TILE];
                    let mut want = fast.clone();
                    (tk.scores)(&kt, hd, nk, &q, &mut fast);
                    r::scores_ref(tk.key_tile, &kt, hd, nk, &q, &mut want);
                    for row in 0..rows {
                        let at = row * ATTN_TILE;
                        assert_eq!(
                            bits(&fast[at..at + nk]),
                            bits(&want[at..at + nk]),
                            "{isa} scores hd={hd} rows={rows} nk={nk}"
                        );
                    }
                    let v = random_row(nk * hd, 4 + nk as u64);
                    let p: Vec<f32> = random_row(rows * ATTN_TILE, 5)
                        .iter()
                        .map(|x| x.abs())
                        .collect();
                    // ragged: row r reads nk - (r * 7 % nk) keys
                    let lim: Vec<usize> = (0..rows).map(|r| nk - (r * 7) % nk).collect();
                    let acc0 = random_row(rows * hd, 6);
                    let (mut fast, mut want) = (acc0.clone(), acc0.clone());
                    (tk.accumulate)(&v, hd, &p, &lim, &mut fast);
                    r::accumulate_ref_for(tk.value_dot, &v, hd, &p, &lim, &mut want);
                    assert_eq!(
                        bits(&fast),
                        bits(&want),
                        "{isa} accumulate hd={hd} rows={rows} nk={nk}"
                    );
                    check_attn_tile_softmax(isa, tk, hd, rows, nk);
                    // straight from f16 rows: the bits of the widened tile
                    let kh: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                    let widened: Vec<f32> = kh.iter().map(|x| x.to_f32()).collect();
                    let (mut fast, mut want) = (acc0.clone(), acc0.clone());
                    (tk.accumulate_f16)(&kh, hd, &p, &lim, &mut fast);
                    (tk.accumulate)(&widened, hd, &p, &lim, &mut want);
                    assert_eq!(
                        bits(&fast),
                        bits(&want),
                        "{isa} accumulate_f16 hd={hd} rows={rows} nk={nk}"
                    );
                    let mut kt = vec![0f32; hd * ATTN_TILE];
                    (tk.load_keys)(&kh, hd, 0, &mut kt);
                    let mut fast = vec![f32::NAN; rows * ATTN_TILE];
                    let mut want = fast.clone();
                    (tk.scores_f16)(&kh, hd, &q, &mut fast);
                    (tk.scores)(&kt, hd, nk, &q, &mut want);
                    let mut reference = fast.clone();
                    r::scores_f16_ref(tk.key_tile, &kh, hd, &q, &mut reference);
                    for row in 0..rows {
                        let at = row * ATTN_TILE;
                        let what = format!("{isa} scores_f16 hd={hd} rows={rows} nk={nk}");
                        assert_eq!(bits(&fast[at..at + nk]), bits(&want[at..at + nk]), "{what}");
                        assert_eq!(
                            bits(&fast[at..at + nk]),
                            bits(&reference[at..at + nk]),
                            "{what}"
                        );
                    }
                }
            }
        }
        // the reference is what it says: a dot and an axpy, up to rounding
        let (hd, nk) = (40, 9);
        let k: Vec<f16> = random_row(nk * hd, 8)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let q = random_row(2 * hd, 9);
        let mut kt = vec![0f32; hd * ATTN_TILE];
        (tk.load_keys)(&k, hd, 0, &mut kt);
        let mut s = vec![0f32; 2 * ATTN_TILE];
        (tk.scores)(&kt, hd, nk, &q, &mut s);
        let mut want = vec![0f32; 2 * nk];
        float::attn_scores_f16(&k, hd, &q, &mut want);
        for g in 0..2 {
            for j in 0..nk {
                close(
                    s[g * ATTN_TILE + j],
                    want[g * nk + j],
                    hd as f32,
                    1e-5,
                    "tile scores",
                );
            }
        }
    }

    /// Every tables' tiled attention, and each AVX-512 variant this CPU
    /// runs whichever its tables took (f32 and bf16 value products).
    fn attn_tiles() -> Vec<(Isa, AttnTileKernels)> {
        let mut all: Vec<(Isa, AttnTileKernels)> = available_isas()
            .into_iter()
            .filter_map(|isa| Some((isa, table_for(isa).ok()?.attn_tile?)))
            .collect();
        #[cfg(target_arch = "x86_64")]
        all.extend(
            crate::arch::x86_64::attn_tile_avx512_variants()
                .into_iter()
                .map(|tk| (Isa::Avx512, tk)),
        );
        all
    }

    #[test]
    fn attn_tile_kernels_match_the_references() {
        for (isa, tk) in attn_tiles() {
            check_attn_tile(isa, tk);
        }
    }

    /// Tiled kernels given inconsistent shapes do what the references do,
    /// without a panic or an out-of-bounds access.
    #[test]
    fn attn_tile_kernels_survive_malformed_shapes() {
        use crate::ops::attention_tiled as r;
        let k: Vec<f16> = random_row(3 * 64 + 5, 4)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let x = random_row(64 * ATTN_TILE + 7, 8);
        for (isa, tk) in attn_tiles() {
            // ragged rows, a zero head, a tile too small, columns past it
            for (hd, col0, kt_len) in [
                (64, 0, 64 * ATTN_TILE),
                (0, 0, 64),
                (7, 0, 10),
                (64, 62, 64 * ATTN_TILE),
                (64, 0, 100),
            ] {
                let (mut fast, mut want) = (x[..kt_len].to_vec(), x[..kt_len].to_vec());
                (tk.load_keys)(&k, hd, col0, &mut fast);
                r::load_keys_ref(tk.key_tile, &k, hd, col0, &mut want);
                assert_eq!(
                    fast, want,
                    "{isa} load_keys hd={hd} col0={col0} kt={kt_len}"
                );
            }
            // scores: nk of 0 or past the tile, ragged queries, short outputs
            for (hd, nk, q_len, out_len) in [
                (64, 0, 128, 128),
                (64, 65, 128, 128),
                (64, 3, 100, 128),
                (64, 3, 128, 100),
                (0, 3, 128, 128),
            ] {
                let (mut fast, mut want) = (vec![0.5f32; out_len], vec![0.5f32; out_len]);
                (tk.scores)(&x[..64 * ATTN_TILE], hd, nk, &x[..q_len], &mut fast);
                r::scores_ref(
                    tk.key_tile,
                    &x[..64 * ATTN_TILE],
                    hd,
                    nk,
                    &x[..q_len],
                    &mut want,
                );
                assert_eq!(
                    fast, want,
                    "{isa} scores hd={hd} nk={nk} q={q_len} out={out_len}"
                );
                // scores_f16: keys ragged, none, or more than a tile
                let kn = nk.min(2) * 64 + usize::from(hd == 0);
                let kh = &k[..kn.min(k.len())];
                let (mut fast, mut want) = (vec![0.5f32; out_len], vec![0.5f32; out_len]);
                (tk.scores_f16)(kh, hd, &x[..q_len], &mut fast);
                r::scores_f16_ref(tk.key_tile, kh, hd, &x[..q_len], &mut want);
                assert_eq!(
                    fast,
                    want,
                    "{isa} scores_f16 hd={hd} keys={} q={q_len} out={out_len}",
                    kh.len()
                );
            }
            {
                let many: Vec<f16> = random_row(65 * 8, 3)
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect();
                let (mut fast, mut want) = (vec![0.5f32; 128], vec![0.5f32; 128]);
                (tk.scores_f16)(&many, 8, &x[..16], &mut fast);
                r::scores_f16_ref(tk.key_tile, &many, 8, &x[..16], &mut want);
                assert_eq!(fast, want, "{isa} scores_f16 over 65 keys");
            }
            // accumulate: a row reading more keys than given, short weights,
            // a ragged accumulator
            for (hd, v_len, lim, acc_len) in [
                (64, 3 * 64, vec![4usize], 64),
                (64, 3 * 64, vec![2, 3], 100),
                (64, 3 * 64 + 1, vec![1], 64),
                (0, 10, vec![1], 0),
            ] {
                let (mut fast, mut want) = (vec![0.5f32; acc_len], vec![0.5f32; acc_len]);
                (tk.accumulate)(&x[..v_len], hd, &x[..70], &lim, &mut fast);
                r::accumulate_ref_for(tk.value_dot, &x[..v_len], hd, &x[..70], &lim, &mut want);
                assert_eq!(fast, want, "{isa} accumulate hd={hd} v={v_len} lim={lim:?}");
                let vh: Vec<f16> = x[..v_len].iter().map(|&v| f16::from_f32(v)).collect();
                let (mut fast, mut want) = (vec![0.5f32; acc_len], vec![0.5f32; acc_len]);
                (tk.accumulate_f16)(&vh, hd, &x[..70], &lim, &mut fast);
                r::accumulate_f16_ref(tk.value_dot, &vh, hd, &x[..70], &lim, &mut want);
                assert_eq!(
                    fast, want,
                    "{isa} accumulate_f16 hd={hd} v={v_len} lim={lim:?}"
                );
            }
            // softmax: a row past the tile, short scores, a missing running
            // max or normalizer, a ragged accumulator, no rows
            for (lim, s_len, m_len, l_len, acc_len) in [
                (vec![64usize, 65], 128, 2, 2, 128),
                (vec![64, 3], 127, 2, 2, 128),
                (vec![5, 3], 128, 1, 2, 128),
                (vec![5, 3], 128, 2, 1, 128),
                (vec![5, 3], 128, 2, 2, 127),
                (vec![], 128, 0, 0, 0),
            ] {
                let mut fast = (
                    x[..s_len].to_vec(),
                    vec![0.25f32; m_len],
                    vec![1.0f32; l_len],
                );
                let mut want = fast.clone();
                let (mut acc_fast, mut acc_want) = (x[..acc_len].to_vec(), x[..acc_len].to_vec());
                let (s, m, l) = (&mut fast.0, &mut fast.1, &mut fast.2);
                (tk.softmax)(s, &lim, 0.125, m, l, &mut acc_fast);
                let (s, m, l) = (&mut want.0, &mut want.1, &mut want.2);
                r::softmax_ref(s, &lim, 0.125, m, l, &mut acc_want);
                assert_eq!(
                    (fast, acc_fast),
                    (want, acc_want),
                    "{isa} softmax lim={lim:?} s={s_len} m={m_len} l={l_len} acc={acc_len}"
                );
            }
        }
    }

    /// Block kernels given slices that are not whole rows (or a zero head
    /// size, or too short an output) do what the references do, without a
    /// panic or an out-of-bounds access.
    #[test]
    fn attn_block_kernels_survive_malformed_shapes() {
        let k: Vec<f16> = random_row(3 * 64 + 5, 4)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let q = random_row(2 * 64 + 3, 8);
        for isa in available_isas() {
            let Some(b) = table_for(isa).unwrap().attn_block else {
                continue;
            };
            // Ragged keys or heads, a zero head size, and whole rows with
            // too short an output (2 < 2 heads x 3 keys).
            let cases = [
                (&k[..], &q[..], 0usize, 8usize),
                (&k[..], &q[..], 64, 8),
                (&k[..], &q[..], 7, 40),
                (&k[..192], &q[..], 64, 8),
                (&k[..192], &q[..128], 64, 2),
            ];
            for (k, q, hd, out_len) in cases {
                let what = format!("{isa} hd={hd} keys={} q={} out={out_len}", k.len(), q.len());
                let (mut fast, mut reference) = (vec![0.5f32; out_len], vec![0.5f32; out_len]);
                (b.scores)(k, hd, q, &mut fast);
                float::attn_scores_f16(k, hd, q, &mut reference);
                assert_eq!(fast, reference, "scores {what}");
                let (mut fast, mut reference) = (q.to_vec(), q.to_vec());
                let p = &q[..out_len.min(q.len())];
                (b.accumulate)(k, hd, p, &mut fast);
                float::attn_accumulate_f16(k, hd, p, &mut reference);
                assert_eq!(fast, reference, "accumulate {what}");
            }
        }
    }

    /// Every row of every available table against the scalar references.
    #[test]
    fn every_table_entry_matches_scalar() {
        for isa in available_isas() {
            let t = table_for(isa).unwrap();
            for &d in DType::ALL {
                with_weight_block!(d, W => check_weight_row::<W>(isa, t), ());
            }
            for n in [1usize, 7, 16, 33, 1000] {
                // The gated activations run one portable body everywhere:
                // bit-identical to the scalar table.
                let gate: Vec<f32> = random_row(n, 11 + n as u64)
                    .iter()
                    .map(|v| v * 9.0)
                    .collect();
                let up = random_row(n, 5 + n as u64);
                for (name, fast, reference) in [
                    ("silu_mul", t.silu_mul, SCALAR.silu_mul),
                    ("gelu_tanh_mul", t.gelu_tanh_mul, SCALAR.gelu_tanh_mul),
                ] {
                    let (mut a, mut b) = (gate.clone(), gate.clone());
                    fast(&mut a, &up);
                    reference(&mut b, &up);
                    assert_eq!(a, b, "{isa} {name} n={n}");
                }
                let (mut a, mut b) = (gate.clone(), gate.clone());
                let fast = (t.softmax_block)(&mut a, 0.3, 1.5);
                let reference = (SCALAR.softmax_block)(&mut b, 0.3, 1.5);
                assert_eq!((a, fast), (b, reference), "{isa} softmax_block n={n}");
                if let Some(b) = t.attn_block {
                    check_attn_block(isa, b, n);
                }
                let wh: Vec<f16> = random_row(n, n as u64)
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect();
                let x = random_row(n, 3 + n as u64);
                let (mut ya, mut yb) = (x.clone(), x.clone());
                (t.axpy_f16)(0.37, &wh, &mut ya);
                (SCALAR.axpy_f16)(0.37, &wh, &mut yb);
                for (a, b) in ya.iter().zip(&yb) {
                    close(
                        *a,
                        *b,
                        b.abs() + 1.0,
                        1e-6,
                        &format!("{isa} axpy_f16 n={n}"),
                    );
                }
            }
        }
    }

    /// (rows, columns, blocks per row) of the gemm and x16 entry tests:
    /// around the 16-row panel, the 8/4/2/1 column groups, short and long rows.
    const GEMM_SHAPES: [(usize, usize, usize); 11] = [
        (1, 1, 1),
        (16, 1, 18),
        (17, 3, 18),
        (40, 13, 3),
        (5, 8, 48),
        (33, 2, 7),
        (48, 15, 2),
        // row counts of 2 and 3 past a multiple of 4 (the edge
        // tiles of the aarch64 kernels, partial 4-row stores)
        (6, 5, 4),
        (19, 6, 3),
        // four columns (the AVX2 tile's two pairs), odd rows; and past
        // the AVX2 kernel's 64-column chunk with a partial group of 8
        (7, 4, 5),
        (9, 75, 2),
    ];

    /// `got` against `want` (`[cols][rows]` products of the rows of `wf`
    /// and the columns of `xf`, `n` elements each) within 1e-5 of each
    /// product's L1 magnitude.
    fn products_close(
        got: &[f32],
        want: &[f32],
        (wf, xf): (&[f32], &[f32]),
        rows: usize,
        n: usize,
        what: &str,
    ) {
        for (i, (g, e)) in got.iter().zip(want).enumerate() {
            let (c, r) = (i / rows, i % rows);
            let l1: f32 = wf[r * n..(r + 1) * n]
                .iter()
                .zip(&xf[c * n..(c + 1) * n])
                .map(|(p, q)| (p * q).abs())
                .sum();
            close(*g, *e, l1, 1e-5, &format!("{what} [{r},{c}]"));
        }
    }

    /// `rows` weight rows and `cols` activation columns of `bpr` blocks.
    fn gemm_operands<W: WeightBlock>(
        (rows, cols, bpr): (usize, usize, usize),
        salt: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<W>, Vec<W::Act>) {
        let n = bpr * W::ELEMS;
        let wf = random_row(rows * n, (rows * 31 + bpr + salt) as u64);
        let xf = random_row(cols * n, (cols * 17 + bpr + salt) as u64);
        let (w, a) = (blocks(&wf), blocks(&xf));
        (wf, xf, w, a)
    }

    /// `W`'s gemm entry in `t`, if any, against single scalar dots.
    fn check_gemm<W: WeightBlock>(isa: Isa, t: &KernelTable) {
        let Some(gemm) = t.weight::<W>().gemm else {
            return;
        };
        for shape in GEMM_SHAPES {
            let (rows, cols, bpr) = shape;
            let (wf, xf, w, a) = gemm_operands::<W>(shape, 0);
            let mut got = vec![f32::NAN; rows * cols];
            let mut want = vec![0f32; rows * cols];
            gemm(&w, &a, bpr, &mut got);
            gemm_by_dots(W::vec_dot_ref, &w, &a, bpr, &mut want);
            let what = format!("{isa} {} gemm {rows}x{cols}x{bpr}", W::DTYPE);
            products_close(&got, &want, (&wf, &xf), rows, bpr * W::ELEMS, &what);
        }
    }

    /// `W`'s x16 entry in `t`, if any (weights packed at load time), against
    /// single scalar dots on the unpacked rows, partial last panels included.
    fn check_x16<W: WeightBlock>(isa: Isa, t: &KernelTable) {
        let Some(kernel) = t.weight::<W>().x16 else {
            return;
        };
        assert!(
            x16::has_layout::<W>(),
            "{isa} {}: x16 entry without a layout",
            W::DTYPE
        );
        for shape in GEMM_SHAPES {
            let (rows, cols, bpr) = shape;
            let (wf, xf, w, a) = gemm_operands::<W>(shape, 5);
            let mut p = vec![0u8; x16::packed_bytes::<W>(rows, bpr).unwrap()];
            x16::pack(&w, bpr, &mut p);
            // each column a piece of a longer row (as a prefill band's
            // are), the rest of which the kernel must leave alone
            const PAST: usize = 3;
            let mut wide = vec![f32::NAN; (rows + PAST) * cols];
            let mut pieces: Vec<&mut [f32]> = wide.chunks_exact_mut(rows + PAST).collect();
            kernel(&p, rows, &a, bpr, &mut pieces);
            let what = format!("{isa} {} x16 {rows}x{cols}x{bpr}", W::DTYPE);
            let mut got = Vec::with_capacity(rows * cols);
            for col in wide.chunks_exact(rows + PAST) {
                got.extend_from_slice(&col[..rows]);
                assert!(
                    col[rows..].iter().all(|x| x.is_nan()),
                    "{what}: wrote past a column"
                );
            }
            let mut want = vec![0f32; rows * cols];
            gemm_by_dots(W::vec_dot_ref, &w, &a, bpr, &mut want);
            let mut via_ref = vec![f32::NAN; rows * cols];
            let mut ref_cols: Vec<&mut [f32]> = via_ref.chunks_exact_mut(rows).collect();
            x16::gemm_ref(W::vec_dot_ref, &p, rows, &a, bpr, &mut ref_cols);
            assert_eq!(via_ref, want, "x16::gemm_ref {}", W::DTYPE);
            products_close(&got, &want, (&wf, &xf), rows, bpr * W::ELEMS, &what);
        }
    }

    /// Every gemm entry of every available table against single scalar
    /// dots, over row counts around the 16-row panel and the 4/2-row tiles,
    /// column counts around the 8/4/2/1 column groups, and short and long rows.
    #[test]
    fn every_gemm_entry_matches_scalar_dots() {
        for isa in available_isas() {
            let t = table_for(isa).unwrap();
            for &d in DType::ALL {
                with_weight_block!(d, W => check_gemm::<W>(isa, t), ());
            }
        }
    }

    /// `W`'s gemm entry in `t`, if any, gives each output the same bits
    /// whatever it is batched with: every column alone (decode) and every
    /// row from a shifted first row (another tile and band) equal the
    /// outputs of the whole product (prefill). A warm conversation, a
    /// restored session and speculative decoding rely on it.
    fn check_gemm_batch_invariance<W: WeightBlock>(isa: Isa, t: &KernelTable) {
        let Some(gemm) = t.weight::<W>().gemm else {
            return;
        };
        for shape in GEMM_SHAPES {
            let (rows, cols, bpr) = shape;
            let (_, _, w, a) = gemm_operands::<W>(shape, 9);
            let mut all = vec![f32::NAN; rows * cols];
            gemm(&w, &a, bpr, &mut all);
            let what = format!("{isa} {} gemm {rows}x{cols}x{bpr}", W::DTYPE);
            for (c, (col, want)) in a.chunks_exact(bpr).zip(all.chunks_exact(rows)).enumerate() {
                let mut one = vec![f32::NAN; rows];
                gemm(&w, col, bpr, &mut one);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&one), bits(want), "{what}: column {c} alone");
                for skip in [1, 3].into_iter().filter(|&k| k < rows) {
                    let mut rest = vec![f32::NAN; rows - skip];
                    gemm(&w[skip * bpr..], col, bpr, &mut rest);
                    assert_eq!(
                        bits(&rest),
                        bits(&want[skip..]),
                        "{what}: column {c} from row {skip}"
                    );
                }
            }
        }
    }

    /// `W`'s x16 entry in `t`, if any, gives each output the same bits
    /// whether its column runs alone (decode) or in the whole product
    /// (prefill), as [`check_gemm_batch_invariance`] asks of the gemm.
    fn check_x16_batch_invariance<W: WeightBlock>(isa: Isa, t: &KernelTable) {
        let Some(kernel) = t.weight::<W>().x16 else {
            return;
        };
        for shape in GEMM_SHAPES {
            let (rows, cols, bpr) = shape;
            let (_, _, w, a) = gemm_operands::<W>(shape, 11);
            let mut p = vec![0u8; x16::packed_bytes::<W>(rows, bpr).unwrap()];
            x16::pack(&w, bpr, &mut p);
            let mut all = vec![f32::NAN; rows * cols];
            x16::run_into(kernel, &p, rows, &a, bpr, &mut all);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for (c, (col, want)) in a.chunks_exact(bpr).zip(all.chunks_exact(rows)).enumerate() {
                let mut one = vec![f32::NAN; rows];
                x16::run_into(kernel, &p, rows, col, bpr, &mut one);
                assert_eq!(
                    bits(&one),
                    bits(want),
                    "{isa} {} x16 {rows}x{cols}x{bpr}: column {c} alone",
                    W::DTYPE
                );
            }
        }
    }

    /// Every gemm and x16 entry of every table this CPU runs is
    /// batch-invariant (see `check_gemm_batch_invariance`); entries without
    /// them run every output through one dot and are invariant by
    /// construction.
    #[test]
    fn gemm_outputs_do_not_depend_on_the_batch() {
        for isa in available_isas() {
            let Ok(t) = table_for(isa) else { continue };
            for &d in DType::ALL {
                with_weight_block!(d, W => check_gemm_batch_invariance::<W>(isa, t), ());
                each_decode_prefetch(
                    || with_weight_block!(d, W => check_x16_batch_invariance::<W>(isa, t), ()),
                );
            }
        }
    }

    /// Runs `f` with x86-64 decode's prefetches on and then off, whatever
    /// the CPU's vendor picks (`decode_prefetch`); once elsewhere.
    fn each_decode_prefetch(f: impl Fn()) {
        #[cfg(target_arch = "x86_64")]
        for on in [true, false] {
            crate::arch::x86_64::forcing_decode_prefetch(on, &f);
        }
        #[cfg(not(target_arch = "x86_64"))]
        f();
    }

    /// Every x16 entry of every available table against single scalar
    /// dots, with and without decode's prefetches.
    #[test]
    fn every_x16_entry_matches_scalar_dots() {
        for isa in available_isas() {
            let t = table_for(isa).unwrap();
            for &d in DType::ALL {
                each_decode_prefetch(|| with_weight_block!(d, W => check_x16::<W>(isa, t), ()));
            }
        }
    }

    /// An x16 entry handed too few output columns, or a column shorter
    /// than its rows, writes nothing out of bounds and does not panic: the
    /// wrappers' shape check sends it to the reference over the tier's
    /// dot, which writes what fits, so the full columns still get their
    /// products.
    fn check_x16_short_outputs<W: WeightBlock>(isa: Isa, t: &KernelTable) {
        let Some(kernel) = t.weight::<W>().x16 else {
            return;
        };
        let shape @ (rows, cols, bpr) = (17, 3, 2);
        let (wf, xf, w, a) = gemm_operands::<W>(shape, 13);
        let mut p = vec![0u8; x16::packed_bytes::<W>(rows, bpr).unwrap()];
        x16::pack(&w, bpr, &mut p);
        let mut want = vec![0f32; rows * cols];
        gemm_by_dots(W::vec_dot_ref, &w, &a, bpr, &mut want);
        let what = format!("{isa} {} x16 short outputs", W::DTYPE);
        let k = bpr * W::ELEMS;
        let fewer = rows * (cols - 1);
        // the last column one row short
        let mut full = vec![f32::NAN; rows * cols];
        let mut cols_out: Vec<&mut [f32]> = full.chunks_exact_mut(rows).collect();
        let last = cols_out.pop().unwrap();
        cols_out.push(&mut last[..rows - 1]);
        kernel(&p, rows, &a, bpr, &mut cols_out);
        assert!(
            full[rows * cols - 1].is_nan(),
            "{what}: wrote past the short column"
        );
        let xs = &xf[..(cols - 1) * k];
        products_close(&full[..fewer], &want[..fewer], (&wf, xs), rows, k, &what);
        // one column fewer than the activations hold
        let mut two = vec![f32::NAN; fewer];
        let mut cols_out: Vec<&mut [f32]> = two.chunks_exact_mut(rows).collect();
        kernel(&p, rows, &a, bpr, &mut cols_out);
        products_close(&two, &want[..fewer], (&wf, xs), rows, k, &what);
    }

    #[test]
    fn x16_entries_take_short_outputs_without_overrunning() {
        for isa in available_isas() {
            let t = table_for(isa).unwrap();
            for &d in DType::ALL {
                with_weight_block!(d, W => check_x16_short_outputs::<W>(isa, t), ());
            }
        }
    }

    /// The tiers this CPU should have are there, with their gemm kernels, so
    /// a broken feature check cannot silently skip the tests above.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_tiers_match_cpu_features() {
        let vnni = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx2");
        assert_eq!(table_for(Isa::Vnni).is_ok(), vnni);
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let avxvnni = avx2 && is_x86_feature_detected!("avxvnni");
        assert_eq!(table_for(Isa::Avx2).is_ok(), avx2);
        assert_eq!(table_for(Isa::AvxVnni).is_ok(), avxvnni);
        assert_eq!(available_isas().contains(&Isa::AvxVnni), avxvnni);
        if let (Ok(t), Ok(avx2)) = (table_for(Isa::AvxVnni), table_for(Isa::Avx2)) {
            // its own dots, not the AVX2 ones it starts from
            assert!(t.q4_0.dot as usize != avx2.q4_0.dot as usize);
            assert!(t.q4_1.dot as usize != avx2.q4_1.dot as usize);
            assert!(t.q8_0.dot as usize != avx2.q8_0.dot as usize);
            // ranked above AVX2, below both AVX-512 tiers
            if table_for(Isa::Avx512).is_err() {
                assert_eq!(select(None).map(|t| t.isa), Ok(Isa::AvxVnni));
            }
        }
        // the types of a Q4_K_M file (Q4_K, Q5_0, Q6_K, Q8_0) and Q5_K
        // have both multi-row entries on both AVX-512 tiers
        let kquants = |t: &KernelTable| {
            t.q5_0.gemm.is_some()
                && t.q5_0.x16.is_some()
                && t.q4_k.gemm.is_some()
                && t.q4_k.x16.is_some()
                && t.q5_k.gemm.is_some()
                && t.q5_k.x16.is_some()
                && t.q6_k.gemm.is_some()
                && t.q6_k.x16.is_some()
        };
        // every weight type has a SIMD dot from AVX2 up: no row silently
        // keeps the scalar reference
        for isa in [Isa::Avx2, Isa::AvxVnni, Isa::Avx512, Isa::Vnni] {
            let Ok(t) = table_for(isa) else { continue };
            for &d in DType::ALL {
                fn simd<W: WeightBlock>(t: &KernelTable) -> bool {
                    t.weight::<W>().dot as usize != SCALAR.weight::<W>().dot as usize
                }
                let has = with_weight_block!(d, W => simd::<W>(t), true);
                assert!(has, "{isa} {d}: scalar dot");
            }
        }
        // AVX2 (and AVX-VNNI, built on it) has gemm entries over the file's
        // layout and x16 entries for the legacy types and the types of a
        // Q4_K_M file
        for isa in [Isa::Avx2, Isa::AvxVnni] {
            let Ok(t) = table_for(isa) else { continue };
            let gemms = [
                t.q4_0.gemm.is_some(),
                t.q4_1.gemm.is_some(),
                t.q8_0.gemm.is_some(),
                t.q5_0.gemm.is_some(),
                t.q4_k.gemm.is_some(),
                t.q6_k.gemm.is_some(),
            ];
            assert!(gemms.iter().all(|&g| g), "{isa}: gemm entries {gemms:?}");
            let x16 = [
                t.q4_0.x16.is_some(),
                t.q4_1.x16.is_some(),
                t.q8_0.x16.is_some(),
                t.q5_0.x16.is_some(),
                t.q4_k.x16.is_some(),
                t.q6_k.x16.is_some(),
            ];
            assert!(x16.iter().all(|&g| g), "{isa}: x16 entries {x16:?}");
        }
        if let Ok(t) = table_for(Isa::Vnni) {
            assert!(t.q4_0.gemm.is_some() && t.q4_1.gemm.is_some() && t.q8_0.gemm.is_some());
            assert!(t.q4_0.x16.is_some() && t.q4_1.x16.is_some() && t.q8_0.x16.is_some());
            assert!(kquants(t));
            assert_eq!(select(None).map(|t| t.isa), Ok(Isa::Vnni));
        }
        if let Ok(t) = table_for(Isa::Avx512) {
            assert!(t.q4_0.gemm.is_some() && t.q4_1.gemm.is_some());
            assert!(t.q4_0.x16.is_some() && t.q4_1.x16.is_some());
            assert!(kquants(t));
        }
    }

    #[test]
    fn scalar_is_always_available_and_tables_are_tagged() {
        let isas = available_isas();
        assert_eq!(isas[0], Isa::Scalar);
        for isa in isas {
            assert_eq!(table_for(isa).map(|t| t.isa), Ok(isa));
        }
        assert!(available_isas().contains(&try_table().map(|t| t.isa).unwrap_or(Isa::Scalar)));
    }

    #[test]
    fn forcing_a_path() {
        assert_eq!(select(Some("scalar")).map(|t| t.isa), Ok(Isa::Scalar));
        assert_eq!(
            select(Some(" AVX2 ")).map(|t| t.isa).is_ok(),
            table_for(Isa::Avx2).is_ok()
        );
        assert!(matches!(
            select(Some("sse9")),
            Err(Error::UnknownIsa { .. })
        ));
        // Every CPU lacks either the x86 or the arm paths.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            select(Some("neon")).map(|t| t.isa),
            Err(Error::IsaUnavailable { isa: Isa::Neon })
        );
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            select(Some("avx2")).map(|t| t.isa),
            Err(Error::IsaUnavailable { isa: Isa::Avx2 })
        );
        let best = select(None).map(|t| t.isa);
        assert_eq!(
            best,
            available_isas()
                .last()
                .copied()
                .ok_or(Error::IsaUnavailable { isa: Isa::Scalar })
        );
    }
}
