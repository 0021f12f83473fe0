//! The one way to open a model and a backend: a GGUF file and a
//! [`BackendChoice`] in, a [`LoadedModel`] out that hands each chat its own
//! backend. The CLI's chat, bench and bridge assistant and the C ABI all
//! come through here, so a backend whose feature is not compiled in is one
//! typed error ([`Error::FeatureDisabled`]) from the engine instead of a
//! stub in every caller.
//!
//! The GGUF always supplies the tokenizer, chat template and decoder
//! description; for `ort` and `hybrid` the graphs replace only the weights.

use crate::backend::Backend;
use crate::chat::Chat;
use crate::cpu::CpuBackend;
use crate::error::{Error, Result};
use crate::generate::Session;
use crate::kv_cache::KvTypes;
use crate::model_digest::ModelDigest;
use sotto_kernels::dispatch::{Isa, KernelTable};
use sotto_models::lora::LoraAdapter;
use sotto_models::Model;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a model runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// sotto's kernels on the CPU.
    Cpu(CpuOptions),
    /// ONNX graphs on an ONNX Runtime execution-provider chain (the `ort`
    /// feature): graphs from `sotto export`, or a decoder exported by
    /// another tool (model.onnx + config.json in the optimum layout, told
    /// apart by its files).
    Ort(OrtOptions),
    /// Prefill on graphs from `sotto export`, decode on sotto's CPU kernels,
    /// one KV cache between them (the `ort` feature).
    Hybrid {
        /// The prefill graphs and their EP chain.
        graphs: OrtOptions,
        /// The decoding CPU backend.
        cpu: CpuOptions,
    },
    /// candle-transformers' quantized Llama, the reference baseline (the
    /// `candle` feature).
    Candle {
        /// Worker threads (0 = candle's default).
        threads: usize,
    },
}

impl BackendChoice {
    /// A typed [`Error::FeatureDisabled`] when this build of the engine
    /// cannot run the backend (checked by [`LoadedModel::open`] before the
    /// model is read; callers that prepare files for a backend check first).
    pub fn ensure_compiled(&self) -> Result<()> {
        let missing = |backend, feature| Err(Error::FeatureDisabled { backend, feature });
        match self {
            BackendChoice::Ort(_) if !cfg!(feature = "ort") => missing("ort", "ort"),
            BackendChoice::Hybrid { .. } if !cfg!(feature = "ort") => missing("hybrid", "ort"),
            BackendChoice::Candle { .. } if !cfg!(feature = "candle") => {
                missing("candle", "candle")
            }
            _ => Ok(()),
        }
    }
}

impl Default for BackendChoice {
    fn default() -> Self {
        BackendChoice::Cpu(CpuOptions::default())
    }
}

/// sotto's CPU kernels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuOptions {
    /// Worker threads (0 = every core).
    pub threads: usize,
    /// The kernel path to run; `None` runs the process's choice (the best
    /// one this CPU has, or `SOTTO_ISA`).
    pub isa: Option<Isa>,
    /// The element types of the KV cache (`--kv-type`; f16 by default).
    pub kv: KvTypes,
    /// Where the matrices the kernels repack are cached between starts;
    /// `None`: [`crate::PackedCache::from_env`] (the user cache). An app
    /// passes its own cache directory (or [`crate::PackedCache::off`]).
    pub packed_cache: Option<crate::PackedCache>,
}

/// Graphs on ONNX Runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrtOptions {
    /// A directory written by `sotto export`, or a foreign export (a
    /// directory with model.onnx and config.json, or the .onnx file).
    pub graphs: PathBuf,
    /// Execution providers in priority order, as configuration:
    /// `qnn:soc_model=69:htp_performance_mode=burst,cpu`; see
    /// `ort::Ep::parse_chain`.
    pub ep_chain: String,
    /// Refuse CPU fallback: every node on the chain's NPU EPs, or a typed
    /// error (`FallbackRefused`, `DynamicShape`) before anything runs.
    pub npu_only: bool,
    /// ONNX Runtime's CPU EP threads (0 = its default).
    pub threads: usize,
}

impl OrtOptions {
    /// Graphs at `graphs` on the CPU EP.
    pub fn cpu(graphs: impl Into<PathBuf>) -> Self {
        Self {
            graphs: graphs.into(),
            ep_chain: "cpu".into(),
            npu_only: false,
            threads: 0,
        }
    }
}

