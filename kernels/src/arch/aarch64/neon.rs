//! Baseline Advanced SIMD kernels (every aarch64 core).
//!
//! Integer dots ([`Widening`], for every integer weight type through
//! [`codes::dot`]): `smull`/`smull2` widen i8·i8 to i16 (every i8 product
//! fits in i16), `sadalp` folds pairs into four i32 lanes, and each block's
//! lanes meet its f32 scale in one `fmla`, so the horizontal reduction
//! happens once per row, not once per block.

use super::codes::{self, IntDot, WeightCodes};
use crate::dispatch::{ActivationRow, KernelTable, WeightRow};
use crate::quant::blocks::{BlockQ8_0, BlockQ8_1, QK};
use half::{bf16, f16};
use std::arch::aarch64::*;
use std::arch::asm;

/// Entries of the NEON tier. Only called by `super::table` after detection.
pub(super) fn overrides(base: KernelTable) -> KernelTable {
    KernelTable {
        q4_0: WeightRow { dot, ..base.q4_0 },
        q4_1: WeightRow { dot, ..base.q4_1 },
        q5_0: WeightRow { dot, ..base.q5_0 },
        q5_1: WeightRow { dot, ..base.q5_1 },
        q8_0: WeightRow { dot, ..base.q8_0 },
        q2_k: WeightRow { dot, ..base.q2_k },
        q3_k: WeightRow { dot, ..base.q3_k },
        q4_k: WeightRow { dot, ..base.q4_k },
        q5_k: WeightRow { dot, ..base.q5_k },
        q6_k: WeightRow { dot, ..base.q6_k },
        iq4_nl: WeightRow { dot, ..base.iq4_nl },
        iq4_xs: WeightRow { dot, ..base.iq4_xs },
        f16: WeightRow {
            dot: f16_f32,
            ..base.f16
        },
        bf16: WeightRow {
            dot: bf16_f32,
            ..base.bf16
        },
        f32: WeightRow {
            dot: f32_f32,
            ..base.f32
        },
        act_q8_0: ActivationRow {
            quantize: quantize_q8_0,
        },
        act_q8_1: ActivationRow {
            quantize: quantize_q8_1,
        },
        axpy_f16,
        ..base
    }
}

// The safe wrappers below are private to `arch::aarch64` and handed out only
// by `super::table` once `supports(Isa::Neon)` holds; each trims both slices
// to their common length, so kernels never read past either.

/// The integer dot of every weight type (the row's block type picks `W`).
pub(super) fn dot<W: WeightCodes>(w: &[W], a: &[W::Act]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: NEON was detected before this fn was handed out (see above).
    unsafe { dot_kernel(&w[..n], &a[..n]) }
}

fn f32_f32(w: &[f32], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: NEON was detected before this fn was handed out.
    unsafe { f32_f32_kernel(&w[..n], &a[..n]) }
}

fn f16_f32(w: &[f16], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: NEON was detected before this fn was handed out.
    unsafe { f16_f32_kernel(&w[..n], &a[..n]) }
}

fn bf16_f32(w: &[bf16], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    // SAFETY: NEON was detected before this fn was handed out.
    unsafe { bf16_f32_kernel(&w[..n], &a[..n]) }
}

fn axpy_f16(alpha: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    // SAFETY: NEON was detected before this fn was handed out.
    unsafe { axpy_f16_kernel(alpha, &x[..n], &mut y[..n]) }
}

/// Quantizes `min(x.len() / 32, out.len())` blocks; a partial trailing block
/// of `x` is ignored, as in the scalar reference.
fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xb, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        // SAFETY: NEON was detected before this fn was handed out; `xb` holds
        // exactly QK floats.
        let (d, qs) = unsafe { quantize_block_q8(xb) };
        y.d = f16::from_f32(d);
        y.qs = qs;
    }
}

fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xb, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        // SAFETY: as in `quantize_q8_0`.
        let (d, qs) = unsafe { quantize_block_q8(xb) };
        // SAFETY: NEON detected; `qs` is a 32-byte array read as two 16-byte vectors.
        let sum = unsafe { sum_codes(&qs) };
        y.d = f16::from_f32(d);
        y.s = f16::from_f32(sum as f32 * d);
        y.qs = qs;
    }
}

