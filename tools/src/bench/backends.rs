//! The backends `sotto bench` can run, each a row name mapped onto the
//! engine's [`BackendChoice`] and opened through its one entry point
//! ([`LoadedModel::open`]). A new row is one [`BACKENDS`] entry and one arm
//! in `choice`.
//! The ONNX Runtime rows (ort-cpu, ort-qnn, hybrid, hybrid-qnn) run graphs
//! exported by `sotto export`, exported on first use when no directory is
//! given; ort-foreign runs a decoder another tool exported (`--onnx-foreign DIR`).

use crate::cmd_export::Target as ExportTarget;
use sotto_engine::{
    AdapterSpec, Backend, BackendChoice, BackendKind, CpuOptions, LoadedModel, OrtOptions,
    PackedCacheStatus,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// The CPU backend's repacked panels: packed at load (in how long) or
    /// mapped from the packed-panel cache; `None` when nothing is packed.
    pub packing: Option<String>,
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

/// The tier whose dot step the integer peak probe runs: the one `--isa`
/// forces when it forces exactly one, else dispatch's choice.
pub fn probed_isa(forced: &[String]) -> Option<sotto_kernels::dispatch::Isa> {
    use sotto_kernels::dispatch::{try_table, Isa};
    match forced {
        [one] if one != "auto" => Isa::parse(one).ok(),
        _ => try_table().ok().map(|t| t.isa),
    }
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

/// Graphs a row needs exported into the user cache before it opens.
type ToExport = Option<(PathBuf, ExportTarget)>;

/// The engine's description of row `name`, and the cached graphs it needs
/// exported first (none when directories are given).
fn choice(
    name: &str,
    path: &Path,
    threads: usize,
    graphs: &OnnxGraphs,
    kv: sotto_engine::KvTypes,
) -> Result<(BackendChoice, ToExport), String> {
    let cpu = CpuOptions {
        threads,
        isa: None,
        kv,
        packed_cache: None,
    };
    let on_cpu_ep = |dir| OrtOptions {
        threads,
        ..OrtOptions::cpu(dir)
    };
    let on_qnn = |dir| OrtOptions {
        graphs: dir,
        ep_chain: "qnn".into(),
        npu_only: true,
        threads,
    };
    let exported = |target, given: Option<&PathBuf>| -> Result<(PathBuf, ToExport), String> {
        match given {
            Some(dir) => Ok((dir.clone(), None)),
            None => {
                let dir = cache_dir(path, target, graphs.context)?;
                Ok((dir.clone(), Some((dir, target))))
            }
        }
    };
    let cpu_graphs = || exported(ExportTarget::Cpu, graphs.cpu_dir.as_ref());
    let qnn_graphs = || exported(ExportTarget::QnnMixed, graphs.qnn_dir.as_ref());
    Ok(match name {
        "cpu" => (BackendChoice::Cpu(cpu), None),
        "candle" => (BackendChoice::Candle { threads }, None),
        "ort-cpu" => {
            let (dir, export) = cpu_graphs()?;
            (BackendChoice::Ort(on_cpu_ep(dir)), export)
        }
        "ort-qnn" => {
            let (dir, export) = qnn_graphs()?;
            (BackendChoice::Ort(on_qnn(dir)), export)
        }
        "hybrid" => {
            let (dir, export) = cpu_graphs()?;
            let graphs = on_cpu_ep(dir);
            (BackendChoice::Hybrid { graphs, cpu }, export)
        }
        "hybrid-qnn" => {
            let (dir, export) = qnn_graphs()?;
            let graphs = on_qnn(dir);
            (BackendChoice::Hybrid { graphs, cpu }, export)
        }
        "ort-foreign" => {
            let dir = graphs
                .foreign_dir
                .clone()
                .ok_or("ort-foreign rows need --onnx-foreign DIR (model.onnx + config.json)")?;
            (BackendChoice::Ort(on_cpu_ep(dir)), None)
        }
        other => {
            return Err(format!(
                "unknown backend {other:?}; one of {}",
                names().join(", ")
            ))
        }
    })
}

/// LoRA adapters for the cpu rows (`--lora`, `--lora-merge`).
#[derive(Clone, Debug, Default)]
pub struct LoraOptions {
    /// The adapters, in order.
    pub adapters: Vec<AdapterSpec>,
    /// Merged into the weights at load (in the load column) rather than
    /// applied at run time.
    pub merge: bool,
}

impl LoraOptions {
    /// From the `--lora PATH[:SCALE]` values.
    pub fn parse(args: &[String], merge: bool) -> Result<LoraOptions, String> {
        let adapters = args
            .iter()
            .map(|a| AdapterSpec::parse(a).map_err(|e| format!("--lora {a}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LoraOptions { adapters, merge })
    }
}

/// Loads backend `name` on the model at `path` with `threads` threads,
/// through the engine's one entry point. Graph rows export their graphs
/// into the user cache first when none are given; exporting is not
/// loading, so the clock starts once they exist. `quant`: the weight
/// matrices quantized to that type at load (cpu rows only).
pub fn load_backend(
    name: &str,
    path: &Path,
    threads: usize,
    graphs: &OnnxGraphs,
    quant: Option<sotto_kernels::quant::DType>,
    lora: &LoraOptions,
    kv: sotto_engine::KvTypes,
) -> Result<LoadedBackend, String> {
    let (choice, to_export) = choice(name, path, threads, graphs, kv)?;
    // A backend this build lacks is refused before anything is exported.
    choice.ensure_compiled().map_err(|e| e.to_string())?;
    if let Some((dir, target)) = to_export {
        if sotto_engine::onnx::Manifest::open(&dir).is_err() {
            eprintln!(
                "sotto bench: exporting {target:?} graphs to {}",
                dir.display()
            );
            let chunk = export_chunk(graphs.context);
            crate::cmd_export::export_to(path, &dir, target, chunk, graphs.context)?;
        }
    }
    let fail = |e: sotto_engine::Error| format!("{name} ({}): {e}", path.display());
    let merged = if lora.merge { &lora.adapters[..] } else { &[] };
    let loaded = LoadedModel::open_with(path, choice, quant, merged).map_err(fail)?;
    let unmerged = if lora.merge {
        &[][..]
    } else {
        &lora.adapters[..]
    };
    let unmerged = unmerged
        .iter()
        .map(|a| loaded.load_adapter(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let isa = match (name, loaded.kind()) {
        // "+x16": weights repacked at load for the table's kernels (their
        // time is in the load column).
        (_, BackendKind::Cpu) if loaded.cpu_packed_bytes() > 0 => format!("{}+x16", kernel_isa()?),
        (_, BackendKind::Cpu) => kernel_isa()?,
        ("hybrid-qnn", _) => format!("{}+{}", qnn_label(), kernel_isa()?),
        (_, BackendKind::Hybrid) => format!("ort-cpu+{}", kernel_isa()?),
        ("ort-qnn", _) => qnn_label().to_string(),
        (_, BackendKind::Candle) => "candle".to_string(),
        _ => "ort-cpu".to_string(),
    };
    let packing = loaded
        .cpu_packed_cache()
        .filter(|s| **s != PackedCacheStatus::NothingPacked)
        .map(PackedCacheStatus::summary);
    Ok(LoadedBackend {
        packing,
        load: loaded.load_time(),
        external_kv_bytes_per_position: loaded.external_kv_bytes_per_position(),
        backend: loaded
            .backend_with(&unmerged)
            .map_err(|e| format!("{name}: {e}"))?,
        isa,
    })
}

/// Where a graph row's graphs are cached: `~/.cache/sotto/onnx`, per
/// model, target and context.
fn cache_dir(path: &Path, target: ExportTarget, context: usize) -> Result<PathBuf, String> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let home = std::env::var_os("HOME").ok_or("HOME is not set: pass --onnx-dir")?;
    Ok(PathBuf::from(home)
        .join(".cache/sotto/onnx")
        .join(format!("{stem}-{target:?}-c{context}-k{}", export_chunk(context)).to_lowercase()))
}

/// Tokens per prefill run of the graphs bench exports.
fn export_chunk(context: usize) -> usize {
    64.min(context)
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
        let none = LoraOptions::default();
        let refused = |backend: &str| {
            load_backend(
                backend,
                Path::new("/nonexistent.gguf"),
                1,
                &g,
                None,
                &none,
                Default::default(),
            )
            .unwrap_err()
        };
        let err = refused("tpu");
        assert!(err.contains("tpu") && err.contains("cpu"), "{err}");
        let err = refused("cpu");
        assert!(err.contains("/nonexistent.gguf"), "{err}");
    }
}
