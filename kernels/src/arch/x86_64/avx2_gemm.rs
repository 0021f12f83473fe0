//! AVX2 gemm over the file's layout (no repacking at load): many weight
//! rows times many activation columns for prefill, where one dot per output
//! unpacked every weight block again for every token.
//!
//! Per band of output rows the kernel works on tiles of `NR` rows x `NC`
//! columns:
//!
//! 1. the tile's rows are unpacked once per chunk of [`COL_CHUNK`] columns
//!    into a small buffer: codes as bytes (unsigned, or signed for Q8_0),
//!    per-run `i16` multipliers for the k-quants' sub-block scales, the
//!    block scale as f32, and the coefficients of the correction terms;
//! 2. for each tile of columns, per weight block: one load per row and per
//!    column, then per (row, column) `vpmaddubsw` + `vpmaddwd` into an i32
//!    sum, converted once per block and accumulated by FMA with the product
//!    of the two scales; `NR * NC` float accumulators, one horizontal sum
//!    per output at the end; the Q4_0 / Q5_0 / Q6_K code offset comes off
//!    the `i16` pairs (`vpmaddubsw` of the offset and the column, once per
//!    column), exact as in the dots;
//! 3. the terms that do not depend on both codes (Q4_1's minimum against
//!    Q8_1's `s`, the mins of Q4_K) are a small
//!    float product of per-row coefficients and per-column activation sums
//!    (`out += sum_j m[r][j] * s[c][j]`), done eight columns at a time
//!    after the tile.
//!
//! Integer sums are exact (codes below 64 against codes within ±128 cannot
//! saturate the `i16` pairs; Q8_0 x Q8_0 uses the `vpsignb` trick as the
//! dot does); the float accumulation order differs from the dots.
//!
//! **Batch invariance.** Every output is the same sequence of float
//! operations whatever the tile it falls in, the number of columns beside
//! it or the band its row was given: one accumulator per output over the
//! blocks in order, one horizontal sum in a single order ([`hsum_pairs`],
//! which the four-row store [`hsum4`] computes lane by lane), then the
//! correction terms in order. Decode (one column) goes through this kernel
//! too, not through the tier's dot, so a token's logits are the same bits
//! whether it was prefilled in a batch or decoded alone: a warm
//! conversation, a restored session and speculative decoding reproduce the
//! plain answer exactly. The dots stay for the types without a gemm.
//!
//! Soundness: the `unsafe fn`s need AVX2, FMA and F16C. [`gemm`] is reached
//! only through table entries that `super::table` hands out after
//! `super::supports` checked those features; it checks the shapes with
//! `gemm_shape_ok` before the kernel, which then indexes without bounds
//! checks inside the checked slices.

use super::avx2::{bit_bytes, fp16, nibbles};
use crate::dispatch::{gemm_by_dots, gemm_shape_ok, VecDotFn};
use crate::quant::blocks::*;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::WeightBlock;
use core::arch::x86_64::*;

/// Columns whose activations stay in L2 while a band's rows are unpacked
/// once for them (64 tokens of a 1536-wide Q8_0 row: 104 KB).
const COL_CHUNK: usize = 64;

/// The most 32-code runs per block (the k-quants' 256 elements).
const MAX_RUNS: usize = 8;

/// The most correction terms per block (Q4_K: one per 32-element
/// sub-block).
const MAX_TERMS: usize = 8;

/// An 8-bit activation block as the gemm reads it.
pub(super) trait GemmAct: Copy {
    /// The block's codes: `32 * RUNS` of the weight type.
    fn codes(&self) -> &[i8];
    /// The block's scale.
    fn scale(&self) -> f32;
}

impl GemmAct for BlockQ8_0 {
    fn codes(&self) -> &[i8] {
        &self.qs
    }
    fn scale(&self) -> f32 {
        self.d.to_f32()
    }
}

impl GemmAct for BlockQ8_1 {
    fn codes(&self) -> &[i8] {
        &self.qs
    }
    fn scale(&self) -> f32 {
        self.d.to_f32()
    }
}

impl GemmAct for BlockQ8K {
    fn codes(&self) -> &[i8] {
        &self.qs
    }
    fn scale(&self) -> f32 {
        self.d
    }
}

