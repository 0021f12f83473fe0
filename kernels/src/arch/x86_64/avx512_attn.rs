//! AVX-512 kernels of the tiled f16 attention (`ops::attention_tiled`):
//! key tiles widened and transposed once (16 x 16 blocks through
//! registers), then scores as `rows x 64 keys` broadcast-FMA gemms over
//! the head and outputs as `rows x head` gemms over the tile's keys, with
//! no horizontal sums.
//!
//! Every score and every output element is one FMA chain in the
//! reference's order, so these kernels are exact against
//! `ops::attention_tiled::*_ref` whatever the row or key tiling.
//!
//! Soundness: the `unsafe fn`s need AVX-512F (which brings FMA and F16C);
//! the safe entry points are reached only through the AVX-512 tables,
//! handed out after `super::supports` checked the feature, and check the
//! shapes (or fall back to the reference) before the kernels index.

use crate::dispatch::{AttnTileKernels, ATTN_TILE};
use crate::ops::attention_tiled as reference;
use core::arch::x86_64::*;
use half::f16;

/// The table entry.
pub(super) const KERNELS: AttnTileKernels = AttnTileKernels {
    load_keys,
    load_values,
    scores,
    accumulate: accumulate::<f32>,
    scores_f16,
    accumulate_f16: accumulate::<f16>,
};

/// A value row's element: f32 from a widened tile, or f16 from the cache.
trait Elem: Copy {
    const F16: bool;
    fn widen(self) -> f32;
}
impl Elem for f32 {
    const F16: bool = false;
    fn widen(self) -> f32 {
        self
    }
}
impl Elem for f16 {
    const F16: bool = true;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// Sixteen elements at `p` as f32.
///
/// # Safety
/// AVX-512F; 16 elements readable at `p`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load16<T: Elem>(p: *const T) -> __m512 {
    // SAFETY: forwarded from the caller.
    unsafe {
        if T::F16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_loadu_ps(p.cast())
        }
    }
}

/// Rows of an accumulate tile: 6 x 4 accumulators of 16 lanes, plus the 4
/// value vectors and a broadcast, fit the 32 registers.
const ROWS: usize = 6;

fn load_keys(k: &[f16], hd: usize, col0: usize, kt: &mut [f32]) {
    let ok = hd > 0
        && hd.is_multiple_of(2)
        && k.len().is_multiple_of(hd)
        && col0 + k.len() / hd <= ATTN_TILE
        && kt.len() >= hd * ATTN_TILE;
    if !ok {
        return reference::load_keys_ref(k, hd, col0, kt);
    }
    // SAFETY: AVX-512F was detected before this table was handed out; k
    // holds whole rows that fit columns col0.. of the hd x ATTN_TILE tile.
    unsafe { load_keys_k(k, hd, col0, kt) }
}

fn load_values(v: &[f16], out: &mut [f32]) {
    let n = v.len().min(out.len());
    // SAFETY: as above; both slices hold n values.
    unsafe { load_values_k(&v[..n], &mut out[..n]) }
}

fn scores(kt: &[f32], hd: usize, nk: usize, q: &[f32], out: &mut [f32]) {
    let ok = hd > 0
        && hd.is_multiple_of(2)
        && q.len().is_multiple_of(hd)
        && (1..=ATTN_TILE).contains(&nk)
        && kt.len() >= hd * ATTN_TILE
        && out.len() >= q.len() / hd * ATTN_TILE;
    if !ok {
        return reference::scores_ref(kt, hd, nk, q, out);
    }
    // SAFETY: AVX-512F was detected before this table was handed out; kt
    // holds hd / 2 pair rows of 2 * ATTN_TILE, q whole rows of hd and out
    // ATTN_TILE scores per row.
    unsafe {
        match nk.div_ceil(16) {
            1 => scores_k::<2>(kt, hd, q, out),
            2 => scores_k::<4>(kt, hd, q, out),
            3 => scores_k::<6>(kt, hd, q, out),
            _ => scores_k::<8>(kt, hd, q, out),
        }
    }
}

