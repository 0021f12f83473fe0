//! The one dispatch point. CPU features are read once; the best table is
//! cached; `SOTTO_ISA=scalar|avx2|avxvnni|avx512|vnni|neon|dotprod|i8mm` forces a path
//! (an unavailable forced path is an error, never a silent downgrade).
//!
//! CONTRACT: `VecDotTable` has one field per (weight, activation) pair; every
//! field of the scalar table points at the reference in `quant/<type>.rs`;
//! per-ISA tables start from the scalar one and override what they implement
//! (`VecDotTable { field: kernel, ..scalar }`), so adding a field never breaks
//! an architecture's table.

use crate::quant::blocks::*;
use crate::quant::{float, q4_0, q4_1, q4_k, q5_k, q6_k, q8_0, q8_1, q8_k};
use crate::{Error, Result};
#[cfg(test)]
use bytemuck::Zeroable;
use half::{bf16, f16};
use std::sync::OnceLock;

/// Dot product of `w` and `a` (same element count; kernels use the shorter).
pub type VecDotFn<W, A> = fn(w: &[W], a: &[A]) -> f32;
/// Quantize a row of f32 activations (len = blocks * block size) into blocks.
pub type QuantizeFn<A> = fn(x: &[f32], out: &mut [A]);
/// `y += alpha * x` over the shorter of the two.
pub type AxpyFn<X> = fn(alpha: f32, x: &[X], y: &mut [f32]);
/// Many weight rows times many activation columns in one call:
/// `out[c * rows + r] = w[r] · a[c]`, where `w` holds `rows` rows and `a`
/// holds `cols` columns, each of `bpr` blocks (`rows = w.len() / bpr`,
/// `cols = a.len() / bpr`, `out.len() >= rows * cols`). A kernel unpacks each
/// weight block once for all columns, and the decode matvec (`cols == 1`)
/// shares each activation load across several rows.
pub type GemmFn<W, A> = fn(w: &[W], a: &[A], bpr: usize, out: &mut [f32]);
/// The gemm over weights repacked at load time into the x16 panels of
/// [`crate::quant::x16`]: `packed` holds `rows` rows (whole panels) of `bpr`
/// blocks, `a` holds `cols` columns; `out[c * rows + r] = w[r] · a[c]`.
/// [`crate::quant::x16::gemm_ref`] is the reference.
pub type X16GemmFn<A> = fn(packed: &[u8], rows: usize, a: &[A], bpr: usize, out: &mut [f32]);

/// What a table without a [`GemmFn`] for a pair does: one `dot` per output,
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
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87 (workspace: 1.85)
pub(crate) fn gemm_shape_ok<W, A>(w: &[W], a: &[A], bpr: usize, out: &[f32]) -> bool {
    bpr > 0
        && w.len() % bpr == 0
        && a.len() % bpr == 0
        && (w.len() / bpr)
            .checked_mul(a.len() / bpr)
            .is_some_and(|n| n <= out.len())
}

#[derive(Clone, Copy, Debug)]
pub struct VecDotTable {
    pub isa: crate::dispatch::Isa,
    pub q4_0_q8_0: VecDotFn<BlockQ4_0, BlockQ8_0>,
    pub q4_1_q8_1: VecDotFn<BlockQ4_1, BlockQ8_1>,
    pub q8_0_q8_0: VecDotFn<BlockQ8_0, BlockQ8_0>,
    pub q4_k_q8_k: VecDotFn<BlockQ4K, BlockQ8K>,
    pub q5_k_q8_k: VecDotFn<BlockQ5K, BlockQ8K>,
    pub q6_k_q8_k: VecDotFn<BlockQ6K, BlockQ8K>,
    pub f16_f32: VecDotFn<f16, f32>,
    pub bf16_f32: VecDotFn<bf16, f32>,
    pub f32_f32: VecDotFn<f32, f32>,
    pub quantize_q8_0: QuantizeFn<BlockQ8_0>,
    pub quantize_q8_1: QuantizeFn<BlockQ8_1>,
    pub quantize_q8_k: QuantizeFn<BlockQ8K>,
    /// Attention's value accumulation over the f16 KV cache.
    pub axpy_f16: AxpyFn<f16>,
    /// Multi-row / multi-column kernels; `None` means [`gemm_by_dots`] over
    /// the single dot above.
    pub q4_0_q8_0_gemm: Option<GemmFn<BlockQ4_0, BlockQ8_0>>,
    pub q4_1_q8_1_gemm: Option<GemmFn<BlockQ4_1, BlockQ8_1>>,
    pub q8_0_q8_0_gemm: Option<GemmFn<BlockQ8_0, BlockQ8_0>>,
    /// Gemm kernels over x16-packed weights; a table with one of these
    /// wants that weight type packed at load time (`None`: keep the file's
    /// layout).
    pub q4_0_q8_0_x16: Option<X16GemmFn<BlockQ8_0>>,
    pub q4_1_q8_1_x16: Option<X16GemmFn<BlockQ8_1>>,
    pub q8_0_q8_0_x16: Option<X16GemmFn<BlockQ8_0>>,
}

