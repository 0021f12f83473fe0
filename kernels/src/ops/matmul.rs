//! Quantized matrix times activations: `out[t, r] = w[r, :] · x[t, :]`.
//! Activations are quantized once per token into the weight type's pair
//! type. Output rows are split into bands (multiples of 16 rows) across the
//! caller's rayon pool (see [`bands`]), and each band goes through the
//! table's gemm kernel for that pair, or one dot per output when the table
//! has none.
//!
//! Weights come in two layouts:
//!
//! * [`QMatrix`]: the file's bytes (ggml row-major blocks), borrowed from the
//!   memory map; [`matmul`].
//! * [`PackedMatrix`]: repacked once at load into the x16 panels of
//!   [`crate::quant::x16`] for tables whose kernels read them (the AVX-512
//!   tiers), so decode streams contiguous panels instead of gathering rows;
//!   [`matmul_packed`], and [`matmul_packed_group`] for several matrices on
//!   one input in one parallel region.

use crate::dispatch::{self, GemmFn, VecDotFn, VecDotTable, X16GemmFn};
use crate::quant::x16::{self, X16Block};
use crate::quant::{blocks::*, cast_blocks, DType};
use crate::{Error, Result};
use bytemuck::Pod;
use rayon::prelude::*;

/// A row-major weight matrix of `rows` rows of `cols` elements (ggml's
/// `ne0 = cols`), borrowed from memory-mapped model bytes.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Checks that `data` holds exactly `rows` rows and is aligned for the
    /// block type, so every later row access is a zero-copy cast.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        const OP: &str = "QMatrix::new";
        let row_bytes = dtype.row_bytes(cols).ok_or(Error::RaggedRow {
            op: OP,
            dtype,
            cols,
            block: dtype.block_size(),
        })?;
        let expected = rows
            .checked_mul(row_bytes)
            .ok_or(Error::SizeOverflow { op: OP })?;
        if data.len() != expected {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected,
                got: data.len(),
            });
        }
        if !data.is_empty() && !(data.as_ptr() as usize).is_multiple_of(dtype.align()) {
            return Err(Error::Misaligned {
                op: OP,
                dtype,
                align: dtype.align(),
            });
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            data,
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len().checked_div(self.rows).unwrap_or(0)
    }
}

/// [`matmul_with`] on the process-wide dispatch table.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
    matmul_with(dispatch::try_table()?, w, x, n_tokens, out)
}