/// f16 → f32 of one scale with `fcvt` (base Armv8 FP, inlined). `half`'s
/// `to_f32` re-checks the `fp16` feature and calls out on every use, which
/// costs as much as the block's arithmetic in the per-block scale products.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn f16_to_f32(h: f16) -> f32 {
    let out: f32;
    // SAFETY: register-only instructions (GPR → vector move, convert); NEON
    // (with its FP) is enabled for this function.
    unsafe {
        asm!(
            "fmov {out:s}, {bits:w}",
            "fcvt {out:s}, {out:h}",
            bits = in(reg) u32::from(h.to_bits()),
            out = out(vreg) out,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// Four little-endian f16 at `p` as f32 lanes (`fcvtl`, base Armv8 FP):
/// the 16-row scale planes of the x16 layout.
///
/// # Safety
/// `p` points at 8 readable bytes; the caller guarantees NEON.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn load_f16x4(p: *const u8) -> float32x4_t {
    // SAFETY: 8 readable bytes at `p` (the caller's contract); no alignment
    // requirement for `ld1`.
    let bits = unsafe { vld1_u16(p.cast::<u16>()) };
    let out: float32x4_t;
    // SAFETY: a register-only instruction; NEON is enabled for this function.
    unsafe {
        asm!(
            "fcvtl {out:v}.4s, {bits:v}.4h",
            bits = in(vreg) bits,
            out = out(vreg) out,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// A 32-byte code array as two vectors (elements 0..16, 16..32).
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn load_q8(qs: &[i8; QK]) -> (int8x16_t, int8x16_t) {
    // SAFETY: `qs` is 32 readable bytes; the caller guarantees NEON.
    unsafe { (vld1q_s8(qs.as_ptr()), vld1q_s8(qs.as_ptr().add(16))) }
}

/// NEON's integer dot: `smull`/`smull2` then `sadalp` into the four lanes.
#[derive(Debug)]
pub(super) struct Widening;

impl IntDot for Widening {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn dot16(acc: int32x4_t, x: int8x16_t, y: int8x16_t) -> int32x4_t {
        let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
        vpadalq_s16(acc, vmull_high_s8(x, y))
    }
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn sum(v: float32x4_t) -> f32 {
        vaddvq_f32(v)
    }
}

#[target_feature(enable = "neon")]
unsafe fn dot_kernel<W: WeightCodes>(w: &[W], a: &[W::Act]) -> f32 {
    // SAFETY: NEON is guaranteed by the caller.
    unsafe { codes::dot::<W, Widening>(w, a) }
}

/// Four independent accumulators hide the `fmla` latency; 16 lanes per step.
#[target_feature(enable = "neon")]
unsafe fn f32_f32_kernel(w: &[f32], a: &[f32]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let (w16, a16) = (w.chunks_exact(16), a.chunks_exact(16));
    let (w_tail, a_tail) = (w16.remainder(), a16.remainder());
    for (wc, ac) in w16.zip(a16) {
        for (k, lane) in acc.iter_mut().enumerate() {
            // SAFETY: both chunks hold 16 floats, so 4k..4k+4 is in bounds.
            let (x, y) = unsafe {
                (
                    vld1q_f32(wc.as_ptr().add(4 * k)),
                    vld1q_f32(ac.as_ptr().add(4 * k)),
                )
            };
            *lane = vfmaq_f32(*lane, x, y);
        }
    }
    let total = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let tail: f32 = w_tail.iter().zip(a_tail).map(|(x, y)| x * y).sum();
    vaddvq_f32(total) + tail
}

/// f16 → f32 of eight halves. `fcvtl` is base Armv8 (the FP16 *arithmetic*
/// extension is not needed); it goes through `asm!` because the f16 vector
/// types are not stable in Rust yet.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn widen_f16x8(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (low, high): (float32x4_t, float32x4_t);
    // SAFETY: pure register-to-register conversions; NEON guaranteed by the
    // caller. `out` (not `lateout`) keeps `low` from overwriting `h` before
    // the second instruction reads it.
    unsafe {
        asm!(
            "fcvtl {low:v}.4s, {h:v}.4h",
            "fcvtl2 {high:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            low = out(vreg) low,
            high = out(vreg) high,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    (low, high)
}

#[target_feature(enable = "neon")]
unsafe fn f16_f32_kernel(w: &[f16], a: &[f32]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let (w16, a16) = (w.chunks_exact(16), a.chunks_exact(16));
    let (w_tail, a_tail) = (w16.remainder(), a16.remainder());
    for (wc, ac) in w16.zip(a16) {
        // SAFETY: `f16` is a transparent u16; the chunk holds 16 of them.
        let (h0, h1) = unsafe {
            let p = wc.as_ptr().cast::<u16>();
            (vld1q_u16(p), vld1q_u16(p.add(8)))
        };
        // SAFETY: NEON is guaranteed by the caller.
        let ((x0, x1), (x2, x3)) = unsafe { (widen_f16x8(h0), widen_f16x8(h1)) };
        for (k, (lane, x)) in acc.iter_mut().zip([x0, x1, x2, x3]).enumerate() {
            // SAFETY: the chunk holds 16 floats, so 4k..4k+4 is in bounds.
            let y = unsafe { vld1q_f32(ac.as_ptr().add(4 * k)) };
            *lane = vfmaq_f32(*lane, x, y);
        }
    }
    let total = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let tail: f32 = w_tail
        .iter()
        .zip(a_tail)
        .map(|(x, y)| f16_to_f32(*x) * y)
        .sum();
    vaddvq_f32(total) + tail
}

/// `y += alpha·x`, eight halves per step (attention's V accumulation).
#[target_feature(enable = "neon")]
unsafe fn axpy_f16_kernel(alpha: f32, x: &[f16], y: &mut [f32]) {
    let (x8, y8) = (x.chunks_exact(8), y.chunks_exact_mut(8));
    let x_tail = x8.remainder();
    for (xc, yc) in x8.zip(y8) {
        // SAFETY: `f16` is a transparent u16; the chunk holds 8 of them.
        let h = unsafe { vld1q_u16(xc.as_ptr().cast::<u16>()) };
        // SAFETY: NEON is guaranteed by the caller.
        let (x0, x1) = unsafe { widen_f16x8(h) };
        // SAFETY: the y chunk holds 8 floats.
        unsafe {
            let p = yc.as_mut_ptr();
            vst1q_f32(p, vfmaq_n_f32(vld1q_f32(p), x0, alpha));
            vst1q_f32(p.add(4), vfmaq_n_f32(vld1q_f32(p.add(4)), x1, alpha));
        }
    }
    let done = x.len() - x_tail.len();
    for (o, v) in y[done..].iter_mut().zip(x_tail) {
        *o += alpha * f16_to_f32(*v);
    }
}

/// bf16 is the top half of an f32: interleaving zeros below each value
/// (`zip1`/`zip2` with a zero vector) is the whole conversion.
#[target_feature(enable = "neon")]
unsafe fn bf16_f32_kernel(w: &[bf16], a: &[f32]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let zero = vdupq_n_u16(0);
    let (w16, a16) = (w.chunks_exact(16), a.chunks_exact(16));
    let (w_tail, a_tail) = (w16.remainder(), a16.remainder());
    for (wc, ac) in w16.zip(a16) {
        // SAFETY: `bf16` is a transparent u16; the chunk holds 16 of them.
        let (h0, h1) = unsafe {
            let p = wc.as_ptr().cast::<u16>();
            (vld1q_u16(p), vld1q_u16(p.add(8)))
        };
        let xs = [
            vzip1q_u16(zero, h0),
            vzip2q_u16(zero, h0),
            vzip1q_u16(zero, h1),
            vzip2q_u16(zero, h1),
        ];
        for (k, (lane, x)) in acc.iter_mut().zip(xs).enumerate() {
            // SAFETY: the chunk holds 16 floats, so 4k..4k+4 is in bounds.
            let y = unsafe { vld1q_f32(ac.as_ptr().add(4 * k)) };
            *lane = vfmaq_f32(*lane, vreinterpretq_f32_u16(x), y);
        }
    }
    let total = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let tail: f32 = w_tail.iter().zip(a_tail).map(|(x, y)| x.to_f32() * y).sum();
    vaddvq_f32(total) + tail
}

/// One block of 32 floats → (d, codes) exactly as ggml's reference:
/// `d = amax / 127`, codes `round(x / d)` with ties away from zero (`fcvtas`
/// matches C `roundf`; the default `fcvtns` would round ties to even).
#[target_feature(enable = "neon")]
unsafe fn quantize_block_q8(xb: &[f32]) -> (f32, [i8; QK]) {
    debug_assert_eq!(xb.len(), QK);
    let mut v = [vdupq_n_f32(0.0); QK / 4];
    for (k, lane) in v.iter_mut().enumerate() {
        // SAFETY: the caller passes QK floats, so 4k..4k+4 is in bounds.
        *lane = unsafe { vld1q_f32(xb.as_ptr().add(4 * k)) };
    }
    let mut amax = vabsq_f32(v[0]);
    for lane in &v[1..] {
        amax = vmaxq_f32(amax, vabsq_f32(*lane));
    }
    let d = vmaxvq_f32(amax) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK];
    for (k, out) in qs.chunks_exact_mut(8).enumerate() {
        let i0 = vcvtaq_s32_f32(vmulq_n_f32(v[2 * k], id));
        let i1 = vcvtaq_s32_f32(vmulq_n_f32(v[2 * k + 1], id));
        let narrow = vqmovn_s16(vcombine_s16(vqmovn_s32(i0), vqmovn_s32(i1)));
        // SAFETY: `out` is an 8-byte chunk of `qs`.
        unsafe { vst1_s8(out.as_mut_ptr(), narrow) };
    }
    (d, qs)
}

#[target_feature(enable = "neon")]
unsafe fn sum_codes(qs: &[i8; QK]) -> i32 {
    // SAFETY: NEON is guaranteed by the caller; 32 bytes in bounds.
    let (x, y) = unsafe { load_q8(qs) };
    i32::from(vaddlvq_s8(x)) + i32::from(vaddlvq_s8(y))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::dispatch::Isa;
    use crate::quant::blocks::BlockQ4_0;

    fn neon() -> bool {
        super::super::supports(Isa::Neon)
    }

    #[test]
    fn f16_scale_conversion_matches_half_on_every_bit_pattern() {
        if !neon() {
            return;
        }
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            // SAFETY: NEON detected above.
            let got = unsafe { f16_to_f32(h) };
            let want = h.to_f32();
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn legacy_dots_match_reference() {
        if !neon() {
            return;
        }
        let mut r = rng(1);
        for n in BLOCK_COUNTS {
            let (w, a) = (q4_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            assert_close(
                "q4_0_q8_0",
                dot(&w, &a),
                ref_q4_0_q8_0(&w, &a),
                BUDGET_LEGACY,
            );
            let (w, a) = (q4_1_blocks(&mut r, n), q8_1_blocks(&mut r, n));
            assert_close(
                "q4_1_q8_1",
                dot(&w, &a),
                ref_q4_1_q8_1(&w, &a),
                BUDGET_LEGACY,
            );
            let (w, a) = (q8_0_blocks(&mut r, n), q8_0_blocks(&mut r, n));
            assert_close(
                "q8_0_q8_0",
                dot(&w, &a),
                ref_q8_0_q8_0(&w, &a),
                BUDGET_LEGACY,
            );
        }
    }

    #[test]
    fn extreme_codes_do_not_overflow_i16_products() {
        if !neon() {
            return;
        }
        let w = vec![
            BlockQ8_0 {
                d: f16::ONE,
                qs: [-127; QK]
            };
            5
        ];
        let a = vec![
            BlockQ8_0 {
                d: f16::ONE,
                qs: [-127; QK]
            };
            5
        ];
        let want = 5.0 * 32.0 * 127.0 * 127.0;
        assert!((dot(&w, &a) - want).abs() <= want * 1e-6);
        let w4 = vec![
            BlockQ4_0 {
                d: f16::ONE,
                qs: [0x00; QK / 2]
            };
            5
        ];
        assert!((dot(&w4, &a) - 5.0 * 32.0 * 8.0 * 127.0).abs() <= 1.0);
    }

    #[test]
    fn float_dots_match_reference() {
        if !neon() {
            return;
        }
        let mut r = rng(2);
        for n in FLOAT_LENS {
            let (w, a) = (floats(&mut r, n), floats(&mut r, n));
            assert_close(
                "f32_f32",
                f32_f32(&w, &a),
                ref_f32_f32(&w, &a),
                BUDGET_FLOAT,
            );
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            assert_close(
                "f16_f32",
                f16_f32(&w16, &a),
                ref_f16_f32(&w16, &a),
                BUDGET_FLOAT,
            );
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            assert_close(
                "bf16_f32",
                bf16_f32(&wb, &a),
                ref_bf16_f32(&wb, &a),
                BUDGET_FLOAT,
            );
        }
    }

    #[test]
    fn axpy_f16_matches_reference() {
        if !neon() {
            return;
        }
        let mut r = rng(5);
        for n in FLOAT_LENS {
            let (x, y) = (floats(&mut r, n), floats(&mut r, n));
            let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            check_axpy(&format!("axpy_f16 n={n}"), axpy_f16, &x16, &y);
        }
        // a shorter y is updated over its own length only
        let x16 = vec![f16::ONE; 20];
        let mut y = vec![1.0f32; 11];
        axpy_f16(2.0, &x16, &mut y);
        assert!(y.iter().all(|&v| (v - 3.0).abs() < 1e-6));
    }

    #[test]
    fn mismatched_lengths_use_the_common_prefix() {
        if !neon() {
            return;
        }
        let mut r = rng(3);
        let (w, a) = (q8_0_blocks(&mut r, 5), q8_0_blocks(&mut r, 3));
        assert_close(
            "q8_0 prefix",
            dot(&w, &a),
            ref_q8_0_q8_0(&w[..3], &a),
            BUDGET_LEGACY,
        );
        let (w, a) = (floats(&mut r, 40), floats(&mut r, 37));
        assert_close(
            "f32 prefix",
            f32_f32(&w, &a),
            ref_f32_f32(&w[..37], &a),
            BUDGET_FLOAT,
        );
    }

    #[test]
    fn quantizers_match_reference() {
        if !neon() {
            return;
        }
        let mut r = rng(4);
        for n in BLOCK_COUNTS {
            let mut x = floats(&mut r, n * QK);
            // a zero block and exact .5 ties exercise d = 0 and the rounding mode
            x[..QK].fill(0.0);
            if n > 1 {
                for (j, v) in x[QK..2 * QK].iter_mut().enumerate() {
                    *v = j as f32 - 16.5;
                }
                x[2 * QK - 1] = 127.0;
            }
            let mut got = vec![
                BlockQ8_0 {
                    d: f16::ZERO,
                    qs: [0; QK]
                };
                n
            ];
            let mut want = got.clone();
            quantize_q8_0(&x, &mut got);
            ref_quantize_q8_0(&x, &mut want);
            let ds = |b: &[BlockQ8_0]| b.iter().map(|b| b.d).collect::<Vec<_>>();
            let qs = |b: &[BlockQ8_0]| b.iter().map(|b| b.qs).collect::<Vec<_>>();
            assert_q8_blocks_close(
                "quantize_q8_0",
                &x,
                (&ds(&got), &qs(&got)),
                (&ds(&want), &qs(&want)),
            );
            assert_eq!(got[0].d.to_f32(), 0.0);
            assert!(got[0].qs.iter().all(|&q| q == 0));
            if n > 1 {
                // with d = 1 the ties must round away from zero, like roundf
                assert_eq!(got[1].qs[0], -17);
                assert_eq!(got[1].qs[29], 13);
                assert_eq!(got[1].qs[31], 127);
            }

            let mut got1 = vec![
                BlockQ8_1 {
                    d: f16::ZERO,
                    s: f16::ZERO,
                    qs: [0; QK]
                };
                n
            ];
            let mut want1 = got1.clone();
            quantize_q8_1(&x, &mut got1);
            ref_quantize_q8_1(&x, &mut want1);
            let ds = |b: &[BlockQ8_1]| b.iter().map(|b| b.d).collect::<Vec<_>>();
            let qs = |b: &[BlockQ8_1]| b.iter().map(|b| b.qs).collect::<Vec<_>>();
            assert_q8_blocks_close(
                "quantize_q8_1",
                &x,
                (&ds(&got1), &qs(&got1)),
                (&ds(&want1), &qs(&want1)),
            );
            for (g, w) in got1.iter().zip(&want1) {
                let (gs, ws) = (g.s.to_f32(), w.s.to_f32());
                assert!((gs - ws).abs() <= ws.abs() * 2e-3 + 1e-4, "s {gs} vs {ws}");
            }
        }
    }
}
