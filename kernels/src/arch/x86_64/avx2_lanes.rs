//! AVX2 gemm for Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K with one weight row
//! per 32-bit lane: eight rows side by side, so each block's
//! integer dot ends in the lane of its row and no output needs a
//! horizontal sum.
//!
//! A group of eight rows is unpacked block by block ([`Avx2Gemm::unpack`])
//! and each 32-code run transposed as an 8 x 8 matrix of 32-bit words:
//! vector `i` of a run holds its bytes `4i..4i + 4` of the eight rows. Against a column,
//! word `i` of the activation block is broadcast and `vpmaddubsw` gives
//! every row's two pairs at once; eight such products add up in `i16`
//! (four for Q5_0's 5-bit codes, one for Q8_0's signed ones) before one
//! `vpmaddwd` into the rows' `i32` sums (by the rows' sub-block scales
//! for Q4_K, a vector with each row's scale in its lane). Per block and column the float side
//! is then one conversion, one product of the eight row scales by the
//! column's, and one FMA for all eight rows, where the row-tile kernel this
//! replaced paid a conversion, a broadcast and an FMA per row and per
//! column; that float work had bound it at the sizes past the default
//! model. The blocks' unpacking is [`super::avx2_gemm`]'s.
//!
//! The codes' offset (Q4_0: 8, Q5_0: 16) comes off the block's exact
//! integer sum as `OFFSET * sum(y)`, per column; Q4_1's minimum meets
//! Q8_1's stored `s` in a second FMA per block, Q4_K's eight mins the
//! Q8_K sums in an FMA chain per block added to the accumulator. Q6_K's
//! offset of 32 is weighted by its 16-code sub-blocks' scales, so it comes
//! off as `32 * sum_s scale[s] * bsum[s]` from the Q8_K sums ([`sub_offset`]).
//!
//! **Batch invariance.** A row's output is one float sequence however it is
//! batched: from zero, per block in order, `acc = fma(float(isum), d_w *
//! d_a, acc)`, then the correction terms ([`scale_add`]), where `isum` is
//! the block's exact integer dot. Lanes never mix, so the rows beside a row
//! (or the zero rows that pad a group) cannot change it, and decode (one
//! column, [`gemv`]) runs the very same [`block`] step on each block.
//!
//! Soundness: the `unsafe fn`s need AVX2, FMA and F16C, which
//! `super::table` checked before handing out the entries that reach
//! [`gemm`]; it checks the shapes (`gemm_shape_ok`) before the kernels
//! index without bounds checks.

use super::avx2_gemm::{Avx2Gemm, GemmAct, MAX_RUNS, MAX_TERMS};
use crate::dispatch::{gemm_by_dots, gemm_shape_ok, VecDotFn};
use crate::quant::blocks::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ6K, BlockQ8K, BlockQ8_0};
use crate::quant::q5_0::BlockQ5_0;
use core::arch::x86_64::*;

/// Rows per group: one per 32-bit lane.
pub(super) const LANES: usize = 8;

/// Columns per step of the prefill kernel (their `i16` and float
/// accumulators, the row group's code vector and a broadcast fit the 16
/// registers).
pub(super) const NC: usize = 4;

/// Columns whose activations stay in L2 while one row group at a time is
/// unpacked for them (32 tokens of an 8192-wide Q8_0 row: 278 KB).
pub(super) const COL_CHUNK: usize = 32;

/// How many row groups ahead decode prefetches.
const PREFETCH_GROUPS: usize = 2;

