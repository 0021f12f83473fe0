//! Every supported architecture against llama.cpp, on tiny random-weight
//! GGUFs written at test time by `tests/scripts/tiny_arch_gguf.py` (PyPI
//! `gguf`, llama.cpp's own writer, in each family's real tensor layout and
//! metadata, with a real tokenizer: the default model's BPE vocabulary or
//! Gemma 3's SentencePiece one from the real Gemma-3-270M file).
//!
//! For each file, llama.cpp (`tests/scripts/llama_ref.py refs`) tokenizes
//! the first raw-text prompts of `tests/data/prompts/raw_text.json`
//! (`tiny_arch::BUDGET`: 4 prompts, 32 greedy tokens), writes
//! its greedy continuation and its teacher-forced logits; we must tokenize
//! the prompts identically and meet the parity criteria of
//! `sotto_tests::parity` (argmax where llama.cpp's margin exceeds 0.1,
//! logits relative L2 within llama.cpp's own self-difference), and follow
//! its greedy continuation until its first near-tie.
//!
//! `llama-swa` is a Llama with Mistral-style sliding-window attention on
//! every layer. llama.cpp's `llama` graph ignores the window key, so its
//! reference runs the same weights as llama.cpp's `granite_swa` (every scale
//! 1, every layer sliding, attention sinks at -1000): the Llama graph with a
//! sliding-window mask. The test also checks that the window changes
//! llama.cpp's logits on these prompts, so it is exercised.
//!
//! `gemma3_270m_real_file` does the same on the real Gemma-3-270M Q4_K_M
//! file (`sotto fetch gemma3-270m`; `$SOTTO_GEMMA3_270M`).
//!
//! The `*_folder` tests run the same files as Hugging Face folders
//! (`tests/scripts/hf_folder_from_gguf.py`: the weights in each family's
//! `transformers` layout, Q/K rows un-permuted for Llama, the tokenizer as
//! the family's own tokenizer.json writes it) against the same llama.cpp
//! references on the GGUF: the folder mapping (config keys, tensor names,
//! rope pairing, Llama 3 rope scaling, the tokenizer.json pipeline through
//! the `tokenizers` crate) is judged by llama.cpp, not by our GGUF path.
//!
//! Files and references are cached under `~/.cache/sotto/parity/arch`,
//! keyed by the generator script and its inputs. Run with `--nocapture`
//! for the tables.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sotto_kernels::quant::DType;
use sotto_models::convert::GgufConversion;
use sotto_models::Model;
use sotto_tests::hf::{folder_of, FolderDtype};
use sotto_tests::parity::{compare_model, greedy_reports, Criteria, Reference};
use sotto_tests::rel_l2;
use sotto_tests::tiny_arch::{
    gemma3_270m_path, gemma3_270m_reference, prompts, reference, tiny_file, tiny_folder, BUDGET,
};
use sotto_tests::tokenization::{assert_tokenizes_like_llama_cpp, llama_cpp_cases_for};

/// One architecture at a time: the references of a 262k-token vocabulary
/// hold gigabytes while they are made.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the whole comparison for `arch`; `reference_twin` names the
/// llama.cpp architecture its reference runs as, when not its own.
fn parity(arch: &str, reference_twin: Option<&str>) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let file = tiny_file(arch, None);
    let reference = reference(&tiny_file(arch, reference_twin));
    let model = Arc::new(Model::load(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
    against(arch, &model, &reference, started);
}

/// [`parity`] for `arch` loaded from a Hugging Face folder written from
/// its tiny GGUF.
fn folder_parity(arch: &str, reference_twin: Option<&str>) -> std::path::PathBuf {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let reference = reference(&tiny_file(arch, reference_twin));
    let folder = tiny_folder(arch);
    let model =
        Arc::new(Model::load(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display())));
    against(&format!("{arch} folder"), &model, &reference, started);
    folder
}

/// Holds `model` to llama.cpp's `reference` on the raw-text prompts: the
/// same tokens, the teacher-forced criteria, greedy until llama.cpp's first
/// near-tie. Prints a table row and the seconds since `started` (the
/// file's and llama.cpp's reference's making included when not cached).
fn against(label: &str, model: &Arc<Model>, reference: &Reference, started: Instant) {
    eprintln!("{label}: {}", model.spec.features());

    // Tokens: our tokenization of each prompt is llama.cpp's.
    let prompts = prompts();
    let mut tokens_matched = 0;
    for seq in &reference.sequences {
        let p = prompts
            .iter()
            .find(|p| p.name == seq.name)
            .unwrap_or_else(|| panic!("{label}: no prompt {}", seq.name));
        let ours = model
            .tokenizer
            .encode_with_special(&p.text, p.parse_special)
            .unwrap();
        assert_eq!(
            ours, seq.prompt_ids,
            "{label} {}: tokens differ from llama.cpp's",
            p.name
        );
        tokens_matched += ours.len();
    }

    // Teacher-forced logits along llama.cpp's greedy continuations.
    let criteria = Criteria::default();
    let summary = compare_model(model, reference, criteria);
    eprintln!("{summary}");

    // Free-running greedy.
    let greedy = greedy_reports(model, reference, BUDGET.max_new_tokens, &summary);
    for r in &greedy {
        assert!(
            r.acceptable,
            "{label} {}: greedy diverged from llama.cpp at {:?} (index, ours, llama.cpp's margin)",
            r.name, r.divergence
        );
    }
    let matched: usize = greedy.iter().map(|g| g.matched).sum();
    let compared: usize = greedy.iter().map(|g| g.compared).sum();
    let ((ours_max, _), (self_max, _)) = (summary.rel_l2(), summary.self_rel_l2());
    eprintln!(
        "| {label} | {tokens_matched}/{tokens_matched} | {}/{} | {ours_max:.2e} | {self_max:.2e} | {matched}/{compared} |",
        summary.agreeing(),
        summary.checked(),
    );
    eprintln!("{label}: {:.0} s", started.elapsed().as_secs_f64());
    summary.assert_passes(label);
}

