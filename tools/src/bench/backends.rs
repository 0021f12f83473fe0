//! The backends `sotto bench` can run, and the one factory that loads them.
//! A new backend is one [`BACKENDS`] row and one arm in [`load_backend`].
//! The ONNX Runtime rows (ort-cpu, ort-qnn, hybrid, hybrid-qnn) run graphs
//! exported by `sotto export`, exported on first use when no directory is
//! given; ort-foreign runs a decoder another tool exported (`--onnx-foreign DIR`).

use sotto_engine::{Backend, CpuBackend};
use sotto_models::Model;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct BackendInfo {
    pub name: &'static str,
    /// Whether the backend runs sotto's kernels, so `--isa` applies to it.
    pub uses_sotto_kernels: bool,
    pub about: &'static str,
}

pub const BACKENDS: &[BackendInfo] = &[
    BackendInfo {
        name: "cpu",
        uses_sotto_kernels: true,
        about: "sotto's CPU backend (SIMD kernels, rayon)",
    },
    BackendInfo {
        name: "candle",
        uses_sotto_kernels: false,
        about:
            "candle-transformers' quantized Llama, the reference baseline (needs --features candle)",
    },
    BackendInfo {
        name: "ort-cpu",
        uses_sotto_kernels: false,
        about: "exported MatMulNBits graphs on ONNX Runtime's CPU EP (needs --features ort)",
    },
    BackendInfo {
        name: "ort-qnn",
        uses_sotto_kernels: false,
        about: "exported QDQ graphs on Qualcomm QNN HTP, CPU fallback refused; on x86-64 the HTP is Qualcomm's emulator and rows say so (needs --features ort)",
    },
    BackendInfo {
        name: "hybrid",
        uses_sotto_kernels: true,
        about: "prefill on the ort-cpu graphs, decode on sotto's CPU kernels (needs --features ort)",
    },
    BackendInfo {
        name: "hybrid-qnn",
        uses_sotto_kernels: true,
        about: "prefill on the ort-qnn graphs (QNN HTP, emulated on x86-64), decode on sotto's CPU kernels (needs --features ort)",
    },
    BackendInfo {
        name: "ort-foreign",
        uses_sotto_kernels: false,
        about: "a decoder exported by another tool (optimum layout: model.onnx + config.json, given with --onnx-foreign) on ONNX Runtime's CPU EP; tokenizer and spec from the GGUF (needs --features ort)",
    },
];

/// Where the ort rows' graphs come from.
#[derive(Clone, Debug, Default)]
#[cfg_attr(not(feature = "ort"), allow(dead_code))]
pub struct OnnxGraphs {
    /// MatMulNBits graphs for ort-cpu and hybrid; default: exported once
    /// into the user cache.
    pub cpu_dir: Option<PathBuf>,
    /// QDQ graphs for ort-qnn and hybrid-qnn (mixed precision); default: exported (and calibrated) once into
    /// the user cache.
    pub qnn_dir: Option<PathBuf>,
    /// KV slots the sweep needs (graphs exported here get this many).
    pub context: usize,
    /// A foreign export (model.onnx + config.json) for ort-foreign rows.
    pub foreign_dir: Option<PathBuf>,
}

/// The label of QNN HTP rows: an emulator off Qualcomm hardware.
#[cfg_attr(not(feature = "ort"), allow(dead_code))]
pub fn qnn_label() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "qnn-htp"
    } else {
        "qnn-htp-emulated"
    }
}

pub fn info(name: &str) -> Option<&'static BackendInfo> {
    BACKENDS.iter().find(|b| b.name == name)
}

pub fn names() -> Vec<&'static str> {
    BACKENDS.iter().map(|b| b.name).collect()
}

pub fn uses_sotto_kernels(name: &str) -> bool {
    info(name).is_some_and(|b| b.uses_sotto_kernels)
}

/// A backend ready to run, and what it cost to get there.
pub struct LoadedBackend {
    pub backend: Box<dyn Backend>,
    /// From opening the file to a backend ready for its first forward pass.
    pub load: Duration,
    /// Set when the backend keeps its KV outside [`sotto_engine::KvCache`]
    /// (candle grows f32 tensors inside its model): bytes per cached
    /// position, so reports count the memory it really holds.
    pub external_kv_bytes_per_position: Option<usize>,
    /// The ISA label for reports: the dispatch's choice for sotto's
    /// kernels, the backend's own otherwise.
    pub isa: String,
}

