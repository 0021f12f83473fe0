//! The tiny random-weight GGUF of each architecture
//! (`tests/scripts/tiny_arch_gguf.py`) and llama.cpp's references for it,
//! written at test time and cached, for tests/tests/arch_*.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::parity::{
    cache_dir, generate_reference_within, llama_python, repo_root, RefBudget, Reference,
};
use crate::{data_dir, default_model_path};

/// A raw-text prompt of `tests/data/prompts/raw_text.json`.
#[derive(Debug, Deserialize)]
pub struct Prompt {
    pub name: String,
    pub text: String,
    #[serde(default = "yes")]
    pub parse_special: bool,
}

fn yes() -> bool {
    true
}

/// How much of [`prompts_path`] llama.cpp's references cover: the first
/// four prompts, 32 greedy tokens each, keeps every architecture's test
/// (llama.cpp's side included) well under a minute on 2 shared cores.
pub const BUDGET: RefBudget = RefBudget {
    max_new_tokens: 32,
    max_prompts: Some(4),
};

/// The eight raw-text prompts the architecture references are made from
/// (the first [`BUDGET`] of them are used).
pub fn prompts_path() -> PathBuf {
    data_dir().join("prompts/raw_text.json")
}

/// The prompts of [`prompts_path`].
pub fn prompts() -> Vec<Prompt> {
    let path = prompts_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The real Gemma-3-270M Q4_K_M file (its SentencePiece vocabulary):
/// `$SOTTO_GEMMA3_270M`, else [`crate::fetched_model`]`("gemma-3-270m-q4_k_m.gguf")`.
pub fn gemma3_270m_path() -> PathBuf {
    let path = match std::env::var_os("SOTTO_GEMMA3_270M") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::fetched_model("gemma-3-270m-q4_k_m.gguf"),
    };
    assert!(
        path.is_file(),
        "Gemma-3-270M not found at {}: run `cargo run -p sotto -- fetch gemma3-270m` \
         (or set SOTTO_GEMMA3_270M to the file)",
        path.display()
    );
    path
}

/// 64-bit FNV-1a: a cache key that does not change between Rust releases.
fn fnv1a(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The tiny GGUF of `arch` (a `tiny_arch_gguf.py` ARCH), written once per
/// version of the generator and its vocabulary sources.
pub fn tiny_file(arch: &str, twin: Option<&str>) -> PathBuf {
    tiny_file_with(arch, twin, None)
}

/// [`tiny_file`] with the layers' weight matrices in `wtype` (one of the
/// script's `--wtype` names: `q8_0`, `tq1_0`, ...) instead of f32.
pub fn tiny_file_with(arch: &str, twin: Option<&str>, wtype: Option<&str>) -> PathBuf {
    let script = repo_root().join("tests/scripts/tiny_arch_gguf.py");
    let text = std::fs::read(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let (bpe, spm) = (default_model_path(), gemma3_270m_path());
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .unwrap_or(0)
            .to_le_bytes()
    };
    let (bpe_size, spm_size) = (size(&bpe), size(&spm));
    let mut parts: Vec<&[u8]> = vec![
        &text,
        arch.as_bytes(),
        twin.unwrap_or("").as_bytes(),
        &bpe_size,
        &spm_size,
    ];
    if let Some(w) = wtype {
        parts.push(w.as_bytes());
    }
    let key = fnv1a(&parts);
    let dir = cache_dir().join("arch").join(key);
    let name = match (twin, wtype) {
        (Some(t), _) => format!("{arch}-as-{t}.gguf"),
        (None, Some(w)) => format!("{arch}-{w}.gguf"),
        (None, None) => format!("{arch}.gguf"),
    };
    let out = dir.join(name);
    if out.is_file() {
        return out;
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let partial = out.with_extension("partial");
    let mut cmd = Command::new(llama_python());
    cmd.arg(&script)
        .arg(arch)
        .arg(&partial)
        .arg("--bpe-vocab")
        .arg(&bpe)
        .arg("--spm-vocab")
        .arg(&spm);
    if let Some(t) = twin {
        cmd.arg("--twin").arg(t);
    }
    if let Some(w) = wtype {
        cmd.arg("--wtype").arg(w);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed ({status})");
    std::fs::rename(&partial, &out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    out
}

/// The tiny GGUF of `arch` as an F32 Hugging Face folder
/// ([`crate::hf::folder_of`]). The `llama` file's Llama 3 rope scaling is
/// a `rope_freqs` tensor; its folder gets the parameters
/// `tiny_arch_gguf.py` computes that tensor from as config.json's
/// `rope_scaling`.
pub fn tiny_folder(arch: &str) -> PathBuf {
    let rope_scaling = (arch == "llama").then_some(
        r#"{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}"#,
    );
    crate::hf::folder_of(
        &tiny_file(arch, None),
        &format!("tiny-{arch}"),
        crate::hf::FolderDtype::F32,
        rope_scaling,
    )
}

/// llama.cpp's references for `file` within [`BUDGET`], cached beside it.
pub fn reference(file: &Path) -> Reference {
    let stem = file
        .file_stem()
        .unwrap_or_else(|| panic!("{}: no file name", file.display()))
        .to_string_lossy();
    let out = file.with_file_name(format!("refs-{stem}"));
    generate_reference_within(file, &prompts_path(), &out, BUDGET)
}

/// llama.cpp's references for the real Gemma-3-270M file within [`BUDGET`],
/// cached under `parity/gemma3-270m` in the user cache.
pub fn gemma3_270m_reference() -> Reference {
    let out = cache_dir().join("gemma3-270m");
    generate_reference_within(&gemma3_270m_path(), &prompts_path(), &out, BUDGET)
}
