//! Quantized matrix times activations: `out[t, r] = w[r, :] · x[t, :]`.
//! Activations are quantized once per token into the weight type's
//! activation type (`WeightBlock::Act`). Output rows are split into bands
//! (multiples of 16 rows) across the caller's rayon pool (see [`bands`]),
//! and each band goes through the gemm kernel of the weight type's row of
//! the kernel table, or one dot per output when the row has none. Every op
//! takes the table the caller chose (`*_with`); the entries without a
//! table use the process-wide one.
//!
//! Weights come in two layouts:
//!
//! * [`QMatrix`]: the file's bytes (ggml row-major blocks), borrowed from the
//!   memory map; [`matmul`].
//! * [`PackedMatrix`]: repacked once at load into the x16 panels of
//!   [`crate::quant::x16`] for tables whose kernels read them (x86 from
//!   AVX2 up, aarch64 from dotprod up), so decode streams contiguous panels instead of gathering rows;
//!   [`matmul_packed`], and [`matmul_packed_group`] for several matrices on
//!   one input in one parallel region.

use crate::dispatch::{self, KernelTable, WeightRow};
use crate::quant::x16::{self, X16Block};
use crate::quant::{cast_blocks, with_weight_block, DType, QuantBlock, WeightBlock};
use crate::{Error, Result};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

/// A row-major weight matrix of `rows` rows of `cols` elements (ggml's
/// `ne0 = cols`), borrowed from memory-mapped model bytes.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    /// The element type of `data`.
    pub dtype: DType,
    /// Rows (output features).
    pub rows: usize,
    /// Elements per row (input features).
    pub cols: usize,
    /// `rows` rows of `dtype.row_bytes(cols)` bytes, aligned for `dtype`.
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

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.data.len().checked_div(self.rows).unwrap_or(0)
    }
}

/// [`matmul_with`] on the process-wide dispatch table.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
    matmul_with(dispatch::try_table()?, w, x, n_tokens, out)
}

