//! AVX-512 (F/BW/VL) kernels for the legacy quants (Q4_0, Q4_1, Q8_0 against
//! their 8-bit activation types), written once as a macro that this tier
//! instantiates with `vpmaddubsw` + `vpmaddwd` and the VNNI tier (`vnni.rs`)
//! with `vpdpbusd`: the two differ only in the 4-byte dot step `dot4`.
//!
//! Two shapes of kernel:
//!
//! * **single dots** (the `vec_dot` entries): two blocks per 512-bit register,
//!   codes of both blocks interleaved so one `dot4` covers 64 products; the
//!   per-block scales are applied to float lanes.
//! * **gemm** (the `*_gemm` entries, used by `ops::matmul` for decode and
//!   prefill): up to 16 weight rows are repacked, with gathers, into a
//!   "lane per row" panel where 32-bit lane `r` holds 4 codes of row `r`.
//!   A block of 16 rows becomes 8 registers; each activation column
//!   contributes 4 codes at a time as a broadcast, so after 8 `dot4` steps
//!   lane `r` holds the block's exact integer dot for row `r` and the scales
//!   apply once per block for 16 rows, with no horizontal sums. The panel is
//!   built once per 16 rows and reused for every column (prefill), up to 8
//!   columns in registers at a time. `dot4` takes unsigned codes, so Q4_0
//!   codes stay in 0..16 and Q8_0 codes are offset by 128; the offset times
//!   the activation code sum is taken off in integers before the scale
//!   (exact), and Q4_1's minimum goes through the activation's `s` as in the
//!   reference.
//!
//! Soundness: the `unsafe fn`s need the features named in their
//! `#[target_feature]`. The safe wrappers are private and reach callers only
//! through the tier's `overrides`, which `super::table` calls after
//! `super::supports` checked those features at run time. Gathers and stores
//! are masked to the rows that exist, and every address is inside the given
//! slices (checked by the wrappers before the first load).

use crate::dispatch::{AttnBlockKernels, Isa, KernelTable, WeightRow};
use core::arch::x86_64::*;

pub(super) fn overrides(t: KernelTable) -> KernelTable {
    KernelTable {
        isa: Isa::Avx512,
        q4_0: WeightRow {
            dot: kernels::q4_0_q8_0,
            gemm: Some(kernels::q4_0_q8_0_gemm),
            x16: Some(kernels::q4_0_q8_0_x16),
        },
        q4_1: WeightRow {
            dot: kernels::q4_1_q8_1,
            gemm: Some(kernels::q4_1_q8_1_gemm),
            x16: Some(kernels::q4_1_q8_1_x16),
        },
        // Offset Q8_0 codes (up to 255) times activations overflow the
        // saturating i16 pairs of `vpmaddubsw`; the VNNI tier has the gemm
        // and x16 entries.
        q8_0: WeightRow {
            dot: kernels::q8_0_q8_0,
            gemm: None,
            x16: None,
        },
        q5_0: WeightRow {
            dot: lowbit::q5_0_q8_0,
            gemm: Some(kernels::q5_0_q8_0_gemm),
            x16: Some(kernels::q5_0_q8_0_x16),
        },
        q4_k: WeightRow {
            gemm: Some(kquant::q4_k_gemm),
            x16: Some(kquant::q4_k_x16),
            ..t.q4_k
        },
        q5_k: WeightRow {
            gemm: Some(kquant::q5_k_gemm),
            x16: Some(kquant::q5_k_x16),
            ..t.q5_k
        },
        q6_k: WeightRow {
            dot: kernels::q6_k_q8_k,
            gemm: Some(kquant::q6_k_gemm),
            x16: Some(kquant::q6_k_x16),
        },
        q5_1: WeightRow {
            dot: lowbit::q5_1_q8_1,
            ..t.q5_1
        },
        iq4_nl: WeightRow {
            dot: lowbit::iq4_nl_q8_0,
            ..t.iq4_nl
        },
        q2_k: WeightRow {
            dot: lowbit::q2_k_q8_k,
            ..t.q2_k
        },
        q3_k: WeightRow {
            dot: lowbit::q3_k_q8_k,
            ..t.q3_k
        },
        iq4_xs: WeightRow {
            dot: lowbit::iq4_xs_q8_k,
            ..t.iq4_xs
        },
        f16: WeightRow {
            dot: float::f16_f32,
            ..t.f16
        },
        axpy_f16: float::axpy_f16,
        attn_block: Some(AttnBlockKernels {
            scores: float::attn_scores,
            accumulate: float::attn_accumulate,
        }),
        attn_tile: Some(super::attn_tile_avx512()),
        softmax_block: float::softmax_block,
        silu_mul: float::silu_mul,
        gelu_tanh_mul: float::gelu_tanh_mul,
        ..t
    }
}

/// Float kernels at 16 lanes: attention's f16 KV-cache dot and axpy, and
/// the gated activations (the portable bodies of `ops::activation` compiled
/// for AVX-512, bit-identical to the scalar table).
mod float {
    use crate::ops::{activation, attention};
    use crate::quant::float as reference;
    use core::arch::x86_64::*;
    use half::f16;

