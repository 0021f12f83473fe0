//! AVX-512 x16 kernels for the k-quants (Q4_K, Q5_K, Q6_K against Q8_K),
//! written once as a macro that the AVX-512BW tier (`avx512.rs`) and the
//! VNNI tier (`vnni.rs`) instantiate with their 4-byte dot step `dot4`.
//!
//! Lane per row, as the legacy kernels of `avx512.rs`: a 64-byte line of an
//! x16 record ([`crate::quant::x16`]) holds the same 4 code bytes of 16
//! rows, so one `dot4` against 4 broadcast activation codes gives 16 rows'
//! partial dots with no horizontal sum. Per (panel, super-block):
//!
//! 1. the record is unpacked once into 64 registers of unsigned codes
//!    (group `g` = elements `4g..4g + 4` of every row; Q5_K and Q6_K put
//!    their high bits in here) and per-row float scales `d * sc_j` per
//!    sub-block (and Q4_K/Q5_K's `dmin` and 6-bit `m_j`);
//! 2. every column then takes 8 (Q4_K, Q5_K) or 4 (Q6_K) `dot4`s per
//!    sub-block into an exact i32 sub-block sum, converted and scaled once
//!    per sub-block. Q6_K's offset of 32 starts that sum at
//!    `-32 * bsum_j` (exact, in integers); the k-quant minimums come off
//!    once per block as `dmin * sum_j m_j bsum_j`, the sum in integers.
//!
//! Columns go 8, 4, 2 and 1 at a time, each taking the unpacked codes from
//! L1, so prefill unpacks each block once per panel. Groups of 8 take
//! their activations from `Act8` copies made once per call, each block's
//! codes of the 8 columns interleaved, and run against two panels' records
//! at once, so each activation load feeds two chains (`x16_panels`; with
//! one panel's 8 chains the 1B shape's Q4_K products ran 6–16% slower in
//! the kernel bench), 4 columns at a time so the sums fit the registers
//! (`cols_step8`). Decode (one column)
//! has a fused path, `KRecord::dot1`: codes go from the loaded line to
//! `dot4` in registers (the 64-register codes array spilled to the stack
//! and ran Q4_K at 9 GiB/s from L3), with several independent integer
//! chains per sub-block and the float steps in the batched path's order,
//! so decode and prefill give the same bits. Q4_K and Q5_K prefetch a
//! record ahead a few lines per step: a whole record's prefetches in one
//! burst (36–53 lines) held up the record's own loads, and Q6_K streamed
//! at 6 GiB/s. The prefetches are `asm!`, since LLVM gathered the
//! intrinsic ones back into that burst (`prefetch_step`). Q6_K's record is
//! laid out in the order decode reads it; it prefetches the same way on
//! Intel cores only and leaves the fetching to the hardware elsewhere (the
//! EPYC read faster without). Its loops are unrolled through const
//! generics, so sums stay in registers and prefetch offsets are constants.
//! Codes are below 64 and activations within ±127, so even
//! `vpmaddubsw`'s saturating i16 pairs are exact.
//!
//! Soundness: the `unsafe fn`s need the features named in their
//! `#[target_feature]`. The safe wrappers are private to the tiers, which
//! hand them out only after `super::supports` checked those features, and
//! check every shape before the first load (the kernels then index
//! without bounds checks).

