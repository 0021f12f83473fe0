//! The CPU backend: the decoder description executed with sotto-kernels.
//!
//! One forward pass walks [`DecoderSpec::layers`] beside the layer weights,
//! per layer (n = tokens in this pass, D = d_model):
//!   x [n, D] → RMSNorm → Q [n, H*hd], K/V [n, Hkv*hd] (+ biases) → (QK-norm)
//!   → RoPE (the layer's table) → KV cache → causal attention (the layer's
//!   scale, soft-cap, window) [n, H*hd] → Wo (+ bias) → (post-norm)
//!   → × residual scale → + x → RMSNorm → gate/up [n, F] → act(gate)*up
//!   → down [n, D] → (post-norm) → × residual scale → + x
//! then the final norm, the output projection for the rows asked for, the
//! logit scale and soft-cap. Every optional step is data of the description;
//! nothing here knows which architecture it runs.
//! Weights stay in the memory-mapped file, except where the kernel table
//! reads a load-time layout faster ([`PackedMatrix`], the x16 panels of the
//! x86 tiers and of aarch64 from dotprod up): those matrices are repacked at the first load, written
//! to the packed-panel cache ([`PackedCache`]) and mapped from it on later
//! starts, and the file's bytes are no longer read for them. Norm vectors
//! are copied as f32 (tiny).

mod lora;
mod packed_cache;

pub use packed_cache::{user_cache_dir, PackedCache, PackedCacheStatus};

use crate::backend::{Backend, LogitsFor};
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvTypes};
use rayon::prelude::*;
use sotto_kernels::dispatch::{KernelTable, ValueDot};
use sotto_kernels::ops::{self, AttentionParams, PackedMatrix, QMatrix, RopeCache};
use sotto_kernels::quant::DType;
use sotto_models::lora::{LoraAdapter, LoraTarget};
use sotto_models::spec::{Activation, DecoderSpec, RopeSpec};
use sotto_models::weights::{DecoderWeights, Linear, Weight};
use sotto_models::Model;
use std::sync::{Arc, OnceLock};

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

/// The cos/sin tables of one distinct rope of the description, built for
/// the caches that ask: a table covers the positions of the smallest size
/// class (512, 1024, 2048, ... positions, at most the model's context)
/// holding a cache's capacity, made the first time such a cache runs. A
/// model of 128k context chatting at 4k then holds 4k positions of table
/// (1 MiB for 32 pairs), not 128k (32 MiB). A rope with short and long
/// factors (Phi-3) has long tables too, for caches longer than its
/// original context.
struct RopeTables {
    spec: RopeSpec,
    /// The model's context: no table goes past it.
    max_pos: usize,
    short_inv: Vec<f64>,
    /// Made by the first cache long enough to use them.
    long_inv: OnceLock<Vec<f64>>,
    short: [OnceLock<RopeCache>; ROPE_CLASSES],
    long: [OnceLock<RopeCache>; ROPE_CLASSES],
}

/// Positions of the smallest table.
const ROPE_MIN_POSITIONS: usize = 512;
/// Size classes: up to 512 << 23 positions (4 billion), past any context.
const ROPE_CLASSES: usize = 24;

impl RopeTables {
    /// The tables of `spec`; the smallest is made now, so a rope that
    /// cannot be built is a load error.
    fn new(weights: &DecoderWeights, spec: RopeSpec, n_rot: usize, max_pos: usize) -> Result<Self> {
        let tables = RopeTables {
            spec,
            max_pos,
            short_inv: weights.rope_inv_freqs(&spec, n_rot, 0)?,
            long_inv: OnceLock::new(),
            short: std::array::from_fn(|_| OnceLock::new()),
            long: std::array::from_fn(|_| OnceLock::new()),
        };
        tables.for_capacity(weights, n_rot, 1)?;
        Ok(tables)
    }

