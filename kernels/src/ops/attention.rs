//! Causal multi-head attention over an f16 KV cache with grouped-query
//! heads, an optional sliding window and optional logit soft-capping.
//! Keys are visited in blocks with an online (streaming) softmax, so the
//! score matrix is never materialized; (token, head) pairs run in parallel.

use crate::dispatch::{self, KernelTable};
use crate::ops::activation::exp_approx;
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
    if end > kv_capacity {
        return Err(invalid(format!(
            "positions up to {end} exceed the KV capacity {kv_capacity}"
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
    for got in [k.len(), v.len()] {
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
        let first = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let kv_off = (h / group) * kv_capacity * hd;
        let k_head = &k[kv_off..kv_off + kv_capacity * hd];
        let v_head = &v[kv_off..kv_off + kv_capacity * hd];
        let q_unit = &q[first_head * hd..(first_head + heads) * hd];
        for (qs, accs) in q_unit
            .chunks(MAX_SHARED * hd)
            .zip(acc.chunks_mut(MAX_SHARED * hd))
        {
            heads_over_keys(table, p, qs, k_head, v_head, first..pos + 1, accs);
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
const PARALLEL_WORK: usize = 1 << 18;

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

/// Online softmax over `keys` for the `q.len() / head_dim` (at most
/// [`MAX_SHARED`]) query heads in `q`, which share `k` and `v`: per head a
/// running max `m`, normalizer `l` and unnormalized output in `acc`,
/// rescaled when a block raises the max.
fn heads_over_keys(
    table: &KernelTable,
    p: &AttentionParams,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    keys: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    let hd = p.head_dim;
    acc.fill(0.0);
    let mut m = [f32::NEG_INFINITY; MAX_SHARED];
    let mut l = [0f32; MAX_SHARED];
    let mut scores = [0f32; MAX_SHARED * KEY_BLOCK];
    let mut start = keys.start;
    while start < keys.end {
        let stop = (start + KEY_BLOCK).min(keys.end);
        let nk = stop - start;
        let (kb, vb) = (&k[start * hd..stop * hd], &v[start * hd..stop * hd]);
        let s = &mut scores[..q.len() / hd * nk];
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
        for (g, row) in s.chunks_mut(nk).enumerate() {
            let scale = match p.softcap {
                None => p.scale,
                Some(cap) => {
                    row.iter_mut()
                        .for_each(|x| *x = cap * (*x * p.scale / cap).tanh());
                    1.0
                }
            };
            let (new_m, sum) = (table.softmax_block)(row, scale, m[g]);
            if new_m > m[g] && l[g] > 0.0 {
                let corr = exp_approx(m[g] - new_m);
                l[g] *= corr;
                acc[g * hd..(g + 1) * hd]
                    .iter_mut()
                    .for_each(|a| *a *= corr);
            }
            m[g] = new_m;
            l[g] += sum;
        }
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
        start = stop;
    }
    for (ag, &lg) in acc.chunks_mut(hd).zip(&l) {
        if lg > 0.0 {
            let inv = 1.0 / lg;
            ag.iter_mut().for_each(|a| *a *= inv);
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
        k: &[f16],
        v: &[f16],
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
                            .map(|(a, b)| *a as f64 * b.to_f64())
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
                        out[(t * p.n_head + h) * hd + d] += (w / sum * vr[d].to_f64()) as f32;
                    }
                }
            }
        }
        out
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
            let want = naive(&p, &q, &k, &v, cap, pos0, n);
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
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < 2e-4, "case {ci} {isa} [{i}]: {a} vs {b}");
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
