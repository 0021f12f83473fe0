//! The backends `sotto bench` can run, and the one factory that loads them.
//! A new backend (ort-cpu, ort-qnn, hybrid) is one [`BACKENDS`] row and one
//! arm in [`load_backend`].

use sotto_engine::{Backend, CpuBackend};
use sotto_models::Model;
use std::path::Path;
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
];

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
pub fn load_backend(name: &str, path: &Path, threads: usize) -> Result<LoadedBackend, String> {
    let t0 = Instant::now();
    match name {
        "cpu" => {
            let isa = kernel_isa()?;
            let model =
                Model::load(path).map_err(|e| format!("loading {}: {e}", path.display()))?;
            let backend = CpuBackend::new(Arc::new(model), threads)
                .map_err(|e| format!("cpu backend: {e}"))?;
            Ok(LoadedBackend {
                backend: Box::new(backend),
                load: t0.elapsed(),
                external_kv_bytes_per_position: None,
                isa,
            })
        }
        "candle" => load_candle(path, threads, t0),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_knows_cpu_and_candle() {
        assert!(uses_sotto_kernels("cpu"));
        assert!(!uses_sotto_kernels("candle"));
        assert!(!uses_sotto_kernels("nonesuch"));
        assert_eq!(names(), ["cpu", "candle"]);
    }

    #[test]
    fn unknown_backends_are_refused_by_name() {
        let err = load_backend("tpu", Path::new("/nonexistent.gguf"), 1).unwrap_err();
        assert!(err.contains("tpu") && err.contains("cpu"), "{err}");
        let err = load_backend("cpu", Path::new("/nonexistent.gguf"), 1).unwrap_err();
        assert!(err.contains("/nonexistent.gguf"), "{err}");
    }
}
