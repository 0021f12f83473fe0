//! Attention over an f16 KV cache as small register-blocked gemms, for
//! layers without a sliding window (the path `ops::attention` takes when
//! the table has [`AttnTileKernels`] and the cache is f16, not rotated).
//!
//! A unit of work is one KV head, a chunk of tokens (every query row of
//! the chunk times the heads of the group) and a run of key segments.
//! Each tile of [`ATTN_TILE`] keys is widened and transposed once for all
//! the unit's rows, and each value tile widened once, where the per-head
//! path re-read and re-converted a KV head's whole history for every token
//! of a prefill, and for every query head of a decode step.
//!
//! Batch invariance: a token's output has the same bits however the call
//! was batched, chunked or threaded, because its arithmetic never depends
//! on the unit it ran in:
//! - keys are cut into segments of [`SEGMENT`] positions from the layer's
//!   first visible position (`layout.first`), and each segment into tiles
//!   of [`ATTN_TILE`]; a token's last tile ends at its own position;
//! - a score is summed in the table's one order ([`KeyTile`]), an output
//!   element one FMA chain over a tile's keys in order (the kernels are
//!   exact against the references below, whatever the row or key tiling);
//! - each segment runs its own online softmax from scratch, and the
//!   segments' partial `(max, sum, acc)` are folded in position order by
//!   [`fold_into`], whether one unit ran them all or one unit each.
//!
//! So decode can split a head's keys into segments across threads, and
//! prefill can give the pool (KV head, token chunk) units or (KV head,
//! token chunk, segment) ones as the thread count suggests.

#[cfg(test)]
use crate::dispatch::ValueDot;
use crate::dispatch::{AttnTileKernels, KeyTile, ATTN_TILE};
use crate::ops::activation::exp_approx;
use crate::ops::attention::{
    online_softmax_update, softcapped, softmax_block_ref, AttentionParams, KvLayout, PARALLEL_WORK,
};
use half::f16;
use rayon::prelude::*;

/// Positions per key segment: the unit of a decode step's parallel work
/// (a KV head of 1,024 cached positions gives 4 of them). A multiple of
/// [`ATTN_TILE`], so segments are whole tiles but for a token's last one.
const SEGMENT: usize = 4 * ATTN_TILE;

/// Query rows (tokens times the heads of a group) one unit serves: its
/// scores, outputs and partial states stay in L2 next to the tiles.
const MAX_ROWS: usize = 64;

/// Rows up to which a tile is read straight from the cache rather than
/// widened into scratch once for all of them.
const DIRECT_ROWS: usize = 4;