/// A LoRA adapter to apply: a llama.cpp GGUF adapter or a PEFT folder, and
/// the factor on its trained scale (1 applies it as trained).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    /// The adapter file or folder.
    pub path: PathBuf,
    /// Multiplies the adapter's `alpha / rank`.
    pub scale: f32,
}

impl AdapterSpec {
    /// `PATH` or `PATH:SCALE` (as `--lora` takes it); a suffix after the
    /// last `:` that is not a number is part of the path.
    pub fn parse(arg: &str) -> Result<AdapterSpec> {
        let (path, scale) = match arg.rsplit_once(':') {
            Some((p, s)) if !p.is_empty() => match s.parse::<f32>() {
                Ok(scale) if scale.is_finite() => (p, scale),
                Ok(_) => {
                    return Err(Error::InvalidDescription(format!(
                        "LoRA scale in {arg:?} is not a finite number"
                    )))
                }
                Err(_) => (arg, 1.0),
            },
            _ => (arg, 1.0),
        };
        if path.is_empty() {
            return Err(Error::Empty("LoRA adapter path"));
        }
        Ok(AdapterSpec {
            path: PathBuf::from(path),
            scale,
        })
    }
}

/// Which backend a [`LoadedModel`] opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// [`BackendChoice::Cpu`].
    Cpu,
    /// [`BackendChoice::Ort`] on graphs from `sotto export`.
    Ort,
    /// [`BackendChoice::Ort`] on a decoder exported by another tool.
    OrtForeign,
    /// [`BackendChoice::Hybrid`].
    Hybrid,
    /// [`BackendChoice::Candle`].
    Candle,
}

/// A model opened with its backend. Each [`LoadedModel::backend`] call hands
/// out a backend of its own (a cheap clone for the CPU, which shares weights,
/// rope tables and thread pool; graphs opened anew otherwise), so one loaded
/// model serves several conversations, each with its own KV cache.
/// `LoadedModel` is `Send + Sync`: sessions may be opened from any thread.
pub struct LoadedModel {
    model: Arc<Model>,
    path: PathBuf,
    choice: BackendChoice,
    kind: BackendKind,
    /// Prepared once at open; cloned per backend (cpu, hybrid).
    cpu: Option<CpuBackend>,
    /// The backend opened to check the description, handed to the first
    /// caller of [`LoadedModel::backend`] (graphs are costly to open twice).
    first: Mutex<Option<Box<dyn Backend>>>,
    describe: String,
    placement: Option<String>,
    external_kv_bytes_per_position: Option<usize>,
    load_time: Duration,
    /// What saved sessions are bound to; `None` with merged adapters,
    /// whose weights are not the bytes of any file.
    digest: Option<Arc<ModelDigest>>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("describe", &self.describe)
            .finish_non_exhaustive()
    }
}

/// What opening a backend produced.
struct Opened {
    backend: Box<dyn Backend>,
    kind: BackendKind,
    cpu: Option<CpuBackend>,
    placement: Option<String>,
    external_kv_bytes_per_position: Option<usize>,
}

impl LoadedModel {
    /// Loads the GGUF at `path` and opens `choice` on it. Every check a
    /// backend makes (files, shapes, EP chain, CPU fallback) happens here,
    /// before any session exists.
    pub fn open(path: impl AsRef<Path>, choice: BackendChoice) -> Result<Self> {
        Self::open_with(path.as_ref(), choice, None, &[])
    }

    /// [`LoadedModel::open`] with the weight matrices quantized to `quant`
    /// in memory at load ([`Model::load_quantized`]: the bytes `sotto
    /// quantize` writes), so a float checkpoint runs at that type's speed;
    /// [`LoadedModel::load_time`] includes the quantization.
    pub fn open_quantized(
        path: impl AsRef<Path>,
        choice: BackendChoice,
        quant: sotto_kernels::quant::DType,
    ) -> Result<Self> {
        Self::open_with(path.as_ref(), choice, Some(quant), &[])
    }