/// A weight block as the gemm unpacks it: `w · a = d_w * d_a * sum_v
/// madd(maddubs(codes[v], a[v]), scales[v]) + sum_j mins[j] * terms(a)[j]`
/// over its `RUNS` runs of 32 codes.
pub(super) trait Avx2Gemm: WeightBlock {
    /// 32-code runs per block (at most [`MAX_RUNS`]).
    const RUNS: usize;
    /// Runs carry `i16` multipliers (the k-quants' sub-block scales);
    /// otherwise ones.
    const SCALED: bool;
    /// Signed codes (Q8_0), dotted with the `vpsignb` trick.
    const SIGNED: bool;
    /// Unsigned codes that stand for `code - OFFSET` (Q4_0: 8, Q5_0: 16):
    /// `OFFSET * (y[2i] + y[2i + 1])` comes off each `i16` pair, exact in
    /// integers as in the reference dot (the float correction terms would
    /// cancel against the code sums and round differently).
    const OFFSET: i8 = 0;
    /// Correction terms per block (at most [`MAX_TERMS`]).
    const TERMS: usize;
    /// Rows and columns of the main tile (1..=4 each).
    const NR: usize;
    /// See [`Avx2Gemm::NR`].
    const NC: usize;

    /// Writes the block's `RUNS` code vectors, its scale vectors (when
    /// `SCALED`) and its `TERMS` correction coefficients; returns its
    /// scale `d_w`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available; `codes` and `scales` hold `RUNS`
    /// vectors, `mins` `TERMS` floats.
    unsafe fn unpack(&self, codes: &mut [__m256i], scales: &mut [__m256i], mins: &mut [f32])
        -> f32;

    /// The activation side of the correction terms of a block with scale
    /// `d` (`s.len() == TERMS`).
    fn act_terms(a: &Self::Act, d: f32, s: &mut [f32]);
}

impl Avx2Gemm for BlockQ4_0 {
    const RUNS: usize = 1;
    const SCALED: bool = false;
    const SIGNED: bool = false;
    const OFFSET: i8 = 8;
    const TERMS: usize = 0;
    const NR: usize = 4;
    const NC: usize = 2;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], _: &mut [__m256i], _: &mut [f32]) -> f32 {
        // SAFETY: the caller guarantees the features.
        codes[0] = unsafe { nibbles(&self.qs) };
        // SAFETY: as above.
        unsafe { fp16(self.d) }
    }
    fn act_terms(_: &BlockQ8_0, _: f32, _: &mut [f32]) {}
}

impl Avx2Gemm for BlockQ4_1 {
    const RUNS: usize = 1;
    const SCALED: bool = false;
    const SIGNED: bool = false;
    const TERMS: usize = 1;
    const NR: usize = 4;
    const NC: usize = 2;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], _: &mut [__m256i], mins: &mut [f32]) -> f32 {
        // SAFETY: the caller guarantees the features.
        codes[0] = unsafe { nibbles(&self.qs) };
        // SAFETY: as above.
        mins[0] = unsafe { fp16(self.m) };
        // SAFETY: as above.
        unsafe { fp16(self.d) }
    }
    /// Q8_1's stored `s` (an f16), as the reference dot uses it.
    fn act_terms(a: &BlockQ8_1, _: f32, s: &mut [f32]) {
        s[0] = a.s.to_f32();
    }
}

impl Avx2Gemm for BlockQ5_0 {
    const RUNS: usize = 1;
    const SCALED: bool = false;
    const SIGNED: bool = false;
    const OFFSET: i8 = 16;
    const TERMS: usize = 0;
    const NR: usize = 4;
    const NC: usize = 2;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], _: &mut [__m256i], _: &mut [f32]) -> f32 {
        let fifth = _mm256_and_si256(
            bit_bytes(u32::from_le_bytes(self.qh)),
            _mm256_set1_epi8(0x10),
        );
        // SAFETY: the caller guarantees the features.
        codes[0] = _mm256_or_si256(unsafe { nibbles(&self.qs) }, fifth);
        // SAFETY: as above.
        unsafe { fp16(self.d) }
    }
    fn act_terms(_: &BlockQ8_0, _: f32, _: &mut [f32]) {}
}

