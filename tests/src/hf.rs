//! Hugging Face folders made from the default model (issue 13's fixtures).
//!
//! `tests/scripts/hf_folder_from_gguf.py` writes them with PyPI gguf, numpy,
//! safetensors and tokenizers only (no Sotto code), from the GGUF llama.cpp
//! runs, so the folder and the GGUF are two renderings of one model that
//! independent engines read. The script runs on the llama.cpp reference
//! python (its venv pins those packages) and checks its tokenizer.json
//! against llama.cpp's ids for the 364 reference strings before the folder
//! is kept.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

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
    let tokens = crate::data_dir().join("llama_cpp/tokenization.json");
    let shards = shards.to_string();
    crate::script_fixture(
        "hf_folder_from_gguf.py",
        "hf",
        &format!("smollm2-{}-{shards}", dtype.name()),
        &[
            OsStr::new("--dtype"),
            OsStr::new(dtype.name()),
            OsStr::new("--shards"),
            OsStr::new(&shards),
            OsStr::new("--check-tokens"),
            tokens.as_os_str(),
        ],
        "config.json",
    )
}

/// The GGUF at `gguf` (a Llama, Mistral-style Llama, Qwen 2, Qwen 3,
/// Gemma 2 or Gemma 3 model, such as `tiny_arch`'s random-weight files) as
/// a Hugging Face folder in `dtype` named after `stem`; `rope_scaling` is
/// config.json's `rope_scaling` (JSON) for a file whose Llama 3 scaling is
/// a `rope_freqs` tensor, whose parameters the file does not hold.
pub fn folder_of(
    gguf: &Path,
    stem: &str,
    dtype: FolderDtype,
    rope_scaling: Option<&str>,
) -> PathBuf {
    let mut args = vec![OsStr::new("--dtype"), OsStr::new(dtype.name())];
    if let Some(s) = rope_scaling {
        args.extend([OsStr::new("--rope-scaling"), OsStr::new(s)]);
    }
    crate::script_fixture_from(
        gguf,
        "hf_folder_from_gguf.py",
        "hf",
        stem,
        &args,
        "config.json",
    )
}
