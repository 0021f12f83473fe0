//! AVX2 kernels of the tiled f16 attention (`ops::attention_tiled`), for
//! the client cores without AVX-512 (Zen 3, Haswell..Alder Lake): key and
//! value tiles widened once for all the rows of a unit (tokens times the
//! heads of a group), where the block kernels (`avx2_attn.rs`) re-widened
//! every key and value row for each token of a prefill; outputs as `6 rows
//! x 16 columns` broadcast-FMA gemms over the tile's keys (twelve
//! accumulators, two value vectors and a broadcast take 15 of the 16
//! registers).
//!
//! Scores are the block kernels' own, bit for bit (`KeyTile::Rows`: keys
//! widened as rows, an 8-lane FMA chain per score over the head, the lanes
//! of four keys summed at once by their `reduce_keys`), `3 rows x 4 keys`
//! at a time. The AVX-512 tier's transposed tiles and one FMA chain per
//! score over the head (`KeyTile::Columns`), ported here first, needed no
//! horizontal sums but rounded scores about twice as far from exact over
//! heads of 64 and 256, which the softmax turns into relative error in
//! the weights; the engine's parity suites against llama.cpp (quant_parity
//! Q6_K and Q5_K_M, sliding_window on Gemma 3) failed on it.
//!
//! Every output element is one FMA chain in the reference's order, and
//! the softmax spells `softmax_block_body` (its 16-lane sums included) in
//! the same operations, so these kernels are exact against
//! `ops::attention_tiled::*_ref` whatever the row or key tiling.
//!
//! Soundness: the `unsafe fn`s need AVX2, FMA and F16C; the safe entry
//! points are reached only through the AVX2 table (and the tables built
//! on it), which `super::table` hands out after `super::supports` checked
//! those features, and check the shapes (or fall back to the reference)
//! before the kernels index.

use super::avx2_attn::{self, load8};
use super::{prefetch_line, Elem, AHEAD};
use crate::dispatch::{AttnTileKernels, KeyTile, ValueDot, ATTN_TILE};
use crate::ops::activation::{exp_approx, exp_consts};
use crate::ops::attention_tiled as reference;
use core::arch::x86_64::*;
use half::f16;

/// The table entry.
pub(super) const KERNELS: AttnTileKernels = AttnTileKernels {
    key_tile: KeyTile::Rows,
    load_keys,
    load_values,
    scores,
    softmax,
    value_dot: ValueDot::F32,
    accumulate: accumulate::<f32>,
    scores_f16,
    accumulate_f16: accumulate::<f16>,
};

/// Rows of an accumulate tile: 6 x 2 accumulators of 8 lanes, plus the 2
/// value vectors and a broadcast, fit the 16 registers with one to spare.
const ROWS: usize = 6;

/// Output columns of an accumulate tile: two vectors.
const COLS: usize = 16;

fn load_keys(k: &[f16], hd: usize, col0: usize, kt: &mut [f32]) {
    let ok = hd > 0
        && k.len().is_multiple_of(hd)
        && col0 + k.len() / hd <= ATTN_TILE
        && kt.len() >= hd * ATTN_TILE;
    if !ok {
        return reference::load_keys_ref(KeyTile::Rows, k, hd, col0, kt);
    }
    // SAFETY: AVX2/FMA/F16C were detected before this table was handed
    // out; k's whole rows fit rows col0.. of the tile, both slices hold
    // k.len() values.
    unsafe { load_values_k(k, &mut kt[col0 * hd..col0 * hd + k.len()]) }
}

fn load_values(v: &[f16], out: &mut [f32]) {
    let n = v.len().min(out.len());
    // SAFETY: as above; both slices hold n values.
    unsafe { load_values_k(&v[..n], &mut out[..n]) }
}

fn scores(kt: &[f32], hd: usize, nk: usize, q: &[f32], out: &mut [f32]) {
    let ok = hd > 0
        && q.len().is_multiple_of(hd)
        && (1..=ATTN_TILE).contains(&nk)
        && kt.len() >= hd * ATTN_TILE
        && out.len() >= q.len() / hd * ATTN_TILE;
    if !ok {
        return reference::scores_ref(KeyTile::Rows, kt, hd, nk, q, out);
    }
    // SAFETY: as above; kt holds nk <= ATTN_TILE rows of hd, q whole rows
    // of hd and out ATTN_TILE scores per row.
    unsafe { scores_k(&kt[..nk * hd], hd, q, out) }
}