impl Avx2Gemm for BlockQ8_0 {
    const RUNS: usize = 1;
    const SCALED: bool = false;
    const SIGNED: bool = true;
    const TERMS: usize = 0;
    const NR: usize = 4;
    const NC: usize = 2;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], _: &mut [__m256i], _: &mut [f32]) -> f32 {
        // SAFETY: qs is 32 readable bytes; loadu has no alignment requirement.
        codes[0] = unsafe { _mm256_loadu_si256(self.qs.as_ptr().cast()) };
        // SAFETY: the caller guarantees the features.
        unsafe { fp16(self.d) }
    }
    fn act_terms(_: &BlockQ8_0, _: f32, _: &mut [f32]) {}
}

/// Runs `2c` and `2c + 1` are the low and high nibbles of `qs[32c..]`,
/// each with its sub-block's 6-bit scale; the mins meet the Q8_K sums of
/// the two 16-element halves of the run.
impl Avx2Gemm for BlockQ4K {
    const RUNS: usize = 8;
    const SCALED: bool = true;
    const SIGNED: bool = false;
    const TERMS: usize = 8;
    const NR: usize = 2;
    const NC: usize = 2;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(
        &self,
        codes: &mut [__m256i],
        scales: &mut [__m256i],
        mins: &mut [f32],
    ) -> f32 {
        let mask = _mm256_set1_epi8(0x0F);
        for c in 0..4 {
            // SAFETY: qs[32c..32c + 32] is inside qs[128]; loadu has no alignment requirement.
            let q4 = unsafe { _mm256_loadu_si256(self.qs[32 * c..].as_ptr().cast()) };
            codes[2 * c] = _mm256_and_si256(q4, mask);
            codes[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q4, 4), mask);
        }
        // SAFETY: the caller guarantees the features.
        let (d, dmin) = unsafe { (fp16(self.d), fp16(self.dmin)) };
        for j in 0..8 {
            let (sc, m) = crate::quant::q4_k::scale_min_k4(j, &self.scales);
            scales[j] = _mm256_set1_epi16(i16::from(sc));
            mins[j] = -dmin * f32::from(m);
        }
        d
    }
    fn act_terms(a: &BlockQ8K, d: f32, s: &mut [f32]) {
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = d * f32::from(a.bsums[2 * j] + a.bsums[2 * j + 1]);
        }
    }
}

/// Codes rebuilt unsigned (0..64) as in the dot, run `4n + k` covering
/// elements `128n + 32k..`, its two 16-element sub-blocks' scales in the
/// two 128-bit lanes; the offset of 32 comes off each `i16` pair before the
/// scales, exact in integers as in the dot (`63 * 128 * 2 + 32 * 128 * 2`
/// fits an `i16`).
impl Avx2Gemm for BlockQ6K {
    const RUNS: usize = 8;
    const SCALED: bool = true;
    const SIGNED: bool = false;
    const OFFSET: i8 = 32;
    const TERMS: usize = 0;
    const NR: usize = 2;
    const NC: usize = 2;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(&self, codes: &mut [__m256i], scales: &mut [__m256i], _: &mut [f32]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x03);
        for n in 0..2 {
            // SAFETY: 32-byte loads at 32n of qh[64] and 64n, 64n + 32 of ql[128].
            let (qh, ql0, ql1) = unsafe {
                (
                    _mm256_loadu_si256(self.qh[32 * n..].as_ptr().cast()),
                    _mm256_loadu_si256(self.ql[64 * n..].as_ptr().cast()),
                    _mm256_loadu_si256(self.ql[64 * n + 32..].as_ptr().cast()),
                )
            };
            let high = |shift: i32| {
                let h = match shift {
                    0 => qh,
                    2 => _mm256_srli_epi16(qh, 2),
                    4 => _mm256_srli_epi16(qh, 4),
                    _ => _mm256_srli_epi16(qh, 6),
                };
                _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
            };
            codes[4 * n] = _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0));
            codes[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), high(2));
            codes[4 * n + 2] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(4));
            codes[4 * n + 3] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(6));
        }
        for (v, s) in scales.iter_mut().enumerate().take(8) {
            *s = _mm256_set_m128i(
                _mm_set1_epi16(i16::from(self.scales[2 * v + 1])),
                _mm_set1_epi16(i16::from(self.scales[2 * v])),
            );
        }
        // SAFETY: the caller guarantees the features.
        unsafe { fp16(self.d) }
    }
    fn act_terms(_: &BlockQ8K, _: f32, _: &mut [f32]) {}
}