/// `x` is `[n_tokens, cols]`, `out` is `[n_tokens, rows]`, both row-major.
/// An activation-only type as weights is [`Error::UnsupportedDType`].
pub fn matmul_with(
    table: &KernelTable,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "matmul";
    let shape = check_shapes(OP, w.rows, w.cols, x, n_tokens, out)?;
    let dtype = w.dtype;
    if !dtype.is_weight_type() {
        return Err(Error::UnsupportedDType { op: OP, dtype });
    }
    if out.is_empty() {
        return Ok(());
    }
    with_weight_block!(dtype, W => {
        run::<W>(table, cast_blocks(OP, dtype, w.data)?, x, shape, out);
        Ok(())
    }, Err(Error::UnsupportedDType { op: OP, dtype }))
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

/// `x` (`n_tokens` rows of `cols`) quantized into `W`'s activation type
/// by `table`'s quantizer for it, row by row, and handed to `f`.
///
/// The blocks live in a buffer of the calling thread's, kept between
/// products: a fresh zeroed `Vec` per product was a serial memset of the
/// whole prompt's activations (4.8 MB for a Llama-3.2-1B down projection
/// over 512 tokens) while the rest of the pool waited, 3.5 % of a 2-thread
/// prefill's samples. Every quantizer writes each field of each block, so the old
/// contents are never read.
fn with_acts<W: WeightBlock, R>(
    table: &KernelTable,
    x: &[f32],
    s: Shape,
    f: impl FnOnce(&[W::Act]) -> R,
) -> R {
    let quantize = table.quantizer::<W::Act>();
    let bpr = s.cols / <W::Act as QuantBlock>::ELEMS;
    let n = s.n_tokens * bpr;
    let run = |buf: &mut Vec<u64>| {
        let bytes = n * std::mem::size_of::<W::Act>();
        if buf.len() * 8 < bytes {
            buf.resize(bytes.div_ceil(8), 0);
        }
        // the u64s' alignment covers every activation block's
        let acts: &mut [W::Act] =
            bytemuck::cast_slice_mut(&mut bytemuck::cast_slice_mut::<u64, u8>(buf)[..bytes]);
        if s.n_tokens * s.cols <= SERIAL_QUANTIZE {
            acts.chunks_mut(bpr.max(1))
                .zip(x.chunks(s.cols.max(1)))
                .for_each(|(a, xr)| quantize(xr, a));
        } else {
            acts.par_chunks_mut(bpr.max(1))
                .zip(x.par_chunks(s.cols.max(1)))
                .for_each(|(a, xr)| quantize(xr, a));
        }
        f(acts)
    };
    crate::scratch::with_scratch(&ACTS, run)
}

std::thread_local! {
    /// The calling thread's quantized activations ([`with_acts`]).
    static ACTS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Activations up to this many elements are quantized on the calling
/// thread: a short prompt's few rows take microseconds, less than waking
/// the pool for them.
const SERIAL_QUANTIZE: usize = 1 << 15;

/// Rows per parallel task, a multiple of the 16-row panels of the gemm
/// kernels: enough tasks to balance the pool (a shared core may lag), each
/// long enough to amortize the task overhead; prefill tasks carry every
/// token, so fewer of them.
fn rows_per_task(rows: usize, n_tokens: usize) -> usize {
    let per_thread = if n_tokens == 1 { 4 } else { 2 };
    let tasks = rayon::current_num_threads() * per_thread;
    rows.div_ceil(tasks).next_multiple_of(16).clamp(16, 1024)
}

fn run<W: WeightBlock>(table: &KernelTable, w: &[W], x: &[f32], s: Shape, out: &mut [f32]) {
    let bpr = s.cols / W::ELEMS;
    if bpr == 0 {
        out.fill(0.0);
        return;
    }
    let row = table.weight::<W>();
    with_acts::<W, _>(table, x, s, |acts| {
        bands(s, act_bytes::<W>(bpr), out, |r0, nr, c, o| {
            let wr = &w[r0 * bpr..(r0 + nr) * bpr];
            let a = &acts[c.start * bpr..c.end * bpr];
            let gemm = |o: &mut [f32]| match row.gemm {
                Some(g) => g(wr, a, bpr, o),
                None => dispatch::gemm_by_dots(row.dot, wr, a, bpr, o),
            };
            // the file-layout gemms write `[cols][nr]` contiguous: many
            // columns go through a buffer of the thread's
            if let [one] = o {
                return gemm(one);
            }
            let through = |o: &mut [&mut [f32]], buf: &mut Vec<f32>| {
                buf.resize(nr * o.len(), 0.0);
                gemm(buf);
                for (d, src) in o.iter_mut().zip(buf.chunks_exact(nr.max(1))) {
                    d.copy_from_slice(src);
                }
            };
            crate::scratch::with_scratch(&GEMM_OUT, |buf| through(o, buf))
        })
    });
}

std::thread_local! {
    /// A pool thread's outputs of a file-layout gemm, kept between products.
    static GEMM_OUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The activation bytes of one token of `bpr` blocks of `W`'s type.
fn act_bytes<W: WeightBlock>(bpr: usize) -> usize {
    bpr * std::mem::size_of::<W::Act>()
}

/// Splits the output rows into bands of [`rows_per_task`] (whole 16-row
/// panels) across the pool and calls `kernel(r0, nr, tokens, band_out)`
/// for each, where `band_out[c][r]` is row `r0 + r` against token
/// `tokens.start + c`, in place in `out`:
///
/// * decode (one token): a band's outputs are one contiguous slice;
/// * prefill: see [`prefill_bands`]; `act_bytes` is a token's quantized
///   activations.
fn bands(
    s: Shape,
    act_bytes: usize,
    out: &mut [f32],
    kernel: impl Fn(usize, usize, Range<usize>, &mut [&mut [f32]]) + Sync,
) {
    let chunk = rows_per_task(s.rows, s.n_tokens);
    if s.n_tokens == 1 {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(ci, mut oc)| {
                kernel(ci * chunk, oc.len(), 0..1, std::slice::from_mut(&mut oc));
            });
        return;
    }
    let mut tasks = Vec::new();
    split_bands(0, out, s.rows, chunk, &mut tasks);
    prefill_bands(s.n_tokens, act_bytes, tasks, |_, r0, nr, c, band| {
        kernel(r0, nr, c, band)
    });
}

/// One prefill band: rows `r0..r0 + nr` of output matrix `m`, where
/// `dst[t]` is that row range of token `t`'s output row.
struct Band<'o> {
    m: usize,
    r0: usize,
    dst: Vec<&'o mut [f32]>,
}

/// Splits `out` (token-major, `rows` per token) of output matrix `m` into
/// bands of `chunk` rows, appended to `tasks`.
fn split_bands<'o>(
    m: usize,
    out: &'o mut [f32],
    rows: usize,
    chunk: usize,
    tasks: &mut Vec<Band<'o>>,
) {
    let first = tasks.len();
    for r0 in (0..rows).step_by(chunk) {
        tasks.push(Band {
            m,
            r0,
            dst: Vec::new(),
        });
    }
    for orow in out.chunks_mut(rows.max(1)) {
        for (band, d) in tasks[first..].iter_mut().zip(orow.chunks_mut(chunk)) {
            band.dst.push(d);
        }
    }
}