/// `x` is `[n_tokens, cols]`, `out` is `[n_tokens, rows]`, both row-major.
pub fn matmul_with(
    table: &VecDotTable,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    let shape = check_shapes("matmul", w.rows, w.cols, x, n_tokens, out)?;
    if out.is_empty() {
        return Ok(());
    }
    const OP: &str = "matmul";
    let dt = w.dtype;
    match dt {
        DType::Q4_0 => {
            let a = quantize_acts(x, shape, QK, table.quantize_q8_0);
            run::<BlockQ4_0, BlockQ8_0>(
                cast_blocks(OP, dt, w.data)?,
                &a,
                shape,
                QK,
                table.q4_0_q8_0,
                table.q4_0_q8_0_gemm,
                out,
            )
        }
        DType::Q4_1 => {
            let a = quantize_acts(x, shape, QK, table.quantize_q8_1);
            run::<BlockQ4_1, BlockQ8_1>(
                cast_blocks(OP, dt, w.data)?,
                &a,
                shape,
                QK,
                table.q4_1_q8_1,
                table.q4_1_q8_1_gemm,
                out,
            )
        }
        DType::Q8_0 => {
            let a = quantize_acts(x, shape, QK, table.quantize_q8_0);
            run::<BlockQ8_0, BlockQ8_0>(
                cast_blocks(OP, dt, w.data)?,
                &a,
                shape,
                QK,
                table.q8_0_q8_0,
                table.q8_0_q8_0_gemm,
                out,
            )
        }
        DType::Q4_K => {
            let a = quantize_acts(x, shape, QK_K, table.quantize_q8_k);
            run::<BlockQ4K, BlockQ8K>(
                cast_blocks(OP, dt, w.data)?,
                &a,
                shape,
                QK_K,
                table.q4_k_q8_k,
                None,
                out,
            )
        }
        DType::Q5_K => {
            let a = quantize_acts(x, shape, QK_K, table.quantize_q8_k);
            run::<BlockQ5K, BlockQ8K>(
                cast_blocks(OP, dt, w.data)?,
                &a,
                shape,
                QK_K,
                table.q5_k_q8_k,
                None,
                out,
            )
        }
        DType::Q6_K => {
            let a = quantize_acts(x, shape, QK_K, table.quantize_q8_k);
            run::<BlockQ6K, BlockQ8K>(
                cast_blocks(OP, dt, w.data)?,
                &a,
                shape,
                QK_K,
                table.q6_k_q8_k,
                None,
                out,
            )
        }
        DType::F32 => run::<f32, f32>(
            cast_blocks(OP, dt, w.data)?,
            x,
            shape,
            1,
            table.f32_f32,
            None,
            out,
        ),
        DType::F16 => run::<half::f16, f32>(
            cast_blocks(OP, dt, w.data)?,
            x,
            shape,
            1,
            table.f16_f32,
            None,
            out,
        ),
        DType::BF16 => run::<half::bf16, f32>(
            cast_blocks(OP, dt, w.data)?,
            x,
            shape,
            1,
            table.bf16_f32,
            None,
            out,
        ),
        DType::Q8_1 | DType::Q8_K => return Err(Error::UnsupportedDType { op: OP, dtype: dt }),
    }
    Ok(())
}

/// `x` is `[n_tokens, cols]` and `out` `[n_tokens, rows]`, or a typed error.
fn check_shapes(
    op: &'static str,
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    out: &[f32],
) -> Result<Shape> {
    let x_len = n_tokens
        .checked_mul(cols)
        .ok_or(Error::SizeOverflow { op })?;
    if x.len() != x_len {
        return Err(Error::ShapeMismatch {
            op,
            expected: x_len,
            got: x.len(),
        });
    }
    let out_len = n_tokens
        .checked_mul(rows)
        .ok_or(Error::SizeOverflow { op })?;
    if out.len() != out_len {
        return Err(Error::ShapeMismatch {
            op,
            expected: out_len,
            got: out.len(),
        });
    }
    Ok(Shape {
        rows,
        cols,
        n_tokens,
    })
}

#[derive(Clone, Copy)]
struct Shape {
    rows: usize,
    cols: usize,
    n_tokens: usize,
}

fn quantize_acts<A: Pod + Send>(
    x: &[f32],
    s: Shape,
    block: usize,
    quantize: fn(&[f32], &mut [A]),
) -> Vec<A> {
    let bpr = s.cols / block;
    let mut acts = vec![A::zeroed(); s.n_tokens * bpr];
    if s.n_tokens == 1 {
        quantize(x, &mut acts);
    } else {
        acts.par_chunks_mut(bpr.max(1))
            .zip(x.par_chunks(s.cols.max(1)))
            .for_each(|(a, xr)| quantize(xr, a));
    }
    acts
}

/// Rows per parallel task, a multiple of the 16-row panels of the gemm
/// kernels: enough tasks to balance the pool (a shared core may lag), each
/// long enough to amortize the task overhead; prefill tasks carry every
/// token, so fewer of them.
fn rows_per_task(rows: usize, n_tokens: usize) -> usize {
    let per_thread = if n_tokens == 1 { 4 } else { 2 };
    let tasks = rayon::current_num_threads() * per_thread;
    rows.div_ceil(tasks).next_multiple_of(16).clamp(16, 1024)
}

