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

use super::{prefetch_line, Elem, AHEAD};
use crate::dispatch::{AttnTileKernels, KeyTile, ValueDot, ATTN_TILE};
use crate::ops::activation::{exp_approx, exp_consts};
use crate::ops::attention_tiled as reference;
use core::arch::x86_64::*;
use half::f16;

/// The table entry.
pub(super) const KERNELS: AttnTileKernels = AttnTileKernels {
    key_tile: KeyTile::Columns,
    load_keys,
    load_values,
    scores,
    softmax,
    value_dot: ValueDot::F32,
    accumulate: accumulate::<f32>,
    scores_f16,
    accumulate_f16: accumulate::<f16>,
};

/// The table entry on a CPU with AVX-512 BF16: the values multiplied as
/// bf16 pairs (`vdpbf16ps`, twice the products of an f32 FMA), the rest as
/// [`KERNELS`].
pub(super) const KERNELS_BF16: AttnTileKernels = AttnTileKernels {
    value_dot: ValueDot::Bf16Pairs,
    accumulate: accumulate_bf16::<f32>,
    accumulate_f16: accumulate_bf16::<f16>,
    ..KERNELS
};

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

/// Rows of a scores or accumulate tile: 6 x 4 accumulators of 16 lanes,
/// plus the 4 key (or value) vectors and a broadcast, fit the 32 registers.
const ROWS: usize = 6;

fn load_keys(k: &[f16], hd: usize, col0: usize, kt: &mut [f32]) {
    let ok = hd > 0
        && k.len().is_multiple_of(hd)
        && col0 + k.len() / hd <= ATTN_TILE
        && kt.len() >= hd * ATTN_TILE;
    if !ok {
        return reference::load_keys_ref(KeyTile::Columns, k, hd, col0, kt);
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
        && q.len().is_multiple_of(hd)
        && (1..=ATTN_TILE).contains(&nk)
        && kt.len() >= hd * ATTN_TILE
        && out.len() >= q.len() / hd * ATTN_TILE;
    if !ok {
        return reference::scores_ref(KeyTile::Columns, kt, hd, nk, q, out);
    }
    // SAFETY: as above; kt holds hd rows of ATTN_TILE, q whole rows of hd
    // and out ATTN_TILE scores per row.
    unsafe {
        match nk.div_ceil(16) {
            1 => scores_k::<1>(kt, hd, q, out),
            2 => scores_k::<2>(kt, hd, q, out),
            3 => scores_k::<3>(kt, hd, q, out),
            _ => scores_k::<4>(kt, hd, q, out),
        }
    }
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
    // SAFETY: AVX-512F was detected before this table was handed out; s
    // holds ATTN_TILE scores per row, acc rows of acc.len() / rows.
    unsafe { softmax_k(s, lim, scale, m, l, acc) }
}

fn accumulate<T: Elem>(v: &[T], hd: usize, p: &[f32], lim: &[usize], acc: &mut [f32]) {
    if !super::accumulate_fits(v, hd, p, lim, acc) {
        return reference::accumulate_ref(&super::widened(v), hd, p, lim, acc);
    }
    // SAFETY: as above; v holds the lim[r] <= ATTN_TILE value rows each
    // output row reads, p ATTN_TILE weights per row, acc lim.len() rows.
    unsafe { accumulate_k(v, hd, p, lim, acc) }
}

fn scores_f16(k: &[f16], hd: usize, q: &[f32], out: &mut [f32]) {
    let ok = hd > 0
        && k.len().is_multiple_of(hd)
        && (1..=ATTN_TILE).contains(&(k.len() / hd))
        && q.len().is_multiple_of(hd)
        && out.len() >= q.len() / hd * ATTN_TILE;
    if !ok {
        return reference::scores_f16_ref(KeyTile::Columns, k, hd, q, out);
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

/// Scores of `R` rows against 16 keys at a time, each 16 x 16 block of
/// the keys widened and transposed in registers and consumed there (the
/// columns in `d` order: the chain of `scores`); keys past the last 16
/// run as scalar chains, the same operations.
///
/// # Safety
/// AVX-512F; `k` whole rows of `hd`, at most ATTN_TILE; `q` at least `R`
/// rows, `out` `R` rows of ATTN_TILE.
#[target_feature(enable = "avx512f")]
unsafe fn scores_f16_k<const R: usize>(k: &[f16], hd: usize, q: &[f32], out: &mut [f32]) {
    let nk = k.len() / hd;
    let (kp, qp) = (k.as_ptr(), q.as_ptr());
    // the lines of 16 rows ahead, spread over a group's column steps
    let per_row = (2 * hd).div_ceil(64);
    let (lines, steps) = (16 * per_row, hd / 16);
    let mut j = 0;
    while j + 16 <= nk {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut d = 0;
        // SAFETY: loads read 16 values at column d + 16 <= hd of rows j + i
        // < nk, and q[r * hd + d + c] with r < R, d + c < hd.
        unsafe {
            while d + 16 <= hd {
                let s = d / 16;
                for l in s * lines / steps..(s + 1) * lines / steps {
                    prefetch_line(kp, j + AHEAD + l / per_row, hd, l % per_row);
                }
                let mut t = [_mm512_setzero_ps(); 16];
                for (i, x) in t.iter_mut().enumerate() {
                    *x = _mm512_cvtph_ps(_mm256_loadu_si256(kp.add((j + i) * hd + d).cast()));
                }
                for (c, col) in transpose16(&t).iter().enumerate() {
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*qp.add(r * hd + d + c)), *col, *a);
                    }
                }
                d += 16;
            }
        }
        // the head's columns past its last 16, in order
        for c in d..hd {
            let mut col = [0f32; 16];
            for (i, x) in col.iter_mut().enumerate() {
                *x = k[(j + i) * hd + c].to_f32();
            }
            // SAFETY: `col` holds 16 floats.
            let col = unsafe { _mm512_loadu_ps(col.as_ptr()) };
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(q[r * hd + c]), col, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: 16 scores at column j + 16 <= nk <= ATTN_TILE of row r.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(r * ATTN_TILE + j), *a) };
        }
        j += 16;
    }
    for jj in j..nk {
        for r in 0..R {
            let mut s = 0f32;
            for c in 0..hd {
                s = q[r * hd + c].mul_add(k[jj * hd + c].to_f32(), s);
            }
            out[r * ATTN_TILE + jj] = s;
        }
    }
}

