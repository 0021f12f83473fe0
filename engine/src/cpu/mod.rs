//! The CPU backend: the generic decoder executed with sotto-kernels.
//!
//! One forward pass, per layer (n = tokens in this pass, D = d_model):
//!   x [n, D] → RMSNorm → Q [n, H*hd], K/V [n, Hkv*hd] → (QK-norm) → RoPE
//!   → KV cache → causal attention [n, H*hd] → Wo → (post-norm) → + x
//!   → RMSNorm → gate/up [n, F] → act(gate)*up → down [n, D] → (post-norm) → + x
//! then the final norm and the output projection for the rows asked for.
//! Weights stay in the memory-mapped file, except where the kernel table
//! reads a load-time layout faster ([`PackedMatrix`], the x16 panels of the
//! AVX-512 tiers): those matrices are repacked once at load and the file's
//! bytes are no longer read for them. Norm vectors are copied as f32 (tiny).

use crate::backend::{Backend, LogitsFor};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use sotto_kernels::ops::{self, AttentionParams, PackedMatrix, QMatrix, RopeCache};
use sotto_models::spec::{Activation, DecoderSpec};
use sotto_models::weights::{DecoderWeights, Weight};
use sotto_models::Model;
use std::sync::Arc;

/// Tokens per prefill pass: bounds scratch memory and keeps weight tiles hot.
const PREFILL_CHUNK: usize = 256;

struct LayerNorms {
    attn: Vec<f32>,
    ffn: Vec<f32>,
    q: Option<Vec<f32>>,
    k: Option<Vec<f32>>,
    post_attn: Option<Vec<f32>>,
    post_ffn: Option<Vec<f32>>,
}

/// The matrices of one layer repacked for the kernel table (`None`: used
/// in the file's layout).
struct LayerPacked {
    q: Option<PackedMatrix>,
    k: Option<PackedMatrix>,
    v: Option<PackedMatrix>,
    o: Option<PackedMatrix>,
    gate: Option<PackedMatrix>,
    up: Option<PackedMatrix>,
    down: Option<PackedMatrix>,
}

/// Cloning is cheap and shares everything prepared at load (norm vectors,
/// rope tables, the thread pool): one clone per conversation costs only its
/// KV cache.
#[derive(Clone)]
pub struct CpuBackend {
    model: Arc<Model>,
    norms: Arc<[LayerNorms]>,
    packed: Arc<[LayerPacked]>,
    output_packed: Option<Arc<PackedMatrix>>,
    /// Bytes of the repacked copies.
    packed_bytes: usize,
    output_norm: Arc<[f32]>,
    rope: Arc<RopeCache>,
    rope_local: Option<Arc<RopeCache>>,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("arch", &self.model.spec.arch)
            .field("threads", &self.threads)
            .finish()
    }
}

fn norm_vec(w: &Weight) -> Result<Vec<f32>> {
    Ok(w.to_f32()?)
}

fn qmat(w: &Weight) -> Result<QMatrix<'_>> {
    Ok(QMatrix::new(w.dtype, w.shape[0], w.shape[1], w.data())?)
}

/// `w` repacked for the process's kernel table, if that table wants it;
/// the file's pages of a packed matrix then leave the resident set (the
/// tied embedding reads a few rows of them back per token).
fn pack(w: &Weight) -> Result<Option<PackedMatrix>> {
    let table = sotto_kernels::dispatch::try_table()?;
    let packed = PackedMatrix::pack_for(table, &qmat(w)?)?;
    if packed.is_some() {
        w.release_pages();
    }
    Ok(packed)
}

/// `out = w · x` over `n` tokens, on the packed copy when there is one.
fn matmul(
    packed: Option<&PackedMatrix>,
    w: &Weight,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    match packed {
        Some(p) => ops::matmul_packed(p, x, n, out)?,
        None => ops::matmul(&qmat(w)?, x, n, out)?,
    }
    Ok(())
}