/// Defines the k-quant kernels of one tier in a `mod kquant`, with
/// `$features` as the target features and `$dot4` as the 4-byte dot step.
macro_rules! kquant_kernels {
    ($features:literal, $dot4:path) => {
        mod kquant {
            use super::super::avx2_lanes::transpose;
            use super::super::avx512::panel_mask;
            use crate::quant::blocks::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
            use crate::quant::x16::{self, shape_ok, X16Block};
            use crate::quant::{q4_k, q5_k, q6_k};
            use core::arch::x86_64::*;

            // ---- safe wrappers ----

            pub(in super::super) fn q4_k_x16(
                p: &[u8],
                rows: usize,
                a: &[BlockQ8K],
                bpr: usize,
                out: &mut [&mut [f32]],
            ) {
                if !shape_ok::<BlockQ4K, _>(p, rows, a, bpr, out) {
                    return x16::gemm_ref::<BlockQ4K, _>(q4_k::vec_dot, p, rows, a, bpr, out);
                }
                // SAFETY: the tier's features were detected before its table was handed out; the shape was checked just now.
                unsafe { x16_k::<BlockQ4K>(p, rows, a, bpr, out) }
            }
            pub(in super::super) fn q5_k_x16(
                p: &[u8],
                rows: usize,
                a: &[BlockQ8K],
                bpr: usize,
                out: &mut [&mut [f32]],
            ) {
                if !shape_ok::<BlockQ5K, _>(p, rows, a, bpr, out) {
                    return x16::gemm_ref::<BlockQ5K, _>(q5_k::vec_dot, p, rows, a, bpr, out);
                }
                // SAFETY: as above.
                unsafe { x16_k::<BlockQ5K>(p, rows, a, bpr, out) }
            }
            pub(in super::super) fn q6_k_x16(
                p: &[u8],
                rows: usize,
                a: &[BlockQ8K],
                bpr: usize,
                out: &mut [&mut [f32]],
            ) {
                if !shape_ok::<BlockQ6K, _>(p, rows, a, bpr, out) {
                    return x16::gemm_ref::<BlockQ6K, _>(q6_k::vec_dot, p, rows, a, bpr, out);
                }
                // SAFETY: as above.
                unsafe { x16_k::<BlockQ6K>(p, rows, a, bpr, out) }
            }

            /// The file-layout gemm entries: each 16-row panel packed into
            /// an x16 record run and multiplied by the x16 kernel.
            pub(in super::super) fn q4_k_gemm(
                w: &[BlockQ4K],
                a: &[BlockQ8K],
                bpr: usize,
                out: &mut [f32],
            ) {
                x16::gemm_by_panels(q4_k_x16, w, a, bpr, out)
            }
            pub(in super::super) fn q5_k_gemm(
                w: &[BlockQ5K],
                a: &[BlockQ8K],
                bpr: usize,
                out: &mut [f32],
            ) {
                x16::gemm_by_panels(q5_k_x16, w, a, bpr, out)
            }
            pub(in super::super) fn q6_k_gemm(
                w: &[BlockQ6K],
                a: &[BlockQ8K],
                bpr: usize,
                out: &mut [f32],
            ) {
                x16::gemm_by_panels(q6_k_x16, w, a, bpr, out)
            }

            // ---- one super-block of 16 rows, unpacked ----

            /// Per-row factors of one record: `scale[j] = d * sc_j` per
            /// sub-block; Q4_K and Q5_K's minimums as `dmin` and the 6-bit
            /// `m_j` in 16-bit pairs, `mins[i] = m_2i | m_2i+1 << 16`.
            struct Scales {
                scale: [__m512; 16],
                mins: [__m512i; 4],
                dmin: __m512,
            }

            impl Scales {
                #[inline]
                #[target_feature(enable = $features)]
                fn zero() -> Scales {
                    Scales {
                        scale: [_mm512_setzero_ps(); 16],
                        mins: [_mm512_setzero_si512(); 4],
                        dmin: _mm512_setzero_ps(),
                    }
                }
            }

            /// The activation side of one (column, block): its scale, the
            /// integer start of each sub-block sum, and the code sums the
            /// minimums multiply, `bsum_j` of sub-block `j` in 16-bit pairs
            /// as [`Scales`] holds the minimums (`bsum_2i | bsum_2i+1 << 16`;
            /// a sum of 32 codes is within 16 bits).
            #[derive(Clone, Copy)]
            struct KAct {
                d: f32,
                start: [i32; 16],
                bsums: [i32; 4],
            }

            /// The activation side of 8 columns of one block, interleaved:
            /// `qs[g][c]` holds group `g`'s 4 codes of column `c`. A column
            /// group's loads then come off one base pointer at fixed
            /// offsets; from 8 blocks in 8 places, the compiler kept two
            /// columns' chains in flight at a time and the group ran at
            /// ~0.7 `dot4` per cycle.
            #[repr(C, align(64))]
            #[derive(Clone, Copy)]
            struct Act8 {
                qs: [[i32; 8]; 64],
                start: [[i32; 8]; 16],
                bsums: [[i32; 8]; 4],
                d: [f32; 8],
            }

            impl Act8 {
                const ZERO: Act8 = Act8 {
                    qs: [[0; 8]; 64],
                    start: [[0; 8]; 16],
                    bsums: [[0; 8]; 4],
                    d: [0.0; 8],
                };

                /// Overwrites every field with block `b` of columns
                /// `c0..c0 + 8`. The codes go through eight 8x8 transposes
                /// of 4-byte groups in registers: built one 4-byte store at a
                /// time (and zeroed and moved into place first), an `Act8`
                /// had cost about as much as multiplying it against 28 rows,
                /// half the time of a 32-row band.
                ///
                /// # Safety
                /// The tier's features.
                #[target_feature(enable = $features)]
                unsafe fn fill<W: KRecord>(&mut self, a: &[BlockQ8K], bpr: usize, c0: usize, b: usize) {
                    let ys: [&BlockQ8K; 8] = core::array::from_fn(|c| &a[(c0 + c) * bpr + b]);
                    for t in 0..8 {
                        // SAFETY: 32t + 32 <= 256 code bytes of each block.
                        let r: [__m256i; 8] = core::array::from_fn(|c| unsafe {
                            _mm256_loadu_si256(ys[c].qs.as_ptr().add(32 * t).cast())
                        });
                        for (g, o) in transpose(r).into_iter().enumerate() {
                            // SAFETY: row 8t + g < 64 holds 8 i32s, 32 bytes.
                            unsafe { _mm256_storeu_si256(self.qs[8 * t + g].as_mut_ptr().cast(), o) };
                        }
                    }
                    for (c, y) in ys.into_iter().enumerate() {
                        let ka = W::act(y);
                        for j in 0..16 {
                            self.start[j][c] = ka.start[j];
                        }
                        for i in 0..4 {
                            self.bsums[i][c] = ka.bsums[i];
                        }
                        self.d[c] = ka.d;
                    }
                }
            }

            std::thread_local! {
                /// A thread's [`Act8`]s, kept between calls (a large
                /// product's are over a megabyte).
                static ACT8: core::cell::RefCell<Vec<Act8>> = const { core::cell::RefCell::new(Vec::new()) };
            }

            /// A k-quant's x16 record as this kernel reads it.
            trait KRecord: X16Block {
                /// Sub-blocks per super-block (8 of 32 or 16 of 16 elements).
                const SUBS: usize;
                /// Code groups (4 elements) per sub-block.
                const GROUPS: usize = 64 / Self::SUBS;
                /// Whether the type has per-sub-block minimums.
                const MINS: bool;
                /// The 64 code groups and the scales of the record at `rec`.
                ///
                /// # Safety
                /// The tier's features; `rec` points at a whole record.
                unsafe fn unpack(rec: *const u8, codes: &mut [__m512i; 64], s: &mut Scales);
                /// The activation side of `y` for this type.
                fn act(y: &BlockQ8K) -> KAct;
                /// Decode's fused path: the record at `rec` against one
                /// column's block `y`, unpacked in registers and multiplied
                /// as it goes (no codes array), giving the block's sum
                /// before `d` with the float steps of [`cols_step`] in the
                /// same order, so its bits equal the batched path's.
                ///
                /// It also prefetches the weights past `ahead` (the next
                /// record) a share at a time ([`prefetch_step`]: into L1
                /// from `NEAR` bytes on, into L2 from `FAR`), so the fetches
                /// are spread over the record's work instead of queued in a
                /// burst ahead of its own loads.
                ///
                /// # Safety
                /// The tier's features; `rec` points at a whole record.
                unsafe fn dot1(
                    rec: *const u8,
                    ahead: *const u8,
                    y: &BlockQ8K,
                    ka: &KAct,
                    s: &mut Scales,
                ) -> __m512;
            }

            /// Bytes past the next record from which Q4_K and Q5_K decode
            /// ask for lines into L1: a Q4_K record, so Q4_K reads two
            /// records ahead. At one record (the distance before), the
            /// Llama-3.2-1B shape's Q4_K_M decode, builds alternated in
            /// three rounds, gave 15.3–15.8 tok/s on 1 thread and
            /// 27.5–28.5 on 2; at this distance 16.5–16.9 and 30.0–30.9
            /// (Qwen2.5-1.5B +5–8%, Gemma-3-270M within the noise; 1152
            /// and 4608 bytes came out alike). On the EPYC host, the stream
            /// bench's Q4_K decode on 1 thread read 22.9–27.4 GiB/s with
            /// these requests and `FAR`'s; with L2 requests alone
            /// 23.5–23.7, L1 alone 21.6–21.9, none 23.7–25.4, both as
            /// non-temporal hints 20.0–20.3, and with `FAR` at 8192 (and
            /// `NEAR` at 2304 or 4608) 19.5–22.0.
            const NEAR: usize = 2304;

            /// Bytes past the next record that decode also asks for into
            /// L2. Without them (L1 requests at `NEAR` alone) decode was no
            /// faster than at the one-record distance (14.4–14.8 tok/s on 1
            /// thread), and at 3 or 6 KiB it gained half as much as at 4.
            const FAR: usize = 4096;

            /// Step `step` of `steps` of fetching the record at `ahead` + `NEAR`:
            /// its share of the record's lines (one more than its own, for
            /// a record that starts inside a line), in order, into L1, and
            /// the lines at `ahead` + [`FAR`] into L2. Decode streams
            /// the weights once, and the hardware prefetcher stops at page
            /// boundaries (a prefetch never faults, so either may be past
            /// the panel). Callers pass constants, so each step is a fixed
            /// set of prefetches: computed at run time, a step's line range
            /// had been more scalar work than the step's dot steps.
            ///
            /// The prefetches are `asm!`, not `_mm_prefetch`: LLVM's
            /// scheduler moved every intrinsic prefetch of an unrolled
            /// record after the record's last dot step, one burst of 74
            /// (Q4_K) or 108 (Q6_K) requests, so each record's own lines
            /// queued behind the next record's fetches. An `asm!` block
            /// with side effects keeps its place among the loads. The
            /// stream bench, builds alternated twice: Q4_K 13.3–13.4 →
            /// 15.5 GiB/s on 1 thread and 25.2–25.4 → 29.9–31.3 on 2, Q6_K
            /// 13.0–13.2 → 15.0–15.2 and 25.3–25.5 → 29.2 (a prefetching
            /// plain read: 15.8–17.3 and 30.5–32.4).
            #[inline(always)]
            // the pointer is only a prefetch's address: nothing is read
            #[allow(clippy::pointers_in_nomem_asm_block)]
            fn prefetch_step<W: KRecord>(ahead: *const u8, step: usize, steps: usize) {
                let lines = W::RECORD.div_ceil(64) + 1;
                for l in step * lines / steps..(step + 1) * lines / steps {
                    prefetch_l1_l2!(ahead.wrapping_add(64 * l), NEAR, FAR);
                }
            }

            /// Asks for the lines of the records at `recs` into L2 (a
            /// prefetch never faults, so either may be past the weights).
            #[inline(always)]
            fn prefetch_records<W: KRecord>(recs: [*const u8; 2]) {
                for r in recs {
                    for l in 0..W::RECORD.div_ceil(64) {
                        // SAFETY: a prefetch reads nothing architecturally
                        // and never faults; SSE is in the x86-64 baseline.
                        unsafe { _mm_prefetch::<_MM_HINT_T1>(r.wrapping_add(64 * l).cast()) };
                    }
                }
            }

            /// Block sum `blk` after sub-block `j`, whose exact integer sum
            /// is `isum`: the float step per sub-block of both paths.
            #[inline]
            #[target_feature(enable = $features)]
            fn fold(blk: __m512, isum: __m512i, s: &Scales, j: usize) -> __m512 {
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), s.scale[j], blk)
            }

            /// Block sum `blk` after its last sub-block, less the
            /// minimums where the type has them: `dmin * sum_j m_j bsum_j`,
            /// the sum exact in integers (four 16-bit pair products; below
            /// 2^24, so exact as a float too) and one float step, the same
            /// in both paths. Per sub-block in floats they had cost 8
            /// multiply-adds per column and block where this takes 4
            /// 16-bit pair products (on Zen 4 each takes a slot of the
            /// pipes the dot steps run on), and the unpacking 8 fewer
            /// float products per record.
            #[inline]
            #[target_feature(enable = $features)]
            fn unmin<W: KRecord>(blk: __m512, s: &Scales, bsums: [i32; 4]) -> __m512 {
                if !W::MINS {
                    return blk;
                }
                unmin_by(blk, s, mins_sum(s, bsums))
            }

            /// `sum_j m_j bsum_j` of [`unmin`], exact.
            #[inline]
            #[target_feature(enable = $features)]
            fn mins_sum(s: &Scales, bsums: [i32; 4]) -> __m512i {
                let mut m = _mm512_madd_epi16(s.mins[0], _mm512_set1_epi32(bsums[0]));
                for i in 1..4 {
                    m = _mm512_add_epi32(m, _mm512_madd_epi16(s.mins[i], _mm512_set1_epi32(bsums[i])));
                }
                m
            }

            /// [`unmin`]'s float step, given its sum `m`.
            #[inline]
            #[target_feature(enable = $features)]
            fn unmin_by(blk: __m512, s: &Scales, m: __m512i) -> __m512 {
                _mm512_fnmadd_ps(_mm512_cvtepi32_ps(m), s.dmin, blk)
            }

            /// The 4 activation codes of group `g` of `y`, in every lane.
            ///
            /// # Safety
            /// `g < 64`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn act4(y: &BlockQ8K, g: usize) -> __m512i {
                // SAFETY: 4g + 4 <= 256 bytes of the block's codes.
                _mm512_set1_epi32(unsafe {
                    y.qs.as_ptr().add(4 * g).cast::<i32>().read_unaligned()
                })
            }

            /// The fused Q4_K/Q5_K decode of [`KRecord::dot1`] over the 32
            /// `qs` lines at `q`; `high(k, j)` gives the fifth bit of group
            /// `8j + k` in bit 4 of each byte (Q5_K) or nothing (Q4_K).
            ///
            /// # Safety
            /// `q` points at 32 readable lines; the scales are in `s`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot1_k4<W: KRecord>(
                q: *const u8,
                ahead: *const u8,
                y: &BlockQ8K,
                ka: &KAct,
                s: &Scales,
                high: impl Fn(usize, usize) -> __m512i + Copy,
            ) -> __m512 {
                let blk = _mm512_setzero_ps();
                // the minimums' sum first, off the dot steps' chain
                let m = mins_sum(s, ka.bsums);
                // SAFETY: forwarded; each call takes its own 8 lines.
                unsafe {
                    let blk = dot1_k4_lines::<W, 0>(q, ahead, y, ka, s, high, blk);
                    let blk = dot1_k4_lines::<W, 1>(q, ahead, y, ka, s, high, blk);
                    let blk = dot1_k4_lines::<W, 2>(q, ahead, y, ka, s, high, blk);
                    let blk = dot1_k4_lines::<W, 3>(q, ahead, y, ka, s, high, blk);
                    unmin_by(blk, s, m)
                }
            }

            /// Lines `8C..8C + 8` of [`dot1_k4`]: sub-blocks `2C` (low
            /// nibbles) and `2C + 1` (high ones), each in two integer chains
            /// so the dot steps overlap, folded into `blk`. `C` and each
            /// line's `K` are constants so that every index and prefetch
            /// offset is one: with a loop over either, LLVM kept the loop,
            /// and each step computed its prefetch range in scalar code.
            ///
            /// # Safety
            /// As [`dot1_k4`]'s.
            #[inline]
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn dot1_k4_lines<W: KRecord, const C: usize>(
                q: *const u8,
                ahead: *const u8,
                y: &BlockQ8K,
                ka: &KAct,
                s: &Scales,
                high: impl Fn(usize, usize) -> __m512i + Copy,
                blk: __m512,
            ) -> __m512 {
                let (j0, j1) = (2 * C, 2 * C + 1);
                let mut lo = [_mm512_set1_epi32(ka.start[j0]), _mm512_setzero_si512()];
                let mut hi = [_mm512_set1_epi32(ka.start[j1]), _mm512_setzero_si512()];
                // SAFETY: forwarded; lines 8C + K < 32.
                unsafe {
                    dot1_k4_line::<W, C, 0>(q, ahead, y, high, &mut lo, &mut hi);
                    dot1_k4_line::<W, C, 1>(q, ahead, y, high, &mut lo, &mut hi);
                    dot1_k4_line::<W, C, 2>(q, ahead, y, high, &mut lo, &mut hi);
                    dot1_k4_line::<W, C, 3>(q, ahead, y, high, &mut lo, &mut hi);
                    dot1_k4_line::<W, C, 4>(q, ahead, y, high, &mut lo, &mut hi);
                    dot1_k4_line::<W, C, 5>(q, ahead, y, high, &mut lo, &mut hi);
                    dot1_k4_line::<W, C, 6>(q, ahead, y, high, &mut lo, &mut hi);
                    dot1_k4_line::<W, C, 7>(q, ahead, y, high, &mut lo, &mut hi);
                }
                let blk = fold(blk, _mm512_add_epi32(lo[0], lo[1]), s, j0);
                fold(blk, _mm512_add_epi32(hi[0], hi[1]), s, j1)
            }

            /// Line `8C + K` of [`dot1_k4_lines`], with its share of the
            /// prefetches: groups `16C + K` (low nibbles) and `16C + 8 + K`
            /// (high ones) into chain `K % 2` of `lo` and `hi`.
            ///
            /// # Safety
            /// As [`dot1_k4`]'s; `C < 4`, `K < 8`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot1_k4_line<W: KRecord, const C: usize, const K: usize>(
                q: *const u8,
                ahead: *const u8,
                y: &BlockQ8K,
                high: impl Fn(usize, usize) -> __m512i,
                lo: &mut [__m512i; 2],
                hi: &mut [__m512i; 2],
            ) {
                let m4 = _mm512_set1_epi8(0x0F);
                let (j0, j1) = (2 * C, 2 * C + 1);
                prefetch_step::<W>(ahead, 8 * C + K, 32);
                // SAFETY: line 8C + K < 32; groups 8j + K < 64.
                let (line, y0, y1) = unsafe {
                    (
                        _mm512_loadu_si512(q.add(64 * (8 * C + K)).cast()),
                        act4(y, 8 * j0 + K),
                        act4(y, 8 * j1 + K),
                    )
                };
                let w0 = _mm512_or_si512(_mm512_and_si512(line, m4), high(K, j0));
                let w1 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi32::<4>(line), m4),
                    high(K, j1),
                );
                lo[K % 2] = $dot4(lo[K % 2], w0, y0);
                hi[K % 2] = $dot4(hi[K % 2], w1, y1);
            }

            fn act_with_mins(y: &BlockQ8K) -> KAct {
                // sub-block j's code sum, 32 codes within +-127 each
                let sum = |j: usize| (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32) & 0xFFFF;
                KAct {
                    d: y.d,
                    start: [0; 16],
                    bsums: core::array::from_fn(|i| sum(2 * i) | sum(2 * i + 1) << 16),
                }
            }

            /// `x` shifted so bit `bit` of each byte lands on bit `to`
            /// (other bits move too: the caller masks).
            #[inline]
            #[target_feature(enable = $features)]
            fn move_bit(x: __m512i, bit: i32, to: i32) -> __m512i {
                if bit >= to {
                    _mm512_srl_epi32(x, _mm_cvtsi32_si128(bit - to))
                } else {
                    _mm512_sll_epi32(x, _mm_cvtsi32_si128(to - bit))
                }
            }

            /// The d-scaled 6-bit scales and mins of Q4_K/Q5_K from the
            /// three scale lines at `s` (`q4_k::scale_min_k4`, lane-wise).
            ///
            /// # Safety
            /// `s` points at 3 readable lines; `d`, `dmin` are the planes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn scales_mins_k4(s: *const u8, d: __m512, dmin: __m512, out: &mut Scales) {
                // SAFETY: per the contract; loadu has no alignment requirement.
                let (s0, s1, s2) = unsafe {
                    (
                        _mm512_loadu_si512(s.cast()),
                        _mm512_loadu_si512(s.add(64).cast()),
                        _mm512_loadu_si512(s.add(128).cast()),
                    )
                };
                let (m6, m4, m2) = (
                    _mm512_set1_epi32(63),
                    _mm512_set1_epi32(15),
                    _mm512_set1_epi32(3),
                );
                let mut m = [_mm512_setzero_si512(); 8];
                for j in 0..4 {
                    let sh = _mm_cvtsi32_si128(8 * j as i32);
                    let (b0, b1, b2) = (
                        _mm512_srl_epi32(s0, sh),
                        _mm512_srl_epi32(s1, sh),
                        _mm512_srl_epi32(s2, sh),
                    );
                    let top = |x: __m512i| {
                        _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(x), m2))
                    };
                    let sc = _mm512_and_si512(b0, m6);
                    let mn = _mm512_and_si512(b1, m6);
                    let sc4 = _mm512_or_si512(_mm512_and_si512(b2, m4), top(b0));
                    let mn4 =
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(b2), m4), top(b1));
                    out.scale[j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
                    out.scale[j + 4] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc4));
                    (m[j], m[j + 4]) = (mn, mn4);
                }
                for i in 0..4 {
                    out.mins[i] = _mm512_or_si512(m[2 * i], _mm512_slli_epi32::<16>(m[2 * i + 1]));
                }
                out.dmin = dmin;
            }

            /// The low 4 bits of the Q4_K/Q5_K codes from the 32 `qs` lines
            /// at `q`: line `8c + k` holds group `8(2c) + k` in its low
            /// nibbles and `8(2c + 1) + k` in its high ones.
            ///
            /// # Safety
            /// `q` points at 32 readable lines.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn nibbles_k4(q: *const u8, codes: &mut [__m512i; 64]) {
                let m4 = _mm512_set1_epi8(0x0F);
                for c in 0..4 {
                    for k in 0..8 {
                        // SAFETY: line 8c + k < 32 is inside the field.
                        let line = unsafe { _mm512_loadu_si512(q.add(64 * (8 * c + k)).cast()) };
                        codes[16 * c + k] = _mm512_and_si512(line, m4);
                        codes[16 * c + 8 + k] = _mm512_and_si512(_mm512_srli_epi32::<4>(line), m4);
                    }
                }
            }

            /// The d and dmin planes of a Q4_K/Q5_K record.
            ///
            /// # Safety
            /// `rec` points at a whole record.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn planes_k4(rec: *const u8) -> (__m512, __m512) {
                // SAFETY: the record starts with two 32-byte f16 planes.
                unsafe {
                    (
                        _mm512_cvtph_ps(_mm256_loadu_si256(rec.cast())),
                        _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(32).cast())),
                    )
                }
            }

            /// The d-scaled scales and mins of the Q4_K/Q5_K record at `rec`
            /// (its planes, then its scale lines: field 2 of both types).
            ///
            /// # Safety
            /// The tier's features; `rec` points at a whole record of `W`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn scales_k4<W: KRecord>(rec: *const u8, s: &mut Scales) {
                // SAFETY: per the contract.
                unsafe {
                    let (d, dmin) = planes_k4(rec);
                    scales_mins_k4(rec.add(W::field_start(2)), d, dmin, s);
                }
            }

            impl KRecord for BlockQ4K {
                const SUBS: usize = 8;
                const MINS: bool = true;
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn unpack(rec: *const u8, codes: &mut [__m512i; 64], s: &mut Scales) {
                    // SAFETY: the fields of a whole record (field_start gives each one's offset).
                    unsafe {
                        scales_k4::<Self>(rec, s);
                        nibbles_k4(rec.add(Self::field_start(3)), codes);
                    }
                }
                fn act(y: &BlockQ8K) -> KAct {
                    act_with_mins(y)
                }
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn dot1(
                    rec: *const u8,
                    ahead: *const u8,
                    y: &BlockQ8K,
                    ka: &KAct,
                    s: &mut Scales,
                ) -> __m512 {
                    let zero = _mm512_setzero_si512();
                    // SAFETY: the fields of a whole record.
                    unsafe {
                        scales_k4::<Self>(rec, s);
                        dot1_k4::<Self>(rec.add(Self::field_start(3)), ahead, y, ka, s, |_, _| zero)
                    }
                }
            }

            impl KRecord for BlockQ5K {
                const SUBS: usize = 8;
                const MINS: bool = true;
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn unpack(rec: *const u8, codes: &mut [__m512i; 64], s: &mut Scales) {
                    // SAFETY: the fields of a whole record.
                    unsafe {
                        scales_k4::<Self>(rec, s);
                        nibbles_k4(rec.add(Self::field_start(4)), codes);
                    }
                    // the fifth bit of group 8j + k: bit j of qh line k's bytes
                    let qh = rec.wrapping_add(Self::field_start(3));
                    let b4 = _mm512_set1_epi8(0x10);
                    for k in 0..8 {
                        // SAFETY: line k < 8 of the qh field.
                        let h = unsafe { _mm512_loadu_si512(qh.add(64 * k).cast()) };
                        for j in 0..8 {
                            let bit = _mm512_and_si512(move_bit(h, j as i32, 4), b4);
                            codes[8 * j + k] = _mm512_or_si512(codes[8 * j + k], bit);
                        }
                    }
                }
                fn act(y: &BlockQ8K) -> KAct {
                    act_with_mins(y)
                }
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn dot1(
                    rec: *const u8,
                    ahead: *const u8,
                    y: &BlockQ8K,
                    ka: &KAct,
                    s: &mut Scales,
                ) -> __m512 {
                    let b4 = _mm512_set1_epi8(0x10);
                    // SAFETY: the fields of a whole record; qh has 8 lines.
                    unsafe {
                        scales_k4::<Self>(rec, s);
                        let qh = rec.add(Self::field_start(3));
                        let h: [__m512i; 8] =
                            core::array::from_fn(|k| _mm512_loadu_si512(qh.add(64 * k).cast()));
                        // the fifth bit of group 8j + k: bit j of qh line k's bytes
                        let high =
                            |k: usize, j: usize| _mm512_and_si512(move_bit(h[k], j as i32, 4), b4);
                        dot1_k4::<Self>(rec.add(Self::field_start(4)), ahead, y, ka, s, high)
                    }
                }
            }

            impl KRecord for BlockQ6K {
                const SUBS: usize = 16;
                const MINS: bool = false;
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn unpack(rec: *const u8, codes: &mut [__m512i; 64], s: &mut Scales) {
                    // SAFETY: per the contract.
                    unsafe { scales_q6_k(rec, s) };
                    // group g (elements 4g..): half n = g / 32, run k = g / 8 % 4,
                    // l4 = g % 8: ql line 16n + 8(k % 2) + l4 (nibble k / 2),
                    // qh line 8n + l4 (bits 2k, 2k + 1)
                    for n in 0..2 {
                        for l4 in 0..8 {
                            // SAFETY: per the contract.
                            let w = unsafe { codes_q6_k(rec, n, l4) };
                            for (k, w) in w.into_iter().enumerate() {
                                codes[32 * n + 8 * k + l4] = w;
                            }
                        }
                    }
                }
                fn act(y: &BlockQ8K) -> KAct {
                    KAct {
                        d: y.d,
                        start: y.bsums.map(|s| -32 * s as i32),
                        bsums: [0; 4],
                    }
                }
                /// The record is read in order ([`q6_k::x16_step`]). On
                /// Intel cores each of its 16 steps also asks for its share
                /// of the lines ahead ([`prefetch_step`], chosen per record
                /// by [`decode_prefetch`]); elsewhere the hardware
                /// prefetcher alone follows the stream.
                ///
                /// On the EPYC host the stream bench's Q6_K decode read
                /// 27.3-27.6 GiB/s on 1 thread without the requests,
                /// 23.9-26.0 with them (alternated twice), and 20.8-21.3 in
                /// the field-by-field record before, with L2 requests
                /// alone. On the Xeon without them it read 12.0 GiB/s on 1
                /// thread and 23.2 on 2 (a plain read: 11.7 and 22.4); with
                /// them 15.5-15.6 and 30.6.
                ///
                /// [`decode_prefetch`]: crate::arch::x86_64::decode_prefetch
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn dot1(
                    rec: *const u8,
                    ahead: *const u8,
                    y: &BlockQ8K,
                    ka: &KAct,
                    s: &mut Scales,
                ) -> __m512 {
                    // SAFETY: per the contract.
                    unsafe {
                        scales_q6_k(rec, s);
                        if crate::arch::x86_64::decode_prefetch() {
                            dot1_q6_k::<true>(rec, ahead, y, ka, s)
                        } else {
                            dot1_q6_k::<false>(rec, ahead, y, ka, s)
                        }
                    }
                }
            }

            /// Q6_K's [`KRecord::dot1`] after its scales, both halves,
            /// with `PF` choosing whether its steps prefetch past `ahead`.
            ///
            /// # Safety
            /// As [`KRecord::dot1`]'s; the scales are in `s`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot1_q6_k<const PF: bool>(
                rec: *const u8,
                ahead: *const u8,
                y: &BlockQ8K,
                ka: &KAct,
                s: &Scales,
            ) -> __m512 {
                // SAFETY: forwarded.
                unsafe {
                    let blk = dot1_q6_k_half::<0, PF>(rec, ahead, y, ka, s, _mm512_setzero_ps());
                    dot1_q6_k_half::<1, PF>(rec, ahead, y, ka, s, blk)
                }
            }

            /// Half `N` (sub-blocks `8N..8N + 8`) of Q6_K's [`KRecord::dot1`],
            /// folded into `blk`.
            ///
            /// # Safety
            /// As [`KRecord::dot1`]'s; the scales are in `s`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot1_q6_k_half<const N: usize, const PF: bool>(
                rec: *const u8,
                ahead: *const u8,
                y: &BlockQ8K,
                ka: &KAct,
                s: &Scales,
                mut blk: __m512,
            ) -> __m512 {
                // sub-block 8N + i's sum in isum[i]: group 32N + 8k + l4 is
                // in sub-block 8N + 2k + l4 / 4
                let mut isum: [__m512i; 8] =
                    core::array::from_fn(|i| _mm512_set1_epi32(ka.start[8 * N + i]));
                // SAFETY: forwarded; l4 < 8.
                unsafe {
                    dot1_q6_k_lines::<N, 0, PF>(rec, ahead, y, &mut isum);
                    dot1_q6_k_lines::<N, 1, PF>(rec, ahead, y, &mut isum);
                    dot1_q6_k_lines::<N, 2, PF>(rec, ahead, y, &mut isum);
                    dot1_q6_k_lines::<N, 3, PF>(rec, ahead, y, &mut isum);
                    dot1_q6_k_lines::<N, 4, PF>(rec, ahead, y, &mut isum);
                    dot1_q6_k_lines::<N, 5, PF>(rec, ahead, y, &mut isum);
                    dot1_q6_k_lines::<N, 6, PF>(rec, ahead, y, &mut isum);
                    dot1_q6_k_lines::<N, 7, PF>(rec, ahead, y, &mut isum);
                }
                for (i, v) in isum.into_iter().enumerate() {
                    blk = fold(blk, v, s, 8 * N + i);
                }
                blk
            }

            /// The 4 code groups `32N + 8k + L4` (k = 0..4) of a Q6_K record
            /// against `y`, into their sub-blocks' sums. Constants, so the
            /// sums stay in registers: indexed at run time they lived on
            /// the stack, and each dot step loaded and stored its sum.
            ///
            /// # Safety
            /// As [`dot1_q6_k_half`]'s; `N < 2`, `L4 < 8`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn dot1_q6_k_lines<const N: usize, const L4: usize, const PF: bool>(
                rec: *const u8,
                ahead: *const u8,
                y: &BlockQ8K,
                isum: &mut [__m512i; 8],
            ) {
                if PF {
                    prefetch_step::<BlockQ6K>(ahead, 8 * N + L4, 16);
                }
                // SAFETY: per the contract; groups < 64.
                let w = unsafe { codes_q6_k(rec, N, L4) };
                for (k, w) in w.into_iter().enumerate() {
                    // SAFETY: 32N + 8k + L4 < 64.
                    let yk = unsafe { act4(y, 32 * N + 8 * k + L4) };
                    let i = 2 * k + L4 / 4;
                    isum[i] = $dot4(isum[i], w, yk);
                }
            }

            /// Q6_K's d-scaled signed sub-block scales, from the d plane
            /// and the 4 scale lines of the record at `rec`.
            ///
            /// # Safety
            /// The tier's features; `rec` points at a whole Q6_K record.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn scales_q6_k(rec: *const u8, s: &mut Scales) {
                // SAFETY: the d plane starts the record; 4 scale lines follow.
                let (d, sl) = unsafe {
                    let sc = rec.add(BlockQ6K::field_start(1));
                    (
                        _mm512_cvtph_ps(_mm256_loadu_si256(rec.cast())),
                        [0, 1, 2, 3].map(|m| _mm512_loadu_si512(sc.add(64 * m).cast())),
                    )
                };
                for j in 0..16 {
                    // signed byte j % 4 of line j / 4, sign-extended
                    let up =
                        _mm512_sll_epi32(sl[j / 4], _mm_cvtsi32_si128(24 - 8 * (j % 4) as i32));
                    s.scale[j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(up)));
                }
            }

            /// The Q6_K code groups `32n + 8k + l4` (k = 0..4) of the record
            /// at `rec`: low nibbles from ql line `16n + 8(k % 2) + l4`
            /// (nibble `k / 2`), high bits from qh line `8n + l4` (bits
            /// `2k`, `2k + 1`), the three lines of [`q6_k::x16_step`].
            ///
            /// # Safety
            /// The tier's features; `rec` points at a whole Q6_K record;
            /// `n < 2`, `l4 < 8`.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn codes_q6_k(rec: *const u8, n: usize, l4: usize) -> [__m512i; 4] {
                let step = rec.wrapping_add(q6_k::x16_step(n, l4));
                let (m4, m30) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
                // SAFETY: step 8n + l4 < 16's three lines are inside the record.
                let (h, q0, q1) = unsafe {
                    (
                        _mm512_loadu_si512(step.cast()),
                        _mm512_loadu_si512(step.add(64).cast()),
                        _mm512_loadu_si512(step.add(128).cast()),
                    )
                };
                let lo = [
                    _mm512_and_si512(q0, m4),
                    _mm512_and_si512(q1, m4),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(q0), m4),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(q1), m4),
                ];
                core::array::from_fn(|k| {
                    let hi = _mm512_and_si512(move_bit(h, 2 * k as i32, 4), m30);
                    _mm512_or_si512(lo[k], hi)
                })
            }

            // ---- the kernel ----

            /// # Safety
            /// The features of the tier, and the shape checked by `shape_ok`.
            #[target_feature(enable = $features)]
            unsafe fn x16_k<W: KRecord>(
                p: &[u8],
                rows: usize,
                a: &[BlockQ8K],
                bpr: usize,
                out: &mut [&mut [f32]],
            ) {
                // the columns past the last whole group of 8 (all of them
                // when fewer than 8): those take their activations from here
                let grouped = a.len() / bpr / 8 * 8;
                let acts: Vec<KAct> = a[grouped * bpr..].iter().map(W::act).collect();
                if grouped == 0 {
                    // SAFETY: forwarded from the caller.
                    return unsafe { x16_panels::<W>(p, rows, a, &acts, bpr, out, &mut Vec::new()) };
                }
                crate::scratch::with_scratch(&ACT8, |a8| {
                    // SAFETY: forwarded from the caller.
                    unsafe { x16_panels::<W>(p, rows, a, &acts, bpr, out, a8) }
                })
            }

            /// [`x16_k`] with `acts`, the [`KRecord::act`] of the blocks of
            /// `a`'s columns past the last whole group of 8, and `a8` to
            /// hold the [`Act8`]s of every whole group of 8 columns, made
            /// once, block-major (`a8[b * groups + grp]`), so each block's
            /// groups are read in order. Panels go two at a time (an odd
            /// last one alone): per block both records are unpacked once,
            /// each group of 8 columns takes its `Act8` against both
            /// ([`cols_step8`]), the rest go 4, 2 and 1 at a time per
            /// panel; one column (decode) takes the fused path.
            ///
            /// # Safety
            /// As [`x16_k`].
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn x16_panels<W: KRecord>(
                p: &[u8],
                rows: usize,
                a: &[BlockQ8K],
                acts: &[KAct],
                bpr: usize,
                out: &mut [&mut [f32]],
                a8: &mut Vec<Act8>,
            ) {
                let cols = a.len() / bpr;
                let groups = cols / 8;
                if a8.len() < groups * bpr {
                    a8.resize(groups * bpr, Act8::ZERO);
                }
                for b in 0..bpr {
                    for grp in 0..groups {
                        // SAFETY: the tier's features (the caller's).
                        unsafe { a8[b * groups + grp].fill::<W>(a, bpr, 8 * grp, b) };
                    }
                }
                let tail = &a[8 * groups * bpr..];
                let mut codes = [_mm512_setzero_si512(); 64];
                let mut s = Scales::zero();
                if cols == 1 {
                    for (pi, r0) in (0..rows).step_by(16).enumerate() {
                        let panel = p.as_ptr().wrapping_add(pi * bpr * W::RECORD);
                        let mut sum = _mm512_setzero_ps();
                        for b in 0..bpr {
                            let rec = panel.wrapping_add(b * W::RECORD);
                            // SAFETY: b < bpr and panel pi exist in p (shape checked); a and acts hold bpr blocks.
                            unsafe {
                                let ka = acts.get_unchecked(b);
                                let ahead = rec.wrapping_add(W::RECORD);
                                let blk = W::dot1(rec, ahead, a.get_unchecked(b), ka, &mut s);
                                sum = _mm512_fmadd_ps(blk, _mm512_set1_ps(ka.d), sum);
                            }
                        }
                        let mask = panel_mask(rows, r0);
                        // SAFETY: r0 + lane < rows <= out[0].len() for every unmasked lane.
                        unsafe {
                            let o = out.get_unchecked_mut(0);
                            _mm512_mask_storeu_ps(o.as_mut_ptr().add(r0), mask, sum)
                        };
                    }
                    return;
                }
                let mut codes1 = [_mm512_setzero_si512(); 64];
                let mut s1 = Scales::zero();
                let mut acc = vec![_mm512_setzero_ps(); cols];
                let mut acc1 = vec![_mm512_setzero_ps(); cols];
                let panels = rows.div_ceil(16);
                let mut pi = 0;
                while pi < panels {
                    // two panels at a time, so each activation load feeds 16
                    // independent chains; an odd last panel alone
                    let pair = pi + 1 < panels;
                    acc.fill(_mm512_setzero_ps());
                    acc1.fill(_mm512_setzero_ps());
                    let panel = p.as_ptr().wrapping_add(pi * bpr * W::RECORD);
                    let panel1 = panel.wrapping_add(bpr * W::RECORD);
                    for b in 0..bpr {
                        // the next records into L2 while this block's
                        // columns run: the unpacking had waited on them
                        let next = if b + 1 < bpr {
                            let at = (b + 1) * W::RECORD;
                            [panel.wrapping_add(at), panel1.wrapping_add(at)]
                        } else {
                            let np = panel.wrapping_add((1 + pair as usize) * bpr * W::RECORD);
                            [np, np.wrapping_add(bpr * W::RECORD)]
                        };
                        prefetch_records::<W>(next);
                        // SAFETY: b < bpr; panel pi (and pi + 1 when paired)
                        // exist in p (shape checked).
                        unsafe {
                            W::unpack(panel.wrapping_add(b * W::RECORD), &mut codes, &mut s);
                            if pair {
                                W::unpack(panel1.wrapping_add(b * W::RECORD), &mut codes1, &mut s1);
                            }
                        }
                        for grp in 0..groups {
                            if b + 1 == bpr {
                                // the outputs' lines, a group ahead of their
                                // stores (written once, so they are misses)
                                let r0 = 16 * pi;
                                for o in out[8 * grp..8 * grp + 8].iter() {
                                    let at = o.as_ptr().wrapping_add(r0);
                                    _mm_prefetch::<_MM_HINT_T0>(at.cast());
                                    if pair {
                                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(16).cast());
                                    }
                                }
                            }
                            // SAFETY: b * groups + grp < a8.len(); columns 8 grp.. + 8 <= cols.
                            unsafe {
                                let a8 = a8.get_unchecked(b * groups + grp);
                                // the group's 8 accumulators as an array, so
                                // the kernel indexes them without checks
                                let acc =
                                    &mut *acc.as_mut_ptr().add(8 * grp).cast::<[__m512; 8]>();
                                if pair {
                                    let acc1 =
                                        &mut *acc1.as_mut_ptr().add(8 * grp).cast::<[__m512; 8]>();
                                    let (codes, s) = ([&codes, &codes1], [&s, &s1]);
                                    cols_step8::<W, 2>(codes, s, a8, [acc, acc1])
                                } else {
                                    cols_step8::<W, 1>([&codes], [&s], a8, [acc])
                                }
                            };
                        }
                        for (codes, s, acc) in [(&codes, &s, &mut acc), (&codes1, &s1, &mut acc1)]
                            .into_iter()
                            .take(1 + pair as usize)
                        {
                            // the tail's columns, from its own column 0
                            let (n, acc) = (cols - 8 * groups, &mut acc[8 * groups..]);
                            let mut c0 = 0;
                            // SAFETY: each call reads tail columns c0..c0 + NC <= n.
                            unsafe {
                                if c0 + 4 <= n {
                                    cols_step::<W, 4>(codes, s, tail, acts, bpr, b, c0, acc);
                                    c0 += 4;
                                }
                                if c0 + 2 <= n {
                                    cols_step::<W, 2>(codes, s, tail, acts, bpr, b, c0, acc);
                                    c0 += 2;
                                }
                                if c0 < n {
                                    cols_step::<W, 1>(codes, s, tail, acts, bpr, b, c0, acc);
                                }
                            }
                        }
                    }
                    for (q, acc) in [&acc, &acc1].into_iter().enumerate().take(1 + pair as usize) {
                        let r0 = (pi + q) * 16;
                        let mask = panel_mask(rows, r0);
                        for (o, v) in out.iter_mut().zip(acc.iter()) {
                            // SAFETY: r0 + lane < rows <= o.len() for every
                            // unmasked lane (shape checked).
                            unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr().add(r0), mask, *v) };
                        }
                    }
                    pi += 1 + pair as usize;
                }
            }

            /// [`cols_step`] of 8 columns from their [`Act8`] against the
            /// records of `P` panels at once (two: each activation load
            /// feeds both), 4 columns at a time, so 8 chains run side by
            /// side (enough to cover a `dot4`'s latency: 6 ran at 80% of
            /// 8's rate in a chain bench, 12 and 16 no faster). All 8
            /// columns at once, the 16 integer sums and 16 block sums were
            /// more than the 32 registers: 4 block sums lived on the stack,
            /// and the 1B shape's Q4_K_M prefill ran 3-5% slower (block
            /// sums kept in memory by design: 10% slower). Each panel gets
            /// `cols_step`'s operations in its order, so the same bits.
            ///
            /// # Safety
            /// The tier's features; each `acc` holds the 8 columns'
            /// accumulators of its panel.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn cols_step8<W: KRecord, const P: usize>(
                codes: [&[__m512i; 64]; P],
                s: [&Scales; P],
                a8: &Act8,
                acc: [&mut [__m512; 8]; P],
            ) {
                for h in 0..2 {
                    let mut blk = [[_mm512_setzero_ps(); 4]; P];
                    for j in 0..W::SUBS {
                        // the types with minimums start their sums at 0
                        let start: [__m512i; 4] = core::array::from_fn(|c| {
                            if W::MINS {
                                _mm512_setzero_si512()
                            } else {
                                _mm512_set1_epi32(a8.start[j][4 * h + c])
                            }
                        });
                        let mut isum = [start; P];
                        for k in 0..W::GROUPS {
                            let g = j * W::GROUPS + k;
                            let w: [__m512i; P] = core::array::from_fn(|q| codes[q][g]);
                            for c in 0..4 {
                                let x = _mm512_set1_epi32(a8.qs[g][4 * h + c]);
                                for q in 0..P {
                                    isum[q][c] = $dot4(isum[q][c], w[q], x);
                                }
                            }
                        }
                        for q in 0..P {
                            for c in 0..4 {
                                blk[q][c] = fold(blk[q][c], isum[q][c], s[q], j);
                            }
                        }
                    }
                    for q in 0..P {
                        for c in 0..4 {
                            let c8 = 4 * h + c;
                            // (indexed one by one: an array's `map` closure was
                            // called, not inlined, with a `vzeroupper` before each)
                            let b = &a8.bsums;
                            let bsums = [b[0][c8], b[1][c8], b[2][c8], b[3][c8]];
                            let blk = unmin::<W>(blk[q][c], s[q], bsums);
                            let d = _mm512_set1_ps(a8.d[c8]);
                            acc[q][c8] = _mm512_fmadd_ps(blk, d, acc[q][c8]);
                        }
                    }
                }
            }

            /// Block `b` of columns `c0..c0 + NC` against the unpacked
            /// record, added to their accumulators.
            ///
            /// # Safety
            /// Columns `c0..c0 + NC` exist (`a` and `acts` hold `cols * bpr`
            /// blocks, `acc` `cols` accumulators) and `b < bpr`.
            #[inline]
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn cols_step<W: KRecord, const NC: usize>(
                codes: &[__m512i; 64],
                s: &Scales,
                a: &[BlockQ8K],
                acts: &[KAct],
                bpr: usize,
                b: usize,
                c0: usize,
                acc: &mut [__m512],
            ) {
                let ys: [&BlockQ8K; NC] = core::array::from_fn(|c| {
                    // SAFETY: (c0 + c) * bpr + b < cols * bpr for c < NC, per the contract.
                    unsafe { a.get_unchecked((c0 + c) * bpr + b) }
                });
                let ks: [&KAct; NC] = core::array::from_fn(|c| {
                    // SAFETY: as above, for acts.
                    unsafe { acts.get_unchecked((c0 + c) * bpr + b) }
                });
                let mut blk = [_mm512_setzero_ps(); NC];
                for j in 0..W::SUBS {
                    let mut isum: [__m512i; NC] =
                        core::array::from_fn(|c| _mm512_set1_epi32(ks[c].start[j]));
                    for k in 0..W::GROUPS {
                        let g = j * W::GROUPS + k;
                        let w = codes[g];
                        for c in 0..NC {
                            // SAFETY: g < 64.
                            isum[c] = $dot4(isum[c], w, unsafe { act4(ys[c], g) });
                        }
                    }
                    for c in 0..NC {
                        blk[c] = fold(blk[c], isum[c], s, j);
                    }
                }
                for c in 0..NC {
                    let blk = unmin::<W>(blk[c], s, ks[c].bsums);
                    // SAFETY: c0 + c < cols = acc.len().
                    let o = unsafe { acc.get_unchecked_mut(c0 + c) };
                    *o = _mm512_fmadd_ps(blk, _mm512_set1_ps(ks[c].d), *o);
                }
            }
        }
    };
}

pub(super) use kquant_kernels;
