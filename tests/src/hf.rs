//! Hugging Face folders made from the default model (issue 13's fixtures).
//!
//! `tests/scripts/hf_folder_from_gguf.py` writes them with PyPI gguf, numpy,
//! safetensors and tokenizers only (no Sotto code), from the GGUF llama.cpp
//! runs, so the folder and the GGUF are two renderings of one model that
//! independent engines read. The script runs on the llama.cpp reference
//! python (its venv pins those packages) and checks its tokenizer.json
//! against llama.cpp's ids for the 364 reference strings before the folder
//! is kept.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;

use crate::default_model_path;
use crate::parity::{cache_dir, llama_python, repo_root};

/// How the fixture stores its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FolderDtype {
    /// F32 tensors (the dequantized GGUF exactly).
    F32,
    /// F16 tensors.
    F16,
}

impl FolderDtype {
    fn name(self) -> &'static str {
        match self {
            FolderDtype::F32 => "f32",
            FolderDtype::F16 => "f16",
        }
    }
}

/// The default model as a Hugging Face folder in `dtype`, split into
/// `shards` safetensors files (an index when more than one). Written once
/// into `<cache>/parity/hf/` (keyed by the script, the model file and the
/// options) and reused; written to a temporary folder first and renamed, so
/// a folder that exists is complete.
pub fn fixture_folder(dtype: FolderDtype, shards: usize) -> PathBuf {
    let model = default_model_path();
    let script = repo_root().join("tests/scripts/hf_folder_from_gguf.py");
    let script_text =
        std::fs::read(&script).unwrap_or_else(|e| panic!("reading {}: {e}", script.display()));
    let model_len = std::fs::metadata(&model)
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()))
        .len();
    let mut hasher = DefaultHasher::new();
    (script_text, model_len, dtype.name(), shards).hash(&mut hasher);
    let dir = cache_dir().join("hf").join(format!(
        "smollm2-{}-{shards}-{:016x}",
        dtype.name(),
        hasher.finish()
    ));
    if dir.join("config.json").is_file() {
        return dir;
    }
    let parent = dir.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&parent)
        .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    let tmp = parent.join(format!(
        ".tmp-{}-{shards}-{}",
        dtype.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let tokens = crate::data_dir().join("llama_cpp/tokenization.json");
    let mut cmd = Command::new(llama_python());
    cmd.arg(&script)
        .arg(&model)
        .arg(&tmp)
        .args(["--dtype", dtype.name(), "--shards", &shards.to_string()])
        .arg("--check-tokens")
        .arg(&tokens);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed ({status})");
    // Another test process may have finished the same folder first: theirs
    // is as good as ours.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(
            dir.join("config.json").is_file(),
            "fixture folder {} was not written",
            dir.display()
        );
    }
    dir
}