/// A block type the lane kernel takes: runs of 32 codes, unsigned below 16
/// or 32, or signed (Q8_0).
pub(super) trait Lanes: Avx2Gemm {
    /// Broadcast words whose `vpmaddubsw` products add up in `i16` before
    /// widening: `GROUP * 2 * max|code| * 128` must stay below `2^15`.
    const GROUP: usize;
    /// Sub-block scales per run (Q6_K: one per 16 codes, in the two
    /// 128-bit halves of [`Avx2Gemm::unpack`]'s scale vector).
    const HALVES: usize = 1;
    /// The code offset comes per 16-code sub-block, weighted by its scale
    /// (Q6_K), off the activation's 16-element sums rather than per block.
    const SUB_OFFSET: bool = false;
    /// The row's 16 sub-block scales (`SUB_OFFSET` types).
    fn sub_scales(&self) -> &[i8; 16] {
        &[0; 16]
    }
    /// The activation block's 16-element sums (`SUB_OFFSET` types).
    fn act_sums(_: &Self::Act) -> &[i16; 16] {
        &[0; 16]
    }
}

impl Lanes for BlockQ4_0 {
    const GROUP: usize = 8;
}
impl Lanes for BlockQ4_1 {
    const GROUP: usize = 8;
}
impl Lanes for BlockQ5_0 {
    const GROUP: usize = 4;
}
impl Lanes for BlockQ8_0 {
    const GROUP: usize = 1;
}
impl Lanes for BlockQ4K {
    const GROUP: usize = 8;
}
/// `sum (x - 32) y` per sub-block is `sum x y - 32 * bsum`: the code
/// products stay unsigned (two words per `i16`: `2 * 2 * 63 * 128`), and
/// the offset is one `vpmaddwd` of the rows' scale pairs by the column's
/// Q8_K sums per run.
impl Lanes for BlockQ6K {
    const GROUP: usize = 2;
    const HALVES: usize = 2;
    const SUB_OFFSET: bool = true;
    fn sub_scales(&self) -> &[i8; 16] {
        &self.scales
    }
    fn act_sums(a: &BlockQ8K) -> &[i16; 16] {
        &a.bsums
    }
}

/// What a step needs of one activation block: its codes, its scale, the
/// integer share of the code offset (`OFFSET * sum(y)`) and the activation
/// sides of the correction terms (Q8_1's `s`, Q8_K's scaled sums).
#[derive(Clone, Copy)]
pub(super) struct Col {
    pub(super) codes: *const i8,
    /// The 16-element sums (`SUB_OFFSET` types).
    pub(super) sums: *const i16,
    /// The same sums paired as a packed layout's scale vectors pair their
    /// sub-blocks, filled by that layout's kernel (`avx2_x16`), zero here.
    pub(super) sum_pairs: [i32; 8],
    d: f32,
    off: i32,
    terms: [f32; MAX_TERMS],
}

pub(super) fn col_of<W: Lanes>(b: &W::Act) -> Col
where
    W::Act: GemmAct,
{
    let d = b.scale();
    let codes = b.codes();
    let off = if W::OFFSET != 0 && !W::SUB_OFFSET {
        i32::from(W::OFFSET) * codes[..32].iter().map(|&c| i32::from(c)).sum::<i32>()
    } else {
        0
    };
    let mut terms = [0f32; MAX_TERMS];
    W::act_terms(b, d, &mut terms[..W::TERMS]);
    Col {
        codes: codes.as_ptr(),
        sums: W::act_sums(b).as_ptr(),
        sum_pairs: [0; 8],
        d,
        off,
        terms,
    }
}

/// `out[c * rows + r] = w[r] · a[c]` (see `dispatch::GemmFn`), decode
/// included; `dot` per output only for a shape the kernel does not take
/// (which `ops::matmul` never passes).
pub(super) fn gemm<W>(dot: VecDotFn<W, W::Act>, w: &[W], a: &[W::Act], bpr: usize, out: &mut [f32])
where
    W: Lanes,
    W::Act: GemmAct,
{
    if !gemm_shape_ok(w, a, bpr, out)
        || a.len() < bpr
        || W::RUNS > MAX_RUNS
        || W::TERMS > MAX_TERMS
        // an offset is one per block of one unscaled run, or per sub-block
        || (W::OFFSET != 0 && !W::SUB_OFFSET && (W::RUNS != 1 || W::SCALED))
        || (W::SUB_OFFSET && (W::RUNS != 8 || W::HALVES != 2))
        || !LANES.is_multiple_of(W::GROUP * W::HALVES)
    {
        return gemm_by_dots(dot, w, a, bpr, out);
    }
    let cols: Vec<Col> = a.iter().map(col_of::<W>).collect();
    if a.len() == bpr {
        // SAFETY: only reached through tables built after AVX2/FMA/F16C
        // were detected; one column of bpr blocks, whole rows of bpr blocks
        // and at least one output per row (gemm_shape_ok).
        return unsafe { gemv(w, &cols, bpr, out) };
    }
    // SAFETY: as above; `cols` holds a.len() / bpr columns of bpr blocks.
    unsafe { gemm_k(w, &cols, bpr, out) }
}

