//! AVX2 gemm for the 32-element block types (Q4_0, Q4_1, Q5_0, Q8_0) with
//! one weight row per 32-bit lane: eight rows side by side, so each block's
//! integer dot ends in the lane of its row and no output needs a
//! horizontal sum.
//!
//! A group of eight rows is unpacked block by block ([`Avx2Gemm::unpack`])
//! and transposed as an 8 x 8 matrix of 32-bit words: vector `i` of block
//! `k` holds bytes `4i..4i + 4` of the eight rows' codes. Against a column,
//! word `i` of the activation block is broadcast and `vpmaddubsw` gives
//! every row's two pairs at once; eight such products add up in `i16`
//! (four for Q5_0's 5-bit codes, one for Q8_0's signed ones) before one
//! `vpmaddwd` into the rows' `i32` sums. Per block and column the float side
//! is then one conversion, one product of the eight row scales by the
//! column's, and one FMA for all eight rows, where the row-tile kernel
//! ([`super::avx2_gemm`]) paid a conversion, a broadcast and an FMA per row
//! and per column; that float work had bound it at the sizes past the
//! default model.
//!
//! The codes' offset (Q4_0: 8, Q5_0: 16) comes off the block's exact
//! integer sum as `OFFSET * sum(y)`, per column; Q4_1's minimum meets
//! Q8_1's stored `s` in a second FMA per block.
//!
//! **Batch invariance.** A row's output is one float sequence however it is
//! batched: from zero, per block in order, `acc = fma(float(isum), d_w *
//! d_a, acc)` (then `acc = fma(m_w, s_a, acc)` for Q4_1), where `isum` is
//! the block's exact integer dot. Lanes never mix, so the rows beside a row
//! (or the zero rows that pad a group) cannot change it, and decode (one
//! column, [`gemv`]) runs the very same [`block`] step on each block.
//!
//! Soundness: the `unsafe fn`s need AVX2, FMA and F16C, which
//! `super::table` checked before handing out the entries that reach
//! [`gemm`]; it checks the shapes (`gemm_shape_ok`) before the kernels
//! index without bounds checks.

use super::avx2_gemm::{Avx2Gemm, GemmAct};
use crate::dispatch::{gemm_by_dots, gemm_shape_ok, VecDotFn};
use crate::quant::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0};
use crate::quant::q5_0::BlockQ5_0;
use core::arch::x86_64::*;

/// Rows per group: one per 32-bit lane.
const LANES: usize = 8;

/// Columns per step of the prefill kernel (their `i16` and float
/// accumulators, the row group's code vector and a broadcast fit the 16
/// registers).
const NC: usize = 4;

/// Columns whose activations stay in L2 while one row group at a time is
/// unpacked for them (32 tokens of an 8192-wide Q8_0 row: 278 KB).
const COL_CHUNK: usize = 32;

/// How many row groups ahead decode prefetches.
const PREFETCH_GROUPS: usize = 2;

