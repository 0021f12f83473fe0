//! A decoder exported by another tool, run as an engine backend
//! ([`ForeignDecoder`]), against the CPU backend on the same weights.
//!
//! The export is genuinely foreign: tests/scripts/foreign_onnx_llama.py
//! builds it with the `onnx` helper API from the Hugging Face definition of
//! Llama (optimum's I/O names, dynamic batch/sequence/past axes,
//! rotate-half RoPE on un-permuted Q/K rows, external weight data), reading
//! the weights of a tiny random llama GGUF with the `gguf` PyPI package. No
//! sotto code takes part in building it. Its Python dependencies come from
//! scripts/ort-deps.sh; the test runs that script itself when they are
//! missing and fails (never skips) if they still are.
//!
//! * parity: prefill logits at every position and 16 greedy decode steps
//!   against the CPU backend; the keys the graph wrote continue on the CPU
//!   backend (key layout hand-over);
//! * variants: f16 past/present/logits, no `position_ids`, no
//!   `attention_mask`;
//! * a two-turn chat reuses the cached prefix and answers like the CPU
//!   backend;
//! * typed errors: a graph without `present.1.value`, a config.json whose
//!   layer count (or head_dim) disagrees with the graph, `--npu-only` on
//!   dynamic shapes.
//!
//! Run with `--nocapture` for the figures.
#![cfg(feature = "ort")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use sotto_engine::onnx::{export_model, ExportOptions, WeightFormat};
use sotto_engine::ort::{self, ForeignDecoder, KvDtype, OrtConfig, OrtDecoder};
use sotto_engine::{
    Backend, Chat, CpuBackend, GenerateOptions, KvCache, LogitsFor, SamplerConfig, Session,
};
use sotto_models::testutil::{tiny_model_random, TinyDims};
use sotto_models::Model;
use sotto_tests::{argmax, rel_l2};

const DIMS: TinyDims = TinyDims {
    n_layer: 2,
    d_model: 32,
    n_head: 4,
    n_kv_head: 2,
    head_dim: 8,
    ffn_dim: 64,
};
const DECODE_STEPS: usize = 16;
/// Relative L2 of the foreign graph's logits against the CPU backend's.
/// Same f32 weights, f32 arithmetic on both sides; the difference is where
/// keys and values are rounded to f16: the CPU backend writes the current
/// chunk's keys and values to its f16 cache and attends over the rounded
/// values, the graph attends over its own f32 ones within a pass (past
/// positions come from the engine's f16 cache on both sides). f16 rounding
/// is ~2.4e-4 relative per element; measured 6.6e-4 on the logits here, the
/// budget allows 3x that.
const CPU_BUDGET: f32 = 2e-3;
/// Against sotto's own exported float graph, which keeps f32 K/V inside a
/// pass exactly like the foreign graph: only operator order and ONNX
/// Runtime's kernels differ (rotate-half vs permuted rows, repeat-KV vs
/// grouped heads, a Where mask vs an additive one). Measured 6.6e-7 on the
/// prefill here.
const GRAPH_BUDGET: f32 = 1e-5;
/// Decode steps read the past back from the f16 engine cache, where a
/// 1e-7 difference can land on either side of an f16 rounding boundary (a
/// 4.9e-4 relative step for that element); measured 1.0e-5.
const GRAPH_DECODE_BUDGET: f32 = 1e-4;
/// With f16 past/present and f16 logits the graph also rounds its outputs
/// to f16 (another 2^-11 relative step); measured 6.9e-4 against the CPU.
const F16_BUDGET: f32 = 3e-3;

struct Fixture {
    model: Arc<Model>,
    gguf: PathBuf,
    base: PathBuf,
}

fn tools_dir() -> PathBuf {
    match std::env::var_os("SOTTO_ORT_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sotto/ort")
        }
    }
    .join("onnx-tools")
}

