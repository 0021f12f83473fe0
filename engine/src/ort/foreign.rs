//! [`ForeignDecoder`]: a decoder exported by another tool (Hugging Face
//! optimum, onnxruntime-genai's builder, a hand-made graph) in the usual
//! layout, as an engine [`Backend`] on ONNX Runtime.
//!
//! A foreign export is a directory with `model.onnx` (its weights inline or
//! in external data files beside it) and the checkpoint's `config.json`.
//! Its graph has dynamic shapes and the decoder I/O names everyone uses:
//!
//! ```text
//! input_ids                      int64 [batch, seq]
//! attention_mask   (optional)    int64 [batch, past + seq]
//! position_ids     (optional)    int64 [batch, seq]
//! past_key_values.N.key/value    f32|f16 [batch, n_kv_head, past, head_dim]
//! logits                         f32|f16 [batch, seq, vocab]
//! present.N.key/value            f32|f16 [batch, n_kv_head, past + seq, head_dim]
//! ```
//!
//! Inputs and outputs are found by name and checked against `config.json`
//! (and `config.json` against the engine's [`DecoderSpec`]) before anything
//! runs; every disagreement is a typed error.
//!
//! The tokenizer, chat template and [`DecoderSpec`] come from a GGUF of the
//! same model (the engine's tokenizer reads GGUF metadata, not
//! `tokenizer.json`): the graph replaces the weights, not the model
//! description. That also fixes the key layout: Hugging Face checkpoints
//! rotate the two halves of each head (NeoX order) while llama.cpp's
//! converter permutes the Q/K rows of llama-family GGUFs so rotated pairs
//! are adjacent ([`RopeStyle::Interleaved`](sotto_models::spec::RopeStyle)).
//! Keys cross between the graph and the engine's [`KvCache`] through that
//! permutation, so the cache holds what the CPU backend would have written
//! and either backend can continue from the other's positions.
//!
//! The engine cache is the source of truth, as for [`OrtDecoder`]
//! (super::OrtDecoder): before a pass the graph's own past is brought in
//! line with it (only positions this backend did not write are converted),
//! after the pass the new positions are written back. The past grows with
//! each pass (`past` of length P in, `present` of length P + n out), so the
//! graph costs nothing for context it does not use, and batch is always 1.

use std::path::{Path, PathBuf};

use half::f16;
use sotto_models::spec::DecoderSpec;

use super::decoder::chain_name;
use super::runtime::OrtConfig;
use super::session::{self, GraphSession, Input};
use super::{Error, Result};
use crate::backend::{Backend, LogitsFor};
use crate::kv_cache::KvCache;
use crate::onnx::proto::{DataType, ModelProto};

pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.onnx";

/// The hyper-parameters of `config.json` the graph is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignConfig {
    /// `num_hidden_layers`.
    pub n_layer: usize,
    /// `num_attention_heads`.
    pub n_head: usize,
    /// `num_key_value_heads` (default: `n_head`).
    pub n_kv_head: usize,
    /// `head_dim` (default: `hidden_size / n_head`).
    pub head_dim: usize,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// Longest sequence the model was trained for; the cache is capped there.
    pub max_positions: usize,
    /// `bos_token_id` (the first one if a list).
    pub bos: Option<u32>,
    /// `eos_token_id`, one or several.
    pub eos: Vec<u32>,
}