fn softmax(
    s: &mut [f32],
    lim: &[usize],
    scale: f32,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
) {
    let rows = lim.len();
    let ok = rows > 0
        && m.len() == rows
        && l.len() == rows
        && acc.len().is_multiple_of(rows)
        && s.len() >= rows * ATTN_TILE
        && lim.iter().all(|&n| n <= ATTN_TILE);
    if !ok {
        return reference::softmax_ref(s, lim, scale, m, l, acc);
    }
    // SAFETY: AVX2/FMA/F16C were detected before this table was handed
    // out; s holds ATTN_TILE scores per row, acc rows of acc.len() / rows.
    unsafe { softmax_k(s, lim, scale, m, l, acc) }
}

fn accumulate<T: Elem>(v: &[T], hd: usize, p: &[f32], lim: &[usize], acc: &mut [f32]) {
    if !super::accumulate_fits(v, hd, p, lim, acc) {
        return reference::accumulate_ref(&super::widened(v), hd, p, lim, acc);
    }
    // SAFETY: AVX2/FMA/F16C were detected before this table was handed
    // out; v holds the lim[r] <= ATTN_TILE value rows each output row
    // reads, p ATTN_TILE weights per row, acc lim.len() rows.
    unsafe { accumulate_k(v, hd, p, lim, acc) }
}

fn scores_f16(k: &[f16], hd: usize, q: &[f32], out: &mut [f32]) {
    let ok = hd > 0
        && k.len().is_multiple_of(hd)
        && (1..=ATTN_TILE).contains(&(k.len() / hd))
        && q.len().is_multiple_of(hd)
        && out.len() >= q.len() / hd * ATTN_TILE;
    if !ok {
        return reference::scores_f16_ref(KeyTile::Rows, k, hd, q, out);
    }
    // SAFETY: AVX2/FMA/F16C were detected before this table was handed
    // out; k holds 1..=ATTN_TILE whole rows, q whole rows of hd, out
    // ATTN_TILE scores per row.
    unsafe { scores_k(k, hd, q, out) }
}

/// The transpose of 8 rows of 8: output `c` holds column `c`. Pairs of
/// rows interleave, then pairs of pairs, leaving in 128-bit lane `L` of
/// vector `4h + c` rows `4h..4h + 4` of column `4L + c`; swapping the
/// halves finishes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose8(r: &[__m256; 8]) -> [__m256; 8] {
    let mut t = [_mm256_setzero_ps(); 8];
    for p in 0..4 {
        t[2 * p] = _mm256_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm256_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    let mut u = [_mm256_setzero_ps(); 8];
    for h in 0..2 {
        let (a, b, c, d) = (t[4 * h], t[4 * h + 2], t[4 * h + 1], t[4 * h + 3]);
        u[4 * h] = _mm256_shuffle_ps::<0x44>(a, b);
        u[4 * h + 1] = _mm256_shuffle_ps::<0xEE>(a, b);
        u[4 * h + 2] = _mm256_shuffle_ps::<0x44>(c, d);
        u[4 * h + 3] = _mm256_shuffle_ps::<0xEE>(c, d);
    }
    core::array::from_fn(|c| {
        if c < 4 {
            _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c])
        } else {
            _mm256_permute2f128_ps::<0x31>(u[c - 4], u[c])
        }
    })
}

/// # Safety
/// AVX2/F16C; `v` and `out` of one length.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_values_k(v: &[f16], out: &mut [f32]) {
    let n = v.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds the load and the store.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(i), load8(v.as_ptr().add(i))) };
        i += 8;
    }
    reference::load_values_ref(&v[i..], &mut out[i..]);
}

/// Rows of a scores tile: 3 x 4 accumulators of 8 lanes, the rows' 3
/// query vectors and a key vector fill the 16 registers.
const SCORE_ROWS: usize = 3;

/// Keys of a scores tile: the lanes of four keys' accumulators are summed
/// at once.
const SCORE_KEYS: usize = 4;