/// The tiled attention of `attention_kv_with`, over checked shapes: `q`,
/// `out` `[n_tokens, n_head, head_dim]`, `k`, `v` `[n_kv_head, slots,
/// head_dim]` f16 holding the positions `layout` says.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_tiled(
    tk: &AttnTileKernels,
    p: &AttentionParams,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    layout: KvLayout,
    pos0: usize,
    n_tokens: usize,
    out: &mut [f32],
) {
    if n_tokens == 0 {
        return;
    }
    let group = p.n_head / p.n_kv_head;
    let chunk = (MAX_ROWS / group).max(1);
    let n_chunks = n_tokens.div_ceil(chunk);
    let ctx = Ctx {
        tk,
        p,
        q,
        k,
        v,
        layout,
        pos0,
        n_tokens,
        chunk,
    };
    // As in the per-head path: a short step costs less than waking the pool.
    let work = q.len().saturating_mul(pos0 + n_tokens).saturating_mul(2);
    let parallel = work >= PARALLEL_WORK;
    // Too few (KV head, chunk) units to share evenly among the pool (a
    // decode step, a short follow-up turn): one unit per key segment
    // instead. SmolLM2-360M's 5 KV heads on 2 threads went 3 and 2 as
    // whole heads. Either way gives the same bits (see the module docs).
    let split = parallel && p.n_kv_head * n_chunks < 4 * rayon::current_num_threads();
    let mut units = Vec::new();
    for g in 0..p.n_kv_head {
        for c in 0..n_chunks {
            let last = pos0 + ctx.tokens(c).end - 1;
            let n_seg = (last - layout.first) / SEGMENT + 1;
            if split {
                units.extend((0..n_seg).map(|s| (g, c, s..s + 1)));
            } else {
                units.push((g, c, 0..n_seg));
            }
        }
    }
    let run =
        |(g, c, segs): &(usize, usize, std::ops::Range<usize>)| ctx.unit(*g, *c, segs.clone());
    let partials: Vec<Partial> = if parallel {
        units.par_iter().map(run).collect()
    } else {
        units.iter().map(run).collect()
    };
    // Fold each (KV head, chunk)'s segments in position order (a unit that
    // ran them all folded them already), normalize, scatter to the heads.
    let hd = p.head_dim;
    let mut i = 0;
    while i < partials.len() {
        let (g, c, _) = units[i];
        let mut whole = partials[i].clone();
        i += 1;
        while i < partials.len() && (units[i].0, units[i].1) == (g, c) {
            let part = &partials[i];
            for r in 0..whole.m.len() {
                let (m, l) = (&mut whole.m[r], &mut whole.l[r]);
                let acc = &mut whole.acc[r * hd..(r + 1) * hd];
                fold_into(
                    m,
                    l,
                    acc,
                    part.m[r],
                    part.l[r],
                    &part.acc[r * hd..(r + 1) * hd],
                );
            }
            i += 1;
        }
        for (r, acc) in whole.acc.chunks_exact_mut(hd).enumerate() {
            let l = whole.l[r];
            if l > 0.0 {
                let inv = 1.0 / l;
                acc.iter_mut().for_each(|a| *a *= inv);
            }
            let t = ctx.tokens(c).start + r / group;
            let h = g * group + r % group;
            out[(t * p.n_head + h) * hd..][..hd].copy_from_slice(acc);
        }
    }
}

/// What every unit of one call shares.
struct Ctx<'a> {
    tk: &'a AttnTileKernels,
    p: &'a AttentionParams,
    q: &'a [f32],
    k: &'a [f16],
    v: &'a [f16],
    layout: KvLayout,
    pos0: usize,
    n_tokens: usize,
    /// Tokens per chunk.
    chunk: usize,
}

/// A unit's rows after its segments: running max, normalizer and the
/// unnormalized output (`m` is `-inf` for a row that saw no key there).
#[derive(Clone)]
struct Partial {
    m: Vec<f32>,
    l: Vec<f32>,
    // [rows, head_dim]
    acc: Vec<f32>,
}

