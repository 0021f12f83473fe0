//! [`OrtBackend`]: a decoder exported by [`crate::onnx`] (a manifest
//! directory) run as two sessions, prefill over fixed chunks and decode one
//! token at a time, over a KV cache the backend owns as f32
//! `[n_layer][n_kv_head, context, head_dim]` (the graphs' I/O layout).

use std::path::Path;

use half::f16;

use crate::kv_cache::{KvCache, KvPlane};
use crate::onnx::export::{past_key, past_value, present_key, present_value};
use crate::onnx::manifest::Manifest;
use crate::onnx::qdq::Ranges;

use super::runtime::OrtConfig;
use super::session::{self, GraphSession, Input, Placement};
use super::{Error, Result};

/// A layer's f16 keys and values; [`Error::Kv`] for a quantized cache.
fn f16_planes(l: &crate::kv_cache::LayerKv) -> Result<(&[f16], &[f16])> {
    l.f16("an ONNX Runtime backend")
        .map_err(|e| Error::Kv(e.to_string()))
}

/// KV cache contents for hand-over between backends: per layer, keys and
/// values `[n_kv_head, len, head_dim]` in f32, keys in the model's own
/// dimension order (the export's rope permutation undone).
#[derive(Debug, Clone, PartialEq)]
pub struct KvSnapshot {
    /// Positions held.
    pub len: usize,
    /// Key/value heads per layer.
    pub n_kv_head: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Per layer, `n_kv_head * len * head_dim` keys.
    pub keys: Vec<Vec<f32>>,
    /// Per layer, `n_kv_head * len * head_dim` values.
    pub values: Vec<Vec<f32>>,
}

impl KvSnapshot {
    /// The first `cache.len()` positions of the engine's cache, decoded
    /// to f32 (from f16, or from Q8_0 / Q4_0 blocks).
    pub fn from_cache(cache: &KvCache) -> KvSnapshot {
        let (len, cap, n_kv, hd) = (
            cache.len(),
            cache.capacity(),
            cache.n_kv_head(),
            cache.head_dim(),
        );
        let take = |src: &KvPlane| {
            let mut out = vec![0f32; n_kv * len * hd];
            for (h, rows) in out.chunks_exact_mut((len * hd).max(1)).enumerate() {
                // rows h * cap .. + len of a plane of n_kv * cap rows: in
                // range by construction (zeros if not)
                let _ = src.read_rows(h * cap, rows);
            }
            out
        };
        let layers = (0..cache.n_layer()).map(|i| cache.layer(i));
        let (keys, values) = layers.map(|l| (take(&l.k), take(&l.v))).unzip();
        KvSnapshot {
            len,
            n_kv_head: n_kv,
            head_dim: hd,
            keys,
            values,
        }
    }

    /// Writes the snapshot into `cache` (rounding to f16, or quantizing to
    /// the cache's block type) and sets its length; a snapshot of another
    /// shape, or longer than the cache's capacity, is an error and leaves
    /// the cache as it was.
    pub fn write_to(&self, cache: &mut KvCache) -> Result<()> {
        let (cap, n_kv, hd) = (cache.capacity(), cache.n_kv_head(), cache.head_dim());
        let n = self.n_kv_head * self.len * self.head_dim;
        if self.n_kv_head != n_kv
            || self.head_dim != hd
            || self.keys.len() != cache.n_layer()
            || self.values.len() != cache.n_layer()
            || self.keys.iter().chain(&self.values).any(|l| l.len() != n)
        {
            return Err(Error::Kv(format!(
                "snapshot of {} layers x {} heads x {} dims x {} positions does not fit a cache of {} x {} x {}",
                self.keys.len(),
                self.n_kv_head,
                self.head_dim,
                self.len,
                cache.n_layer(),
                n_kv,
                hd
            )));
        }
        if self.len > cap {
            return Err(Error::ContextOverflow {
                needed: self.len,
                context: cap,
            });
        }
        let len = self.len;
        let put = |src: &[f32], dst: &mut KvPlane| -> Result<()> {
            for h in 0..n_kv {
                dst.write_rows(h * cap, &src[h * len * hd..(h + 1) * len * hd])
                    .map_err(|e| Error::Kv(e.to_string()))?;
            }
            Ok(())
        };
        for i in 0..cache.n_layer() {
            let l = cache.layer_mut(i);
            put(&self.keys[i], &mut l.k)?;
            put(&self.values[i], &mut l.v)?;
        }
        cache.set_len(len).map_err(|e| Error::Kv(e.to_string()))
    }
}