/// Scores of every row of `q` against every key row of `k` (widened rows
/// of a tile, or f16 rows of the cache) in `KeyTile::Rows`' order:
/// [`SCORE_ROWS`] rows at a time (four as two and two), each over the keys
/// [`SCORE_KEYS`] at a time, then one at a time, by the block kernels' own
/// tile (`avx2_attn::scores_tile`, its stride here `ATTN_TILE`).
///
/// # Safety
/// AVX2/FMA/F16C; `k` whole rows of `hd`, at most ATTN_TILE; `q` whole
/// rows of `hd`; `out` ATTN_TILE scores per row of `q`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_k<T: Elem>(k: &[T], hd: usize, q: &[f32], out: &mut [f32]) {
    let rows = q.len() / hd;
    let mut r = 0;
    while r < rows {
        let g = match rows - r {
            4 => 2,
            n => n.min(SCORE_ROWS),
        };
        let (q, out) = (&q[r * hd..(r + g) * hd], &mut out[r * ATTN_TILE..]);
        // SAFETY: forwarded; q holds the g rows, out their scores.
        unsafe {
            match g {
                1 => scores_rows::<T, 1>(k, hd, q, out),
                2 => scores_rows::<T, 2>(k, hd, q, out),
                _ => scores_rows::<T, SCORE_ROWS>(k, hd, q, out),
            }
        }
        r += g;
    }
}

/// `G` rows against the `nk` keys, [`SCORE_KEYS`] at a time, then one at
/// a time (the same tree, so a score's bits do not depend on its key's
/// place in the tile).
///
/// # Safety
/// AVX2/FMA/F16C; `k` `nk` rows of `hd`, `q` `G` rows of `hd`, `out` `G`
/// rows of ATTN_TILE, `nk <= ATTN_TILE`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_rows<T: Elem, const G: usize>(k: &[T], hd: usize, q: &[f32], out: &mut [f32]) {
    let nk = k.len() / hd;
    let per_row = (2 * hd).div_ceil(64);
    let mut j = 0;
    // SAFETY: forwarded; the tiles read keys j.. < nk and write scores
    // j.. < nk <= ATTN_TILE of each row.
    unsafe {
        while j + SCORE_KEYS <= nk {
            if T::F16 {
                // a direct decode step's key rows, straight from the cache
                for l in 0..SCORE_KEYS * per_row {
                    prefetch_line(k.as_ptr().cast(), j + AHEAD + l / per_row, hd, l % per_row);
                }
            }
            avx2_attn::scores_tile::<T, G, SCORE_KEYS>(k, hd, q, out, ATTN_TILE, j);
            j += SCORE_KEYS;
        }
        while j < nk {
            avx2_attn::scores_tile::<T, G, 1>(k, hd, q, out, ATTN_TILE, j);
            j += 1;
        }
    }
}

/// Vectors of a tile's row.
const ROW_VECS: usize = ATTN_TILE / 8;

