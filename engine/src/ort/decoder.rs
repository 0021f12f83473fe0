//! [`OrtDecoder`]: exported graphs as an engine [`Backend`], so a
//! [`Session`](crate::Session) runs on ONNX Runtime like on the CPU.
//!
//! The engine's [`KvCache`] (f16) stays the source of truth: before a pass
//! the graphs' own f32 cache is brought in line with it (only positions
//! another backend wrote are converted, see [`OrtBackend::sync_from`]),
//! after it the new positions are written back. A prefix reused by the
//! session, a truncation, or positions a CPU backend decoded all look the
//! same from here.

use std::path::Path;

use sotto_models::spec::DecoderSpec;

use super::backend::OrtBackend;
use super::ep::Ep;
use super::runtime::OrtConfig;
use super::{Error, Result};
use crate::backend::{Backend, LogitsFor};
use crate::kv_cache::KvCache;
use crate::onnx::manifest::Manifest;

/// Exported static-shape graphs on an execution-provider chain as an
/// engine [`Backend`]: prefill in `chunk`-token runs, decode one token a
/// run, on the engine's f16 [`KvCache`] (converted to and from the graphs'
/// layout when another backend wrote it). The graphs' `context` bounds the
/// sequence: longer ones are a context-overflow error. `Send`; a pass
/// takes `&mut self`.
#[derive(Debug)]
pub struct OrtDecoder {
    graphs: OrtBackend,
    spec: DecoderSpec,
    name: &'static str,
    /// The EP chain as given ("QNN → CPU").
    chain: String,
    npu_only: bool,
    /// Positions converted from the engine cache by the last pass.
    last_import: usize,
}

/// The report name of a chain: its first EP that is not the CPU.
pub(crate) fn chain_name(eps: &[Ep]) -> &'static str {
    match eps.iter().find(|e| !matches!(e, Ep::Cpu)) {
        Some(Ep::Qnn(_)) => "ort-qnn",
        Some(Ep::Nnapi) => "ort-nnapi",
        Some(Ep::CoreMl) => "ort-coreml",
        Some(Ep::Xnnpack) => "ort-xnnpack",
        Some(Ep::OpenVino) => "ort-openvino",
        Some(Ep::Cpu) | None => "ort-cpu",
    }
}

/// The graphs' manifest against the model's hyper-parameters.
fn check_manifest(dir: &Path, m: &Manifest, spec: &DecoderSpec) -> Result<()> {
    let fields = [
        ("n_layer", m.n_layer, spec.n_layer),
        ("n_kv_head", m.n_kv_head, spec.n_kv_head),
        ("head_dim", m.head_dim, spec.head_dim),
        ("vocab_size", m.vocab_size, spec.vocab_size),
    ];
    match fields.iter().find(|(_, g, s)| g != s) {
        Some(&(field, graphs, model)) => Err(Error::ModelMismatch {
            dir: dir.to_path_buf(),
            field,
            graphs,
            model,
        }),
        None => Ok(()),
    }
}

impl OrtDecoder {
    /// Opens the graphs in `dir` (checked against their manifest) for the
    /// model described by `spec` (checked against the manifest before any
    /// session is built).
    pub fn open(spec: &DecoderSpec, dir: &Path, config: &OrtConfig) -> Result<OrtDecoder> {
        check_manifest(dir, &Manifest::open(dir)?, spec)?;
        let graphs = OrtBackend::open(dir, config)?;
        let chain = config
            .eps
            .iter()
            .map(|e| e.ort_name().trim_end_matches("ExecutionProvider"))
            .collect::<Vec<_>>()
            .join(" → ");
        Ok(OrtDecoder {
            graphs,
            spec: spec.clone(),
            name: chain_name(&config.eps),
            chain,
            npu_only: config.npu_only,
            last_import: 0,
        })
    }

    /// The sessions underneath (manifest, placement).
    pub fn graphs(&self) -> &OrtBackend {
        &self.graphs
    }
    /// KV slots of the graphs: the longest sequence they can run.
    pub fn context(&self) -> usize {
        self.graphs.manifest().context
    }
    /// Positions the last pass converted from the engine cache (written by
    /// another backend, or a cache this one never saw).
    pub fn last_import(&self) -> usize {
        self.last_import
    }

    /// Where the graphs run, one line per graph.
    pub fn placement_report(&self) -> String {
        let (p, d) = self.graphs.placement();
        format!("prefill graph: {p}\ndecode graph: {d}")
    }

    fn engine_error(&self, e: Error, cache: &KvCache, n: usize) -> crate::Error {
        match e {
            Error::ContextOverflow { context, .. } => crate::Error::ContextOverflow {
                prompt_tokens: n,
                cached: cache.len(),
                reserve: 0,
                context,
            },
            Error::TokenOutOfRange { id, vocab } => crate::Error::TokenOutOfRange { id, vocab },
            source => crate::Error::Ort {
                backend: self.name,
                source,
            },
        }
    }
}

impl Backend for OrtDecoder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    fn new_cache(&self, capacity: usize) -> crate::Result<KvCache> {
        let s = &self.spec;
        KvCache::new(
            s.n_layer,
            s.n_kv_head,
            s.head_dim,
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
        if tokens.is_empty() {
            return Err(crate::Error::Empty("tokens"));
        }
        let start = cache.len();
        let limit = cache.capacity().min(self.context());
        if start + tokens.len() > limit {
            return Err(crate::Error::ContextOverflow {
                prompt_tokens: tokens.len(),
                cached: start,
                reserve: 0,
                context: limit,
            });
        }
        let n = tokens.len();
        self.last_import = self
            .graphs
            .sync_from(cache)
            .map_err(|e| self.engine_error(e, cache, n))?;
        // The engine cache is only written once every chunk ran, so a
        // failure leaves its length unchanged (the graphs' own cache may
        // hold more; the next sync trims it).
        let logits = self
            .graphs
            .forward_tokens(tokens, which == LogitsFor::All)
            .map_err(|e| self.engine_error(e, cache, n))?;
        self.graphs
            .commit_to(cache, start)
            .map_err(|e| self.engine_error(e, cache, n))?;
        Ok(logits)
    }

    fn describe(&self) -> String {
        let m = self.graphs.manifest();
        let (p, d) = self.graphs.placement();
        format!(
            "onnxruntime [{}]{}, {:?} graphs of {} (chunk {}, context {}); prefill: {p}; decode: {d}",
            self.chain,
            if self.npu_only { ", CPU fallback refused" } else { "" },
            m.quantization,
            m.model,
            m.chunk,
            m.context,
        )
    }
}