/// Instruction-set paths, from the portable reference up (on each
/// architecture the later available one is preferred).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Scalar,
    Avx2,
    /// AVX-VNNI: VEX-encoded 256-bit integer dot products (client cores
    /// without AVX-512); ranked below `Avx512`.
    AvxVnni,
    Avx512,
    /// AVX-512 VNNI integer dot products.
    Vnni,
    Neon,
    Dotprod,
    I8mm,
}

impl Isa {
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

/// The scalar references: correct everywhere, the baseline every SIMD table
/// starts from and is tested against.
pub const SCALAR: VecDotTable = VecDotTable {
    isa: Isa::Scalar,
    q4_0_q8_0: q4_0::vec_dot,
    q4_1_q8_1: q4_1::vec_dot,
    q8_0_q8_0: q8_0::vec_dot,
    q4_k_q8_k: q4_k::vec_dot,
    q5_k_q8_k: q5_k::vec_dot,
    q6_k_q8_k: q6_k::vec_dot,
    f16_f32: float::vec_dot_f16,
    bf16_f32: float::vec_dot_bf16,
    f32_f32: float::vec_dot_f32,
    quantize_q8_0: q8_0::quantize_row,
    quantize_q8_1: q8_1::quantize_row,
    quantize_q8_k: q8_k::quantize_row,
    axpy_f16: float::axpy_f16,
    q4_0_q8_0_gemm: None,
    q4_1_q8_1_gemm: None,
    q8_0_q8_0_gemm: None,
    q4_0_q8_0_x16: None,
    q4_1_q8_1_x16: None,
    q8_0_q8_0_x16: None,
};

/// Builds the table of `isa` if this CPU can run it.
fn build(isa: Isa) -> Option<VecDotTable> {
    match isa {
        Isa::Scalar => Some(SCALAR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512 | Isa::Vnni => {
            crate::arch::x86_64::table(isa, SCALAR)
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::Dotprod | Isa::I8mm => crate::arch::aarch64::table(isa, SCALAR),
        #[allow(unreachable_patterns)]
        _ => None,
    }
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
pub fn table_for(isa: Isa) -> Result<&'static VecDotTable> {
    static TABLES: [OnceLock<Option<VecDotTable>>; Isa::ALL.len()] =
        [const { OnceLock::new() }; Isa::ALL.len()];
    let idx = Isa::ALL.iter().position(|&i| i == isa).unwrap_or(0);
    TABLES[idx]
        .get_or_init(|| build(isa))
        .as_ref()
        .ok_or(Error::IsaUnavailable { isa })
}

/// The best path of this CPU, or the one `SOTTO_ISA` names.
fn select(forced: Option<&str>) -> Result<&'static VecDotTable> {
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
/// instead of silently running another path. The ops call it too and
/// propagate the same error.
pub fn try_table() -> Result<&'static VecDotTable> {
    static CHOSEN: OnceLock<Result<&'static VecDotTable>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| select(std::env::var("SOTTO_ISA").ok().as_deref()))
        .clone()
}

/// Infallible access for diagnostics: the chosen table, or the scalar one
/// when `SOTTO_ISA` is invalid (whose error [`try_table`] reports).
pub fn table() -> &'static VecDotTable {
    try_table().unwrap_or(&SCALAR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{aligned_bytes, quantize_row, test_data::random_row, DType};
    use bytemuck::Pod;

    fn blocks<B: Pod>(dtype: DType, x: &[f32]) -> Vec<B> {
        let mut q = aligned_bytes(dtype.row_bytes(x.len()).unwrap_or(0));
        quantize_row(dtype, x, q.as_bytes_mut()).unwrap();
        bytemuck::cast_slice(q.as_bytes()).to_vec()
    }

    fn close(got: f32, want: f32, scale: f32, budget: f32, what: &str) {
        assert!(
            (got - want).abs() <= budget * scale.max(1e-6),
            "{what}: {got} vs {want} (scale {scale})"
        );
    }

    /// Every entry of every available table against the scalar reference,
    /// over several lengths (odd block counts and float tails included).
    #[test]
    fn every_table_entry_matches_scalar() {
        for isa in available_isas() {
            let t = table_for(isa).unwrap();
            for (seed, n) in [(1u64, 256usize), (2, 1536), (3, 2304), (4, 32 * 7)] {
                let w = random_row(n, seed);
                let x = random_row(n, seed + 77);
                let l1 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum::<f32>();
                let what = |k: &str| format!("{isa} {k} n={n}");
                let q8_0: Vec<BlockQ8_0> = blocks(DType::Q8_0, &x);
                let q8_1: Vec<BlockQ8_1> = blocks(DType::Q8_1, &x);
                close(
                    (t.q4_0_q8_0)(&blocks(DType::Q4_0, &w), &q8_0),
                    (SCALAR.q4_0_q8_0)(&blocks(DType::Q4_0, &w), &q8_0),
                    l1,
                    1e-5,
                    &what("q4_0"),
                );
                close(
                    (t.q4_1_q8_1)(&blocks(DType::Q4_1, &w), &q8_1),
                    (SCALAR.q4_1_q8_1)(&blocks(DType::Q4_1, &w), &q8_1),
                    l1,
                    1e-5,
                    &what("q4_1"),
                );
                close(
                    (t.q8_0_q8_0)(&blocks(DType::Q8_0, &w), &q8_0),
                    (SCALAR.q8_0_q8_0)(&blocks(DType::Q8_0, &w), &q8_0),
                    l1,
                    1e-5,
                    &what("q8_0"),
                );
                if n % 256 == 0 {
                    let q8_k: Vec<BlockQ8K> = blocks(DType::Q8_K, &x);
                    close(
                        (t.q4_k_q8_k)(&blocks(DType::Q4_K, &w), &q8_k),
                        (SCALAR.q4_k_q8_k)(&blocks(DType::Q4_K, &w), &q8_k),
                        l1,
                        1e-5,
                        &what("q4_K"),
                    );
                    close(
                        (t.q5_k_q8_k)(&blocks(DType::Q5_K, &w), &q8_k),
                        (SCALAR.q5_k_q8_k)(&blocks(DType::Q5_K, &w), &q8_k),
                        l1,
                        1e-5,
                        &what("q5_K"),
                    );
                    close(
                        (t.q6_k_q8_k)(&blocks(DType::Q6_K, &w), &q8_k),
                        (SCALAR.q6_k_q8_k)(&blocks(DType::Q6_K, &w), &q8_k),
                        l1,
                        1e-5,
                        &what("q6_K"),
                    );
                    let (mut a, mut b) = (
                        vec![BlockQ8K::zeroed(); n / 256],
                        vec![BlockQ8K::zeroed(); n / 256],
                    );
                    (t.quantize_q8_k)(&x, &mut a);
                    (SCALAR.quantize_q8_k)(&x, &mut b);
                    for (a, b) in a.iter().zip(&b) {
                        close(a.d, b.d, b.d.abs(), 1e-6, &what("quantize_q8_k d"));
                        assert!(
                            a.qs.iter().zip(&b.qs).all(|(p, q)| (p - q).abs() <= 1),
                            "{}",
                            what("quantize_q8_k")
                        );
                    }
                }
                let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                close(
                    (t.f16_f32)(&wh, &x),
                    (SCALAR.f16_f32)(&wh, &x),
                    l1,
                    1e-5,
                    &what("f16"),
                );
                close(
                    (t.bf16_f32)(&wb, &x),
                    (SCALAR.bf16_f32)(&wb, &x),
                    l1,
                    1e-5,
                    &what("bf16"),
                );
                close(
                    (t.f32_f32)(&w, &x),
                    (SCALAR.f32_f32)(&w, &x),
                    l1,
                    1e-5,
                    &what("f32"),
                );
                let (mut ya, mut yb) = (x.clone(), x.clone());
                (t.axpy_f16)(0.37, &wh, &mut ya);
                (SCALAR.axpy_f16)(0.37, &wh, &mut yb);
                for (a, b) in ya.iter().zip(&yb) {
                    close(*a, *b, b.abs() + 1.0, 1e-6, &what("axpy_f16"));
                }
                // activation quantizers: same scale, codes within one step
                let (mut a, mut b) = (
                    vec![BlockQ8_0::zeroed(); n / 32],
                    vec![BlockQ8_0::zeroed(); n / 32],
                );
                (t.quantize_q8_0)(&x, &mut a);
                (SCALAR.quantize_q8_0)(&x, &mut b);
                for (a, b) in a.iter().zip(&b) {
                    assert_eq!(a.d, b.d, "{}", what("quantize_q8_0 d"));
                    assert!(
                        a.qs.iter().zip(&b.qs).all(|(p, q)| (p - q).abs() <= 1),
                        "{}",
                        what("quantize_q8_0")
                    );
                }
                let (mut a, mut b) = (
                    vec![BlockQ8_1::zeroed(); n / 32],
                    vec![BlockQ8_1::zeroed(); n / 32],
                );
                (t.quantize_q8_1)(&x, &mut a);
                (SCALAR.quantize_q8_1)(&x, &mut b);
                for (a, b) in a.iter().zip(&b) {
                    assert_eq!(a.d, b.d, "{}", what("quantize_q8_1 d"));
                    close(
                        a.s.to_f32(),
                        b.s.to_f32(),
                        32.0 * a.d.to_f32(),
                        0.1,
                        &what("quantize_q8_1 s"),
                    );
                    assert!(
                        a.qs.iter().zip(&b.qs).all(|(p, q)| (p - q).abs() <= 1),
                        "{}",
                        what("quantize_q8_1")
                    );
                }
            }
        }
    }

    /// (rows, columns, blocks per row) of the gemm and x16 entry tests:
    /// around the 16-row panel, the 8/4/2/1 column groups, short and long rows.
    const GEMM_SHAPES: [(usize, usize, usize); 9] = [
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
    ];

    /// `got` against `want` (`[cols][rows]` products of the rows of `wf`
    /// and the columns of `xf`, `n` elements each) within 1e-5 of each
    /// product's L1 magnitude.
    #[allow(clippy::too_many_arguments)]
    fn products_close(
        got: &[f32],
        want: &[f32],
        wf: &[f32],
        xf: &[f32],
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

    /// Every gemm entry of every available table against single scalar dots,
    /// over row counts around the 16-row panel and the 4/2-row tiles, column
    /// counts around the 8/4/2/1 column groups, and short and long rows.
    #[test]
    fn every_gemm_entry_matches_scalar_dots() {
        fn check<W: Pod, A: Pod>(
            isa: Isa,
            what: &str,
            gemm: Option<GemmFn<W, A>>,
            dot: VecDotFn<W, A>,
            (wd, ad): (DType, DType),
        ) {
            let Some(gemm) = gemm else { return };
            for (rows, cols, bpr) in GEMM_SHAPES {
                let n = bpr * QK;
                let wf = random_row(rows * n, (rows * 31 + bpr) as u64);
                let xf = random_row(cols * n, (cols * 17 + bpr) as u64);
                let w: Vec<W> = blocks(wd, &wf);
                let a: Vec<A> = blocks(ad, &xf);
                let mut got = vec![f32::NAN; rows * cols];
                let mut want = vec![0f32; rows * cols];
                gemm(&w, &a, bpr, &mut got);
                gemm_by_dots(dot, &w, &a, bpr, &mut want);
                let what = format!("{isa} {what} gemm {rows}x{cols}x{bpr}");
                products_close(&got, &want, &wf, &xf, rows, n, &what);
            }
        }
        for isa in available_isas() {
            let t = table_for(isa).unwrap();
            check(
                isa,
                "q4_0",
                t.q4_0_q8_0_gemm,
                SCALAR.q4_0_q8_0,
                (DType::Q4_0, DType::Q8_0),
            );
            check(
                isa,
                "q4_1",
                t.q4_1_q8_1_gemm,
                SCALAR.q4_1_q8_1,
                (DType::Q4_1, DType::Q8_1),
            );
            check(
                isa,
                "q8_0",
                t.q8_0_q8_0_gemm,
                SCALAR.q8_0_q8_0,
                (DType::Q8_0, DType::Q8_0),
            );
        }
    }

    /// Every x16 entry (weights packed at load time) of every available
    /// table against single scalar dots on the unpacked rows, over the same
    /// shapes as the gemm entries (partial last panels included).
    #[test]
    fn every_x16_entry_matches_scalar_dots() {
        use crate::quant::x16::{self, X16Block};
        fn check<W: X16Block, A: Pod>(
            isa: Isa,
            x16: Option<X16GemmFn<A>>,
            dot: VecDotFn<W, A>,
            ad: DType,
        ) {
            let Some(kernel) = x16 else { return };
            for (rows, cols, bpr) in GEMM_SHAPES {
                let n = bpr * QK;
                let wf = random_row(rows * n, (rows * 37 + bpr) as u64);
                let xf = random_row(cols * n, (cols * 13 + bpr) as u64);
                let w: Vec<W> = blocks(W::DTYPE, &wf);
                let a: Vec<A> = blocks(ad, &xf);
                let mut p = vec![0u8; x16::packed_bytes::<W>(rows, bpr).unwrap()];
                x16::pack(&w, bpr, &mut p);
                let mut got = vec![f32::NAN; rows * cols];
                let mut want = vec![0f32; rows * cols];
                kernel(&p, rows, &a, bpr, &mut got);
                gemm_by_dots(dot, &w, &a, bpr, &mut want);
                let mut via_ref = vec![f32::NAN; rows * cols];
                x16::gemm_ref(dot, &p, rows, &a, bpr, &mut via_ref);
                assert_eq!(via_ref, want, "x16::gemm_ref {}", W::DTYPE);
                let what = format!("{isa} {} x16 {rows}x{cols}x{bpr}", W::DTYPE);
                products_close(&got, &want, &wf, &xf, rows, n, &what);
            }
        }
        for isa in available_isas() {
            let t = table_for(isa).unwrap();
            check(isa, t.q4_0_q8_0_x16, SCALAR.q4_0_q8_0, DType::Q8_0);
            check(isa, t.q4_1_q8_1_x16, SCALAR.q4_1_q8_1, DType::Q8_1);
            check(isa, t.q8_0_q8_0_x16, SCALAR.q8_0_q8_0, DType::Q8_0);
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
            assert!(t.q4_0_q8_0 as usize != avx2.q4_0_q8_0 as usize);
            assert!(t.q4_1_q8_1 as usize != avx2.q4_1_q8_1 as usize);
            assert!(t.q8_0_q8_0 as usize != avx2.q8_0_q8_0 as usize);
            // ranked above AVX2, below both AVX-512 tiers
            if table_for(Isa::Avx512).is_err() {
                assert_eq!(select(None).map(|t| t.isa), Ok(Isa::AvxVnni));
            }
        }
        if let Ok(t) = table_for(Isa::Vnni) {
            assert!(
                t.q4_0_q8_0_gemm.is_some()
                    && t.q4_1_q8_1_gemm.is_some()
                    && t.q8_0_q8_0_gemm.is_some()
            );
            assert!(
                t.q4_0_q8_0_x16.is_some() && t.q4_1_q8_1_x16.is_some() && t.q8_0_q8_0_x16.is_some()
            );
            assert_eq!(select(None).map(|t| t.isa), Ok(Isa::Vnni));
        }
        if let Ok(t) = table_for(Isa::Avx512) {
            assert!(t.q4_0_q8_0_gemm.is_some() && t.q4_1_q8_1_gemm.is_some());
            assert!(t.q4_0_q8_0_x16.is_some() && t.q4_1_q8_1_x16.is_some());
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
