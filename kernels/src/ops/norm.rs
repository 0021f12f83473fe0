//! RMSNorm as ggml computes it: mean of squares (accumulated in f64), eps
//! inside the square root, then the elementwise weight.

use super::PARALLEL_MIN;
use crate::{Error, Result};
use rayon::prelude::*;

fn check(op: &'static str, len: usize, dim: usize) -> Result<()> {
    if dim == 0 || !len.is_multiple_of(dim) {
        return Err(Error::InvalidArgument {
            op,
            reason: format!("{len} values are not whole rows of {dim}"),
        });
    }
    Ok(())
}

/// Partial sums of the mean of squares: independent chains, so the sum
/// runs at the adders' throughput rather than one f64 add latency per
/// element (a decoded token's norm runs on one thread between the
/// parallel products).
const LANES: usize = 8;

#[inline]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64 * v as f64;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v as f64 * v as f64;
    }
    let sum: f64 = acc.iter().sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// `out = x / rms(x) * weight` for each row of `weight.len()` elements.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    check("rms_norm", x.len(), weight.len())?;
    if out.len() != x.len() {
        return Err(Error::ShapeMismatch {
            op: "rms_norm",
            expected: x.len(),
            got: out.len(),
        });
    }
    let row = |(xr, or): (&[f32], &mut [f32])| {
        let s = inv_rms(xr, eps);
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * s * w;
        }
    };
    let d = weight.len();
    if x.len() >= PARALLEL_MIN && x.len() > d {
        x.par_chunks_exact(d)
            .zip(out.par_chunks_exact_mut(d))
            .for_each(row);
    } else {
        x.chunks_exact(d).zip(out.chunks_exact_mut(d)).for_each(row);
    }
    Ok(())
}

/// [`rms_norm`] writing back into `x`.
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) -> Result<()> {
    check("rms_norm_in_place", x.len(), weight.len())?;
    let row = |xr: &mut [f32]| {
        let s = inv_rms(xr, eps);
        for (v, &w) in xr.iter_mut().zip(weight) {
            *v = *v * s * w;
        }
    };
    let d = weight.len();
    if x.len() >= PARALLEL_MIN && x.len() > d {
        x.par_chunks_exact_mut(d).for_each(row);
    } else {
        x.chunks_exact_mut(d).for_each(row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_formula_per_row() {
        let x = [3.0f32, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let w = [1.0f32, 2.0, 1.0, 1.0];
        let mut out = [0f32; 8];
        rms_norm(&x, &w, 1e-6, &mut out).unwrap();
        // row 0: mean sq = 25/4, rms = 2.5
        let r = (25.0f32 / 4.0 + 1e-6).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6);
        assert!((out[1] - 8.0 / r).abs() < 1e-6);
        assert!((out[4] - 1.0 / (1.0f32 + 1e-6).sqrt()).abs() < 1e-6);
        let mut y = x;
        rms_norm_in_place(&mut y, &w, 1e-6).unwrap();
        assert_eq!(y, out);
    }

    #[test]
    fn rejects_ragged_rows() {
        let mut out = [0f32; 5];
        assert!(rms_norm(&[1.0; 5], &[1.0; 4], 1e-5, &mut out).is_err());
        assert!(rms_norm(&[1.0; 8], &[1.0; 4], 1e-5, &mut out).is_err());
        assert!(rms_norm_in_place(&mut [1.0; 4], &[], 1e-5).is_err());
    }
}