fn python() -> Command {
    let py = std::env::var("SOTTO_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut c = Command::new(py);
    // -s: the packages scripts/ort-deps.sh installed, not whatever the
    // user site happens to hold.
    c.arg("-s").env("PYTHONPATH", tools_dir());
    c
}

fn deps_importable() -> bool {
    python()
        .args(["-c", "import onnx, gguf, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The Python packages, installed by scripts/ort-deps.sh when missing.
fn ensure_python_deps() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if deps_importable() {
            return;
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/ort-deps.sh");
        eprintln!("onnx/gguf not importable: running {}", script.display());
        let status = Command::new("bash").arg(&script).status();
        assert!(
            matches!(status, Ok(s) if s.success()) && deps_importable(),
            "python packages onnx, gguf and numpy are not importable from {} even after {} ({status:?}); \
             run that script by hand (it needs pip and PyPI), or set SOTTO_PYTHON",
            tools_dir().display(),
            script.display()
        );
    });
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        ensure_python_deps();
        // One directory for every run, emptied first: never stale exports.
        // Under cargo's scratch folder for tests (`target/tmp`), not the
        // system's, so a run leaves nothing behind in `/tmp`.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sotto-ort-foreign");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let gguf = base.join("tiny-llama.gguf");
        std::fs::write(&gguf, tiny_model_random("llama", DIMS, 7).to_bytes()).unwrap();
        let model = Arc::new(Model::load(&gguf).unwrap());
        Fixture { model, gguf, base }
    })
}

/// Runs the foreign exporter into `base/name` (once per name).
fn export(name: &str, flags: &[&str]) -> PathBuf {
    let f = fixture();
    let out = f.base.join(name);
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if out.join("model.onnx").is_file() {
        return out;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/foreign_onnx_llama.py");
    let t = Instant::now();
    let o = python()
        .arg(&script)
        .arg(&f.gguf)
        .arg(&out)
        .args(flags)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        o.status.success(),
        "{} {flags:?} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "foreign export {name} {flags:?}: {} in {:?}",
        String::from_utf8_lossy(&o.stdout).trim(),
        t.elapsed()
    );
    out
}

fn prompt() -> Vec<u32> {
    fixture()
        .model
        .tokenizer
        .encode("hello world, hello there: the tiny model", false)
        .unwrap()
}

fn cpu() -> CpuBackend {
    CpuBackend::new(fixture().model.clone(), 1).unwrap()
}

fn open(dir: &Path, config: &OrtConfig) -> ort::Result<ForeignDecoder> {
    ForeignDecoder::open(&fixture().model.spec, dir, config)
}

struct Parity {
    prefill: f32,
    worst_step: f32,
    agree: usize,
    tokens: Vec<u32>,
}

/// Prefill (every position's logits) and greedy decode on `graph` and
/// `reference`, each following its own argmax.
fn parity_with(graph: &mut dyn Backend, reference: &mut dyn Backend, steps: usize) -> Parity {
    let p = prompt();
    let vocab = fixture().model.spec.vocab_size;
    let (mut gc, mut cc) = (
        graph.new_cache(64).unwrap(),
        reference.new_cache(64).unwrap(),
    );
    let t = Instant::now();
    let g = graph.forward(&mut gc, &p, LogitsFor::All).unwrap();
    let prefill_time = t.elapsed();
    let c = reference.forward(&mut cc, &p, LogitsFor::All).unwrap();
    assert_eq!(g.len(), p.len() * vocab);
    let prefill = rel_l2(&g, &c);
    let (mut tg, mut tc) = (argmax(&g[g.len() - vocab..]), argmax(&c[c.len() - vocab..]));
    let (mut worst_step, mut agree, mut tokens) = (0f32, usize::from(tg == tc), vec![tg]);
    let t = Instant::now();
    for _ in 0..steps {
        let g = graph.forward(&mut gc, &[tg], LogitsFor::Last).unwrap();
        let c = reference.forward(&mut cc, &[tc], LogitsFor::Last).unwrap();
        if tg == tc {
            worst_step = worst_step.max(rel_l2(&g, &c));
        }
        (tg, tc) = (argmax(&g), argmax(&c));
        agree += usize::from(tg == tc);
        tokens.push(tg);
    }
    eprintln!(
        "  {} vs {}: prefill of {} tokens {prefill_time:?}, {steps} decode steps {:?} ({:.2} ms/token)",
        graph.name(),
        reference.name(),
        p.len(),
        t.elapsed(),
        t.elapsed().as_secs_f64() * 1e3 / steps as f64
    );
    assert_eq!(gc.len(), p.len() + steps);
    Parity {
        prefill,
        worst_step,
        agree,
        tokens,
    }
}

fn parity(graph: &mut dyn Backend, steps: usize) -> Parity {
    parity_with(graph, &mut cpu(), steps)
}