    pub(super) fn f16_f32(w: &[f16], a: &[f32]) -> f32 {
        let n = w.len().min(a.len());
        // SAFETY: AVX-512F was detected before this table was handed out; both slices hold n values.
        unsafe { f16_f32_k(&w[..n], &a[..n]) }
    }
    pub(super) fn axpy_f16(alpha: f32, x: &[f16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: as above.
        unsafe { axpy_f16_k(alpha, &x[..n], &mut y[..n]) }
    }
    /// Query heads one kernel call keeps in registers.
    const MAX_HEADS: usize = 4;

    use super::super::avx2_attn::whole_rows;

    pub(super) fn attn_scores(k: &[f16], hd: usize, q: &[f32], out: &mut [f32]) {
        let Some(nk) = whole_rows(hd, k, q, out) else {
            // Not whole rows: the reference does what it can without panicking.
            return reference::attn_scores_f16(k, hd, q, out);
        };
        for (qs, os) in q.chunks(MAX_HEADS * hd).zip(out.chunks_mut(MAX_HEADS * nk)) {
            // SAFETY: AVX-512F was detected before this table was handed out;
            // k holds nk rows of hd, qs holds g rows of hd and os g * nk scores.
            unsafe {
                match qs.len() / hd {
                    1 => attn_scores_k::<1, 16>(k, hd, qs, os),
                    2 => attn_scores_k::<2, 8>(k, hd, qs, os),
                    3 => attn_scores_k::<3, 4>(k, hd, qs, os),
                    _ => attn_scores_k::<4, 4>(k, hd, qs, os),
                }
            }
        }
    }

    pub(super) fn attn_accumulate(v: &[f16], hd: usize, p: &[f32], acc: &mut [f32]) {
        let Some(nk) = whole_rows(hd, v, acc, p) else {
            return reference::attn_accumulate_f16(v, hd, p, acc);
        };
        for (ps, accs) in p.chunks(MAX_HEADS * nk).zip(acc.chunks_mut(MAX_HEADS * hd)) {
            // SAFETY: as above; v holds nk rows of hd, accs g rows of hd and ps g * nk weights.
            unsafe {
                match accs.len() / hd {
                    1 => attn_accumulate_k::<1>(v, hd, ps, accs),
                    2 => attn_accumulate_k::<2>(v, hd, ps, accs),
                    3 => attn_accumulate_k::<3>(v, hd, ps, accs),
                    _ => attn_accumulate_k::<4>(v, hd, ps, accs),
                }
            }
        }
    }

    pub(super) fn softmax_block(x: &mut [f32], scale: f32, prev_max: f32) -> (f32, f32) {
        // SAFETY: as above.
        unsafe { softmax_block_k(x, scale, prev_max) }
    }
    pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) {
        // SAFETY: as above.
        unsafe { silu_mul_k(gate, up) }
    }
    pub(super) fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
        // SAFETY: as above.
        unsafe { gelu_tanh_mul_k(gate, up) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn f16_f32_k(w: &[f16], a: &[f32]) -> f32 {
        let n = w.len();
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        // SAFETY: callers guarantee the feature and equal lengths; i + 32 <= n bounds every load.
        unsafe {
            while i + 32 <= n {
                let x0 = _mm512_cvtph_ps(_mm256_loadu_si256(w.as_ptr().add(i).cast()));
                let x1 = _mm512_cvtph_ps(_mm256_loadu_si256(w.as_ptr().add(i + 16).cast()));
                acc0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(a.as_ptr().add(i)), acc0);
                acc1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(a.as_ptr().add(i + 16)), acc1);
                i += 32;
            }
            if i + 16 <= n {
                let x0 = _mm512_cvtph_ps(_mm256_loadu_si256(w.as_ptr().add(i).cast()));
                acc0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(a.as_ptr().add(i)), acc0);
                i += 16;
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
            + w[i..]
                .iter()
                .zip(&a[i..])
                .map(|(x, y)| x.to_f32() * y)
                .sum::<f32>()
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn axpy_f16_k(alpha: f32, x: &[f16], y: &mut [f32]) {
        let n = x.len();
        let av = _mm512_set1_ps(alpha);
        let mut i = 0;
        // SAFETY: callers guarantee the feature and equal lengths; i + 16 <= n bounds every load and store.
        unsafe {
            while i + 16 <= n {
                let xv = _mm512_cvtph_ps(_mm256_loadu_si256(x.as_ptr().add(i).cast()));
                let yp = y.as_mut_ptr().add(i);
                _mm512_storeu_ps(yp, _mm512_fmadd_ps(av, xv, _mm512_loadu_ps(yp)));
                i += 16;
            }
        }
        for (o, v) in y[i..].iter_mut().zip(&x[i..]) {
            *o += alpha * v.to_f32();
        }
    }

    /// Tiles of `T` keys against `G` queries (`G * T <= 16` accumulators):
    /// each key chunk is converted once for all the queries, and a tile's
    /// `T` sums are finished together by [`reduce_keys`], where a
    /// horizontal sum per (head, key) cost twice the FMAs. Keys past the
    /// last whole tile run one at a time through the same tree, so a
    /// score's bits do not depend on the key's place in the block (decode
    /// and prefill see different block ends).
    #[target_feature(enable = "avx512f")]
    unsafe fn attn_scores_k<const G: usize, const T: usize>(
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
                scores_tile::<G, T>(k, hd, q, out, j);
                j += T;
            }
            while j < nk {
                scores_tile::<G, 1>(k, hd, q, out, j);
                j += 1;
            }
        }
    }

    /// Scores of keys `j..j + T` (of `nk = k.len() / hd`) against `G`
    /// queries: per (head, key) a 16-lane FMA chain over the row from zero,
    /// summed by [`reduce_keys`], plus the scalar tail past the last whole
    /// 16 elements.
    ///
    /// # Safety
    /// AVX-512F; `k` holds whole rows of `hd` with `j + T <= nk`, `q` `G`
    /// rows, `out` `G * nk` scores.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_tile<const G: usize, const T: usize>(
        k: &[f16],
        hd: usize,
        q: &[f32],
        out: &mut [f32],
        j: usize,
    ) {
        let nk = k.len() / hd;
        let vec_end = hd / 16 * 16;
        let (kp, qp) = (k.as_ptr(), q.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); T]; G];
        let mut i = 0;
        // SAFETY: every load reads 16 values at i + 16 <= vec_end <= hd
        // inside row j + t < nk of k and row g < G of q.
        unsafe {
            while i < vec_end {
                let mut qv = [_mm512_setzero_ps(); G];
                for (g, v) in qv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(qp.add(g * hd + i));
                }
                for t in 0..T {
                    let x = _mm512_cvtph_ps(_mm256_loadu_si256(kp.add((j + t) * hd + i).cast()));
                    for (a, v) in acc.iter_mut().zip(&qv) {
                        a[t] = _mm512_fmadd_ps(x, *v, a[t]);
                    }
                }
                i += 16;
            }
        }
        for (g, a) in acc.iter().enumerate() {
            // SAFETY: AVX-512F, as above.
            let sums = unsafe { reduce_keys::<T>(a) };
            let o = &mut out[g * nk + j..g * nk + j + T];
            if vec_end == hd {
                // SAFETY: `o` holds T <= 16 floats, the mask's lanes.
                unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr(), ((1u32 << T) - 1) as u16, sums) };
            } else {
                let mut lanes = [0f32; 16];
                // SAFETY: `lanes` holds 16 floats.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sums) };
                for (t, (o, s)) in o.iter_mut().zip(lanes).enumerate() {
                    let row = (j + t) * hd;
                    let tail: f32 = k[row + vec_end..row + hd]
                        .iter()
                        .zip(&q[g * hd + vec_end..(g + 1) * hd])
                        .map(|(x, y)| x.to_f32() * y)
                        .sum();
                    *o = s + tail;
                }
            }
        }
    }

    /// The horizontal sums of `T` (1, 2, 4, 8 or 16) accumulators, key `t`'s
    /// in lane `t`, each by one fixed tree whatever `T` is: lane `i` plus
    /// lane `i + 8`, then `+ 4`, `+ 2`, `+ 1`. Each level adds pairs of
    /// vectors through shuffles, so `T` sums cost about what one costs
    /// alone; a level with one vector left pairs it with itself.
    ///
    /// # Safety
    /// AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn reduce_keys<const T: usize>(acc: &[__m512; T]) -> __m512 {
        let mut v = [_mm512_setzero_ps(); 16];
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
        // lanes i and i + 8: the 256-bit halves of a, then of b
        level!(|a, b| _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b)
        ));
        // i and i + 4: the 128-bit quarters 0, 2 plus 1, 3 of each
        level!(|a, b| _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        ));
        // i and i + 2: the 64-bit halves of each quarter
        level!(|a, b| {
            let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
            )
        });
        // i and i + 1: the even and odd lanes of each quarter
        level!(|a, b| _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(a, b),
            _mm512_shuffle_ps::<0xDD>(a, b)
        ));
        debug_assert_eq!(n, 1);
        // Key t ended in lane 4 * (t % 4) + t / 4.
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(idx, v[0])
    }

    /// Output columns outer, keys inner: G query heads times four 16-lane
    /// column chunks stay in registers across the whole block of keys, and
    /// each value chunk is converted once for all G heads.
    #[target_feature(enable = "avx512f")]
    unsafe fn attn_accumulate_k<const G: usize>(v: &[f16], hd: usize, p: &[f32], acc: &mut [f32]) {
        let nk = v.len() / hd;
        let vec_end = hd / 16 * 16;
        let (vp, ap) = (v.as_ptr(), acc.as_mut_ptr());
        let mut i = 0;
        // SAFETY: callers guarantee the feature and the shapes; loads and
        // stores cover 16 lanes at column i + 16 * c + 16 <= vec_end <= hd of
        // value row j < nk and output row g < G.
        unsafe {
            while i + 64 <= vec_end {
                let mut a = [[_mm512_setzero_ps(); 4]; G];
                for (g, ag) in a.iter_mut().enumerate() {
                    for (c, r) in ag.iter_mut().enumerate() {
                        *r = _mm512_loadu_ps(ap.add(g * hd + i + 16 * c));
                    }
                }
                for j in 0..nk {
                    let row = vp.add(j * hd + i);
                    let x = [
                        _mm512_cvtph_ps(_mm256_loadu_si256(row.cast())),
                        _mm512_cvtph_ps(_mm256_loadu_si256(row.add(16).cast())),
                        _mm512_cvtph_ps(_mm256_loadu_si256(row.add(32).cast())),
                        _mm512_cvtph_ps(_mm256_loadu_si256(row.add(48).cast())),
                    ];
                    for (g, ag) in a.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(p[g * nk + j]);
                        for (r, xc) in ag.iter_mut().zip(&x) {
                            *r = _mm512_fmadd_ps(w, *xc, *r);
                        }
                    }
                }
                for (g, ag) in a.iter().enumerate() {
                    for (c, r) in ag.iter().enumerate() {
                        _mm512_storeu_ps(ap.add(g * hd + i + 16 * c), *r);
                    }
                }
                i += 64;
            }
            while i < vec_end {
                let mut a = [_mm512_setzero_ps(); G];
                for (g, r) in a.iter_mut().enumerate() {
                    *r = _mm512_loadu_ps(ap.add(g * hd + i));
                }
                for j in 0..nk {
                    let x = _mm512_cvtph_ps(_mm256_loadu_si256(vp.add(j * hd + i).cast()));
                    for (g, r) in a.iter_mut().enumerate() {
                        *r = _mm512_fmadd_ps(_mm512_set1_ps(p[g * nk + j]), x, *r);
                    }
                }
                for (g, r) in a.iter().enumerate() {
                    _mm512_storeu_ps(ap.add(g * hd + i), *r);
                }
                i += 16;
            }
        }
        for g in 0..G {
            for c in vec_end..hd {
                acc[g * hd + c] += (0..nk)
                    .map(|j| p[g * nk + j] * v[j * hd + c].to_f32())
                    .sum::<f32>();
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_block_k(x: &mut [f32], scale: f32, prev_max: f32) -> (f32, f32) {
        attention::softmax_block_body(x, scale, prev_max)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn silu_mul_k(gate: &mut [f32], up: &[f32]) {
        activation::silu_mul_body(gate, up)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn gelu_tanh_mul_k(gate: &mut [f32], up: &[f32]) {
        activation::gelu_tanh_mul_body(gate, up)
    }
}

/// Sum of `u[i] * s[i]` over each 4 bytes, added to the i32 lanes of `acc`.
/// Exact while every adjacent pair of products fits an i16 (codes < 16, or
/// `|u| <= 128` against `|s| <= 127`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn dot4(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
    let pairs = _mm512_maddubs_epi16(u, s);
    _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, _mm512_set1_epi16(1)))
}