/// A row group's blocks in lanes, block-major: run `v` of block `k` is the
/// eight vectors from `x[(k * RUNS + v) * 8]`, its scales `sc[(k * RUNS +
/// v) * HALVES + h]` (each row's in its lane's two `i16`), for
/// `SUB_OFFSET` types the run's two sub-block scales side by side in each
/// lane `sp[k * RUNS + v]`, the block's row scales `d[k]`, its correction
/// coefficients `m[k * TERMS + j]`. Rows past the group's end are zero
/// codes, scales and coefficients.
struct Panel {
    x: Vec<__m256i>,
    sc: Vec<__m256i>,
    sp: Vec<__m256i>,
    d: Vec<__m256>,
    m: Vec<__m256>,
}

/// Unpacks the `nr <= 8` rows of `w` (`bpr` blocks each) into `p`.
///
/// # Safety
/// AVX2/FMA/F16C; `p` was sized for `bpr` blocks of `W`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fill<W: Lanes>(p: &mut Panel, w: &[W], nr: usize, bpr: usize) {
    let (runs, t) = (W::RUNS, W::TERMS);
    for k in 0..bpr {
        let mut codes = [[_mm256_setzero_si256(); MAX_RUNS]; LANES];
        let mut sc = [[0i16; 2 * LANES]; 2 * MAX_RUNS];
        let mut sp = [[0i16; 2 * LANES]; MAX_RUNS];
        let mut d = [0f32; LANES];
        let mut m = [[0f32; LANES]; MAX_TERMS];
        for r in 0..nr {
            let mut scales = [_mm256_setzero_si256(); MAX_RUNS];
            let mut mins = [0f32; MAX_TERMS];
            // SAFETY: row r < nr has block k < bpr; the features are enabled.
            d[r] = unsafe {
                w.get_unchecked(r * bpr + k).unpack(
                    &mut codes[r][..runs],
                    &mut scales[..runs],
                    &mut mins[..t],
                )
            };
            if W::SCALED {
                for (v, s) in scales[..runs].iter().enumerate() {
                    // the run's scale in every i16 of each 128-bit half
                    let lo = _mm256_extract_epi16::<0>(*s) as i16;
                    let hi = _mm256_extract_epi16::<8>(*s) as i16;
                    for (h, s16) in [lo, hi].into_iter().enumerate().take(W::HALVES) {
                        sc[v * W::HALVES + h][2 * r] = s16;
                        sc[v * W::HALVES + h][2 * r + 1] = s16;
                    }
                    if W::SUB_OFFSET {
                        sp[v][2 * r] = lo;
                        sp[v][2 * r + 1] = hi;
                    }
                }
            }
            for j in 0..t {
                m[j][r] = mins[j];
            }
        }
        for v in 0..runs {
            let rows: [__m256i; LANES] = core::array::from_fn(|r| codes[r][v]);
            let at = (k * runs + v) * LANES;
            p.x[at..at + LANES].copy_from_slice(&transpose(rows));
            if W::SCALED {
                for h in 0..W::HALVES {
                    let at = v * W::HALVES + h;
                    // SAFETY: sc[at] is 16 readable i16.
                    p.sc[k * runs * W::HALVES + at] =
                        unsafe { _mm256_loadu_si256(sc[at].as_ptr().cast()) };
                }
            }
            if W::SUB_OFFSET {
                // SAFETY: sp[v] is 16 readable i16.
                p.sp[k * runs + v] = unsafe { _mm256_loadu_si256(sp[v].as_ptr().cast()) };
            }
        }
        // SAFETY: d and each m[j] are 8 readable floats.
        unsafe {
            p.d[k] = _mm256_loadu_ps(d.as_ptr());
            for (pm, mj) in p.m[k * t..(k + 1) * t].iter_mut().zip(&m) {
                *pm = _mm256_loadu_ps(mj.as_ptr());
            }
        }
    }
}

