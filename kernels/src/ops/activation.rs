//! Elementwise activations, softmax and soft-capping.

use crate::{Error, Result};

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

/// `gate = silu(gate) * up` (SwiGLU).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) -> Result<()> {
    check_pair("silu_mul", gate, up)?;
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
    Ok(())
}

/// ggml's tanh approximation of GELU.
#[inline]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh())
}

/// `gate = gelu_tanh(gate) * up` (GeGLU, Gemma).
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) -> Result<()> {
    check_pair("gelu_tanh_mul", gate, up)?;
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu_tanh(*g) * u;
    }
    Ok(())
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
        // gelu(1) ≈ 0.841192, gelu(-3) ≈ -0.003637
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