/// Accumulators of [`dot_peak_loop`]: enough independent chains to keep
/// every dot pipe busy whatever the latency.
const PEAK_CHAINS: usize = 12;

/// `iters` rounds of [`PEAK_CHAINS`] independent `dot` steps on registers
/// (no loads): the peak of the step the gemm kernels are built on.
/// Returns the multiply-adds done (64 per step).
#[inline(always)]
pub(super) fn dot_peak_loop(
    iters: usize,
    dot: impl Fn(__m512i, __m512i, __m512i) -> __m512i,
) -> u64 {
    let (u, s) = std::hint::black_box((1i8, -1i8));
    // SAFETY: AVX-512F is a feature of every caller (see `dot_peak`).
    let (u, s) = unsafe { (_mm512_set1_epi8(u), _mm512_set1_epi8(s)) };
    let mut acc = [u; PEAK_CHAINS];
    for _ in 0..iters {
        for a in &mut acc {
            *a = dot(*a, u, s);
        }
    }
    std::hint::black_box(acc);
    (iters * PEAK_CHAINS * 64) as u64
}

/// [`dot_peak_loop`] on this tier's [`dot4`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn dot_peak(iters: usize) -> u64 {
    dot_peak_loop(iters, |a, u, s| dot4(a, u, s))
}

/// Whether 16 rows of `bpr` blocks of `block_bytes` stay within the i32
/// offsets of a gather (always, for real models).
pub(super) fn gather_offsets_fit(bpr: usize, block_bytes: usize) -> bool {
    bpr.checked_mul(block_bytes)
        .and_then(|b| b.checked_mul(16))
        .is_some_and(|b| b <= i32::MAX as usize)
}

/// The lanes of the 16-row panel at row `r0` that hold rows of a matrix of
/// `rows` (`r0 < rows`): all 16 but in a partial last panel.
pub(super) fn panel_mask(rows: usize, r0: usize) -> core::arch::x86_64::__mmask16 {
    let nr = (rows - r0).min(16);
    (u32::MAX >> (32 - nr)) as core::arch::x86_64::__mmask16
}