/// Eight vectors of eight 32-bit words, transposed: word `i` of vector `r`
/// becomes word `r` of vector `i`. Also the k-quant x16 kernels' `Act8`
/// copies (`kquant_x16.rs`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn transpose(r: [__m256i; LANES]) -> [__m256i; LANES] {
    // words (0, 1) of row pairs, then (0..4) of row quads, per 128-bit half
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    // rows 0..4 (u0..u3) and 4..8 (u4..u7) of words i | i + 4
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// Word `i` of run `v` of eight rows (`xi`, one row per 32-bit lane)
/// against each column's same word: every row's two pairs of products per
/// column added to its `i16` sums in `pairs` (signed codes by the sign
/// trick, as `vpmaddubsw` takes one unsigned side).
///
/// # Safety
/// AVX2/FMA/F16C; each column's `codes` point at `32 * (v + 1)` codes, `i < 8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn word_products<W: Lanes, const N: usize>(
    xi: __m256i,
    cols: &[&Col; N],
    v: usize,
    i: usize,
    pairs: &mut [__m256i; N],
) {
    let ux = if W::SIGNED {
        _mm256_sign_epi8(xi, xi)
    } else {
        xi
    };
    for (pc, col) in pairs.iter_mut().zip(cols) {
        // SAFETY: word i of run v of the column's codes.
        let word = unsafe { col.codes.add(32 * v + 4 * i).cast::<i32>().read_unaligned() };
        let y = _mm256_set1_epi32(word);
        let sy = if W::SIGNED {
            _mm256_sign_epi8(y, xi)
        } else {
            y
        };
        *pc = _mm256_add_epi16(*pc, _mm256_maddubs_epi16(ux, sy));
    }
}

/// Block `k` of a filled panel against `NC` columns: the rows' exact
/// integer dots, then [`scale_add`] per column.
///
/// # Safety
/// AVX2/FMA/F16C; `p` holds block `k`; each column's `codes` points at its
/// block's `32 * RUNS` codes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block<W: Lanes, const NC: usize>(
    p: &Panel,
    k: usize,
    cols: [&Col; NC],
    acc: &mut [__m256; NC],
) {
    let ones = _mm256_set1_epi16(1);
    let (runs, t) = (W::RUNS, W::TERMS);
    let mut isum = [_mm256_setzero_si256(); NC];
    for v in 0..runs {
        // SAFETY: the panel holds RUNS runs of 8 vectors per block.
        let x = unsafe {
            let at = (k * runs + v) * LANES;
            p.x.get_unchecked(at..at + LANES)
        };
        for g in 0..LANES / W::GROUP {
            // the words of a group lie in one sub-block (GROUP * HALVES
            // divides 8)
            let sc = if W::SCALED {
                let h = g * W::GROUP * W::HALVES / LANES;
                // SAFETY: HALVES scale vectors per run when SCALED.
                unsafe { *p.sc.get_unchecked((k * runs + v) * W::HALVES + h) }
            } else {
                ones
            };
            let mut pairs = [_mm256_setzero_si256(); NC];
            // indexes, not the skip/take chain clippy suggests: that one is
            // not always inlined into the kernels (see `scale_add`)
            #[allow(clippy::needless_range_loop)]
            for i in g * W::GROUP..(g + 1) * W::GROUP {
                // SAFETY: word i of run v of each column's codes.
                unsafe { word_products::<W, NC>(x[i], &cols, v, i, &mut pairs) };
            }
            for (s, pc) in isum.iter_mut().zip(pairs) {
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pc, sc));
            }
        }
    }
    if W::SUB_OFFSET {
        for (s, col) in isum.iter_mut().zip(cols) {
            // SAFETY: the panel holds a scale pair vector per run; the
            // column's sums are its block's 16.
            let off = unsafe { sub_offset(p.sp.get_unchecked(k * runs..(k + 1) * runs), col.sums) };
            *s = _mm256_sub_epi32(
                *s,
                _mm256_mullo_epi32(off, _mm256_set1_epi32(W::OFFSET.into())),
            );
        }
    }
    // SAFETY: the panel holds d per block and TERMS coefficients per block.
    let (d, m) = unsafe { (*p.d.get_unchecked(k), p.m.get_unchecked(k * t..(k + 1) * t)) };
    for ((a, s), col) in acc.iter_mut().zip(isum).zip(cols) {
        // SAFETY: the features are enabled here.
        unsafe { scale_add::<W>(s, d, m, col, a) };
    }
}