/// A 32-element block type the lane kernel takes.
pub(super) trait Lanes: Avx2Gemm {
    /// Broadcast words whose `vpmaddubsw` products add up in `i16` before
    /// widening: `GROUP * 2 * max|code| * 127` must stay below `2^15`.
    const GROUP: usize;
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

/// What a step needs of one activation block: its codes, its scale, the
/// integer share of the code offset (`OFFSET * sum(y)`) and the activation
/// side of the correction term (Q8_1's `s`).
#[derive(Clone, Copy)]
struct Col {
    codes: *const i8,
    d: f32,
    off: i32,
    term: f32,
}

fn col_of<W: Lanes>(b: &W::Act) -> Col
where
    W::Act: GemmAct,
{
    let d = b.scale();
    let codes = b.codes();
    let off = if W::OFFSET != 0 {
        i32::from(W::OFFSET) * codes[..32].iter().map(|&c| i32::from(c)).sum::<i32>()
    } else {
        0
    };
    let mut term = [0f32; 1];
    if W::TERMS > 0 {
        W::act_terms(b, d, &mut term);
    }
    Col {
        codes: codes.as_ptr(),
        d,
        off,
        term: term[0],
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
    if !gemm_shape_ok(w, a, bpr, out) || a.len() < bpr || W::RUNS != 1 || W::TERMS > 1 {
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

/// One group's block `k`: the eight rows' code vectors, their scales and
/// (Q4_1) minimums; rows past the group's end are zero codes and zero
/// scales.
#[derive(Clone, Copy)]
struct Block {
    x: [__m256i; LANES],
    d: __m256,
    m: __m256,
}

/// Block `k` of the `nr <= 8` rows `w[r * bpr + k]`, transposed into
/// lanes.
///
/// # Safety
/// AVX2/FMA/F16C; `w` holds `nr` rows of `bpr > k` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_block<W: Lanes>(w: &[W], nr: usize, bpr: usize, k: usize) -> Block {
    let mut rows = [_mm256_setzero_si256(); LANES];
    let mut d = [0f32; LANES];
    let mut m = [0f32; LANES];
    let mut scales = [_mm256_setzero_si256(); 1];
    for r in 0..nr {
        let mut codes = [_mm256_setzero_si256(); 1];
        let mut mins = [0f32; 1];
        // SAFETY: row r < nr has block k < bpr; the features are enabled.
        d[r] = unsafe {
            w.get_unchecked(r * bpr + k)
                .unpack(&mut codes, &mut scales, &mut mins[..W::TERMS])
        };
        rows[r] = codes[0];
        m[r] = mins[0];
    }
    Block {
        x: transpose(rows),
        // SAFETY: d and m are 8 readable floats.
        d: unsafe { _mm256_loadu_ps(d.as_ptr()) },
        // SAFETY: as above.
        m: unsafe { _mm256_loadu_ps(m.as_ptr()) },
    }
}

/// Eight vectors of eight 32-bit words, transposed: word `i` of vector `r`
/// becomes word `r` of vector `i`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose(r: [__m256i; LANES]) -> [__m256i; LANES] {
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

/// One block of a row group against `NC` columns: `acc[c] = fma(float(isum),
/// d_w * d_a, acc[c])`, then Q4_1's `acc[c] = fma(m_w, s_a, acc[c])`.
///
/// # Safety
/// AVX2/FMA/F16C; each column's `codes` points at 32 readable codes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block<W: Lanes, const NC: usize>(b: &Block, cols: [Col; NC], acc: &mut [__m256; NC]) {
    let ones = _mm256_set1_epi16(1);
    let mut isum = [_mm256_setzero_si256(); NC];
    for g in 0..LANES / W::GROUP {
        let mut pairs = [_mm256_setzero_si256(); NC];
        for i in g * W::GROUP..(g + 1) * W::GROUP {
            let x = b.x[i];
            let ux = if W::SIGNED { _mm256_sign_epi8(x, x) } else { x };
            for (c, p) in pairs.iter_mut().enumerate() {
                // SAFETY: word i of the column's 32 codes.
                let word = unsafe { cols[c].codes.add(4 * i).cast::<i32>().read_unaligned() };
                let y = _mm256_set1_epi32(word);
                let sy = if W::SIGNED { _mm256_sign_epi8(y, x) } else { y };
                *p = _mm256_add_epi16(*p, _mm256_maddubs_epi16(ux, sy));
            }
        }
        for (s, p) in isum.iter_mut().zip(pairs) {
            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
        }
    }
    for ((a, s), col) in acc.iter_mut().zip(isum).zip(cols) {
        // SAFETY: the features are enabled here.
        unsafe { scale_add::<W>(s, b.d, b.m, col, a) };
    }
}

/// The float side of a block, the one sequence every output takes: the
/// offset off the rows' exact sums `isum`, then `acc = fma(float(isum), d_w
/// * d_a, acc)` and (Q4_1) `acc = fma(m_w, s_a, acc)`.
///
/// # Safety
/// AVX2/FMA/F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_add<W: Lanes>(isum: __m256i, d: __m256, m: __m256, col: Col, acc: &mut __m256) {
    let mut s = isum;
    if W::OFFSET != 0 {
        s = _mm256_sub_epi32(s, _mm256_set1_epi32(col.off));
    }
    let dd = _mm256_mul_ps(d, _mm256_set1_ps(col.d));
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), dd, *acc);
    if W::TERMS > 0 {
        *acc = _mm256_fmadd_ps(m, _mm256_set1_ps(col.term), *acc);
    }
}

