//! The orthonormal Walsh–Hadamard transform, applied block-diagonally: a
//! vector is cut into blocks of `n` (a power of two) and each block `x`
//! becomes `H_n x / sqrt(n)`, with `H_n` Sylvester's ±1 matrix
//! (`H_2n = [[H_n, H_n], [H_n, -H_n]]`, entry `(i, j)` =
//! `(-1)^popcount(i & j)`). The normalized matrix is symmetric and
//! orthogonal, so it is its own inverse and keeps dot products.
//!
//! A quantized KV cache stores keys and values rotated by it (as llama.cpp
//! does): an outlier channel is spread over the whole block, so a block's
//! scale is no longer set by one element and 4-bit codes lose less. The
//! transform is the fast one, `n log2 n` additions per block in place (the
//! butterflies of one stage are independent, a loop the compiler
//! vectorizes); it runs once per cached row and per query/output head, far
//! from the cost of attention itself.

use crate::{Error, Result};

/// The block-diagonal orthonormal Walsh–Hadamard transform of block size
/// `n` (a power of two, at least 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hadamard {
    n: usize,
}

impl Hadamard {
    /// Blocks of `n`; [`Error::InvalidArgument`] unless `n` is a power of
    /// two of at least 2.
    pub fn new(n: usize) -> Result<Self> {
        if n < 2 || !n.is_power_of_two() {
            return Err(Error::InvalidArgument {
                op: "hadamard",
                reason: format!("block size {n} is not a power of two of at least 2"),
            });
        }
        Ok(Self { n })
    }

    /// Its block size.
    pub fn n(self) -> usize {
        self.n
    }

    /// Transforms every block of `x` in place; [`Error::ShapeMismatch`]
    /// unless `x` is whole blocks. Applying it twice gives `x` back (up to
    /// rounding).
    pub fn apply(self, x: &mut [f32]) -> Result<()> {
        if !x.len().is_multiple_of(self.n) {
            return Err(Error::ShapeMismatch {
                op: "hadamard",
                expected: x.len().div_ceil(self.n) * self.n,
                got: x.len(),
            });
        }
        self.apply_whole(x);
        Ok(())
    }

    /// [`Hadamard::apply`] for a length the caller checked (a tail shorter
    /// than a block is left as it is).
    pub(crate) fn apply_whole(self, x: &mut [f32]) {
        let n = self.n;
        let scale = 1.0 / (n as f32).sqrt();
        for block in x.chunks_exact_mut(n) {
            let mut h = 1;
            while h < n {
                for pair in block.chunks_exact_mut(2 * h) {
                    let (a, b) = pair.split_at_mut(h);
                    for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                        let (s, d) = (*u + *v, *u - *v);
                        *u = s;
                        *v = d;
                    }
                }
                h *= 2;
            }
            block.iter_mut().for_each(|v| *v *= scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data::random_row;

    /// `H_n / sqrt(n)` written out entry by entry, in f64.
    fn explicit(n: usize) -> Vec<f64> {
        let s = 1.0 / (n as f64).sqrt();
        (0..n * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                if (i & j).count_ones() % 2 == 0 {
                    s
                } else {
                    -s
                }
            })
            .collect()
    }

    #[test]
    fn matches_the_explicit_orthonormal_matrix_per_block() {
        for n in [2, 4, 8, 16, 32, 64, 128, 256] {
            let m = explicit(n);
            // the matrix is what the module says: orthonormal and symmetric
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-12, "n {n} ({i}, {j})");
                    assert_eq!(m[i * n + j], m[j * n + i]);
                }
            }
            let blocks = 3;
            let x = random_row(blocks * n, n as u64);
            let mut y = x.clone();
            Hadamard::new(n).unwrap().apply(&mut y).unwrap();
            for (b, (xb, yb)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
                let norm = xb.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
                for (i, &got) in yb.iter().enumerate() {
                    let want: f64 = (0..n).map(|j| m[i * n + j] * xb[j] as f64).sum();
                    assert!(
                        (got as f64 - want).abs() < 1e-6 * norm,
                        "n {n} block {b} [{i}]: {got} vs {want}"
                    );
                }
            }
            // its own inverse, norm and dot products kept
            let mut z = y.clone();
            Hadamard::new(n).unwrap().apply(&mut z).unwrap();
            for (a, b) in x.iter().zip(&z) {
                assert!((a - b).abs() < 1e-5 * (1.0 + a.abs()), "n {n}: {a} vs {b}");
            }
            let w = random_row(blocks * n, 1000 + n as u64);
            let mut wr = w.clone();
            Hadamard::new(n).unwrap().apply(&mut wr).unwrap();
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p * q) as f64).sum();
            let (d0, d1): (f64, f64) = (dot(&x, &w), dot(&y, &wr));
            assert!(
                (d0 - d1).abs() < 1e-4 * (1.0 + d0.abs()),
                "n {n}: {d0} vs {d1}"
            );
        }
    }

    #[test]
    fn spreads_an_outlier_over_its_block() {
        let mut x = vec![0f32; 64];
        x[5] = 8.0;
        Hadamard::new(64).unwrap().apply(&mut x).unwrap();
        assert!(x.iter().all(|v| (v.abs() - 1.0).abs() < 1e-6), "{x:?}");
    }

    #[test]
    fn refuses_bad_sizes() {
        for n in [0, 1, 3, 48, 96] {
            assert!(Hadamard::new(n).is_err(), "{n}");
        }
        let h = Hadamard::new(32).unwrap();
        assert_eq!(h.n(), 32);
        assert!(matches!(
            h.apply(&mut [0.0; 48]),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(h.apply(&mut []).is_ok());
    }
}