/// Each row's `sum_s scale[s] * bsum[s]` over its 16 sub-blocks, in its
/// lane: per run one `vpmaddwd` of the rows' two scales (`sp[v]`) by the
/// column's two sums.
///
/// # Safety
/// AVX2/FMA/F16C; `sp` holds 8 vectors; `sums` points at 16 readable `i16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sub_offset(sp: &[__m256i], sums: *const i16) -> __m256i {
    let mut off = _mm256_setzero_si256();
    for (v, &pair) in sp.iter().enumerate().take(8) {
        // SAFETY: sums 2v and 2v + 1 of 16, as one word.
        let word = unsafe { sums.add(2 * v).cast::<i32>().read_unaligned() };
        off = _mm256_add_epi32(off, _mm256_madd_epi16(pair, _mm256_set1_epi32(word)));
    }
    off
}

/// The float side of a block, the one sequence every output takes: the
/// offset off the rows' exact sums `isum`, then `acc = fma(float(isum), d_w
/// * d_a, acc)`; Q4_1's term as `acc = fma(m_w, s_a, acc)`, Q4_K's eight
/// as an FMA chain of their own added to `acc`.
///
/// # Safety
/// AVX2/FMA/F16C; `m` holds `TERMS` vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scale_add<W: Lanes>(
    isum: __m256i,
    d: __m256,
    m: &[__m256],
    col: &Col,
    acc: &mut __m256,
) {
    let mut s = isum;
    if W::OFFSET != 0 && !W::SUB_OFFSET {
        s = _mm256_sub_epi32(s, _mm256_set1_epi32(col.off));
    }
    let dd = _mm256_mul_ps(d, _mm256_set1_ps(col.d));
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), dd, *acc);
    if W::TERMS == 1 {
        *acc = _mm256_fmadd_ps(m[0], _mm256_set1_ps(col.terms[0]), *acc);
    } else if W::TERMS > 1 {
        let mut blk = _mm256_mul_ps(m[0], _mm256_set1_ps(col.terms[0]));
        // an index loop: the iterator chain this was (zip, take, skip)
        // compiled to a call per term, each paying a vzeroupper and the
        // accumulator's round trip through the stack
        #[allow(clippy::needless_range_loop)]
        for j in 1..W::TERMS.min(m.len()) {
            blk = _mm256_fmadd_ps(m[j], _mm256_set1_ps(col.terms[j]), blk);
        }
        *acc = _mm256_add_ps(*acc, blk);
    }
}

