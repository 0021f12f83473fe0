//! AVX2 attention block kernels over the f16 KV cache: each key and value
//! row is converted once for all the query heads of a group, where the
//! f16 dot and `axpy_f16` converted it again for every head and paid a
//! call per (head, key) pair. At depth this was most of a follow-up
//! turn's prefill.
//!
//! Batch invariance: a (head, key) score is one 8-lane FMA chain over the
//! row from zero, summed by `hsum`'s tree, whatever the number of heads or
//! keys beside it; an output element is one FMA chain over the block's keys in
//! order. Decode and prefill both run these kernels, so a token's
//! attention gives the same bits however it was batched.
//!
//! Soundness: the `unsafe fn`s need AVX2, FMA and F16C; the safe entry
//! points are reached only through the AVX2 table (and the tables built
//! on it), which `super::table` hands out after `super::supports` checked
//! those features. They check the shapes before the kernels index.

use super::Elem;
use crate::quant::float as reference;
use core::arch::x86_64::*;
use half::f16;

/// Query heads one kernel call keeps in registers.
const MAX_HEADS: usize = 4;

/// The key (or value) rows of a block kernel's call, if `kv` and `heads`
/// hold whole rows of `hd` and `per_pair` one value per (head, key) (the
/// AVX-512 tier's block kernels check their calls with it too).
pub(super) fn whole_rows(hd: usize, kv: &[f16], heads: &[f32], per_pair: &[f32]) -> Option<usize> {
    let nk = kv.len().checked_div(hd).filter(|&n| n > 0)?;
    let ok = kv.len().is_multiple_of(hd)
        && heads.len().is_multiple_of(hd)
        && per_pair.len() >= heads.len() / hd * nk;
    ok.then_some(nk)
}

/// `out[g * nk + j] = k_j · q_g` (see `dispatch::AttnScoresFn`).
pub(super) fn attn_scores(k: &[f16], hd: usize, q: &[f32], out: &mut [f32]) {
    let Some(nk) = whole_rows(hd, k, q, out) else {
        // Not whole rows: the reference does what it can without panicking.
        return reference::attn_scores_f16(k, hd, q, out);
    };
    for (qs, os) in q.chunks(MAX_HEADS * hd).zip(out.chunks_mut(MAX_HEADS * nk)) {
        // SAFETY: AVX2/FMA/F16C were detected before this table was handed
        // out; k holds nk rows of hd, qs g rows of hd and os g * nk scores.
        unsafe {
            match qs.len() / hd {
                1 => scores_k::<1, 8>(k, hd, qs, os),
                2 => scores_k::<2, 4>(k, hd, qs, os),
                3 => scores_k::<3, 4>(k, hd, qs, os),
                _ => scores_k::<4, 2>(k, hd, qs, os),
            }
        }
    }
}

/// `acc_g += sum_j p[g * nk + j] * v_j` (see `dispatch::AttnAccumulateFn`).
pub(super) fn attn_accumulate(v: &[f16], hd: usize, p: &[f32], acc: &mut [f32]) {
    let Some(nk) = whole_rows(hd, v, acc, p) else {
        return reference::attn_accumulate_f16(v, hd, p, acc);
    };
    for (ps, accs) in p.chunks(MAX_HEADS * nk).zip(acc.chunks_mut(MAX_HEADS * hd)) {
        // SAFETY: as above; v holds nk rows of hd, accs g rows of hd and ps
        // g * nk weights.
        unsafe {
            match accs.len() / hd {
                1 => accumulate_k::<1>(v, hd, ps, accs),
                2 => accumulate_k::<2>(v, hd, ps, accs),
                3 => accumulate_k::<3>(v, hd, ps, accs),
                _ => accumulate_k::<4>(v, hd, ps, accs),
            }
        }
    }
}

/// Eight elements at `p` as f32.
///
/// # Safety
/// AVX2/F16C; 8 elements readable at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load8<T: Elem>(p: *const T) -> __m256 {
    // SAFETY: forwarded from the caller.
    unsafe {
        if T::F16 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_loadu_ps(p.cast())
        }
    }
}