    /// The table a KV cache of `capacity` positions reads.
    fn for_capacity(
        &self,
        weights: &DecoderWeights,
        n_rot: usize,
        capacity: usize,
    ) -> Result<&RopeCache> {
        let class_positions = |c: usize| ROPE_MIN_POSITIONS.saturating_mul(1 << c);
        let class = (0..ROPE_CLASSES)
            .find(|&c| class_positions(c) >= capacity)
            .unwrap_or(ROPE_CLASSES - 1);
        let positions = class_positions(class).min(self.max_pos);
        let (slot, inv) = if self.spec.uses_long_factors(capacity) {
            let inv = match self.long_inv.get() {
                Some(inv) => inv,
                None => {
                    let inv = weights.rope_inv_freqs(&self.spec, n_rot, capacity)?;
                    self.long_inv.get_or_init(|| inv)
                }
            };
            (&self.long[class], inv)
        } else {
            (&self.short[class], &self.short_inv)
        };
        if let Some(t) = slot.get() {
            return Ok(t);
        }
        let t = RopeCache::from_inv_freqs(inv, positions, self.spec.attn_factor)?;
        Ok(slot.get_or_init(|| t))
    }
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
    /// Bytes of the repacked copies (packed at load or mapped from the
    /// packed-panel cache).
    packed_bytes: usize,
    /// Whether the panels were packed at load or mapped from the cache.
    packed_cache: Arc<PackedCacheStatus>,
    output_norm: Arc<[f32]>,
    /// One per distinct rope of the layers; `layer_rope[il]` indexes it.
    ropes: Arc<[RopeTables]>,
    layer_rope: Arc<[usize]>,
    /// The kernels every op of this backend runs on.
    kernels: &'static KernelTable,
    /// Those of attention: `kernels`, or its twin with f32 value products
    /// where the attention output is not quantized to 8 bits next.
    attn_kernels: &'static KernelTable,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    /// LoRA adapters applied unmerged, after the projections they update
    /// (this conversation's; the weights above are shared).
    adapters: lora::Adapters,
    /// The element types of the caches it makes.
    kv_types: KvTypes,
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

/// `out = w · x` over `n` tokens, on the packed copy when there is one,
/// plus the bias when the linear has one.
fn linear(
    kernels: &KernelTable,
    packed: Option<&PackedMatrix>,
    w: &Linear,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    match packed {
        Some(p) => ops::matmul_packed_with(kernels, p, x, n, out)?,
        None => ops::matmul_with(kernels, &qmat(&w.weight)?, x, n, out)?,
    }
    add_bias(w, out);
    Ok(())
}

/// Adds `w`'s bias (if any) to every row of `out`.
fn add_bias(w: &Linear, out: &mut [f32]) {
    if let Some(b) = &w.bias {
        for row in out.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
    }
}

/// `x += scale · y` (scale 1 when absent).
fn add_residual(x: &mut [f32], y: &[f32], scale: Option<f32>) {
    let add = |(xs, ys): (&mut [f32], &[f32])| match scale {
        None => xs.iter_mut().zip(ys).for_each(|(a, b)| *a += b),
        Some(s) => xs.iter_mut().zip(ys).for_each(|(a, b)| *a += s * b),
    };
    if x.len() >= ops::PARALLEL_MIN {
        // a prompt's rows, in pieces of whole cache lines across the pool
        const PIECE: usize = 1 << 12;
        x.par_chunks_mut(PIECE)
            .zip(y.par_chunks(PIECE))
            .for_each(add);
    } else {
        add((x, y));
    }
}

impl CpuBackend {
    /// `threads` = 0 uses every core; the kernels are the process-wide
    /// table (the best path of this CPU, or `SOTTO_ISA`).
    pub fn new(model: Arc<Model>, threads: usize) -> Result<Self> {
        Self::with_kernels(model, threads, sotto_kernels::dispatch::try_table()?)
    }

    /// As [`CpuBackend::new`], on the given kernel table (for instance
    /// `sotto_kernels::dispatch::table_for(isa)`): backends on different
    /// paths can live in one process.
    pub fn with_kernels(
        model: Arc<Model>,
        threads: usize,
        kernels: &'static KernelTable,
    ) -> Result<Self> {
        Self::with_kernels_and_cache(model, threads, kernels, &PackedCache::from_env())
    }

