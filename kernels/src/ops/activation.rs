//! Elementwise activations, softmax and soft-capping.

use crate::dispatch::{self, GluFn, KernelTable};
use crate::{Error, Result};
use rayon::prelude::*;

/// In-place softmax, max-subtracted so large logits do not overflow.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

fn check_pair(op: &'static str, gate: &[f32], up: &[f32]) -> Result<()> {
    if gate.len() != up.len() {
        return Err(Error::ShapeMismatch {
            op,
            expected: gate.len(),
            got: up.len(),
        });
    }
    Ok(())
}

/// Elements per parallel task of the gated activations: below two tasks
/// the calling thread does it all (a decode step's few thousand elements).
const GLU_CHUNK: usize = 1 << 14;

/// `gate = silu(gate) * up` (SwiGLU) on the process-wide dispatch table.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) -> Result<()> {
    silu_mul_with(dispatch::try_table()?, gate, up)
}

/// `gate = silu(gate) * up` (SwiGLU) with `table`'s kernel, in parallel
/// chunks for prefill-sized inputs.
pub fn silu_mul_with(table: &KernelTable, gate: &mut [f32], up: &[f32]) -> Result<()> {
    check_pair("silu_mul", gate, up)?;
    glu_in_chunks(table.silu_mul, gate, up);
    Ok(())
}

/// `gate = gelu_tanh(gate) * up` (GeGLU, Gemma) on the process-wide
/// dispatch table.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) -> Result<()> {
    gelu_tanh_mul_with(dispatch::try_table()?, gate, up)
}

/// `gate = gelu_tanh(gate) * up` with `table`'s kernel, in parallel chunks
/// for prefill-sized inputs.
pub fn gelu_tanh_mul_with(table: &KernelTable, gate: &mut [f32], up: &[f32]) -> Result<()> {
    check_pair("gelu_tanh_mul", gate, up)?;
    glu_in_chunks(table.gelu_tanh_mul, gate, up);
    Ok(())
}

fn glu_in_chunks(kernel: GluFn, gate: &mut [f32], up: &[f32]) {
    if gate.len() < 2 * GLU_CHUNK {
        kernel(gate, up);
    } else {
        gate.par_chunks_mut(GLU_CHUNK)
            .zip(up.par_chunks(GLU_CHUNK))
            .for_each(|(g, u)| kernel(g, u));
    }
}

/// The constants of [`exp_approx`], shared with the kernels that spell it
/// in intrinsics (the same operations on the same values, so the same
/// bits).
pub(crate) mod exp_consts {
    /// The input clamp: no infinity, no denormal.
    pub(crate) const MIN: f32 = -87.3;
    pub(crate) const MAX: f32 = 88.0;
    pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    pub(crate) const LN2_HI: f32 = 0.693_359_4;
    pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    pub(crate) const ROUND: f32 = 12_582_912.0;
    /// ROUND's bits, less which the rounded sum's bits are the integer.
    pub(crate) const ROUND_BITS: u32 = 0x4B40_0000;
    /// The polynomial's coefficients, highest degree first (Horner).
    pub(crate) const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

/// `e^x`, branch-free so that loops over it vectorize (Cephes' `expf`
/// polynomial after a round-to-nearest range reduction by ln 2): relative
/// error within a few ulp; inputs are clamped to `[-87.3, 88.0]`, so a
/// finite input never gives infinity or a denormal. Every tier runs this
/// same body (no fused multiply-add), so results are bit-identical across
/// ISAs.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    use exp_consts::*;
    let x = x.clamp(MIN, MAX);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    // n sits in the low bits of t's mantissa (biased by ROUND's bits).
    let k = t.to_bits().wrapping_sub(ROUND_BITS);
    y * f32::from_bits(k.wrapping_add(127) << 23)
}

/// The SwiGLU body every tier compiles with its own target features.
#[inline(always)]
pub(crate) fn silu_mul_body(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g * u / (1.0 + exp_approx(-*g));
    }
}

/// The GeGLU body every tier compiles with its own target features:
/// `0.5 x (1 + tanh(y)) = x / (1 + e^(-2y))`, so one exponential and no
/// tanh.
#[inline(always)]
pub(crate) fn gelu_tanh_mul_body(gate: &mut [f32], up: &[f32]) {
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let y = TWO_SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x);
        *g = x * u / (1.0 + exp_approx(-y));
    }
}

/// The scalar table's SwiGLU (the portable body; it still vectorizes to the
/// baseline ISA).
pub(crate) fn silu_mul_ref(gate: &mut [f32], up: &[f32]) {
    silu_mul_body(gate, up)
}