/// `out[c * rows + r] = w[r] · a[c]` (see `dispatch::GemmFn`): the AVX2
/// gemm for any number of columns (decode included, for batch
/// invariance), `dot` per output only for a shape the kernel does not take
/// (which `ops::matmul` never passes).
pub(super) fn gemm<W>(dot: VecDotFn<W, W::Act>, w: &[W], a: &[W::Act], bpr: usize, out: &mut [f32])
where
    W: Avx2Gemm,
    W::Act: GemmAct,
{
    if !gemm_shape_ok(w, a, bpr, out) || a.len() < bpr || W::TERMS > MAX_TERMS || W::RUNS > MAX_RUNS
    {
        return gemm_by_dots(dot, w, a, bpr, out);
    }
    if a.len() == bpr {
        // SAFETY: as below; one column of bpr blocks, w.len() / bpr rows
        // and at least as many outputs (gemm_shape_ok).
        return unsafe { gemv_k(w, a, bpr, out) };
    }
    // SAFETY: only reached through tables built after AVX2/FMA/F16C were
    // detected; the shapes were checked above.
    unsafe { gemm_k(w, a, bpr, out) }
}

/// Decode: every row against one column, four rows at a time (four
/// independent accumulators hide the FMA latency; the column's loads serve
/// all four), straight from the file's blocks with no tile buffer.
///
/// Each output is the float sequence of [`tile_k`] and [`corrections`]:
/// per block `acc = fma(cvt(isum), d_w * d_a, acc)`, then
/// [`hsum_pairs`], then the correction terms (per block an FMA chain from
/// zero, the blocks' sums added in order) added last.
///
/// # Safety
/// AVX2/FMA/F16C; `a` holds `bpr` blocks, `w` whole rows of `bpr` blocks
/// and `out` at least one float per row.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_k<W>(w: &[W], a: &[W::Act], bpr: usize, out: &mut [f32])
where
    W: Avx2Gemm,
    W::Act: GemmAct,
{
    let rows = w.len() / bpr;
    // unpacked blocks of up to four rows, set once per call (not per row:
    // a row of a 576-wide Q8_0 matrix is shorter than these buffers)
    let mut buf = GemvBuf {
        codes: [[_mm256_setzero_si256(); MAX_RUNS]; 4],
        scales: [[_mm256_setzero_si256(); MAX_RUNS]; 4],
        mins: [[0f32; MAX_TERMS]; 4],
    };
    let mut r = 0;
    while r + 4 <= rows {
        // SAFETY: forwarded; rows r..r + 4 exist.
        unsafe {
            gemv_rows::<W, 4>(
                &mut buf,
                &w[r * bpr..(r + 4) * bpr],
                a,
                bpr,
                &mut out[r..r + 4],
            )
        };
        r += 4;
    }
    while r < rows {
        // SAFETY: as above, row r exists.
        unsafe {
            gemv_rows::<W, 1>(
                &mut buf,
                &w[r * bpr..(r + 1) * bpr],
                a,
                bpr,
                &mut out[r..r + 1],
            )
        };
        r += 1;
    }
}

/// How many groups of rows ahead [`gemv_rows`] prefetches.
const PREFETCH_GROUPS: usize = 2;

/// One block of up to four rows, unpacked ([`Avx2Gemm::unpack`]).
struct GemvBuf {
    codes: [[__m256i; MAX_RUNS]; 4],
    scales: [[__m256i; MAX_RUNS]; 4],
    mins: [[f32; MAX_TERMS]; 4],
}

