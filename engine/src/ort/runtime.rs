//! Finding and loading ONNX Runtime, once per process. The library comes
//! from (in order) [`OrtConfig::runtime_path`], `ORT_DYLIB_PATH`, or the
//! cache scripts/ort-deps.sh fills (`ort/` in the user cache).
//!
//! The environment also installs a logger: sessions are created with a
//! unique log id at verbose level, and the lines ONNX Runtime writes about
//! node placement are kept per log id for the placement report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::logging::LogLevel;

use super::ep::Ep;
use super::{Error, Result};

pub const ORT_VERSION: &str = "1.31.1";

/// Backend configuration.
#[derive(Debug, Clone)]
pub struct OrtConfig {
    /// `libonnxruntime.so`; default `ORT_DYLIB_PATH`, then the cache.
    pub runtime_path: Option<PathBuf>,
    /// EP chain in priority order.
    pub eps: Vec<Ep>,
    /// Refuse CPU fallback (`session.disable_cpu_ep_fallback = 1`).
    pub npu_only: bool,
    /// CPU EP threads (0 = ONNX Runtime's default).
    pub intra_threads: usize,
}

impl Default for OrtConfig {
    fn default() -> Self {
        OrtConfig {
            runtime_path: None,
            eps: vec![Ep::Cpu],
            npu_only: false,
            intra_threads: 0,
        }
    }
}

/// `$SOTTO_ORT_DIR/site-packages`, else `ort/site-packages` in the user
/// cache ([`crate::user_cache_dir`]), where scripts/ort-deps.sh installs.
pub fn cache_site_packages() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SOTTO_ORT_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("site-packages"));
    }
    crate::user_cache_dir().map(|c| c.join("ort").join("site-packages"))
}

/// First existing path of `explicit`, `$env`, `cached`; a typed error
/// listing all of them otherwise.
pub fn locate(
    what: &'static str,
    explicit: Option<&Path>,
    env: &'static str,
    cached: Option<PathBuf>,
) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = if let Some(p) = explicit {
        // An explicit path is a decision: never silently replace it.
        vec![p.to_path_buf()]
    } else {
        std::env::var_os(env)
            .map(PathBuf::from)
            .into_iter()
            .chain(cached)
            .collect()
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(Error::LibraryMissing {
            what,
            searched: candidates,
            env,
        })
}

pub fn runtime_library(config: &OrtConfig) -> Result<PathBuf> {
    locate(
        "ONNX Runtime library",
        config.runtime_path.as_deref(),
        "ORT_DYLIB_PATH",
        cache_site_packages()
            .map(|d| d.join(format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"))),
    )
}

type LogLines = Arc<Mutex<HashMap<String, Vec<String>>>>;

struct Runtime {
    env: Environment,
    log: LogLines,
    registered: Mutex<Vec<String>>,
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// Lines kept for the placement report: ONNX Runtime's node placement
/// summary and the QNN EP's per-node validation verdicts.
fn keep_line(location: &str, message: &str) -> bool {
    (location.contains("session_state.cc")
        && (message.contains("placed on") || message.starts_with("  ")))
        || (location.contains("qnn_execution_provider.cc") && message.contains("Validation FAILED"))
        || message.contains("number of nodes supported")
}

fn runtime(config: &OrtConfig) -> Result<&'static Runtime> {
    let path = runtime_library(config)?;
    let rt = RUNTIME.get_or_init(|| {
        let log: LogLines = Arc::default();
        let sink = Arc::clone(&log);
        let built = ort::init_from(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                b.with_name("sotto")
                    .with_telemetry(false)
                    .with_logger(Arc::new(
                        move |_level: LogLevel,
                              _cat: &str,
                              id: &str,
                              location: &str,
                              message: &str| {
                            if !id.is_empty() && keep_line(location, message) {
                                if let Ok(mut m) = sink.lock() {
                                    m.entry(id.to_string())
                                        .or_default()
                                        .push(message.to_string());
                                }
                            }
                        },
                    ))
                    .build()
                    .map_err(|e| e.to_string())
            });
        built.map(|env| Runtime {
            env,
            log,
            registered: Mutex::new(Vec::new()),
        })
    });
    rt.as_ref().map_err(|reason| Error::RuntimeLoad {
        path,
        reason: reason.clone(),
    })
}

/// The process environment (loading the runtime on first use).
pub fn environment(config: &OrtConfig) -> Result<&'static Environment> {
    Ok(&runtime(config)?.env)
}

/// Registers a plugin EP library once per process.
pub fn register_ep_library(config: &OrtConfig, name: &str, library: &Path) -> Result<()> {
    let rt = runtime(config)?;
    let mut done = rt.registered.lock().map_err(|_| Error::Poisoned {
        what: "EP registry",
    })?;
    if done.iter().any(|n| n == name) {
        return Ok(());
    }
    rt.env
        .register_ep_library(name, library)
        .map_err(|e| Error::EpUnavailable {
            ep: name.to_string(),
            reason: format!("{}: {e}", library.display()),
        })?;
    done.push(name.to_string());
    Ok(())
}

/// Takes the log lines captured for session log id `id`.
pub fn take_log(id: &str) -> Vec<String> {
    RUNTIME
        .get()
        .and_then(|r| r.as_ref().ok())
        .and_then(|r| r.log.lock().ok().and_then(|mut m| m.remove(id)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_explicit_library_is_a_typed_error_naming_the_script() {
        let cfg = OrtConfig {
            runtime_path: Some("/nonexistent/libonnxruntime.so".into()),
            ..Default::default()
        };
        let err = runtime_library(&cfg).unwrap_err();
        assert!(
            matches!(err, Error::LibraryMissing { ref searched, .. } if searched.len() == 1),
            "{err}"
        );
        assert!(err.to_string().contains("scripts/ort-deps.sh"));
    }
}