impl ForeignConfig {
    /// Reads a Hugging Face `config.json`. `head_dim` defaults to
    /// `hidden_size / num_attention_heads` and `num_key_value_heads` to
    /// `num_attention_heads`, as in transformers.
    pub fn open(path: &Path) -> Result<ForeignConfig> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        // Multimodal checkpoints nest the decoder's fields.
        let v = v.get("text_config").cloned().unwrap_or(v);
        let num = |key: &str| -> Option<usize> {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
        };
        let need = |key: &'static str| num(key).ok_or_else(|| bad(format!("no integer {key}")));
        let n_layer = need("num_hidden_layers")?;
        let n_head = need("num_attention_heads")?;
        let n_kv_head = num("num_key_value_heads").unwrap_or(n_head);
        let head_dim = match num("head_dim") {
            Some(h) => h,
            None => {
                let hidden = need("hidden_size")?;
                if n_head == 0 || hidden % n_head != 0 {
                    return Err(bad(format!(
                        "hidden_size {hidden} is not a multiple of num_attention_heads {n_head}"
                    )));
                }
                hidden / n_head
            }
        };
        let ids = |key: &str| -> Vec<u32> {
            match v.get(key) {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect(),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            }
        };
        if n_layer == 0 || n_kv_head == 0 || head_dim == 0 {
            return Err(bad("zero layers, KV heads or head_dim".into()));
        }
        Ok(ForeignConfig {
            n_layer,
            n_head,
            n_kv_head,
            head_dim,
            vocab_size: need("vocab_size")?,
            max_positions: need("max_position_embeddings")?,
            bos: ids("bos_token_id").first().copied(),
            eos: ids("eos_token_id"),
        })
    }
}

/// Element type of the past/present tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
}

/// The graph's decoder I/O, found by name and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignIo {
    /// Layers, counted from the `past_key_values.N.key` inputs.
    pub n_layer: usize,
    /// The graph takes `attention_mask` (fed all ones).
    pub has_attention_mask: bool,
    /// The graph takes `position_ids` (fed the absolute positions).
    pub has_position_ids: bool,
    /// Element type of the past/present tensors.
    pub kv_dtype: KvDtype,
}

type Tensor = (String, i32, Vec<Option<i64>>);

fn tensors(list: &[crate::onnx::proto::ValueInfoProto], skip: &[&str]) -> Vec<Tensor> {
    list.iter()
        .filter(|t| !skip.contains(&t.name.as_str()))
        .map(|t| {
            let (ty, shape) = t.dtype_and_shape().unwrap_or((0, Vec::new()));
            (t.name.clone(), ty, shape)
        })
        .collect()
}

fn dtype_name(ty: i32) -> String {
    match DataType::from_i32(ty) {
        Some(d) => format!("{d:?}").to_lowercase(),
        None => format!("ONNX type {ty}"),
    }
}