/// # Safety
/// AVX-512F; `k` whole rows of `hd` fitting columns `col0..` of `kt`'s
/// `hd x ATTN_TILE`.
#[target_feature(enable = "avx512f")]
unsafe fn load_keys_k(k: &[f16], hd: usize, col0: usize, kt: &mut [f32]) {
    let n = k.len() / hd;
    let (kp, tp) = (k.as_ptr(), kt.as_mut_ptr());
    let mut j = 0;
    while j + 16 <= n {
        let mut d = 0;
        // SAFETY: the loads read 16 values at column d + 16 <= hd of rows
        // j + i < n; the stores write 16 columns col0 + j.. + 16 <=
        // ATTN_TILE of tile rows d + i < hd.
        unsafe {
            while d + 16 <= hd {
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, x) in r.iter_mut().enumerate() {
                    *x = _mm512_cvtph_ps(_mm256_loadu_si256(kp.add((j + i) * hd + d).cast()));
                }
                for (i, x) in transpose16(&r).iter().enumerate() {
                    _mm512_storeu_ps(tp.add((d + i) * ATTN_TILE + col0 + j), *x);
                }
                d += 16;
            }
        }
        // the head's columns past its last 16
        for i in j..j + 16 {
            for c in d..hd {
                kt[c * ATTN_TILE + col0 + i] = k[i * hd + c].to_f32();
            }
        }
        j += 16;
    }
    reference::load_keys_ref(KeyTile::Columns, &k[j * hd..], hd, col0 + j, kt);
}

