//! Quantized matrix times activations: `out[t, r] = w[r, :] · x[t, :]`.
//! Activations are quantized once per token into the weight type's pair
//! type. Output rows are split into bands (multiples of 16 rows) across the
//! caller's rayon pool, and each band goes through the table's gemm kernel
//! for that pair, or one dot per output when the table has none:
//!
//! * decode (one token): a band's outputs are a contiguous slice of `out`;
//! * prefill: a band is taken against every token, so its weights are
//!   unpacked once and stream from memory once, written token-major into
//!   the band's own buffer and then copied into the token-major output.

use crate::dispatch::{self, GemmFn, VecDotFn, VecDotTable};
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
    const OP: &str = "matmul";
    let x_len = n_tokens
        .checked_mul(w.cols)
        .ok_or(Error::SizeOverflow { op: OP })?;
    if x.len() != x_len {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: x_len,
            got: x.len(),
        });
    }
    let out_len = n_tokens
        .checked_mul(w.rows)
        .ok_or(Error::SizeOverflow { op: OP })?;
    if out.len() != out_len {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: out_len,
            got: out.len(),
        });
    }
    if out_len == 0 {
        return Ok(());
    }
    let dt = w.dtype;
    let shape = Shape {
        rows: w.rows,
        cols: w.cols,
        n_tokens,
    };
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
    let kernel = |wr: &[W], o: &mut [f32]| match gemm {
        Some(g) => g(wr, acts, bpr, o),
        None => dispatch::gemm_by_dots(dot, wr, acts, bpr, o),
    };
    let chunk = rows_per_task(s.rows, s.n_tokens);
    if s.n_tokens == 1 {
        out.par_chunks_mut(chunk).enumerate().for_each(|(ci, oc)| {
            let r0 = ci * chunk;
            kernel(&w[r0 * bpr..(r0 + oc.len()) * bpr], oc);
        });
        return;
    }
    // Each task takes a band of rows against every token, so the band's
    // weights are unpacked once, and writes it token-major into its own
    // slice of `by_band`; the bands are then copied into the token-major
    // output (a tenth of the work of the product).
    let n = s.n_tokens;
    let mut by_band = vec![0f32; s.rows * n];
    by_band
        .par_chunks_mut(chunk * n)
        .enumerate()
        .for_each(|(ci, band)| {
            let r0 = ci * chunk;
            let nr = band.len() / n;
            kernel(&w[r0 * bpr..(r0 + nr) * bpr], band);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{available_isas, table_for};
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
