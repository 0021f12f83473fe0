//! `sotto bench --sweep-sizes`: the bench at the sizes of real small
//! models, on random-weight GGUFs in their exact shapes.
//!
//! Speed does not depend on the weight values, so a file with a real
//! model's tensor shapes, architecture, vocabulary size and tied or untied
//! output is an honest speed fixture. Each is written once into the user
//! cache (`<cache>/sweep/`, never into the source tree) by
//! tests/scripts/tiny_arch_gguf.py (PyPI `gguf`): Q8_0 everywhere, which is
//! also the Q8_0 fixture; Q4_0 and Q4_K_M are llama.cpp's own quantizer's
//! presets applied to it (tests/scripts/llama_ref.py quantize, through
//! llama-cpp-python's `llama_model_quantize`), so they hold the mix of
//! types real files of those presets hold. Every file is benched in its own
//! `sotto bench -o json` child (with `--compare llama.cpp` when asked), and
//! the rows are gathered into one table per size.

use super::report::{BenchRow, Report};
use super::sweep::TestKind;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A real model's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The `--sweep-sizes` name.
    pub name: &'static str,
    /// The model it copies.
    pub model: &'static str,
    /// tiny_arch_gguf.py's architecture (`llama`: Llama 3 rope, `qwen2`:
    /// QKV biases).
    pub arch: &'static str,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// The output projection is the embedding table.
    pub tied: bool,
}

/// The shapes, from the models' `config.json`.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "smollm2-360m",
        model: "SmolLM2-360M",
        arch: "llama",
        layers: 32,
        d_model: 960,
        heads: 15,
        kv_heads: 5,
        head_dim: 64,
        ffn: 2560,
        vocab: 49152,
        tied: true,
    },
    Shape {
        name: "qwen2.5-0.5b",
        model: "Qwen2.5-0.5B",
        arch: "qwen2",
        layers: 24,
        d_model: 896,
        heads: 14,
        kv_heads: 2,
        head_dim: 64,
        ffn: 4864,
        vocab: 151936,
        tied: true,
    },
    Shape {
        name: "llama3.2-1b",
        model: "Llama-3.2-1B",
        arch: "llama",
        layers: 16,
        d_model: 2048,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
        ffn: 8192,
        vocab: 128256,
        tied: true,
    },
    Shape {
        name: "qwen2.5-1.5b",
        model: "Qwen2.5-1.5B",
        arch: "qwen2",
        layers: 28,
        d_model: 1536,
        heads: 12,
        kv_heads: 2,
        head_dim: 128,
        ffn: 8960,
        vocab: 151936,
        tied: true,
    },
    Shape {
        name: "llama3.2-3b",
        model: "Llama-3.2-3B",
        arch: "llama",
        layers: 28,
        d_model: 3072,
        heads: 24,
        kv_heads: 8,
        head_dim: 128,
        ffn: 8192,
        vocab: 128256,
        tied: true,
    },
];

/// `default`: the first four shapes (the 3B one is asked by name or `all`).
const DEFAULT_COUNT: usize = 4;

/// Weight types of the sweep: (name, llama.cpp ftype preset to quantize the
/// Q8_0 file with; none for Q8_0 itself).
pub const TYPES: &[(&str, Option<&str>)] = &[
    ("q4_0", Some("Q4_0")),
    ("q4_k_m", Some("Q4_K_M")),
    ("q8_0", None),
];