impl Ctx<'_> {
    /// The tokens (of the call) of chunk `c`.
    fn tokens(&self, c: usize) -> std::ops::Range<usize> {
        c * self.chunk..((c + 1) * self.chunk).min(self.n_tokens)
    }

    /// The slots of positions `start..stop` (`p % slots`: one run, or two
    /// where the ring wraps) as (first slot, count, offset in the tile).
    fn runs(&self, start: usize, stop: usize) -> [(usize, usize, usize); 2] {
        let slots = self.layout.slots;
        let s0 = start % slots;
        let n = stop - start;
        if s0 + n <= slots {
            [(s0, n, 0), (0, 0, n)]
        } else {
            [(s0, slots - s0, 0), (0, s0 + n - slots, slots - s0)]
        }
    }

    /// Segments `segs` (those its tokens reach) of KV head `g` for the
    /// rows of chunk `c`, folded in order, in this thread's [`Scratch`].
    fn unit(&self, g: usize, c: usize, segs: std::ops::Range<usize>) -> Partial {
        crate::scratch::with_scratch(&SCRATCH, |scratch| self.unit_in(g, c, segs, scratch))
    }

    fn unit_in(
        &self,
        g: usize,
        c: usize,
        segs: std::ops::Range<usize>,
        scratch: &mut Scratch,
    ) -> Partial {
        let (p, tk) = (self.p, self.tk);
        let hd = p.head_dim;
        let group = p.n_head / p.n_kv_head;
        let tokens = self.tokens(c);
        let rows = tokens.len() * group;
        let end = self.pos0 + tokens.end; // one past the chunk's last position
                                          // [rows, head_dim]: token-major, the group's heads within a token
        let Scratch {
            qs,
            sc,
            lim,
            m,
            l,
            acc,
            kt,
            vt,
        } = scratch;
        qs.clear();
        for t in tokens.clone() {
            let h0 = t * p.n_head + g * group;
            qs.extend_from_slice(&self.q[h0 * hd..(h0 + group) * hd]);
        }
        let sc = at_least(sc, rows * ATTN_TILE);
        let lim = at_least(lim, rows);
        let (m, l, acc) = (
            at_least(m, rows),
            at_least(l, rows),
            at_least(acc, rows * hd),
        );
        let mut whole = Partial {
            m: vec![f32::NEG_INFINITY; rows],
            l: vec![0.0; rows],
            acc: vec![0.0; rows * hd],
        };
        let kv_row = g * self.layout.slots;
        let k_head = &self.k[kv_row * hd..(kv_row + self.layout.slots) * hd];
        let v_head = &self.v[kv_row * hd..(kv_row + self.layout.slots) * hd];
        // The first row of the chunk whose token reaches position `x`.
        let first_row =
            |x: usize| (x.saturating_sub(self.pos0).max(tokens.start) - tokens.start) * group;
        for s in segs {
            let seg_start = self.layout.first + s * SEGMENT;
            if seg_start >= end {
                break;
            }
            let seg_end = (seg_start + SEGMENT).min(end);
            let ra = first_row(seg_start);
            m[ra..].fill(f32::NEG_INFINITY);
            l[ra..].fill(0.0);
            acc[ra * hd..].fill(0.0);
            let mut start = seg_start;
            while start < seg_end {
                let stop = (start + ATTN_TILE).min(seg_end);
                let nk = stop - start;
                let rb = first_row(start);
                let runs = self.runs(start, stop);
                // A few rows (a decode step) read the tile's rows straight
                // from the cache; many share widened tiles. The same bits.
                let direct = rows - rb <= DIRECT_ROWS && runs[1].1 == 0;
                if direct {
                    let a = runs[0].0;
                    let kb = &k_head[a * hd..(a + nk) * hd];
                    (tk.scores_f16)(kb, hd, &qs[rb * hd..], &mut sc[rb * ATTN_TILE..]);
                } else {
                    // The next tile's keys and values are fetched while
                    // this one is multiplied: between two layers the
                    // weights streaming through the caches evict the KV
                    // cache, so a tile would otherwise wait on memory.
                    let next = (stop + ATTN_TILE).min(end);
                    for (a, n, _) in self.runs(stop, next) {
                        crate::arch::prefetch_l2(&k_head[a * hd..(a + n) * hd]);
                        crate::arch::prefetch_l2(&v_head[a * hd..(a + n) * hd]);
                    }
                    // the widened tiles: a decode step's never grow them
                    let kt = at_least(kt, hd * ATTN_TILE);
                    let vt = at_least(vt, ATTN_TILE * hd);
                    for (a, n, col) in runs {
                        if n > 0 {
                            (tk.load_keys)(&k_head[a * hd..(a + n) * hd], hd, col, kt);
                            (tk.load_values)(
                                &v_head[a * hd..(a + n) * hd],
                                &mut vt[col * hd..(col + n) * hd],
                            );
                        }
                    }
                    (tk.scores)(kt, hd, nk, &qs[rb * hd..], &mut sc[rb * ATTN_TILE..]);
                }
                // what is left to scale (1 after a cap), the same every row
                let mut scale = p.scale;
                for r in rb..rows {
                    // a token's last tile ends at its own position
                    let pos = self.pos0 + tokens.start + r / group;
                    lim[r] = (pos + 1).min(stop) - start;
                    scale = softcapped(p, &mut sc[r * ATTN_TILE..][..lim[r]]);
                }
                // the per-head path's online-softmax step, every row at once
                (tk.softmax)(
                    &mut sc[rb * ATTN_TILE..],
                    &lim[rb..],
                    scale,
                    &mut m[rb..],
                    &mut l[rb..],
                    &mut acc[rb * hd..],
                );
                let (p_rows, acc_rows) = (&sc[rb * ATTN_TILE..], &mut acc[rb * hd..]);
                if direct {
                    let a = runs[0].0;
                    let vb = &v_head[a * hd..(a + nk) * hd];
                    (tk.accumulate_f16)(vb, hd, p_rows, &lim[rb..], acc_rows);
                } else {
                    (tk.accumulate)(&vt[..nk * hd], hd, p_rows, &lim[rb..], acc_rows);
                }
                start = stop;
            }
            for r in ra..rows {
                let wacc = &mut whole.acc[r * hd..(r + 1) * hd];
                fold_into(
                    &mut whole.m[r],
                    &mut whole.l[r],
                    wacc,
                    m[r],
                    l[r],
                    &acc[r * hd..(r + 1) * hd],
                );
            }
        }
        whole
    }
}

