//! Rotary position embeddings with precomputed cos/sin, as ggml's rope for
//! modes 0 (interleaved pairs) and 2 (NeoX halves), with linear position
//! scaling and optional per-dimension frequency factors (Llama 3.1's
//! `rope_freqs`), or from inverse frequencies the caller computed, with
//! ggml's `attn_factor` on the magnitudes.

use crate::{Error, Result};

/// Which elements of a head form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// ggml mode 0: pairs `(x[2i], x[2i+1])`, used by llama GGUFs.
    Interleaved,
    /// ggml mode 2 (GPT-NeoX): pairs `(x[i], x[i + n_rot/2])`.
    NeoX,
}

/// cos/sin of `theta_i(pos) = pos * freq_scale * base^(-2i/n_rot) / factor_i`
/// for positions `0..max_pos` and pairs `0..n_rot/2`.
#[derive(Clone, Debug)]
pub struct RopeCache {
    n_rot: usize,
    max_pos: usize,
    /// [max_pos, n_rot/2] interleaved (cos, sin)
    cos_sin: Vec<(f32, f32)>,
}

impl RopeCache {
    /// The table for `n_rot` rotated dimensions (even) and positions
    /// `0..max_pos`, without per-pair frequency factors;
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an odd or
    /// zero `n_rot`, a non-positive `theta_base` or a non-finite `freq_scale`.
    pub fn new(n_rot: usize, theta_base: f32, freq_scale: f32, max_pos: usize) -> Result<Self> {
        Self::with_freq_factors(n_rot, theta_base, freq_scale, max_pos, None)
    }