fn run<W: Pod + Sync, A: Pod + Sync>(
    w: &[W],
    acts: &[A],
    s: Shape,
    block: usize,
    dot: VecDotFn<W, A>,
    gemm: Option<GemmFn<W, A>>,
    out: &mut [f32],
) {
    let bpr = s.cols / block;
    if bpr == 0 {
        out.fill(0.0);
        return;
    }
    bands(s, out, |r0, nr, o| {
        let wr = &w[r0 * bpr..(r0 + nr) * bpr];
        match gemm {
            Some(g) => g(wr, acts, bpr, o),
            None => dispatch::gemm_by_dots(dot, wr, acts, bpr, o),
        }
    });
}

/// Splits the output rows into bands of [`rows_per_task`] (whole 16-row
/// panels) across the pool and calls `kernel(r0, nr, band_out)` for each,
/// where `band_out[c * nr + r]` is row `r0 + r` against token `c`:
///
/// * decode (one token): a band's outputs are a contiguous slice of `out`;
/// * prefill: a band is taken against every token, so its weights are
///   unpacked once and stream from memory once, written token-major into the
///   band's own buffer and then copied into the token-major output (a tenth
///   of the work of the product).
fn bands(s: Shape, out: &mut [f32], kernel: impl Fn(usize, usize, &mut [f32]) + Sync) {
    let chunk = rows_per_task(s.rows, s.n_tokens);
    if s.n_tokens == 1 {
        out.par_chunks_mut(chunk).enumerate().for_each(|(ci, oc)| {
            kernel(ci * chunk, oc.len(), oc);
        });
        return;
    }
    let n = s.n_tokens;
    let mut by_band = vec![0f32; s.rows * n];
    by_band
        .par_chunks_mut(chunk * n)
        .enumerate()
        .for_each(|(ci, band)| {
            kernel(ci * chunk, band.len() / n, band);
        });
    out.par_chunks_mut(s.rows)
        .enumerate()
        .for_each(|(t, orow)| {
            for (ci, dst) in orow.chunks_mut(chunk).enumerate() {
                let band = &by_band[ci * chunk * n..];
                let nr = dst.len();
                dst.copy_from_slice(&band[t * nr..(t + 1) * nr]);
            }
        });
}

/// 64-byte aligned storage for packed weights (whole cache lines, so the
/// kernels' 64-byte loads never split one).
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, bytemuck::Zeroable)]
struct Line([u8; 64]);

/// A weight matrix repacked at load time into the x16 panels of
/// [`crate::quant::x16`], for tables whose gemm kernels read that layout
/// (the AVX-512 tiers): the decode matvec then streams each panel with
/// contiguous loads instead of gathering 16 rows per block at run time.
/// Owned: it costs the matrix's size in memory, besides the file's bytes.
#[derive(Clone)]
pub struct PackedMatrix {
    dtype: DType,
    rows: usize,
    cols: usize,
    lines: Vec<Line>,
    len: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.len)
            .finish()
    }
}

impl PackedMatrix {
    /// `m` packed for `table` when the table has an x16 kernel for its
    /// type, `None` when it has not (the file's layout is then the faster
    /// one). Packs panels in parallel on the caller's rayon pool.
    pub fn pack_for(table: &VecDotTable, m: &QMatrix<'_>) -> Result<Option<PackedMatrix>> {
        const OP: &str = "PackedMatrix::pack_for";
        let wants = match m.dtype {
            DType::Q4_0 => table.q4_0_q8_0_x16.is_some(),
            DType::Q4_1 => table.q4_1_q8_1_x16.is_some(),
            DType::Q8_0 => table.q8_0_q8_0_x16.is_some(),
            _ => false,
        };
        if !wants {
            return Ok(None);
        }
        Ok(Some(match m.dtype {
            DType::Q4_0 => Self::pack::<BlockQ4_0>(cast_blocks(OP, m.dtype, m.data)?, m)?,
            DType::Q4_1 => Self::pack::<BlockQ4_1>(cast_blocks(OP, m.dtype, m.data)?, m)?,
            _ => Self::pack::<BlockQ8_0>(cast_blocks(OP, m.dtype, m.data)?, m)?,
        }))
    }