/// A unit's working buffers (its query rows, scores, row limits, the
/// current segment's `(m, l, acc)` and the widened K and V tiles), kept
/// by each thread for its next unit instead of allocated and zeroed per
/// unit (~75 KB at 64 rows of 64): a unit writes every element it reads,
/// the segment's state at the segment's start, a tile's scores and limits
/// before its softmax, a tile's key and value columns before its products
/// (scores past a tile's keys are computed from stale columns but never
/// read: the softmax and the values stop at the row's limit).
#[derive(Default)]
struct Scratch {
    qs: Vec<f32>,
    sc: Vec<f32>,
    lim: Vec<usize>,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    kt: Vec<f32>,
    vt: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// The first `n` elements of `v`, grown (with default values) if short.
fn at_least<T: Default + Clone>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// Folds a segment's `(sm, sl, sacc)` into the running `(m, l, acc)` of
/// the segments before it: the first is taken as it is, later ones are
/// rescaled to the larger max. The only way partial states meet, so a
/// unit folding its segments and the caller folding units' agree.
fn fold_into(m: &mut f32, l: &mut f32, acc: &mut [f32], sm: f32, sl: f32, sacc: &[f32]) {
    if sm == f32::NEG_INFINITY {
        return;
    }
    if *m == f32::NEG_INFINITY {
        (*m, *l) = (sm, sl);
        acc.copy_from_slice(sacc);
        return;
    }
    let mx = m.max(sm);
    let (a, b) = (exp_approx(*m - mx), exp_approx(sm - mx));
    *l = *l * a + sl * b;
    for (x, &y) in acc.iter_mut().zip(sacc) {
        *x = *x * a + y * b;
    }
    *m = mx;
}

/// The reference of [`AttnTileKernels::load_keys`] for a tile laid out as
/// `layout` says: rows that do not fit the tile are left out.
pub(crate) fn load_keys_ref(layout: KeyTile, k: &[f16], hd: usize, col0: usize, kt: &mut [f32]) {
    if hd == 0 {
        return;
    }
    for (j, row) in k.chunks_exact(hd).enumerate() {
        if col0 + j >= ATTN_TILE {
            break;
        }
        for (d, x) in row.iter().enumerate() {
            if let Some(o) = kt.get_mut(layout.at(hd, col0 + j, d)) {
                *o = x.to_f32();
            }
        }
    }
}

/// The reference of [`AttnTileKernels::load_values`].
pub(crate) fn load_values_ref(v: &[f16], out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(v) {
        *o = x.to_f32();
    }
}

/// The reference of [`AttnTileKernels::scores`]: each score summed in
/// the order `layout` says.
pub(crate) fn scores_ref(
    layout: KeyTile,
    kt: &[f32],
    hd: usize,
    nk: usize,
    q: &[f32],
    out: &mut [f32],
) {
    if hd == 0 {
        return;
    }
    let nk = nk.min(ATTN_TILE);
    for (r, qr) in q.chunks_exact(hd).enumerate() {
        for j in 0..nk {
            let k = |d: usize| kt.get(layout.at(hd, j, d)).copied().unwrap_or(0.0);
            let s = match layout {
                KeyTile::Columns => qr
                    .iter()
                    .enumerate()
                    .fold(0f32, |s, (d, &x)| x.mul_add(k(d), s)),
                KeyTile::Rows => {
                    let whole = hd / 8 * 8;
                    let mut c = [0f32; 8];
                    for (d, &x) in qr[..whole].iter().enumerate() {
                        c[d % 8] = x.mul_add(k(d), c[d % 8]);
                    }
                    let h: [f32; 4] = core::array::from_fn(|i| c[i] + c[i + 4]);
                    let s = (h[0] + h[2]) + (h[1] + h[3]);
                    if whole == hd {
                        s
                    } else {
                        s + (whole..hd).map(|d| k(d) * qr[d]).sum::<f32>()
                    }
                }
            };
            if let Some(o) = out.get_mut(r * ATTN_TILE + j) {
                *o = s;
            }
        }
    }
}

/// The reference of [`AttnTileKernels::scores_f16`].
pub(crate) fn scores_f16_ref(layout: KeyTile, k: &[f16], hd: usize, q: &[f32], out: &mut [f32]) {
    let mut kt = vec![0f32; hd * ATTN_TILE];
    load_keys_ref(layout, k, hd, 0, &mut kt);
    let nk = k.len().checked_div(hd).unwrap_or(0);
    scores_ref(layout, &kt, hd, nk, q, out);
}

/// The reference of [`AttnTileKernels::softmax`]: per row, the per-head
/// path's online-softmax step (the scalar table's), so the two paths'
/// softmax is the same.
pub(crate) fn softmax_ref(
    s: &mut [f32],
    lim: &[usize],
    scale: f32,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
) {
    let rows = lim.len().min(m.len()).min(l.len()).min(s.len() / ATTN_TILE);
    let hd = acc.len().checked_div(lim.len()).unwrap_or(0);
    for r in 0..rows {
        let row = &mut s[r * ATTN_TILE..][..lim[r].min(ATTN_TILE)];
        let acc_r = &mut acc[r * hd..(r + 1) * hd];
        online_softmax_update(softmax_block_ref, row, scale, &mut m[r], &mut l[r], acc_r);
    }
}

/// The reference of [`AttnTileKernels::accumulate_f16`] for a table that
/// multiplies as `dot` says.
#[cfg(test)]
pub(crate) fn accumulate_f16_ref(
    dot: ValueDot,
    v: &[f16],
    hd: usize,
    p: &[f32],
    lim: &[usize],
    acc: &mut [f32],
) {
    let mut vt = vec![0f32; v.len()];
    load_values_ref(v, &mut vt);
    accumulate_ref_for(dot, &vt, hd, p, lim, acc);
}

/// The reference of [`AttnTileKernels::accumulate`] for a table that
/// multiplies as `dot` says.
#[cfg(test)]
pub(crate) fn accumulate_ref_for(
    dot: ValueDot,
    v: &[f32],
    hd: usize,
    p: &[f32],
    lim: &[usize],
    acc: &mut [f32],
) {
    match dot {
        ValueDot::F32 => accumulate_ref(v, hd, p, lim, acc),
        ValueDot::Bf16Pairs => accumulate_bf16_ref(v, hd, p, lim, acc),
    }
}

/// `x` rounded to bf16 as AVX-512 BF16's conversions do: to nearest even,
/// a NaN kept (and quiet), a denormal to a zero of its sign; returned as
/// the f32 it is.
pub(crate) fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((b | 0x0040_0000) & 0xFFFF_0000);
    }
    if b & 0x7F80_0000 == 0 {
        return f32::from_bits(b & 0x8000_0000);
    }
    f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
}

