//! Helpers shared by the integration tests (model location, reference data,
//! and [`parity`]: llama.cpp references and the criteria Sotto is held to).
// Test helpers fail loudly by design: a missing model or reference file
// must stop the test with instructions, not skip it.
#![allow(clippy::panic)]

pub mod hf;
pub mod parity;
pub mod tiny_arch;
pub mod tokenization;

use std::path::{Path, PathBuf};

pub mod bridge_peer;
pub mod bridge_user;

/// File name of the default test model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model the integration tests run on: `$SOTTO_MODEL`, else
/// [`fetched_model`]`("SmolLM2-135M-Instruct.Q4_1.gguf")`.
///
/// Panics with instructions when the file is missing: a test that needs the
/// real model must fail, not skip, when it is absent.
pub fn default_model_path() -> PathBuf {
    let path = match std::env::var_os("SOTTO_MODEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => fetched_model(DEFAULT_MODEL_FILE),
    };
    assert!(
        path.is_file(),
        "test model not found at {}: run `cargo run -p sotto -- fetch` (or set SOTTO_MODEL to a GGUF file)",
        path.display()
    );
    path
}

/// Where `sotto fetch` keeps the model `file`: `models/` in Sotto's user
/// cache (`sotto_engine::user_cache_dir`).
pub fn fetched_model(file: &str) -> PathBuf {
    sotto_engine::user_cache_dir()
        .unwrap_or_default()
        .join("models")
        .join(file)
}

/// BOS and the first `n` tokens of the repository's README: a long run of
/// ordinary text for tests that need positions deep in the cache.
pub fn readme_tokens(model: &sotto_models::Model, n: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(parity::repo_root().join("README.md")).unwrap_or_default();
    let mut ids: Vec<u32> = model.tokenizer.bos_id().into_iter().collect();
    ids.extend(model.tokenizer.encode(&text, false).unwrap_or_default());
    assert!(
        ids.len() >= n,
        "README is {} tokens, {n} asked for",
        ids.len()
    );
    ids.truncate(n);
    ids
}

/// The default model, loaded once per test binary and shared.
pub fn default_model() -> std::sync::Arc<sotto_models::Model> {
    static MODEL: std::sync::OnceLock<std::sync::Arc<sotto_models::Model>> =
        std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = default_model_path();
            std::sync::Arc::new(
                sotto_models::Model::load(&path)
                    .unwrap_or_else(|e| panic!("loading {}: {e}", path.display())),
            )
        })
        .clone()
}

/// A generation session of `context` positions on the default model's CPU
/// backend (every core).
pub fn default_session(context: usize) -> sotto_engine::Session {
    let m = default_model();
    let backend =
        sotto_engine::CpuBackend::new(m.clone(), 0).unwrap_or_else(|e| panic!("cpu backend: {e}"));
    sotto_engine::Session::new(
        Box::new(backend),
        std::sync::Arc::new(m.tokenizer.clone()),
        context,
    )
    .unwrap_or_else(|e| panic!("session: {e}"))
}

/// Directory of the checked-in test data (`tests/data`).
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Reads and parses a JSON file under `tests/data`, panicking with the path
/// and the reason when it is missing or malformed.
pub fn read_json<T: serde::de::DeserializeOwned>(relative: &str) -> T {
    let path = data_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reference data {} unreadable: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("reference data {} malformed: {e}", path.display()))
}

/// The folder `tests/scripts/{script}` writes from the default model, run
/// as `script MODEL OUT_DIR ARGS...` on the reference python (independent
/// fixtures: no Sotto code). Written once into `<cache>/parity/{group}/`
/// as `{stem}-{hash}`, the hash keyed by the script's text, the model file
/// and `args`, and reused; written to a temporary folder first and renamed,
/// so a folder holding `marker` is complete.
pub fn script_fixture(
    script: &str,
    group: &str,
    stem: &str,
    args: &[&std::ffi::OsStr],
    marker: &str,
) -> PathBuf {
    script_fixture_from(&default_model_path(), script, group, stem, args, marker)
}