/// The online-softmax step of every row, each in registers from its
/// scores to its weights: `softmax_block_body`'s operations, then
/// `online_softmax_update`'s rescale. Its sum runs in 16 lanes (two
/// vectors, lanes 0..8 and 8..16) over the row's whole chunks of 16, the
/// tail one by one, then the lanes one by one onto the tail: that last
/// fold, 16 dependent adds per row, runs for 8 rows at once, their lanes
/// transposed so that each row's fold is one lane of 16 vector adds (the
/// same adds in the same order, so the same bits). One pass over a row
/// instead of four and no call per row, so that rows overlap.
///
/// # Safety
/// AVX2/FMA/F16C; the shapes `softmax` checked.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_k(
    s: &mut [f32],
    lim: &[usize],
    scale: f32,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
) {
    let hd = acc.len() / lim.len();
    let mut r0 = 0;
    while r0 < lim.len() {
        let rows = (lim.len() - r0).min(8);
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); 8], [_mm256_setzero_ps(); 8]);
        let (mut tails, mut new_m) = ([0f32; 8], [0f32; 8]);
        for i in 0..rows {
            let (r, n) = (r0 + i, lim[r0 + i]);
            let row = &mut s[r * ATTN_TILE..(r + 1) * ATTN_TILE];
            // SAFETY: AVX2/FMA/F16C, as this function's caller promised;
            // n <= ATTN_TILE, the row's length.
            let (mx, lanes, tail) = unsafe {
                if n == ATTN_TILE {
                    softmax_row::<true>(row, n, scale, m[r])
                } else {
                    softmax_row::<false>(row, n, scale, m[r])
                }
            };
            (new_m[i], [lo[i], hi[i]], tails[i]) = (mx, lanes, tail);
        }
        let mut sums = [0f32; 8];
        // SAFETY: `tails` and `sums` hold 8 floats.
        unsafe {
            let mut sum = _mm256_loadu_ps(tails.as_ptr());
            for col in transpose8(&lo).into_iter().chain(transpose8(&hi)) {
                sum = _mm256_add_ps(sum, col);
            }
            _mm256_storeu_ps(sums.as_mut_ptr(), sum);
        }
        for i in 0..rows {
            let r = r0 + i;
            let (m, l) = (&mut m[r], &mut l[r]);
            if new_m[i] > *m && *l > 0.0 {
                let corr = exp_approx(*m - new_m[i]);
                *l *= corr;
                let acc = &mut acc[r * hd..(r + 1) * hd];
                let (vc, mut d) = (_mm256_set1_ps(corr), 0);
                while d + 8 <= acc.len() {
                    // SAFETY: d + 8 <= acc.len() bounds the load and store.
                    unsafe {
                        let p = acc.as_mut_ptr().add(d);
                        _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), vc));
                    }
                    d += 8;
                }
                acc[d..].iter_mut().for_each(|a| *a *= corr);
            }
            *m = new_m[i];
            *l += sums[i];
        }
        r0 += rows;
    }
}

/// One row of [`softmax_k`]: its first `n` scores (all of them when
/// `FULL`, which drops the masks) scaled and turned into weights against
/// the max of them and `prev_max`; returns that max, the 16 lanes of the
/// weights' whole chunks of 16 (summed in order from +0, lanes 0..8 then
/// 8..16) and the sum of the tail past them (one by one from +0).
///
/// The max is taken as a tree: the max of finite values is one value
/// whatever the order, and one set of bits unless it is zero, where the
/// reference's order decides between +0 and -0; a zero max is taken again
/// in that order.
///
/// # Safety
/// AVX2/FMA/F16C; `row` holds ATTN_TILE scores, `n <= ATTN_TILE`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_row<const FULL: bool>(
    row: &mut [f32],
    n: usize,
    scale: f32,
    prev_max: f32,
) -> (f32, [__m256; 2], f32) {
    let sp = row.as_mut_ptr();
    // lanes of vector c below n: all ones there (the sign bit the masked
    // loads and stores read)
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let lim = _mm256_set1_epi32(n as i32);
    let mask: [__m256i; ROW_VECS] = core::array::from_fn(|c| {
        let at = _mm256_add_epi32(idx, _mm256_set1_epi32(8 * c as i32));
        _mm256_cmpgt_epi32(lim, at)
    });
    let vs = _mm256_set1_ps(scale);
    // SAFETY: the loads read 8 floats at 8 * c + 8 <= ATTN_TILE, the
    // row's length; the masked ones only lanes below n.
    let x: [__m256; ROW_VECS] = core::array::from_fn(|c| unsafe {
        let v = if FULL {
            _mm256_loadu_ps(sp.add(8 * c))
        } else {
            _mm256_maskload_ps(sp.add(8 * c), mask[c])
        };
        _mm256_mul_ps(v, vs)
    });
    let mut mx = _mm256_set1_ps(prev_max);
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    for (c, xc) in x.iter().enumerate() {
        let xc = if FULL {
            *xc
        } else {
            _mm256_blendv_ps(ninf, *xc, _mm256_castsi256_ps(mask[c]))
        };
        // `if x > max { x } else { max }`
        mx = _mm256_max_ps(xc, mx);
    }
    mx = _mm256_max_ps(mx, _mm256_permute2f128_ps::<0x01>(mx, mx));
    mx = _mm256_max_ps(mx, _mm256_permute_ps::<0b01_00_11_10>(mx));
    mx = _mm256_max_ps(mx, _mm256_permute_ps::<0b10_11_00_01>(mx));
    let mut new_m = _mm256_cvtss_f32(mx);
    if new_m == 0.0 {
        new_m = max_in_order(&row[..n], scale, prev_max);
    }
    let vm = _mm256_set1_ps(new_m);
    let d: [__m256; ROW_VECS] = core::array::from_fn(|c| _mm256_sub_ps(x[c], vm));
    let mut e = [_mm256_setzero_ps(); ROW_VECS];
    // four chains in lockstep at a time: their state fills the registers
    for (ec, dc) in e.chunks_exact_mut(4).zip(d.chunks_exact(4)) {
        let dc: [__m256; 4] = core::array::from_fn(|i| dc[i]);
        ec.copy_from_slice(&exp8xn(dc));
    }
    for (c, ec) in e.iter().enumerate() {
        // SAFETY: 8 floats at 8 * c + 8 <= ATTN_TILE; the masked store
        // writes only lanes below n.
        unsafe {
            if FULL || 8 * c + 8 <= n {
                _mm256_storeu_ps(sp.add(8 * c), *ec);
            } else if 8 * c < n {
                _mm256_maskstore_ps(sp.add(8 * c), mask[c], *ec);
            }
        }
    }
    let full = n / 16;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for q in 0..full {
        lo = _mm256_add_ps(lo, e[2 * q]);
        hi = _mm256_add_ps(hi, e[2 * q + 1]);
    }
    let mut tail = 0f32;
    if full < ATTN_TILE / 16 {
        let mut t = [0f32; 16];
        // SAFETY: `t` holds 16 floats; 2 * full + 1 < ROW_VECS.
        unsafe {
            _mm256_storeu_ps(t.as_mut_ptr(), e[2 * full]);
            _mm256_storeu_ps(t.as_mut_ptr().add(8), e[2 * full + 1]);
        }
        tail = t[..n - 16 * full].iter().fold(0.0, |a, &v| a + v);
    }
    (new_m, [lo, hi], tail)
}