/// `acc + w * x` for bf16 `w` and `x` as `vdpbf16ps` adds one product:
/// the product exact, the sum rounded once to f32, a denormal sum flushed
/// to a zero of its sign.
pub(crate) fn bf16_step(acc: f32, w: f32, x: f32) -> f32 {
    // The product of two 8-bit significands is exact in f64, and so is its
    // sum with an f32 unless the two lie so far apart that the smaller is
    // below half an f32 ulp of the larger, where both roundings agree.
    let s = (acc as f64 + w as f64 * x as f64) as f32;
    if s.is_subnormal() {
        f32::from_bits(s.to_bits() & 0x8000_0000)
    } else {
        s
    }
}

/// The reference of a [`ValueDot::Bf16Pairs`] table's `accumulate`: per
/// output element, the row's keys in pairs from the first, the odd one of
/// each pair added first, a lone last key paired with zeros.
pub(crate) fn accumulate_bf16_ref(v: &[f32], hd: usize, p: &[f32], lim: &[usize], acc: &mut [f32]) {
    if let Some(nv) = v.len().checked_div(hd) {
        accumulate_bf16_cols(|i| v[i], nv, hd, p, lim, acc, 0..hd);
    }
}

/// [`accumulate_bf16_ref`] over columns `cols` of `nv` value rows of `hd`
/// (`value(i)` the element at `i`), for the kernels' columns past their
/// vectors too.
pub(crate) fn accumulate_bf16_cols(
    value: impl Fn(usize) -> f32,
    nv: usize,
    hd: usize,
    p: &[f32],
    lim: &[usize],
    acc: &mut [f32],
    cols: std::ops::Range<usize>,
) {
    for ((r, ar), &n) in acc.chunks_exact_mut(hd).enumerate().zip(lim) {
        let n = n.min(ATTN_TILE).min(nv);
        for j0 in (0..n).step_by(2) {
            let j1 = j0 + 1;
            let weight = |j: usize| match j < n {
                true => p.get(r * ATTN_TILE + j).map(|&w| bf16_round(w)),
                false => Some(0.0),
            };
            let (Some(w0), Some(w1)) = (weight(j0), weight(j1)) else {
                break;
            };
            for d in cols.clone() {
                let x0 = bf16_round(value(j0 * hd + d));
                let x1 = if j1 < n {
                    bf16_round(value(j1 * hd + d))
                } else {
                    0.0
                };
                ar[d] = bf16_step(bf16_step(ar[d], w1, x1), w0, x0);
            }
        }
    }
}