/// The transpose of 16 rows of 16: output `c` holds column `c`. Pairs of
/// rows interleave, then pairs of pairs, leaving in each 128-bit lane `L`
/// of vector `4q + c` rows `4q..4q + 4` of column `4L + c`; a 4 x 4
/// transpose of those lanes finishes.
///
/// # Safety
/// AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let pd = |x: __m512| _mm512_castps_pd(x);
        let (a, b, c, d) = (
            pd(t[4 * q]),
            pd(t[4 * q + 2]),
            pd(t[4 * q + 1]),
            pd(t[4 * q + 3]),
        );
        u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let (a, b, cc, d) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
        let x0 = _mm512_shuffle_f32x4::<0x44>(a, b);
        let x1 = _mm512_shuffle_f32x4::<0xEE>(a, b);
        let y0 = _mm512_shuffle_f32x4::<0x44>(cc, d);
        let y1 = _mm512_shuffle_f32x4::<0xEE>(cc, d);
        out[c] = _mm512_shuffle_f32x4::<0x88>(x0, y0);
        out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(x0, y0);
        out[8 + c] = _mm512_shuffle_f32x4::<0x88>(x1, y1);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(x1, y1);
    }
    out
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

/// Scores of the first `16 * V` keys for every row of `q`, [`ROWS`] rows
/// at a time.
///
/// # Safety
/// AVX-512F; `kt` `hd x ATTN_TILE`, `q` whole rows of `hd`, `out`
/// ATTN_TILE per row.
#[target_feature(enable = "avx512f")]
unsafe fn scores_k<const V: usize>(kt: &[f32], hd: usize, q: &[f32], out: &mut [f32]) {
    let rows = q.len() / hd;
    let (kp, qp, op) = (kt.as_ptr(), q.as_ptr(), out.as_mut_ptr());
    let mut r = 0;
    // SAFETY: forwarded; each tile reads rows r.. < rows of q and writes
    // the same rows of out.
    unsafe {
        while r + ROWS <= rows {
            scores_tile::<ROWS, V>(kp, hd, qp.add(r * hd), op.add(r * ATTN_TILE));
            r += ROWS;
        }
        let (qp, op) = (qp.add(r * hd), op.add(r * ATTN_TILE));
        match rows - r {
            0 => {}
            1 => scores_tile::<1, V>(kp, hd, qp, op),
            2 => scores_tile::<2, V>(kp, hd, qp, op),
            3 => scores_tile::<3, V>(kp, hd, qp, op),
            4 => scores_tile::<4, V>(kp, hd, qp, op),
            _ => scores_tile::<5, V>(kp, hd, qp, op),
        }
    }
}

/// `R` rows against `16 * V` keys: per head element `d`, the keys' `V`
/// vectors of the transposed tile times the rows' broadcast `q[d]`.
///
/// # Safety
/// AVX-512F; `kt` `hd x ATTN_TILE`, `q` `R` rows of `hd`, `out` `R` rows
/// of ATTN_TILE.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores_tile<const R: usize, const V: usize>(
    kt: *const f32,
    hd: usize,
    q: *const f32,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: d < hd, 16 * c + 16 <= 16 * V <= ATTN_TILE, r < R.
    unsafe {
        for d in 0..hd {
            let mut kv = [_mm512_setzero_ps(); V];
            for (c, x) in kv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(kt.add(d * ATTN_TILE + 16 * c));
            }
            for (r, ar) in acc.iter_mut().enumerate() {
                let qb = _mm512_set1_ps(*q.add(r * hd + d));
                for (a, x) in ar.iter_mut().zip(&kv) {
                    *a = _mm512_fmadd_ps(qb, *x, *a);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (c, a) in ar.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * ATTN_TILE + 16 * c), *a);
            }
        }
    }
}

