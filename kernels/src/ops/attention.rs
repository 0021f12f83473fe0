//! Causal multi-head attention over a KV cache (f16, or Q8_0 / Q4_0
//! blocks: see [`KvRows`]) with grouped-query heads, an optional sliding
//! window and optional logit soft-capping. Keys are visited in blocks with
//! an online (streaming) softmax, so the score matrix is never
//! materialized. Layers without a window over an f16 cache take the tiled
//! path of `ops::attention_tiled` (on tables with its kernels): (KV head,
//! token chunk, key segment) units whose tiles are widened once for all
//! their rows. The rest runs (token, head) pairs in parallel here.
//!
//! The cache may be a ring ([`KvLayout`]): position `p` lives in slot
//! `p % slots`, so a sliding-window layer keeps only its window (plus one
//! batch) however long the sequence; keys are still visited in position
//! order, the wrapped range as two runs of slots.
//!
//! A quantized cache is read as it is stored: each query head is quantized
//! to Q8_0 once per (token, head) and scored against the key blocks by the
//! table's integer gemm (the weight kernels' q8_0·q8_0 / q4_0·q8_0 dots,
//! as llama.cpp's flash attention does), and each value block is decoded
//! into the output accumulators.
//!
//! A plane stored under a [`Hadamard`] rotation (see [`KvRows`]) is read
//! in its rotated basis: rotated keys are scored against the query rotated
//! the same way (an orthonormal map keeps the dot product), and the output
//! mixed from rotated values is rotated back (the map is its own inverse).

use crate::dispatch::{self, gemm_by_dots, KernelTable, SoftmaxBlockFn};
use crate::ops::activation::exp_approx;
use crate::ops::attention_tiled;
use crate::ops::hadamard::Hadamard;
use crate::ops::kv_plane::{KvRows, KvType, Rows};
use crate::quant::blocks::{BlockQ4_0, BlockQ8_0, QK};
use crate::{Error, Result};
use half::f16;
use rayon::prelude::*;

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention: divides `n_head`).
    pub n_kv_head: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Multiplies `q·k` (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// `s = cap * tanh(s / cap)` after scaling (Gemma 2).
    pub softcap: Option<f32>,
    /// A query at position p sees only keys at positions > p - window.
    pub window: Option<usize>,
}

/// Where one layer's positions live in a cache of `[n_kv_head, slots]`
/// rows: position `p` in slot `p % slots` (a ring once positions outgrow
/// the slots), and positions below `first` no longer held (a ring
/// overwrote them, or a context shift moved what was in their slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Rows per KV head.
    pub slots: usize,
    /// The oldest position still held.
    pub first: usize,
}

impl KvLayout {
    /// Every position in its own slot, from 0: the plain cache.
    pub fn linear(slots: usize) -> Self {
        Self { slots, first: 0 }
    }
}

/// Keys per online-softmax step: scores of a block live on the stack.
const KEY_BLOCK: usize = 64;

/// [`attention_with`] on the process-wide dispatch table.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    p: &AttentionParams,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    kv_capacity: usize,
    pos0: usize,
    n_tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    attention_with(
        dispatch::try_table()?,
        p,
        q,
        k,
        v,
        kv_capacity,
        pos0,
        n_tokens,
        out,
    )
}

/// `q`, `out`: `[n_tokens, n_head * head_dim]` for positions
/// `pos0..pos0 + n_tokens`; `k`, `v`: `[n_kv_head, kv_capacity, head_dim]`
/// holding positions `0..pos0 + n_tokens`.
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    table: &KernelTable,
    p: &AttentionParams,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    kv_capacity: usize,
    pos0: usize,
    n_tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    attention_kv_with(
        table,
        p,
        q,
        KvRows::f16(k),
        KvRows::f16(v),
        KvLayout::linear(kv_capacity),
        pos0,
        n_tokens,
        out,
    )
}