/// The shapes `--sweep-sizes` names (`default`, `all`, or names).
pub fn parse_shapes(names: &[String]) -> Result<Vec<Shape>, String> {
    let mut out: Vec<Shape> = Vec::new();
    for name in names {
        let picked: Vec<Shape> = match name.as_str() {
            "default" => SHAPES[..DEFAULT_COUNT].to_vec(),
            "all" => SHAPES.to_vec(),
            n => match SHAPES.iter().find(|s| s.name == n) {
                Some(s) => vec![*s],
                None => {
                    let known: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
                    return Err(format!(
                        "unknown --sweep-sizes {n:?}; default, all, or of: {}",
                        known.join(", ")
                    ));
                }
            },
        };
        for s in picked {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// The types `--sweep-types` names.
pub fn parse_types(names: &[String]) -> Result<Vec<&'static str>, String> {
    names
        .iter()
        .map(|n| {
            let n = n.to_ascii_lowercase();
            TYPES
                .iter()
                .find(|(t, _)| *t == n)
                .map(|(t, _)| *t)
                .ok_or_else(|| {
                    let known: Vec<&str> = TYPES.iter().map(|(t, _)| *t).collect();
                    format!("unknown --sweep-types {n:?}; one of {}", known.join(", "))
                })
        })
        .collect()
}

/// tests/scripts/NAME: $SOTTO_SCRIPTS_DIR, then the source tree this binary
/// was built from, then ./tests/scripts.
fn script(name: &str) -> Result<PathBuf, String> {
    let candidates = [
        std::env::var_os("SOTTO_SCRIPTS_DIR").map(|d| PathBuf::from(d).join(name)),
        Some(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/scripts")
                .join(name),
        ),
        Some(PathBuf::from("tests/scripts").join(name)),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| format!("tests/scripts/{name} not found; set SOTTO_SCRIPTS_DIR"))
}

/// Where the fixture of `shape` in `wtype` lives.
pub fn fixture_path(cache: &Path, shape: &Shape, wtype: &str) -> PathBuf {
    cache
        .join("sweep")
        .join(format!("{}-random-{wtype}.gguf", shape.name))
}

/// tiny_arch_gguf.py's arguments for the Q8_0 file of `shape`.
pub fn generator_args(shape: &Shape, vocab_source: &Path, out: &Path) -> Vec<String> {
    let mut args = vec![
        shape.arch.to_string(),
        out.display().to_string(),
        "--bpe-vocab".into(),
        vocab_source.display().to_string(),
    ];
    for (flag, v) in [
        ("--layers", shape.layers),
        ("--d-model", shape.d_model),
        ("--heads", shape.heads),
        ("--kv-heads", shape.kv_heads),
        ("--head-dim", shape.head_dim),
        ("--ffn", shape.ffn),
        ("--vocab", shape.vocab),
    ] {
        args.push(flag.into());
        args.push(v.to_string());
    }
    args.push(if shape.tied { "--tied" } else { "--untied" }.into());
    for flag in ["--wtype", "--embd-type", "--output-type"] {
        args.push(flag.into());
        args.push("q8_0".into());
    }
    args
}

fn run_python(python: &str, args: &[String]) -> Result<(), String> {
    let status = Command::new(python)
        .args(args)
        .status()
        .map_err(|e| format!("running {python}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{python} {} failed ({status}); the sweep's fixtures need PyPI gguf and \
             llama-cpp-python in --python: {}",
            args.join(" "),
            super::llama_cpp::INSTALL_HINT
        ))
    }
}

/// The fixture of `shape` in `wtype`, written (with the Q8_0 file it is
/// quantized from) when missing; `vocab_source` is a GGUF with a byte-level
/// BPE tokenizer (the default model) whose vocabulary is copied and padded.
pub fn ensure_fixture(
    python: &str,
    cache: &Path,
    shape: &Shape,
    wtype: &str,
    vocab_source: &Path,
) -> Result<PathBuf, String> {
    let base = fixture_path(cache, shape, "q8_0");
    if !base.is_file() {
        let gen = script("tiny_arch_gguf.py")?;
        let mut args = vec![gen.display().to_string()];
        args.extend(generator_args(shape, vocab_source, &base));
        eprintln!("writing {} ({} shape, Q8_0)", base.display(), shape.model);
        run_python(python, &args)?;
    }
    let preset = TYPES
        .iter()
        .find(|(t, _)| *t == wtype)
        .ok_or_else(|| format!("unknown type {wtype}"))?
        .1;
    let Some(preset) = preset else {
        return Ok(base);
    };
    let out = fixture_path(cache, shape, wtype);
    // llama_ref.py quantize is cached by its inputs (a stamp beside the
    // file): it returns at once when `out` is up to date.
    let quantize = script("llama_ref.py")?;
    run_python(
        python,
        &[
            quantize.display().to_string(),
            "quantize".into(),
            "--model".into(),
            base.display().to_string(),
            "--type".into(),
            preset.into(),
            "--out".into(),
            out.display().to_string(),
        ],
    )?;
    Ok(out)
}

/// One benched fixture.
#[derive(Clone, Debug)]
pub struct SizeResult {
    pub shape: Shape,
    pub wtype: String,
    pub report: Report,
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |f| format!("{:.0}%", f * 100.0))
}