impl ForeignIo {
    /// Discovers the decoder I/O of `model` and checks it against `config`.
    pub(crate) fn discover(
        path: &Path,
        model: &ModelProto,
        config: &ForeignConfig,
    ) -> Result<ForeignIo> {
        let graph = model.graph.as_ref().ok_or_else(|| Error::MissingIo {
            model: path.to_path_buf(),
            kind: "graph",
            name: "main graph".into(),
        })?;
        let init: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = tensors(&graph.input, &init);
        let outputs = tensors(&graph.output, &[]);
        let find = |list: &[Tensor], name: &str| list.iter().find(|t| t.0 == name).cloned();
        let missing = |kind: &'static str, name: &str| Error::MissingIo {
            model: path.to_path_buf(),
            kind,
            name: name.to_string(),
        };
        let unsupported = |t: &Tensor, supported: &'static str| Error::UnsupportedDtype {
            model: path.to_path_buf(),
            name: t.0.clone(),
            dtype: dtype_name(t.1),
            supported,
        };
        let mismatch = |field: &'static str, graph: usize, config: usize| Error::ConfigMismatch {
            model: path.to_path_buf(),
            field,
            graph,
            config,
        };
        let int64 = DataType::Int64 as i32;
        for name in ["input_ids", "attention_mask", "position_ids"] {
            match find(&inputs, name) {
                Some(t) if t.1 != int64 => return Err(unsupported(&t, "int64")),
                None if name == "input_ids" => return Err(missing("input", name)),
                _ => {}
            }
        }

        // Layers: however many past_key_values.N.key the graph takes.
        let n_layer = inputs
            .iter()
            .filter_map(|t| {
                t.0.strip_prefix("past_key_values.")?
                    .strip_suffix(".key")?
                    .parse::<usize>()
                    .ok()
            })
            .map(|n| n + 1)
            .max()
            .ok_or_else(|| missing("input", "past_key_values.0.key"))?;
        if n_layer != config.n_layer {
            return Err(mismatch("num_hidden_layers", n_layer, config.n_layer));
        }

        let logits = find(&outputs, "logits").ok_or_else(|| missing("output", "logits"))?;
        let float_type = |t: &Tensor| match DataType::from_i32(t.1) {
            Some(DataType::Float) => Ok(KvDtype::F32),
            Some(DataType::Float16) => Ok(KvDtype::F16),
            _ => Err(unsupported(t, "float32 or float16")),
        };
        float_type(&logits)?;
        if let Some(Some(v)) = logits.2.get(2) {
            if *v as usize != config.vocab_size {
                return Err(mismatch("vocab_size", *v as usize, config.vocab_size));
            }
        }
        let mut kv_dtype = None;
        for i in 0..n_layer {
            for kind in ["key", "value"] {
                let names = [
                    ("input", format!("past_key_values.{i}.{kind}")),
                    ("output", format!("present.{i}.{kind}")),
                ];
                for (io, name) in names {
                    let list = if io == "input" { &inputs } else { &outputs };
                    let t = find(list, &name).ok_or_else(|| missing(io, &name))?;
                    let ty = float_type(&t)?;
                    if *kv_dtype.get_or_insert(ty) != ty {
                        return Err(unsupported(&t, "one element type for every KV tensor"));
                    }
                    if t.2.len() != 4 {
                        return Err(Error::Graph(format!(
                            "{}: {name} has rank {}, a KV tensor is [batch, kv_heads, positions, head_dim]",
                            path.display(),
                            t.2.len()
                        )));
                    }
                    if let Some(h) = t.2[1] {
                        if h as usize != config.n_kv_head {
                            return Err(mismatch(
                                "num_key_value_heads",
                                h as usize,
                                config.n_kv_head,
                            ));
                        }
                    }
                    if let Some(d) = t.2[3] {
                        if d as usize != config.head_dim {
                            return Err(mismatch("head_dim", d as usize, config.head_dim));
                        }
                    }
                }
            }
        }
        // Anything else would be left unfed (optimum's merged decoders take
        // a `use_cache_branch` flag, for instance): say so before running.
        let fed = |name: &str| {
            ["input_ids", "attention_mask", "position_ids"].contains(&name)
                || name
                    .strip_prefix("past_key_values.")
                    .and_then(|r| r.strip_suffix(".key").or_else(|| r.strip_suffix(".value")))
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n < n_layer)
        };
        if let Some(t) = inputs.iter().find(|t| !fed(&t.0)) {
            return Err(Error::UnexpectedInput {
                model: path.to_path_buf(),
                name: t.0.clone(),
            });
        }
        Ok(ForeignIo {
            n_layer,
            has_attention_mask: find(&inputs, "attention_mask").is_some(),
            has_position_ids: find(&inputs, "position_ids").is_some(),
            kv_dtype: kv_dtype.unwrap_or(KvDtype::F32),
        })
    }
}

/// `config.json` against the engine's model description.
fn check_spec(dir: &Path, config: &ForeignConfig, spec: &DecoderSpec) -> Result<()> {
    let fields = [
        ("n_layer", config.n_layer, spec.n_layer),
        ("n_kv_head", config.n_kv_head, spec.n_kv_head),
        ("head_dim", config.head_dim, spec.head_dim),
        ("vocab_size", config.vocab_size, spec.vocab_size),
    ];
    match fields.iter().find(|(_, c, s)| c != s) {
        Some(&(field, graphs, model)) => Err(Error::ModelMismatch {
            dir: dir.to_path_buf(),
            field,
            graphs,
            model,
        }),
        None => Ok(()),
    }
}

/// Whether `path` (a directory or a `.onnx` file) looks like a foreign
/// export: a graph with a `config.json` beside it and no sotto manifest.
pub fn is_foreign_export(path: &Path) -> bool {
    let (dir, model) = locate(path);
    model.is_file()
        && dir.join(CONFIG_FILE).is_file()
        && !dir.join(crate::onnx::manifest::MANIFEST_FILE).is_file()
}