    fn pack<B: X16Block + Sync>(w: &[B], m: &QMatrix<'_>) -> Result<PackedMatrix> {
        const OP: &str = "PackedMatrix::pack";
        let bpr = m.cols / QK;
        let len = x16::packed_bytes::<B>(m.rows, bpr).ok_or(Error::SizeOverflow { op: OP })?;
        let mut lines = vec![Line([0; 64]); len.div_ceil(64)];
        let bytes: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut lines)[..len];
        if bpr > 0 {
            bytes
                .par_chunks_mut(bpr * B::RECORD)
                .zip(w.par_chunks(x16::PANEL_ROWS * bpr))
                .for_each(|(panel, rows)| x16::pack(rows, bpr, panel));
        }
        Ok(PackedMatrix {
            dtype: m.dtype,
            rows: m.rows,
            cols: m.cols,
            lines,
            len,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The packed bytes (also their heap footprint, to 64 bytes).
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

/// Several packed matrices of one type and width against the same input
/// (a layer's Q, K and V, or its gate and up): `outs[i] = ws[i] · x`. The
/// activations are quantized once, and a decode step runs every band of
/// every matrix in one parallel region (one synchronization instead of one
/// per matrix). Prefill, compute-bound, takes the matrices one by one.
pub fn matmul_packed_group(
    ws: &[&PackedMatrix],
    x: &[f32],
    n_tokens: usize,
    outs: &mut [&mut [f32]],
) -> Result<()> {
    const OP: &str = "matmul_packed_group";
    let table = dispatch::try_table()?;
    let Some(first) = ws.first() else {
        return Ok(());
    };
    if ws.len() != outs.len() {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: ws.len(),
            got: outs.len(),
        });
    }
    let same = ws
        .iter()
        .all(|w| w.dtype == first.dtype && w.cols == first.cols);
    if n_tokens != 1 || !same || first.cols / QK == 0 {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul_packed_with(table, w, x, n_tokens, out)?;
        }
        return Ok(());
    }
    for (w, out) in ws.iter().zip(outs.iter()) {
        check_shapes(OP, w.rows, w.cols, x, 1, out)?;
    }
    let bpr = first.cols / QK;
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let chunk = rows_per_task(total, 1);
    let shape = Shape {
        rows: total,
        cols: first.cols,
        n_tokens: 1,
    };
    fn go<B: X16Block, A: Pod + Sync>(
        ws: &[&PackedMatrix],
        outs: &mut [&mut [f32]],
        chunk: usize,
        bpr: usize,
        a: &[A],
        kernel: Option<X16GemmFn<A>>,
        dot: VecDotFn<B, A>,
    ) {
        let mut tasks = Vec::new();
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            for (ci, o) in out.chunks_mut(chunk).enumerate() {
                tasks.push((w.bytes(), ci * chunk, o));
            }
        }
        tasks
            .into_par_iter()
            .for_each(|(p, r0, o)| x16_band(p, r0, o.len(), bpr, a, kernel, dot, o));
    }
    match first.dtype {
        DType::Q4_0 => {
            let a = quantize_acts(x, shape, QK, table.quantize_q8_0);
            go::<BlockQ4_0, _>(
                ws,
                outs,
                chunk,
                bpr,
                &a,
                table.q4_0_q8_0_x16,
                table.q4_0_q8_0,
            );
        }
        DType::Q4_1 => {
            let a = quantize_acts(x, shape, QK, table.quantize_q8_1);
            go::<BlockQ4_1, _>(
                ws,
                outs,
                chunk,
                bpr,
                &a,
                table.q4_1_q8_1_x16,
                table.q4_1_q8_1,
            );
        }
        _ => {
            let a = quantize_acts(x, shape, QK, table.quantize_q8_0);
            go::<BlockQ8_0, _>(
                ws,
                outs,
                chunk,
                bpr,
                &a,
                table.q8_0_q8_0_x16,
                table.q8_0_q8_0,
            );
        }
    }
    Ok(())
}