/// A row's share of what bounds it: decode, of the weights-sized read
/// bandwidth probe; prefill, of the integer dot peak.
fn use_of(row: &BenchRow) -> String {
    pct(match row.test {
        TestKind::Tg => row.bandwidth_fraction,
        TestKind::Pp => row.compute_fraction,
    })
}

/// The summary: one line per (size, type, threads, test) with both
/// engines' rates, the ratio and each row's share of its limit (decode:
/// the weights-sized bandwidth probe; prefill: the integer dot peak); then
/// the probe's levels per size.
pub fn markdown(results: &[SizeResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| model shape | type | weights MiB | threads | test | sotto t/s | llama.cpp t/s | vs llama.cpp | sotto use | llama.cpp use |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for r in results {
        let weights_mib = r.report.model.weights_bytes as f64 / (1024.0 * 1024.0);
        let ours = r.report.rows.iter().filter(|x| x.backend != "llama.cpp");
        for row in ours {
            let theirs: Option<&BenchRow> = r.report.rows.iter().find(|l| {
                l.backend == "llama.cpp"
                    && (l.test, l.n_prompt, l.n_gen, l.depth, l.threads)
                        == (row.test, row.n_prompt, row.n_gen, row.depth, row.threads)
            });
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {:.2} | {} | {} | {} | {} |",
                r.shape.model,
                r.wtype,
                weights_mib,
                row.threads,
                row.label(),
                row.tokens_per_s_mean,
                theirs.map_or_else(|| "-".into(), |l| format!("{:.2}", l.tokens_per_s_mean)),
                row.ratio_vs_llama_cpp
                    .map_or_else(|| "-".into(), |x| format!("{x:.2}×")),
                use_of(row),
                theirs.map_or_else(|| "-".into(), use_of),
            );
        }
    }
    let _ = writeln!(out);
    for r in results {
        for p in r
            .report
            .bandwidth_levels
            .iter()
            .filter(|p| p.what == "weights")
        {
            let _ = writeln!(
                out,
                "- {} {}: weights-sized read bandwidth ({:.0} MiB) {} t {:.1} GB/s",
                r.shape.model,
                r.wtype,
                p.buffer_bytes as f64 / (1024.0 * 1024.0),
                p.threads,
                p.gb_per_s
            );
        }
    }
    if let Some(first) = results.first() {
        out.push_str(&super::report::bandwidth_levels_markdown(
            &first.report.bandwidth_levels,
        ));
        let _ = writeln!(out, "- machine: {}", first.report.machine.one_line());
        out.push_str(&super::report::llama_cpp_build_markdown(&first.report));
    }
    let _ = writeln!(
        out,
        "- use: a decode row's share of the weights-sized read bandwidth probe, a prefill \
         row's share of the integer dot peak (the report's BW use and dot use)"
    );
    let _ = writeln!(
        out,
        "- fixtures: random weights in the exact shapes (tests/scripts/tiny_arch_gguf.py), \
         Q4_0 and Q4_K_M by llama.cpp's quantizer from the Q8_0 file; t/s as in `sotto bench`"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_puts_each_rows_limit_beside_llama_cpps() {
        let results = [SizeResult {
            shape: SHAPES[0],
            wtype: "q4_0".into(),
            report: super::super::report::tests::report(),
        }];
        let text = markdown(&results);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("| sotto use | llama.cpp use |"));
        // pp128 t2: dot use 300 and 400 t/s × 10^8 MACs of 60 GMAC/s.
        assert!(lines[2].contains("| pp128 |") && lines[2].ends_with("| 0.75× | 50% | 67% |"));
        // tg128 t2: 49% of the bandwidth probe (weights and KV); llama.cpp
        // ran only 1 thread.
        assert!(lines[3].contains("| tg128 |") && lines[3].ends_with("| - | 49% | - |"));
        assert_eq!(lines.iter().filter(|l| l.starts_with('|')).count(), 4);
        assert!(text.contains("a prefill row's share of the integer dot peak"));
        assert!(text.contains("- llama.cpp built for: avx2\n"));
    }

    #[test]
    fn shapes_parse_by_name_default_and_all() {
        let d = parse_shapes(&["default".into()]).unwrap();
        assert_eq!(d.len(), 4);
        assert!(d.iter().all(|s| s.name != "llama3.2-3b"));
        assert_eq!(parse_shapes(&["all".into()]).unwrap().len(), SHAPES.len());
        let two = parse_shapes(&[
            "llama3.2-1b".into(),
            "llama3.2-1b".into(),
            "qwen2.5-0.5b".into(),
        ])
        .unwrap();
        assert_eq!(
            two.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["llama3.2-1b", "qwen2.5-0.5b"]
        );
        assert!(parse_shapes(&["gpt-5".into()])
            .unwrap_err()
            .contains("gpt-5"));
        assert_eq!(
            parse_types(&["Q4_K_M".into(), "q8_0".into()]).unwrap(),
            ["q4_k_m", "q8_0"]
        );
        assert!(parse_types(&["q3_k".into()]).is_err());
    }

    #[test]
    fn shapes_are_consistent() {
        for s in SHAPES {
            assert_eq!(s.heads % s.kv_heads, 0, "{}: GQA groups", s.name);
            assert!(s.head_dim * s.heads >= s.d_model / 2, "{}", s.name);
            // Block-quantized rows: every row length a multiple of 256
            // would be needed for k-quants everywhere; llama.cpp falls back
            // per tensor otherwise, which is what real files do too.
            assert_eq!(s.d_model % 32, 0, "{}", s.name);
        }
        // The parameter counts the names promise (±15 %).
        let params = |s: &Shape| {
            let attn = s.d_model * s.head_dim * (2 * s.heads + 2 * s.kv_heads);
            let ffn = 3 * s.d_model * s.ffn;
            let embd = s.vocab * s.d_model * if s.tied { 1 } else { 2 };
            (s.layers * (attn + ffn) + embd) as f64 / 1e9
        };
        for (name, want) in [
            ("smollm2-360m", 0.36),
            ("qwen2.5-0.5b", 0.49),
            ("llama3.2-1b", 1.24),
            ("qwen2.5-1.5b", 1.54),
            ("llama3.2-3b", 3.21),
        ] {
            let s = SHAPES.iter().find(|s| s.name == name).unwrap();
            let got = params(s);
            assert!((got / want - 1.0).abs() < 0.15, "{name}: {got:.3} B params");
        }
    }

    #[test]
    fn generator_gets_the_shape() {
        let s = SHAPES[1];
        let args = generator_args(&s, Path::new("/v.gguf"), Path::new("/o.gguf"));
        let joined = args.join(" ");
        assert!(joined.starts_with("qwen2 /o.gguf --bpe-vocab /v.gguf --layers 24 --d-model 896"));
        assert!(joined.contains("--vocab 151936 --tied --wtype q8_0"));
        assert_eq!(
            fixture_path(Path::new("/c"), &s, "q4_k_m"),
            Path::new("/c/sweep/qwen2.5-0.5b-random-q4_k_m.gguf")
        );
    }
}