    /// As [`CpuBackend::with_kernels`], with the matrices the table repacks
    /// (the x16 panels) mapped from `cache` when a valid
    /// file for this model and table is there, else packed and written
    /// there ([`CpuBackend::packed_cache`] says which).
    pub fn with_kernels_and_cache(
        model: Arc<Model>,
        threads: usize,
        kernels: &'static KernelTable,
        cache: &PackedCache,
    ) -> Result<Self> {
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
                let norms = LayerNorms {
                    attn: norm_vec(&l.attn_norm)?,
                    ffn: norm_vec(&l.ffn_norm)?,
                    q: l.attn_q_norm.as_ref().map(norm_vec).transpose()?,
                    k: l.attn_k_norm.as_ref().map(norm_vec).transpose()?,
                    post_attn: l.post_attention_norm.as_ref().map(norm_vec).transpose()?,
                    post_ffn: l.post_ffw_norm.as_ref().map(norm_vec).transpose()?,
                };
                // The file's pages leave the resident set as soon as a
                // layer's small tensors are copied out: in a page cache
                // holding the file in 2 MiB folios, each norm read maps the
                // 2 MiB around it, and the default model's whole file (83
                // of its 94 MiB) sat resident beside its panels. What is
                // read from the file later faults back in.
                l.linears().iter().for_each(|m| m.weight.release_pages());
                Ok(norms)
            })
            .collect::<Result<Vec<_>>>()?;
        let output_norm = norm_vec(&w.output_norm)?;
        // Every matrix the table may repack, layer by layer, then the output.
        let matrices: Vec<&Weight> = w
            .layers
            .iter()
            .flat_map(|l| l.linears().map(|m| &m.weight))
            .chain([&w.output.weight])
            .collect();
        // Repacking reads every matrix once; the pool packs panels in parallel.
        let (packed, cache_status) =
            pool.install(|| packed_cache::load_or_pack(kernels, &model.gguf, &matrices, cache))?;
        let packed_bytes = packed.iter().flatten().map(|p| p.bytes().len()).sum();
        // The matrices read from the file for every token (not repacked)
        // on 2 MiB pages, as the panels are (`Storage::map` in models).
        matrices
            .iter()
            .zip(&packed)
            .filter(|(_, p)| p.is_none())
            .for_each(|(m, _)| m.ask_huge_pages());
        let mut it = packed.into_iter();
        let packed: Vec<LayerPacked> = w
            .layers
            .iter()
            .map(|_| {
                let mut next = || it.next().flatten();
                LayerPacked {
                    q: next(),
                    k: next(),
                    v: next(),
                    o: next(),
                    gate: next(),
                    up: next(),
                    down: next(),
                }
            })
            .collect();
        let output_packed = it.next().flatten().map(Arc::new);
        let s = &model.spec;
        let (distinct, layer_rope) = s.distinct_ropes();
        let ropes = distinct
            .into_iter()
            .map(|r| RopeTables::new(w, r, s.n_rot, s.context_length))
            .collect::<Result<Vec<_>>>()?;
        // bf16 value products (where the table has them) err less than
        // the 8-bit activations an output projection in quantized weights
        // takes next; before one in float weights they would be the
        // layer's largest error.
        let eight_bit = w.layers.iter().all(|l| {
            let act = l.attn_output.weight.dtype.activation_type();
            matches!(act, Some(DType::Q8_0 | DType::Q8_1 | DType::Q8_K))
        });
        let attn_kernels = match eight_bit {
            true => kernels,
            false => sotto_kernels::dispatch::with_f32_values(kernels),
        };
        Ok(Self {
            model,
            norms: norms.into(),
            packed: packed.into(),
            output_packed,
            packed_bytes,
            packed_cache: Arc::new(cache_status),
            output_norm: output_norm.into(),
            ropes: ropes.into(),
            layer_rope: layer_rope.into(),
            kernels,
            attn_kernels,
            pool: Arc::new(pool),
            threads,
            adapters: Arc::new([]),
            kv_types: KvTypes::default(),
        })
    }

    /// This backend making caches of keys and values of `types` (f16 by
    /// default; q8_0 / q4_0 are read by attention as they are stored);
    /// [`Error::KvType`] when a block type does not divide the head size.
    pub fn with_kv_types(self, types: KvTypes) -> Result<CpuBackend> {
        KvCache::new(0, 1, self.model.spec.head_dim, 0, types)?;
        Ok(CpuBackend {
            kv_types: types,
            ..self
        })
    }

    /// The element types of the caches it makes.
    pub fn kv_types(&self) -> KvTypes {
        self.kv_types
    }

    /// A cache keeping every position of every layer, sliding-window
    /// layers too: what a backend sharing the cache with ONNX Runtime
    /// graphs needs (they read and write it position by position).
    pub fn new_linear_cache(&self, capacity: usize) -> Result<KvCache> {
        let s = &self.model.spec;
        KvCache::new(
            s.n_layer,
            s.n_kv_head,
            s.head_dim,
            capacity.min(s.context_length),
            self.kv_types,
        )
    }

    /// A backend sharing everything of this one (weights, repacked
    /// matrices, rope tables, thread pool) that applies `adapters` unmerged
    /// after the projections they update (`y = W·x + s·B·(A·x)`), in place
    /// of this one's adapters: how a conversation gets its own adapter
    /// without reloading or copying the base weights. Each adapter must fit
    /// this model ([`LoraAdapter::load`] on it), else
    /// [`sotto_models::Error::LoraBaseMismatch`].
    pub fn with_adapters(&self, adapters: Vec<Arc<LoraAdapter>>) -> Result<CpuBackend> {
        lora::check_fits(&self.model.weights, &adapters)?;
        Ok(CpuBackend {
            adapters: adapters.into(),
            ..self.clone()
        })
    }

    /// The adapters it applies unmerged.
    pub fn adapters(&self) -> &[Arc<LoraAdapter>] {
        &self.adapters
    }

    /// What the load did about repacked matrices: none, packed (how long),
    /// or mapped from the packed-panel cache.
    pub fn packed_cache(&self) -> &PackedCacheStatus {
        &self.packed_cache
    }

    /// The model it runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Worker threads of its pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes of the weights repacked for the kernels (held besides the
    /// file: packed at load, or mapped from the packed-panel cache).
    pub fn packed_bytes(&self) -> usize {
        self.packed_bytes
    }

    /// `tokens` through the model in chunks of [`PREFILL_CHUNK`], on the
    /// pool: the logits of every token or of the last one.
    fn forward_chunks(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        which: LogitsFor,
    ) -> Result<Vec<f32>> {
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

        let layers = s
            .layers
            .iter()
            .zip(&w.layers)
            .zip(self.norms.iter().zip(self.packed.iter()));
        let kernels = self.kernels;
        for (li, ((ls, lw), (ln, lp))) in layers.enumerate() {
            ops::rms_norm(&x, &ln.attn, s.norm_eps, &mut xn)?;
            if let (Some(pq), Some(pk), Some(pv)) = (&lp.q, &lp.k, &lp.v) {
                ops::matmul_packed_group_with(
                    kernels,
                    &[pq, pk, pv],
                    &xn,
                    n,
                    &mut [&mut q, &mut k, &mut v],
                )?;
                add_bias(&lw.attn_q, &mut q);
                add_bias(&lw.attn_k, &mut k);
                add_bias(&lw.attn_v, &mut v);
            } else {
                linear(kernels, lp.q.as_ref(), &lw.attn_q, &xn, n, &mut q)?;
                linear(kernels, lp.k.as_ref(), &lw.attn_k, &xn, n, &mut k)?;
                linear(kernels, lp.v.as_ref(), &lw.attn_v, &xn, n, &mut v)?;
            }
            let lora = |target, x: &[f32], out: &mut [f32]| {
                lora::add_updates(&self.adapters, li, target, x, n, out)
            };
            lora(LoraTarget::AttnQ, &xn, &mut q)?;
            lora(LoraTarget::AttnK, &xn, &mut k)?;
            lora(LoraTarget::AttnV, &xn, &mut v)?;
            if let (Some(qn), Some(kn)) = (&ln.q, &ln.k) {
                ops::rms_norm_in_place(&mut q, qn, s.norm_eps)?;
                ops::rms_norm_in_place(&mut k, kn, s.norm_eps)?;
            }
            let rope =
                self.ropes[self.layer_rope[li]].for_capacity(w, s.n_rot, cache.capacity())?;
            let rotate = |(t, (qt, kt)): (usize, (&mut [f32], &mut [f32]))| -> Result<()> {
                rope.apply(qt, s.n_head, hd, pos0 + t, s.rope_style)?;
                rope.apply(kt, s.n_kv_head, hd, pos0 + t, s.rope_style)?;
                Ok(())
            };
            let (qs, ks) = (&mut q[..n * qd], &mut k[..n * kvd]);
            if qs.len() >= ops::PARALLEL_MIN {
                qs.par_chunks_mut(qd)
                    .zip(ks.par_chunks_mut(kvd))
                    .enumerate()
                    .try_for_each(rotate)?;
            } else {
                qs.chunks_mut(qd)
                    .zip(ks.chunks_mut(kvd))
                    .enumerate()
                    .try_for_each(rotate)?;
            }
            cache.write(li, pos0, &k, &v)?;
            let layer = cache.layer(li);
            let params = AttentionParams {
                n_head: s.n_head,
                n_kv_head: s.n_kv_head,
                head_dim: hd,
                scale: ls.attention.scale,
                softcap: ls.attention.softcap,
                window: ls.attention.window,
            };
            ops::attention_kv_with(
                self.attn_kernels,
                &params,
                &q,
                layer.k.rows_view(),
                layer.v.rows_view(),
                cache.layout(li),
                pos0,
                n,
                &mut attn,
            )?;
            linear(kernels, lp.o.as_ref(), &lw.attn_output, &attn, n, &mut o)?;
            lora(LoraTarget::AttnOutput, &attn, &mut o)?;
            if let Some(pn) = &ln.post_attn {
                ops::rms_norm_in_place(&mut o, pn, s.norm_eps)?;
            }
            add_residual(&mut x, &o, ls.residual_scale);

            ops::rms_norm(&x, &ln.ffn, s.norm_eps, &mut xn)?;
            if let (Some(pg), Some(pu)) = (&lp.gate, &lp.up) {
                ops::matmul_packed_group_with(
                    kernels,
                    &[pg, pu],
                    &xn,
                    n,
                    &mut [&mut gate, &mut up],
                )?;
                add_bias(&lw.ffn_gate, &mut gate);
                add_bias(&lw.ffn_up, &mut up);
            } else {
                linear(kernels, lp.gate.as_ref(), &lw.ffn_gate, &xn, n, &mut gate)?;
                linear(kernels, lp.up.as_ref(), &lw.ffn_up, &xn, n, &mut up)?;
            }
            lora(LoraTarget::FfnGate, &xn, &mut gate)?;
            lora(LoraTarget::FfnUp, &xn, &mut up)?;
            match s.activation {
                Activation::SiluGlu => ops::silu_mul_with(kernels, &mut gate, &up)?,
                Activation::GeluTanhGlu => ops::gelu_tanh_mul_with(kernels, &mut gate, &up)?,
            }
            linear(kernels, lp.down.as_ref(), &lw.ffn_down, &gate, n, &mut o)?;
            lora(LoraTarget::FfnDown, &gate, &mut o)?;
            if let Some(pn) = &ln.post_ffn {
                ops::rms_norm_in_place(&mut o, pn, s.norm_eps)?;
            }
            add_residual(&mut x, &o, ls.residual_scale);
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
        linear(
            kernels,
            self.output_packed.as_deref(),
            &w.output,
            &hn,
            m,
            &mut logits,
        )?;
        if let Some(scale) = s.logit_scale {
            logits.iter_mut().for_each(|l| *l *= scale);
        }
        if let Some(cap) = s.final_logit_softcap {
            ops::softcap(&mut logits, cap);
        }
        cache.advance(n)?;
        Ok(logits)
    }
}