/// `NR` rows of [`gemv_k`].
///
/// # Safety
/// As [`gemv_k`], with `w` exactly `NR` rows (`NR <= 4`) and `out` `NR`
/// floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_rows<W, const NR: usize>(
    buf: &mut GemvBuf,
    w: &[W],
    a: &[W::Act],
    bpr: usize,
    out: &mut [f32],
) where
    W: Avx2Gemm,
    W::Act: GemmAct,
{
    let (runs, t) = (W::RUNS, W::TERMS);
    let ones = _mm256_set1_epi16(1);
    let GemvBuf {
        codes,
        scales,
        mins,
    } = buf;
    let mut s = [0f32; MAX_TERMS];
    let mut acc = [_mm256_setzero_ps(); NR];
    let mut corr = [0f32; NR];
    // the rows after these (contiguous in the band) are fetched ahead, a
    // slice of them per block: interleaved rows defeat the hardware
    // stream prefetcher, which the one-row dots had kept busy
    let ahead = w
        .as_ptr()
        .cast::<u8>()
        .wrapping_add(PREFETCH_GROUPS * NR * bpr * size_of::<W>());
    let per_block = NR * size_of::<W>();
    for (k, b) in a.iter().enumerate().take(bpr) {
        let mut at = 0;
        while at < per_block {
            // a prefetch never faults, past the band's end included
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(k * per_block + at).cast());
            at += 64;
        }
        let dc = b.scale();
        if t > 0 {
            W::act_terms(b, dc, &mut s[..t]);
        }
        let mut dr = [0f32; NR];
        for r in 0..NR {
            // SAFETY: the features are enabled; the arrays hold MAX_RUNS >=
            // RUNS vectors and MAX_TERMS >= TERMS floats.
            dr[r] = unsafe {
                w[r * bpr + k].unpack(
                    &mut codes[r][..runs],
                    &mut scales[r][..runs],
                    &mut mins[r][..t],
                )
            };
        }
        let mut isum = [_mm256_setzero_si256(); NR];
        let y_codes = b.codes();
        for v in 0..runs {
            // SAFETY: each activation block holds 32 * RUNS codes.
            let y = unsafe { _mm256_loadu_si256(y_codes[32 * v..32 * v + 32].as_ptr().cast()) };
            let off = if W::OFFSET != 0 {
                _mm256_maddubs_epi16(_mm256_set1_epi8(W::OFFSET), y)
            } else {
                _mm256_setzero_si256()
            };
            for r in 0..NR {
                let x = codes[r][v];
                let sc = if W::SCALED { scales[r][v] } else { ones };
                let (ux, sy) = if W::SIGNED {
                    (_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
                } else {
                    (x, y)
                };
                let mut pairs = _mm256_maddubs_epi16(ux, sy);
                if W::OFFSET != 0 {
                    pairs = _mm256_sub_epi16(pairs, off);
                }
                isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(pairs, sc));
            }
        }
        for r in 0..NR {
            let d = _mm256_set1_ps(dr[r] * dc);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), d, acc[r]);
            if t > 0 {
                let mut blk = 0f32;
                for j in 0..t {
                    blk = mins[r][j].mul_add(s[j], blk);
                }
                corr[r] += blk;
            }
        }
    }
    for r in 0..NR {
        let dot = hsum_pairs(acc[r]);
        out[r] = if t > 0 { dot + corr[r] } else { dot };
    }
}