/// `softmax_block_body`'s max of `x * scale` and `prev_max`, in its order
/// (16 lanes over whole chunks, the tail, then the lanes onto the tail).
fn max_in_order(x: &[f32], scale: f32, prev_max: f32) -> f32 {
    let f = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [prev_max; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = f(*l, v * scale);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(prev_max, |a, &v| f(a, v * scale));
    lanes.into_iter().fold(tail, f)
}

/// `exp_approx` of `N` vectors of 8 lanes in lockstep (independent chains
/// side by side): its operations on its constants (no fused
/// multiply-add), so its bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8xn<const N: usize>(x: [__m256; N]) -> [__m256; N] {
    use exp_consts::*;
    let c = _mm256_set1_ps;
    // f32::clamp: `if x < MIN { MIN }`, then `if x > MAX { MAX }`
    let x = x.map(|x| _mm256_min_ps(c(MAX), _mm256_max_ps(c(MIN), x)));
    let t = x.map(|x| _mm256_add_ps(_mm256_mul_ps(x, c(LOG2E)), c(ROUND)));
    let n = t.map(|t| _mm256_sub_ps(t, c(ROUND)));
    let r: [__m256; N] = core::array::from_fn(|i| {
        let hi = _mm256_sub_ps(x[i], _mm256_mul_ps(n[i], c(LN2_HI)));
        _mm256_sub_ps(hi, _mm256_mul_ps(n[i], c(LN2_LO)))
    });
    let mut p = [c(POLY[0]); N];
    for &k in &POLY[1..] {
        for (p, r) in p.iter_mut().zip(&r) {
            *p = _mm256_add_ps(_mm256_mul_ps(*p, *r), c(k));
        }
    }
    core::array::from_fn(|i| {
        let y = _mm256_mul_ps(_mm256_mul_ps(p[i], r[i]), r[i]);
        let y = _mm256_add_ps(_mm256_add_ps(y, r[i]), c(1.0));
        let k = _mm256_sub_epi32(
            _mm256_castps_si256(t[i]),
            _mm256_set1_epi32(ROUND_BITS as i32),
        );
        let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(two_n))
    })
}