/// Prefill bands in one parallel region (a product is one
/// synchronization of the pool, not two). Each task runs its band against
/// the `n` tokens a [`token_block`] at a time, `kernel(m, r0, nr, tokens,
/// band_out)`, where `band_out[c]` is the band's piece of token
/// `tokens.start + c`'s output row: the kernels write the token-major
/// outputs in place. (They wrote a buffer of the thread's, copied out
/// after each block: 3 % of a Llama-3.2-1B-shaped prefill's samples, and
/// the buffer took L2 from the activation blocks.) The blocks keep a
/// band's quantized activations (`act_bytes` a token) in L2 while every
/// panel of the band reads them: over all 512 tokens of a prompt, a
/// Llama-3.2-1B down projection's activations alone outgrew L2 and were
/// streamed from L3 for every panel.
fn prefill_bands(
    n: usize,
    act_bytes: usize,
    tasks: Vec<Band<'_>>,
    kernel: impl Fn(usize, usize, usize, Range<usize>, &mut [&mut [f32]]) + Sync,
) {
    let step = token_block(n, act_bytes, block_bytes());
    tasks.into_par_iter().for_each(|mut band| {
        let nr = band.dst.first().map_or(0, |d| d.len());
        for (bi, dst) in band.dst.chunks_mut(step).enumerate() {
            let c0 = bi * step;
            kernel(band.m, band.r0, nr, c0..c0 + dst.len(), dst);
        }
    });
}

/// Tokens per block of [`prefill_bands`]: as many as keep a block's
/// activations (`act_bytes` a token) within `budget` bytes, in whole
/// groups of 8 (the k-quant kernels take columns 8 at a time; at least one
/// group), and the `n` tokens cut into as few blocks as that allows, of
/// sizes as alike as whole groups allow.
fn token_block(n: usize, act_bytes: usize, budget: usize) -> usize {
    let fit = (budget / act_bytes.max(1)) / 8 * 8;
    if fit >= n {
        return n.max(1);
    }
    let blocks = n.div_ceil(fit.max(8));
    n.div_ceil(blocks).next_multiple_of(8)
}

/// L2 bytes a prefill block's activations and outputs may take: half of
/// a core's share of L2 ([`crate::cache::l2_bytes_per_core`], read once),
/// so the band's weights and the kernel's copies of the activations fit
/// beside them. 1 MiB on a Xeon with 2 MiB per core (where 512 KiB, 768
/// KiB and 1 MiB ran alike and unblocked ran 5–30% slower on the 1B
/// shapes); 128 KiB–1 MiB on phones' big cores (256 KiB–2 MiB of L2).
/// Where the OS does not say (sysfs hidden, not Linux), 512 KiB. The
/// unit tests take blocks of a few tokens, so their prompts of 21 cross
/// block boundaries.
fn block_bytes() -> usize {
    if cfg!(test) {
        return 4 << 10;
    }
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| budget_for_l2(crate::cache::l2_bytes_per_core()))
}

/// [`block_bytes`] for a core's share of L2 (`None`: unknown): half of
/// it, within 128 KiB–4 MiB.
fn budget_for_l2(l2: Option<usize>) -> usize {
    l2.map_or(512 << 10, |l2| (l2 / 2).clamp(128 << 10, 4 << 20))
}

/// 64-byte aligned storage for packed weights (whole cache lines, so the
/// kernels' 64-byte loads never split one).
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Line([u8; 64]);

/// Bytes a [`PackedMatrix`] can borrow instead of owning them: a memory
/// map of a file of packed panels, kept alive by the matrices that read it.
pub trait PackedSource: Send + Sync {
    /// The whole source; a matrix reads one range of it.
    fn bytes(&self) -> &[u8];
}