fn scores_f16(k: &[f16], hd: usize, q: &[f32], out: &mut [f32]) {
    let ok = hd > 0
        && hd.is_multiple_of(2)
        && k.len().is_multiple_of(hd)
        && (1..=ATTN_TILE).contains(&(k.len() / hd))
        && q.len().is_multiple_of(hd)
        && out.len() >= q.len() / hd * ATTN_TILE;
    if !ok {
        return reference::scores_f16_ref(k, hd, q, out);
    }
    let rows = q.len() / hd;
    let mut r = 0;
    // SAFETY: AVX-512F was detected before this table was handed out; k
    // holds whole rows, q rows r..rows of hd, out ATTN_TILE scores per row.
    unsafe {
        while r + 4 <= rows {
            scores_f16_k::<4>(k, hd, &q[r * hd..], &mut out[r * ATTN_TILE..]);
            r += 4;
        }
        match rows - r {
            0 => {}
            1 => scores_f16_k::<1>(k, hd, &q[r * hd..], &mut out[r * ATTN_TILE..]),
            2 => scores_f16_k::<2>(k, hd, &q[r * hd..], &mut out[r * ATTN_TILE..]),
            _ => scores_f16_k::<3>(k, hd, &q[r * hd..], &mut out[r * ATTN_TILE..]),
        }
    }
}

/// Scores of `R` rows against 16 keys at a time: each 8 keys x 16
/// elements of the cache become 8 vectors of the keys' element pairs in
/// registers (the tile's layout, never stored) and meet the rows' pairs
/// of `q` there, in the tile kernel's order; keys past the last 16 run as
/// scalar [`reference::score`]s.
///
/// # Safety
/// AVX-512F; `hd` even; `k` whole rows of `hd`, at most ATTN_TILE; `q` at
/// least `R` rows, `out` `R` rows of ATTN_TILE.
#[target_feature(enable = "avx512f")]
unsafe fn scores_f16_k<const R: usize>(k: &[f16], hd: usize, q: &[f32], out: &mut [f32]) {
    let nk = k.len() / hd;
    let (kp, qp) = (k.as_ptr(), q.as_ptr());
    let mut j = 0;
    while j + 16 <= nk {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let mut d = 0;
        // SAFETY: pairs8 reads 16 elements at d + 16 <= hd of rows j + 8h
        // + i < nk; q pairs at r * hd + d + 2c + 2 <= r * hd + hd, r < R.
        unsafe {
            while d + 16 <= hd {
                for h in 0..2 {
                    let cols = pairs8(kp.add((j + 8 * h) * hd + d), hd);
                    for (c, x) in cols.iter().enumerate() {
                        let kx = _mm512_cvtph_ps(_mm256_castps_si256(*x));
                        for (r, ar) in acc.iter_mut().enumerate() {
                            ar[h] = _mm512_fmadd_ps(q_pair(qp.add(r * hd + d + 2 * c)), kx, ar[h]);
                        }
                    }
                }
                d += 16;
            }
            // the pairs past the head's last 16 elements, in order
            while d < hd {
                for h in 0..2 {
                    let mut x = [0f32; 16];
                    for (i, pair) in x.chunks_exact_mut(2).enumerate() {
                        let row = (j + 8 * h + i) * hd + d;
                        pair[0] = k[row].to_f32();
                        pair[1] = k[row + 1].to_f32();
                    }
                    let kx = _mm512_loadu_ps(x.as_ptr());
                    for (r, ar) in acc.iter_mut().enumerate() {
                        ar[h] = _mm512_fmadd_ps(q_pair(qp.add(r * hd + d)), kx, ar[h]);
                    }
                }
                d += 2;
            }
            for (r, ar) in acc.iter().enumerate() {
                _mm512_storeu_ps(
                    out.as_mut_ptr().add(r * ATTN_TILE + j),
                    combine(ar[0], ar[1]),
                );
            }
        }
        j += 16;
    }
    for jj in j..nk {
        let key = &k[jj * hd..(jj + 1) * hd];
        for (r, qr) in q.chunks_exact(hd).take(R).enumerate() {
            out[r * ATTN_TILE + jj] = reference::score(qr, |c| key[c].to_f32());
        }
    }
}

/// Query elements `2u, 2u + 1` at `p` in every pair of lanes.
///
/// # Safety
/// AVX-512F; two floats readable at `p`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q_pair(p: *const f32) -> __m512 {
    // SAFETY: forwarded from the caller.
    _mm512_castpd_ps(_mm512_set1_pd(unsafe { p.cast::<f64>().read_unaligned() }))
}