/// Output columns in chunks of [`COLS`] (then 8, then one by one), each
/// over [`ROWS`] rows at a time.
///
/// # Safety
/// AVX2/FMA/F16C; the shapes `accumulate` checked.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_k<T: Elem>(v: &[T], hd: usize, p: &[f32], lim: &[usize], acc: &mut [f32]) {
    let mut c0 = 0;
    // SAFETY: forwarded; columns c0 + 8 * V <= hd.
    unsafe {
        while c0 + COLS <= hd {
            accumulate_cols::<T, 2>(v, hd, c0, p, lim, acc);
            c0 += COLS;
        }
        if c0 + 8 <= hd {
            accumulate_cols::<T, 1>(v, hd, c0, p, lim, acc);
            c0 += 8;
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
/// AVX2/FMA/F16C; the shapes `accumulate` checked, `c0 + 8 * V <= hd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
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

/// `R` output rows times `8 * V` columns held in registers across the
/// tile's keys: all rows up to the shortest row's keys, then each row on
/// to its own (a token's last tile ends at its position), the same chain.
///
/// # Safety
/// AVX2/FMA/F16C; `v` rows of `hd` from the tile's column, `lim[..R]`
/// keys each (`v` holds them), `p` `R` rows of ATTN_TILE, `acc` `R` rows
/// of `hd` from the column.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_tile<T: Elem, const R: usize, const V: usize>(
    v: *const T,
    hd: usize,
    p: *const f32,
    lim: &[usize],
    acc: *mut f32,
) {
    let mut a = [[_mm256_setzero_ps(); V]; R];
    let lmin = lim[..R].iter().copied().min().unwrap_or(0);
    // SAFETY: j < lim[r] rows of v, columns 8 * c + 8 <= 8 * V, r < R.
    unsafe {
        for (r, ar) in a.iter_mut().enumerate() {
            for (c, x) in ar.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(acc.add(r * hd + 8 * c));
            }
        }
        for j in 0..lmin {
            if T::F16 {
                // a direct decode step's value rows, straight from the cache
                for l in 0..(16 * V).div_ceil(64) {
                    prefetch_line(v.cast(), j + AHEAD, hd, l);
                }
            }
            let mut x = [_mm256_setzero_ps(); V];
            for (c, xc) in x.iter_mut().enumerate() {
                *xc = load8(v.add(j * hd + 8 * c));
            }
            for (r, ar) in a.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*p.add(r * ATTN_TILE + j));
                for (ac, xc) in ar.iter_mut().zip(&x) {
                    *ac = _mm256_fmadd_ps(w, *xc, *ac);
                }
            }
        }
        for (r, ar) in a.iter_mut().enumerate() {
            for j in lmin..lim[r] {
                let w = _mm256_broadcast_ss(&*p.add(r * ATTN_TILE + j));
                for (c, ac) in ar.iter_mut().enumerate() {
                    *ac = _mm256_fmadd_ps(w, load8(v.add(j * hd + 8 * c)), *ac);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            for (c, x) in ar.iter().enumerate() {
                _mm256_storeu_ps(acc.add(r * hd + 8 * c), *x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avx2() -> bool {
        super::super::supports(crate::dispatch::Isa::Avx2)
    }

    /// The tile softmax only feeds `exp8xn` inputs <= 0; its upper clamp
    /// and the overflow side of the range reduction are checked here
    /// against the scalar `exp_approx` it spells in intrinsics, bit for
    /// bit, over both clamps and the infinities.
    #[test]
    fn exp8xn_matches_exp_approx_over_both_clamps() {
        if !avx2() {
            return;
        }
        let mut xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.025).collect();
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            exp_consts::MAX,
            exp_consts::MIN,
            f32::MAX,
            f32::MIN,
            0.0,
            -0.0,
        ]);
        xs.resize(xs.len().next_multiple_of(16), 88.5);
        for chunk in xs.chunks(16) {
            let mut got = [0f32; 16];
            // SAFETY: AVX2 was detected; the loads and stores stay in the
            // two 16-element arrays.
            unsafe {
                let x = [
                    _mm256_loadu_ps(chunk.as_ptr()),
                    _mm256_loadu_ps(chunk.as_ptr().add(8)),
                ];
                let y = exp8xn(x);
                _mm256_storeu_ps(got.as_mut_ptr(), y[0]);
                _mm256_storeu_ps(got.as_mut_ptr().add(8), y[1]);
            }
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = exp_approx(x);
                assert!(g.is_finite(), "exp8xn({x}) = {g}");
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "exp8xn({x}) = {g}, exp_approx {want}"
                );
            }
        }
    }

    /// `transpose8` puts column `c` of its rows in output `c`.
    #[test]
    fn transpose8_transposes() {
        if !avx2() {
            return;
        }
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let mut got = [0f32; 64];
        // SAFETY: AVX2 was detected; 8 loads and stores of 8 inside the
        // two 64-element buffers.
        unsafe {
            let r: [__m256; 8] = core::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
            for (c, v) in transpose8(&r).iter().enumerate() {
                _mm256_storeu_ps(got.as_mut_ptr().add(8 * c), *v);
            }
        }
        for c in 0..8 {
            for i in 0..8 {
                assert_eq!(got[8 * c + i], x[8 * i + c], "column {c} row {i}");
            }
        }
    }

    /// A row whose max is zero, with +0 and -0 among its scores (and as
    /// the running max), gets the zero the reference's order picks; the
    /// dispatch tests' random scores never tie at zero.
    #[test]
    fn a_zero_max_has_the_references_sign() {
        if !avx2() {
            return;
        }
        let rows = 6;
        let mut s0 = vec![-1.0f32; rows * ATTN_TILE];
        for (r, row) in s0.chunks_exact_mut(ATTN_TILE).enumerate() {
            // zeros of both signs in the lanes and in the tail
            for (j, x) in row.iter_mut().enumerate() {
                if (j + r) % 5 == 0 {
                    *x = if (j / 5 + r) % 2 == 0 { 0.0 } else { -0.0 };
                }
            }
        }
        let lim = [64usize, 64, 37, 20, 3, 1];
        let prev = [f32::NEG_INFINITY, -0.0, 0.0, -0.0, -2.0, f32::NEG_INFINITY];
        for scale in [1.0f32, -1.0] {
            let (mut sf, mut sw) = (s0.clone(), s0.clone());
            let (mut mf, mut mw) = (prev.to_vec(), prev.to_vec());
            let (mut lf, mut lw) = (vec![1.0f32; rows], vec![1.0f32; rows]);
            let (mut af, mut aw) = (vec![0.5f32; rows * 8], vec![0.5f32; rows * 8]);
            softmax(&mut sf, &lim, scale, &mut mf, &mut lf, &mut af);
            reference::softmax_ref(&mut sw, &lim, scale, &mut mw, &mut lw, &mut aw);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&mf), bits(&mw), "max, scale {scale}");
            assert_eq!(bits(&lf), bits(&lw), "sum, scale {scale}");
            assert_eq!(bits(&af), bits(&aw), "acc, scale {scale}");
            for (r, &n) in lim.iter().enumerate() {
                let at = r * ATTN_TILE;
                assert_eq!(bits(&sf[at..at + n]), bits(&sw[at..at + n]), "row {r}");
            }
        }
    }

    /// `KeyTile::Rows` is what it says: the block kernels' scores, bit for
    /// bit, with and without a head tail past the last 8.
    #[test]
    fn a_rows_score_is_the_block_kernels_score() {
        use crate::quant::test_data::random_row;
        if !avx2() {
            return;
        }
        for hd in [8usize, 44, 64, 256] {
            for (rows, nk) in [(1usize, 64usize), (3, 37), (4, 9), (6, 1)] {
                let k: Vec<f16> = random_row(nk * hd, hd as u64)
                    .into_iter()
                    .map(f16::from_f32)
                    .collect();
                let q = random_row(rows * hd, nk as u64);
                let mut block = vec![0f32; rows * nk];
                avx2_attn::attn_scores(&k, hd, &q, &mut block);
                let mut want = vec![0f32; rows * ATTN_TILE];
                reference::scores_f16_ref(KeyTile::Rows, &k, hd, &q, &mut want);
                for r in 0..rows {
                    for j in 0..nk {
                        let (b, w) = (block[r * nk + j], want[r * ATTN_TILE + j]);
                        assert_eq!(b.to_bits(), w.to_bits(), "hd {hd} row {r} key {j}");
                    }
                }
            }
        }
    }

    /// The tiled path is no further from exact attention than the block
    /// kernels it replaces (the per-head path on the same table), on the
    /// shapes of the default model (9 heads over 3, head 64) and Gemma 3
    /// 270M (4 over 1, head 256), a prefill past a segment boundary. The
    /// engine's parity suites amplify attention's rounding into argmax
    /// flips: scores summed as one FMA chain over the head were about
    /// twice as far from f64 as the block kernels' eight chains, and
    /// failed them (quant_parity Q6_K and Q5_K_M, sliding_window).
    #[test]
    fn the_tiled_path_is_as_close_to_exact_attention_as_the_block_kernels() {
        use crate::dispatch::{table_for, Isa};
        use crate::ops::attention::{attention_kv_with, AttentionParams, KvLayout};
        use crate::ops::KvRows;
        use crate::quant::test_data::random_row;
        if !avx2() {
            return;
        }
        let tiled = table_for(Isa::Avx2).unwrap();
        let block = crate::dispatch::KernelTable {
            attn_tile: None,
            ..*tiled
        };
        let n = 300;
        for (n_head, n_kv_head, hd) in [(9usize, 3usize, 64usize), (4, 1, 256)] {
            let p = AttentionParams {
                n_head,
                n_kv_head,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                softcap: None,
                window: None,
            };
            let half = |x: Vec<f32>| x.into_iter().map(f16::from_f32).collect::<Vec<_>>();
            let k = half(random_row(n_kv_head * n * hd, hd as u64));
            let v = half(random_row(n_kv_head * n * hd, hd as u64 + 1));
            // queries that make peaked softmaxes, as trained heads do
            let q: Vec<f32> = random_row(n * n_head * hd, hd as u64 + 2)
                .iter()
                .map(|x| 2.0 * x)
                .collect();
            let run = |t: &crate::dispatch::KernelTable| {
                let mut out = vec![0f32; q.len()];
                let (kr, vr) = (KvRows::f16(&k), KvRows::f16(&v));
                attention_kv_with(t, &p, &q, kr, vr, KvLayout::linear(n), 0, n, &mut out).unwrap();
                out
            };
            let (got_tiled, got_block) = (run(tiled), run(&block));
            let group = n_head / n_kv_head;
            let (mut e_tiled, mut e_block, mut norm) = (0f64, 0f64, 0f64);
            for t in 0..n {
                for h in 0..n_head {
                    let qh = &q[(t * n_head + h) * hd..][..hd];
                    let rows = |x: &[f16], j: usize| {
                        let at = ((h / group) * n + j) * hd;
                        x[at..at + hd]
                            .iter()
                            .map(|y| y.to_f64())
                            .collect::<Vec<_>>()
                    };
                    let s: Vec<f64> = (0..=t)
                        .map(|j| {
                            let kj = rows(&k, j);
                            let dot: f64 = qh.iter().zip(&kj).map(|(a, b)| *a as f64 * b).sum();
                            dot * p.scale as f64
                        })
                        .collect();
                    let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = w.iter().sum();
                    let mut want = vec![0f64; hd];
                    for (j, wj) in w.iter().enumerate() {
                        for (o, x) in want.iter_mut().zip(rows(&v, j)) {
                            *o += wj / z * x;
                        }
                    }
                    let at = (t * n_head + h) * hd;
                    for (d, x) in want.iter().enumerate() {
                        e_tiled += (got_tiled[at + d] as f64 - x).powi(2);
                        e_block += (got_block[at + d] as f64 - x).powi(2);
                        norm += x * x;
                    }
                }
            }
            let (e_tiled, e_block) = ((e_tiled / norm).sqrt(), (e_block / norm).sqrt());
            assert!(
                e_tiled <= 1.1 * e_block,
                "head {hd}: tiled {e_tiled:.3e} from f64, block kernels {e_block:.3e}"
            );
        }
    }
}