    /// [`LoadedModel::open`] with LoRA adapters merged into the weights at
    /// load ([`LoraAdapter::merge`]: each adapted matrix dequantized, updated
    /// and stored as Q8_0, or f32 for a float base; the others stay mapped),
    /// in order; [`LoadedModel::load_time`] includes the merge. The CPU
    /// backend only: graphs and candle read their own weights.
    pub fn open_merged(
        path: impl AsRef<Path>,
        choice: BackendChoice,
        adapters: &[AdapterSpec],
    ) -> Result<Self> {
        Self::open_with(path.as_ref(), choice, None, adapters)
    }

    /// [`LoadedModel::open`] with the weight matrices quantized to `quant`
    /// at load ([`LoadedModel::open_quantized`]) and/or `merged` adapters
    /// merged in ([`LoadedModel::open_merged`]): what the CLI's `--quant`
    /// and `--lora-merge` ask for, with the combinations that cannot run
    /// refused here, once, as [`Error::InvalidDescription`].
    pub fn open_with(
        path: impl AsRef<Path>,
        choice: BackendChoice,
        quant: Option<sotto_kernels::quant::DType>,
        adapters: &[AdapterSpec],
    ) -> Result<Self> {
        let path = path.as_ref();
        let t0 = Instant::now();
        let cpu = matches!(choice, BackendChoice::Cpu(_));
        if !adapters.is_empty() && !cpu {
            return Err(Error::InvalidDescription(
                "LoRA adapters are applied by the cpu backend only".into(),
            ));
        }
        if let Some(q) = quant {
            if !cpu {
                return Err(Error::InvalidDescription(format!(
                    "--quant quantizes the CPU backend's weights ({q}): the graph backends run \
                     what `sotto export` wrote"
                )));
            }
            if !adapters.is_empty() {
                return Err(Error::InvalidDescription(format!(
                    "--lora-merge with --quant {q}: apply the adapters unmerged, or merge them \
                     into the float model without --quant"
                )));
            }
        }
        choice.ensure_compiled()?;
        // The tokenizer's pipeline builds on a thread of its own while the
        // backend is prepared; the load ends when both are done.
        let model = match quant {
            None => Model::load_with_tokenizer_pending(path),
            Some(dtype) => Model::load_quantized(path, dtype),
        };
        let mut model = model.map_err(|source| Error::ModelFile {
            path: path.to_path_buf(),
            source,
        })?;
        if !adapters.is_empty() {
            let bound = adapters
                .iter()
                .map(|a| LoraAdapter::load(&a.path, &model, a.scale))
                .collect::<sotto_models::Result<Vec<_>>>()?;
            model = LoraAdapter::merge(&model, &bound)?;
        }
        let model = Arc::new(model);
        let digest = adapters
            .is_empty()
            .then(|| Arc::new(ModelDigest::new(model.clone())));
        let opened = open_backend(path, &model, &choice)?;
        model
            .tokenizer
            .wait_ready()
            .map_err(|source| Error::ModelFile {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            model,
            path: path.to_path_buf(),
            choice,
            kind: opened.kind,
            cpu: opened.cpu,
            describe: opened.backend.describe(),
            first: Mutex::new(Some(opened.backend)),
            placement: opened.placement,
            external_kv_bytes_per_position: opened.external_kv_bytes_per_position,
            load_time: t0.elapsed(),
            digest,
        })
    }

    /// SHA-256 of the bytes the model was loaded from (the GGUF file, or
    /// its image quantized at load), which saved sessions are bound to;
    /// computed on the first call. `None` with merged LoRA adapters.
    pub fn model_digest(&self) -> Option<[u8; 32]> {
        self.digest.as_ref().map(|d| d.get())
    }

    /// The model: spec, tokenizer, chat template, weights.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The GGUF file it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The description it was opened with.
    pub fn choice(&self) -> &BackendChoice {
        &self.choice
    }

    /// Which backend runs it.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// What the backend runs on (ISA and threads, EP chain…), for reports.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// For graph backends, which nodes each execution provider took,
    /// known before anything runs.
    pub fn placement_report(&self) -> Option<&str> {
        self.placement.as_deref()
    }

    /// From opening the file to a backend ready for its first forward pass.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Bytes of weights the CPU backend repacked at load for its kernels
    /// (0 when it reads the file's layout, or for other backends).
    pub fn cpu_packed_bytes(&self) -> usize {
        self.cpu.as_ref().map_or(0, CpuBackend::packed_bytes)
    }

