//! `--compare llama.cpp`: the same sweep on llama.cpp through
//! benches/llama_cpp_bench.py (llama-cpp-python's low-level API), whose JSON
//! rows share [`BenchRow`]'s schema.

use super::report::BenchRow;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How to get llama-cpp-python without AMX: the CPUs here advertise AMX
/// while the kernel disables it, and a native build would crash. Native
/// otherwise, as `scripts/llama-deps.sh` builds it: a build for a lesser
/// ISA (AVX2 on an AVX-512 machine) understates llama.cpp.
pub const INSTALL_HINT: &str = "install llama-cpp-python built for this CPU with AMX off \
(in a source checkout, scripts/llama-deps.sh does this and prints the python to pass):\n  \
CMAKE_ARGS=\"-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \
-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" \
pip install --no-binary llama-cpp-python llama-cpp-python";

/// The python `--python` defaults to: `$SOTTO_LLAMA_PYTHON`, else the venv
/// `scripts/llama-deps.sh` built last under the user cache (`llama/`; one
/// carrying the stamp it writes once the build imports), else `python3`.
pub fn default_python(cache: &Path) -> String {
    if let Some(p) = std::env::var_os("SOTTO_LLAMA_PYTHON").filter(|p| !p.is_empty()) {
        return p.to_string_lossy().into_owned();
    }
    built_venv_python(&cache.join("llama")).map_or_else(
        || "python3".to_string(),
        |p| p.to_string_lossy().into_owned(),
    )
}

/// The python of the newest stamped venv under `dir`.
fn built_venv_python(dir: &Path) -> Option<PathBuf> {
    let stamped = |venv: &Path| {
        let stamp = venv.join(".sotto-llama-deps").metadata().ok()?;
        let python = venv.join("bin/python");
        python.is_file().then_some((stamp.modified().ok()?, python))
    };
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| stamped(&e.path()))
        .max_by_key(|(when, _)| *when)
        .map(|(_, python)| python)
}

/// The sweep to mirror.
#[derive(Clone, Debug)]
pub struct LlamaCppSweep<'a> {
    pub python: &'a str,
    pub model: &'a Path,
    pub n_prompt: &'a [usize],
    pub n_gen: &'a [usize],
    pub threads: &'a [usize],
    pub depths: &'a [usize],
    /// KV cache types (`type_k` / `type_v` there).
    pub kv_types: &'a [sotto_engine::KvTypes],
    pub repetitions: usize,
    pub warmup: usize,
    pub seed: u64,
}

/// benches/llama_cpp_bench.py: $SOTTO_LLAMA_BENCH_SCRIPT, then the source
/// tree this binary was built from, then ./benches.
pub fn script_path() -> Result<PathBuf, String> {
    let candidates = [
        std::env::var_os("SOTTO_LLAMA_BENCH_SCRIPT").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/llama_cpp_bench.py")),
        Some(PathBuf::from("benches/llama_cpp_bench.py")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "benches/llama_cpp_bench.py not found; set SOTTO_LLAMA_BENCH_SCRIPT to its path"
                .to_string()
        })
}

fn list(xs: &[usize]) -> String {
    xs.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The script's arguments for `sweep`.
pub fn script_args(sweep: &LlamaCppSweep<'_>) -> Vec<String> {
    let mut args = vec!["-m".to_string(), sweep.model.display().to_string()];
    for (flag, xs) in [
        ("-p", sweep.n_prompt),
        ("-n", sweep.n_gen),
        ("-t", sweep.threads),
        ("-d", sweep.depths),
    ] {
        args.push(flag.to_string());
        args.push(list(xs));
    }
    for kv in sweep.kv_types {
        args.push("--kv-type".to_string());
        args.push(kv.to_string());
    }
    args.extend([
        "-r".to_string(),
        sweep.repetitions.to_string(),
        "--warmup".to_string(),
        sweep.warmup.to_string(),
        "--seed".to_string(),
        sweep.seed.to_string(),
    ]);
    args
}

/// Runs the sweep on llama.cpp and returns its rows.
pub fn run(sweep: &LlamaCppSweep<'_>) -> Result<Vec<BenchRow>, String> {
    let probe = Command::new(sweep.python)
        .args(["-c", "import llama_cpp"])
        .output()
        .map_err(|e| {
            format!(
                "--compare llama.cpp needs {} ({e}); then {INSTALL_HINT}",
                sweep.python
            )
        })?;
    if !probe.status.success() {
        return Err(format!(
            "--compare llama.cpp: llama_cpp is not importable by {}; {INSTALL_HINT}",
            sweep.python
        ));
    }
    let script = script_path()?;
    let out = Command::new(sweep.python)
        .arg(&script)
        .args(script_args(sweep))
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            tail.join("\n")
        ));
    }
    let rows: Vec<BenchRow> = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} printed rows that do not parse: {e}", script.display()))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_gets_the_same_sweep() {
        let sweep = LlamaCppSweep {
            python: "python3",
            model: Path::new("/m.gguf"),
            n_prompt: &[128, 512],
            n_gen: &[128],
            threads: &[1, 2],
            depths: &[0],
            kv_types: &[sotto_engine::KvTypes::parse("q8_0,q4_0").unwrap()],
            repetitions: 3,
            warmup: 1,
            seed: 9,
        };
        assert_eq!(
            script_args(&sweep).join(" "),
            "-m /m.gguf -p 128,512 -n 128 -t 1,2 -d 0 --kv-type q8_0,q4_0 -r 3 --warmup 1 --seed 9"
        );
        assert!(script_path().is_ok(), "the script ships in the source tree");
    }

    #[test]
    fn a_missing_python_is_a_clear_error() {
        let sweep = LlamaCppSweep {
            python: "/nonexistent/python3",
            model: Path::new("/m.gguf"),
            n_prompt: &[8],
            n_gen: &[4],
            threads: &[1],
            depths: &[0],
            kv_types: &[],
            repetitions: 1,
            warmup: 0,
            seed: 1,
        };
        let err = run(&sweep).unwrap_err();
        assert!(err.contains("AMX") && err.contains("pip install"), "{err}");
        assert!(
            err.contains("GGML_NATIVE=ON"),
            "the hint builds for this CPU: {err}"
        );
    }

    #[test]
    fn the_default_python_is_the_newest_built_venv() {
        let dir = std::env::temp_dir().join(format!("sotto-llama-venvs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(built_venv_python(&dir), None, "no cache folder");
        let venv = |name: &str, stamp: bool| {
            let v = dir.join(name);
            std::fs::create_dir_all(v.join("bin")).unwrap();
            std::fs::write(v.join("bin/python"), "").unwrap();
            if stamp {
                std::fs::write(v.join(".sotto-llama-deps"), name).unwrap();
            }
            v.join("bin/python")
        };
        venv("half-built", false);
        assert_eq!(
            built_venv_python(&dir),
            None,
            "a venv without the stamp is not used"
        );
        let old = venv("old", true);
        assert_eq!(built_venv_python(&dir), Some(old));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let new = venv("new", true);
        assert_eq!(built_venv_python(&dir), Some(new));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