#[test]
fn foreign_graph_matches_the_cpu_backend() {
    let dir = export("f32", &[]);
    let mut graph = open(&dir, &OrtConfig::default()).unwrap();
    assert_eq!(graph.io().n_layer, DIMS.n_layer);
    assert!(graph.io().has_attention_mask && graph.io().has_position_ids);
    assert_eq!(graph.io().kv_dtype, KvDtype::F32);
    eprintln!("{}", graph.describe());
    let r = parity(&mut graph, DECODE_STEPS);
    eprintln!(
        "f32 graph vs cpu: prefill logits (all {} positions) rel L2 {:.2e}, worst decode step {:.2e}, \
         greedy agreement {}/{}, tokens {:?}",
        prompt().len(),
        r.prefill,
        r.worst_step,
        r.agree,
        DECODE_STEPS + 1,
        r.tokens
    );
    assert!(r.prefill < CPU_BUDGET, "prefill rel L2 {}", r.prefill);
    assert!(r.worst_step < CPU_BUDGET, "decode rel L2 {}", r.worst_step);
    assert_eq!(r.agree, DECODE_STEPS + 1, "greedy tokens differ");

    // sotto's own float export of the same GGUF: f32 K/V inside a pass too.
    let ours = fixture().base.join("sotto-export");
    export_model(
        &fixture().model,
        &ours,
        ExportOptions {
            chunk: 32,
            context: 64,
            format: WeightFormat::Float,
        },
    )
    .unwrap();
    let mut ours = OrtDecoder::open(&fixture().model.spec, &ours, &OrtConfig::default()).unwrap();
    let mut graph = open(&dir, &OrtConfig::default()).unwrap();
    let r = parity_with(&mut graph, &mut ours, DECODE_STEPS);
    eprintln!(
        "f32 graph vs sotto's float export: prefill rel L2 {:.2e}, worst decode step {:.2e}, \
         greedy agreement {}/{}",
        r.prefill,
        r.worst_step,
        r.agree,
        DECODE_STEPS + 1
    );
    assert!(r.prefill < GRAPH_BUDGET, "prefill rel L2 {}", r.prefill);
    assert!(
        r.worst_step < GRAPH_DECODE_BUDGET,
        "decode rel L2 {}",
        r.worst_step
    );
    assert_eq!(r.agree, DECODE_STEPS + 1, "greedy tokens differ");
}

/// The keys and values the graph wrote to the engine cache are what the
/// CPU backend writes (keys back in the GGUF's interleaved dimension
/// order), so the CPU backend continues from them as from its own.
#[test]
fn cpu_backend_continues_from_the_foreign_graphs_cache() {
    let dir = export("f32", &[]);
    let mut graph = open(&dir, &OrtConfig::default()).unwrap();
    let mut cpu = cpu();
    let p = prompt();
    let (mut gc, mut cc) = (graph.new_cache(64).unwrap(), cpu.new_cache(64).unwrap());
    graph.forward(&mut gc, &p, LogitsFor::Last).unwrap();
    cpu.forward(&mut cc, &p, LogitsFor::Last).unwrap();
    let (mut worst, mut scale) = (0f32, 0f32);
    for i in 0..DIMS.n_layer {
        for (a, b) in [
            (gc.layer(i).k.f16().unwrap(), cc.layer(i).k.f16().unwrap()),
            (gc.layer(i).v.f16().unwrap(), cc.layer(i).v.f16().unwrap()),
        ] {
            for (x, y) in a.iter().zip(b.iter()) {
                worst = worst.max((x.to_f32() - y.to_f32()).abs());
                scale = scale.max(y.to_f32().abs());
            }
        }
    }
    eprintln!(
        "engine cache after prefill: max |graph - cpu| {worst:.2e} (values up to {scale:.2})"
    );
    assert!(worst <= scale * 2e-3, "caches differ by {worst}");
    let next = p[0];
    let handed = cpu.forward(&mut gc, &[next], LogitsFor::Last).unwrap();
    let own = cpu.forward(&mut cc, &[next], LogitsFor::Last).unwrap();
    let rel = rel_l2(&handed, &own);
    eprintln!("cpu decode from the graph's cache vs its own: rel L2 {rel:.2e}");
    assert!(rel < CPU_BUDGET, "{rel}");
    // And back: the graph takes the CPU-written position over.
    let mut both: KvCache = gc.clone();
    let g = graph.forward(&mut both, &[next], LogitsFor::Last).unwrap();
    assert_eq!(
        graph.last_import(),
        1,
        "only the CPU's position is converted"
    );
    let c = cpu.forward(&mut cc, &[next], LogitsFor::Last).unwrap();
    assert!(rel_l2(&g, &c) < CPU_BUDGET);
}