/// [`attention_with`] over keys and values of any [`KvType`] (each of its
/// own): `k`, `v` hold `[n_kv_head, layout.slots]` rows of `head_dim`
/// elements, positions placed as `layout` says (the keys and values of
/// `pos0..pos0 + n_tokens` written already). A block type needs `head_dim`
/// a multiple of 32. A query sees the keys of its window that the layout
/// still holds; it is an error when one it should see was overwritten by
/// this call's own writes (a ring shorter than the window plus the batch).
#[allow(clippy::too_many_arguments)]
pub fn attention_kv_with(
    table: &KernelTable,
    p: &AttentionParams,
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    layout: KvLayout,
    pos0: usize,
    n_tokens: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "attention";
    let invalid = |reason: String| Error::InvalidArgument { op: OP, reason };
    if p.head_dim == 0 || p.n_kv_head == 0 || !p.n_head.is_multiple_of(p.n_kv_head) {
        return Err(invalid(format!(
            "{} heads over {} kv heads of dim {}",
            p.n_head, p.n_kv_head, p.head_dim
        )));
    }
    if p.window == Some(0) {
        return Err(invalid("window of 0 keys".into()));
    }
    let end = pos0
        .checked_add(n_tokens)
        .ok_or(Error::SizeOverflow { op: OP })?;
    let kv_capacity = layout.slots;
    // The first query's oldest visible key must not have been overwritten
    // by the last one's (later queries see no older keys).
    let oldest_needed = p
        .window
        .map_or(0, |w| (pos0 + 1).saturating_sub(w))
        .max(layout.first);
    if oldest_needed < end.saturating_sub(kv_capacity) || layout.first > pos0 {
        return Err(invalid(format!(
            "positions {pos0}..{end} with keys from {oldest_needed} do not fit {kv_capacity} KV slots holding positions from {}",
            layout.first
        )));
    }
    let q_len = n_tokens
        .checked_mul(p.n_head)
        .and_then(|x| x.checked_mul(p.head_dim))
        .ok_or(Error::SizeOverflow { op: OP })?;
    let kv_len = p
        .n_kv_head
        .checked_mul(kv_capacity)
        .and_then(|x| x.checked_mul(p.head_dim))
        .ok_or(Error::SizeOverflow { op: OP })?;
    for (got, expected) in [(q.len(), q_len), (out.len(), q_len)] {
        if got != expected {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected,
                got,
            });
        }
    }
    for rows in [k, v] {
        if let Some(r) = rows.rotation {
            if !p.head_dim.is_multiple_of(r.n()) {
                return Err(invalid(format!(
                    "Hadamard blocks of {} do not divide the head size {}",
                    r.n(),
                    p.head_dim
                )));
            }
        }
        let t = rows.kv_type();
        if t != KvType::F16 && !p.head_dim.is_multiple_of(QK) {
            return Err(Error::RaggedRow {
                op: OP,
                dtype: t.dtype(),
                cols: p.head_dim,
                block: QK,
            });
        }
        let got = rows.rows(p.head_dim) * p.head_dim;
        if got < kv_len {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected: kv_len,
                got,
            });
        }
    }
    if q_len == 0 {
        return Ok(());
    }
    // Layers without a window over a plain f16 cache: the tiled path
    // (a token's visible keys then start at `layout.first` whatever its
    // position, which its fixed segments need).
    if let (Some(tk), Rows::F16(kf), Rows::F16(vf), None, None, None) = (
        table.attn_tile,
        k.rows,
        v.rows,
        p.window,
        k.rotation,
        v.rotation,
    ) {
        attention_tiled::attention_tiled(&tk, p, q, kf, vf, layout, pos0, n_tokens, out);
        return Ok(());
    }
    let hd = p.head_dim;
    let group = p.n_head / p.n_kv_head;
    // A unit of parallel work: one token's query heads that share a KV head
    // (each key and value row is then read once for all of them), or, when
    // that leaves too few units for the pool (decode), a single head.
    let heads = if n_tokens * p.n_kv_head >= MIN_GROUP_UNITS {
        group
    } else {
        1
    };
    let one = |(unit, acc): (usize, &mut [f32])| {
        let first_head = unit * heads;
        let (t, h) = (first_head / p.n_head, first_head % p.n_head);
        let pos = pos0 + t;
        let first = p
            .window
            .map_or(0, |w| (pos + 1).saturating_sub(w))
            .max(layout.first);
        // positions first..=pos as runs of slots, in position order
        let (s0, len) = (first % kv_capacity, pos + 1 - first);
        let runs = if s0 + len <= kv_capacity {
            [s0..s0 + len, 0..0]
        } else {
            [s0..kv_capacity, 0..s0 + len - kv_capacity]
        };
        let kv_row = (h / group) * kv_capacity;
        let k_head = k.slice(kv_row, kv_row + kv_capacity, hd);
        let v_head = v.slice(kv_row, kv_row + kv_capacity, hd);
        let q_unit = &q[first_head * hd..(first_head + heads) * hd];
        for (qs, accs) in q_unit
            .chunks(MAX_SHARED * hd)
            .zip(acc.chunks_mut(MAX_SHARED * hd))
        {
            heads_over_keys(
                table,
                p,
                qs,
                (k_head, k.rotation),
                (v_head, v.rotation),
                runs.clone(),
                accs,
            );
        }
    };
    // Short decode steps cost less than waking the pool: the multiply-adds
    // of q·k and p·v over every visible key, against about 2^18 (tens of µs).
    let work = q_len.saturating_mul(pos0 + n_tokens).saturating_mul(2);
    if work < PARALLEL_WORK {
        out.chunks_mut(heads * hd).enumerate().for_each(one);
    } else {
        out.par_chunks_mut(heads * hd).enumerate().for_each(one);
    }
    Ok(())
}

/// Multiply-adds below which attention runs on the calling thread.
pub(crate) const PARALLEL_WORK: usize = 1 << 18;

/// (token, KV head) units from which the heads of a group run together.
const MIN_GROUP_UNITS: usize = 8;

/// Query heads that one pass over the keys serves (their scores and
/// outputs live on the stack and in registers).
const MAX_SHARED: usize = 4;

/// `f` folded over `x` in 16 independent lanes, then across them: a
/// reassociated fold, which the compiler vectorizes (it must keep a plain
/// fold's order, one element at a time).
#[inline(always)]
fn lanewise(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = f(*l, v);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    lanes.into_iter().fold(tail, f)
}

/// One online-softmax step over a block of scores, the body every tier
/// compiles with its own features: `x *= scale`, the new running max
/// `m = max(prev_max, max x)`, then `x = e^(x - m)`; returns `(m, sum x)`.
/// Scores are finite, so the comparison max needs no NaN handling.
#[inline(always)]
pub(crate) fn softmax_block_body(x: &mut [f32], scale: f32, prev_max: f32) -> (f32, f32) {
    x.iter_mut().for_each(|v| *v *= scale);
    let m = lanewise(x, prev_max, |a, b| if b > a { b } else { a });
    x.iter_mut().for_each(|v| *v = exp_approx(*v - m));
    (m, lanewise(x, 0.0, |a, b| a + b))
}