/// The scalar table's GeGLU.
pub(crate) fn gelu_tanh_mul_ref(gate: &mut [f32], up: &[f32]) {
    gelu_tanh_mul_body(gate, up)
}

/// `x = cap * tanh(x / cap)` (Gemma's logit soft-capping).
pub fn softcap(x: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for v in x.iter_mut() {
        *v = cap * (*v * inv).tanh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GELU with its tanh, in f64: the reference of the one-exponential form.
    fn gelu_tanh_f64(x: f64) -> f64 {
        const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
        0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
    }

    #[test]
    fn exp_approx_is_within_a_few_ulp_of_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_approx(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        // Clamped, never infinite or zero, at the ends.
        assert!(exp_approx(1000.0).is_finite() && exp_approx(1000.0) > 1e38);
        assert!(exp_approx(-1000.0) > 0.0 && exp_approx(-1000.0) < 1e-37);
        assert_eq!(exp_approx(0.0), 1.0);
    }

    #[test]
    fn gated_activations_match_their_f64_formulas() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 * 0.005).collect();
        let up: Vec<f32> = xs.iter().map(|x| 1.0 - 0.1 * x).collect();
        let mut g = xs.clone();
        gelu_tanh_mul_ref(&mut g, &up);
        let mut s = xs.clone();
        silu_mul_ref(&mut s, &up);
        for ((&x, &u), (&gg, &ss)) in xs.iter().zip(&up).zip(g.iter().zip(&s)) {
            let (x, u) = (x as f64, u as f64);
            let want_g = gelu_tanh_f64(x) * u;
            let want_s = x / (1.0 + (-x).exp()) * u;
            assert!(
                (gg as f64 - want_g).abs() <= 2e-6 * (1.0 + want_g.abs()),
                "gelu {x}"
            );
            assert!(
                (ss as f64 - want_s).abs() <= 2e-6 * (1.0 + want_s.abs()),
                "silu {x}"
            );
        }
        // Large inputs saturate instead of overflowing into NaN.
        let mut big = [1e6f32, -1e6, 100.0, -100.0];
        gelu_tanh_mul_ref(&mut big, &[1.0; 4]);
        assert_eq!(big[0], 1e6);
        assert_eq!(big[2], 100.0);
        assert!(big[1].abs() < 1e-30 && big[3].abs() < 1e-30);
    }

    #[test]
    fn chunked_activations_equal_one_pass() {
        let n = 2 * GLU_CHUNK + 123;
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 * 0.004 - 4.0)
            .collect();
        let up: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.25 - 1.0).collect();
        let (mut a, mut b) = (xs.clone(), xs.clone());
        gelu_tanh_mul(&mut a, &up).unwrap();
        gelu_tanh_mul_ref(&mut b, &up);
        assert_eq!(a, b);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let mut x = [1000.0f32, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let e = [(-1.0f32).exp(), 1.0, (-2.0f32).exp()];
        let s: f32 = e.iter().sum();
        for (a, b) in x.iter().zip(e) {
            assert!((a - b / s).abs() < 1e-6);
        }
        let mut m = [f32::NEG_INFINITY, 0.0];
        softmax(&mut m);
        assert_eq!(m, [0.0, 1.0]);
    }

    #[test]
    fn activations_match_formulas() {
        let mut g = [-2.0f32, 0.0, 1.5];
        silu_mul(&mut g, &[1.0, 3.0, 2.0]).unwrap();
        assert!((g[0] - (-2.0 / (1.0 + 2f32.exp()))).abs() < 1e-6);
        assert_eq!(g[1], 0.0);
        assert!((g[2] - 2.0 * 1.5 / (1.0 + (-1.5f32).exp())).abs() < 1e-6);
        let mut g = [1.0f32, -3.0];
        gelu_tanh_mul(&mut g, &[2.0, 1.0]).unwrap();
        // gelu(1) ≈ 0.841192, gelu(-3) ≈ -0.003637 (the table's kernel)
        assert!((g[0] - 2.0 * 0.841_192).abs() < 1e-5);
        assert!((g[1] + 0.003_637).abs() < 1e-5);
        assert!(silu_mul(&mut [0.0; 2], &[0.0; 3]).is_err());
        let mut x = [0.0f32, 30.0, -1e6];
        softcap(&mut x, 30.0);
        assert_eq!(x[0], 0.0);
        assert!((x[1] - 30.0 * 1f32.tanh()).abs() < 1e-5);
        assert!((x[2] + 30.0).abs() < 1e-5);
    }
}