#[test]
fn f16_and_optional_input_variants_match_the_cpu_backend() {
    let variants: [(&str, &[&str], f32); 3] = [
        ("f16", &["--kv-dtype", "f16"], F16_BUDGET),
        ("no-position-ids", &["--no-position-ids"], CPU_BUDGET),
        (
            "no-mask",
            &["--no-position-ids", "--no-attention-mask"],
            CPU_BUDGET,
        ),
    ];
    for (name, flags, budget) in variants {
        let dir = export(name, flags);
        let mut graph = open(&dir, &OrtConfig::default()).unwrap();
        let io = graph.io().clone();
        let r = parity(&mut graph, 8);
        eprintln!(
            "{name} ({io:?}): prefill rel L2 {:.2e}, worst decode step {:.2e}, greedy agreement {}/9",
            r.prefill, r.worst_step, r.agree
        );
        assert!(r.prefill < budget && r.worst_step < budget, "{name}");
        assert_eq!(r.agree, 9, "{name}");
    }
    assert_eq!(
        open(&export("f16", &[]), &OrtConfig::default())
            .unwrap()
            .io()
            .kv_dtype,
        KvDtype::F16
    );
}

#[test]
fn a_two_turn_chat_reuses_the_prefix_and_answers_like_the_cpu_backend() {
    let f = fixture();
    let dir = export("f32", &[]);
    let opts = GenerateOptions {
        sampler: SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        max_tokens: 8,
        ..Default::default()
    };
    let chat = |backend: Box<dyn Backend>| {
        let session = Session::new(backend, Arc::new(f.model.tokenizer.clone()), 128).unwrap();
        let mut chat = Chat::new(session, Arc::new(f.model.template.clone()), None);
        let first = chat.send("hello", &opts, &mut |_| {}).unwrap();
        let second = chat.send("hello world", &opts, &mut |_| {}).unwrap();
        (first.stats, second.stats)
    };
    let (g1, g2) = chat(Box::new(open(&dir, &OrtConfig::default()).unwrap()));
    let (c1, c2) = chat(Box::new(cpu()));
    eprintln!(
        "two turns: {} then {} prompt tokens ({} reused); answers {:?} / {:?}",
        g1.prompt_tokens, g2.prompt_tokens, g2.reused_tokens, g1.tokens, g2.tokens
    );
    assert!(g2.reused_tokens > 0, "the second turn reused nothing");
    assert_eq!(g2.reused_tokens, c2.reused_tokens);
    assert_eq!((g1.tokens, g2.tokens), (c1.tokens, c2.tokens));
}

/// Copies an export and rewrites one field of its config.json.
fn with_config(dir: &Path, name: &str, key: &str, value: u64) -> PathBuf {
    let out = fixture().base.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for file in ["model.onnx", "model.onnx_data"] {
        std::fs::copy(dir.join(file), out.join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config[key] = value.into();
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    out
}

#[test]
fn malformed_exports_are_typed_errors() {
    let cfg = OrtConfig::default();
    let dir = export("no-present-value", &["--omit-output", "present.1.value"]);
    match open(&dir, &cfg) {
        Err(ort::Error::MissingIo { kind, name, .. }) => {
            assert_eq!((kind, name.as_str()), ("output", "present.1.value"))
        }
        other => panic!("expected MissingIo, got {other:?}"),
    }

    let good = export("f32", &[]);
    let three = with_config(&good, "three-layers", "num_hidden_layers", 3);
    match open(&three, &cfg) {
        Err(e @ ort::Error::ConfigMismatch { .. }) => {
            eprintln!("{e}");
            assert!(matches!(
                e,
                ort::Error::ConfigMismatch {
                    field: "num_hidden_layers",
                    graph: 2,
                    config: 3,
                    ..
                }
            ));
        }
        other => panic!("expected ConfigMismatch, got {other:?}"),
    }
    let wide = with_config(&good, "wide-heads", "head_dim", 16);
    assert!(matches!(
        open(&wide, &cfg),
        Err(ort::Error::ConfigMismatch {
            field: "head_dim",
            graph: 8,
            config: 16,
            ..
        })
    ));

    let npu = OrtConfig {
        npu_only: true,
        ..Default::default()
    };
    match open(&good, &npu) {
        Err(e @ ort::Error::DynamicShape { .. }) => eprintln!("{e}"),
        other => panic!("expected DynamicShape, got {other:?}"),
    }
}