    /// `factors` (n_rot/2 values) divide each pair's angle, as ggml's
    /// `freq_factors` input does.
    pub fn with_freq_factors(
        n_rot: usize,
        theta_base: f32,
        freq_scale: f32,
        max_pos: usize,
        factors: Option<&[f32]>,
    ) -> Result<Self> {
        const OP: &str = "RopeCache::new";
        if n_rot == 0 || !n_rot.is_multiple_of(2) {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("n_rot {n_rot} must be even and > 0"),
            });
        }
        if theta_base.is_nan() || theta_base <= 0.0 || !freq_scale.is_finite() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("theta_base {theta_base} / freq_scale {freq_scale} out of range"),
            });
        }
        let half = n_rot / 2;
        if let Some(f) = factors {
            if f.len() != half {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    expected: half,
                    got: f.len(),
                });
            }
        }
        let len = max_pos
            .checked_mul(half)
            .ok_or(Error::SizeOverflow { op: OP })?;
        // angle per position of each pair
        let steps: Vec<f64> = (0..half)
            .map(|i| {
                let f = (theta_base as f64).powf(-2.0 * i as f64 / n_rot as f64);
                freq_scale as f64 * f / factors.map_or(1.0, |fs| fs[i] as f64)
            })
            .collect();
        Ok(Self {
            n_rot,
            max_pos,
            cos_sin: cos_sin_table(&steps, max_pos, len, 1.0),
        })
    }

    /// The table of precomputed inverse frequencies (one per rotated pair,
    /// scaling and frequency factors already applied by the caller), with
    /// cos and sin multiplied by `attn_factor` (ggml's rope `attn_factor`,
    /// the magnitude Phi-3's long-context scaling gives rotated dims).
    pub fn from_inv_freqs(inv_freqs: &[f64], max_pos: usize, attn_factor: f32) -> Result<Self> {
        const OP: &str = "RopeCache::from_inv_freqs";
        if inv_freqs.is_empty() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: "no rotated pair".into(),
            });
        }
        if let Some(f) = inv_freqs.iter().find(|f| !f.is_finite() || **f < 0.0) {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("inverse frequency {f} out of range"),
            });
        }
        if !(attn_factor.is_finite() && attn_factor > 0.0) {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("attn_factor {attn_factor} out of range"),
            });
        }
        let len = max_pos
            .checked_mul(inv_freqs.len())
            .ok_or(Error::SizeOverflow { op: OP })?;
        Ok(Self {
            n_rot: 2 * inv_freqs.len(),
            max_pos,
            cos_sin: cos_sin_table(inv_freqs, max_pos, len, attn_factor as f64),
        })
    }

    /// Rotated dimensions per head.
    pub fn n_rot(&self) -> usize {
        self.n_rot
    }

    /// Positions covered (`0..max_pos`).
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    /// The table of the opposite rotations (`-pos` for every `pos`):
    /// rotations compose, so keys rotated for position `p` and then by
    /// this table at `d` are the keys of position `p - d` (llama.cpp's
    /// context shift moves cached keys this way instead of recomputing
    /// them). Only exact for a table of magnitude 1 (`attn_factor` 1).
    pub fn inverse(&self) -> RopeCache {
        RopeCache {
            n_rot: self.n_rot,
            max_pos: self.max_pos,
            cos_sin: self.cos_sin.iter().map(|&(c, s)| (c, -s)).collect(),
        }
    }

    /// Rotate the first `n_rot` dims of each of the `n_heads` heads of `x`
    /// (`[n_heads, head_dim]`) for position `pos`.
    pub fn apply(
        &self,
        x: &mut [f32],
        n_heads: usize,
        head_dim: usize,
        pos: usize,
        style: RopeStyle,
    ) -> Result<()> {
        const OP: &str = "RopeCache::apply";
        let expected = n_heads
            .checked_mul(head_dim)
            .ok_or(Error::SizeOverflow { op: OP })?;
        if x.len() != expected {
            return Err(Error::ShapeMismatch {
                op: OP,
                expected,
                got: x.len(),
            });
        }
        if self.n_rot > head_dim {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("n_rot {} > head_dim {head_dim}", self.n_rot),
            });
        }
        if pos >= self.max_pos {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("position {pos} >= cache size {}", self.max_pos),
            });
        }
        let half = self.n_rot / 2;
        let cs = &self.cos_sin[pos * half..(pos + 1) * half];
        let turn = |x0: &mut f32, x1: &mut f32, (c, s): (f32, f32)| {
            let (a, b) = (*x0, *x1);
            *x0 = a * c - b * s;
            *x1 = a * s + b * c;
        };
        // The style is matched once, and each loop walks whole slices, so
        // it runs without bounds checks (and vectorizes for NeoX).
        for head in x.chunks_exact_mut(head_dim) {
            match style {
                RopeStyle::Interleaved => {
                    for (pair, &cs) in head[..2 * half].chunks_exact_mut(2).zip(cs) {
                        if let [x0, x1] = pair {
                            turn(x0, x1, cs);
                        }
                    }
                }
                RopeStyle::NeoX => {
                    let (lo, hi) = head[..2 * half].split_at_mut(half);
                    for ((x0, x1), &cs) in lo.iter_mut().zip(hi).zip(cs) {
                        turn(x0, x1, cs);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Positions between two whose angles are computed directly.
const ANCHOR_EVERY: usize = 32;

/// `m * (cos, sin)` of `pos * w` for positions `0..max_pos` and each angle
/// step `w` of `steps`, `[max_pos, steps.len()]` (`len` values). The angle
/// of every [`ANCHOR_EVERY`]th position is taken by `sin_cos` directly and
/// the positions after it by rotating it by `w` (angle addition in f64:
/// after 31 steps an error near 1e-15, a ten-millionth of an f32 rounding
/// step, so the f32 values are those of `sin_cos` at every position but
/// for a vanishing chance of a last-bit tie). A model's tables (8,192
/// positions of 32 pairs for the default model) then cost a fraction of a
/// millisecond at load instead of about 5 ms of `sin_cos`.
fn cos_sin_table(steps: &[f64], max_pos: usize, len: usize, m: f64) -> Vec<(f32, f32)> {
    let half = steps.len();
    let mut out = vec![(0f32, 0f32); len];
    let mut rot = vec![(0f64, 0f64); half];
    for (r, &w) in rot.iter_mut().zip(steps) {
        *r = w.sin_cos();
    }
    let mut cur = vec![(0f64, 0f64); half];
    for (pos, row) in out.chunks_exact_mut(half.max(1)).enumerate().take(max_pos) {
        for ((c, &w), &(sw, cw)) in cur.iter_mut().zip(steps).zip(&rot) {
            *c = if pos.is_multiple_of(ANCHOR_EVERY) {
                (pos as f64 * w).sin_cos()
            } else {
                let (s, co) = *c;
                (s * cw + co * sw, co * cw - s * sw)
            };
        }
        for (o, &(s, c)) in row.iter_mut().zip(&cur) {
            *o = ((c * m) as f32, (s * m) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data::random_row;

    fn direct(
        x: &[f32],
        head_dim: usize,
        n_rot: usize,
        base: f32,
        scale: f32,
        pos: usize,
        style: RopeStyle,
    ) -> Vec<f32> {
        let mut y = x.to_vec();
        for (h, yh) in y.chunks_exact_mut(head_dim).enumerate() {
            let xh = &x[h * head_dim..(h + 1) * head_dim];
            for i in 0..n_rot / 2 {
                let theta = pos as f64
                    * scale as f64
                    * (base as f64).powf(-((2 * i) as f64) / n_rot as f64);
                let (a, b) = match style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::NeoX => (i, i + n_rot / 2),
                };
                let (x0, x1) = (xh[a] as f64, xh[b] as f64);
                yh[a] = (x0 * theta.cos() - x1 * theta.sin()) as f32;
                yh[b] = (x0 * theta.sin() + x1 * theta.cos()) as f32;
            }
        }
        y
    }

    #[test]
    fn matches_direct_formula_and_preserves_norms() {
        for style in [RopeStyle::Interleaved, RopeStyle::NeoX] {
            for (n_rot, scale) in [(64, 1.0), (32, 0.25)] {
                let cache = RopeCache::new(n_rot, 10000.0, scale, 300).unwrap();
                for pos in [0, 1, 17, 299] {
                    let x = random_row(3 * 64, pos as u64);
                    let mut y = x.clone();
                    cache.apply(&mut y, 3, 64, pos, style).unwrap();
                    let want = direct(&x, 64, n_rot, 10000.0, scale, pos, style);
                    for (a, b) in y.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-4, "{style:?} pos {pos}: {a} vs {b}");
                    }
                    for (xh, yh) in x.chunks(64).zip(y.chunks(64)) {
                        let n0: f32 = xh.iter().map(|v| v * v).sum();
                        let n1: f32 = yh.iter().map(|v| v * v).sum();
                        assert!((n0 - n1).abs() < 1e-3 * n0);
                        // dims past n_rot are untouched
                        assert_eq!(xh[n_rot..], yh[n_rot..]);
                    }
                }
            }
        }
    }

    #[test]
    fn inverse_composes_to_the_earlier_position() {
        for style in [RopeStyle::Interleaved, RopeStyle::NeoX] {
            // 48 of 64 dims rotated: the rest must stay as they are.
            let cache = RopeCache::new(48, 10000.0, 1.0, 300).unwrap();
            let x = random_row(2 * 64, 7);
            let mut shifted = x.clone();
            cache.apply(&mut shifted, 2, 64, 250, style).unwrap();
            cache
                .inverse()
                .apply(&mut shifted, 2, 64, 90, style)
                .unwrap();
            let mut direct = x.clone();
            cache.apply(&mut direct, 2, 64, 160, style).unwrap();
            for (a, b) in shifted.iter().zip(&direct) {
                assert!((a - b).abs() < 1e-5, "{style:?}: {a} vs {b}");
            }
            let mut back = x.clone();
            cache.apply(&mut back, 2, 64, 17, style).unwrap();
            cache.inverse().apply(&mut back, 2, 64, 17, style).unwrap();
            for (a, b) in back.iter().zip(&x) {
                assert!((a - b).abs() < 1e-5, "{style:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn freq_factors_divide_angles() {
        let f = [1.0f32, 2.0, 4.0, 8.0];
        let c = RopeCache::with_freq_factors(8, 100.0, 1.0, 10, Some(&f)).unwrap();
        let mut x = vec![1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        c.apply(&mut x, 1, 8, 3, RopeStyle::Interleaved).unwrap();
        let theta = 3.0 * 100f64.powf(-2.0 / 8.0) / 2.0;
        assert!((x[2] as f64 - theta.cos()).abs() < 1e-6);
        assert!((x[3] as f64 - theta.sin()).abs() < 1e-6);
    }

    #[test]
    fn tables_are_sin_cos_at_every_position() {
        // The default model's rope (64 dims, base 10000) over its context,
        // and a scaled one with small angles.
        for (base, scale, n_rot, max_pos) in
            [(10000.0f32, 1.0f32, 64, 8192), (500000.0, 0.125, 128, 3000)]
        {
            let t = RopeCache::new(n_rot, base, scale, max_pos).unwrap();
            let half = n_rot / 2;
            let mut off_by_one = 0;
            for pos in 0..max_pos {
                for i in 0..half {
                    let w = scale as f64 * (base as f64).powf(-2.0 * i as f64 / n_rot as f64);
                    let (s, c) = (pos as f64 * w).sin_cos();
                    let (tc, ts) = t.cos_sin[pos * half + i];
                    for (got, want) in [(tc, c as f32), (ts, s as f32)] {
                        if got != want {
                            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                            assert_eq!(ulps, 1, "pos {pos} pair {i}: {got} vs {want}");
                            off_by_one += 1;
                        }
                    }
                }
            }
            assert!(off_by_one <= 4, "{off_by_one} values a last bit off");
        }
    }

    #[test]
    fn from_inv_freqs_matches_the_base_form_and_scales_magnitudes() {
        let inv: Vec<f64> = (0..4)
            .map(|i| 100f64.powf(-2.0 * i as f64 / 8.0) * 0.5)
            .collect();
        let a = RopeCache::from_inv_freqs(&inv, 10, 1.0).unwrap();
        let b = RopeCache::new(8, 100.0, 0.5, 10).unwrap();
        assert_eq!(a.n_rot(), 8);
        let x = random_row(16, 3);
        let (mut ya, mut yb) = (x.clone(), x.clone());
        a.apply(&mut ya, 2, 8, 7, RopeStyle::NeoX).unwrap();
        b.apply(&mut yb, 2, 8, 7, RopeStyle::NeoX).unwrap();
        for (p, q) in ya.iter().zip(&yb) {
            assert!((p - q).abs() < 1e-6, "{p} vs {q}");
        }
        let scaled = RopeCache::from_inv_freqs(&inv, 10, 1.5).unwrap();
        let mut ys = x.clone();
        scaled.apply(&mut ys, 2, 8, 7, RopeStyle::NeoX).unwrap();
        for (p, q) in ys.iter().zip(&ya) {
            assert!((p - 1.5 * q).abs() < 1e-5, "{p} vs 1.5 * {q}");
        }
        assert!(RopeCache::from_inv_freqs(&[], 4, 1.0).is_err());
        assert!(RopeCache::from_inv_freqs(&[f64::NAN], 4, 1.0).is_err());
        assert!(RopeCache::from_inv_freqs(&[1.0], 4, 0.0).is_err());
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(RopeCache::new(7, 10000.0, 1.0, 4).is_err());
        assert!(RopeCache::with_freq_factors(8, 1e4, 1.0, 4, Some(&[1.0; 3])).is_err());
        let c = RopeCache::new(8, 10000.0, 1.0, 4).unwrap();
        assert!(c.apply(&mut [0.0; 16], 2, 8, 4, RopeStyle::NeoX).is_err());
        assert!(c.apply(&mut [0.0; 15], 2, 8, 0, RopeStyle::NeoX).is_err());
        assert!(c.apply(&mut [0.0; 12], 2, 6, 0, RopeStyle::NeoX).is_err());
    }
}