/// Where a packed matrix's bytes live.
#[derive(Clone)]
enum PackedBytes {
    /// Packed here, at load.
    Owned(Vec<Line>),
    /// `len` bytes from `start` of a shared source (64-byte aligned).
    Shared {
        source: Arc<dyn PackedSource>,
        start: usize,
    },
}

/// A weight matrix repacked at load time into the x16 panels of
/// `quant::x16` (crate-private), for tables whose gemm kernels read that layout
/// (x86 from AVX2 up, aarch64 from dotprod up): the decode matvec then streams each panel with
/// contiguous loads instead of gathering 16 rows per block at run time.
/// Owned when packed here (it costs the matrix's size in memory, besides
/// the file's bytes), or borrowed from a [`PackedSource`] that holds the
/// panels already ([`PackedMatrix::from_source`]).
#[derive(Clone)]
pub struct PackedMatrix {
    dtype: DType,
    rows: usize,
    cols: usize,
    storage: PackedBytes,
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
    pub fn pack_for(table: &KernelTable, m: &QMatrix<'_>) -> Result<Option<PackedMatrix>> {
        const OP: &str = "PackedMatrix::pack_for";
        with_weight_block!(m.dtype, W => {
            if table.weight::<W>().x16.is_none() || !x16::has_layout::<W>() {
                return Ok(None);
            }
            Self::pack::<W>(cast_blocks(OP, m.dtype, m.data)?, m).map(Some)
        }, Ok(None))
    }

    fn pack<B: WeightBlock>(w: &[B], m: &QMatrix<'_>) -> Result<PackedMatrix> {
        const OP: &str = "PackedMatrix::pack";
        let bpr = m.cols / B::ELEMS;
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
            storage: PackedBytes::Owned(lines),
            len,
        })
    }

    /// The bytes [`PackedMatrix::pack_for`] makes of a `rows` x `cols`
    /// matrix of `dtype` for `table`; `None` when the table does not pack
    /// that type (or the shape is not whole blocks).
    pub fn packed_len(
        table: &KernelTable,
        dtype: DType,
        rows: usize,
        cols: usize,
    ) -> Option<usize> {
        with_weight_block!(dtype, W => {
            if table.weight::<W>().x16.is_none()
                || !x16::has_layout::<W>()
                || !cols.is_multiple_of(W::ELEMS)
            {
                return None;
            }
            x16::packed_bytes::<W>(rows, cols / W::ELEMS)
        }, None)
    }

    /// A matrix whose panels `table` would pack already lie in `source` at
    /// `start..start + len` (what [`PackedMatrix::bytes`] of a packed one
    /// held, written to a file and mapped back): no copy. Refused unless
    /// the table packs `dtype`, `len` is the packed size of the shape, and
    /// the range lies in the source on a 64-byte boundary.
    pub fn from_source(
        table: &KernelTable,
        dtype: DType,
        rows: usize,
        cols: usize,
        source: Arc<dyn PackedSource>,
        start: usize,
    ) -> Result<PackedMatrix> {
        const OP: &str = "PackedMatrix::from_source";
        let invalid = |reason: String| Error::InvalidArgument { op: OP, reason };
        let len = Self::packed_len(table, dtype, rows, cols)
            .ok_or_else(|| invalid(format!("{} does not pack {dtype} {rows}x{cols}", table.isa)))?;
        let bytes = source.bytes();
        let in_range = start.checked_add(len).is_some_and(|end| end <= bytes.len());
        if !in_range {
            return Err(invalid(format!(
                "{len} bytes from {start} of a {}-byte source",
                bytes.len()
            )));
        }
        if !(bytes.as_ptr() as usize + start).is_multiple_of(64) {
            return Err(invalid(format!(
                "packed panels at {start} not on a 64-byte boundary"
            )));
        }
        Ok(PackedMatrix {
            dtype,
            rows,
            cols,
            storage: PackedBytes::Shared { source, start },
            len,
        })
    }

    /// Whether the bytes are this matrix's own (packed here) rather than
    /// borrowed from a [`PackedSource`].
    pub fn is_owned(&self) -> bool {
        matches!(self.storage, PackedBytes::Owned(_))
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Elements per row (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The packed bytes (when owned, also their heap footprint, to 64
    /// bytes).
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            PackedBytes::Owned(lines) => &bytemuck::cast_slice(lines)[..self.len],
            PackedBytes::Shared { source, start } => {
                source.bytes().get(*start..*start + self.len).unwrap_or(&[])
            }
        }
    }
}