/// Defines the kernels of one tier in a `mod kernels`, with `$features` as
/// the target features and `$dot4` as the 4-byte dot step.
macro_rules! legacy_kernels {
    ($features:literal, $dot4:path) => {
        mod kernels {
            use super::super::avx512::{gather_offsets_fit, panel_mask};
            use crate::dispatch::gemm_by_dots;
            use crate::quant::blocks::*;
            use crate::quant::q5_0::{self, BlockQ5_0};
            use crate::quant::x16::{self, shape_ok as x16_shape_ok, X16Block};
            use core::arch::x86_64::*;
            use half::f16;

            // ---- safe wrappers: lengths are clamped to the shorter operand ----

            pub(in super::super) fn q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: the tier's features were detected before its table was handed out; both slices hold n blocks.
                unsafe { q4_0_q8_0_k(&w[..n], &a[..n]) }
            }
            pub(in super::super) fn q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: as above.
                unsafe { q4_1_q8_1_k(&w[..n], &a[..n]) }
            }
            pub(in super::super) fn q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: as above.
                unsafe { q8_0_q8_0_k(&w[..n], &a[..n]) }
            }

            /// The shape checks every gemm wrapper makes before the kernel
            /// (which then indexes without bounds checks): whole rows and
            /// columns, an output that holds them all, gather offsets in i32.
            fn gemm_shape_ok<W, A>(w: &[W], a: &[A], bpr: usize, out: &[f32]) -> bool {
                crate::dispatch::gemm_shape_ok(w, a, bpr, out)
                    && gather_offsets_fit(bpr, std::mem::size_of::<W>())
            }

            pub(in super::super) fn q4_0_q8_0_gemm(
                w: &[BlockQ4_0],
                a: &[BlockQ8_0],
                bpr: usize,
                out: &mut [f32],
            ) {
                if !gemm_shape_ok(w, a, bpr, out) {
                    return gemm_by_dots(q4_0_q8_0, w, a, bpr, out);
                }
                // SAFETY: features detected (as above); the shape was checked just now.
                unsafe { gemm_k::<BlockQ4_0, BlockQ8_0, false>(w, a, bpr, out, pack_q4_0) }
            }
            pub(in super::super) fn q4_1_q8_1_gemm(
                w: &[BlockQ4_1],
                a: &[BlockQ8_1],
                bpr: usize,
                out: &mut [f32],
            ) {
                if !gemm_shape_ok(w, a, bpr, out) {
                    return gemm_by_dots(q4_1_q8_1, w, a, bpr, out);
                }
                // SAFETY: features detected (as above); the shape was checked just now.
                unsafe { gemm_k::<BlockQ4_1, BlockQ8_1, true>(w, a, bpr, out, pack_q4_1) }
            }
            #[allow(dead_code)] // the AVX-512BW tier cannot run it exactly (see its overrides)
            pub(in super::super) fn q8_0_q8_0_gemm(
                w: &[BlockQ8_0],
                a: &[BlockQ8_0],
                bpr: usize,
                out: &mut [f32],
            ) {
                if !gemm_shape_ok(w, a, bpr, out) {
                    return gemm_by_dots(q8_0_q8_0, w, a, bpr, out);
                }
                // SAFETY: features detected (as above); the shape was checked just now.
                unsafe { gemm_k::<BlockQ8_0, BlockQ8_0, false>(w, a, bpr, out, pack_q8_0) }
            }

            // ---- x16 gemm: weights packed at load time (quant::x16) ----

            pub(in super::super) fn q4_0_q8_0_x16(
                p: &[u8],
                rows: usize,
                a: &[BlockQ8_0],
                bpr: usize,
                out: &mut [&mut [f32]],
            ) {
                if !x16_shape_ok::<BlockQ4_0, _>(p, rows, a, bpr, out) {
                    return x16::gemm_ref::<BlockQ4_0, _>(q4_0_q8_0, p, rows, a, bpr, out);
                }
                // SAFETY: features detected (as above); the shape was checked just now.
                unsafe { x16_k::<BlockQ4_0, BlockQ8_0, false>(p, rows, a, bpr, out) }
            }
            pub(in super::super) fn q4_1_q8_1_x16(
                p: &[u8],
                rows: usize,
                a: &[BlockQ8_1],
                bpr: usize,
                out: &mut [&mut [f32]],
            ) {
                if !x16_shape_ok::<BlockQ4_1, _>(p, rows, a, bpr, out) {
                    return x16::gemm_ref::<BlockQ4_1, _>(q4_1_q8_1, p, rows, a, bpr, out);
                }
                // SAFETY: features detected (as above); the shape was checked just now.
                unsafe { x16_k::<BlockQ4_1, BlockQ8_1, true>(p, rows, a, bpr, out) }
            }
            #[allow(dead_code)] // the AVX-512BW tier cannot run it exactly (see its overrides)
            pub(in super::super) fn q8_0_q8_0_x16(
                p: &[u8],
                rows: usize,
                a: &[BlockQ8_0],
                bpr: usize,
                out: &mut [&mut [f32]],
            ) {
                if !x16_shape_ok::<BlockQ8_0, _>(p, rows, a, bpr, out) {
                    return x16::gemm_ref::<BlockQ8_0, _>(q8_0_q8_0, p, rows, a, bpr, out);
                }
                // SAFETY: features detected (as above); the shape was checked just now.
                unsafe { x16_k::<BlockQ8_0, BlockQ8_0, false>(p, rows, a, bpr, out) }
            }

            pub(in super::super) fn q5_0_q8_0_x16(
                p: &[u8],
                rows: usize,
                a: &[BlockQ8_0],
                bpr: usize,
                out: &mut [&mut [f32]],
            ) {
                if !x16_shape_ok::<BlockQ5_0, _>(p, rows, a, bpr, out) {
                    return x16::gemm_ref::<BlockQ5_0, _>(q5_0::vec_dot, p, rows, a, bpr, out);
                }
                // SAFETY: features detected (as above); the shape was checked just now.
                unsafe { x16_k::<BlockQ5_0, BlockQ8_0, false>(p, rows, a, bpr, out) }
            }
            /// Q5_0 over the file's layout: panels packed on the fly for the
            /// x16 kernel (no gather panel for its fifth bits).
            pub(in super::super) fn q5_0_q8_0_gemm(
                w: &[BlockQ5_0],
                a: &[BlockQ8_0],
                bpr: usize,
                out: &mut [f32],
            ) {
                x16::gemm_by_panels(q5_0_q8_0_x16, w, a, bpr, out)
            }

            // ---- single dots: two blocks per register ----

            /// Codes of two Q4 blocks as [lo0, lo1, hi0, hi1], 16 bytes each
            /// (lo = elements 0..16, hi = elements 16..32).
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) fn nibbles2(q0: &[u8; 16], q1: &[u8; 16]) -> __m512i {
                // SAFETY: q0 and q1 are 16 readable bytes each; loadu has no alignment requirement.
                let (x0, x1) = unsafe {
                    (
                        _mm_loadu_si128(q0.as_ptr().cast()),
                        _mm_loadu_si128(q1.as_ptr().cast()),
                    )
                };
                let y = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(x0), x1);
                let z =
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(y), _mm256_srli_epi16::<4>(y));
                _mm512_and_si512(z, _mm512_set1_epi8(0x0F))
            }

            /// Codes of two 32-byte blocks in the order of [`nibbles2`].
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) fn interleave2(q0: &[i8; 32], q1: &[i8; 32]) -> __m512i {
                // SAFETY: q0 and q1 are 32 readable bytes each; loadu has no alignment requirement.
                let (y0, y1) = unsafe {
                    (
                        _mm256_loadu_si256(q0.as_ptr().cast()),
                        _mm256_loadu_si256(q1.as_ptr().cast()),
                    )
                };
                _mm512_permutex2var_epi64(
                    _mm512_castsi256_si512(y0),
                    _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11),
                    _mm512_castsi256_si512(y1),
                )
            }

            /// `[d0 x4, d1 x4, d0 x4, d1 x4]`: the block of each lane in the
            /// layout of [`nibbles2`] / [`interleave2`].
            #[inline]
            #[target_feature(enable = $features)]
            fn scales2(d0: f32, d1: f32) -> __m512 {
                let v = _mm512_castps128_ps512(_mm_unpacklo_ps(_mm_set_ss(d0), _mm_set_ss(d1)));
                _mm512_permutexvar_ps(
                    _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1),
                    v,
                )
            }

            /// `a * b` of two halves with one conversion (separate scalar
            /// f16 conversions bound the single dots).
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) fn mul_halves(a: f16, b: f16) -> f32 {
                let bits = a.to_bits() as u32 | (b.to_bits() as u32) << 16;
                let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
                _mm_cvtss_f32(_mm_mul_ss(v, _mm_movehdup_ps(v)))
            }

            #[inline]
            #[target_feature(enable = $features)]
            pub(super) fn fp16(x: f16) -> f32 {
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x.to_bits() as i32)))
            }

            /// Walks `w` and `a` two blocks at a time (the odd last block is
            /// paired with itself under a zero scale) and sums
            /// `pair(x0, x1, y0, y1)`, which returns integer lanes in the
            /// [`nibbles2`] layout, times the per-block scale products.
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) fn pairs<W: Copy, A: Copy>(
                w: &[W],
                a: &[A],
                scale: impl Fn(&W, &A) -> f32,
                pair: impl Fn(&W, &W, &A, &A) -> __m512i,
            ) -> f32 {
                let mut acc = _mm512_setzero_ps();
                let n = w.len().min(a.len());
                let mut i = 0;
                while i + 2 <= n {
                    let d = scales2(scale(&w[i], &a[i]), scale(&w[i + 1], &a[i + 1]));
                    let p = pair(&w[i], &w[i + 1], &a[i], &a[i + 1]);
                    acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
                    i += 2;
                }
                if i < n {
                    let d = scales2(scale(&w[i], &a[i]), 0.0);
                    let p = pair(&w[i], &w[i], &a[i], &a[i]);
                    acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
                }
                _mm512_reduce_add_ps(acc)
            }

            #[target_feature(enable = $features)]
            fn q4_0_q8_0_k(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
                let eight = _mm512_set1_epi8(8);
                pairs(
                    w,
                    a,
                    |x, y| mul_halves(x.d, y.d),
                    |x0, x1, y0, y1| {
                        // (q - 8) . y = q . y - 8 . y, both with unsigned left operands
                        let ys = interleave2(&y0.qs, &y1.qs);
                        let z = _mm512_setzero_si512();
                        _mm512_sub_epi32(
                            $dot4(z, nibbles2(&x0.qs, &x1.qs), ys),
                            $dot4(z, eight, ys),
                        )
                    },
                )
            }

            #[target_feature(enable = $features)]
            fn q4_1_q8_1_k(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
                let mins: f32 = w.iter().zip(a).map(|(x, y)| mul_halves(x.m, y.s)).sum();
                let dots = pairs(
                    w,
                    a,
                    |x, y| mul_halves(x.d, y.d),
                    |x0, x1, y0, y1| {
                        let ys = interleave2(&y0.qs, &y1.qs);
                        $dot4(_mm512_setzero_si512(), nibbles2(&x0.qs, &x1.qs), ys)
                    },
                );
                dots + mins
            }

            #[target_feature(enable = $features)]
            fn q8_0_q8_0_k(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
                pairs(
                    w,
                    a,
                    |x, y| mul_halves(x.d, y.d),
                    |x0, x1, y0, y1| {
                        // x . y = |x| . (y * sign(x)); AVX-512 has no vpsignb, so
                        // negate y under the mask of negative x.
                        let xs = interleave2(&x0.qs, &x1.qs);
                        let ys = interleave2(&y0.qs, &y1.qs);
                        let z = _mm512_setzero_si512();
                        let neg = _mm512_movepi8_mask(xs);
                        let ys = _mm512_mask_sub_epi8(ys, neg, z, ys);
                        $dot4(z, _mm512_abs_epi8(xs), ys)
                    },
                )
            }

            // ---- Q6_K single dot: 64 codes per register ----
            //
            // (A Q4_K version of the same shape measured slower than AVX2's:
            // the Q8_K blocks are 292 bytes, so most 64-byte loads split
            // cache lines; Q4_K stays on AVX2.)

            pub(in super::super) fn q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
                let n = w.len().min(a.len());
                // SAFETY: as above.
                unsafe { q6_k_q8_k_k(&w[..n], &a[..n]) }
            }

            /// Codes rebuilt unsigned (0..64) as in the AVX2 kernel, two
            /// 32-element runs per register; the per-16 scales are spread
            /// over lanes with one permute, and the offset of 32 comes off as
            /// `32 * sum(scale * block sum)` from the Q8_K sums.
            #[target_feature(enable = $features)]
            unsafe fn q6_k_q8_k_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
                let m4 = _mm256_set1_epi8(0x0F);
                let m2 = _mm256_set1_epi8(0x03);
                let z = _mm512_setzero_si512();
                // i16 lane j of a 64-element run of half n, run k, takes scale 8n + 4k + j / 8
                let spread = |first: i16| {
                    _mm512_add_epi16(
                        _mm512_set1_epi16(first),
                        _mm512_srli_epi16::<3>(_mm512_setr_epi32(
                            0x0001_0000,
                            0x0003_0002,
                            0x0005_0004,
                            0x0007_0006,
                            0x0009_0008,
                            0x000B_000A,
                            0x000D_000C,
                            0x000F_000E,
                            0x0011_0010,
                            0x0013_0012,
                            0x0015_0014,
                            0x0017_0016,
                            0x0019_0018,
                            0x001B_001A,
                            0x001D_001C,
                            0x001F_001E,
                        )),
                    )
                };
                let mut acc = _mm512_setzero_ps();
                let mut acc_off = 0f32;
                for (x, y) in w.iter().zip(a) {
                    // SAFETY: scales is 16 readable bytes.
                    let sv = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(unsafe {
                        _mm_loadu_si128(x.scales.as_ptr().cast())
                    }));
                    let off: i32 = x
                        .scales
                        .iter()
                        .zip(&y.bsums)
                        .map(|(&s, &b)| s as i32 * b as i32)
                        .sum();
                    acc_off += 32.0 * y.d * fp16(x.d) * off as f32;
                    let mut sumi = z;
                    for n in 0..2 {
                        // SAFETY: 32-byte loads at 32n of qh[64], at 64n and 64n + 32 of ql[128], and 64-byte loads at 128n and 128n + 64 of qs[256].
                        let (qh, ql0, ql1, y0, y1) = unsafe {
                            (
                                _mm256_loadu_si256(x.qh.as_ptr().add(32 * n).cast()),
                                _mm256_loadu_si256(x.ql.as_ptr().add(64 * n).cast()),
                                _mm256_loadu_si256(x.ql.as_ptr().add(64 * n + 32).cast()),
                                _mm512_loadu_si512(y.qs.as_ptr().add(128 * n).cast()),
                                _mm512_loadu_si512(y.qs.as_ptr().add(128 * n + 64).cast()),
                            )
                        };
                        let hi = |shift: __m128i| {
                            _mm256_slli_epi16::<4>(_mm256_and_si256(
                                _mm256_srl_epi16(qh, shift),
                                m2,
                            ))
                        };
                        let q0 =
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), hi(_mm_cvtsi32_si128(0)));
                        let q1 =
                            _mm256_or_si256(_mm256_and_si256(ql1, m4), hi(_mm_cvtsi32_si128(2)));
                        let q2 = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                            hi(_mm_cvtsi32_si128(4)),
                        );
                        let q3 = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                            hi(_mm_cvtsi32_si128(6)),
                        );
                        let a01 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1);
                        let a23 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q2), q3);
                        // codes < 64: the i16 pairs cannot saturate
                        let s01 = _mm512_permutexvar_epi16(spread(8 * n as i16), sv);
                        let s23 = _mm512_permutexvar_epi16(spread(8 * n as i16 + 4), sv);
                        let p01 = _mm512_madd_epi16(_mm512_maddubs_epi16(a01, y0), s01);
                        let p23 = _mm512_madd_epi16(_mm512_maddubs_epi16(a23, y1), s23);
                        sumi = _mm512_add_epi32(sumi, _mm512_add_epi32(p01, p23));
                    }
                    acc = _mm512_fmadd_ps(
                        _mm512_set1_ps(y.d * fp16(x.d)),
                        _mm512_cvtepi32_ps(sumi),
                        acc,
                    );
                }
                _mm512_reduce_add_ps(acc) - acc_off
            }

            // ---- gemm: lane-per-row panels ----

            /// Up to 16 weight rows repacked for the whole row length:
            /// `codes[8 * b + g]` holds, in lane `r`, the unsigned codes of
            /// elements `4g..4g + 4` of block `b` of row `r`; `d[b]` and
            /// `m[b]` the rows' scales and (Q4_1) minimums.
            struct Panel {
                codes: Vec<__m512i>,
                d: Vec<__m512>,
                m: Vec<__m512>,
            }

            /// The activation side of one call, per (column, block): the
            /// scale, Q8_1's `s`, and the integer start of the block's dot
            /// (minus the weight code offset times the code sum).
            struct Acts<'a, A> {
                blocks: &'a [A],
                d: Vec<f32>,
                s: Vec<f32>,
                start: Vec<i32>,
            }

            #[target_feature(enable = $features)]
            fn acts<A: Q8Act>(blocks: &[A], offset: i32) -> Acts<'_, A> {
                Acts {
                    blocks,
                    d: blocks.iter().map(|y| fp16(y.scale())).collect(),
                    s: blocks.iter().map(|y| fp16(y.sum_scaled())).collect(),
                    start: blocks
                        .iter()
                        .map(|y| -offset * y.codes().iter().map(|&q| q as i32).sum::<i32>())
                        .collect(),
                }
            }

            /// Lane `r` = byte offset of row `r` from row 0.
            #[inline]
            #[target_feature(enable = $features)]
            fn row_offsets(bpr: usize, block_bytes: usize) -> __m512i {
                let stride = _mm512_set1_epi32((bpr * block_bytes) as i32);
                _mm512_mullo_epi32(
                    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                    stride,
                )
            }

            /// 4 bytes at `p + offsets[r]` for the rows in `mask`, 0 elsewhere.
            ///
            /// # Safety
            /// Every unmasked address must be 4 readable bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn gather(p: *const u8, offsets: __m512i, mask: __mmask16) -> __m512i {
                // SAFETY: per the contract; masked-off lanes are not accessed.
                unsafe {
                    _mm512_mask_i32gather_epi32::<1>(
                        _mm512_setzero_si512(),
                        mask,
                        offsets,
                        p.cast(),
                    )
                }
            }

            /// The two dwords at `p + offsets[r]` and `p + offsets[r] + 4`
            /// for the rows in `mask` (0 elsewhere), as two lane-per-row
            /// registers: one 8-byte gather per row moves half the elements
            /// of two 4-byte gathers, and gathers bound the decode matvec.
            ///
            /// # Safety
            /// Every unmasked address must be 8 readable bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn gather_pair(
                p: *const u8,
                offsets: __m512i,
                mask: __mmask16,
            ) -> (__m512i, __m512i) {
                let z = _mm512_setzero_si512();
                // SAFETY: per the contract; masked-off lanes are not accessed.
                let (lo, hi) = unsafe {
                    (
                        _mm512_mask_i32gather_epi64::<1>(
                            z,
                            mask as __mmask8,
                            _mm512_castsi512_si256(offsets),
                            p.cast(),
                        ),
                        _mm512_mask_i32gather_epi64::<1>(
                            z,
                            (mask >> 8) as __mmask8,
                            _mm512_extracti64x4_epi64::<1>(offsets),
                            p.cast(),
                        ),
                    )
                };
                let even =
                    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let odd =
                    _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                (
                    _mm512_permutex2var_epi32(lo, even, hi),
                    _mm512_permutex2var_epi32(lo, odd, hi),
                )
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn halves_to_f32(v: __m512i) -> __m512 {
                _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
            }

            /// Panel of rows `r0..r0 + popcount(mask)` of Q4_0 (codes 0..16).
            ///
            /// # Safety
            /// Those rows exist in `w`, which holds rows of `bpr` blocks.
            #[target_feature(enable = $features)]
            unsafe fn pack_q4_0(
                w: &[BlockQ4_0],
                bpr: usize,
                r0: usize,
                mask: __mmask16,
                p: &mut Panel,
            ) {
                const BYTES: usize = std::mem::size_of::<BlockQ4_0>();
                let offsets = row_offsets(bpr, BYTES);
                let m4 = _mm512_set1_epi8(0x0F);
                for b in 0..bpr {
                    // SAFETY: block b of the masked rows is in w; d at byte 0, qs at 2..18.
                    unsafe {
                        let bp = w.as_ptr().add(r0 * bpr + b).cast::<u8>();
                        p.d[b] = halves_to_f32(gather(bp, offsets, mask));
                        for k in [0, 2] {
                            let (q0, q1) = gather_pair(bp.add(2 + 4 * k), offsets, mask);
                            for (k, q) in [(k, q0), (k + 1, q1)] {
                                p.codes[8 * b + k] = _mm512_and_si512(q, m4);
                                p.codes[8 * b + 4 + k] =
                                    _mm512_and_si512(_mm512_srli_epi32::<4>(q), m4);
                            }
                        }
                    }
                }
            }

            /// Panel of Q4_1 rows (codes 0..16, with minimums).
            ///
            /// # Safety
            /// As [`pack_q4_0`].
            #[target_feature(enable = $features)]
            unsafe fn pack_q4_1(
                w: &[BlockQ4_1],
                bpr: usize,
                r0: usize,
                mask: __mmask16,
                p: &mut Panel,
            ) {
                const BYTES: usize = std::mem::size_of::<BlockQ4_1>();
                let offsets = row_offsets(bpr, BYTES);
                let m4 = _mm512_set1_epi8(0x0F);
                for b in 0..bpr {
                    // SAFETY: block b of the masked rows is in w; d, m at bytes 0..4, qs at 4..20.
                    unsafe {
                        let bp = w.as_ptr().add(r0 * bpr + b).cast::<u8>();
                        let dm = gather(bp, offsets, mask);
                        p.d[b] = halves_to_f32(dm);
                        p.m[b] = halves_to_f32(_mm512_srli_epi32::<16>(dm));
                        for k in [0, 2] {
                            let (q0, q1) = gather_pair(bp.add(4 + 4 * k), offsets, mask);
                            for (k, q) in [(k, q0), (k + 1, q1)] {
                                p.codes[8 * b + k] = _mm512_and_si512(q, m4);
                                p.codes[8 * b + 4 + k] =
                                    _mm512_and_si512(_mm512_srli_epi32::<4>(q), m4);
                            }
                        }
                    }
                }
            }

            /// Panel of Q8_0 rows, codes offset by 128 into 0..256.
            ///
            /// # Safety
            /// As [`pack_q4_0`].
            #[target_feature(enable = $features)]
            unsafe fn pack_q8_0(
                w: &[BlockQ8_0],
                bpr: usize,
                r0: usize,
                mask: __mmask16,
                p: &mut Panel,
            ) {
                const BYTES: usize = std::mem::size_of::<BlockQ8_0>();
                let offsets = row_offsets(bpr, BYTES);
                let flip = _mm512_set1_epi8(-128);
                for b in 0..bpr {
                    // SAFETY: block b of the masked rows is in w; d at byte 0, qs at 2..34.
                    unsafe {
                        let bp = w.as_ptr().add(r0 * bpr + b).cast::<u8>();
                        p.d[b] = halves_to_f32(gather(bp, offsets, mask));
                        for g in [0, 2, 4, 6] {
                            let (q0, q1) = gather_pair(bp.add(2 + 4 * g), offsets, mask);
                            p.codes[8 * b + g] = _mm512_xor_si512(q0, flip);
                            p.codes[8 * b + g + 1] = _mm512_xor_si512(q1, flip);
                        }
                    }
                }
            }

            /// Weight code offset of each type: what `pack_*` added to the
            /// signed code (Q4_1 has none, its minimum is separate).
            trait Offset {
                const OFFSET: i32;
                /// Whether the x16 record has a line of fifth bits (Q5_0).
                const QH: bool = false;
            }
            impl Offset for BlockQ5_0 {
                const OFFSET: i32 = 16;
                const QH: bool = true;
            }
            impl Offset for BlockQ4_0 {
                const OFFSET: i32 = 8;
            }
            impl Offset for BlockQ4_1 {
                const OFFSET: i32 = 0;
            }
            impl Offset for BlockQ8_0 {
                const OFFSET: i32 = 128;
            }

            type Pack<W> = unsafe fn(&[W], usize, usize, __mmask16, &mut Panel);

            /// # Safety
            /// The features of the tier, and the shape checked by `gemm_shape_ok`.
            #[target_feature(enable = $features)]
            unsafe fn gemm_k<W: Offset, A: Q8Act, const MIN: bool>(
                w: &[W],
                a: &[A],
                bpr: usize,
                out: &mut [f32],
                pack: Pack<W>,
            ) {
                let rows = w.len() / bpr;
                let acts = acts(a, W::OFFSET);
                // the kernels write column by column (the x16 contract)
                let cols = acts.blocks.len() / bpr;
                let mut out: Vec<&mut [f32]> =
                    out.chunks_exact_mut(rows.max(1)).take(cols).collect();
                let out = &mut out[..];
                let mut p = Panel {
                    codes: vec![_mm512_setzero_si512(); 8 * bpr],
                    d: vec![_mm512_setzero_ps(); bpr],
                    m: vec![_mm512_setzero_ps(); if MIN { bpr } else { 0 }],
                };
                for r0 in (0..rows).step_by(16) {
                    let mask = panel_mask(rows, r0);
                    // SAFETY: the rows of the mask from r0 exist (shape checked by the caller).
                    unsafe { pack(w, bpr, r0, mask, &mut p) };
                    let p = &p;
                    let block = |b: usize| {
                        let mut wg = [_mm512_setzero_si512(); 8];
                        wg.copy_from_slice(&p.codes[8 * b..8 * b + 8]);
                        let m = if MIN { p.m[b] } else { _mm512_setzero_ps() };
                        (wg, p.d[b], m)
                    };
                    // SAFETY: the columns of acts exist; out holds rows for each.
                    unsafe { every_col::<A, MIN>(&block, &acts, bpr, out, rows, r0, mask) };
                }
            }

            /// [`panel_cols`] over every column of `acts`: 8 at a time, then
            /// the rest in one group (each group unpacks the panel's codes
            /// once; more independent accumulators as fewer columns share
            /// each weight load).
            ///
            /// # Safety
            /// As [`panel_cols`], for all the columns.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn every_col<A: Q8Act, const MIN: bool>(
                block: &impl Fn(usize) -> ([__m512i; 8], __m512, __m512),
                acts: &Acts<'_, A>,
                bpr: usize,
                out: &mut [&mut [f32]],
                rows: usize,
                r0: usize,
                mask: __mmask16,
            ) {
                let cols = acts.blocks.len() / bpr;
                let mut c0 = 0;
                // SAFETY: each call reads columns c0..c0 + NC, which exist; the rest per the contract.
                unsafe {
                    while c0 + 8 <= cols {
                        panel_cols::<A, 8, 1, MIN>(block, acts, bpr, c0, out, rows, r0, mask);
                        c0 += 8;
                    }
                    let (b, a) = (block, acts);
                    match cols - c0 {
                        0 => {}
                        1 => panel_cols::<A, 1, 4, MIN>(b, a, bpr, c0, out, rows, r0, mask),
                        2 => panel_cols::<A, 2, 4, MIN>(b, a, bpr, c0, out, rows, r0, mask),
                        3 => panel_cols::<A, 3, 3, MIN>(b, a, bpr, c0, out, rows, r0, mask),
                        4 => panel_cols::<A, 4, 2, MIN>(b, a, bpr, c0, out, rows, r0, mask),
                        5 => panel_cols::<A, 5, 2, MIN>(b, a, bpr, c0, out, rows, r0, mask),
                        6 => panel_cols::<A, 6, 2, MIN>(b, a, bpr, c0, out, rows, r0, mask),
                        _ => panel_cols::<A, 7, 1, MIN>(b, a, bpr, c0, out, rows, r0, mask),
                    }
                }
            }

            /// Outputs of 16 rows (a panel) for columns `c0..c0 + NC`; `block(b)`
            /// gives block `b` of the rows as 8 lane-per-row code registers
            /// (in the order of [`Panel`]), the rows' scales and (with `MIN`)
            /// minimums. `SPLIT` independent integer accumulators per column
            /// keep the `dot4` chain short when few columns are in flight
            /// (decode).
            ///
            /// # Safety
            /// Columns `c0..c0 + NC` exist in `acts`, the masked rows from
            /// `r0` are below `rows`, and `out` holds at least `rows` outputs for
            /// each of those columns.
            #[inline]
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn panel_cols<A: Q8Act, const NC: usize, const SPLIT: usize, const MIN: bool>(
                block: &impl Fn(usize) -> ([__m512i; 8], __m512, __m512),
                acts: &Acts<'_, A>,
                bpr: usize,
                c0: usize,
                out: &mut [&mut [f32]],
                rows: usize,
                r0: usize,
                mask: __mmask16,
            ) {
                debug_assert!(r0 < rows);
                let mut acc = [_mm512_setzero_ps(); NC];
                for b in 0..bpr {
                    let (wg, d, m) = block(b);
                    let mut sums = [[_mm512_setzero_si512(); NC]; SPLIT];
                    for c in 0..NC {
                        // SAFETY: (c0 + c) * bpr + b < cols * bpr, the length of acts.start.
                        sums[0][c] = _mm512_set1_epi32(unsafe {
                            *acts.start.get_unchecked((c0 + c) * bpr + b)
                        });
                    }
                    for (g, w) in wg.iter().enumerate() {
                        for c in 0..NC {
                            // SAFETY: as above for the block; 4 * g + 4 <= 32 bytes of its codes.
                            let y = unsafe {
                                let q = acts.blocks.get_unchecked((c0 + c) * bpr + b).codes();
                                q.as_ptr().add(4 * g).cast::<i32>().read_unaligned()
                            };
                            let s = &mut sums[g % SPLIT][c];
                            *s = $dot4(*s, *w, _mm512_set1_epi32(y));
                        }
                    }
                    for c in 0..NC {
                        let mut t = sums[0][c];
                        for part in &sums[1..] {
                            t = _mm512_add_epi32(t, part[c]);
                        }
                        let i = (c0 + c) * bpr + b;
                        // SAFETY: i < cols * bpr, the length of acts.d and acts.s.
                        let ad = unsafe { *acts.d.get_unchecked(i) };
                        // SAFETY: as above.
                        let s = unsafe { *acts.s.get_unchecked(i) };
                        let dt = _mm512_mul_ps(_mm512_cvtepi32_ps(t), d);
                        acc[c] = _mm512_fmadd_ps(dt, _mm512_set1_ps(ad), acc[c]);
                        if MIN {
                            acc[c] = _mm512_fmadd_ps(m, _mm512_set1_ps(s), acc[c]);
                        }
                    }
                }
                for (c, v) in acc.iter().enumerate() {
                    // SAFETY: column c0 + c < cols exists in out, and r0 + lane
                    // < rows <= its length for every unmasked lane.
                    unsafe {
                        let o = out.get_unchecked_mut(c0 + c);
                        _mm512_mask_storeu_ps(o.as_mut_ptr().add(r0), mask, *v)
                    };
                }
            }

            /// # Safety
            /// The features of the tier, and the shape checked by `x16_shape_ok`.
            #[target_feature(enable = $features)]
            unsafe fn x16_k<W: X16Block + Offset, A: Q8Act, const MIN: bool>(
                p: &[u8],
                rows: usize,
                a: &[A],
                bpr: usize,
                out: &mut [&mut [f32]],
            ) {
                let acts = acts(a, W::OFFSET);
                let decode = a.len() <= bpr;
                let decode_fetch = decode && crate::arch::x86_64::decode_prefetch();
                for (pi, r0) in (0..rows).step_by(16).enumerate() {
                    let mask = panel_mask(rows, r0);
                    // SAFETY: panel pi exists in p (its length was checked against rows).
                    let panel = unsafe { p.as_ptr().add(pi * bpr * W::RECORD) };
                    let block = |b: usize| {
                        let rec = panel.wrapping_add(b * W::RECORD);
                        // Prefill fetches a few records ahead (a prefetch
                        // never faults): a short prompt's first column group
                        // otherwise waits on each record's lines (a 19-token
                        // follow-up turn of SmolLM2-135M, 2 threads, timed
                        // around the engine's forward: 22.6 -> 20.9 ms).
                        // Decode, which only streams, prefetches on Intel
                        // cores only ([`decode_prefetch`]): on the EPYC
                        // host the stream bench's Q4_0/Q5_0/Q8_0 decode on
                        // 1 thread read 25.6-28.2 GiB/s with them and
                        // 26.3-30.7 without (alternated 3 times), and
                        // SmolLM2-360M-shaped Q4_K_M decode (mostly Q5_0
                        // and Q8_0) went from 79-88 to 92-96 tok/s on 1
                        // thread without; on the Xeon, where a plain read
                        // streams 11 GiB/s on 1 thread, Q4_0 read 9.9
                        // without and 13.1 with them, Q8_0 13.7 and 16.3.
                        //
                        // [`decode_prefetch`]: crate::arch::x86_64::decode_prefetch
                        if decode_fetch {
                            decode_prefetch_record::<W>(rec);
                        } else if !decode {
                            let ahead = rec.wrapping_add(X16_PREFETCH);
                            for l in (0..W::RECORD).step_by(64) {
                                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l).cast());
                            }
                        }
                        // SAFETY: b < bpr, so the record is inside the panel.
                        unsafe { x16_record::<W>(rec) }
                    };
                    // SAFETY: the panel's bpr records exist; out holds rows for each column.
                    unsafe { every_col::<A, MIN>(&block, &acts, bpr, out, rows, r0, mask) };
                }
            }

            /// The 8 lane-per-row code registers and the scales (and Q4_1
            /// minimums) of one x16 record, in the order of [`Panel`].
            ///
            /// # Safety
            /// `rec` points at a whole record of `W`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn x16_record<W: X16Block + Offset>(
                rec: *const u8,
            ) -> ([__m512i; 8], __m512, __m512) {
                if W::QH {
                    // SAFETY: as below, for the Q5_0 record.
                    return unsafe { x16_record_q5_0(rec) };
                }
                // SAFETY: the record holds W::PLANES planes of 32 bytes and then
                // its code lines (64 bytes each); loadu has no alignment requirement.
                unsafe {
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(rec.cast()));
                    let m = if W::PLANES == 2 {
                        _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(32).cast()))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let lines = rec.add(32 * W::PLANES);
                    let mut w = [_mm512_setzero_si512(); 8];
                    if W::CODE_BYTES == 32 {
                        // Q8_0: signed codes offset by 128 into 0..256
                        let flip = _mm512_set1_epi8(-128);
                        for (g, wg) in w.iter_mut().enumerate() {
                            *wg = _mm512_xor_si512(
                                _mm512_loadu_si512(lines.add(64 * g).cast()),
                                flip,
                            );
                        }
                    } else {
                        // Q4: line k holds elements 4k.. in its low nibbles, 16 + 4k.. in its high
                        let m4 = _mm512_set1_epi8(0x0F);
                        for k in 0..4 {
                            let q = _mm512_loadu_si512(lines.add(64 * k).cast());
                            w[k] = _mm512_and_si512(q, m4);
                            w[4 + k] = _mm512_and_si512(_mm512_srli_epi32::<4>(q), m4);
                        }
                    }
                    (w, d, m)
                }
            }

            /// [`x16_record`] of Q5_0: the Q4_0 code lines with bit `4g + i`
            /// of each row's `qh` set as bit 4 of byte `i` of group `g`.
            ///
            /// # Safety
            /// `rec` points at a whole Q5_0 record.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn x16_record_q5_0(rec: *const u8) -> ([__m512i; 8], __m512, __m512) {
                // SAFETY: the record holds the d plane (32 bytes), the qh line
                // (64) and 4 code lines; loadu has no alignment requirement.
                let (d, qh, lines) = unsafe {
                    (
                        _mm512_cvtph_ps(_mm256_loadu_si256(rec.cast())),
                        _mm512_loadu_si512(rec.add(BlockQ5_0::field_start(1)).cast()),
                        [0, 1, 2, 3].map(|k| {
                            _mm512_loadu_si512(rec.add(BlockQ5_0::field_start(2) + 64 * k).cast())
                        }),
                    )
                };
                let m4 = _mm512_set1_epi8(0x0F);
                let b4 = _mm512_set1_epi8(0x10);
                let mut w = [_mm512_setzero_si512(); 8];
                for k in 0..4 {
                    w[k] = _mm512_and_si512(lines[k], m4);
                    w[4 + k] = _mm512_and_si512(_mm512_srli_epi32::<4>(lines[k]), m4);
                }
                for (g, wg) in w.iter_mut().enumerate() {
                    // every byte of a dword takes byte g / 2 of that dword's qh
                    // (the shuffle indexes within each 16-byte lane) ...
                    let ctrl = _mm512_add_epi8(
                        _mm512_set4_epi32(0x0C0C_0C0C, 0x0808_0808, 0x0404_0404, 0),
                        _mm512_set1_epi8((g / 2) as i8),
                    );
                    let bytes = _mm512_shuffle_epi8(qh, ctrl);
                    // ... and byte i tests bit (4g + i) % 8 of it
                    let sel = if g % 2 == 0 {
                        0x0804_0201u32
                    } else {
                        0x8040_2010
                    };
                    let set = _mm512_test_epi8_mask(bytes, _mm512_set1_epi32(sel as i32));
                    *wg = _mm512_mask_add_epi8(*wg, set, *wg, b4);
                }
                (w, d, _mm512_setzero_ps())
            }

            /// Bytes ahead of the record in use that the x16 loop prefetches.
            const X16_PREFETCH: usize = 2048;

            /// Bytes ahead of the record in use from which decode asks for
            /// lines into L1 ([`decode_prefetch_record`]).
            const DECODE_NEAR: usize = 2304;

            /// Bytes ahead of the record in use from which decode also asks
            /// for lines into L2.
            const DECODE_FAR: usize = 5120;

            /// Decode's prefetches for the record at `rec`: its lines
            /// [`DECODE_NEAR`] bytes on into L1 and [`DECODE_FAR`] bytes on
            /// into L2, as Q4_K's decode does (`kquant_x16.rs`,
            /// `prefetch_step`), as `asm!` so they keep their place among
            /// the record's loads. With L1 requests alone at 2048 bytes
            /// (prefill's), the stream bench (`stream/737280x1536/
            /// {q4_0,q8_0}/vnni-x16`, alternated 4 and 2 rounds on a quiet
            /// host) read Q4_0 at 13.9–15.1 GiB/s on 1 thread and 28.3–29.7
            /// on 2, Q8_0 15.4–15.5 and 30.6–30.9; with these 16.5–17.5 and
            /// 32.7–37.0, Q8_0 16.5–17.2 and 32.5–34.7 (with L2 requests at
            /// 4096: Q4_0 15.8–17.0 and 32.6–33.6; Q4_K's kernel
            /// 16.3–18.3 and 32.2–37.4, a plain read 11.9–12.9 and
            /// 24.7–26.6).
            #[inline(always)]
            // the pointer is only a prefetch's address: nothing is read
            #[allow(clippy::pointers_in_nomem_asm_block)]
            fn decode_prefetch_record<W: X16Block>(rec: *const u8) {
                for l in (0..W::RECORD).step_by(64) {
                    prefetch_l1_l2!(rec.wrapping_add(l), DECODE_NEAR, DECODE_FAR);
                }
            }
        }
    };
}

pub(super) use legacy_kernels;

legacy_kernels!("avx512f,avx512bw,avx512vl,avx2,fma,f16c", super::dot4);
super::kquant_x16::kquant_kernels!("avx512f,avx512bw,avx512vl,avx2,fma,f16c", super::dot4);
super::avx512_lowbit::lowbit_kernels!("avx512f,avx512bw,avx512vl,avx2,fma,f16c", super::dot4);