/// [`script_fixture`] from the GGUF at `model` (its path and size key the
/// cached folder too).
pub fn script_fixture_from(
    model: &Path,
    script: &str,
    group: &str,
    stem: &str,
    args: &[&std::ffi::OsStr],
    marker: &str,
) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let script = parity::repo_root().join("tests/scripts").join(script);
    let script_text =
        std::fs::read(&script).unwrap_or_else(|e| panic!("reading {}: {e}", script.display()));
    let model_len = std::fs::metadata(model)
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()))
        .len();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (script_text, model, model_len, args).hash(&mut hasher);
    let parent = parity::cache_dir().join(group);
    let dir = parent.join(format!("{stem}-{:016x}", hasher.finish()));
    if dir.join(marker).exists() {
        return dir;
    }
    std::fs::create_dir_all(&parent)
        .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    // One temporary folder per call: tests of one process may ask for the
    // same fixture at the same time.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".tmp-{stem}-{}-{call}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut cmd = std::process::Command::new(parity::llama_python());
    cmd.arg(&script).arg(model).arg(&tmp).args(args);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed ({status})");
    // Another test process may have finished the same folder first: theirs
    // is as good as ours.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(
            dir.join(marker).exists(),
            "fixture folder {} was not written",
            dir.display()
        );
    }
    dir
}

/// A QNN context-binary cache directory for one test (`name`), kept in the
/// user cache across runs so the HTP emulator's graph preparation (a minute
/// or more per graph pair on the default model) is paid once. The ORT
/// backend reuses a context binary only when its sidecar names the digest of
/// the exact graph bytes it was prepared from: a changed export prepares
/// again. Both paths are tested on their own in ort_qnn_decoder.
pub fn qnn_context_cache(name: &str) -> PathBuf {
    let dir = parity::cache_dir().join("qnn-context").join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

pub use sotto_models::testutil::TempFile;

/// A tiny random Llama (2 layers, d_model 32, 4/2 heads of 8, ffn 64)
/// written to a temporary GGUF file named after `tag`, removed (with its
/// folder) when the value drops.
pub fn tiny_llama_file(tag: &str) -> TempFile {
    use sotto_models::testutil::{tiny_model, write_temp, TinyDims};
    let dims = TinyDims {
        n_layer: 2,
        d_model: 32,
        n_head: 4,
        n_kv_head: 2,
        head_dim: 8,
        ffn_dim: 64,
    };
    write_temp(tag, &tiny_model("llama", dims).to_bytes())
        .unwrap_or_else(|e| panic!("writing the tiny model: {e}"))
}

/// [`tiny_llama_file`] loaded, for tests of export and runtime plumbing
/// that do not need real weights, with the file: keep it while the model
/// is in use (an export's manifest names it for the tokenizer).
pub fn tiny_llama(tag: &str) -> (sotto_models::Model, TempFile) {
    let file = tiny_llama_file(tag);
    let model =
        sotto_models::Model::load(&file).unwrap_or_else(|e| panic!("loading the tiny model: {e}"));
    (model, file)
}

pub use tempfile::TempDir;

/// A scratch folder for one test, named `sotto-<tag>-…` under the system's
/// temporary directory and removed when the value drops: when the test
/// ends, passed or not.
pub fn scratch_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("sotto-{tag}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a scratch folder for {tag}: {e}"))
}

/// Relative L2 distance `|a - b| / |b|`, accumulated in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "rel_l2 of vectors of different lengths");
    let e: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (e / n).sqrt() as f32
}

/// Index of the largest value (the first of equals).
pub fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0 as u32
}

/// Options for greedy generation of up to `max_tokens` tokens.
pub fn greedy(max_tokens: usize) -> sotto_engine::GenerateOptions {
    sotto_engine::GenerateOptions {
        sampler: sotto_engine::SamplerConfig::greedy(),
        max_tokens,
        ..Default::default()
    }
}

/// Options for plain sampling at temperature 1 (no top-k, top-p or min-p
/// truncation) from `seed`, up to `max_tokens` tokens.
pub fn sampled(seed: u64, max_tokens: usize) -> sotto_engine::GenerateOptions {
    sotto_engine::GenerateOptions {
        sampler: sotto_engine::SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..sotto_engine::SamplerConfig::default()
        },
        max_tokens,
        ..Default::default()
    }
}

/// Runs the program `exe` (a CLI under test, e.g. `env!("CARGO_BIN_EXE_sotto")`)
/// with `args`, writing `stdin` to its standard input; its output.
pub fn run_with_stdin(exe: &str, args: &[&std::ffi::OsStr], stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {exe}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .unwrap_or_else(|e| panic!("writing to {exe}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {exe}: {e}"))
}

/// Bytes of a program's output as text (lossy UTF-8).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
