//! `sotto export --target cpu` for every architecture: the tiny GGUF of each
//! family (see arch_parity.rs) exported as static-shape ONNX graphs by
//! walking the same decoder description as the CPU backend, run on ONNX
//! Runtime's CPU EP, against the CPU backend.
//!
//! Budget, as tests/tests/ort_hybrid.rs: the graphs' logits (prefill and
//! one-token decode) may be no further from the CPU backend's than llama.cpp
//! is from itself on the same file (its worst self-difference over the
//! prompts, from the parity references). Greedy decoding on the graphs must
//! follow the CPU backend's while its top-two margin exceeds 0.3 (where
//! llama.cpp's own paths may flip).
//!
//! With `--nocapture` each architecture prints a row of
//! `| arch | export time | prefill rel L2 | decode rel L2 | budget | greedy agreed/compared |`.
#![cfg(feature = "ort")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use sotto_engine::onnx::{export_model, ExportOptions, WeightFormat};
use sotto_engine::ort::{OrtConfig, OrtDecoder};
use sotto_engine::{Backend, CpuBackend, LogitsFor};
use sotto_models::Model;
use sotto_tests::parity::{cache_dir, Reference};
use sotto_tests::rel_l2;
use sotto_tests::tiny_arch::{reference, tiny_file, tiny_folder};

/// Graph shapes: a prefill chunk shorter than the prompts (so prefill runs
/// in several chunks) and a context past Phi-3's original one (so its long
/// rope factors are the ones in use, on both sides).
const CHUNK: usize = 16;
const CONTEXT: usize = 320;
const DECODE_STEPS: usize = 8;
const TIE_MARGIN: f32 = 0.3;
/// Prompts of the references each architecture runs (the first two of
/// `tiny_arch::BUDGET`'s): the graphs are compared step by step with the
/// CPU backend, and two prompts of different lengths already cover
/// multi-chunk prefill and decode, for half the test time.
const PROMPTS: usize = 2;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn top2(row: &[f32]) -> (u32, f32) {
    let mut best = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &x) in row.iter().enumerate() {
        if x > best.1 {
            best = (i, x, best.1);
        } else if x > best.2 {
            best.2 = x;
        }
    }
    (best.0 as u32, best.1 - best.2)
}

fn export_matches_cpu(arch: &str, reference_twin: Option<&str>) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let file = tiny_file(arch, None);
    let refs = reference(&tiny_file(arch, reference_twin));
    let model = Arc::new(Model::load(&file).unwrap());
    exported_graphs_match_cpu(arch, &model, &refs);
}

/// Exports `model`, runs the graphs on ONNX Runtime's CPU EP and holds them
/// to the CPU backend along the first prompts of `refs` (whose llama.cpp
/// self-difference is the budget).
fn exported_graphs_match_cpu(arch: &str, model: &Arc<Model>, refs: &Reference) {
    let budget = refs
        .sequences
        .iter()
        .map(|s| s.logits.self_rel_l2())
        .fold(0.0, f64::max) as f32;
    let dir = cache_dir().join("arch-export").join(arch);
    let _ = std::fs::remove_dir_all(&dir);
    let t = std::time::Instant::now();
    export_model(
        model,
        &dir,
        ExportOptions {
            chunk: CHUNK,
            context: CONTEXT,
            format: WeightFormat::MatMulNBits,
        },
    )
    .unwrap_or_else(|e| panic!("{arch}: export: {e}"));
    let export_time = t.elapsed();
    let mut ort = OrtDecoder::open(&model.spec, &dir, &OrtConfig::default()).unwrap();
    let mut cpu = CpuBackend::new(model.clone(), 0).unwrap();
    let (mut worst_prefill, mut worst_decode, mut greedy_ok, mut greedy_n) = (0f32, 0f32, 0, 0);
    for seq in refs.sequences.iter().take(PROMPTS) {
        let prompt = &seq.prompt_ids;
        let mut cc = cpu.new_cache(CONTEXT).unwrap();
        let mut oc = ort.new_cache(CONTEXT).unwrap();
        let mut cl = cpu.forward(&mut cc, prompt, LogitsFor::Last).unwrap();
        let mut ol = ort.forward(&mut oc, prompt, LogitsFor::Last).unwrap();
        worst_prefill = worst_prefill.max(rel_l2(&ol, &cl));
        for step in 0..DECODE_STEPS {
            let (want, margin) = top2(&cl);
            let (got, _) = top2(&ol);
            if margin > TIE_MARGIN {
                greedy_n += 1;
                assert_eq!(
                    got, want,
                    "{arch} {}: step {step}: graphs pick {got}, the CPU backend {want} (margin {margin:.3})",
                    seq.name
                );
                greedy_ok += 1;
            }
            cl = cpu.forward(&mut cc, &[want], LogitsFor::Last).unwrap();
            ol = ort.forward(&mut oc, &[want], LogitsFor::Last).unwrap();
            worst_decode = worst_decode.max(rel_l2(&ol, &cl));
        }
    }
    eprintln!(
        "| {arch} | {export_time:.1?} | {worst_prefill:.2e} | {worst_decode:.2e} | {budget:.2e} | {greedy_ok}/{greedy_n} |"
    );
    for (what, worst) in [("prefill", worst_prefill), ("decode", worst_decode)] {
        assert!(
            worst <= budget,
            "{arch}: {what} logits of the graphs are {worst:.2e} from the CPU backend's, \
             more than llama.cpp's own self-difference {budget:.2e}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sotto export` of a Hugging Face folder: Llama's unpermuted Q/K rows
/// (NeoX pairs) and Llama 3 rope scaling from config.json.
#[test]
fn llama_hugging_face_folder() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let refs = reference(&tiny_file("llama", None));
    let folder = tiny_folder("llama");
    let model = Arc::new(Model::load(&folder).unwrap());
    exported_graphs_match_cpu("llama-folder", &model, &refs);
}

#[test]
fn llama() {
    export_matches_cpu("llama", None);
}

#[test]
fn llama_sliding_window() {
    export_matches_cpu("llama-swa", Some("granite_swa"));
}

#[test]
fn qwen2() {
    export_matches_cpu("qwen2", None);
}

#[test]
fn qwen3() {
    export_matches_cpu("qwen3", None);
}

#[test]
fn gemma2() {
    export_matches_cpu("gemma2", None);
}

#[test]
fn gemma3() {
    export_matches_cpu("gemma3", None);
}

#[test]
fn phi3() {
    export_matches_cpu("phi3", None);
}

#[test]
fn granite() {
    export_matches_cpu("granite", None);
}