/// The eight rows' exact dots of one block against one column, row by row
/// as the dots compute them (no transposition, which decode cannot
/// amortize), gathered into lane `r` by a tree of horizontal adds; the rows'
/// scales into `d`, their correction coefficients into `m` (`[j][r]`).
/// Integer sums are exact, so the lanes equal [`block`]'s.
///
/// # Safety
/// AVX2/FMA/F16C; `w` holds `nr <= 8` rows of `bpr > k` blocks; `col`
/// is the column's block `k`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_dots<W: Lanes>(
    w: &[W],
    nr: usize,
    bpr: usize,
    k: usize,
    col: &Col,
    d: &mut [f32; LANES],
    m: &mut [[f32; LANES]; MAX_TERMS],
) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let (runs, t) = (W::RUNS, W::TERMS);
    let mut v = [_mm256_setzero_si256(); LANES];
    for r in 0..nr {
        let mut codes = [_mm256_setzero_si256(); MAX_RUNS];
        let mut scales = [_mm256_setzero_si256(); MAX_RUNS];
        let mut mins = [0f32; MAX_TERMS];
        // SAFETY: row r < nr has block k < bpr; the features are enabled.
        d[r] = unsafe {
            w.get_unchecked(r * bpr + k).unpack(
                &mut codes[..runs],
                &mut scales[..runs],
                &mut mins[..t],
            )
        };
        for j in 0..t {
            m[j][r] = mins[j];
        }
        let mut sum = _mm256_setzero_si256();
        if W::SUB_OFFSET {
            // the same integer as `sub_offset`, in lanes that add up to it
            // SAFETY: 16 readable i8 scales and the column's 16 i16 sums.
            let off = unsafe {
                let row = w.get_unchecked(r * bpr + k).sub_scales();
                let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.as_ptr().cast()));
                _mm256_madd_epi16(sc, _mm256_loadu_si256(col.sums.cast()))
            };
            sum = _mm256_sub_epi32(
                sum,
                _mm256_mullo_epi32(off, _mm256_set1_epi32(W::OFFSET.into())),
            );
        }
        for u in 0..runs {
            // SAFETY: the column's codes hold RUNS runs of 32.
            let yu = unsafe { _mm256_loadu_si256(col.codes.add(32 * u).cast()) };
            let x = codes[u];
            let (ux, sy) = if W::SIGNED {
                (_mm256_sign_epi8(x, x), _mm256_sign_epi8(yu, x))
            } else {
                (x, yu)
            };
            let sc = if W::SCALED { scales[u] } else { ones };
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(ux, sy), sc));
        }
        v[r] = sum;
    }
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    // rows 0..4 and 4..8, each half of their words in a 128-bit lane
    let q0 = _mm256_hadd_epi32(h01, h23);
    let q1 = _mm256_hadd_epi32(h45, h67);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(q0, q1),
        _mm256_permute2x128_si256::<0x31>(q0, q1),
    )
}

/// The first `nr` lanes of `v` to `out[..nr]`.
///
/// # Safety
/// AVX; `out` points at `nr <= 8` writable floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn store(v: __m256, out: *mut f32, nr: usize) {
    if nr == LANES {
        // SAFETY: eight writable floats.
        unsafe { _mm256_storeu_ps(out, v) };
    } else {
        let mut lanes = [0f32; LANES];
        // SAFETY: lanes is 8 writable floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        // SAFETY: the caller's nr floats.
        unsafe { core::ptr::copy_nonoverlapping(lanes.as_ptr(), out, nr) };
    }
}