/// [`matmul_packed_group_with`] on the process-wide dispatch table.
pub fn matmul_packed_group(
    ws: &[&PackedMatrix],
    x: &[f32],
    n_tokens: usize,
    outs: &mut [&mut [f32]],
) -> Result<()> {
    matmul_packed_group_with(dispatch::try_table()?, ws, x, n_tokens, outs)
}

/// Several packed matrices against the same input (a layer's Q, K and V,
/// or its gate and up): `outs[i] = ws[i] · x`. The matrices are grouped by
/// type (a Q4_K_M file mixes Q5_0 and Q8_0 in one layer's Q/K/V): per
/// type, the activations are quantized once and every band of every
/// matrix runs in one parallel region, one synchronization instead of one
/// per matrix (at a short prompt's size, a layer's synchronizations cost
/// as much as its products). Matrices of different widths go one by one.
pub fn matmul_packed_group_with(
    table: &KernelTable,
    ws: &[&PackedMatrix],
    x: &[f32],
    n_tokens: usize,
    outs: &mut [&mut [f32]],
) -> Result<()> {
    const OP: &str = "matmul_packed_group";
    if ws.len() != outs.len() {
        return Err(Error::ShapeMismatch {
            op: OP,
            expected: ws.len(),
            got: outs.len(),
        });
    }
    let Some(first) = ws.first() else {
        return Ok(());
    };
    let same_width = ws.iter().all(|w| w.cols == first.cols);
    if !same_width || first.cols / first.dtype.block_size() == 0 {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul_packed_with(table, w, x, n_tokens, out)?;
        }
        return Ok(());
    }
    for (w, out) in ws.iter().zip(outs.iter()) {
        check_shapes(OP, w.rows, w.cols, x, n_tokens, out)?;
    }
    // one group per type, in order of first appearance
    type Group<'w, 'o> = (DType, Vec<&'w PackedMatrix>, Vec<&'o mut [f32]>);
    let mut groups: Vec<Group<'_, '_>> = Vec::new();
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        match groups.iter_mut().find(|g| g.0 == w.dtype) {
            Some(g) => {
                g.1.push(w);
                g.2.push(out);
            }
            None => groups.push((w.dtype, vec![w], vec![out])),
        }
    }
    for (dtype, ws, mut outs) in groups {
        with_weight_block!(dtype, W => group::<W>(table, &ws, x, n_tokens, &mut outs),
            return Err(Error::UnsupportedDType { op: OP, dtype }));
    }
    Ok(())
}

/// One type's matrices of [`matmul_packed_group_with`] (all of type `W`
/// and one width): the activations quantized once, every band of every
/// matrix in one parallel region.
fn group<W: WeightBlock>(
    table: &KernelTable,
    ws: &[&PackedMatrix],
    x: &[f32],
    n_tokens: usize,
    outs: &mut [&mut [f32]],
) {
    let cols = x.len() / n_tokens.max(1);
    let bpr = cols / W::ELEMS;
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let chunk = rows_per_task(total, n_tokens);
    let shape = Shape {
        rows: total,
        cols,
        n_tokens,
    };
    let row = table.weight::<W>();
    with_acts::<W, _>(table, x, shape, |a| {
        if n_tokens == 1 {
            let mut tasks = Vec::new();
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                for (ci, o) in out.chunks_mut(chunk).enumerate() {
                    tasks.push((w.bytes(), ci * chunk, o));
                }
            }
            tasks.into_par_iter().for_each(|(p, r0, mut o)| {
                x16_band(p, r0, o.len(), bpr, a, row, std::slice::from_mut(&mut o))
            });
            return;
        }
        let mut tasks = Vec::new();
        for (m, (w, out)) in ws.iter().zip(outs.iter_mut()).enumerate() {
            split_bands(m, out, w.rows, chunk, &mut tasks);
        }
        prefill_bands(n_tokens, act_bytes::<W>(bpr), tasks, |m, r0, nr, c, o| {
            x16_band(
                ws[m].bytes(),
                r0,
                nr,
                bpr,
                &a[c.start * bpr..c.end * bpr],
                row,
                o,
            )
        });
    });
}