/// The online-softmax step of every row, each in registers from its
/// scores to its weights: `softmax_block_body`'s operations in its order,
/// then `online_softmax_update`'s rescale. Its max is order-free; its sum
/// is 16 lanes over the row's whole vectors, the tail one by one, then
/// the lanes one by one onto the tail: that last fold, 16 dependent adds
/// per row, runs for 16 rows at once, their lanes transposed so that each
/// row's fold is one lane of 16 vector adds (the same adds in the same
/// order, so the same bits). One pass over a row instead of four and no
/// call per row, so that rows overlap; a row's four exponentials run in
/// lockstep.
///
/// # Safety
/// AVX-512F; the shapes `softmax` checked.
#[target_feature(enable = "avx512f")]
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
        let rows = (lim.len() - r0).min(16);
        let mut lanes = [_mm512_setzero_ps(); 16];
        let (mut tails, mut new_m) = ([0f32; 16], [0f32; 16]);
        for i in 0..rows {
            let (r, n) = (r0 + i, lim[r0 + i]);
            let row = &mut s[r * ATTN_TILE..(r + 1) * ATTN_TILE];
            // SAFETY: AVX-512F, as this function's caller promised; n <=
            // ATTN_TILE, the row's length.
            let (mx, ln, tail) = unsafe {
                if n == ATTN_TILE {
                    softmax_row::<true>(row, n, scale, m[r])
                } else {
                    softmax_row::<false>(row, n, scale, m[r])
                }
            };
            (new_m[i], lanes[i], tails[i]) = (mx, ln, tail);
        }
        let mut sums = [0f32; 16];
        // SAFETY: AVX-512F; `tails` and `sums` hold 16 floats.
        unsafe {
            let mut sum = _mm512_loadu_ps(tails.as_ptr());
            for col in transpose16(&lanes) {
                sum = _mm512_add_ps(sum, col);
            }
            _mm512_storeu_ps(sums.as_mut_ptr(), sum);
        }
        for i in 0..rows {
            let r = r0 + i;
            let (m, l) = (&mut m[r], &mut l[r]);
            if new_m[i] > *m && *l > 0.0 {
                let corr = exp_approx(*m - new_m[i]);
                *l *= corr;
                let acc = &mut acc[r * hd..(r + 1) * hd];
                let (vc, mut d) = (_mm512_set1_ps(corr), 0);
                // SAFETY: d + 16 <= acc.len() bounds each load and store.
                unsafe {
                    while d + 16 <= acc.len() {
                        let p = acc.as_mut_ptr().add(d);
                        _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_loadu_ps(p), vc));
                        d += 16;
                    }
                }
                acc[d..].iter_mut().for_each(|a| *a *= corr);
            }
            *m = new_m[i];
            *l += sums[i];
        }
        r0 += rows;
    }
}

/// Vectors of a tile's row.
const ROW_VECS: usize = ATTN_TILE / 16;

/// One row of [`softmax_k`]: its first `n` scores (all of them when
/// `FULL`, which drops the masks) scaled and turned into weights against
/// the max of them and `prev_max`; returns that max, the 16 lanes of the
/// weights' whole vectors (summed in order from +0) and the sum of the
/// tail past them (one by one from +0).
///
/// # Safety
/// AVX-512F; `row` holds ATTN_TILE scores, `n <= ATTN_TILE`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row<const FULL: bool>(
    row: &mut [f32],
    n: usize,
    scale: f32,
    prev_max: f32,
) -> (f32, __m512, f32) {
    let sp = row.as_mut_ptr();
    // lanes of vector c below n
    let mask: [__mmask16; ROW_VECS] = core::array::from_fn(|c| {
        let k = if FULL {
            16
        } else {
            n.saturating_sub(16 * c).min(16)
        };
        ((1u32 << k) - 1) as __mmask16
    });
    // SAFETY: the masked lanes stay below n <= ATTN_TILE.
    let x: [__m512; ROW_VECS] = core::array::from_fn(|c| unsafe {
        _mm512_mul_ps(
            _mm512_maskz_loadu_ps(mask[c], sp.add(16 * c)),
            _mm512_set1_ps(scale),
        )
    });
    let mut mx = _mm512_set1_ps(prev_max);
    for (c, xc) in x.iter().enumerate() {
        // `if x > max { x } else { max }` on the row's lanes
        mx = _mm512_mask_max_ps(mx, mask[c], *xc, mx);
    }
    mx = _mm512_max_ps(mx, _mm512_shuffle_f32x4::<0b01_00_11_10>(mx, mx));
    mx = _mm512_max_ps(mx, _mm512_shuffle_f32x4::<0b10_11_00_01>(mx, mx));
    mx = _mm512_max_ps(mx, _mm512_permute_ps::<0b01_00_11_10>(mx));
    mx = _mm512_max_ps(mx, _mm512_permute_ps::<0b10_11_00_01>(mx));
    let new_m = _mm512_cvtss_f32(mx);
    let vm = _mm512_set1_ps(new_m);
    // SAFETY: AVX-512F, as this function's caller promised.
    let e = unsafe { exp16xn(x.map(|xc| _mm512_sub_ps(xc, vm))) };
    let full = n / 16;
    let (mut lanes, mut tail) = (_mm512_setzero_ps(), [0f32; 16]);
    for (c, ec) in e.iter().enumerate() {
        // SAFETY: the masked lanes stay below n; `tail` holds 16.
        unsafe {
            _mm512_mask_storeu_ps(sp.add(16 * c), mask[c], *ec);
            if c < full {
                lanes = _mm512_add_ps(lanes, *ec);
            } else if c == full {
                _mm512_storeu_ps(tail.as_mut_ptr(), *ec);
            }
        }
    }
    let tail = tail[..n - 16 * full].iter().fold(0.0, |a, &v| a + v);
    (new_m, lanes, tail)
}