/// 16 scores in key order from the pair lanes of keys `0..8` (`a`) and
/// `8..16` (`b`): the even chains plus the odd ones, reordered.
///
/// # Safety
/// AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn combine(a: __m512, b: __m512) -> __m512 {
    // per 128-bit lane L: keys 2L, 2L + 1, 8 + 2L, 9 + 2L
    let even = _mm512_shuffle_ps::<0x88>(a, b);
    let odd = _mm512_shuffle_ps::<0xDD>(a, b);
    let s = _mm512_add_ps(even, odd);
    let idx = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    _mm512_permutexvar_ps(idx, s)
}

/// 8 keys' elements `0..16` (rows `stride` f16 apart from `p`) as 8
/// vectors of f16 pairs: vector `c` holds elements `2c, 2c + 1` of keys
/// `0..8`, by an 8 x 8 transpose of 32-bit pairs (24 in-lane and
/// cross-lane shuffles on 256 bits).
///
/// # Safety
/// AVX-512F; 16 elements readable at each of the 8 rows.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn pairs8(p: *const f16, stride: usize) -> [__m256; 8] {
    let mut r = [_mm256_setzero_ps(); 8];
    for (i, x) in r.iter_mut().enumerate() {
        // SAFETY: forwarded from the caller.
        *x = unsafe { _mm256_loadu_ps(p.add(i * stride).cast()) };
    }
    let mut t = [_mm256_setzero_ps(); 8];
    for h in 0..4 {
        t[2 * h] = _mm256_unpacklo_ps(r[2 * h], r[2 * h + 1]);
        t[2 * h + 1] = _mm256_unpackhi_ps(r[2 * h], r[2 * h + 1]);
    }
    // u[4g + c'] holds pair c' (lane 0) and c' + 4 (lane 1) of keys 4g..4g + 4
    let mut u = [_mm256_setzero_ps(); 8];
    for g in 0..2 {
        let b = 4 * g;
        u[b] = _mm256_shuffle_ps::<0x44>(t[b], t[b + 2]);
        u[b + 1] = _mm256_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        u[b + 2] = _mm256_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        u[b + 3] = _mm256_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    let mut out = [_mm256_setzero_ps(); 8];
    for c in 0..4 {
        out[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
        out[c + 4] = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
    }
    out
}

/// # Safety
/// AVX-512F; `k` whole rows of `hd` (even) fitting columns `col0..` of
/// `kt`'s `hd x ATTN_TILE`.
#[target_feature(enable = "avx512f")]
unsafe fn load_keys_k(k: &[f16], hd: usize, col0: usize, kt: &mut [f32]) {
    let n = k.len() / hd;
    let (kp, tp) = (k.as_ptr(), kt.as_mut_ptr());
    let mut j = 0;
    while j + 8 <= n {
        let mut d = 0;
        // SAFETY: pairs8 reads elements d..d + 16 <= hd of rows j + i < n;
        // each store writes the 8 keys' pairs at 2 * (col0 + j) + 16 <= 2 *
        // ATTN_TILE of pair row (d / 2 + c) < hd / 2.
        unsafe {
            while d + 16 <= hd {
                let cols = pairs8(kp.add(j * hd + d), hd);
                for (c, x) in cols.iter().enumerate() {
                    let at = (d / 2 + c) * 2 * ATTN_TILE + 2 * (col0 + j);
                    _mm512_storeu_ps(tp.add(at), _mm512_cvtph_ps(_mm256_castps_si256(*x)));
                }
                d += 16;
            }
        }
        // the head's elements past its last 16
        for i in j..j + 8 {
            for c in d..hd {
                kt[reference::key_tile_index(c, col0 + i)] = k[i * hd + c].to_f32();
            }
        }
        j += 8;
    }
    reference::load_keys_ref(&k[j * hd..], hd, col0 + j, kt);
}

/// Scores of the first `8 * V` keys for every row of `q`, [`SCORE_ROWS`]
/// rows at a time.
///
/// # Safety
/// AVX-512F; `hd` even, `kt` `hd x ATTN_TILE`, `q` whole rows of `hd`,
/// `out` ATTN_TILE per row; `V` even.
#[target_feature(enable = "avx512f")]
unsafe fn scores_k<const V: usize>(kt: &[f32], hd: usize, q: &[f32], out: &mut [f32]) {
    let rows = q.len() / hd;
    let (kp, qp, op) = (kt.as_ptr(), q.as_ptr(), out.as_mut_ptr());
    let mut r = 0;
    // SAFETY: forwarded; each tile reads rows r.. < rows of q and writes
    // the same rows of out.
    unsafe {
        while r + SCORE_ROWS <= rows {
            scores_tile::<SCORE_ROWS, V>(kp, hd, qp.add(r * hd), op.add(r * ATTN_TILE));
            r += SCORE_ROWS;
        }
        let (qp, op) = (qp.add(r * hd), op.add(r * ATTN_TILE));
        match rows - r {
            0 => {}
            1 => scores_tile::<1, V>(kp, hd, qp, op),
            _ => scores_tile::<2, V>(kp, hd, qp, op),
        }
    }
}

/// Rows of a scores tile: 3 x 8 accumulators (64 keys in pairs), the 8
/// tile vectors and a broadcast fit the 32 registers.
const SCORE_ROWS: usize = 3;

/// `R` rows against `8 * V` keys: per pair of head elements, the keys' `V`
/// pair vectors of the tile times the rows' broadcast pair of `q`.
///
/// # Safety
/// AVX-512F; `hd` even, `kt` `hd x ATTN_TILE`, `q` `R` rows of `hd`, `out`
/// `R` rows of ATTN_TILE; `V` even.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores_tile<const R: usize, const V: usize>(
    kt: *const f32,
    hd: usize,
    q: *const f32,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: u < hd / 2, 16 * c + 16 <= 16 * V <= 2 * ATTN_TILE, r < R.
    unsafe {
        for u in 0..hd / 2 {
            let mut kv = [_mm512_setzero_ps(); V];
            for (c, x) in kv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(kt.add(u * 2 * ATTN_TILE + 16 * c));
            }
            for (r, ar) in acc.iter_mut().enumerate() {
                let qb = q_pair(q.add(r * hd + 2 * u));
                for (a, x) in ar.iter_mut().zip(&kv) {
                    *a = _mm512_fmadd_ps(qb, *x, *a);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (g, pair) in ar.chunks_exact(2).enumerate() {
                _mm512_storeu_ps(out.add(r * ATTN_TILE + 16 * g), combine(pair[0], pair[1]));
            }
        }
    }
}

fn accumulate<T: Elem>(v: &[T], hd: usize, p: &[f32], lim: &[usize], acc: &mut [f32]) {
    let ok = hd > 0
        && v.len().is_multiple_of(hd)
        && acc.len() == lim.len() * hd
        && p.len() >= lim.len() * ATTN_TILE
        && lim.iter().all(|&n| n <= (v.len() / hd).min(ATTN_TILE));
    if !ok {
        let mut vt = vec![0f32; v.len()];
        vt.iter_mut().zip(v).for_each(|(o, x)| *o = x.widen());
        return reference::accumulate_ref(&vt, hd, p, lim, acc);
    }
    // SAFETY: as above; v holds the lim[r] <= ATTN_TILE value rows each
    // output row reads, p ATTN_TILE weights per row, acc lim.len() rows.
    unsafe { accumulate_k(v, hd, p, lim, acc) }
}

/// # Safety
/// AVX-512F; `v` and `out` of one length.
#[target_feature(enable = "avx512f")]
unsafe fn load_values_k(v: &[f16], out: &mut [f32]) {
    let n = v.len();
    let mut i = 0;
    // SAFETY: i + 16 <= n bounds every load and store.
    unsafe {
        while i + 16 <= n {
            let x = _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().add(i).cast()));
            _mm512_storeu_ps(out.as_mut_ptr().add(i), x);
            i += 16;
        }
    }
    reference::load_values_ref(&v[i..], &mut out[i..]);
}