/// One tile's worth of unpacked rows, block-major: entry `(k * RUNS + v) *
/// nr + r` of `codes` / `scales` is run `v` of block `k` of row `r`, entry
/// `k * nr + r` of `d` its scale, entry `(k * TERMS + j) * nr + r` of
/// `mins` its correction coefficients.
struct RowTile {
    codes: Vec<__m256i>,
    scales: Vec<__m256i>,
    d: Vec<f32>,
    mins: Vec<f32>,
    /// Scratch: the products of row and column scales of one tile,
    /// `[k][c][r]`.
    dd: Vec<f32>,
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_k<W>(w: &[W], a: &[W::Act], bpr: usize, out: &mut [f32])
where
    W: Avx2Gemm,
    W::Act: GemmAct,
{
    let rows = w.len() / bpr;
    let cols = a.len() / bpr;
    let t = W::TERMS;
    // activation scales, [c][k]
    let ad: Vec<f32> = a.iter().map(GemmAct::scale).collect();
    // activation sides of the correction terms, in groups of 8 columns:
    // [c / 8][k * TERMS + j][c % 8], zero past the last column
    let terms = bpr * t;
    let mut st = vec![0f32; cols.div_ceil(8) * terms * 8];
    if t > 0 {
        let mut s = [0f32; MAX_TERMS];
        for (c, ac) in a.chunks_exact(bpr).enumerate() {
            let group = &mut st[(c / 8) * terms * 8..(c / 8 + 1) * terms * 8];
            for (k, b) in ac.iter().enumerate() {
                W::act_terms(b, ad[c * bpr + k], &mut s[..t]);
                for (j, &sj) in s[..t].iter().enumerate() {
                    group[(k * t + j) * 8 + c % 8] = sj;
                }
            }
        }
    }
    let nr_max = W::NR.max(1);
    let mut tile = RowTile {
        codes: vec![_mm256_setzero_si256(); bpr * W::RUNS * nr_max],
        scales: vec![_mm256_setzero_si256(); if W::SCALED { bpr * W::RUNS * nr_max } else { 0 }],
        d: vec![0f32; bpr * nr_max],
        mins: vec![0f32; terms * nr_max],
        dd: vec![0f32; bpr * nr_max * W::NC.max(1)],
    };
    let shape = Shape { bpr, rows, terms };
    for c0 in (0..cols).step_by(COL_CHUNK) {
        let nc = (cols - c0).min(COL_CHUNK);
        let mut r0 = 0;
        while r0 < rows {
            let nr = if rows - r0 >= nr_max { nr_max } else { 1 };
            // SAFETY: the features are enabled here; rows r0..r0 + nr exist.
            unsafe { fill(&mut tile, &w[r0 * bpr..(r0 + nr) * bpr], nr, bpr) };
            let at = Tile { r0, c0, nc };
            // SAFETY: as above; the tile's rows and columns exist, `out`
            // holds rows * cols outputs (gemm_shape_ok) and the buffers were
            // filled for nr rows of bpr blocks.
            unsafe {
                match (nr, W::NR, W::NC) {
                    (1, _, 1) => cols_of::<W, 1, 1>(&mut tile, a, &ad, &st, shape, at, out),
                    (1, _, 2) => cols_of::<W, 1, 2>(&mut tile, a, &ad, &st, shape, at, out),
                    (1, _, _) => cols_of::<W, 1, 4>(&mut tile, a, &ad, &st, shape, at, out),
                    (_, 2, 2) => cols_of::<W, 2, 2>(&mut tile, a, &ad, &st, shape, at, out),
                    (_, 2, _) => cols_of::<W, 2, 4>(&mut tile, a, &ad, &st, shape, at, out),
                    (_, _, 1) => cols_of::<W, 4, 1>(&mut tile, a, &ad, &st, shape, at, out),
                    (_, _, _) => cols_of::<W, 4, 2>(&mut tile, a, &ad, &st, shape, at, out),
                }
            }
            r0 += nr;
        }
    }
}

/// The call's dimensions: blocks per row, rows, correction terms per row.
#[derive(Clone, Copy)]
struct Shape {
    bpr: usize,
    rows: usize,
    terms: usize,
}

/// Where a row tile sits: its first row, and the chunk of `nc` columns from
/// `c0` it is taken against.
#[derive(Clone, Copy)]
struct Tile {
    r0: usize,
    c0: usize,
    nc: usize,
}

/// Unpacks `nr` rows of `bpr` blocks into `tile`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fill<W: Avx2Gemm>(tile: &mut RowTile, w: &[W], nr: usize, bpr: usize) {
    let (runs, t) = (W::RUNS, W::TERMS);
    let mut codes = [_mm256_setzero_si256(); MAX_RUNS];
    let mut scales = [_mm256_setzero_si256(); MAX_RUNS];
    let mut mins = [0f32; MAX_TERMS];
    for (r, row) in w.chunks_exact(bpr).enumerate() {
        for (k, b) in row.iter().enumerate() {
            // SAFETY: the features are enabled here; the arrays hold MAX_RUNS >= RUNS
            // vectors and MAX_TERMS >= TERMS floats.
            let d = unsafe { b.unpack(&mut codes[..runs], &mut scales[..runs], &mut mins[..t]) };
            for v in 0..runs {
                tile.codes[(k * runs + v) * nr + r] = codes[v];
                if W::SCALED {
                    tile.scales[(k * runs + v) * nr + r] = scales[v];
                }
            }
            tile.d[k * nr + r] = d;
            for (j, &m) in mins[..t].iter().enumerate() {
                tile.mins[(k * t + j) * nr + r] = m;
            }
        }
    }
}