/// `exp_approx` of `N` vectors of 16 lanes in lockstep (independent
/// chains side by side): its operations on its constants, so its bits.
///
/// # Safety
/// AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp16xn<const N: usize>(x: [__m512; N]) -> [__m512; N] {
    use exp_consts::*;
    let c = _mm512_set1_ps;
    // f32::clamp: `if x < MIN { MIN }`, then `if x > MAX { MAX }`
    let x = x.map(|x| _mm512_min_ps(c(MAX), _mm512_max_ps(c(MIN), x)));
    let t = x.map(|x| _mm512_add_ps(_mm512_mul_ps(x, c(LOG2E)), c(ROUND)));
    let n = t.map(|t| _mm512_sub_ps(t, c(ROUND)));
    let r: [__m512; N] = core::array::from_fn(|i| {
        let hi = _mm512_sub_ps(x[i], _mm512_mul_ps(n[i], c(LN2_HI)));
        _mm512_sub_ps(hi, _mm512_mul_ps(n[i], c(LN2_LO)))
    });
    let mut p = [c(POLY[0]); N];
    for &k in &POLY[1..] {
        for (p, r) in p.iter_mut().zip(&r) {
            *p = _mm512_add_ps(_mm512_mul_ps(*p, *r), c(k));
        }
    }
    core::array::from_fn(|i| {
        let y = _mm512_mul_ps(_mm512_mul_ps(p[i], r[i]), r[i]);
        let y = _mm512_add_ps(_mm512_add_ps(y, r[i]), c(1.0));
        let k = _mm512_sub_epi32(
            _mm512_castps_si512(t[i]),
            _mm512_set1_epi32(ROUND_BITS as i32),
        );
        let two_n = _mm512_slli_epi32::<23>(_mm512_add_epi32(k, _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(two_n))
    })
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
            if T::F16 {
                // a direct decode step's value rows, straight from the cache
                for l in 0..(32 * V).div_ceil(64) {
                    prefetch_line(v.cast(), j + AHEAD, hd, l);
                }
            }
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

fn accumulate_bf16<T: Elem>(v: &[T], hd: usize, p: &[f32], lim: &[usize], acc: &mut [f32]) {
    if !super::accumulate_fits(v, hd, p, lim, acc) {
        return reference::accumulate_bf16_ref(&super::widened(v), hd, p, lim, acc);
    }
    crate::scratch::with_scratch(&BF16_SCRATCH, |scratch| {
        // SAFETY: AVX-512F, BW and BF16 were detected before this table
        // was handed out; the shapes are checked above.
        unsafe { accumulate_bf16_k(v, hd, p, lim, acc, scratch) }
    })
}

/// The value pairs and weight pairs of [`accumulate_bf16`], kept by each
/// thread for its next call.
#[derive(Default)]
struct Bf16Scratch {
    /// `[pair][column]`: `bf16(v_2i[d]) | bf16(v_2i+1[d]) << 16` over the
    /// head's whole 16s of columns.
    vp: Vec<u32>,
    /// `[row][pair]`: `bf16(p_2i) | bf16(p_2i+1) << 16`, zero past the
    /// row's keys.
    pp: Vec<u32>,
}

thread_local! {
    static BF16_SCRATCH: std::cell::RefCell<Bf16Scratch> = std::cell::RefCell::default();
}

/// Pairs of a tile's keys.
const PAIRS: usize = ATTN_TILE / 2;

/// The weights packed as bf16 pairs, and the values too when many rows
/// share them (a few rows, a decode step's, pair them in registers straight
/// from the cache instead: the same pairs), then the rows' outputs as
/// `rows x head` gemms of `vdpbf16ps` over the pairs; columns past the
/// head's last 16 as the reference does them.
///
/// # Safety
/// AVX-512F, BW and BF16; the shapes `accumulate_bf16` checked.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn accumulate_bf16_k<T: Elem>(
    v: &[T],
    hd: usize,
    p: &[f32],
    lim: &[usize],
    acc: &mut [f32],
    scratch: &mut Bf16Scratch,
) {
    let rows = lim.len();
    let pairs = lim.iter().copied().max().unwrap_or(0).div_ceil(2);
    let hv = hd / 16 * 16;
    let direct = T::F16 && rows <= ROWS;
    if !direct && scratch.vp.len() < pairs * hv {
        scratch.vp.resize(pairs * hv, 0);
    }
    if scratch.pp.len() < rows * PAIRS {
        scratch.pp.resize(rows * PAIRS, 0);
    }
    let (vp, pp) = (scratch.vp.as_mut_ptr(), scratch.pp.as_mut_ptr());
    // element 2c of a pair vector is the even key's column c, 2c + 1 the
    // odd key's: the order `vdpbf16ps` pairs them in
    let inter: [i16; 32] = core::array::from_fn(|k| (k / 2 + 16 * (k % 2)) as i16);
    // SAFETY: the value rows below nv are read at columns c + 16 <= hv <=
    // hd; vp holds pairs x hv when packed, pp rows x PAIRS; p ATTN_TILE
    // per row, read under the row's mask (below lim[r] <= ATTN_TILE).
    unsafe {
        let src = PairSrc {
            vp,
            hv,
            v: v.as_ptr(),
            hd,
            nv: v.len() / hd,
            idx: _mm512_loadu_si512(inter.as_ptr().cast()),
        };
        if !direct {
            for i in 0..pairs {
                for c in 0..hv / 16 {
                    let pair = pair_vec::<T, true>(&src, i, c);
                    _mm512_storeu_si512(vp.add(i * hv + 16 * c).cast(), pair);
                }
            }
        }
        for (r, &n) in lim.iter().enumerate() {
            for h in 0..2 {
                let k0 = 32 * h;
                let m0 = ((1u32 << n.saturating_sub(k0).min(16)) - 1) as __mmask16;
                let m1 = ((1u32 << n.saturating_sub(k0 + 16).min(16)) - 1) as __mmask16;
                let a = _mm512_maskz_loadu_ps(m0, p.as_ptr().add(r * ATTN_TILE + k0));
                let b = _mm512_maskz_loadu_ps(m1, p.as_ptr().add(r * ATTN_TILE + k0 + 16));
                let w = ih(_mm512_cvtne2ps_pbh(b, a));
                _mm512_storeu_si512(pp.add(r * PAIRS + 16 * h).cast(), w);
            }
        }
        let mut c0 = 0;
        let ap = acc.as_mut_ptr();
        while c0 + 64 <= hv {
            match direct {
                true => accumulate_bf16_cols::<T, true, 4>(src.at(c0), pp, lim, ap.add(c0)),
                false => accumulate_bf16_cols::<T, false, 4>(src.at(c0), pp, lim, ap.add(c0)),
            }
            c0 += 64;
        }
        while c0 + 16 <= hv {
            match direct {
                true => accumulate_bf16_cols::<T, true, 1>(src.at(c0), pp, lim, ap.add(c0)),
                false => accumulate_bf16_cols::<T, false, 1>(src.at(c0), pp, lim, ap.add(c0)),
            }
            c0 += 16;
        }
    }
    if hv < hd {
        let value = |i: usize| v[i].widen();
        reference::accumulate_bf16_cols(value, v.len() / hd, hd, p, lim, acc, hv..hd);
    }
}