impl std::fmt::Debug for LoadedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedBackend")
            .field("backend", &self.backend.describe())
            .field("load", &self.load)
            .finish()
    }
}

/// The kernel path dispatch chose in this process (SOTTO_ISA or detection);
/// an error when SOTTO_ISA names a path this CPU cannot run.
pub fn kernel_isa() -> Result<String, String> {
    sotto_kernels::dispatch::try_table()
        .map(|t| isa_name(t.isa))
        .map_err(|e| format!("kernel dispatch: {e}"))
}

/// Every kernel path this CPU can run, portable first.
pub fn available_isas() -> Vec<String> {
    sotto_kernels::dispatch::available_isas()
        .into_iter()
        .map(isa_name)
        .collect()
}

fn isa_name(isa: sotto_kernels::dispatch::Isa) -> String {
    format!("{isa:?}").to_lowercase()
}

/// Loads backend `name` on the model at `path` with `threads` threads.
pub fn load_backend(
    name: &str,
    path: &Path,
    threads: usize,
    graphs: &OnnxGraphs,
) -> Result<LoadedBackend, String> {
    let t0 = Instant::now();
    match name {
        "cpu" => {
            let isa = kernel_isa()?;
            let model =
                Model::load(path).map_err(|e| format!("loading {}: {e}", path.display()))?;
            let backend = CpuBackend::new(Arc::new(model), threads)
                .map_err(|e| format!("cpu backend: {e}"))?;
            // "+x16": weights repacked at load for the table's kernels
            // (their time is in the load column).
            let isa = if backend.packed_bytes() > 0 {
                format!("{isa}+x16")
            } else {
                isa
            };
            Ok(LoadedBackend {
                backend: Box::new(backend),
                load: t0.elapsed(),
                external_kv_bytes_per_position: None,
                isa,
            })
        }
        "candle" => load_candle(path, threads, t0),
        "ort-cpu" | "ort-qnn" | "hybrid" | "hybrid-qnn" | "ort-foreign" => {
            load_ort(name, path, threads, graphs, t0)
        }
        other => Err(format!(
            "unknown backend {other:?}; one of {}",
            names().join(", ")
        )),
    }
}

#[cfg(feature = "candle")]
fn load_candle(path: &Path, threads: usize, t0: Instant) -> Result<LoadedBackend, String> {
    let backend = sotto_engine::candle_backend::CandleBackend::load(path, threads)
        .map_err(|e| format!("candle backend: {e}"))?;
    let per_position = backend.kv_bytes_per_position();
    Ok(LoadedBackend {
        backend: Box::new(backend),
        load: t0.elapsed(),
        external_kv_bytes_per_position: Some(per_position),
        isa: "candle".to_string(),
    })
}

#[cfg(not(feature = "candle"))]
fn load_candle(_path: &Path, _threads: usize, _t0: Instant) -> Result<LoadedBackend, String> {
    Err("this sotto was built without the candle baseline; rebuild with `cargo build --release -p sotto --features candle`".into())
}