/// Rows `r0..r0 + nr` (whole panels from `r0`, a panel boundary) of the
/// packed matrix `p` against `a`, on the row's x16 kernel or, without one,
/// the reference over the row's dot.
fn x16_band<W: WeightBlock>(
    p: &[u8],
    r0: usize,
    nr: usize,
    bpr: usize,
    a: &[W::Act],
    row: &WeightRow<W>,
    o: &mut [&mut [f32]],
) {
    let panels = &p[r0 / x16::PANEL_ROWS * bpr * W::RECORD..]
        [..nr.div_ceil(x16::PANEL_ROWS) * bpr * W::RECORD];
    match row.x16 {
        Some(k) => k(panels, nr, a, bpr, o),
        None => x16::gemm_ref::<W, _>(row.dot, panels, nr, a, bpr, o),
    }
}

/// [`matmul_packed_with`] on the process-wide dispatch table.
pub fn matmul_packed(w: &PackedMatrix, x: &[f32], n_tokens: usize, out: &mut [f32]) -> Result<()> {
    matmul_packed_with(dispatch::try_table()?, w, x, n_tokens, out)
}

/// [`matmul_with`] over packed weights. A table without an x16 kernel for
/// the type (another table than the one that packed) goes through the
/// reference, `quant::x16::gemm_ref`.
pub fn matmul_packed_with(
    table: &KernelTable,
    w: &PackedMatrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "matmul_packed";
    let shape = check_shapes(OP, w.rows, w.cols, x, n_tokens, out)?;
    if out.is_empty() {
        return Ok(());
    }
    let dtype = w.dtype;
    with_weight_block!(dtype, W => {
        let bpr = w.cols / W::ELEMS;
        if bpr == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let row = table.weight::<W>();
        let p = w.bytes();
        with_acts::<W, _>(table, x, shape, |a| {
            bands(shape, act_bytes::<W>(bpr), out, |r0, nr, c, o| {
                x16_band(p, r0, nr, bpr, &a[c.start * bpr..c.end * bpr], row, o)
            })
        });
        Ok(())
    }, Err(Error::UnsupportedDType { op: OP, dtype }))
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
            (DType::Q5_0, 0.01),
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
            for n in [1, 5, 21] {
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
        for dt in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q5_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
        ] {
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
                    t.q4_0.x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q4_0::vec_dot, p, r, a, b, o)
                    });
                    t.q4_1.x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q4_1::vec_dot, p, r, a, b, o)
                    });
                    t.q8_0.x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q8_0::vec_dot, p, r, a, b, o)
                    });
                    t.q5_0.x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q5_0::vec_dot, p, r, a, b, o)
                    });
                    t.q4_k.x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q4_k::vec_dot, p, r, a, b, o)
                    });
                    t.q5_k.x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q5_k::vec_dot, p, r, a, b, o)
                    });
                    t.q6_k.x16 = Some(|p, r, a, b, o| {
                        x16::gemm_ref(crate::quant::q6_k::vec_dot, p, r, a, b, o)
                    });
                    PackedMatrix::pack_for(&t, &m).unwrap().unwrap()
                }
            };
            assert_eq!(
                (packed.rows(), packed.cols(), packed.dtype()),
                (rows, cols, dt)
            );
            for n in [1, 6, 21] {
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
        let k = aligned_bytes(DType::Q2_K.row_bytes(256).unwrap());
        let m = QMatrix::new(DType::Q2_K, 1, 256, k.as_bytes()).unwrap();
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
            .find(|t| t.q4_1.x16.is_some() && t.q5_0.x16.is_some() && t.q8_0.x16.is_some())
        else {
            return; // no x16 table on this CPU: the group path is never taken
        };
        let cols = 128;
        // a Q4_K_M layer's Q/K/V mixes Q5_0 and Q8_0: grouped per type
        let mats: Vec<PackedMatrix> = [
            (48, DType::Q4_1),
            (17, DType::Q4_1),
            (33, DType::Q5_0),
            (40, DType::Q8_0),
            (16, DType::Q5_0),
        ]
        .iter()
        .map(|&(rows, dt)| {
            let src = random_row(rows * cols, rows as u64);
            let rb = dt.row_bytes(cols).unwrap();
            let mut q = aligned_bytes(rows * rb);
            for r in 0..rows {
                quantize_row(
                    dt,
                    &src[r * cols..(r + 1) * cols],
                    &mut q.as_bytes_mut()[r * rb..(r + 1) * rb],
                )
                .unwrap();
            }
            let m = QMatrix::new(dt, rows, cols, q.as_bytes()).unwrap();
            PackedMatrix::pack_for(table, &m).unwrap().unwrap()
        })
        .collect();
        let ws: Vec<&PackedMatrix> = mats.iter().collect();
        for n in [1, 3, 21] {
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

    #[test]
    fn the_block_budget_is_half_the_l2_within_bounds() {
        assert_eq!(budget_for_l2(Some(2 << 20)), 1 << 20);
        assert_eq!(budget_for_l2(Some(512 << 10)), 256 << 10);
        assert_eq!(budget_for_l2(None), 512 << 10);
        // a tiny or zero report (a broken sysfs) and a huge one stay usable
        assert_eq!(budget_for_l2(Some(0)), 128 << 10);
        assert_eq!(budget_for_l2(Some(64 << 20)), 4 << 20);
    }

    /// Prefill blocks: whole groups of 8 within the budget, of even size,
    /// covering the prompt; one block when it all fits, and at least 8
    /// tokens when a token alone outgrows the budget.
    #[test]
    fn token_blocks_fit_the_budget() {
        const MIB: usize = 1 << 20;
        assert_eq!(token_block(5, 100, MIB), 5);
        assert_eq!(token_block(0, 100, MIB), 1);
        // a token alone over the budget: one group of 8 at a time
        assert_eq!(token_block(1000, MIB + 1, MIB), 8);
        // the 1B shape's down projection (Q8_K of 8192) in 512 KiB
        assert_eq!(token_block(512, 9344, MIB / 2), 56);
        for n in [9usize, 21, 128, 512, 513, 2048] {
            for act in [2336usize, 9344, 576, 100] {
                for budget in [4 << 10, MIB] {
                    let step = token_block(n, act, budget);
                    let case = format!("n={n} act={act} budget={budget}: {step}");
                    if step >= n {
                        assert!(step == n && n * act <= budget, "{case}");
                        continue;
                    }
                    assert!(step.is_multiple_of(8) && step > 0, "{case}");
                    assert!(step == 8 || step * act <= budget, "{case}");
                    // as few blocks as the budget allows
                    let fit = (budget / act / 8 * 8).max(8);
                    assert_eq!(n.div_ceil(step), n.div_ceil(fit), "{case}");
                }
            }
        }
    }

    fn x_of(n: usize) -> Vec<f32> {
        vec![0.5; n]
    }

    /// Every weight type: data one block short of the rows (blocks past the
    /// tensor) or one block long, a row length that is not whole blocks,
    /// and inputs or outputs of the wrong length are typed errors on every
    /// table, and a failed call leaves the output untouched.
    #[test]
    fn every_type_rejects_bad_shapes() {
        for &d in DType::ALL {
            let (bs, ts) = (d.block_size(), d.type_size());
            let (rows, cols) = (3, 2 * bs.max(32));
            let rb = d.row_bytes(cols).unwrap();
            let buf = aligned_bytes(rows * rb + ts);
            let b = buf.as_bytes();
            for bad in [rows * rb - ts, rows * rb + ts] {
                assert!(
                    matches!(
                        QMatrix::new(d, rows, cols, &b[..bad]),
                        Err(Error::ShapeMismatch { .. })
                    ),
                    "{d}: {bad} bytes for {rows}x{cols}"
                );
            }
            if bs > 1 {
                assert!(
                    matches!(
                        QMatrix::new(d, rows, cols + 1, &b[..rows * rb]),
                        Err(Error::RaggedRow { .. })
                    ),
                    "{d}: ragged"
                );
            }
            let m = QMatrix::new(d, rows, cols, &b[..rows * rb]).unwrap();
            for isa in available_isas() {
                let t = table_for(isa).unwrap();
                let mut out = vec![3f32; rows];
                let wrong_x = matmul_with(t, &m, &vec![0.5; cols - 1], 1, &mut out);
                let wrong_out = matmul_with(t, &m, &vec![0.5; cols], 1, &mut out[..rows - 1]);
                if d.is_weight_type() {
                    assert!(
                        matches!(wrong_x, Err(Error::ShapeMismatch { .. })),
                        "{d} {isa}"
                    );
                    assert!(
                        matches!(wrong_out, Err(Error::ShapeMismatch { .. })),
                        "{d} {isa}"
                    );
                    assert!(
                        matmul_with(t, &m, &vec![0.5; 2 * cols], 2, &mut vec![0f32; 2 * rows])
                            .is_ok()
                    );
                } else {
                    let ok = matmul_with(t, &m, &vec![0.5; cols], 1, &mut out);
                    assert!(
                        matches!(ok, Err(Error::UnsupportedDType { .. })),
                        "{d} {isa}"
                    );
                }
                assert!(out.iter().all(|&v| v == 3.0), "{d} {isa}: output written");
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
        // an activation-only type is no weight type, even for no rows
        let m = QMatrix::new(DType::Q8_K, 0, 256, &[]).unwrap();
        assert_eq!(
            matmul(&m, &[0.0; 256], 1, &mut []),
            Err(Error::UnsupportedDType {
                op: "matmul",
                dtype: DType::Q8_K
            })
        );
        let m = QMatrix::new(DType::Q4_1, 0, 64, &[]).unwrap();
        assert!(matmul(&m, &[0.0; 64], 1, &mut []).is_ok());
        let m = QMatrix::new(DType::Q4_1, 2, 64, &b[..80]).unwrap();
        let mut out = [0f32; 2];
        assert!(matmul(&m, &[0.0; 63], 1, &mut out).is_err());
        assert!(matmul(&m, &[0.0; 64], 1, &mut out[..1]).is_err());
    }

    /// Panels borrowed from a source are refused unless the table packs
    /// the type and the range holds exactly the packed size, inside the
    /// source, on a 64-byte boundary; an accepted one reads the owned
    /// matrix's bytes and computes its products bit for bit.
    #[test]
    fn packed_matrices_from_a_source_check_their_range() {
        struct Lines(Vec<Line>, usize);
        impl PackedSource for Lines {
            fn bytes(&self) -> &[u8] {
                &bytemuck::cast_slice(&self.0)[..self.1]
            }
        }
        // the scalar table with a reference x16 entry: runs on any CPU
        let mut t = *table_for(Isa::Scalar).unwrap();
        t.q8_0.x16 =
            Some(|p, r, a, b, o| x16::gemm_ref(crate::quant::q8_0::vec_dot, p, r, a, b, o));
        let (rows, cols) = (20, 64);
        let rb = DType::Q8_0.row_bytes(cols).unwrap();
        let wsrc = random_row(rows * cols, 3);
        let mut wq = aligned_bytes(rows * rb);
        for (src, dst) in wsrc.chunks(cols).zip(wq.as_bytes_mut().chunks_mut(rb)) {
            quantize_row(DType::Q8_0, src, dst).unwrap();
        }
        let m = QMatrix::new(DType::Q8_0, rows, cols, wq.as_bytes()).unwrap();
        let owned = PackedMatrix::pack_for(&t, &m).unwrap().unwrap();
        let len = owned.bytes().len();
        let total = 64 + len + 64;
        let mut lines = vec![Line([0; 64]); total.div_ceil(64)];
        bytemuck::cast_slice_mut::<Line, u8>(&mut lines)[64..64 + len]
            .copy_from_slice(owned.bytes());
        let source: Arc<dyn PackedSource> = Arc::new(Lines(lines, total));

        let from = |table: &KernelTable, dtype, start| {
            PackedMatrix::from_source(table, dtype, rows, cols, Arc::clone(&source), start)
        };
        let borrowed = from(&t, DType::Q8_0, 64).unwrap();
        assert!(owned.is_owned() && !borrowed.is_owned());
        assert_eq!(borrowed.bytes(), owned.bytes());
        let x = random_row(3 * cols, 5);
        let (mut a, mut b) = (vec![0f32; 3 * rows], vec![0f32; 3 * rows]);
        matmul_packed_with(&t, &owned, &x, 3, &mut a).unwrap();
        matmul_packed_with(&t, &borrowed, &x, 3, &mut b).unwrap();
        assert_eq!(a, b);

        for (what, table, dtype, start) in [
            ("misaligned", &t, DType::Q8_0, 32),
            ("past the end", &t, DType::Q8_0, 192),
            ("overflowing", &t, DType::Q8_0, usize::MAX - 8),
            ("a type the table does not pack", &t, DType::Q4_0, 64),
            (
                "a table without x16",
                table_for(Isa::Scalar).unwrap(),
                DType::Q8_0,
                64,
            ),
        ] {
            assert!(
                matches!(
                    from(table, dtype, start),
                    Err(Error::InvalidArgument { .. })
                ),
                "{what}"
            );
        }
    }
}