/// Where a tile's value pairs come from, from one column on: the packed
/// pairs (`vp`, rows of `hv`), or the value rows themselves (`v`, `nv`
/// rows of `hd`) paired in registers.
#[derive(Clone, Copy)]
struct PairSrc<T> {
    vp: *const u32,
    hv: usize,
    v: *const T,
    hd: usize,
    nv: usize,
    /// The interleave of two rows' 16 bf16 into pairs.
    idx: __m512i,
}

impl<T> PairSrc<T> {
    /// The same from column `c0` on.
    fn at(self, c0: usize) -> Self {
        PairSrc {
            vp: self.vp.wrapping_add(c0),
            v: self.v.wrapping_add(c0),
            ..self
        }
    }
}

/// Pair `i`'s vector at columns `16 c..16 c + 16`: from the rows when
/// `FROM_ROWS` (keys `2i` and `2i + 1`, a missing odd one as zeros), else
/// the packed one.
///
/// # Safety
/// AVX-512F, BW and BF16; rows `2i` (and `2i + 1` if below `nv`) hold the
/// 16 columns, or the packed pairs hold pair `i` there.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pair_vec<T: Elem, const FROM_ROWS: bool>(s: &PairSrc<T>, i: usize, c: usize) -> __m512i {
    // SAFETY: forwarded from the caller.
    unsafe {
        if FROM_ROWS {
            let (j0, j1) = (2 * i, 2 * i + 1);
            let x0 = load16(s.v.add(j0 * s.hd + 16 * c));
            let x1 = if j1 < s.nv {
                load16(s.v.add(j1 * s.hd + 16 * c))
            } else {
                _mm512_setzero_ps()
            };
            _mm512_permutexvar_epi16(s.idx, ih(_mm512_cvtne2ps_pbh(x1, x0)))
        } else {
            _mm512_loadu_si512(s.vp.add(i * s.hv + 16 * c).cast())
        }
    }
}