/// The tile's rows against every column of the chunk: `NC` at a time, the
/// rest one by one, then the correction terms.
///
/// # Safety
/// AVX2/FMA/F16C; `tile` holds `NR` rows of `shape.bpr` blocks; rows
/// `r0..r0 + NR` and columns `c0..c0 + nc` exist; `out` holds `rows *
/// cols` outputs; `ad` and `st` were built from `a` as in [`gemm_k`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn cols_of<W, const NR: usize, const NC: usize>(
    tile: &mut RowTile,
    a: &[W::Act],
    ad: &[f32],
    st: &[f32],
    shape: Shape,
    at: Tile,
    out: &mut [f32],
) where
    W: Avx2Gemm,
    W::Act: GemmAct,
{
    let end = at.c0 + at.nc;
    let mut c = at.c0;
    while c + NC <= end {
        // SAFETY: forwarded from the caller; columns c..c + NC exist.
        unsafe { tile_k::<W, NR, NC>(tile, a, ad, shape, at.r0, c, out) };
        c += NC;
    }
    while c < end {
        // SAFETY: as above, column c exists.
        unsafe { tile_k::<W, NR, 1>(tile, a, ad, shape, at.r0, c, out) };
        c += 1;
    }
    if shape.terms > 0 {
        // SAFETY: forwarded from the caller.
        unsafe { corrections::<NR>(W::TERMS, &tile.mins, st, shape, at, out) };
    }
}

/// `NR` rows x `NC` columns from `c0`: the integer dots of every block,
/// scaled and accumulated in `NR * NC` registers, one horizontal sum per
/// output, written (not added) to `out`.
///
/// The products of row and column scales are computed first, four rows
/// per multiply, into `dd`, where the block loop reads them as broadcast
/// loads: a product per pair in that loop cost a multiply and a shuffle.
///
/// # Safety
/// As [`cols_of`], with columns `c0..c0 + NC` existing.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_k<W, const NR: usize, const NC: usize>(
    tile: &mut RowTile,
    a: &[W::Act],
    ad: &[f32],
    shape: Shape,
    r0: usize,
    c0: usize,
    out: &mut [f32],
) where
    W: Avx2Gemm,
    W::Act: GemmAct,
{
    let (bpr, runs) = (shape.bpr, W::RUNS);
    let ones = _mm256_set1_epi16(1);
    let codes = tile.codes.as_ptr();
    let scales = tile.scales.as_ptr();
    let acts = a.as_ptr();
    for (k, ddk) in tile.dd.chunks_exact_mut(NR * NC).take(bpr).enumerate() {
        let dr = &tile.d[k * NR..(k + 1) * NR];
        for (c, ddc) in ddk.chunks_exact_mut(NR).enumerate() {
            let dc = ad[(c0 + c) * bpr + k];
            if NR == 4 {
                // SAFETY: dr and ddc hold 4 floats.
                unsafe {
                    let p = _mm_mul_ps(_mm_loadu_ps(dr.as_ptr()), _mm_set1_ps(dc));
                    _mm_storeu_ps(ddc.as_mut_ptr(), p);
                }
            } else {
                for (o, &d) in ddc.iter_mut().zip(dr) {
                    *o = d * dc;
                }
            }
        }
    }
    let dd = tile.dd.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); NC]; NR];
    for k in 0..bpr {
        let mut isum = [[_mm256_setzero_si256(); NC]; NR];
        for v in 0..runs {
            // SAFETY: column c0 + c < cols has block k at (c0 + c) * bpr + k
            // < a.len(); each block holds 32 * RUNS codes.
            let y: [__m256i; NC] = core::array::from_fn(|c| unsafe {
                let b = &*acts.add((c0 + c) * bpr + k);
                _mm256_loadu_si256(b.codes().as_ptr().add(32 * v).cast())
            });
            // the offset's share of each pair, once per column for all rows
            let off: [__m256i; NC] = core::array::from_fn(|c| {
                if W::OFFSET != 0 {
                    _mm256_maddubs_epi16(_mm256_set1_epi8(W::OFFSET), y[c])
                } else {
                    _mm256_setzero_si256()
                }
            });
            for (r, isum_r) in isum.iter_mut().enumerate() {
                let i = (k * runs + v) * NR + r;
                // SAFETY: the tile was filled for NR rows of bpr blocks of
                // RUNS runs: i < codes.len() (and scales.len() when SCALED).
                let (x, sc) =
                    unsafe { (*codes.add(i), if W::SCALED { *scales.add(i) } else { ones }) };
                let ux = if W::SIGNED { _mm256_sign_epi8(x, x) } else { x };
                for (c, s) in isum_r.iter_mut().enumerate() {
                    let sy = if W::SIGNED {
                        _mm256_sign_epi8(y[c], x)
                    } else {
                        y[c]
                    };
                    let mut pairs = _mm256_maddubs_epi16(ux, sy);
                    if W::OFFSET != 0 {
                        pairs = _mm256_sub_epi16(pairs, off[c]);
                    }
                    let p = _mm256_madd_epi16(pairs, sc);
                    *s = _mm256_add_epi32(*s, p);
                }
            }
        }
        for (r, (acc_r, isum_r)) in acc.iter_mut().zip(&isum).enumerate() {
            for (c, (acc_rc, s)) in acc_r.iter_mut().zip(isum_r).enumerate() {
                // SAFETY: (k * NC + c) * NR + r < bpr * NR * NC, filled above.
                let d = unsafe { _mm256_broadcast_ss(&*dd.add((k * NC + c) * NR + r)) };
                *acc_rc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s), d, *acc_rc);
            }
        }
    }
    let o = out.as_mut_ptr();
    for c in 0..NC {
        if NR == 4 {
            // the four rows' sums of column c side by side: one store
            let sums = hsum4([acc[0][c], acc[1][c], acc[2][c], acc[3][c]]);
            // SAFETY: rows r0..r0 + 4 < rows and column c0 + c < cols, so
            // the four floats lie below rows * cols <= out.len().
            unsafe { _mm_storeu_ps(o.add((c0 + c) * shape.rows + r0), sums) };
        } else {
            for (r, acc_r) in acc.iter().enumerate() {
                // SAFETY: row r0 + r < rows and column c0 + c < cols, so the
                // index is below rows * cols <= out.len().
                unsafe { *o.add((c0 + c) * shape.rows + r0 + r) = hsum_pairs(acc_r[c]) };
            }
        }
    }
}