/// Output columns in chunks of 64 (then 16, then one by one), each over
/// [`ROWS`] rows at a time.
///
/// # Safety
/// AVX-512F; the shapes `accumulate` checked.
#[target_feature(enable = "avx512f")]
unsafe fn accumulate_k<T: Elem>(v: &[T], hd: usize, p: &[f32], lim: &[usize], acc: &mut [f32]) {
    let mut c0 = 0;
    // SAFETY: forwarded; columns c0 + 16 * V <= hd.
    unsafe {
        while c0 + 64 <= hd {
            accumulate_cols::<T, 4>(v, hd, c0, p, lim, acc);
            c0 += 64;
        }
        while c0 + 16 <= hd {
            accumulate_cols::<T, 1>(v, hd, c0, p, lim, acc);
            c0 += 16;
        }
    }
    if c0 < hd {
        for (r, &n) in lim.iter().enumerate() {
            for j in 0..n {
                let w = p[r * ATTN_TILE + j];
                for c in c0..hd {
                    acc[r * hd + c] = w.mul_add(v[j * hd + c].widen(), acc[r * hd + c]);
                }
            }
        }
    }
}

/// # Safety
/// AVX-512F; the shapes `accumulate` checked, `c0 + 16 * V <= hd`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate_cols<T: Elem, const V: usize>(
    v: &[T],
    hd: usize,
    c0: usize,
    p: &[f32],
    lim: &[usize],
    acc: &mut [f32],
) {
    let rows = lim.len();
    let mut r = 0;
    // SAFETY: forwarded; tiles cover rows r.. < rows.
    unsafe {
        let (vp, pp, ap) = (v.as_ptr().add(c0), p.as_ptr(), acc.as_mut_ptr().add(c0));
        while r + ROWS <= rows {
            let at = (pp.add(r * ATTN_TILE), ap.add(r * hd));
            accumulate_tile::<T, ROWS, V>(vp, hd, at.0, &lim[r..r + ROWS], at.1);
            r += ROWS;
        }
        let (pp, ap, lim) = (pp.add(r * ATTN_TILE), ap.add(r * hd), &lim[r..]);
        match rows - r {
            0 => {}
            1 => accumulate_tile::<T, 1, V>(vp, hd, pp, lim, ap),
            2 => accumulate_tile::<T, 2, V>(vp, hd, pp, lim, ap),
            3 => accumulate_tile::<T, 3, V>(vp, hd, pp, lim, ap),
            4 => accumulate_tile::<T, 4, V>(vp, hd, pp, lim, ap),
            _ => accumulate_tile::<T, 5, V>(vp, hd, pp, lim, ap),
        }
    }
}