/// An export directory's prefill and decode graphs as ONNX Runtime
/// sessions with their own f32 KV cache of the manifest's fixed `context`
/// slots: the raw graphs, below the engine's [`Backend`](crate::Backend)
/// interface ([`OrtDecoder`](super::OrtDecoder) wraps it as one). Passes
/// take `&mut self`; the backend may move to another thread but is not
/// shared between threads.
#[derive(Debug)]
pub struct OrtBackend {
    manifest: Manifest,
    prefill: GraphSession,
    decode: GraphSession,
    /// Per layer `[n_kv_head, context, head_dim]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    /// Calibration: `[min, max]` of every float value seen, per graph
    /// (prefill, decode).
    observed: Option<[Ranges; 2]>,
}

fn widen(ranges: &mut Ranges, name: &str, data: &[f32]) {
    let (lo, hi) = data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    let e = ranges.entry(name.to_string()).or_insert((lo, hi));
    e.0 = e.0.min(lo);
    e.1 = e.1.max(hi);
}

impl OrtBackend {
    /// Opens an exported model directory (manifest + graphs, each checked
    /// against the manifest) on the configured EP chain. With a QNN context
    /// cache configured, each graph gets its own cache file beside it.
    pub fn open(dir: &Path, config: &OrtConfig) -> Result<OrtBackend> {
        let manifest = Manifest::open(dir)?;
        let make = |entry: &crate::onnx::GraphEntry| -> Result<GraphSession> {
            let bytes = entry.load(dir)?;
            let mut cfg = config.clone();
            for ep in cfg.eps.iter_mut() {
                if let super::Ep::Qnn(q) = ep {
                    if let Some(c) = &q.context_cache {
                        q.context_cache = Some(c.join(format!(
                            "{}.qnn_ctx.onnx",
                            entry.file.trim_end_matches(".onnx")
                        )));
                    }
                }
            }
            session::create(&cfg, &bytes)
        };
        let prefill = make(&manifest.prefill)?;
        let decode = make(&manifest.decode)?;
        let slots = manifest.n_kv_head * manifest.context * manifest.head_dim;
        Ok(OrtBackend {
            keys: vec![vec![0.0; slots]; manifest.n_layer],
            values: vec![vec![0.0; slots]; manifest.n_layer],
            manifest,
            prefill,
            decode,
            len: 0,
            observed: None,
        })
    }

