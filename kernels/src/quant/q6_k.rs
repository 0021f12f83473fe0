//! Q6_K: 256 weights as 6-bit codes (low 4 bits in `ql`, high 2 in `qh`)
//! around 32, 16 sub-blocks of 16 with signed 8-bit scales:
//! `w = d * sc[e / 16] * (q - 32)`. Pairs with Q8_K activations.

use super::blocks::QK_K;
use super::q8_k::BlockQ8K;
use super::x16::X16Field;
use super::{nearest_int, DType, QuantBlock, WeightBlock};
use crate::dispatch::{KernelTable, WeightRow};
use bytemuck::{Pod, Zeroable};
use half::f16;

/// 256 weights as 6-bit codes in 16 sub-blocks with 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

impl QuantBlock for BlockQ6K {
    const DTYPE: DType = DType::Q6_K;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row(blocks, y)
    }
}

impl WeightBlock for BlockQ6K {
    type Act = BlockQ8K;
    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        vec_dot(w, a)
    }
    /// Scale first as in the other types (the block keeps it last): the
    /// `d` plane, the 16 sub-block scales as 4 lines (line `m`: scales
    /// `4m..4m + 4`), then the codes in the order the kernels read them:
    /// 16 steps of three lines, step `8n + i` (half `n`, word `i`) being
    /// `qh` line `8n + i` and `ql` lines `16n + i` and `16n + 8 + i`
    /// ([`x16_step`]).
    ///
    /// Field by field (16 `qh` lines, then 32 `ql` lines), a record is read
    /// in three interleaved runs, which the hardware prefetcher follows
    /// poorly: decode of a DRAM-sized Q6_K matrix on the EPYC host read
    /// 8 GiB/s with no software prefetches, 21 with them; in this order
    /// 28 with none (1 thread; a plain read: 31).
    const X16_FIELDS: &'static [X16Field] = &X16_ORDER;
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.q6_k
    }
}

/// The x16 fields of [`BlockQ6K`]: `d`, the scales, then each code step's
/// `qh` line and two `ql` lines.
const X16_ORDER: [X16Field; 2 + 3 * 16] = {
    let mut f = [X16Field::f16(208); 2 + 3 * 16];
    f[1] = X16Field::codes(192, QK_K / 16);
    let mut step = 0;
    while step < 16 {
        let (n, i) = (step / 8, step % 8);
        f[2 + 3 * step] = X16Field::codes(128 + 4 * (8 * n + i), 4);
        f[3 + 3 * step] = X16Field::codes(4 * (16 * n + i), 4);
        f[4 + 3 * step] = X16Field::codes(4 * (16 * n + 8 + i), 4);
        step += 1;
    }
    f
};

/// Where code step `8n + i` (half `n < 2`, word `i < 8`) starts in an x16
/// record of [`BlockQ6K`]: its `qh` line `8n + i` there, `ql` line
/// `16n + i` 64 bytes on and `ql` line `16n + 8 + i` 128 bytes on.
pub const fn x16_step(n: usize, i: usize) -> usize {
    32 + 4 * 64 + 3 * 64 * (8 * n + i)
}

/// The signed code (-32..32) of every element of a block, in element order.
/// Element `128n + 32k + l` (k in 0..4) lives in `ql[64n + 32(k%2) + l]`
/// (low nibble for k < 2, high for k >= 2) and bits 2k..2k+2 of
/// `qh[32n + l]`.
pub fn codes(b: &BlockQ6K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for n in 0..2 {
        for l in 0..32 {
            let (ql0, ql1, qh) = (b.ql[64 * n + l], b.ql[64 * n + 32 + l], b.qh[32 * n + l]);
            q[128 * n + l] = ((ql0 & 0xF) | ((qh & 3) << 4)) as i8 - 32;
            q[128 * n + 32 + l] = ((ql1 & 0xF) | (((qh >> 2) & 3) << 4)) as i8 - 32;
            q[128 * n + 64 + l] = ((ql0 >> 4) | (((qh >> 4) & 3) << 4)) as i8 - 32;
            q[128 * n + 96 + l] = ((ql1 >> 4) | (((qh >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

/// Per-16 scales (the largest magnitude maps to -32), quantized to i8
/// against the block's largest scale as ggml does; codes then fit the
/// quantized scales. Simpler than ggml's `make_qx_quants` search.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ6K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut scales = [0f32; 16];
        for (s, xs) in scales.iter_mut().zip(xb.chunks_exact(16)) {
            *s = super::signed_absmax(xs) / -32.0;
        }
        let max_scale = super::signed_absmax(&scales);
        let mut codes = [32u8; QK_K];
        if max_scale == 0.0 {
            b.d = f16::ZERO;
            b.scales = [0; 16];
        } else {
            let iscale = -128.0 / max_scale;
            b.d = f16::from_f32(1.0 / iscale);
            for (j, xs) in xb.chunks_exact(16).enumerate() {
                b.scales[j] = nearest_int(iscale * scales[j]).min(127) as i8;
                let dj = b.d.to_f32() * b.scales[j] as f32;
                if dj == 0.0 {
                    continue;
                }
                for (l, &v) in xs.iter().enumerate() {
                    codes[16 * j + l] = (nearest_int(v / dj).clamp(-32, 31) + 32) as u8;
                }
            }
        }
        for n in 0..2 {
            for l in 0..32 {
                let c = |k: usize| codes[128 * n + 32 * k + l];
                b.ql[64 * n + l] = (c(0) & 0xF) | ((c(2) & 0xF) << 4);
                b.ql[64 * n + 32 + l] = (c(1) & 0xF) | ((c(3) & 0xF) << 4);
                b.qh[32 * n + l] =
                    (c(0) >> 4) | ((c(1) >> 4) << 2) | ((c(2) >> 4) << 4) | ((c(3) >> 4) << 6);
            }
        }
    }
}

pub fn dequantize_row(blocks: &[BlockQ6K], y: &mut [f32]) {
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (e, (o, q)) in yb.iter_mut().zip(codes(b)).enumerate() {
            *o = d * b.scales[e / 16] as f32 * q as f32;
        }
    }
}

pub fn vec_dot(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in w.iter().zip(a) {
        let q = codes(x);
        let mut sumi = 0i32;
        for j in 0..16 {
            let isum: i32 = (16 * j..16 * j + 16)
                .map(|e| q[e] as i32 * y.qs[e] as i32)
                .sum();
            sumi += x.scales[j] as i32 * isum;
        }
        sum += x.d.to_f32() * y.d * sumi as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [1; 16],
            d: f16::from_f32(0.5),
        };
        // element 128 + 64 + 3: high nibble of ql[64 + 3], bits 4..6 of qh[32 + 3]
        b.ql[67] = 0x50;
        b.qh[35] = 0b0010_0000;
        b.scales[12] = -2;
        let q = codes(&b);
        assert_eq!(q[195], (5 | (2 << 4)) - 32);
        assert_eq!(q[0], -32);
        let mut y = [0f32; 256];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[195], 0.5 * -2.0 * 5.0);
        assert_eq!(y[0], 0.5 * -32.0);
    }
}