/// Decode: every row group against the one column, each row's block dotted
/// as it is read ([`row_dots`]), the next groups' rows prefetched: the
/// eight interleaved row streams defeat the hardware prefetcher on matrices
/// read from DRAM.
///
/// # Safety
/// AVX2/FMA/F16C; `cols` holds one column of `bpr` blocks, `w` whole rows
/// of `bpr` blocks and `out` at least one float per row.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv<W: Lanes>(w: &[W], cols: &[Col], bpr: usize, out: &mut [f32]) {
    let rows = w.len() / bpr;
    let t = W::TERMS;
    let per_block = LANES * size_of::<W>();
    for r0 in (0..rows).step_by(LANES) {
        let nr = (rows - r0).min(LANES);
        let group = &w[r0 * bpr..(r0 + nr) * bpr];
        let ahead = group
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(PREFETCH_GROUPS * per_block * bpr);
        let mut acc = _mm256_setzero_ps();
        for (k, col) in cols.iter().enumerate().take(bpr) {
            let mut at = 0;
            while at < per_block {
                // a prefetch never faults, past the band's end included
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(k * per_block + at).cast());
                at += 64;
            }
            let mut d = [0f32; LANES];
            let mut m = [[0f32; LANES]; MAX_TERMS];
            // SAFETY: the group holds nr rows of bpr > k blocks; the
            // column's codes are its block's.
            let isum = unsafe { row_dots(group, nr, bpr, k, col, &mut d, &mut m) };
            // SAFETY: d and each m[j] are 8 readable floats.
            let (dv, mv) = unsafe {
                let mv: [__m256; MAX_TERMS] =
                    core::array::from_fn(|j| _mm256_loadu_ps(m[j].as_ptr()));
                (_mm256_loadu_ps(d.as_ptr()), mv)
            };
            // SAFETY: the features are enabled here.
            unsafe { scale_add::<W>(isum, dv, &mv[..t], col, &mut acc) };
        }
        // SAFETY: out holds a float per row, rows r0..r0 + nr among them.
        unsafe { store(acc, out.as_mut_ptr().add(r0), nr) };
    }
}

/// Prefill: per chunk of [`COL_CHUNK`] columns, per group of eight rows,
/// the group's blocks transposed once into a [`Panel`], then taken against
/// the chunk's columns [`NC`] at a time.
///
/// # Safety
/// AVX2/FMA/F16C; `cols` holds `cols.len() / bpr` columns of `bpr` blocks,
/// `w` whole rows of `bpr` blocks, `out` `rows * columns` floats.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_k<W: Lanes>(w: &[W], cols: &[Col], bpr: usize, out: &mut [f32]) {
    let rows = w.len() / bpr;
    let ncols = cols.len() / bpr;
    let (runs, t) = (W::RUNS, W::TERMS);
    let mut panel = Panel {
        x: vec![_mm256_setzero_si256(); bpr * runs * LANES],
        sc: vec![_mm256_setzero_si256(); if W::SCALED { bpr * runs * W::HALVES } else { 0 }],
        sp: vec![_mm256_setzero_si256(); if W::SUB_OFFSET { bpr * runs } else { 0 }],
        d: vec![_mm256_setzero_ps(); bpr],
        m: vec![_mm256_setzero_ps(); bpr * t],
    };
    let o = out.as_mut_ptr();
    for c0 in (0..ncols).step_by(COL_CHUNK) {
        let end = (c0 + COL_CHUNK).min(ncols);
        for r0 in (0..rows).step_by(LANES) {
            let nr = (rows - r0).min(LANES);
            // SAFETY: the panel is sized for bpr blocks; rows r0..r0 + nr exist.
            unsafe { fill(&mut panel, &w[r0 * bpr..(r0 + nr) * bpr], nr, bpr) };
            let mut c = c0;
            while c + NC <= end {
                let mut acc = [_mm256_setzero_ps(); NC];
                for k in 0..bpr {
                    let at: [&Col; NC] = core::array::from_fn(|j| &cols[(c + j) * bpr + k]);
                    // SAFETY: the panel holds block k; each column's codes
                    // are its block's.
                    unsafe { block::<W, NC>(&panel, k, at, &mut acc) };
                }
                for (j, &v) in acc.iter().enumerate() {
                    // SAFETY: column c + j < ncols and rows r0..r0 + nr exist,
                    // so the floats lie below rows * ncols <= out.len().
                    unsafe { store(v, o.add((c + j) * rows + r0), nr) };
                }
                c += NC;
            }
            while c < end {
                let mut acc = [_mm256_setzero_ps(); 1];
                for k in 0..bpr {
                    // SAFETY: as above.
                    unsafe { block::<W, 1>(&panel, k, [&cols[c * bpr + k]], &mut acc) };
                }
                // SAFETY: as above.
                unsafe { store(acc[0], o.add(c * rows + r0), nr) };
                c += 1;
            }
        }
    }
}