/// The eight rows' exact dots `sum_i x[r][i] * y[i]` of one block against
/// one column, row by row as the dots compute them (no transposition, which
/// decode cannot amortize), gathered into lane `r` by a tree of horizontal
/// adds. Integer sums are exact, so the lanes equal [`block`]'s.
///
/// # Safety
/// AVX2/FMA/F16C; `w` holds `nr <= 8` rows of `bpr > k` blocks; `y` is
/// the column's 32 codes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_dots<W: Lanes>(
    w: &[W],
    nr: usize,
    bpr: usize,
    k: usize,
    y: __m256i,
    d: &mut [f32; LANES],
    m: &mut [f32; LANES],
) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let mut v = [_mm256_setzero_si256(); LANES];
    let mut scales = [_mm256_setzero_si256(); 1];
    for r in 0..nr {
        let mut codes = [_mm256_setzero_si256(); 1];
        let mut mins = [0f32; 1];
        // SAFETY: row r < nr has block k < bpr; the features are enabled.
        d[r] = unsafe {
            w.get_unchecked(r * bpr + k)
                .unpack(&mut codes, &mut scales, &mut mins[..W::TERMS])
        };
        m[r] = mins[0];
        let x = codes[0];
        let (ux, sy) = if W::SIGNED {
            (_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
        } else {
            (x, y)
        };
        v[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(ux, sy), ones);
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
unsafe fn store(v: __m256, out: *mut f32, nr: usize) {
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
    let per_block = LANES * size_of::<W>();
    for r0 in (0..rows).step_by(LANES) {
        let nr = (rows - r0).min(LANES);
        let group = &w[r0 * bpr..(r0 + nr) * bpr];
        let ahead = group
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(PREFETCH_GROUPS * per_block * bpr);
        let mut acc = _mm256_setzero_ps();
        for (k, &col) in cols.iter().enumerate().take(bpr) {
            let mut at = 0;
            while at < per_block {
                // a prefetch never faults, past the band's end included
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(k * per_block + at).cast());
                at += 64;
            }
            let (mut d, mut m) = ([0f32; LANES], [0f32; LANES]);
            // SAFETY: the group holds nr rows of bpr > k blocks; the
            // column's codes are its block's 32.
            let isum = unsafe {
                let y = _mm256_loadu_si256(col.codes.cast());
                row_dots(group, nr, bpr, k, y, &mut d, &mut m)
            };
            // SAFETY: d and m are 8 readable floats.
            let (d, m) = unsafe { (_mm256_loadu_ps(d.as_ptr()), _mm256_loadu_ps(m.as_ptr())) };
            // SAFETY: the features are enabled here.
            unsafe { scale_add::<W>(isum, d, m, col, &mut acc) };
        }
        // SAFETY: out holds a float per row, rows r0..r0 + nr among them.
        unsafe { store(acc, out.as_mut_ptr().add(r0), nr) };
    }
}

/// Prefill: per chunk of [`COL_CHUNK`] columns, per group of eight rows,
/// the group's blocks transposed once into `panel`, then taken against the
/// chunk's columns [`NC`] at a time.
///
/// # Safety
/// AVX2/FMA/F16C; `cols` holds `cols.len() / bpr` columns of `bpr` blocks,
/// `w` whole rows of `bpr` blocks, `out` `rows * columns` floats.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_k<W: Lanes>(w: &[W], cols: &[Col], bpr: usize, out: &mut [f32]) {
    let rows = w.len() / bpr;
    let ncols = cols.len() / bpr;
    let zero = Block {
        x: [_mm256_setzero_si256(); LANES],
        d: _mm256_setzero_ps(),
        m: _mm256_setzero_ps(),
    };
    let mut panel = vec![zero; bpr];
    let o = out.as_mut_ptr();
    for c0 in (0..ncols).step_by(COL_CHUNK) {
        let end = (c0 + COL_CHUNK).min(ncols);
        for r0 in (0..rows).step_by(LANES) {
            let nr = (rows - r0).min(LANES);
            let group = &w[r0 * bpr..(r0 + nr) * bpr];
            for (k, b) in panel.iter_mut().enumerate() {
                // SAFETY: the group holds nr rows of bpr > k blocks.
                *b = unsafe { load_block(group, nr, bpr, k) };
            }
            let mut c = c0;
            while c + NC <= end {
                let mut acc = [_mm256_setzero_ps(); NC];
                for (k, b) in panel.iter().enumerate() {
                    let at: [Col; NC] = core::array::from_fn(|j| cols[(c + j) * bpr + k]);
                    // SAFETY: each column's codes are its block's 32.
                    unsafe { block::<W, NC>(b, at, &mut acc) };
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
                for (k, b) in panel.iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { block::<W, 1>(b, [cols[c * bpr + k]], &mut acc) };
                }
                // SAFETY: as above.
                unsafe { store(acc[0], o.add(c * rows + r0), nr) };
                c += 1;
            }
        }
    }
}