/// Tiles of `T` keys against `G` queries (`G * T <= 12` accumulators of
/// the 16 registers): each key chunk is converted once for all the
/// queries, and a tile's `T` sums are finished together by
/// [`reduce_keys`], where a horizontal sum per (head, key) cost more than
/// its FMAs. Keys past the last whole tile run one at a time through the
/// same tree (that of `hsum`), so a score's bits do not depend on the
/// key's place in the block (decode and prefill see different block ends).
///
/// # Safety
/// AVX2/FMA/F16C; `k` holds whole rows of `hd`, `q` `G` rows, `out` `G *
/// nk` scores.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_k<const G: usize, const T: usize>(
    k: &[f16],
    hd: usize,
    q: &[f32],
    out: &mut [f32],
) {
    let nk = k.len() / hd;
    let mut j = 0;
    // SAFETY: forwarded from the caller; every tile lies inside 0..nk.
    unsafe {
        while j + T <= nk {
            scores_tile::<f16, G, T>(k, hd, q, out, nk, j);
            j += T;
        }
        while j < nk {
            scores_tile::<f16, G, 1>(k, hd, q, out, nk, j);
            j += 1;
        }
    }
}

/// Scores of keys `j..j + T` (of `k.len() / hd`, f16 rows of the cache or
/// the widened rows of a `KeyTile::Rows` tile) against `G` queries: per
/// (head, key) an 8-lane FMA chain over the row from zero, summed by
/// [`reduce_keys`], plus the scalar tail past the last whole 8 elements;
/// query `g`'s scores at `out[g * stride..]`.
///
/// # Safety
/// AVX2/FMA/F16C; `k` holds whole rows of `hd` with `j + T <= k.len() /
/// hd`, `q` `G` rows, `out` `G` rows of `stride` scores, `j + T <= stride`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scores_tile<E: Elem, const G: usize, const T: usize>(
    k: &[E],
    hd: usize,
    q: &[f32],
    out: &mut [f32],
    stride: usize,
    j: usize,
) {
    let vec_end = hd / 8 * 8;
    let (kp, qp) = (k.as_ptr(), q.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); T]; G];
    let mut i = 0;
    // SAFETY: every load reads 8 values at i + 8 <= vec_end <= hd inside
    // row j + t of k and row g < G of q.
    unsafe {
        while i < vec_end {
            for t in 0..T {
                let x = load8(kp.add((j + t) * hd + i));
                for (g, a) in acc.iter_mut().enumerate() {
                    a[t] = _mm256_fmadd_ps(x, _mm256_loadu_ps(qp.add(g * hd + i)), a[t]);
                }
            }
            i += 8;
        }
    }
    for (g, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; 8];
        // SAFETY: AVX2, as above; `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), reduce_keys::<T>(a)) };
        let o = &mut out[g * stride + j..g * stride + j + T];
        for (t, (o, s)) in o.iter_mut().zip(lanes).enumerate() {
            let row = (j + t) * hd;
            *o = if vec_end == hd {
                s
            } else {
                s + k[row + vec_end..row + hd]
                    .iter()
                    .zip(&q[g * hd + vec_end..(g + 1) * hd])
                    .map(|(x, y)| x.widen() * y)
                    .sum::<f32>()
            };
        }
    }
}