    /// What the CPU backend's load did about repacked matrices (packed, and
    /// how long it took, or mapped from the packed-panel cache); `None` for
    /// other backends.
    pub fn cpu_packed_cache(&self) -> Option<&crate::cpu::PackedCacheStatus> {
        self.cpu.as_ref().map(CpuBackend::packed_cache)
    }

    /// Set when the backend keeps its KV outside [`crate::KvCache`] (candle
    /// grows f32 tensors inside its model): bytes per cached position.
    pub fn external_kv_bytes_per_position(&self) -> Option<usize> {
        self.external_kv_bytes_per_position
    }

    /// A backend of its own for one conversation.
    pub fn backend(&self) -> Result<Box<dyn Backend>> {
        if let Some(first) = self.first.lock().ok().and_then(|mut f| f.take()) {
            return Ok(first);
        }
        match (&self.cpu, self.kind) {
            (Some(cpu), BackendKind::Cpu) => Ok(Box::new(cpu.clone())),
            _ => Ok(open_backend(&self.path, &self.model, &self.choice)?.backend),
        }
    }

    /// A generation session of `context` positions on a backend of its own.
    pub fn session(&self, context: usize) -> Result<Session> {
        self.session_with(context, &[])
    }

    /// A chat through the model's template, optionally with a system message.
    pub fn chat(&self, context: usize, system: Option<&str>) -> Result<Chat> {
        self.chat_with(context, system, &[])
    }

    /// Reads the LoRA adapter at `spec.path` (a llama.cpp GGUF adapter or a
    /// PEFT folder) for this model: checked against its matrices, ready to
    /// attach to any number of conversations ([`LoadedModel::session_with`]).
    /// The base weights are neither reloaded nor copied.
    pub fn load_adapter(&self, spec: &AdapterSpec) -> Result<Arc<LoraAdapter>> {
        Ok(Arc::new(LoraAdapter::load(
            &spec.path,
            &self.model,
            spec.scale,
        )?))
    }

    /// A backend of its own applying `adapters` unmerged
    /// ([`CpuBackend::with_adapters`]); with none, [`LoadedModel::backend`].
    pub fn backend_with(&self, adapters: &[Arc<LoraAdapter>]) -> Result<Box<dyn Backend>> {
        if adapters.is_empty() {
            return self.backend();
        }
        match (&self.cpu, self.kind) {
            (Some(cpu), BackendKind::Cpu) => Ok(Box::new(cpu.with_adapters(adapters.to_vec())?)),
            (_, kind) => Err(Error::InvalidDescription(format!(
                "LoRA adapters are applied by the cpu backend only, this model runs on {kind:?}"
            ))),
        }
    }

    /// [`LoadedModel::session`] whose backend applies `adapters` unmerged:
    /// one conversation with an adapter, the next with another or none, on
    /// the same loaded weights.
    pub fn session_with(&self, context: usize, adapters: &[Arc<LoraAdapter>]) -> Result<Session> {
        let mut session = Session::new(
            self.backend_with(adapters)?,
            Arc::new(self.model.tokenizer.clone()),
            context,
        )?;
        // Unmerged adapters change what the cache holds and are not part
        // of the model's bytes: such sessions are not bound (not saved).
        if let (Some(digest), true) = (&self.digest, adapters.is_empty()) {
            session.bind_model(digest.clone());
        }
        Ok(session)
    }

    /// [`LoadedModel::chat`] with `adapters` applied unmerged.
    pub fn chat_with(
        &self,
        context: usize,
        system: Option<&str>,
        adapters: &[Arc<LoraAdapter>],
    ) -> Result<Chat> {
        Ok(Chat::new(
            self.session_with(context, adapters)?,
            Arc::new(self.model.template.clone()),
            system,
        ))
    }
}

/// The kernel table a CPU description asks for: its path (an error when
/// this CPU cannot run it), or the process's choice.
fn kernels(isa: Option<Isa>) -> Result<&'static KernelTable> {
    Ok(match isa {
        Some(isa) => sotto_kernels::dispatch::table_for(isa)?,
        None => sotto_kernels::dispatch::try_table()?,
    })
}