/// Runs `f` on the calling pool thread while every other thread of the pool
/// waits for its parallel regions awake, taking their jobs as they come.
///
/// A forward pass is a run of short parallel regions (a decoded token of
/// SmolLM2-135M is ~150 of them in ~7 ms). Between two of them an idle
/// rayon worker soon sleeps on a futex, and each wake costs the next region
/// a futex call and a woken CPU (under KVM, an interrupt to a halted
/// vCPU): 2-thread decode measured 38 sleeps per token. Here each other
/// thread runs a job that polls the pool (`rayon::yield_now`) until `f`
/// returns, so it is spinning, not asleep, when a region starts. The
/// pollers are spawned first, so thieves (which take the oldest job) take
/// them before any job of `f`; one that still ends up on `f`'s own thread
/// returns at once rather than wait on itself.
fn awake_team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Ends the pollers however `f` ends (a panic too).
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let others = rayon::current_num_threads().saturating_sub(1);
    let (Some(me), true) = (rayon::current_thread_index(), others > 0) else {
        return f();
    };
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 0..others {
            s.spawn(|_| {
                if rayon::current_thread_index() == Some(me) {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    match rayon::yield_now() {
                        Some(rayon::Yield::Executed) => {}
                        // lets any other runnable thread have the CPU
                        Some(rayon::Yield::Idle) => std::thread::yield_now(),
                        None => break,
                    }
                }
            });
        }
        let _done = Done(&done);
        f()
    })
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn spec(&self) -> &DecoderSpec {
        &self.model.spec
    }

    fn rope_inv_freqs(&self, layer: usize, capacity: usize) -> Result<Vec<f64>> {
        let s = &self.model.spec;
        let rope = s
            .layers
            .get(layer)
            .ok_or_else(|| Error::KvCache(format!("no layer {layer}")))?
            .rope;
        Ok(self
            .model
            .weights
            .rope_inv_freqs(&rope, s.n_rot, capacity)?)
    }

    /// Sliding-window layers keep a ring of their window plus one
    /// prefill chunk (see [`KvCache::with_windows`]).
    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let s = &self.model.spec;
        let windows: Vec<Option<usize>> = s.layers.iter().map(|l| l.attention.window).collect();
        KvCache::with_windows(
            s.n_layer,
            s.n_kv_head,
            s.head_dim,
            capacity.min(s.context_length),
            self.kv_types,
            &windows,
            PREFILL_CHUNK,
        )
    }

    fn forward(
        &mut self,
        cache: &mut KvCache,
        tokens: &[u32],
        which: LogitsFor,
    ) -> Result<Vec<f32>> {
        let start = crate::backend::check_forward(cache, tokens, self.model.spec.vocab_size)?;
        let out = self
            .pool
            .install(|| awake_team(|| self.forward_chunks(cache, tokens, which)));
        if out.is_err() {
            // A failed pass leaves the cache as it was before the call (or
            // empty, when a ring overwrote the window of `start`).
            cache.truncate(start);
        }
        out
    }

    fn describe(&self) -> String {
        let adapters = match self.adapters.len() {
            0 => String::new(),
            n => format!(", {n} LoRA adapter(s) unmerged"),
        };
        let kv = if self.kv_types.is_f16() {
            String::new()
        } else {
            format!(", KV {}", self.kv_types)
        };
        let bf16 = self
            .attn_kernels
            .attn_tile
            .is_some_and(|t| t.value_dot == ValueDot::Bf16Pairs);
        let values = if bf16 { ", attention values bf16" } else { "" };
        format!(
            "cpu ({} threads, kernels {:?}{kv}{values}{adapters})",
            self.threads, self.kernels.isa
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sotto_models::gguf::{GgufFile, GgufWriter, MetaValue};
    use sotto_models::testutil::{tiny_model, tiny_model_random, TinyDims};

    /// The pass's regions run on the whole pool and give the serial result;
    /// the pollers end when the pass returns and when it panics (a hang
    /// here would be the failure), on pools of 1 to 3 threads.
    #[test]
    fn an_awake_team_runs_the_pass_and_ends_with_it() {
        use rayon::prelude::*;
        let want: u64 = (0..100_000u32)
            .map(|x| u64::from(x) * u64::from(x) % 7)
            .sum();
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for _ in 0..50 {
                let (got, workers) = pool.install(|| {
                    awake_team(|| {
                        let workers = std::sync::Mutex::new(std::collections::HashSet::new());
                        let got = (0..100_000u32)
                            .into_par_iter()
                            .with_max_len(1000)
                            .map(|x| {
                                workers
                                    .lock()
                                    .unwrap()
                                    .insert(rayon::current_thread_index());
                                u64::from(x) * u64::from(x) % 7
                            })
                            .sum::<u64>();
                        (got, workers.into_inner().unwrap().len())
                    })
                });
                assert_eq!(got, want, "{threads} threads");
                assert!(workers >= 1 && workers <= threads);
            }
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| awake_team(|| panic!("a failed pass")))
            }));
            assert!(panicked.is_err(), "{threads} threads");
            // the pool still serves after the pollers of the panicked pass ended
            assert_eq!(pool.install(|| awake_team(|| 7)), 7);
        }
    }

    const TOKENS: [u32; 6] = [3, 1, 4, 1, 5, 9];

    fn logits_of(w: &GgufWriter, which: LogitsFor) -> Vec<f32> {
        let model = Model::from_gguf(GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap();
        let mut b = CpuBackend::new(Arc::new(model), 1).unwrap();
        let mut cache = b.new_cache(16).unwrap();
        b.forward(&mut cache, &TOKENS, which).unwrap()
    }

    fn last_logits(factors: Option<&[f32]>) -> Vec<f32> {
        let mut w = tiny_model("llama", TinyDims::default());
        if let Some(f) = factors {
            w = w.tensor_f32("rope_freqs.weight", &[f.len() as u64], f);
        }
        logits_of(&w, LogitsFor::Last)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// `w` with its `{from}.*` keys renamed `{to}.*` and its architecture `to`.
    fn relabel(w: &GgufWriter, from: &str, to: &str) -> GgufWriter {
        let mut out = w.clone();
        for (k, _) in out.metadata.iter_mut() {
            if let Some(rest) = k.strip_prefix(&format!("{from}.")) {
                *k = format!("{to}.{rest}");
            }
        }
        out.set("general.architecture", MetaValue::string(to));
        out
    }

    /// Replaces the tensors `parts` of `w` by one tensor `fused` holding
    /// their rows in order (how Phi-3 stores attn_qkv and gate-up).
    fn fuse(w: &mut GgufWriter, parts: &[String], fused: &str) {
        let mut data = Vec::new();
        let (mut rows, mut cols, mut type_id) = (0, 0, 0);
        for name in parts {
            let t = w.tensors.iter().find(|t| &t.name == name).unwrap();
            data.extend_from_slice(&t.data);
            (cols, type_id) = (t.dims[0], t.type_id);
            rows += t.dims[1];
        }
        w.tensors.retain(|t| !parts.contains(&t.name));
        *w = w.clone().tensor(fused, &[cols, rows], type_id, data);
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
        let diff = max_diff(&plain, &slowed);
        assert!(
            diff > 1e-4,
            "factors of 4 must change the logits (max diff {diff})"
        );
    }

    /// Phi-3's fused tensors, split into row views at load, compute what
    /// the same rows as separate tensors compute (Qwen 2 without biases is
    /// the same block with separate tensors).
    #[test]
    fn fused_projections_equal_their_separate_parts() {
        let mut separate = tiny_model_random("qwen2", TinyDims::default(), 7);
        separate.tensors.retain(|t| !t.name.ends_with(".bias"));
        let mut fused = relabel(&separate, "qwen2", "phi3");
        for il in 0..TinyDims::default().n_layer {
            let n = |t: &str| format!("blk.{il}.{t}.weight");
            fuse(
                &mut fused,
                &[n("attn_q"), n("attn_k"), n("attn_v")],
                &n("attn_qkv"),
            );
            fuse(&mut fused, &[n("ffn_gate"), n("ffn_up")], &n("ffn_up"));
        }
        let (a, b) = (
            logits_of(&separate, LogitsFor::All),
            logits_of(&fused, LogitsFor::All),
        );
        assert!(max_diff(&a, &b) < 1e-5, "max diff {}", max_diff(&a, &b));
    }

    /// Granite with its four scales at 1 (and the attention scale at
    /// `1/sqrt(head_dim)`) is Llama; each scale then changes the logits.
    #[test]
    fn granite_scales_are_identities_at_one_and_act_otherwise() {
        let llama = tiny_model_random("llama", TinyDims::default(), 3);
        let mut granite = relabel(&llama, "llama", "granite");
        for (k, v) in [
            ("logit_scale", 1.0),
            ("residual_scale", 1.0),
            ("embedding_scale", 1.0),
            ("attention.scale", 0.5),
        ] {
            granite.set(&format!("granite.{k}"), MetaValue::F32(v));
        }
        let base = logits_of(&llama, LogitsFor::All);
        assert!(max_diff(&base, &logits_of(&granite, LogitsFor::All)) < 1e-6);
        let mut halved = granite.clone();
        halved.set("granite.logit_scale", MetaValue::F32(2.0));
        let h = logits_of(&halved, LogitsFor::All);
        assert!(base.iter().zip(&h).all(|(a, b)| (a / 2.0 - b).abs() < 1e-5));
        for (k, v) in [
            ("residual_scale", 0.5),
            ("embedding_scale", 3.0),
            ("attention.scale", 2.0),
        ] {
            let mut g = granite.clone();
            g.set(&format!("granite.{k}"), MetaValue::F32(v));
            assert!(
                max_diff(&base, &logits_of(&g, LogitsFor::All)) > 1e-3,
                "{k} had no effect"
            );
        }
    }

    /// A window at least as long as the sequence changes nothing; a shorter
    /// one changes exactly the positions that have keys beyond it. (Layers
    /// with a window run the per-head attention path and layers without one
    /// the tiled path, whose sums are ordered differently: "nothing" is to
    /// within their rounding, far under what a masked key changes.)
    #[test]
    fn sliding_window_masks_only_keys_beyond_it() {
        // the two attention paths' rounding apart, on logits of size ~1
        const ROUNDING: f32 = 1e-5;
        let llama = tiny_model_random("llama", TinyDims::default(), 5);
        let full = logits_of(&llama, LogitsFor::All);
        let mut wide = llama.clone();
        wide.set(
            "llama.attention.sliding_window",
            MetaValue::U32(TOKENS.len() as u32),
        );
        let same = max_diff(&logits_of(&wide, LogitsFor::All), &full);
        assert!(same < ROUNDING, "a window past every key changed {same}");
        let mut narrow = llama;
        narrow.set("llama.attention.sliding_window", MetaValue::U32(3));
        let windowed = logits_of(&narrow, LogitsFor::All);
        let vocab = full.len() / TOKENS.len();
        for p in 0..TOKENS.len() {
            let d = max_diff(
                &full[p * vocab..(p + 1) * vocab],
                &windowed[p * vocab..(p + 1) * vocab],
            );
            if p < 3 {
                assert!(
                    d < ROUNDING,
                    "position {p} sees no key beyond the window: {d}"
                );
            } else {
                assert!(
                    d > 100.0 * ROUNDING,
                    "position {p}: window had no effect ({d})"
                );
            }
        }
    }

    /// Gemma 3's sliding-window layers keep a ring of `window +
    /// PREFILL_CHUNK - 1` positions, its global layer every position: the
    /// logits of a 700-token sequence (prefill chunks that wrap the ring,
    /// then decode steps), a rollback within the last pass, a context
    /// shift and a truncation the ring cannot serve are those of the
    /// cache that keeps everything, for f16 and Q8_0/Q4_0 caches.
    #[test]
    fn sliding_window_rings_answer_as_the_whole_cache() {
        let dims = TinyDims {
            n_layer: 6,
            d_model: 64,
            n_head: 2,
            n_kv_head: 1,
            head_dim: 64,
            ffn_dim: 64,
        };
        let mut w = tiny_model_random("gemma3", dims, 9);
        w.set("gemma3.context_length", MetaValue::U32(2048));
        w.set("gemma3.attention.sliding_window", MetaValue::U32(8));
        let model =
            Arc::new(Model::from_gguf(GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap());
        let vocab = model.spec.vocab_size;
        let tokens: Vec<u32> = (0..700u32)
            .map(|i| (i * 7919 + 13) % vocab as u32)
            .collect();
        for types in ["f16", "q8_0", "q4_0"] {
            let types = KvTypes::parse(types).unwrap();
            let mut b = CpuBackend::new(model.clone(), 1)
                .unwrap()
                .with_kv_types(types)
                .unwrap();
            let mut ring = b.new_cache(1024).unwrap();
            let mut whole = b.new_linear_cache(1024).unwrap();
            let slots = 8 + PREFILL_CHUNK - 1;
            assert_eq!(ring.layout(0).slots, slots);
            assert!((0..5).all(|i| ring.is_ring(i)) && !ring.is_ring(5));
            assert_eq!(ring.layout(5).slots, 1024);
            // bytes per position of one layer, times the rows kept
            assert_eq!(
                ring.bytes(),
                whole.bytes() / (6 * 1024) * (5 * slots + 1024)
            );
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                // the wrapped window is scored in two runs: the online
                // softmax rounds its rescaling otherwise
                let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = max_diff(a, b) / scale;
                assert!(d < 1e-5, "{types} {what}: {d} of {scale}");
            };
            let a = b
                .forward(&mut ring, &tokens[..600], LogitsFor::All)
                .unwrap();
            let z = b
                .forward(&mut whole, &tokens[..600], LogitsFor::All)
                .unwrap();
            close(&a, &z, "prefill");
            assert_eq!(ring.layout(0).first, 600 - slots);
            for &t in &tokens[600..620] {
                let a = b.forward(&mut ring, &[t], LogitsFor::Last).unwrap();
                let z = b.forward(&mut whole, &[t], LogitsFor::Last).unwrap();
                close(&a, &z, "decode");
            }
            // a speculative rollback: the ring still holds the window
            b.forward(&mut ring, &tokens[620..650], LogitsFor::All)
                .unwrap();
            b.forward(&mut whole, &tokens[620..650], LogitsFor::All)
                .unwrap();
            assert_eq!(ring.truncate(622), 622);
            whole.truncate(622);
            let a = b
                .forward(&mut ring, &tokens[622..630], LogitsFor::All)
                .unwrap();
            let z = b
                .forward(&mut whole, &tokens[622..630], LogitsFor::All)
                .unwrap();
            close(&a, &z, "after a rollback");
            // a context shift moves what the ring holds
            crate::context::shift_cache(&b, &mut ring, 4, 300).unwrap();
            crate::context::shift_cache(&b, &mut whole, 4, 300).unwrap();
            assert_eq!((ring.len(), whole.len()), (330, 330));
            let a = b
                .forward(&mut ring, &tokens[630..640], LogitsFor::All)
                .unwrap();
            let z = b
                .forward(&mut whole, &tokens[630..640], LogitsFor::All)
                .unwrap();
            close(&a, &z, "after a shift");
            // a prefix whose window the ring overwrote: nothing is kept
            assert_eq!(ring.layout(0).first, 87);
            assert_eq!(ring.truncate(100), 100, "a query at 100 sees 93.., held");
            assert_eq!(ring.truncate(50), 0, "a query at 50 sees 43.., overwritten");
            assert_eq!(ring.layout(0).first, 0);
            assert_eq!(whole.truncate(50), 50);
        }
        // a cache shared with ONNX Runtime graphs cannot be a ring
        let b = CpuBackend::new(model, 1).unwrap();
        assert!(b.new_cache(1024).unwrap().require_f16("test").is_err());
        assert!(b
            .new_linear_cache(1024)
            .unwrap()
            .require_f16("test")
            .is_ok());
        // a context that fits window and chunk keeps every position
        assert!(!b.new_cache(8 + PREFILL_CHUNK - 1).unwrap().is_ring(0));
        assert!(b.new_cache(8 + PREFILL_CHUNK).unwrap().is_ring(0));
    }

    /// Attention takes bf16 value products only where the output
    /// projection quantizes its activations to 8 bits next: a float file
    /// attends on the f32-product twin of the table, a quantized one on
    /// the table as it is, whichever products that has.
    #[test]
    fn float_output_projections_keep_f32_attention_values() {
        use sotto_kernels::dispatch::{available_isas, table_for};
        use sotto_kernels::quant::DType;
        let dims = TinyDims::WHOLE_BLOCKS;
        let float = tiny_model_random("llama", dims, 22);
        let mut quantized = tiny_model_random("llama", dims, 22);
        sotto_models::testutil::quantize_matrices(&mut quantized, &[DType::Q8_0]).unwrap();
        for isa in available_isas() {
            let t = table_for(isa).unwrap();
            for (w, eight_bit) in [(&float, false), (&quantized, true)] {
                let model = Arc::new(
                    Model::from_gguf(GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap(),
                );
                let b = CpuBackend::with_kernels(model, 1, t).unwrap();
                let values = |k: &KernelTable| k.attn_tile.map(|tk| tk.value_dot);
                let want = match eight_bit {
                    true => values(t),
                    false => values(t).map(|_| ValueDot::F32),
                };
                assert_eq!(values(b.attn_kernels), want, "{isa} 8-bit: {eight_bit}");
                assert_eq!(b.kernels.isa, b.attn_kernels.isa);
            }
        }
    }
    /// A Q4_K_M-style file mixes Q4_K, Q5_0, Q6_K and Q8_0 matrices, also
    /// within one layer's Q/K/V and gate/up groups: on a table with x16
    /// entries for all four, every matrix runs on its packed copy (packed
    /// bytes = the file's matrix bytes padded to whole 16-row panels, the
    /// layout being a lossless reshuffle), and prefill and decode answer like the scalar reference
    /// kernels of the same backend code.
    #[test]
    fn a_mixed_k_quant_file_packs_every_matrix_and_matches_the_scalar_kernels() {
        use sotto_kernels::dispatch::{available_isas, table_for, Isa};
        use sotto_kernels::quant::DType;
        let dims = TinyDims::WHOLE_BLOCKS;
        let mut w = tiny_model_random("llama", dims, 21);
        let types = [DType::Q4_K, DType::Q5_0, DType::Q6_K, DType::Q8_0];
        sotto_models::testutil::quantize_matrices(&mut w, &types).unwrap();
        let model =
            Arc::new(Model::from_gguf(GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap());
        let wt = &model.weights;
        // a panel of 16 rows holds the rows past a matrix's end as zeros
        let panelled = |w: &Weight| w.data().len() / w.shape[0] * w.shape[0].next_multiple_of(16);
        let mut matrix_bytes = panelled(&wt.output.weight);
        for l in &wt.layers {
            for m in l.linears() {
                matrix_bytes += panelled(&m.weight);
            }
        }
        // f32 attention values (a bf16 table's twin): the products are
        // what is compared here, and this random model amplifies bf16's
        // rounding of the values to 3.6% of its largest logit
        let run = |isa: Isa| {
            let t = sotto_kernels::dispatch::with_f32_values(table_for(isa).unwrap());
            let mut b = CpuBackend::with_kernels(model.clone(), 1, t).unwrap();
            let mut cache = b.new_cache(16).unwrap();
            let mut logits = b.forward(&mut cache, &TOKENS, LogitsFor::All).unwrap();
            logits.extend(b.forward(&mut cache, &[7], LogitsFor::Last).unwrap());
            (b.packed_bytes(), logits)
        };
        let (scalar_packed, reference) = run(Isa::Scalar);
        assert_eq!(scalar_packed, 0);
        let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
        for isa in available_isas() {
            let t = table_for(isa).unwrap();
            let (packed, logits) = run(isa);
            let all_x16 = t.q4_k.x16.is_some()
                && t.q5_0.x16.is_some()
                && t.q6_k.x16.is_some()
                && t.q8_0.x16.is_some();
            if all_x16 {
                assert_eq!(packed, matrix_bytes, "{isa}: a matrix left unpacked");
            }
            let d = max_diff(&reference, &logits);
            assert!(
                d <= 1e-3 * scale,
                "{isa}: max diff {d} (logits up to {scale})"
            );
        }
    }

    /// Biases are added: dropping Qwen 2's changes the logits.
    #[test]
    fn qkv_biases_are_applied() {
        let with = tiny_model_random("qwen2", TinyDims::default(), 9);
        let mut without = with.clone();
        without.tensors.retain(|t| !t.name.ends_with(".bias"));
        let d = max_diff(
            &logits_of(&with, LogitsFor::Last),
            &logits_of(&without, LogitsFor::Last),
        );
        assert!(d > 1e-3, "max diff {d}");
    }
}
