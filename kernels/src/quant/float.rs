//! F32, F16 and BF16 weights: one element per "block"; dots take f32
//! activations (F32 is also that activation type: quantizing is a copy).

use super::{ActivationBlock, DType, QuantBlock, WeightBlock};
use crate::dispatch::{ActivationRow, KernelTable, WeightRow};
use half::{bf16, f16};

impl QuantBlock for f32 {
    const DTYPE: DType = DType::F32;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row_f32(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row_f32(blocks, y)
    }
}

impl WeightBlock for f32 {
    type Act = f32;
    fn vec_dot_ref(w: &[Self], a: &[f32]) -> f32 {
        vec_dot_f32(w, a)
    }
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.f32
    }
}

impl ActivationBlock for f32 {
    fn activation_row(t: &KernelTable) -> &ActivationRow<Self> {
        &t.act_f32
    }
}

impl QuantBlock for f16 {
    const DTYPE: DType = DType::F16;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row_f16(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row_f16(blocks, y)
    }
}

impl WeightBlock for f16 {
    type Act = f32;
    fn vec_dot_ref(w: &[Self], a: &[f32]) -> f32 {
        vec_dot_f16(w, a)
    }
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.f16
    }
}

impl QuantBlock for bf16 {
    const DTYPE: DType = DType::BF16;
    fn quantize_ref(x: &[f32], out: &mut [Self]) {
        quantize_row_bf16(x, out)
    }
    fn dequantize_ref(blocks: &[Self], y: &mut [f32]) {
        dequantize_row_bf16(blocks, y)
    }
}

impl WeightBlock for bf16 {
    type Act = f32;
    fn vec_dot_ref(w: &[Self], a: &[f32]) -> f32 {
        vec_dot_bf16(w, a)
    }
    fn weight_row(t: &KernelTable) -> &WeightRow<Self> {
        &t.bf16
    }
}

pub fn quantize_row_f32(x: &[f32], out: &mut [f32]) {
    let n = x.len().min(out.len());
    out[..n].copy_from_slice(&x[..n]);
}
pub fn quantize_row_f16(x: &[f32], out: &mut [f16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f16::from_f32(v);
    }
}
pub fn quantize_row_bf16(x: &[f32], out: &mut [bf16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = bf16::from_f32(v);
    }
}
pub fn dequantize_row_f32(x: &[f32], out: &mut [f32]) {
    let n = x.len().min(out.len());
    out[..n].copy_from_slice(&x[..n]);
}
pub fn dequantize_row_f16(x: &[f16], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}
pub fn dequantize_row_bf16(x: &[bf16], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}

/// Dots accumulate in f64 here: the reference must be the accurate side of
/// every comparison with the SIMD kernels.
pub fn vec_dot_f32(w: &[f32], a: &[f32]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum::<f64>() as f32
}
pub fn vec_dot_f16(w: &[f16], a: &[f32]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(x, &y)| x.to_f64() * y as f64)
        .sum::<f64>() as f32
}
pub fn vec_dot_bf16(w: &[bf16], a: &[f32]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(x, &y)| x.to_f64() * y as f64)
        .sum::<f64>() as f32
}
/// `y += alpha * x` with f16 `x` (the V side of attention).
pub fn axpy_f16(alpha: f32, x: &[f16], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += alpha * v.to_f32();
    }
}

/// Attention scores of a block of `nk = k.len() / hd` keys for `q.len() /
/// hd` query heads: `out[g * nk + j] = k_j · q_g` (the reference of
/// [`crate::dispatch::AttnBlockKernels::scores`]).
pub fn attn_scores_f16(k: &[f16], hd: usize, q: &[f32], out: &mut [f32]) {
    if hd == 0 {
        return;
    }
    let nk = k.len() / hd;
    for (g, qg) in q.chunks_exact(hd).enumerate() {
        for (j, kj) in k.chunks_exact(hd).enumerate() {
            if let Some(o) = out.get_mut(g * nk + j) {
                *o = vec_dot_f16(kj, qg);
            }
        }
    }
}

/// `acc_g += sum_j p[g * nk + j] * v_j` over a block of `nk = v.len() / hd`
/// value rows for `acc.len() / hd` query heads (the reference of
/// [`crate::dispatch::AttnBlockKernels::accumulate`]).
pub fn attn_accumulate_f16(v: &[f16], hd: usize, p: &[f32], acc: &mut [f32]) {
    if hd == 0 {
        return;
    }
    let nk = v.len() / hd;
    for (g, ag) in acc.chunks_exact_mut(hd).enumerate() {
        for (j, vj) in v.chunks_exact(hd).enumerate() {
            if let Some(&e) = p.get(g * nk + j) {
                axpy_f16(e, vj, ag);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let w = [f16::from_f32(1.5), f16::from_f32(-2.0), f16::from_f32(0.25)];
        assert_eq!(vec_dot_f16(&w, &[2.0, 1.0, 4.0]), 2.0);
        let wb = [bf16::from_f32(1.5), bf16::from_f32(-2.0)];
        assert_eq!(vec_dot_bf16(&wb, &[2.0, 1.0]), 1.0);
        assert_eq!(vec_dot_f32(&[1.0, 2.0], &[3.0, 4.0]), 11.0);
        let mut y = [1.0f32, 1.0, 1.0];
        axpy_f16(2.0, &w, &mut y);
        assert_eq!(y, [4.0, -3.0, 1.5]);
    }
}