/// The scalar table's softmax step.
pub(crate) fn softmax_block_ref(x: &mut [f32], scale: f32, prev_max: f32) -> (f32, f32) {
    softmax_block_body(x, scale, prev_max)
}

/// Online softmax over the slots of `keys` (runs, in order) for the `q.len() / head_dim` (at most
/// [`MAX_SHARED`]) query heads in `q`, which share `k` and `v` (each with
/// the rotation it is stored under): per head a running max `m`,
/// normalizer `l` and unnormalized output in `acc`, rescaled when a block
/// raises the max.
fn heads_over_keys(
    table: &KernelTable,
    p: &AttentionParams,
    q: &[f32],
    (k, k_rotation): (Rows<'_>, Option<Hadamard>),
    (v, v_rotation): (Rows<'_>, Option<Hadamard>),
    keys: [std::ops::Range<usize>; 2],
    acc: &mut [f32],
) {
    let hd = p.head_dim;
    let bpr = hd / QK;
    acc.fill(0.0);
    // Rotated keys meet the query rotated alike.
    let rotated_q;
    let q = match k_rotation {
        None => q,
        Some(r) => {
            let mut x = q.to_vec();
            r.apply_whole(&mut x);
            rotated_q = x;
            &rotated_q[..]
        }
    };
    // A block-type key cache is scored against the queries in Q8_0,
    // quantized here once for every key.
    let q8: Vec<BlockQ8_0> = match k {
        Rows::F16(_) => Vec::new(),
        Rows::Q8_0(_) | Rows::Q4_0(_) => {
            let mut blocks = vec![bytemuck::Zeroable::zeroed(); q.len() / QK];
            (table.act_q8_0.quantize)(q, &mut blocks);
            blocks
        }
    };
    let mut m = [f32::NEG_INFINITY; MAX_SHARED];
    let mut l = [0f32; MAX_SHARED];
    let mut scores = [0f32; MAX_SHARED * KEY_BLOCK];
    for keys in keys {
        let mut start = keys.start;
        while start < keys.end {
            let stop = (start + KEY_BLOCK).min(keys.end);
            let nk = stop - start;
            let s = &mut scores[..q.len() / hd * nk];
            match k {
                Rows::F16(k) => {
                    let kb = &k[start * hd..stop * hd];
                    match table.attn_block {
                        Some(b) => (b.scores)(kb, hd, q, s),
                        None => {
                            for (row, qg) in s.chunks_mut(nk).zip(q.chunks(hd)) {
                                for (x, kj) in row.iter_mut().zip(kb.chunks(hd)) {
                                    *x = (table.f16.dot)(kj, qg);
                                }
                            }
                        }
                    }
                }
                // out[g * nk + j] = k_j · q_g is the gemm's layout
                Rows::Q8_0(k) => {
                    let kb = &k[start * bpr..stop * bpr];
                    match table.q8_0.gemm {
                        Some(gemm) => gemm(kb, &q8, bpr, s),
                        None => gemm_by_dots(table.q8_0.dot, kb, &q8, bpr, s),
                    }
                }
                Rows::Q4_0(k) => {
                    let kb = &k[start * bpr..stop * bpr];
                    match table.q4_0.gemm {
                        Some(gemm) => gemm(kb, &q8, bpr, s),
                        None => gemm_by_dots(table.q4_0.dot, kb, &q8, bpr, s),
                    }
                }
            }
            for (g, row) in s.chunks_mut(nk).enumerate() {
                let acc_g = &mut acc[g * hd..(g + 1) * hd];
                online_softmax_step(table, p, row, &mut m[g], &mut l[g], acc_g);
            }
            match v {
                Rows::F16(v) => {
                    let vb = &v[start * hd..stop * hd];
                    match table.attn_block {
                        Some(b) => (b.accumulate)(vb, hd, s, acc),
                        None => {
                            for (row, ag) in s.chunks(nk).zip(acc.chunks_mut(hd)) {
                                for (&e, vj) in row.iter().zip(vb.chunks(hd)) {
                                    (table.axpy_f16)(e, vj, ag);
                                }
                            }
                        }
                    }
                }
                Rows::Q8_0(v) => {
                    (table.attn_quant.accumulate_q8_0)(&v[start * bpr..stop * bpr], hd, s, acc)
                }
                Rows::Q4_0(v) => {
                    (table.attn_quant.accumulate_q4_0)(&v[start * bpr..stop * bpr], hd, s, acc)
                }
            }
            start = stop;
        }
    }
    for (ag, &lg) in acc.chunks_mut(hd).zip(&l) {
        if lg > 0.0 {
            let inv = 1.0 / lg;
            ag.iter_mut().for_each(|a| *a *= inv);
        }
    }
    // A mix of rotated values, rotated back.
    if let Some(r) = v_rotation {
        r.apply_whole(acc);
    }
}

/// One online-softmax step of a query row over a block of its `scores`
/// (softcapped first when the model caps them): the running max `m` and
/// normalizer `l` updated, the row's unnormalized output `acc` rescaled
/// when the block raised the max, and the scores turned into weights.
/// Both attention paths take this step (the tiled one through its tile
/// kernel, exact against [`online_softmax_update`]), so their softmax is
/// the same.
#[inline(always)]
pub(crate) fn online_softmax_step(
    table: &KernelTable,
    p: &AttentionParams,
    scores: &mut [f32],
    m: &mut f32,
    l: &mut f32,
    acc: &mut [f32],
) {
    let scale = softcapped(p, scores);
    online_softmax_update(table.softmax_block, scores, scale, m, l, acc);
}

/// Soft-caps `scores` in place when the model caps them; returns the
/// scale the softmax step has left to apply (1 after a cap, which scaled).
#[inline(always)]
pub(crate) fn softcapped(p: &AttentionParams, scores: &mut [f32]) -> f32 {
    match p.softcap {
        None => p.scale,
        Some(cap) => {
            scores
                .iter_mut()
                .for_each(|x| *x = cap * (*x * p.scale / cap).tanh());
            1.0
        }
    }
}

/// The online-softmax step after the cap: `softmax_block` turns the
/// scores into weights against the raised max, then `(m, l, acc)` are
/// brought to that max.
#[inline(always)]
pub(crate) fn online_softmax_update(
    softmax_block: SoftmaxBlockFn,
    scores: &mut [f32],
    scale: f32,
    m: &mut f32,
    l: &mut f32,
    acc: &mut [f32],
) {
    let (new_m, sum) = softmax_block(scores, scale, *m);
    if new_m > *m && *l > 0.0 {
        let corr = exp_approx(*m - new_m);
        *l *= corr;
        acc.iter_mut().for_each(|a| *a *= corr);
    }
    *m = new_m;
    *l += sum;
}

/// `acc_g += sum_j p[g * nk + j] * v_j` over `nk` value rows of Q8_0
/// blocks: each block is decoded once (into 32 floats) for all the heads.
/// The scalar table's kernel, and the body the SIMD tiers compile with
/// their features (the same operations in the same order: bit-identical).
#[inline(always)]
pub(crate) fn accumulate_q8_0(v: &[BlockQ8_0], hd: usize, p: &[f32], acc: &mut [f32]) {
    accumulate_blocks(v, hd, p, acc, |b, out| {
        let d = b.d.to_f32();
        for (o, &c) in out.iter_mut().zip(&b.qs) {
            *o = c as f32 * d;
        }
    })
}

/// [`accumulate_q8_0`] over Q4_0 blocks.
#[inline(always)]
pub(crate) fn accumulate_q4_0(v: &[BlockQ4_0], hd: usize, p: &[f32], acc: &mut [f32]) {
    accumulate_blocks(v, hd, p, acc, |b, out| {
        let d = b.d.to_f32();
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((l, h), &c) in lo.iter_mut().zip(hi.iter_mut()).zip(&b.qs) {
            *l = ((c & 0x0F) as i32 - 8) as f32 * d;
            *h = ((c >> 4) as i32 - 8) as f32 * d;
        }
    })
}

#[inline(always)]
fn accumulate_blocks<B>(
    v: &[B],
    hd: usize,
    p: &[f32],
    acc: &mut [f32],
    decode: impl Fn(&B, &mut [f32; QK]),
) {
    let bpr = hd / QK;
    if bpr == 0 {
        return;
    }
    let nk = v.len() / bpr;
    let mut x = [0f32; QK];
    for (j, row) in v.chunks_exact(bpr).enumerate() {
        for (ib, b) in row.iter().enumerate() {
            decode(b, &mut x);
            for (g, ag) in acc.chunks_exact_mut(hd).enumerate() {
                let e = p[g * nk + j];
                for (a, &xv) in ag[ib * QK..(ib + 1) * QK].iter_mut().zip(&x) {
                    *a += e * xv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{available_isas, table_for};
    use crate::quant::test_data::random_row;

    /// Materializes every score row, masks, softmaxes, then mixes values.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        p: &AttentionParams,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        cap: usize,
        pos0: usize,
        n: usize,
    ) -> Vec<f32> {
        let hd = p.head_dim;
        let mut out = vec![0f32; n * p.n_head * hd];
        for t in 0..n {
            let pos = pos0 + t;
            for h in 0..p.n_head {
                let g = h / (p.n_head / p.n_kv_head);
                let qh = &q[(t * p.n_head + h) * hd..][..hd];
                let mut s: Vec<f64> = (0..=pos)
                    .map(|j| {
                        let kr = &k[(g * cap + j) * hd..][..hd];
                        let mut x = qh
                            .iter()
                            .zip(kr)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * p.scale as f64;
                        if let Some(c) = p.softcap {
                            x = c as f64 * (x / c as f64).tanh();
                        }
                        let visible = p.window.is_none_or(|w| j + w > pos);
                        if visible {
                            x
                        } else {
                            f64::NEG_INFINITY
                        }
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for x in s.iter_mut() {
                    *x = (*x - mx).exp();
                    sum += *x;
                }
                for (j, w) in s.iter().enumerate() {
                    let vr = &v[(g * cap + j) * hd..][..hd];
                    for d in 0..hd {
                        out[(t * p.n_head + h) * hd + d] += (w / sum * vr[d] as f64) as f32;
                    }
                }
            }
        }
        out
    }

    /// Whether `t` runs these attention params over these caches (f16 and
    /// unrotated, each) with bf16 value products: its tiled path, where
    /// its tiles multiply so.
    fn bf16_values(t: &KernelTable, p: &AttentionParams, plain_k: bool, plain_v: bool) -> bool {
        let tiled = plain_k && plain_v && p.window.is_none();
        tiled
            && matches!(t.attn_tile, Some(tk) if tk.value_dot == crate::dispatch::ValueDot::Bf16Pairs)
    }
    #[test]
    fn matches_materialized_attention() {
        let cap = 200;
        let cases = [
            (
                AttentionParams {
                    n_head: 9,
                    n_kv_head: 3,
                    head_dim: 64,
                    scale: 0.125,
                    softcap: None,
                    window: None,
                },
                0,
                7,
            ),
            (
                AttentionParams {
                    n_head: 4,
                    n_kv_head: 2,
                    head_dim: 32,
                    scale: 0.3,
                    softcap: None,
                    window: None,
                },
                150,
                1,
            ),
            (
                AttentionParams {
                    n_head: 4,
                    n_kv_head: 1,
                    head_dim: 16,
                    scale: 0.5,
                    softcap: Some(2.0),
                    window: Some(20),
                },
                130,
                9,
            ),
            (
                AttentionParams {
                    n_head: 2,
                    n_kv_head: 2,
                    head_dim: 8,
                    scale: 1.0,
                    softcap: None,
                    window: Some(1),
                },
                3,
                2,
            ),
            // a group of 7 heads (one pass of 4, one of 3) over a head size
            // that is not a multiple of 64, across several key blocks
            (
                AttentionParams {
                    n_head: 14,
                    n_kv_head: 2,
                    head_dim: 40,
                    scale: 0.15,
                    softcap: None,
                    window: Some(100),
                },
                120,
                6,
            ),
            // enough work for the parallel path (the others run on the caller)
            (
                AttentionParams {
                    n_head: 9,
                    n_kv_head: 3,
                    head_dim: 64,
                    scale: 0.125,
                    softcap: None,
                    window: None,
                },
                150,
                40,
            ),
        ];
        for (ci, (p, pos0, n)) in cases.into_iter().enumerate() {
            let kv = p.n_kv_head * cap * p.head_dim;
            let k: Vec<f16> = random_row(kv, 1 + ci as u64)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let v: Vec<f16> = random_row(kv, 50 + ci as u64)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let q = random_row(n * p.n_head * p.head_dim, 99 + ci as u64);
            let widen = |x: &[f16]| x.iter().map(|h| h.to_f32()).collect::<Vec<_>>();
            let want = naive(&p, &q, &widen(&k), &widen(&v), cap, pos0, n);
            for isa in available_isas() {
                let mut out = vec![f32::NAN; q.len()];
                attention_with(
                    table_for(isa).unwrap(),
                    &p,
                    &q,
                    &k,
                    &v,
                    cap,
                    pos0,
                    n,
                    &mut out,
                )
                .unwrap();
                // bf16 products: weight and value each within 2^-9 of
                // theirs, so an output within 2^-8 of the largest value
                let bf16 = bf16_values(table_for(isa).unwrap(), &p, true, true);
                let v_max = v.iter().fold(0f32, |m, x| m.max(x.to_f32().abs()));
                let tol = if bf16 { 2e-4 + v_max / 256.0 } else { 2e-4 };
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < tol, "case {ci} {isa} [{i}]: {a} vs {b}");
                }
            }
        }
    }

    /// Every (K type, V type) pair, each plane stored as it is or under a
    /// Hadamard rotation, against f64 attention over the dequantized cache
    /// as the plane reads it back (rotated back), and, for a block-type K,
    /// the query rounded through Q8_0 in the keys' basis as the kernel
    /// scores it: the same up to f32 rounding and the softmax's exp
    /// approximation. The query's rounding alone stays within 2%, and the
    /// format's own error is far above the budget, so the check tells a
    /// wrong decoding (or a rotation missing on one side) apart.
    #[test]
    fn quantized_cache_matches_attention_on_its_dequantized_values() {
        use crate::ops::kv_plane::KvPlane;
        let cap = 150;
        let cases = [
            // GQA, several key blocks, grouped heads (prefill)
            (
                AttentionParams {
                    n_head: 9,
                    n_kv_head: 3,
                    head_dim: 64,
                    scale: 0.125,
                    softcap: None,
                    window: None,
                },
                100,
                12,
            ),
            // decode: one head per unit
            (
                AttentionParams {
                    n_head: 4,
                    n_kv_head: 2,
                    head_dim: 32,
                    scale: 0.3,
                    softcap: None,
                    window: None,
                },
                140,
                1,
            ),
            // softcap and window, 7 heads of a group, head_dim 96
            (
                AttentionParams {
                    n_head: 7,
                    n_kv_head: 1,
                    head_dim: 96,
                    scale: 0.1,
                    softcap: Some(5.0),
                    window: Some(70),
                },
                110,
                5,
            ),
        ];
        for (ci, (p, pos0, n)) in cases.into_iter().enumerate() {
            let rows = p.n_kv_head * cap;
            let kx = random_row(rows * p.head_dim, 7 + ci as u64);
            let vx = random_row(rows * p.head_dim, 70 + ci as u64);
            let q = random_row(n * p.n_head * p.head_dim, 700 + ci as u64);
            // the largest power of two dividing the head size
            let r = Some(Hadamard::new(1 << p.head_dim.trailing_zeros()).unwrap());
            for (kt, vt, (kr, vr)) in KvType::ALL.into_iter().flat_map(|kt| {
                KvType::ALL.into_iter().flat_map(move |vt| {
                    [(None, None), (r, r), (r, None), (None, r)]
                        .into_iter()
                        .map(move |rot| (kt, vt, rot))
                })
            }) {
                let mut kp = KvPlane::zeros(kt, rows, p.head_dim)
                    .unwrap()
                    .with_rotation(kr)
                    .unwrap();
                let mut vp = KvPlane::zeros(vt, rows, p.head_dim)
                    .unwrap()
                    .with_rotation(vr)
                    .unwrap();
                kp.write_rows(0, &kx).unwrap();
                vp.write_rows(0, &vx).unwrap();
                let (mut kd, mut vd) = (vec![0f32; kx.len()], vec![0f32; vx.len()]);
                kp.read_rows(0, &mut kd).unwrap();
                vp.read_rows(0, &mut vd).unwrap();
                // a block-type key cache meets the query in Q8_0, in
                // the keys' basis
                let qd = if kt == KvType::F16 {
                    q.clone()
                } else {
                    let mut qp = KvPlane::zeros(KvType::Q8_0, q.len() / p.head_dim, p.head_dim)
                        .unwrap()
                        .with_rotation(kr)
                        .unwrap();
                    qp.write_rows(0, &q).unwrap();
                    let mut qd = vec![0f32; q.len()];
                    qp.read_rows(0, &mut qd).unwrap();
                    qd
                };
                let want = naive(&p, &qd, &kd, &vd, cap, pos0, n);
                let float_query = naive(&p, &q, &kd, &vd, cap, pos0, n);
                let unquantized = naive(&p, &q, &kx, &vx, cap, pos0, n);
                for isa in available_isas() {
                    let plain = |t: KvType, r: Option<Hadamard>| t == KvType::F16 && r.is_none();
                    let t = table_for(isa).unwrap();
                    // bf16 products (see above): 2^-8 of the outputs' size
                    let bf16 = bf16_values(t, &p, plain(kt, kr), plain(vt, vr));
                    let budget = if bf16 { 1.0 / 256.0 } else { 1e-4 };
                    let mut out = vec![f32::NAN; q.len()];
                    attention_kv_with(
                        t,
                        &p,
                        &q,
                        kp.rows_view(),
                        vp.rows_view(),
                        KvLayout::linear(cap),
                        pos0,
                        n,
                        &mut out,
                    )
                    .unwrap();
                    let err = rel_l2(&out, &want);
                    assert!(
                        err < budget,
                        "case {ci} {isa} K {kt} {kr:?} V {vt} {vr:?}: rel L2 {err} > {budget}"
                    );
                    // the query's rounding costs little
                    let q_err = rel_l2(&out, &float_query);
                    assert!(q_err < 2e-2, "case {ci} {isa} K {kt}: {q_err}");
                    if (kt, vt) == (KvType::Q4_0, KvType::Q4_0) {
                        // the format's own error is much larger than
                        // the kernel's: the test can tell them apart
                        assert!(rel_l2(&out, &unquantized) > 10.0 * budget);
                    }
                }
            }
        }
    }

    /// Every table's quantized value accumulation against the scalar one,
    /// bit for bit (they compile one body), over 1 to 4 heads.
    #[test]
    fn quantized_value_kernels_match_the_scalar_table() {
        use crate::dispatch::SCALAR;
        use crate::ops::kv_plane::KvPlane;
        let (hd, nk) = (96, 13);
        let x = random_row(nk * hd, 5);
        for t in [KvType::Q8_0, KvType::Q4_0] {
            let mut plane = KvPlane::zeros(t, nk, hd).unwrap();
            plane.write_rows(0, &x).unwrap();
            for heads in 1..=4 {
                let p = random_row(heads * nk, 6 + heads as u64);
                let acc0 = random_row(heads * hd, 9);
                let run = |table: &KernelTable| {
                    let mut acc = acc0.clone();
                    match plane.rows_view().rows {
                        Rows::Q8_0(v) => (table.attn_quant.accumulate_q8_0)(v, hd, &p, &mut acc),
                        Rows::Q4_0(v) => (table.attn_quant.accumulate_q4_0)(v, hd, &p, &mut acc),
                        Rows::F16(_) => unreachable!(),
                    }
                    acc
                };
                let want = run(&SCALAR);
                // and the reference is what it says: dequantize, then axpy
                let mut rows = vec![0f32; nk * hd];
                plane.read_rows(0, &mut rows).unwrap();
                for (g, w) in want.chunks(hd).enumerate() {
                    for (d, &got) in w.iter().enumerate() {
                        let exact: f32 = acc0[g * hd + d]
                            + (0..nk)
                                .map(|j| p[g * nk + j] * rows[j * hd + d])
                                .sum::<f32>();
                        assert!(
                            (got - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                            "{t} {g} {d}"
                        );
                    }
                }
                for isa in available_isas() {
                    let got = run(table_for(isa).unwrap());
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa} {t} heads {heads}"
                    );
                }
            }
        }
    }

    /// What the rotation is for: keys and values with a few outlier
    /// channels (as trained models have) lose much less to Q4_0 blocks when
    /// stored rotated, while the attention computed is the same function.
    #[test]
    fn rotation_spreads_outliers_and_lowers_q4_0_error() {
        use crate::ops::kv_plane::KvPlane;
        let p = AttentionParams {
            n_head: 4,
            n_kv_head: 2,
            head_dim: 64,
            scale: 0.125,
            softcap: None,
            window: None,
        };
        let (cap, pos0, n) = (96, 90, 6);
        let rows = p.n_kv_head * cap;
        let outliers = |mut x: Vec<f32>| {
            for (i, v) in x.iter_mut().enumerate() {
                if matches!(i % p.head_dim, 3 | 40) {
                    *v *= 12.0;
                }
            }
            x
        };
        let kx = outliers(random_row(rows * p.head_dim, 11));
        let vx = outliers(random_row(rows * p.head_dim, 12));
        let q = random_row(n * p.n_head * p.head_dim, 13);
        let exact = naive(&p, &q, &kx, &vx, cap, pos0, n);
        let err = |rotation: Option<Hadamard>| {
            let plane = |x: &[f32]| {
                let mut pl = KvPlane::zeros(KvType::Q4_0, rows, p.head_dim)
                    .unwrap()
                    .with_rotation(rotation)
                    .unwrap();
                pl.write_rows(0, x).unwrap();
                pl
            };
            let (kp, vp) = (plane(&kx), plane(&vx));
            let mut out = vec![0f32; q.len()];
            attention_kv_with(
                dispatch::table(),
                &p,
                &q,
                kp.rows_view(),
                vp.rows_view(),
                KvLayout::linear(cap),
                pos0,
                n,
                &mut out,
            )
            .unwrap();
            rel_l2(&out, &exact)
        };
        let (plain, rotated) = (err(None), err(Some(Hadamard::new(64).unwrap())));
        assert!(
            rotated < 0.6 * plain,
            "rotated {rotated} vs as stored {plain}"
        );
    }

    #[test]
    fn a_rotation_must_divide_the_head() {
        use crate::ops::kv_plane::KvPlane;
        let p = AttentionParams {
            n_head: 1,
            n_kv_head: 1,
            head_dim: 32,
            scale: 1.0,
            softcap: None,
            window: None,
        };
        let kp = KvPlane::zeros(KvType::Q8_0, 4, 64)
            .unwrap()
            .with_rotation(Some(Hadamard::new(64).unwrap()))
            .unwrap();
        let f = vec![f16::ZERO; 4 * 32];
        let mut out = vec![0f32; 32];
        let r = attention_kv_with(
            dispatch::table(),
            &p,
            &[0.5; 32],
            kp.rows_view(),
            KvRows::f16(&f),
            KvLayout::linear(4),
            0,
            1,
            &mut out,
        );
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
        assert!(KvPlane::zeros(KvType::Q4_0, 4, 96)
            .unwrap()
            .with_rotation(Some(Hadamard::new(64).unwrap()))
            .is_err());
    }

    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let (mut d, mut n) = (0f64, 0f64);
        for (x, y) in a.iter().zip(b) {
            d += (*x as f64 - *y as f64).powi(2);
            n += (*y as f64).powi(2);
        }
        (d / n.max(1e-30)).sqrt()
    }

    #[test]
    fn quantized_cache_needs_whole_blocks() {
        use crate::ops::kv_plane::KvPlane;
        let p = AttentionParams {
            n_head: 1,
            n_kv_head: 1,
            head_dim: 32,
            scale: 1.0,
            softcap: None,
            window: None,
        };
        let kp = KvPlane::zeros(KvType::Q8_0, 4, 32).unwrap();
        let f = vec![f16::ZERO; 4 * 32];
        let mut out = vec![0f32; 32];
        let run = |p: &AttentionParams, k: KvRows<'_>, out: &mut [f32]| {
            attention_kv_with(
                dispatch::table(),
                p,
                &vec![0.5; out.len()],
                k,
                KvRows::f16(&f),
                KvLayout::linear(4),
                0,
                1,
                out,
            )
        };
        assert!(run(&p, kp.rows_view(), &mut out).is_ok());
        assert!(run(&p, kp.rows_view(), &mut out[..16]).is_err());
        let p16 = AttentionParams { head_dim: 16, ..p };
        let kp16 = KvPlane::zeros(KvType::F16, 4, 16).unwrap();
        assert!(run(&p16, kp16.rows_view(), &mut out[..16]).is_ok());
        // a Q8_0 plane read with a head size that is not whole blocks
        assert!(matches!(
            run(&p16, kp.rows_view(), &mut out[..16]),
            Err(Error::RaggedRow { .. })
        ));
        // fewer rows than the capacity
        let short = KvPlane::zeros(KvType::Q4_0, 3, 32).unwrap();
        assert!(matches!(
            run(&p, short.rows_view(), &mut out),
            Err(Error::ShapeMismatch { .. })
        ));
    }

    /// A ring of `window + n - 1` slots holding the last positions at
    /// `p % slots` gives what the whole cache gives, on every ISA and KV
    /// type, whether this call's keys wrap or not; positions below
    /// `layout.first` are not seen; a ring one slot too short is refused.
    #[test]
    fn ring_layout_matches_the_linear_cache() {
        use crate::ops::kv_plane::KvPlane;
        let p = AttentionParams {
            n_head: 4,
            n_kv_head: 2,
            head_dim: 32,
            scale: 0.2,
            softcap: None,
            window: Some(40),
        };
        let hd = p.head_dim;
        let whole = 300;
        let kx = random_row(p.n_kv_head * whole * hd, 11);
        let vx = random_row(p.n_kv_head * whole * hd, 12);
        // (pos0, n, first): the batch wraps the ring, or not; decode; a
        // shift left positions below 250 missing
        for (pos0, n, first) in [(200, 9, 0), (230, 9, 0), (299, 1, 0), (260, 5, 250)] {
            let slots = p.window.unwrap() + n - 1;
            let q = random_row(n * p.n_head * hd, pos0 as u64);
            for kt in KvType::ALL {
                let plane = |x: &[f32], rows: usize, slot: &dyn Fn(usize) -> usize| {
                    let mut pl = KvPlane::zeros(kt, p.n_kv_head * rows, hd).unwrap();
                    for g in 0..p.n_kv_head {
                        for j in first..pos0 + n {
                            let r = &x[(g * whole + j) * hd..][..hd];
                            pl.write_rows(g * rows + slot(j), r).unwrap();
                        }
                    }
                    pl
                };
                let (kl, vl) = (plane(&kx, whole, &|j| j), plane(&vx, whole, &|j| j));
                let (kr, vr) = (
                    plane(&kx, slots, &|j| j % slots),
                    plane(&vx, slots, &|j| j % slots),
                );
                // the whole cache with the missing positions zeroed and
                // out of the window: a window ending at `first`
                let lin_p = AttentionParams {
                    window: Some(p.window.unwrap().min(pos0 + 1 - first)),
                    ..p
                };
                for isa in available_isas() {
                    let t = table_for(isa).unwrap();
                    let (mut a, mut b) = (vec![0f32; q.len()], vec![0f32; q.len()]);
                    let lin = KvLayout::linear(whole);
                    attention_kv_with(
                        t,
                        &lin_p,
                        &q,
                        kl.rows_view(),
                        vl.rows_view(),
                        lin,
                        pos0,
                        n,
                        &mut a,
                    )
                    .unwrap();
                    let ring = KvLayout { slots, first };
                    attention_kv_with(
                        t,
                        &p,
                        &q,
                        kr.rows_view(),
                        vr.rows_view(),
                        ring,
                        pos0,
                        n,
                        &mut b,
                    )
                    .unwrap();
                    if first == 0 {
                        for (x, y) in a.iter().zip(&b) {
                            assert!((x - y).abs() < 1e-5, "{kt} {isa} at {pos0}: {x} vs {y}");
                        }
                    } else {
                        // the first query's window of 40 reaches back to
                        // 221, the layout holds from 250: as a window of 11
                        for (x, y) in a[..p.n_head * hd].iter().zip(&b) {
                            assert!((x - y).abs() < 1e-5, "{kt} {isa} first {first}: {x} vs {y}");
                        }
                    }
                    let short = KvLayout {
                        slots: slots - 1,
                        first,
                    };
                    let (kr2, vr2) = (
                        plane(&kx, slots - 1, &|j| j % (slots - 1)),
                        plane(&vx, slots - 1, &|j| j % (slots - 1)),
                    );
                    let r = attention_kv_with(
                        t,
                        &p,
                        &q,
                        kr2.rows_view(),
                        vr2.rows_view(),
                        short,
                        pos0,
                        n,
                        &mut b,
                    );
                    assert_eq!(r.is_err(), first == 0, "{pos0} {n}: a ring one slot short");
                }
            }
        }
    }

    #[test]
    fn window_of_one_returns_own_value() {
        let p = AttentionParams {
            n_head: 1,
            n_kv_head: 1,
            head_dim: 4,
            scale: 1.0,
            softcap: None,
            window: Some(1),
        };
        let k = vec![f16::from_f32(1.0); 12];
        let v: Vec<f16> = (0..12).map(|i| f16::from_f32(i as f32)).collect();
        let mut out = [0f32; 4];
        attention(&p, &[1.0; 4], &k, &v, 3, 2, 1, &mut out).unwrap();
        assert_eq!(out, [8.0, 9.0, 10.0, 11.0]);
    }

    #[test]
    fn rejects_bad_shapes() {
        let p = AttentionParams {
            n_head: 3,
            n_kv_head: 2,
            head_dim: 4,
            scale: 1.0,
            softcap: None,
            window: None,
        };
        let k = vec![f16::ZERO; 2 * 8 * 4];
        let mut out = vec![0f32; 12];
        assert!(attention(&p, &[0.0; 12], &k, &k, 8, 0, 1, &mut out).is_err());
        let p = AttentionParams { n_head: 4, ..p };
        let mut out = vec![0f32; 16];
        assert!(attention(&p, &[0.0; 16], &k, &k, 8, 0, 1, &mut out).is_ok());
        assert!(attention(&p, &[0.0; 16], &k, &k, 8, 8, 1, &mut out).is_err());
        assert!(attention(&p, &[0.0; 16], &k[1..], &k, 8, 0, 1, &mut out).is_err());
        assert!(attention(&p, &[0.0; 15], &k, &k, 8, 0, 1, &mut out).is_err());
        let p = AttentionParams {
            window: Some(0),
            ..p
        };
        assert!(attention(&p, &[0.0; 16], &k, &k, 8, 0, 1, &mut out).is_err());
    }
}
