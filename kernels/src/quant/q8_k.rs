//! Q8_K: 256 activations per block with an f32 scale and per-16 sums, the
//! activation type of the k-quants.

use super::blocks::{BlockQ8K, QK_K};
use super::nearest_int;

/// ggml `quantize_row_q8_K_ref`: the value of largest magnitude maps to
/// -127, codes rounded half to even, `d = 1 / iscale`.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let max = super::signed_absmax(xb);
        if max == 0.0 {
            b.d = 0.0;
            b.qs = [0; QK_K];
            b.bsums = [0; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

pub fn dequantize_row(blocks: &[BlockQ8K], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (o, &q) in yb.iter_mut().zip(&b.qs) {
            *o = q as f32 * b.d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut x = [0.5f32; 256];
        x[7] = 2.0;
        let mut b = [bytemuck::Zeroable::zeroed()];
        quantize_row(&x, &mut b);
        let b: BlockQ8K = b[0];
        assert_eq!(b.qs[7], -127);
        // 0.5 * -63.5 = -31.75 -> -32
        assert_eq!(b.qs[0], -32);
        assert_eq!(b.d, 1.0 / (-127.0 / 2.0));
        assert_eq!(b.bsums[0], -127 - 15 * 32);
        assert_eq!(b.bsums[1], -16 * 32);
    }
}