/// Rows `r0..r0 + nr` (whole panels from `r0`, a panel boundary) of the
/// packed matrix `p` against `a`, on the table's x16 kernel or, without
/// one, the reference.
#[allow(clippy::too_many_arguments)]
fn x16_band<B: X16Block, A>(
    p: &[u8],
    r0: usize,
    nr: usize,
    bpr: usize,
    a: &[A],
    kernel: Option<X16GemmFn<A>>,
    dot: VecDotFn<B, A>,
    o: &mut [f32],
) {
    let panels = &p[r0 / x16::PANEL_ROWS * bpr * B::RECORD..]
        [..nr.div_ceil(x16::PANEL_ROWS) * bpr * B::RECORD];
    match kernel {
        Some(k) => k(panels, nr, a, bpr, o),
        None => x16::gemm_ref(dot, panels, nr, a, bpr, o),
    }
}

/// [`matmul_packed_with`] on the process-wide dispatch table.
pub fn matmul_packed(w: &PackedMatrix, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
    matmul_packed_with(dispatch::try_table()?, w, x, n_tokens, out)
}

/// [`matmul_with`] over packed weights. A table without an x16 kernel for
/// the type (another `SOTTO_ISA` than the one that packed) goes through the
/// reference, [`x16::gemm_ref`], on its own dot.
pub fn matmul_packed_with(
    table: &VecDotTable,
    w: &PackedMatrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    let shape = check_shapes("matmul_packed", w.rows, w.cols, x, n_tokens, out)?;
    if out.is_empty() {
        return Ok(());
    }
    let bpr = w.cols / QK;
    if bpr == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let p = w.bytes();
    fn go<B: X16Block, A: Pod + Sync>(
        p: &[u8],
        s: Shape,
        bpr: usize,
        a: &[A],
        kernel: Option<X16GemmFn<A>>,
        dot: VecDotFn<B, A>,
        out: &mut [f32],
    ) {
        bands(s, out, |r0, nr, o| {
            x16_band(p, r0, nr, bpr, a, kernel, dot, o)
        });
    }
    match w.dtype {
        DType::Q4_0 => {
            let a = quantize_acts(x, shape, QK, table.quantize_q8_0);
            go::<BlockQ4_0, _>(p, shape, bpr, &a, table.q4_0_q8_0_x16, table.q4_0_q8_0, out);
        }
        DType::Q4_1 => {
            let a = quantize_acts(x, shape, QK, table.quantize_q8_1);
            go::<BlockQ4_1, _>(p, shape, bpr, &a, table.q4_1_q8_1_x16, table.q4_1_q8_1, out);
        }
        _ => {
            let a = quantize_acts(x, shape, QK, table.quantize_q8_0);
            go::<BlockQ8_0, _>(p, shape, bpr, &a, table.q8_0_q8_0_x16, table.q8_0_q8_0, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{available_isas, table_for, Isa};
    use crate::quant::{aligned_bytes, dequantize_row, quantize_row, test_data::random_row};

    fn naive(wf: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * rows];
        for t in 0..n {
            for r in 0..rows {
                out[t * rows + r] = (0..cols)
                    .map(|c| wf[r * cols + c] as f64 * x[t * cols + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    /// Against an f64 product of the dequantized weights; the budget covers
    /// the activation quantization, relative to `|w_r| * |x_t|` (the
    /// Cauchy-Schwarz bound of each output).
    #[test]
    fn matches_naive_product_on_every_isa() {
        let cases = [
            (DType::Q4_0, 0.01),
            (DType::Q4_1, 0.01),
            (DType::Q8_0, 0.01),
            (DType::Q4_K, 0.01),
            (DType::Q5_K, 0.01),
            (DType::Q6_K, 0.01),
            (DType::F16, 1e-5),
            (DType::BF16, 1e-5),
            (DType::F32, 1e-5),
        ];
        let (rows, cols) = (37, 512);
        for (dt, budget) in cases {
            let wsrc = random_row(rows * cols, dt as u64);
            let rb = dt.row_bytes(cols).unwrap();
            let mut wq = aligned_bytes(rows * rb);
            let mut wf = vec![0f32; rows * cols];
            for r in 0..rows {
                quantize_row(
                    dt,
                    &wsrc[r * cols..(r + 1) * cols],
                    &mut wq.as_bytes_mut()[r * rb..(r + 1) * rb],
                )
                .unwrap();
                dequantize_row(
                    dt,
                    &wq.as_bytes()[r * rb..(r + 1) * rb],
                    &mut wf[r * cols..(r + 1) * cols],
                )
                .unwrap();
            }
            let m = QMatrix::new(dt, rows, cols, wq.as_bytes()).unwrap();
            for n in [1, 5] {
                let x = random_row(n * cols, 100 + n as u64);
                let want = naive(&wf, &x, rows, cols, n);
                let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
                for isa in available_isas() {
                    let mut out = vec![0f32; n * rows];
                    matmul_with(table_for(isa).unwrap(), &m, &x, n, &mut out).unwrap();
                    for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                        let (t, r) = (i / rows, i % rows);
                        let scale = norm(&wf[r * cols..(r + 1) * cols])
                            * norm(&x[t * cols..(t + 1) * cols]);
                        assert!(
                            (a - b).abs() <= budget * scale,
                            "{dt} {isa} n={n} [{i}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// Packed weights give the same outputs as the file's layout on every
    /// table (those without an x16 kernel go through the reference), for
    /// bands that end in a partial panel, decode and prefill.
    #[test]
    fn packed_matmul_matches_unpacked() {
        let (rows, cols) = (53, 256);
        for dt in [DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            let wsrc = random_row(rows * cols, 7 + dt as u64);
            let rb = dt.row_bytes(cols).unwrap();
            let mut wq = aligned_bytes(rows * rb);
            for r in 0..rows {
                quantize_row(
                    dt,
                    &wsrc[r * cols..(r + 1) * cols],
                    &mut wq.as_bytes_mut()[r * rb..(r + 1) * rb],
                )
                .unwrap();
            }
            let m = QMatrix::new(dt, rows, cols, wq.as_bytes()).unwrap();
            let packer = available_isas()
                .into_iter()
                .filter_map(|i| table_for(i).ok())
                .find_map(|t| PackedMatrix::pack_for(t, &m).unwrap());
            // without an x16 table here, pack through the reference layout
            let packed = match packer {
                Some(p) => p,
                None => {
                    let mut t = *table_for(Isa::Scalar).unwrap();
                    t.q4_0_q8_0_x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q4_0::vec_dot, p, r, a, b, o)
                    });
                    t.q4_1_q8_1_x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q4_1::vec_dot, p, r, a, b, o)
                    });
                    t.q8_0_q8_0_x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q8_0::vec_dot, p, r, a, b, o)
                    });
                    PackedMatrix::pack_for(&t, &m).unwrap().unwrap()
                }
            };
            assert_eq!(
                (packed.rows(), packed.cols(), packed.dtype()),
                (rows, cols, dt)
            );
            for n in [1, 6] {
                let x = random_row(n * cols, 50 + n as u64);
                for isa in available_isas() {
                    let t = table_for(isa).unwrap();
                    let mut want = vec![0f32; n * rows];
                    matmul_with(t, &m, &x, n, &mut want).unwrap();
                    let mut got = vec![f32::NAN; n * rows];
                    matmul_packed_with(t, &packed, &x, n, &mut got).unwrap();
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                            "{dt} {isa} n={n} [{i}]: {g} vs {w}"
                        );
                    }
                }
            }
            let mut out = vec![0f32; rows];
            assert!(matmul_packed(&packed, &x_of(cols - 1), 1, &mut out).is_err());
            assert!(matmul_packed(&packed, &x_of(cols), 1, &mut out[1..]).is_err());
        }
        // types without an x16 layout are never packed
        let k = aligned_bytes(DType::Q4_K.row_bytes(256).unwrap());
        let m = QMatrix::new(DType::Q4_K, 1, 256, k.as_bytes()).unwrap();
        for isa in available_isas() {
            assert!(PackedMatrix::pack_for(table_for(isa).unwrap(), &m)
                .unwrap()
                .is_none());
        }
    }

    /// A group (one parallel region for decode) equals its matrices taken
    /// one by one, for decode and prefill; mismatched outputs are errors.
    #[test]
    fn packed_group_matches_single_matmuls() {
        let Some(table) = available_isas()
            .into_iter()
            .filter_map(|i| table_for(i).ok())
            .find(|t| t.q4_1_q8_1_x16.is_some())
        else {
            return; // no x16 table on this CPU: the group path is never taken
        };
        let cols = 128;
        let mats: Vec<PackedMatrix> = [48, 17, 33]
            .iter()
            .map(|&rows| {
                let src = random_row(rows * cols, rows as u64);
                let rb = DType::Q4_1.row_bytes(cols).unwrap();
                let mut q = aligned_bytes(rows * rb);
                for r in 0..rows {
                    quantize_row(
                        DType::Q4_1,
                        &src[r * cols..(r + 1) * cols],
                        &mut q.as_bytes_mut()[r * rb..(r + 1) * rb],
                    )
                    .unwrap();
                }
                let m = QMatrix::new(DType::Q4_1, rows, cols, q.as_bytes()).unwrap();
                PackedMatrix::pack_for(table, &m).unwrap().unwrap()
            })
            .collect();
        let ws: Vec<&PackedMatrix> = mats.iter().collect();
        for n in [1, 3] {
            let x = random_row(n * cols, 9 + n as u64);
            let mut bufs: Vec<Vec<f32>> =
                mats.iter().map(|m| vec![f32::NAN; n * m.rows()]).collect();
            let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            matmul_packed_group(&ws, &x, n, &mut outs).unwrap();
            for (m, got) in mats.iter().zip(&bufs) {
                let mut want = vec![0f32; n * m.rows()];
                matmul_packed(m, &x, n, &mut want).unwrap();
                assert_eq!(got, &want, "n={n} rows={}", m.rows());
            }
        }
        let x = random_row(cols, 1);
        let mut short = vec![0f32; 5];
        let mut ok = vec![0f32; 17];
        assert!(matmul_packed_group(&ws[..2], &x, 1, &mut [&mut short, &mut ok]).is_err());
        assert!(matmul_packed_group(&ws[..2], &x, 1, &mut [&mut ok]).is_err());
    }

    fn x_of(n: usize) -> Vec<f32> {
        vec![0.5; n]
    }

    #[test]
    fn qmatrix_rejects_wrong_sizes() {
        // Q4_1, 64 columns: 2 blocks of 20 bytes per row
        let buf = aligned_bytes(2 * 40 + 2);
        let b = buf.as_bytes();
        assert!(QMatrix::new(DType::Q4_1, 2, 64, &b[..80]).is_ok());
        assert!(matches!(
            QMatrix::new(DType::Q4_1, 2, 64, &b[..79]),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            QMatrix::new(DType::Q4_1, 2, 63, &b[..80]),
            Err(Error::RaggedRow { .. })
        ));
        assert!(matches!(
            QMatrix::new(DType::Q4_1, 2, 64, &b[1..81]),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            QMatrix::new(DType::F32, usize::MAX, 4, b),
            Err(Error::SizeOverflow { .. })
        ));
        let m = QMatrix::new(DType::Q8_K, 0, 256, &[]).unwrap();
        assert!(matmul(&m, &[0.0; 256], 1, &mut []).is_ok());
        let m = QMatrix::new(DType::Q4_1, 2, 64, &b[..80]).unwrap();
        let mut out = [0f32; 2];
        assert!(matmul(&m, &[0.0; 63], 1, &mut out).is_err());
        assert!(matmul(&m, &[0.0; 64], 1, &mut out[..1]).is_err());
    }
}