/// The reference of [`AttnTileKernels::accumulate`]: one FMA chain per
/// output element over the row's keys in order.
pub(crate) fn accumulate_ref(v: &[f32], hd: usize, p: &[f32], lim: &[usize], acc: &mut [f32]) {
    if hd == 0 {
        return;
    }
    for ((r, ar), &n) in acc.chunks_exact_mut(hd).enumerate().zip(lim) {
        for (j, vj) in v.chunks_exact(hd).take(n.min(ATTN_TILE)).enumerate() {
            let Some(&w) = p.get(r * ATTN_TILE + j) else {
                break;
            };
            for (a, &x) in ar.iter_mut().zip(vj) {
                *a = w.mul_add(x, *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{available_isas, table_for};
    use crate::ops::attention::attention_kv_with;
    use crate::ops::kv_plane::{KvPlane, KvType};
    use crate::quant::test_data::random_row;

    /// Every table, and the AVX-512 table with each tiled attention this
    /// CPU runs (f32 and bf16 value products), whichever the table took.
    pub(crate) fn tables_and_tile_variants() -> Vec<(String, crate::dispatch::KernelTable)> {
        let mut all: Vec<_> = available_isas()
            .into_iter()
            .map(|isa| (isa.to_string(), *table_for(isa).unwrap()))
            .collect();
        #[cfg(target_arch = "x86_64")]
        if let Ok(t) = table_for(crate::dispatch::Isa::Avx512) {
            for tk in crate::arch::x86_64::attn_tile_avx512_variants() {
                let label = format!("avx512 ({:?} values)", tk.value_dot);
                all.push((
                    label,
                    crate::dispatch::KernelTable {
                        attn_tile: Some(tk),
                        ..*t
                    },
                ));
            }
        }
        all
    }

    /// A token's attention output has the same bits whether it was decoded
    /// alone or prefilled in a batch of any size or chunking, on one
    /// thread or two, on every table: the tiled path (f16, no window; with
    /// a head size that leaves kernel tails, softcap, a context shift), and
    /// the per-head path it leaves to windows and quantized caches.
    #[test]
    fn a_token_gets_the_same_bits_however_it_is_batched() {
        let pools: Vec<rayon::ThreadPool> = [1, 2]
            .iter()
            .map(|&n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap()
            })
            .collect();
        let base = AttentionParams {
            n_head: 9,
            n_kv_head: 3,
            head_dim: 64,
            scale: 0.125,
            softcap: None,
            window: None,
        };
        // (params, K and V type, first held position): positions 560..600
        // cross the segment boundary at 512 and several key tiles
        let cases = [
            (base, KvType::F16, 0),
            (
                AttentionParams {
                    n_head: 4,
                    n_kv_head: 1,
                    head_dim: 40,
                    scale: 0.3,
                    softcap: Some(3.0),
                    window: None,
                },
                KvType::F16,
                0,
            ),
            (base, KvType::F16, 70),
            (
                AttentionParams {
                    n_head: 6,
                    n_kv_head: 2,
                    head_dim: 32,
                    window: Some(300),
                    ..base
                },
                KvType::F16,
                0,
            ),
            (base, KvType::Q8_0, 0),
            (base, KvType::Q4_0, 0),
        ];
        let (cap, pos0, n) = (640, 560, 40);
        for (ci, (p, kvt, first)) in cases.into_iter().enumerate() {
            let hd = p.head_dim;
            let plane = |seed| {
                let mut pl = KvPlane::zeros(kvt, p.n_kv_head * cap, hd).unwrap();
                pl.write_rows(0, &random_row(p.n_kv_head * cap * hd, seed))
                    .unwrap();
                pl
            };
            let (kp, vp) = (plane(1 + ci as u64), plane(50 + ci as u64));
            let q = random_row(n * p.n_head * hd, 99 + ci as u64);
            let row = p.n_head * hd;
            let layout = KvLayout { slots: cap, first };
            for (isa, t) in tables_and_tile_variants() {
                let t = &t;
                // positions pos0 + a.. in calls of `sizes` tokens
                let run = |pool: &rayon::ThreadPool, sizes: &[usize]| {
                    let mut out = vec![f32::NAN; q.len()];
                    let mut a = 0;
                    for &m in sizes.iter().cycle() {
                        let m = m.min(n - a);
                        pool.install(|| {
                            attention_kv_with(
                                t,
                                &p,
                                &q[a * row..(a + m) * row],
                                kp.rows_view(),
                                vp.rows_view(),
                                layout,
                                pos0 + a,
                                m,
                                &mut out[a * row..(a + m) * row],
                            )
                        })
                        .unwrap();
                        a += m;
                        if a == n {
                            break;
                        }
                    }
                    out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                let want = run(&pools[0], &[1]);
                for (pool, sizes) in [
                    (&pools[1], &[1][..]),
                    (&pools[0], &[n][..]),
                    (&pools[1], &[n][..]),
                    (&pools[1], &[19][..]),
                    (&pools[1], &[7, 3, 1, 12][..]),
                    (&pools[0], &[25][..]),
                ] {
                    let got = run(pool, sizes);
                    let threads = pool.current_num_threads();
                    assert!(
                        got == want,
                        "case {ci} {isa} {kvt}: calls of {sizes:?} on {threads} threads differ from decoding"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod ring_tests {
    use super::*;
    use crate::dispatch::{available_isas, table_for};
    use crate::ops::attention::attention_kv_with;
    use crate::ops::kv_plane::{KvPlane, KvType};
    use crate::quant::test_data::random_row;

    /// Without a window, a ring of slots holding positions `first..` at `p
    /// % slots` (a context shift) gives the bits the linear cache gives on
    /// the tiled path (and its values on the per-head one):
    /// tiles and segments are placed by position, and a tile the ring
    /// wraps is widened from its two runs of slots.
    #[test]
    fn a_wrapped_ring_gives_the_linear_cache_bits() {
        let p = AttentionParams {
            n_head: 6,
            n_kv_head: 2,
            head_dim: 32,
            scale: 0.2,
            softcap: None,
            window: None,
        };
        let hd = p.head_dim;
        let whole = 700;
        let kx = random_row(p.n_kv_head * whole * hd, 21);
        let vx = random_row(p.n_kv_head * whole * hd, 22);
        // (pos0, n, first, slots): the batch's tiles wrap, or a segment does
        for (pos0, n, first, slots) in
            [(600, 30, 330, 300), (650, 1, 370, 290), (520, 40, 161, 400)]
        {
            let q = random_row(n * p.n_head * hd, pos0 as u64);
            let plane = |x: &[f32], rows: usize, slot: &dyn Fn(usize) -> usize| {
                let mut pl = KvPlane::zeros(KvType::F16, p.n_kv_head * rows, hd).unwrap();
                for g in 0..p.n_kv_head {
                    for j in first..pos0 + n {
                        pl.write_rows(g * rows + slot(j), &x[(g * whole + j) * hd..][..hd])
                            .unwrap();
                    }
                }
                pl
            };
            let (kl, vl) = (plane(&kx, whole, &|j| j), plane(&vx, whole, &|j| j));
            let (kr, vr) = (
                plane(&kx, slots, &|j| j % slots),
                plane(&vx, slots, &|j| j % slots),
            );
            for isa in available_isas() {
                let t = table_for(isa).unwrap();
                let run = |k: &KvPlane, v: &KvPlane, layout: KvLayout| {
                    let mut out = vec![f32::NAN; q.len()];
                    attention_kv_with(
                        t,
                        &p,
                        &q,
                        k.rows_view(),
                        v.rows_view(),
                        layout,
                        pos0,
                        n,
                        &mut out,
                    )
                    .unwrap();
                    out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                let lin = run(
                    &kl,
                    &vl,
                    KvLayout {
                        slots: whole,
                        first,
                    },
                );
                let ring = run(&kr, &vr, KvLayout { slots, first });
                if t.attn_tile.is_none() {
                    // the per-head path starts its key blocks at each run
                    // of slots: the same up to rounding only
                    for (a, b) in lin.iter().zip(&ring) {
                        let (a, b) = (f32::from_bits(*a), f32::from_bits(*b));
                        assert!((a - b).abs() < 1e-5, "{isa} pos0 {pos0}: {a} vs {b}");
                    }
                    continue;
                }
                assert!(
                    lin == ring,
                    "{isa} pos0 {pos0} n {n} first {first} slots {slots}"
                );
            }
        }
    }
}