/// `R` output rows times `16 * V` columns held in registers across the
/// tile's keys: all rows up to the shortest row's keys, then each row on
/// to its own (a token's last tile ends at its position), the same chain.
///
/// # Safety
/// AVX-512F; `v` rows of `hd` from the tile's column, `lim[..R]` keys
/// each (`v` holds them), `p` `R` rows of ATTN_TILE, `acc` `R` rows of
/// `hd` from the column.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate_tile<T: Elem, const R: usize, const V: usize>(
    v: *const T,
    hd: usize,
    p: *const f32,
    lim: &[usize],
    acc: *mut f32,
) {
    let mut a = [[_mm512_setzero_ps(); V]; R];
    let lmin = lim[..R].iter().copied().min().unwrap_or(0);
    // SAFETY: j < lim[r] rows of v, columns 16 * c + 16 <= 16 * V, r < R.
    unsafe {
        for (r, ar) in a.iter_mut().enumerate() {
            for (c, x) in ar.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(acc.add(r * hd + 16 * c));
            }
        }
        for j in 0..lmin {
            let mut x = [_mm512_setzero_ps(); V];
            for (c, xc) in x.iter_mut().enumerate() {
                *xc = load16(v.add(j * hd + 16 * c));
            }
            for (r, ar) in a.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*p.add(r * ATTN_TILE + j));
                for (ac, xc) in ar.iter_mut().zip(&x) {
                    *ac = _mm512_fmadd_ps(w, *xc, *ac);
                }
            }
        }
        for (r, ar) in a.iter_mut().enumerate() {
            for j in lmin..lim[r] {
                let w = _mm512_set1_ps(*p.add(r * ATTN_TILE + j));
                for (c, ac) in ar.iter_mut().enumerate() {
                    *ac = _mm512_fmadd_ps(w, load16(v.add(j * hd + 16 * c)), *ac);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            for (c, x) in ar.iter().enumerate() {
                _mm512_storeu_ps(acc.add(r * hd + 16 * c), *x);
            }
        }
    }
}