/// The directory and graph file of a foreign export given as either.
fn locate(path: &Path) -> (PathBuf, PathBuf) {
    if path.extension().is_some_and(|e| e == "onnx") {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (dir, path.to_path_buf())
    } else {
        (path.to_path_buf(), path.join(MODEL_FILE))
    }
}

/// A decoder exported by another tool (optimum's `model.onnx` beside a
/// Hugging Face `config.json`: `input_ids`, optional `attention_mask` and
/// `position_ids`, `past_key_values.N.key/value` in, `logits` and
/// `present.N.key/value` out, dynamic shapes) as an engine [`Backend`].
/// Runs on ONNX Runtime's CPU EP or any EP that takes dynamic shapes; an
/// NPU-only chain refuses it ([`Error::DynamicShape`]). The sequence is
/// bounded by `max_position_embeddings`. `Send`; a pass takes `&mut self`.
pub struct ForeignDecoder {
    graph: GraphSession,
    io: ForeignIo,
    config: ForeignConfig,
    spec: DecoderSpec,
    model_path: PathBuf,
    name: &'static str,
    chain: String,
    npu_only: bool,
    /// Per layer, the graph's past `[n_kv_head, len, head_dim]` (f32, keys
    /// in the graph's dimension order), rounded to the f16 values the
    /// engine cache holds.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    /// Per head, the model (cache) dimension of each graph key dimension.
    key_order: Vec<usize>,
    last_import: usize,
}

