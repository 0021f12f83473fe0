//! LoRA adapters applied at run time by the CPU backend: after a projection
//! `y = W·x`, each attached adapter adds `s·B·(A·x)` in f32, so the base
//! weights (mapped or repacked) are shared by every conversation and an
//! adapter costs only its own low-rank matrices. Attaching checks that each
//! pair fits this model's matrices: an adapter bound to another model is a
//! typed error, never a wrong-sized read.

use std::sync::Arc;

use sotto_models::lora::{LoraAdapter, LoraTarget};
use sotto_models::{DecoderWeights, Error as ModelError};

use crate::error::Result;
use rayon::prelude::*;

/// The adapters one backend applies, in order (usually zero or one).
pub(super) type Adapters = Arc<[Arc<LoraAdapter>]>;

/// Fails unless every pair of `adapters` updates a matrix of `weights`
/// with its exact shape.
pub(super) fn check_fits(weights: &DecoderWeights, adapters: &[Arc<LoraAdapter>]) -> Result<()> {
    for adapter in adapters {
        for p in &adapter.pairs {
            let mismatch = |reason: String| ModelError::LoraBaseMismatch {
                path: adapter.path.clone(),
                tensor: format!("blk.{}.{}.weight", p.layer, p.target.gguf_name()),
                reason,
            };
            let layer = weights.layers.get(p.layer).ok_or_else(|| {
                mismatch(format!("the model has {} blocks", weights.layers.len()))
            })?;
            let shape = p.target.linear(layer).weight.shape;
            if shape != [p.rows, p.cols]
                || p.a.shape != [p.rank, p.cols]
                || p.b.shape != [p.rows, p.rank]
            {
                return Err(mismatch(format!(
                    "the update is [{}, {}] of rank {}, the matrix is {shape:?}",
                    p.rows, p.cols, p.rank
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// `out += s·B·(A·x)` for every attached adapter that updates `target` of
/// block `layer`; `x` is `[n, in]`, `out` `[n, out]`. The tokens are split
/// between the pool's threads; rank r costs about 2·r·(in + out) flops per
/// token beside the base's 2·in·out.
pub(super) fn add_updates(
    adapters: &[Arc<LoraAdapter>],
    layer: usize,
    target: LoraTarget,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    for adapter in adapters {
        if let Some(p) = adapter.pair(layer, target) {
            // A decode step's few thousand flops cost less than waking the pool.
            if n < 4 {
                p.add_to(x, n, out)?;
                continue;
            }
            let per = n.div_ceil(rayon::current_num_threads()).max(1);
            out.par_chunks_mut(per * p.rows)
                .zip(x.par_chunks(per * p.cols))
                .try_for_each(|(o, xs)| p.add_to(xs, xs.len() / p.cols, o))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::CpuBackend;
    use crate::backend::{Backend, LogitsFor};
    use sotto_models::gguf::GgufFile;
    use sotto_models::lora::LoraAdapter;
    use sotto_models::testutil::{tiny_lora_adapter, tiny_model_random, TinyDims};
    use sotto_models::Model;
    use std::sync::Arc;

    const TOKENS: [u32; 5] = [3, 1, 4, 1, 5];

    fn model(dims: TinyDims, seed: u64) -> Arc<Model> {
        let bytes = tiny_model_random("llama", dims, seed).to_bytes();
        Arc::new(Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap())
    }

    fn adapter(model: &Model, seed: u64, tag: &str) -> LoraAdapter {
        let path = std::env::temp_dir().join(format!(
            "sotto-cpu-lora-{tag}-{seed}-{}.gguf",
            std::process::id()
        ));
        let dims = TinyDims::default();
        std::fs::write(&path, tiny_lora_adapter("llama", dims, seed).to_bytes()).unwrap();
        let a = LoraAdapter::load(&path, model, 1.0).unwrap();
        std::fs::remove_file(&path).unwrap();
        a
    }

    /// Prefill then one decode step.
    fn logits(b: &mut CpuBackend) -> Vec<f32> {
        let mut cache = b.new_cache(16).unwrap();
        let mut l = b.forward(&mut cache, &TOKENS, LogitsFor::All).unwrap();
        l.extend(b.forward(&mut cache, &[7], LogitsFor::Last).unwrap());
        l
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// Unmerged at run time equals merged at load; two backends with
    /// different adapters and one without share one set of weights and do
    /// not disturb each other.
    #[test]
    fn unmerged_adapters_equal_merged_ones_and_stay_per_backend() {
        let base = model(TinyDims::default(), 3);
        let (a1, a2) = (adapter(&base, 1, "a"), adapter(&base, 2, "b"));
        let merged = Arc::new(LoraAdapter::merge(&base, std::slice::from_ref(&a1)).unwrap());
        let plain = CpuBackend::new(base.clone(), 1).unwrap();
        let mut with1 = plain.with_adapters(vec![Arc::new(a1)]).unwrap();
        let mut with2 = plain.with_adapters(vec![Arc::new(a2)]).unwrap();
        let mut plain = plain;
        let reference = logits(&mut CpuBackend::new(merged, 1).unwrap());
        let (l1, l2, l0) = (logits(&mut with1), logits(&mut with2), logits(&mut plain));
        let scale = l0.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max_diff(&reference, &l1) < 1e-4 * scale.max(1.0));
        assert!(max_diff(&l0, &l1) > 1e-3, "adapter 1 had no effect");
        assert!(max_diff(&l1, &l2) > 1e-3, "the adapters are the same");
        // the same runs again, in another order: nothing leaked between them
        assert_eq!(logits(&mut plain), l0);
        assert_eq!(logits(&mut with2), l2);
        assert_eq!(logits(&mut with1), l1);
        assert!(Arc::ptr_eq(with1.model(), plain.model()));
        assert!(with1.describe().contains("1 LoRA adapter"));
    }

    /// An adapter bound to another model cannot be attached.
    #[test]
    fn an_adapter_of_another_model_is_refused_at_attach() {
        let dims = TinyDims::default();
        let base = model(dims, 3);
        let other = model(TinyDims { n_layer: 1, ..dims }, 4);
        let err = CpuBackend::new(other, 1)
            .unwrap()
            .with_adapters(vec![Arc::new(adapter(&base, 1, "c"))])
            .unwrap_err();
        assert!(
            matches!(
                err,
                crate::Error::Model(sotto_models::Error::LoraBaseMismatch { .. })
            ),
            "{err}"
        );
    }
}