impl CpuBackend {
    /// `threads` = 0 uses every core.
    pub fn new(model: Arc<Model>, threads: usize) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sotto-cpu-{i}"))
            .build()
            .map_err(|e| Error::ThreadPool {
                threads,
                reason: e.to_string(),
            })?;
        let w = &model.weights;
        let norms = w
            .layers
            .iter()
            .map(|l| {
                Ok(LayerNorms {
                    attn: norm_vec(&l.attn_norm)?,
                    ffn: norm_vec(&l.ffn_norm)?,
                    q: l.attn_q_norm.as_ref().map(norm_vec).transpose()?,
                    k: l.attn_k_norm.as_ref().map(norm_vec).transpose()?,
                    post_attn: l.post_attention_norm.as_ref().map(norm_vec).transpose()?,
                    post_ffn: l.post_ffw_norm.as_ref().map(norm_vec).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output_norm = norm_vec(&w.output_norm)?;
        // Repacking reads every matrix once; the pool packs panels in parallel.
        let (packed, output_packed) = pool.install(|| -> Result<_> {
            let layers = w
                .layers
                .iter()
                .map(|l| {
                    Ok(LayerPacked {
                        q: pack(&l.attn_q)?,
                        k: pack(&l.attn_k)?,
                        v: pack(&l.attn_v)?,
                        o: pack(&l.attn_output)?,
                        gate: pack(&l.ffn_gate)?,
                        up: pack(&l.ffn_up)?,
                        down: pack(&l.ffn_down)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((layers, pack(&w.output)?.map(Arc::new)))
        })?;
        let packed_bytes = packed
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .flatten()
            .chain(output_packed.as_deref())
            .map(|p| p.bytes().len())
            .sum();
        let s = &model.spec;
        // Llama 3.x files carry per-pair divisors of the global frequencies
        // (`rope_freqs`); the loader has checked their length.
        let freq_factors = w.rope_freqs.as_ref().map(Weight::to_f32).transpose()?;
        let rope = RopeCache::with_freq_factors(
            s.rope.n_rot,
            s.rope.theta,
            s.rope.freq_scale(),
            s.context_length,
            freq_factors.as_deref(),
        )?;
        let rope_local = match s.rope.local_theta {
            Some(t) => Some(Arc::new(RopeCache::new(
                s.rope.n_rot,
                t,
                1.0,
                s.context_length,
            )?)),
            None => None,
        };
        Ok(Self {
            model,
            norms: norms.into(),
            packed: packed.into(),
            output_packed,
            packed_bytes,
            output_norm: output_norm.into(),
            rope: Arc::new(rope),
            rope_local,
            pool: Arc::new(pool),
            threads,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes of the weights repacked at load (held besides the file).
    pub fn packed_bytes(&self) -> usize {
        self.packed_bytes
    }

    fn forward_chunk(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        which: LogitsFor,
    ) -> Result<Vec<f32>> {
        let s: &DecoderSpec = &self.model.spec;
        let w: &DecoderWeights = &self.model.weights;
        let n = tokens.len();
        let (d, hd) = (s.d_model, s.head_dim);
        let (qd, kvd) = (s.n_head * hd, s.n_kv_head * hd);
        let pos0 = cache.len();

        // x [n, D]: embedding rows, dequantized.
        let mut x = vec![0f32; n * d];
        let emb = qmat(&w.token_embd)?;
        let rb = emb.row_bytes();
        for (t, &tok) in tokens.iter().enumerate() {
            if tok as usize >= s.vocab_size {
                return Err(Error::TokenOutOfRange {
                    id: tok,
                    vocab: s.vocab_size,
                });
            }
            let row = &emb.data[tok as usize * rb..(tok as usize + 1) * rb];
            sotto_kernels::quant::dequantize_row(emb.dtype, row, &mut x[t * d..(t + 1) * d])?;
        }
        if let Some(scale) = s.embed_scale {
            x.iter_mut().for_each(|v| *v *= scale);
        }

        let mut xn = vec![0f32; n * d];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut attn = vec![0f32; n * qd];
        let mut o = vec![0f32; n * d];
        let mut gate = vec![0f32; n * s.ffn_dim];
        let mut up = vec![0f32; n * s.ffn_dim];

        let layers = w
            .layers
            .iter()
            .zip(self.norms.iter())
            .zip(self.packed.iter());
        for (li, ((lw, ln), lp)) in layers.enumerate() {
            ops::rms_norm(&x, &ln.attn, s.norm_eps, &mut xn)?;
            if let (Some(pq), Some(pk), Some(pv)) = (&lp.q, &lp.k, &lp.v) {
                ops::matmul_packed_group(&[pq, pk, pv], &xn, n, &mut [&mut q, &mut k, &mut v])?;
            } else {
                matmul(lp.q.as_ref(), &lw.attn_q, &xn, n, &mut q)?;
                matmul(lp.k.as_ref(), &lw.attn_k, &xn, n, &mut k)?;
                matmul(lp.v.as_ref(), &lw.attn_v, &xn, n, &mut v)?;
            }
            if let (Some(qn), Some(kn)) = (&ln.q, &ln.k) {
                ops::rms_norm_in_place(&mut q, qn, s.norm_eps)?;
                ops::rms_norm_in_place(&mut k, kn, s.norm_eps)?;
            }
            let sliding = s.layer_is_sliding.get(li).copied().unwrap_or(false);
            let rope = match (&self.rope_local, sliding) {
                (Some(local), true) => local,
                _ => &self.rope,
            };
            for t in 0..n {
                rope.apply(
                    &mut q[t * qd..(t + 1) * qd],
                    s.n_head,
                    hd,
                    pos0 + t,
                    s.rope.style,
                )?;
                rope.apply(
                    &mut k[t * kvd..(t + 1) * kvd],
                    s.n_kv_head,
                    hd,
                    pos0 + t,
                    s.rope.style,
                )?;
            }
            cache.write(li, pos0, &k, &v)?;
            let layer = cache.layer(li);
            let params = AttentionParams {
                n_head: s.n_head,
                n_kv_head: s.n_kv_head,
                head_dim: hd,
                scale: s.attn_scale,
                softcap: s.attn_logit_softcap,
                window: if sliding { s.sliding_window } else { None },
            };
            ops::attention(
                &params,
                &q,
                &layer.k,
                &layer.v,
                cache.capacity(),
                pos0,
                n,
                &mut attn,
            )?;
            matmul(lp.o.as_ref(), &lw.attn_output, &attn, n, &mut o)?;
            if let Some(pn) = &ln.post_attn {
                ops::rms_norm_in_place(&mut o, pn, s.norm_eps)?;
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            ops::rms_norm(&x, &ln.ffn, s.norm_eps, &mut xn)?;
            if let (Some(pg), Some(pu)) = (&lp.gate, &lp.up) {
                ops::matmul_packed_group(&[pg, pu], &xn, n, &mut [&mut gate, &mut up])?;
            } else {
                matmul(lp.gate.as_ref(), &lw.ffn_gate, &xn, n, &mut gate)?;
                matmul(lp.up.as_ref(), &lw.ffn_up, &xn, n, &mut up)?;
            }
            match s.activation {
                Activation::SiluGlu => ops::silu_mul(&mut gate, &up)?,
                Activation::GeluTanhGlu => ops::gelu_tanh_mul(&mut gate, &up)?,
            }
            matmul(lp.down.as_ref(), &lw.ffn_down, &gate, n, &mut o)?;
            if let Some(pn) = &ln.post_ffn {
                ops::rms_norm_in_place(&mut o, pn, s.norm_eps)?;
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }

        // Only the rows asked for go through the (large) output projection.
        let rows = match which {
            LogitsFor::Last => &x[(n - 1) * d..],
            LogitsFor::All => &x[..],
        };
        let m = rows.len() / d;
        let mut hn = vec![0f32; rows.len()];
        ops::rms_norm(rows, &self.output_norm, s.norm_eps, &mut hn)?;
        let mut logits = vec![0f32; m * s.vocab_size];
        matmul(
            self.output_packed.as_deref(),
            &w.output,
            &hn,
            m,
            &mut logits,
        )?;
        if let Some(cap) = s.final_logit_softcap {
            ops::softcap(&mut logits, cap);
        }
        cache.advance(n)?;
        Ok(logits)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn spec(&self) -> &DecoderSpec {
        &self.model.spec
    }

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let s = &self.model.spec;
        KvCache::new(
            s.n_layer,
            s.n_kv_head,
            s.head_dim,
            capacity.min(s.context_length),
        )
    }

    fn forward(
        &mut self,
        cache: &mut KvCache,
        tokens: &[u32],
        which: LogitsFor,
    ) -> Result<Vec<f32>> {
        let start = crate::backend::check_forward(cache, tokens, self.model.spec.vocab_size)?;
        let out = self.pool.install(|| {
            let mut all = Vec::new();
            let chunks: Vec<&[u32]> = tokens.chunks(PREFILL_CHUNK).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let last = i + 1 == chunks.len();
                let want = if which == LogitsFor::All {
                    LogitsFor::All
                } else {
                    LogitsFor::Last
                };
                let l = self.forward_chunk(cache, chunk, want)?;
                if which == LogitsFor::All || last {
                    all.extend_from_slice(&l);
                }
            }
            Ok(all)
        });
        if out.is_err() {
            // A failed pass leaves the cache as it was before the call.
            cache.truncate(start);
        }
        out
    }

    fn describe(&self) -> String {
        format!(
            "cpu ({} threads, kernels {:?})",
            self.threads,
            sotto_kernels::dispatch::table().isa
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_models::gguf::GgufFile;
    use sotto_models::testutil::{tiny_model, TinyDims};

    fn last_logits(factors: Option<&[f32]>) -> Vec<f32> {
        let mut w = tiny_model("llama", TinyDims::default());
        if let Some(f) = factors {
            w = w.tensor_f32("rope_freqs.weight", &[f.len() as u64], f);
        }
        let model = Model::from_gguf(GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap();
        let mut b = CpuBackend::new(Arc::new(model), 1).unwrap();
        let mut cache = b.new_cache(16).unwrap();
        b.forward(&mut cache, &[3, 1, 4, 1, 5, 9], LogitsFor::Last)
            .unwrap()
    }

    #[test]
    fn rope_freqs_divide_the_rotation_angles() {
        let half = TinyDims::default().head_dim / 2;
        let plain = last_logits(None);
        assert_eq!(
            last_logits(Some(&vec![1.0; half])),
            plain,
            "unit factors change nothing"
        );
        let slowed = last_logits(Some(&vec![4.0; half]));
        let diff = plain
            .iter()
            .zip(&slowed)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff > 1e-4,
            "factors of 4 must change the logits (max diff {diff})"
        );
    }
}