/// The horizontal sum of one vector in the order [`hsum4`] gives each of
/// its four: `((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))`, so a row
/// outside a four-row tile gets the bits it would get inside one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_pairs(v: __m256) -> f32 {
    let s = _mm256_hadd_ps(v, v);
    let s = _mm256_hadd_ps(s, s);
    _mm_cvtss_f32(_mm_add_ps(
        _mm256_castps256_ps128(s),
        _mm256_extractf128_ps(s, 1),
    ))
}

/// The horizontal sums of four vectors, in order, each as [`hsum_pairs`]
/// gives it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum4(v: [__m256; 4]) -> __m128 {
    let s = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1))
}

/// Adds `sum_j mins[r][j] * s[c][j]` to the tile's outputs, eight columns
/// per step: per block an FMA chain over its `per_block` terms from zero,
/// the blocks' sums added in order (the sequence [`gemv_rows`] repeats).
///
/// # Safety
/// As [`cols_of`]; `mins` holds `terms` coefficients of `NR` rows and `st`
/// the activation side in groups of 8 columns.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn corrections<const NR: usize>(
    per_block: usize,
    mins: &[f32],
    st: &[f32],
    shape: Shape,
    at: Tile,
    out: &mut [f32],
) {
    let terms = shape.terms;
    let end = at.c0 + at.nc;
    let m = mins.as_ptr();
    // c0 is a multiple of COL_CHUNK, itself a multiple of 8
    for g in at.c0 / 8..end.div_ceil(8) {
        let s = st[g * terms * 8..(g + 1) * terms * 8].as_ptr();
        let mut acc = [_mm256_setzero_ps(); NR];
        for k in 0..terms / per_block {
            // one block's terms in their own chain, then added: the blocks'
            // chains are independent, which decode needs (`gemv_rows`)
            let mut blk = [_mm256_setzero_ps(); NR];
            for i in k * per_block..(k + 1) * per_block {
                // SAFETY: the group holds terms rows of 8 floats; the
                // tile's mins hold terms * NR floats.
                let sv = unsafe { _mm256_loadu_ps(s.add(8 * i)) };
                for (r, blk_r) in blk.iter_mut().enumerate() {
                    // SAFETY: as above.
                    let mv = unsafe { _mm256_broadcast_ss(&*m.add(i * NR + r)) };
                    *blk_r = _mm256_fmadd_ps(mv, sv, *blk_r);
                }
            }
            for (acc_r, blk_r) in acc.iter_mut().zip(blk) {
                *acc_r = _mm256_add_ps(*acc_r, blk_r);
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: lanes is 8 writable floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc_r) };
            for (j, v) in lanes.iter().enumerate() {
                let c = 8 * g + j;
                if c < end {
                    out[c * shape.rows + at.r0 + r] += v;
                }
            }
        }
    }
}
