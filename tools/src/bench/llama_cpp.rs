//! `--compare llama.cpp`: the same sweep on llama.cpp through
//! benches/llama_cpp_bench.py (llama-cpp-python's low-level API), whose JSON
//! rows share [`BenchRow`]'s schema.

use super::report::BenchRow;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How to get llama-cpp-python without AMX: the CPUs here advertise AMX
/// while the kernel disables it, and a native build would crash.
pub const INSTALL_HINT: &str = "install llama-cpp-python with AMX off:\n  \
CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF\" \
pip install --no-binary llama-cpp-python llama-cpp-python";

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
    }
}