/// The graphs of an ort row: the given directory, or one exported into
/// `~/.cache/sotto/onnx` on first use for this model, target and context.
#[cfg(feature = "ort")]
fn graphs_dir(
    path: &Path,
    target: crate::cmd_export::Target,
    given: Option<&PathBuf>,
    context: usize,
) -> Result<PathBuf, String> {
    if let Some(d) = given {
        return Ok(d.clone());
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let chunk = 64.min(context);
    let home = std::env::var_os("HOME").ok_or("HOME is not set: pass --onnx-dir")?;
    let dir = PathBuf::from(home)
        .join(".cache/sotto/onnx")
        .join(format!("{stem}-{target:?}-c{context}-k{chunk}").to_lowercase());
    if sotto_engine::onnx::Manifest::open(&dir).is_err() {
        eprintln!(
            "sotto bench: exporting {target:?} graphs to {}",
            dir.display()
        );
        crate::cmd_export::export_to(path, &dir, target, chunk, context)?;
    }
    Ok(dir)
}

#[cfg(feature = "ort")]
fn load_ort(
    name: &str,
    path: &Path,
    threads: usize,
    graphs: &OnnxGraphs,
    _since_call: Instant,
) -> Result<LoadedBackend, String> {
    use crate::cmd_export::Target;
    use sotto_engine::ort::{Ep, ForeignDecoder, HybridBackend, OrtConfig, OrtDecoder};
    if name == "ort-foreign" {
        let dir = graphs
            .foreign_dir
            .as_ref()
            .ok_or("ort-foreign rows need --onnx-foreign DIR (model.onnx + config.json)")?;
        let t0 = Instant::now();
        let model = Model::load(path).map_err(|e| format!("loading {}: {e}", path.display()))?;
        let config = OrtConfig {
            intra_threads: threads,
            ..Default::default()
        };
        let backend = ForeignDecoder::open(&model.spec, dir, &config)
            .map_err(|e| format!("{name} ({}): {e}", dir.display()))?;
        return Ok(LoadedBackend {
            backend: Box::new(backend),
            load: t0.elapsed(),
            external_kv_bytes_per_position: None,
            isa: "ort-cpu".to_string(),
        });
    }
    // Exporting is not loading: the clock starts once the graphs exist.
    let (dir, config) = if name == "ort-qnn" || name == "hybrid-qnn" {
        let dir = graphs_dir(
            path,
            Target::QnnMixed,
            graphs.qnn_dir.as_ref(),
            graphs.context,
        )?;
        let eps = vec![Ep::Qnn(Default::default())];
        (
            dir,
            OrtConfig {
                eps,
                npu_only: true,
                intra_threads: threads,
                ..Default::default()
            },
        )
    } else {
        let dir = graphs_dir(path, Target::Cpu, graphs.cpu_dir.as_ref(), graphs.context)?;
        (
            dir,
            OrtConfig {
                intra_threads: threads,
                ..Default::default()
            },
        )
    };
    let t0 = Instant::now();
    let model =
        Arc::new(Model::load(path).map_err(|e| format!("loading {}: {e}", path.display()))?);
    let ort = OrtDecoder::open(&model.spec, &dir, &config)
        .map_err(|e| format!("{name} ({}): {e}", dir.display()))?;
    let (backend, isa): (Box<dyn Backend>, String) = match name {
        "hybrid" => {
            let cpu = CpuBackend::new(model, threads).map_err(|e| format!("cpu backend: {e}"))?;
            let b = HybridBackend::new(ort, cpu).map_err(|e| e.to_string())?;
            (Box::new(b), format!("ort-cpu+{}", kernel_isa()?))
        }
        "hybrid-qnn" => {
            let cpu = CpuBackend::new(model, threads).map_err(|e| format!("cpu backend: {e}"))?;
            let b = HybridBackend::new(ort, cpu).map_err(|e| e.to_string())?;
            (Box::new(b), format!("{}+{}", qnn_label(), kernel_isa()?))
        }
        "ort-qnn" => (Box::new(ort), qnn_label().to_string()),
        _ => (Box::new(ort), "ort-cpu".to_string()),
    };
    Ok(LoadedBackend {
        backend,
        load: t0.elapsed(),
        external_kv_bytes_per_position: None,
        isa,
    })
}

#[cfg(not(feature = "ort"))]
fn load_ort(
    name: &str,
    _path: &Path,
    _threads: usize,
    _graphs: &OnnxGraphs,
    _t0: Instant,
) -> Result<LoadedBackend, String> {
    Err(format!("this sotto was built without ONNX Runtime, so no {name} rows; rebuild with `cargo build --release -p sotto --features ort` (and run scripts/ort-deps.sh)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_knows_cpu_and_candle() {
        assert!(uses_sotto_kernels("cpu"));
        assert!(!uses_sotto_kernels("candle"));
        assert!(!uses_sotto_kernels("nonesuch"));
        assert!(uses_sotto_kernels("hybrid") && !uses_sotto_kernels("ort-qnn"));
        assert!(uses_sotto_kernels("hybrid-qnn"));
        assert_eq!(
            names(),
            [
                "cpu",
                "candle",
                "ort-cpu",
                "ort-qnn",
                "hybrid",
                "hybrid-qnn",
                "ort-foreign"
            ]
        );
    }

    #[test]
    fn unknown_backends_are_refused_by_name() {
        let g = OnnxGraphs::default();
        let err = load_backend("tpu", Path::new("/nonexistent.gguf"), 1, &g).unwrap_err();
        assert!(err.contains("tpu") && err.contains("cpu"), "{err}");
        let err = load_backend("cpu", Path::new("/nonexistent.gguf"), 1, &g).unwrap_err();
        assert!(err.contains("/nonexistent.gguf"), "{err}");
    }
}