    /// The manifest the graphs were checked against.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Where the prefill and decode graphs' nodes run.
    pub fn placement(&self) -> (&Placement, &Placement) {
        (&self.prefill.placement, &self.decode.placement)
    }
    /// Positions in the cache.
    pub fn len(&self) -> usize {
        self.len
    }
    /// No position cached yet (after [`OrtBackend::open`] or a reset).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Forgets the cache (keeps the sessions).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some(&id) = tokens
            .iter()
            .find(|&&t| t as usize >= self.manifest.vocab_size)
        {
            return Err(Error::TokenOutOfRange {
                id,
                vocab: self.manifest.vocab_size,
            });
        }
        if self.len + tokens.len() > self.manifest.context {
            return Err(Error::ContextOverflow {
                needed: self.len + tokens.len(),
                context: self.manifest.context,
            });
        }
        Ok(())
    }

    /// Runs one graph over `tokens` (padded to the graph's width with the
    /// last token at the following positions, which stay masked and are
    /// overwritten later). Returns logits of the real tokens `[n, vocab]`.
    fn run(&mut self, decode: bool, tokens: &[u32]) -> Result<Vec<f32>> {
        let m = &self.manifest;
        let width = if decode { 1 } else { m.chunk };
        let (c, n_kv, hd, vocab) = (m.context, m.n_kv_head, m.head_dim, m.vocab_size);
        let pad = tokens.last().copied().unwrap_or(0);
        let ids: Vec<i64> = (0..width)
            .map(|i| *tokens.get(i).unwrap_or(&pad) as i64)
            .collect();
        let pos: Vec<i64> = (0..width).map(|i| (self.len + i) as i64).collect();
        let mask: Vec<i64> = (0..c)
            .map(|s| i64::from(s < self.len + tokens.len()))
            .collect();
        let kv_shape = [1, n_kv, c, hd];
        let names: Vec<(String, String)> = (0..m.n_layer)
            .map(|i| (past_key(i), past_value(i)))
            .collect();
        let (tok_shape, mask_shape) = ([1, width], [1, c]);
        let mut inputs: Vec<(&str, Input<'_>)> = vec![
            ("input_ids", Input::I64(&tok_shape, &ids)),
            ("position_ids", Input::I64(&tok_shape, &pos)),
            ("attention_mask", Input::I64(&mask_shape, &mask)),
        ];
        for (i, (k, v)) in names.iter().enumerate() {
            inputs.push((k.as_str(), Input::F32(&kv_shape, &self.keys[i])));
            inputs.push((v.as_str(), Input::F32(&kv_shape, &self.values[i])));
        }
        let graph = if decode {
            &mut self.decode
        } else {
            &mut self.prefill
        };
        let mut out = graph.run(&inputs)?;
        if let Some(obs) = self.observed.as_mut() {
            let r = &mut obs[usize::from(decode)];
            for (name, (_, data)) in &out {
                widen(r, name, data);
            }
            for (i, (k, v)) in names.iter().enumerate() {
                widen(r, k, &self.keys[i]);
                widen(r, v, &self.values[i]);
            }
        }
        let n_layer = m.n_layer;
        let mut keys = Vec::with_capacity(n_layer);
        let mut values = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let k = out
                .remove(&present_key(i))
                .ok_or_else(|| Error::Graph(format!("no output {}", present_key(i))))?;
            let v = out
                .remove(&present_value(i))
                .ok_or_else(|| Error::Graph(format!("no output {}", present_value(i))))?;
            keys.push(k.1);
            values.push(v.1);
        }
        let (_, logits) = out
            .remove("logits")
            .ok_or_else(|| Error::Graph("no output logits".into()))?;
        if logits.len() != width * vocab {
            return Err(Error::Graph(format!(
                "logits hold {} values, expected {}",
                logits.len(),
                width * vocab
            )));
        }
        // Commit only after every output was there.
        self.keys = keys;
        self.values = values;
        self.len += tokens.len();
        Ok(logits[..tokens.len() * vocab].to_vec())
    }

    /// Runs `tokens` at the next positions; returns the last token's logits.
    /// Full chunks go through the prefill graph, the remainder too when it
    /// fits the context with padding, else through the decode graph.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        self.chunks(tokens, false)
    }

    /// Runs `tokens` at the next positions and returns the logits of every
    /// token (`all`, `[n, vocab]`) or of the last one. One token goes
    /// through the decode graph; more go through the prefill graph chunk by
    /// chunk (see [`prefill`](Self::prefill)). A failure leaves every chunk
    /// run before it in the cache.
    pub fn forward_tokens(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        if tokens.len() == 1 {
            return self.run(true, tokens);
        }
        self.chunks(tokens, all)
    }

    fn chunks(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        let vocab = self.manifest.vocab_size;
        let mut out = Vec::new();
        let mut rest = tokens;
        while !rest.is_empty() {
            let chunk = self.manifest.chunk;
            let take = rest.len().min(chunk);
            let logits = if take == chunk || self.len + chunk <= self.manifest.context {
                self.run(false, &rest[..take])?
            } else {
                let mut l = Vec::with_capacity(take * vocab);
                for &t in &rest[..take] {
                    l.extend(self.run(true, &[t])?);
                }
                l
            };
            if all {
                out.extend_from_slice(&logits);
            } else {
                out = logits[logits.len() - vocab..].to_vec();
            }
            rest = &rest[take..];
        }
        Ok(out)
    }

    /// One token through the decode graph; its logits.
    pub fn decode(&mut self, token: u32) -> Result<Vec<f32>> {
        self.check_tokens(&[token])?;
        self.run(true, &[token])
    }

    /// Starts recording the range of every float value the graphs produce
    /// (for QDQ calibration; the graphs must list them as outputs).
    pub fn observe_ranges(&mut self) {
        self.observed = Some([Ranges::new(), Ranges::new()]);
    }

    /// The recorded ranges of the prefill and decode graphs.
    pub fn take_ranges(&mut self) -> Option<[Ranges; 2]> {
        self.observed.take()
    }

    /// The cache's first `len` positions, keys back in the model's order.
    pub fn export_kv(&self) -> KvSnapshot {
        let m = &self.manifest;
        let (c, hd, n_kv) = (m.context, m.head_dim, m.n_kv_head);
        let order = &m.key_dim_order;
        let take = |src: &Vec<f32>, permute: bool| {
            let mut out = vec![0f32; n_kv * self.len * hd];
            for h in 0..n_kv {
                for p in 0..self.len {
                    let row = &src[(h * c + p) * hd..(h * c + p + 1) * hd];
                    let dst = &mut out[(h * self.len + p) * hd..(h * self.len + p + 1) * hd];
                    for (j, &x) in row.iter().enumerate() {
                        dst[if permute {
                            order.get(j).copied().unwrap_or(j)
                        } else {
                            j
                        }] = x;
                    }
                }
            }
            out
        };
        KvSnapshot {
            len: self.len,
            n_kv_head: n_kv,
            head_dim: hd,
            keys: self.keys.iter().map(|k| take(k, true)).collect(),
            values: self.values.iter().map(|v| take(v, false)).collect(),
        }
    }

    /// Per head, the model dimension of each stored key dimension.
    fn key_order(&self) -> Vec<usize> {
        let order = &self.manifest.key_dim_order;
        (0..self.manifest.head_dim)
            .map(|j| order.get(j).copied().unwrap_or(j))
            .collect()
    }

    /// The shape the graphs need, and f16 keys and values: the graphs'
    /// cache is exchanged with the engine's bit for bit.
    fn check_cache_shape(&self, cache: &KvCache) -> Result<()> {
        cache
            .require_f16("an ONNX Runtime backend")
            .map_err(|e| Error::Kv(e.to_string()))?;
        let m = &self.manifest;
        if cache.n_layer() != m.n_layer
            || cache.n_kv_head() != m.n_kv_head
            || cache.head_dim() != m.head_dim
        {
            return Err(Error::Kv(format!(
                "engine cache of {} layers x {} heads x {} dims, graphs need {} x {} x {}",
                cache.n_layer(),
                cache.n_kv_head(),
                cache.head_dim(),
                m.n_layer,
                m.n_kv_head,
                m.head_dim
            )));
        }
        Ok(())
    }

    /// Whether position `p` of every layer holds, bit for bit, what the
    /// engine cache holds there (own copies are f16-exact once committed).
    fn row_matches(&self, cache: &KvCache, p: usize, order: &[usize]) -> bool {
        let (c, hd, cap) = (
            self.manifest.context,
            self.manifest.head_dim,
            cache.capacity(),
        );
        (0..self.manifest.n_layer).all(|i| {
            let Ok((lk, lv)) = cache.layer(i).f16("an ONNX Runtime backend") else {
                return false;
            };
            (0..self.manifest.n_kv_head).all(|h| {
                let (own, theirs) = ((h * c + p) * hd, (h * cap + p) * hd);
                (0..hd).all(|j| {
                    f16::from_f32(self.keys[i][own + j]).to_bits()
                        == lk[theirs + order[j]].to_bits()
                        && f16::from_f32(self.values[i][own + j]).to_bits()
                            == lv[theirs + j].to_bits()
                })
            })
        })
    }

    /// Makes the graphs' cache hold the engine cache's first `cache.len()`
    /// positions. What this backend committed itself and still matches is
    /// kept: the prefix up to its last committed position is trusted when
    /// that position's row is bit-identical in every layer (rows depend on
    /// every earlier token, so another prefix cannot reproduce it); the rest
    /// is converted from f16. Returns how many positions were converted
    /// (the hand-over from another backend).
    pub fn sync_from(&mut self, cache: &KvCache) -> Result<usize> {
        self.check_cache_shape(cache)?;
        let m = &self.manifest;
        let (c, hd, n_kv, cap) = (m.context, m.head_dim, m.n_kv_head, cache.capacity());
        if cache.len() > c {
            return Err(Error::ContextOverflow {
                needed: cache.len(),
                context: c,
            });
        }
        let order = self.key_order();
        let shared = cache.len().min(self.len);
        let keep = if shared > 0 && self.row_matches(cache, shared - 1, &order) {
            shared
        } else {
            0
        };
        for i in 0..m.n_layer {
            let (lk, lv) = f16_planes(cache.layer(i))?;
            for h in 0..n_kv {
                for p in keep..cache.len() {
                    let (own, theirs) = ((h * c + p) * hd, (h * cap + p) * hd);
                    for (j, &src) in order.iter().enumerate() {
                        self.keys[i][own + j] = lk[theirs + src].to_f32();
                        self.values[i][own + j] = lv[theirs + j].to_f32();
                    }
                }
            }
        }
        self.len = cache.len();
        Ok(cache.len() - keep)
    }

    /// Writes positions `from..len()` into the engine cache (f16, keys in
    /// the model's order) and sets its length; the own copies of those
    /// rows are rounded to the same f16 values, so both caches hold the
    /// same numbers and [`sync_from`](Self::sync_from) recognises them.
    pub fn commit_to(&mut self, cache: &mut KvCache, from: usize) -> Result<()> {
        self.check_cache_shape(cache)?;
        if self.len > cache.capacity() || from > self.len {
            return Err(Error::ContextOverflow {
                needed: self.len,
                context: cache.capacity(),
            });
        }
        let m = &self.manifest;
        let (c, hd, n_kv, cap) = (m.context, m.head_dim, m.n_kv_head, cache.capacity());
        let order = self.key_order();
        for i in 0..m.n_layer {
            let (lk, lv) = cache
                .layer_mut(i)
                .f16_mut("an ONNX Runtime backend")
                .map_err(|e| Error::Kv(e.to_string()))?;
            for h in 0..n_kv {
                for p in from..self.len {
                    let (own, theirs) = ((h * c + p) * hd, (h * cap + p) * hd);
                    for (j, &dst) in order.iter().enumerate() {
                        let k = f16::from_f32(self.keys[i][own + j]);
                        let v = f16::from_f32(self.values[i][own + j]);
                        self.keys[i][own + j] = k.to_f32();
                        self.values[i][own + j] = v.to_f32();
                        lk[theirs + dst] = k;
                        lv[theirs + j] = v;
                    }
                }
            }
        }
        cache
            .set_len(self.len)
            .map_err(|e| Error::Kv(e.to_string()))
    }

    /// Replaces the cache with `kv` (from [`export_kv`](Self::export_kv) or
    /// the CPU backend's cache converted to f32).
    pub fn import_kv(&mut self, kv: &KvSnapshot) -> Result<()> {
        let m = &self.manifest;
        let (c, hd, n_kv) = (m.context, m.head_dim, m.n_kv_head);
        if kv.n_kv_head != n_kv
            || kv.head_dim != hd
            || kv.keys.len() != m.n_layer
            || kv.values.len() != m.n_layer
        {
            return Err(Error::Kv(format!(
                "snapshot of {} layers x {} heads x {} dims, graphs need {} x {} x {}",
                kv.keys.len(),
                kv.n_kv_head,
                kv.head_dim,
                m.n_layer,
                n_kv,
                hd
            )));
        }
        if kv.len > c {
            return Err(Error::ContextOverflow {
                needed: kv.len,
                context: c,
            });
        }
        let n = n_kv * kv.len * hd;
        if kv.keys.iter().chain(&kv.values).any(|l| l.len() != n) {
            return Err(Error::Kv(format!("a layer does not hold {n} values")));
        }
        let order = &m.key_dim_order;
        let put = |src: &Vec<f32>, dst: &mut Vec<f32>, permute: bool| {
            dst.iter_mut().for_each(|x| *x = 0.0);
            for h in 0..n_kv {
                for p in 0..kv.len {
                    let row = &src[(h * kv.len + p) * hd..(h * kv.len + p + 1) * hd];
                    let out = &mut dst[(h * c + p) * hd..(h * c + p + 1) * hd];
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = row[if permute {
                            order.get(j).copied().unwrap_or(j)
                        } else {
                            j
                        }];
                    }
                }
            }
        };
        for i in 0..m.n_layer {
            put(&kv.keys[i], &mut self.keys[i], true);
            put(&kv.values[i], &mut self.values[i], false);
        }
        self.len = kv.len;
        Ok(())
    }
}