/// The horizontal sums of `T` (1, 2, 4 or 8) accumulators, key `t`'s in
/// lane `t`, each by `hsum`'s tree whatever `T` is: lane `i` plus lane `i +
/// 4`, then `+ 2`, `+ 1`. Each level adds pairs of vectors through
/// shuffles, so `T` sums cost about what one costs alone; a level with one
/// vector left pairs it with itself.
///
/// # Safety
/// AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn reduce_keys<const T: usize>(acc: &[__m256; T]) -> __m256 {
    let mut v = [_mm256_setzero_ps(); 8];
    v[..T].copy_from_slice(acc);
    let mut n = T;
    // One level: vector p becomes the pair (2p, 2p + 1) combined.
    macro_rules! level {
        (|$a:ident, $b:ident| $combine:expr) => {
            for p in 0..n.div_ceil(2) {
                let ($a, $b) = (v[2 * p], v[(2 * p + 1).min(n - 1)]);
                v[p] = $combine;
            }
            n = n.div_ceil(2);
        };
    }
    // lanes i and i + 4: the 128-bit halves of a, then of b
    level!(|a, b| _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(a, b),
        _mm256_permute2f128_ps::<0x31>(a, b)
    ));
    // i and i + 2: the 64-bit halves of each 128-bit lane
    level!(|a, b| {
        let (a, b) = (_mm256_castps_pd(a), _mm256_castps_pd(b));
        _mm256_add_ps(
            _mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
            _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)),
        )
    });
    // i and i + 1: the even and odd lanes of each 128-bit lane
    level!(|a, b| _mm256_add_ps(
        _mm256_shuffle_ps::<0x88>(a, b),
        _mm256_shuffle_ps::<0xDD>(a, b)
    ));
    debug_assert_eq!(n, 1);
    // Key t ended in lane 4 * (t % 2) + t / 2.
    _mm256_permutevar8x32_ps(v[0], _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Output columns outer, keys inner: `G` heads times two 8-lane column
/// chunks stay in registers across the block of keys, each value chunk
/// converted once for all `G` heads.
///
/// # Safety
/// AVX2/FMA/F16C; `v` holds whole rows of `hd`, `acc` `G` rows, `p` `G *
/// nk` weights.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_k<const G: usize>(v: &[f16], hd: usize, p: &[f32], acc: &mut [f32]) {
    let nk = v.len() / hd;
    let vec_end = hd / 8 * 8;
    let (vp, ap) = (v.as_ptr(), acc.as_mut_ptr());
    let mut i = 0;
    // SAFETY: loads and stores cover 8 lanes at column i + 8 * c + 8 <=
    // vec_end <= hd of value row j < nk and output row g < G.
    unsafe {
        while i + 16 <= vec_end {
            let mut a = [[_mm256_setzero_ps(); 2]; G];
            for (g, ag) in a.iter_mut().enumerate() {
                for (c, r) in ag.iter_mut().enumerate() {
                    *r = _mm256_loadu_ps(ap.add(g * hd + i + 8 * c));
                }
            }
            for j in 0..nk {
                let row = vp.add(j * hd + i);
                let x = [load8(row), load8(row.add(8))];
                for (g, ag) in a.iter_mut().enumerate() {
                    let w = _mm256_set1_ps(p[g * nk + j]);
                    for (r, xc) in ag.iter_mut().zip(&x) {
                        *r = _mm256_fmadd_ps(w, *xc, *r);
                    }
                }
            }
            for (g, ag) in a.iter().enumerate() {
                for (c, r) in ag.iter().enumerate() {
                    _mm256_storeu_ps(ap.add(g * hd + i + 8 * c), *r);
                }
            }
            i += 16;
        }
        while i < vec_end {
            let mut a = [_mm256_setzero_ps(); G];
            for (g, r) in a.iter_mut().enumerate() {
                *r = _mm256_loadu_ps(ap.add(g * hd + i));
            }
            for j in 0..nk {
                let x = load8(vp.add(j * hd + i));
                for (g, r) in a.iter_mut().enumerate() {
                    *r = _mm256_fmadd_ps(_mm256_set1_ps(p[g * nk + j]), x, *r);
                }
            }
            for (g, r) in a.iter().enumerate() {
                _mm256_storeu_ps(ap.add(g * hd + i), *r);
            }
            i += 8;
        }
    }
    for g in 0..G {
        for c in vec_end..hd {
            for j in 0..nk {
                acc[g * hd + c] = p[g * nk + j].mul_add(v[j * hd + c].to_f32(), acc[g * hd + c]);
            }
        }
    }
}