fn open_cpu(model: &Arc<Model>, options: &CpuOptions) -> Result<CpuBackend> {
    let cache = options
        .packed_cache
        .clone()
        .unwrap_or_else(crate::PackedCache::from_env);
    CpuBackend::with_kernels_and_cache(
        model.clone(),
        options.threads,
        kernels(options.isa)?,
        &cache,
    )?
    .with_kv_types(options.kv)
}

fn open_backend(path: &Path, model: &Arc<Model>, choice: &BackendChoice) -> Result<Opened> {
    match choice {
        BackendChoice::Cpu(options) => {
            let cpu = open_cpu(model, options)?;
            Ok(Opened {
                backend: Box::new(cpu.clone()),
                kind: BackendKind::Cpu,
                cpu: Some(cpu),
                placement: None,
                external_kv_bytes_per_position: None,
            })
        }
        BackendChoice::Ort(graphs) => graph::open(model, graphs, None),
        BackendChoice::Hybrid { graphs, cpu } => {
            let cpu = open_cpu(model, cpu)?;
            graph::open(model, graphs, Some(cpu))
        }
        BackendChoice::Candle { threads } => candle::open(path, *threads),
    }
}

#[cfg(feature = "ort")]
mod graph {
    use super::{BackendKind, Opened, OrtOptions};
    use crate::cpu::CpuBackend;
    use crate::error::{Error, Result};
    use crate::ort::{is_foreign_export, Ep, ForeignDecoder, HybridBackend, OrtConfig, OrtDecoder};
    use sotto_models::Model;
    use std::sync::Arc;

    /// The graphs of `options`; with `decode_on`, a hybrid over them.
    pub(super) fn open(
        model: &Arc<Model>,
        options: &OrtOptions,
        decode_on: Option<CpuBackend>,
    ) -> Result<Opened> {
        let config = OrtConfig {
            eps: Ep::parse_chain(&options.ep_chain)?,
            npu_only: options.npu_only,
            intra_threads: options.threads,
            ..Default::default()
        };
        let dir = &options.graphs;
        if is_foreign_export(dir) {
            if decode_on.is_some() {
                return Err(Error::InvalidDescription(format!(
                    "{}: hybrid needs graphs from `sotto export`; a foreign export runs on the ort backend",
                    dir.display()
                )));
            }
            let graph =
                ForeignDecoder::open(&model.spec, dir, &config).map_err(|source| Error::Ort {
                    backend: "ort-foreign",
                    source,
                })?;
            return Ok(Opened {
                placement: Some(graph.placement_report()),
                backend: Box::new(graph),
                kind: BackendKind::OrtForeign,
                cpu: None,
                external_kv_bytes_per_position: None,
            });
        }
        let graphs = OrtDecoder::open(&model.spec, dir, &config)?;
        let placement = Some(graphs.placement_report());
        Ok(match decode_on {
            Some(cpu) => Opened {
                backend: Box::new(HybridBackend::new(graphs, cpu.clone())?),
                kind: BackendKind::Hybrid,
                cpu: Some(cpu),
                placement,
                external_kv_bytes_per_position: None,
            },
            None => Opened {
                backend: Box::new(graphs),
                kind: BackendKind::Ort,
                cpu: None,
                placement,
                external_kv_bytes_per_position: None,
            },
        })
    }
}

#[cfg(not(feature = "ort"))]
mod graph {
    use super::{BackendChoice, Opened, OrtOptions};
    use crate::cpu::CpuBackend;
    use crate::error::{Error, Result};
    use sotto_models::Model;
    use std::sync::Arc;

    /// Unreachable past [`BackendChoice::ensure_compiled`], which refuses
    /// graph backends in this build; kept typed all the same.
    pub(super) fn open(
        _model: &Arc<Model>,
        options: &OrtOptions,
        _decode_on: Option<CpuBackend>,
    ) -> Result<Opened> {
        BackendChoice::Ort(options.clone()).ensure_compiled()?;
        Err(Error::FeatureDisabled {
            backend: "ort",
            feature: "ort",
        })
    }
}

#[cfg(feature = "candle")]
mod candle {
    use super::{BackendKind, Opened};
    use crate::candle_backend::CandleBackend;
    use crate::error::Result;
    use std::path::Path;