/// [`ROWS`] rows at a time over `16 * V` columns (`DIRECT`: the pairs
/// from the value rows).
///
/// # Safety
/// AVX-512F, BW and BF16; `src` from the column, `pp` the packed weights,
/// `acc` `lim.len()` rows of `hd` from the column, `16 * V` columns there.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn accumulate_bf16_cols<T: Elem, const DIRECT: bool, const V: usize>(
    src: PairSrc<T>,
    pp: *const u32,
    lim: &[usize],
    acc: *mut f32,
) {
    let (rows, hd) = (lim.len(), src.hd);
    let mut r = 0;
    // SAFETY: forwarded; tiles cover rows r.. < rows.
    unsafe {
        while r + ROWS <= rows {
            let (pr, ar) = (pp.add(r * PAIRS), acc.add(r * hd));
            accumulate_bf16_tile::<T, DIRECT, ROWS, V>(&src, pr, &lim[r..r + ROWS], ar);
            r += ROWS;
        }
        let (pr, ar, lim) = (pp.add(r * PAIRS), acc.add(r * hd), &lim[r..]);
        match rows - r {
            0 => {}
            1 => accumulate_bf16_tile::<T, DIRECT, 1, V>(&src, pr, lim, ar),
            2 => accumulate_bf16_tile::<T, DIRECT, 2, V>(&src, pr, lim, ar),
            3 => accumulate_bf16_tile::<T, DIRECT, 3, V>(&src, pr, lim, ar),
            4 => accumulate_bf16_tile::<T, DIRECT, 4, V>(&src, pr, lim, ar),
            _ => accumulate_bf16_tile::<T, DIRECT, 5, V>(&src, pr, lim, ar),
        }
    }
}