impl std::fmt::Debug for ForeignDecoder {
    // Sizes only: the cached keys and values derive from private messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForeignDecoder")
            .field("model", &self.model_path)
            .field("io", &self.io)
            .field("chain", &self.chain)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl ForeignDecoder {
    /// Opens the export at `path` (a directory holding `model.onnx` and
    /// `config.json`, or the `.onnx` file itself) for the model `spec`
    /// describes. The graph's I/O is checked against `config.json`, and
    /// `config.json` against `spec`, before the session is built.
    pub fn open(spec: &DecoderSpec, path: &Path, config: &OrtConfig) -> Result<ForeignDecoder> {
        let (dir, model_path) = locate(path);
        let hp = ForeignConfig::open(&dir.join(CONFIG_FILE))?;
        let bytes = std::fs::read(&model_path).map_err(|source| Error::Io {
            path: model_path.clone(),
            source,
        })?;
        let proto = ModelProto::from_bytes(&bytes).map_err(|e| {
            Error::Graph(format!("{}: not an ONNX model: {e}", model_path.display()))
        })?;
        let io = ForeignIo::discover(&model_path, &proto, &hp)?;
        check_spec(&dir, &hp, spec)?;
        drop(proto);
        let graph = session::create_with(config, &bytes, Some(&model_path))?;
        let key_order = crate::onnx::export::rope_row_permutation(spec, 1);
        let chain = config
            .eps
            .iter()
            .map(|e| e.ort_name().trim_end_matches("ExecutionProvider"))
            .collect::<Vec<_>>()
            .join(" → ");
        Ok(ForeignDecoder {
            graph,
            keys: vec![Vec::new(); io.n_layer],
            values: vec![Vec::new(); io.n_layer],
            io,
            config: hp,
            spec: spec.clone(),
            model_path,
            name: chain_name(&config.eps),
            chain,
            npu_only: config.npu_only,
            len: 0,
            key_order,
            last_import: 0,
        })
    }

    /// The decoder I/O found in the graph.
    pub fn io(&self) -> &ForeignIo {
        &self.io
    }
    /// The hyper-parameters read from `config.json`.
    pub fn config(&self) -> &ForeignConfig {
        &self.config
    }
    /// The longest sequence this backend runs (`max_position_embeddings`).
    pub fn context(&self) -> usize {
        self.config.max_positions
    }
    /// Positions the last pass converted from the engine cache.
    pub fn last_import(&self) -> usize {
        self.last_import
    }
    /// Where the graph's nodes run, one line.
    pub fn placement_report(&self) -> String {
        format!("foreign graph: {}", self.graph.placement)
    }

    /// The graph's shape, and f16 keys and values (exchanged bit for bit).
    fn cache_fits(&self, cache: &KvCache) -> Result<()> {
        cache
            .require_f16("a foreign ONNX decoder")
            .map_err(|e| Error::Kv(e.to_string()))?;
        let c = &self.config;
        if cache.n_layer() != c.n_layer
            || cache.n_kv_head() != c.n_kv_head
            || cache.head_dim() != c.head_dim
        {
            return Err(Error::Kv(format!(
                "engine cache of {} layers x {} heads x {} dims, the graph needs {} x {} x {}",
                cache.n_layer(),
                cache.n_kv_head(),
                cache.head_dim(),
                c.n_layer,
                c.n_kv_head,
                c.head_dim
            )));
        }
        Ok(())
    }

    /// Whether own position `p` equals, bit for bit in f16, what the engine
    /// cache holds there in every layer.
    fn row_matches(&self, cache: &KvCache, p: usize) -> bool {
        let (hd, n_kv, cap, len) = (
            self.config.head_dim,
            self.config.n_kv_head,
            cache.capacity(),
            self.len,
        );
        (0..self.io.n_layer).all(|i| {
            let Ok((lk, lv)) = cache.layer(i).f16("a foreign ONNX decoder") else {
                return false;
            };
            (0..n_kv).all(|h| {
                let (own, theirs) = ((h * len + p) * hd, (h * cap + p) * hd);
                (0..hd).all(|j| {
                    f16::from_f32(self.keys[i][own + j]).to_bits()
                        == lk[theirs + self.key_order[j]].to_bits()
                        && f16::from_f32(self.values[i][own + j]).to_bits()
                            == lv[theirs + j].to_bits()
                })
            })
        })
    }

    /// Makes the own past hold the engine cache's first `cache.len()`
    /// positions: the own prefix is kept up to the last shared position when
    /// that row is bit-identical in every layer (a row depends on every
    /// earlier token, so another history cannot reproduce it), the rest is
    /// converted from f16. Returns the number of converted positions.
    fn sync_from(&mut self, cache: &KvCache) -> Result<usize> {
        self.cache_fits(cache)?;
        let (hd, n_kv, cap, new_len) = (
            self.config.head_dim,
            self.config.n_kv_head,
            cache.capacity(),
            cache.len(),
        );
        let shared = new_len.min(self.len);
        let keep = if shared > 0 && self.row_matches(cache, shared - 1) {
            shared
        } else {
            0
        };
        if keep == new_len && new_len == self.len {
            return Ok(0);
        }
        let old_len = self.len;
        for i in 0..self.io.n_layer {
            let (lk, lv) = cache
                .layer(i)
                .f16("a foreign ONNX decoder")
                .map_err(|e| Error::Kv(e.to_string()))?;
            let mut k = vec![0f32; n_kv * new_len * hd];
            let mut v = vec![0f32; n_kv * new_len * hd];
            for h in 0..n_kv {
                let (dst, src) = (h * new_len * hd, h * old_len * hd);
                k[dst..dst + keep * hd].copy_from_slice(&self.keys[i][src..src + keep * hd]);
                v[dst..dst + keep * hd].copy_from_slice(&self.values[i][src..src + keep * hd]);
                for p in keep..new_len {
                    let (own, theirs) = ((h * new_len + p) * hd, (h * cap + p) * hd);
                    for (j, &m) in self.key_order.iter().enumerate() {
                        k[own + j] = lk[theirs + m].to_f32();
                        v[own + j] = lv[theirs + j].to_f32();
                    }
                }
            }
            self.keys[i] = k;
            self.values[i] = v;
        }
        self.len = new_len;
        Ok(new_len - keep)
    }

    /// Runs the graph over `tokens` after the own past; returns the logits
    /// `[n, vocab]` and the presents (not yet adopted).
    #[allow(clippy::type_complexity)]
    fn run(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        let (n, p) = (tokens.len(), self.len);
        let (n_kv, hd, vocab) = (
            self.config.n_kv_head,
            self.config.head_dim,
            self.config.vocab_size,
        );
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let pos: Vec<i64> = (p..p + n).map(|x| x as i64).collect();
        let mask = vec![1i64; p + n];
        let (tok_shape, mask_shape, past_shape) = ([1, n], [1, p + n], [1, n_kv, p, hd]);
        let names: Vec<[String; 4]> = (0..self.io.n_layer)
            .map(|i| {
                [
                    format!("past_key_values.{i}.key"),
                    format!("past_key_values.{i}.value"),
                    format!("present.{i}.key"),
                    format!("present.{i}.value"),
                ]
            })
            .collect();
        let halves: Vec<(Vec<f16>, Vec<f16>)> = match self.io.kv_dtype {
            KvDtype::F16 => self
                .keys
                .iter()
                .zip(&self.values)
                .map(|(k, v)| {
                    (
                        k.iter().map(|&x| f16::from_f32(x)).collect(),
                        v.iter().map(|&x| f16::from_f32(x)).collect(),
                    )
                })
                .collect(),
            KvDtype::F32 => Vec::new(),
        };
        let mut inputs: Vec<(&str, Input<'_>)> = vec![("input_ids", Input::I64(&tok_shape, &ids))];
        if self.io.has_attention_mask {
            inputs.push(("attention_mask", Input::I64(&mask_shape, &mask)));
        }
        if self.io.has_position_ids {
            inputs.push(("position_ids", Input::I64(&tok_shape, &pos)));
        }
        for (i, nm) in names.iter().enumerate() {
            match self.io.kv_dtype {
                KvDtype::F32 => {
                    inputs.push((nm[0].as_str(), Input::F32(&past_shape, &self.keys[i])));
                    inputs.push((nm[1].as_str(), Input::F32(&past_shape, &self.values[i])));
                }
                KvDtype::F16 => {
                    inputs.push((nm[0].as_str(), Input::F16(&past_shape, &halves[i].0)));
                    inputs.push((nm[1].as_str(), Input::F16(&past_shape, &halves[i].1)));
                }
            }
        }
        let mut out = self.graph.run(&inputs)?;
        let mut take = |name: &str, want: &[i64]| -> Result<Vec<f32>> {
            let (shape, data) = out
                .remove(name)
                .ok_or_else(|| Error::Graph(format!("the graph returned no {name}")))?;
            if shape != want {
                return Err(Error::Graph(format!(
                    "{name} has shape {shape:?}, expected {want:?}"
                )));
            }
            Ok(data)
        };
        let logits = take("logits", &[1, n as i64, vocab as i64])?;
        let present = [1, n_kv as i64, (p + n) as i64, hd as i64];
        let mut keys = Vec::with_capacity(names.len());
        let mut values = Vec::with_capacity(names.len());
        for nm in &names {
            keys.push(take(&nm[2], &present)?);
            values.push(take(&nm[3], &present)?);
        }
        Ok((logits, keys, values))
    }

    /// Adopts the presents of a pass that started at `from` and writes its
    /// new positions to the engine cache (f16, keys in the model's order),
    /// rounding the own copies to the same values.
    fn commit(
        &mut self,
        cache: &mut KvCache,
        from: usize,
        mut keys: Vec<Vec<f32>>,
        mut values: Vec<Vec<f32>>,
    ) -> Result<()> {
        let (hd, n_kv, cap) = (
            self.config.head_dim,
            self.config.n_kv_head,
            cache.capacity(),
        );
        let len = keys.first().map_or(from, |k| k.len() / (n_kv * hd));
        if len > cap {
            return Err(Error::ContextOverflow {
                needed: len,
                context: cap,
            });
        }
        for (i, (k, v)) in keys.iter_mut().zip(values.iter_mut()).enumerate() {
            let (lk, lv) = cache
                .layer_mut(i)
                .f16_mut("a foreign ONNX decoder")
                .map_err(|e| Error::Kv(e.to_string()))?;
            for h in 0..n_kv {
                for p in from..len {
                    let (own, theirs) = ((h * len + p) * hd, (h * cap + p) * hd);
                    for (j, &m) in self.key_order.iter().enumerate() {
                        let (kh, vh) = (f16::from_f32(k[own + j]), f16::from_f32(v[own + j]));
                        k[own + j] = kh.to_f32();
                        v[own + j] = vh.to_f32();
                        lk[theirs + m] = kh;
                        lv[theirs + j] = vh;
                    }
                }
            }
        }
        self.keys = keys;
        self.values = values;
        self.len = len;
        cache.set_len(len).map_err(|e| Error::Kv(e.to_string()))
    }

    fn engine_error(&self, e: Error) -> crate::Error {
        crate::Error::Ort {
            backend: self.name,
            source: e,
        }
    }
}

impl Backend for ForeignDecoder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    fn new_cache(&self, capacity: usize) -> crate::Result<KvCache> {
        let c = &self.config;
        KvCache::new(
            c.n_layer,
            c.n_kv_head,
            c.head_dim,
            capacity.min(self.context()),
            Default::default(),
        )
    }

    fn forward(
        &mut self,
        cache: &mut KvCache,
        tokens: &[u32],
        which: LogitsFor,
    ) -> crate::Result<Vec<f32>> {
        let start = crate::backend::check_forward(cache, tokens, self.config.vocab_size)?;
        if start + tokens.len() > self.context() {
            return Err(crate::Error::ContextOverflow {
                prompt_tokens: tokens.len(),
                cached: start,
                reserve: 0,
                context: self.context(),
            });
        }
        self.last_import = self.sync_from(cache).map_err(|e| self.engine_error(e))?;
        // Nothing is adopted until the pass succeeded: on error both the
        // engine cache and the own past are as they were.
        let (mut logits, keys, values) = self.run(tokens).map_err(|e| self.engine_error(e))?;
        self.commit(cache, start, keys, values)
            .map_err(|e| self.engine_error(e))?;
        if which == LogitsFor::Last {
            let vocab = self.config.vocab_size;
            logits.drain(..logits.len() - vocab);
        }
        Ok(logits)
    }

    fn describe(&self) -> String {
        format!(
            "onnxruntime [{}]{}, foreign decoder {} ({} layers, {:?} KV, dynamic past{}{}); graph: {}",
            self.chain,
            if self.npu_only { ", CPU fallback refused" } else { "" },
            self.model_path.display(),
            self.io.n_layer,
            self.io.kv_dtype,
            if self.io.has_attention_mask { ", attention_mask" } else { "" },
            if self.io.has_position_ids { ", position_ids" } else { "" },
            self.graph.placement,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{GraphProto, ValueInfoProto};

    fn config(n_layer: usize) -> ForeignConfig {
        ForeignConfig {
            n_layer,
            n_head: 4,
            n_kv_head: 2,
            head_dim: 8,
            vocab_size: 100,
            max_positions: 64,
            bos: None,
            eos: vec![],
        }
    }

    /// A decoder signature of `n_layer` layers (-1 = symbolic axis), with
    /// `kv` as the KV element type and `skip` left out.
    fn model(n_layer: usize, kv: i32, skip: &str) -> ModelProto {
        let t = |name: &str, ty: DataType, shape: &[i64]| ValueInfoProto::tensor(name, ty, shape);
        let mut input = vec![
            t("input_ids", DataType::Int64, &[-1, -1]),
            t("attention_mask", DataType::Int64, &[-1, -1]),
        ];
        let mut output = vec![t("logits", DataType::Float, &[-1, -1, 100])];
        for i in 0..n_layer {
            for kind in ["key", "value"] {
                let mut past = t(
                    &format!("past_key_values.{i}.{kind}"),
                    DataType::Float,
                    &[-1, 2, -1, 8],
                );
                let mut present = t(
                    &format!("present.{i}.{kind}"),
                    DataType::Float,
                    &[-1, 2, -1, 8],
                );
                for v in [&mut past, &mut present] {
                    if let Some(tt) = v.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
                        tt.elem_type = kv;
                    }
                }
                input.push(past);
                output.push(present);
            }
        }
        input.retain(|v| v.name != skip);
        output.retain(|v| v.name != skip);
        ModelProto {
            graph: Some(GraphProto {
                input,
                output,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn discover(m: &ModelProto, c: &ForeignConfig) -> Result<ForeignIo> {
        ForeignIo::discover(Path::new("model.onnx"), m, c)
    }

    #[test]
    fn decoder_io_is_found_by_name() {
        let io = discover(&model(2, DataType::Float16 as i32, ""), &config(2)).unwrap();
        assert_eq!(io.n_layer, 2);
        assert_eq!(io.kv_dtype, KvDtype::F16);
        assert!(io.has_attention_mask && !io.has_position_ids);
    }

    #[test]
    fn every_disagreement_is_a_typed_error() {
        let f32 = DataType::Float as i32;
        assert!(matches!(
            discover(&model(2, f32, "input_ids"), &config(2)),
            Err(Error::MissingIo { kind: "input", ref name, .. }) if name == "input_ids"
        ));
        assert!(matches!(
            discover(&model(2, f32, "present.0.key"), &config(2)),
            Err(Error::MissingIo { kind: "output", ref name, .. }) if name == "present.0.key"
        ));
        assert!(matches!(
            discover(&model(2, f32, "past_key_values.1.value"), &config(2)),
            Err(Error::MissingIo { kind: "input", .. })
        ));
        assert!(matches!(
            discover(&model(2, f32, ""), &config(3)),
            Err(Error::ConfigMismatch {
                field: "num_hidden_layers",
                graph: 2,
                config: 3,
                ..
            })
        ));
        let mut extra = model(1, f32, "");
        if let Some(g) = extra.graph.as_mut() {
            g.input.push(ValueInfoProto::tensor(
                "use_cache_branch",
                DataType::Bool,
                &[1],
            ));
        }
        assert!(matches!(
            discover(&extra, &config(1)),
            Err(Error::UnexpectedInput { ref name, .. }) if name == "use_cache_branch"
        ));
        // bfloat16 (ONNX type 16) KV tensors
        let err = discover(&model(1, 16, ""), &config(1)).unwrap_err();
        assert!(matches!(err, Error::UnsupportedDtype { .. }), "{err}");
        assert!(err.to_string().contains("ONNX type 16"), "{err}");
        let mut c = config(1);
        c.n_kv_head = 4;
        assert!(matches!(
            discover(&model(1, f32, ""), &c),
            Err(Error::ConfigMismatch {
                field: "num_key_value_heads",
                graph: 2,
                config: 4,
                ..
            })
        ));
        let mut c = config(1);
        c.vocab_size = 99;
        assert!(matches!(
            discover(&model(1, f32, ""), &c),
            Err(Error::ConfigMismatch {
                field: "vocab_size",
                ..
            })
        ));
    }

    #[test]
    fn config_json_defaults_follow_transformers() {
        let dir = std::env::temp_dir().join(format!("sotto-foreign-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CONFIG_FILE);
        std::fs::write(
            &path,
            r#"{"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32,
               "vocab_size": 100, "max_position_embeddings": 64, "eos_token_id": [5, 7]}"#,
        )
        .unwrap();
        let c = ForeignConfig::open(&path).unwrap();
        assert_eq!(
            (c.n_kv_head, c.head_dim, c.eos.clone(), c.bos),
            (4, 8, vec![5, 7], None)
        );
        std::fs::write(&path, r#"{"num_attention_heads": 4}"#).unwrap();
        assert!(matches!(
            ForeignConfig::open(&path),
            Err(Error::Config { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