    pub(super) fn open(path: &Path, threads: usize) -> Result<Opened> {
        let backend = CandleBackend::load(path, threads)?;
        Ok(Opened {
            external_kv_bytes_per_position: Some(backend.kv_bytes_per_position()),
            backend: Box::new(backend),
            kind: BackendKind::Candle,
            cpu: None,
            placement: None,
        })
    }
}

#[cfg(not(feature = "candle"))]
mod candle {
    use super::Opened;
    use crate::error::{Error, Result};
    use std::path::Path;

    /// Unreachable past [`super::BackendChoice::ensure_compiled`]; kept
    /// typed all the same.
    pub(super) fn open(_path: &Path, _threads: usize) -> Result<Opened> {
        Err(Error::FeatureDisabled {
            backend: "candle",
            feature: "candle",
        })
    }
}

/// The graphs the `ort` and `hybrid` backends open, as `sotto export`
/// writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphTarget {
    /// Q4_0/Q4_1 as MatMulNBits for ONNX Runtime's CPU EP; exporting needs
    /// no runtime.
    Cpu,
    /// Fully quantized QDQ graphs for QNN HTP, calibrated on the CPU EP
    /// (the `ort` feature); suits small models only.
    Qnn(crate::onnx::qdq::ActivationType),
    /// f32 graphs, which QNN HTP runs in f16.
    QnnFp16,
    /// QDQ on the weight MatMuls only (calibrated on the CPU EP, the `ort`
    /// feature), the rest in float: f16 on QNN HTP.
    QnnMixed(crate::onnx::qdq::ActivationType),
}

/// Exports `model` as the graphs of `target` into `dir`: a prefill graph
/// of `chunk` tokens and a one-token decode graph over `context` KV slots.
/// The QDQ targets calibrate their activation ranges by running the float
/// graphs over `calibration` (chat-shaped tokens) on the CPU EP; a build
/// without the `ort` feature refuses them with [`Error::FeatureDisabled`].
pub fn export_graphs(
    model: &Model,
    dir: &Path,
    target: GraphTarget,
    chunk: usize,
    context: usize,
    calibration: &[u32],
) -> Result<crate::onnx::Manifest> {
    use crate::onnx::{export_model, ExportOptions, WeightFormat};
    if chunk == 0 || chunk > context {
        return Err(Error::InvalidDescription(format!(
            "a prefill chunk of {chunk} tokens must be between 1 and the context of {context}"
        )));
    }
    let options = |format| ExportOptions {
        chunk,
        context,
        format,
    };
    match target {
        GraphTarget::Cpu => Ok(export_model(
            model,
            dir,
            options(WeightFormat::MatMulNBits),
        )?),
        GraphTarget::QnnFp16 => Ok(export_model(model, dir, options(WeightFormat::Float))?),
        GraphTarget::Qnn(activations) | GraphTarget::QnnMixed(activations) => {
            let scope = match target {
                GraphTarget::QnnMixed(_) => crate::onnx::qdq::QdqScope::MatMuls,
                _ => crate::onnx::qdq::QdqScope::All,
            };
            calibrated::export(
                model,
                dir,
                options(WeightFormat::Float),
                calibration,
                activations,
                scope,
            )
        }
    }
}

#[cfg(feature = "ort")]
mod calibrated {
    use crate::error::Result;
    use crate::onnx::qdq::{ActivationType, QdqScope};
    use crate::onnx::{ExportOptions, Manifest};
    use crate::ort::{calibrate, OrtConfig};
    use sotto_models::Model;
    use std::path::Path;

    /// QDQ graphs with ranges calibrated on the float graphs; about one
    /// token in eight of the calibration text goes through the decode graph.
    pub(super) fn export(
        model: &Model,
        dir: &Path,
        float: ExportOptions,
        calibration: &[u32],
        activations: ActivationType,
        scope: QdqScope,
    ) -> Result<Manifest> {
        let tokens = &calibration[..calibration.len().min(float.context)];
        let decode_steps = (tokens.len() / 8).clamp(1, 16);
        let config = OrtConfig::default();
        Ok(calibrate::export_qdq_scoped(
            model,
            dir,
            float,
            tokens,
            decode_steps,
            activations,
            scope,
            &config,
        )?)
    }
}