/// `R` output rows times `16 * V` columns held in registers across the
/// pairs all rows have, then each row on to its own, its odd last key
/// with the pair's other value cleared (its weight is zero already).
///
/// # Safety
/// As [`accumulate_bf16_cols`], for `R` rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn accumulate_bf16_tile<T: Elem, const DIRECT: bool, const R: usize, const V: usize>(
    src: &PairSrc<T>,
    pp: *const u32,
    lim: &[usize],
    acc: *mut f32,
) {
    let hd = src.hd;
    let mut a = [[_mm512_setzero_ps(); V]; R];
    let common = lim[..R].iter().map(|&n| n / 2).min().unwrap_or(0);
    // SAFETY: pairs below lim[r].div_ceil(2) <= the packed pairs (rows
    // below lim[r] <= nv), columns 16 * c + 16 <= 16 * V, rows r < R.
    unsafe {
        for (r, ar) in a.iter_mut().enumerate() {
            for (c, x) in ar.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(acc.add(r * hd + 16 * c));
            }
        }
        for i in 0..common {
            if DIRECT && T::F16 {
                // a decode step's value rows, straight from the cache
                for l in 0..(32 * V).div_ceil(64) {
                    prefetch_line(src.v.cast(), 2 * i + AHEAD, hd, l);
                    prefetch_line(src.v.cast(), 2 * i + 1 + AHEAD, hd, l);
                }
            }
            let mut x = [bh(_mm512_setzero_si512()); V];
            for (c, xc) in x.iter_mut().enumerate() {
                *xc = bh(pair_vec::<T, DIRECT>(src, i, c));
            }
            for (r, ar) in a.iter_mut().enumerate() {
                let w = bh(_mm512_set1_epi32(*pp.add(r * PAIRS + i) as i32));
                for (ac, xc) in ar.iter_mut().zip(&x) {
                    *ac = _mm512_dpbf16_ps(*ac, *xc, w);
                }
            }
        }
        let even = _mm512_set1_epi32(0xFFFF);
        for (r, ar) in a.iter_mut().enumerate() {
            let n = lim[r];
            for i in common..n.div_ceil(2) {
                let w = bh(_mm512_set1_epi32(*pp.add(r * PAIRS + i) as i32));
                // a lone last key: the pair's odd value cleared
                let keep = if 2 * i + 1 < n {
                    _mm512_set1_epi32(-1)
                } else {
                    even
                };
                for (c, ac) in ar.iter_mut().enumerate() {
                    let x = pair_vec::<T, DIRECT>(src, i, c);
                    *ac = _mm512_dpbf16_ps(*ac, bh(_mm512_and_si512(x, keep)), w);
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

/// A vector's 32 bf16, as the bits are.
#[inline(always)]
fn bh(x: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain bits.
    unsafe { core::mem::transmute::<__m512i, __m512bh>(x) }
}

/// A vector's bits, from its 32 bf16.
#[inline(always)]
fn ih(x: __m512bh) -> __m512i {
    // SAFETY: as above.
    unsafe { core::mem::transmute::<__m512bh, __m512i>(x) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tile softmax only feeds `exp16xn` inputs <= 0; its upper clamp
    /// and the overflow side of the range reduction are checked here
    /// against the scalar `exp_approx` it spells in intrinsics, bit for
    /// bit, over both clamps and the infinities.
    #[test]
    fn exp16xn_matches_exp_approx_over_both_clamps() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
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
        xs.resize(xs.len().next_multiple_of(32), 88.5);
        for chunk in xs.chunks(32) {
            let mut got = [0f32; 32];
            // SAFETY: AVX-512F was detected; the loads and stores stay in
            // the two 32-element arrays.
            unsafe {
                let x = [
                    _mm512_loadu_ps(chunk.as_ptr()),
                    _mm512_loadu_ps(chunk.as_ptr().add(16)),
                ];
                let y = exp16xn(x);
                _mm512_storeu_ps(got.as_mut_ptr(), y[0]);
                _mm512_storeu_ps(got.as_mut_ptr().add(16), y[1]);
            }
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = exp_approx(x);
                assert!(g.is_finite(), "exp16xn({x}) = {g}");
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "exp16xn({x}) = {g}, exp_approx {want}"
                );
            }
        }
    }
}
