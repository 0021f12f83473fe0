//! GGUF 4-bit blocks re-packed for `com.microsoft::MatMulNBits` (bits 4,
//! block 32), without going through floats.
//!
//! Both layouts are `[N = out rows][K / 32 blocks]`, so rows map one to one;
//! only the nibble order inside a block differs: ggml keeps element `j` in
//! the low nibble and `j + 16` in the high nibble of byte `j`, MatMulNBits
//! packs consecutive elements `2i` (low) and `2i + 1` (high) in byte `i`.
//!
//! * Q4_0 `x = d·(q − 8)` is exactly `scale = d`, zero point 8 (the default).
//! * Q4_1 `x = d·q + m` would need zero point `−m/d`, which is not an
//!   integer. MatMulNBits accepts float zero points, but ONNX Runtime's CPU
//!   EP then dequantizes the whole weight on every run (2 ms per matrix of
//!   SmolLM2, 87% of a decode step). So Q4_1 is split instead:
//!   `x = d·(q − 8) + (m + 8d)`, the first term a MatMulNBits with the
//!   default zero point (the packed fast path) and the second a per-block
//!   offset `c = m + 8d`, applied as `Σ_b c[n, b] · Σ_{k in b} a_k`: the
//!   activations summed per 32-block (`[.., K/32]`) times `cᵀ`
//!   (`[K/32, N]`, 1/32 of the weight's elements, in f32). Exact up to f32
//!   rounding, and `d = 0` needs no special case.
use half::f16;
use sotto_kernels::quant::DType;

/// MatMulNBits inputs for one weight `[N, K]`.
#[derive(Debug, Clone)]
pub struct NBitsWeight {
    /// `[N, K/32, 16]` packed uint4.
    pub packed: Vec<u8>,
    /// `[N · K/32]`
    pub scales: Vec<f32>,
    /// `[N, K/32]` per-block offsets added to `d·(q − 8)` (Q4_1), or none
    /// (Q4_0).
    pub block_offsets: Option<Vec<f32>>,
}

const QK: usize = 32;

fn repack_nibbles(qs: &[u8], out: &mut Vec<u8>, remap: impl Fn(u8) -> u8) {
    // ggml: byte j = q[j] | q[j+16] << 4. Unpack to 32 codes, repack pairwise.
    let mut codes = [0u8; QK];
    for j in 0..16 {
        codes[j] = remap(qs[j] & 0x0F);
        codes[j + 16] = remap(qs[j] >> 4);
    }
    for i in 0..16 {
        out.push(codes[2 * i] | (codes[2 * i + 1] << 4));
    }
}

/// Re-packs `rows × cols` weights stored as Q4_0 or Q4_1 blocks (row after
/// row, `row_order` selects and orders the rows). `None` for other dtypes.
pub fn repack(
    dtype: DType,
    data: &[u8],
    rows: usize,
    cols: usize,
    row_order: Option<&[usize]>,
) -> Option<NBitsWeight> {
    if !cols.is_multiple_of(QK) {
        return None;
    }
    let blocks = cols / QK;
    let block_bytes = match dtype {
        DType::Q4_0 => 18,
        DType::Q4_1 => 20,
        _ => return None,
    };
    if data.len() != rows * blocks * block_bytes {
        return None;
    }
    let identity: Vec<usize>;
    let order = match row_order {
        Some(o) => o,
        None => {
            identity = (0..rows).collect();
            &identity
        }
    };
    let mut packed = Vec::with_capacity(order.len() * blocks * 16);
    let mut scales = Vec::with_capacity(order.len() * blocks);
    let mut offsets = Vec::new();
    for &r in order {
        let row = data.get(r * blocks * block_bytes..(r + 1) * blocks * block_bytes)?;
        for b in row.chunks_exact(block_bytes) {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            match dtype {
                DType::Q4_0 => {
                    scales.push(d);
                    repack_nibbles(&b[2..18], &mut packed, |q| q);
                }
                _ => {
                    let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                    scales.push(d);
                    offsets.push(m + 8.0 * d);
                    repack_nibbles(&b[4..20], &mut packed, |q| q);
                }
            }
        }
    }
    Some(NBitsWeight {
        packed,
        scales,
        block_offsets: (dtype == DType::Q4_1).then_some(offsets),
    })
}

impl NBitsWeight {
    /// Dequantized `[N, K]` as MatMulNBits computes it.
    #[cfg(test)]
    fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.packed.len() * 2);
        for (bi, blk) in self.packed.chunks_exact(16).enumerate() {
            let c = self.block_offsets.as_ref().map_or(0.0, |o| o[bi]);
            let s = self.scales[bi];
            for byte in blk {
                out.push(s * ((byte & 0x0F) as f32 - 8.0) + c);
                out.push(s * ((byte >> 4) as f32 - 8.0) + c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn check(dtype: DType) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (rows, cols) = (3, 64);
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let rb = dtype.row_bytes(cols).unwrap();
        let mut buf = sotto_kernels::quant::aligned_bytes(rows * rb);
        let data = buf.as_bytes_mut();
        for r in 0..rows {
            sotto_kernels::quant::quantize_row(
                dtype,
                &x[r * cols..(r + 1) * cols],
                &mut data[r * rb..(r + 1) * rb],
            )
            .unwrap();
        }
        let mut reference = vec![0f32; rows * cols];
        for r in 0..rows {
            sotto_kernels::quant::dequantize_row(
                dtype,
                &data[r * rb..(r + 1) * rb],
                &mut reference[r * cols..(r + 1) * cols],
            )
            .unwrap();
        }
        let order = [2usize, 0, 1];
        let w = repack(dtype, data, rows, cols, Some(&order)).unwrap();
        let got = w.dequantize();
        for (i, &r) in order.iter().enumerate() {
            for c in 0..cols {
                let (a, b) = (got[i * cols + c], reference[r * cols + c]);
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{dtype:?} row {r} col {c}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn repacked_q4_blocks_dequantize_to_the_ggml_values() {
        check(DType::Q4_0);
        check(DType::Q4_1);
    }
}