#[cfg(not(feature = "ort"))]
mod calibrated {
    use crate::error::{Error, Result};
    use crate::onnx::qdq::{ActivationType, QdqScope};
    use crate::onnx::{ExportOptions, Manifest};
    use sotto_models::Model;
    use std::path::Path;

    /// Calibration runs the graphs on ONNX Runtime, which this build lacks.
    pub(super) fn export(
        _model: &Model,
        _dir: &Path,
        _float: ExportOptions,
        _calibration: &[u32],
        _activations: ActivationType,
        _scope: QdqScope,
    ) -> Result<Manifest> {
        Err(Error::FeatureDisabled {
            backend: "qnn export (calibration)",
            feature: "ort",
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn a_loaded_model_can_be_shared_between_threads() {
        assert_send_sync::<LoadedModel>();
    }

    #[test]
    fn a_missing_model_file_is_a_typed_error_naming_it() {
        let err =
            LoadedModel::open("/nonexistent/model.gguf", BackendChoice::default()).unwrap_err();
        match &err {
            Error::ModelFile {
                path,
                source: sotto_models::Error::Io { source, .. },
            } => {
                assert_eq!(path, Path::new("/nonexistent/model.gguf"));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected ModelFile(Io), got {other:?}"),
        }
    }

    #[test]
    fn a_file_that_is_not_gguf_is_a_typed_error() {
        let dir = std::env::temp_dir().join(format!("sotto-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-model.gguf");
        std::fs::write(&path, b"this is not a model file, only some text").unwrap();
        let err = LoadedModel::open(&path, BackendChoice::default()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ModelFile {
                    source: sotto_models::Error::BadMagic { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backends_not_compiled_in_are_refused_before_the_model_is_read() {
        let ort = BackendChoice::Ort(OrtOptions::cpu("/nonexistent/graphs"));
        let hybrid = BackendChoice::Hybrid {
            graphs: OrtOptions::cpu("/nonexistent/graphs"),
            cpu: CpuOptions::default(),
        };
        for (choice, compiled, feature) in [
            (ort, cfg!(feature = "ort"), "ort"),
            (hybrid, cfg!(feature = "ort"), "ort"),
            (
                BackendChoice::Candle { threads: 1 },
                cfg!(feature = "candle"),
                "candle",
            ),
        ] {
            let err = LoadedModel::open("/nonexistent/model.gguf", choice).unwrap_err();
            if compiled {
                assert!(matches!(err, Error::ModelFile { .. }), "{err:?}");
            } else {
                assert!(
                    matches!(err, Error::FeatureDisabled { feature: f, .. } if f == feature),
                    "{err:?}"
                );
            }
        }
    }

    #[test]
    fn adapter_specs_parse_path_and_optional_scale() {
        let spec = |p: &str, s: f32| AdapterSpec {
            path: PathBuf::from(p),
            scale: s,
        };
        assert_eq!(AdapterSpec::parse("a.gguf").unwrap(), spec("a.gguf", 1.0));
        assert_eq!(
            AdapterSpec::parse("a.gguf:0.5").unwrap(),
            spec("a.gguf", 0.5)
        );
        assert_eq!(AdapterSpec::parse("dir/x:y").unwrap(), spec("dir/x:y", 1.0));
        assert!(matches!(
            AdapterSpec::parse("a.gguf:inf"),
            Err(Error::InvalidDescription(_))
        ));
        assert!(matches!(AdapterSpec::parse(""), Err(Error::Empty(_))));
    }

    #[test]
    fn a_description_gets_its_own_kernel_path() {
        let chosen = sotto_kernels::dispatch::try_table().unwrap().isa;
        assert_eq!(kernels(None).unwrap().isa, chosen);
        // any available path, in the same process as the chosen one
        for isa in sotto_kernels::dispatch::available_isas() {
            assert_eq!(kernels(Some(isa)).unwrap().isa, isa);
        }
        // A path of the other architecture is never available.
        let foreign = if cfg!(target_arch = "aarch64") {
            Isa::Avx2
        } else {
            Isa::Neon
        };
        assert!(matches!(
            kernels(Some(foreign)),
            Err(Error::Kernel(sotto_kernels::Error::IsaUnavailable { .. }))
        ));
    }
}