/// The real Gemma-3-270M Q4_K_M file (a base model: raw text), fetched by
/// `sotto fetch gemma3-270m`.
#[test]
fn gemma3_270m_real_file() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let reference = gemma3_270m_reference();
    let file = gemma3_270m_path();
    let model = Arc::new(Model::load(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
    against("gemma3-270m", &model, &reference, started);
}

#[test]
fn llama_rope_freqs_llama3_scaling() {
    parity("llama", None);
}

#[test]
fn llama_mistral_style_sliding_window() {
    parity("llama-swa", Some("granite_swa"));
    // The window is exercised: without it (llama.cpp's `llama` graph on the
    // same file) llama.cpp's logits are far from its sliding-window ones.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let windowed = reference(&tiny_file("llama-swa", Some("granite_swa")));
    let full = reference(&tiny_file("llama-swa", None));
    let mut worst = 0f32;
    for (a, b) in windowed.sequences.iter().zip(&full.sequences) {
        let (la, lb) = (windowed.full_logits(&a.logits), full.full_logits(&b.logits));
        worst = worst.max(rel_l2(&lb, &la));
    }
    let noise = windowed
        .sequences
        .iter()
        .map(|s| s.logits.self_rel_l2())
        .fold(0.0, f64::max);
    eprintln!("llama-swa: llama.cpp with and without the window differ by {worst:.2e} (its self-difference {noise:.2e})");
    assert!(
        f64::from(worst) > 10.0 * noise,
        "the sliding window does not change llama.cpp's logits on these prompts"
    );
}

#[test]
fn llama_folder_rope_scaling_llama3() {
    let folder = folder_parity("llama", None);
    // A GGUF written from it would run unscaled in llama.cpp, which reads
    // the scaling from a rope_freqs tensor: `sotto convert` refuses it.
    let out = std::env::temp_dir().join(format!("sotto-llama3-{}.gguf", std::process::id()));
    let plan = GgufConversion::plan(&folder, DType::F16).unwrap();
    match plan.write_file(&out) {
        Err(sotto_models::Error::Convert { tensor, reason }) => {
            assert_eq!(tensor, "rope_freqs.weight", "{reason}");
        }
        other => panic!("converting a Llama 3 scaled folder: {other:?}"),
    }
    assert!(!out.exists(), "a refused conversion writes no file");
}

#[test]
fn mistral_folder_sliding_window() {
    folder_parity("llama-swa", Some("granite_swa"));
}

#[test]
fn qwen2_folder() {
    folder_parity("qwen2", None);
}

#[test]
fn qwen3_folder() {
    folder_parity("qwen3", None);
}

#[test]
fn granite_folder() {
    folder_parity("granite", None);
}

#[test]
fn phi3_folder_longrope() {
    folder_parity("phi3", None);
}

#[test]
fn gemma2_folder() {
    folder_parity("gemma2", None);
}

#[test]
fn gemma3_folder() {
    folder_parity("gemma3", None);
}

/// The real Gemma-3-270M as a folder: its SentencePiece vocabulary as the
/// BPE tokenizer.json `transformers` writes, its norms without the `+1`.
#[test]
fn gemma3_270m_real_folder() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let reference = gemma3_270m_reference();
    // F16: half the F32 folder's 1.1 GB, within the comparison's budget.
    let folder = folder_of(&gemma3_270m_path(), "gemma3-270m", FolderDtype::F16, None);
    let model =
        Arc::new(Model::load(&folder).unwrap_or_else(|e| panic!("{}: {e}", folder.display())));
    against("gemma3-270m folder", &model, &reference, started);
    // tokenizer.json (BPE with byte fallback, through the tokenizers crate)
    // on every reference string, against llama.cpp's SentencePiece
    // tokenizer on the source file.
    let cases = llama_cpp_cases_for(&gemma3_270m_path(), "gemma-3-270m");
    assert_tokenizes_like_llama_cpp(&model.tokenizer, &cases);
    eprintln!(
        "gemma3-270m folder: {} strings tokenized as llama.cpp does",
        cases.len()
    );
}

#[test]
fn qwen2_qkv_bias() {
    parity("qwen2", None);
}

#[test]
fn qwen3_qk_norm() {
    parity("qwen3", None);
}

#[test]
fn gemma2_softcaps_sliding_window_post_norms() {
    parity("gemma2", None);
}

#[test]
fn gemma3_local_global_layers() {
    parity("gemma3", None);
}

#[test]
fn phi3_fused_projections_longrope() {
    parity("phi3", None);
}

#[test]
fn granite_scales() {
    parity("granite", None);
}
