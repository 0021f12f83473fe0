//! `sotto convert` and `sotto quantize` output, judged by llama.cpp (issue
//! 13, "what it must show" item 2).
//!
//! The default model as an F32 Hugging Face folder
//! ([`sotto_tests::hf::fixture_folder`], written by an independent python
//! script) is converted with `sotto_models::convert` (what both commands
//! run) and handed to llama.cpp:
//! - `converted_folder_tokenizes_and_answers_like_the_source_gguf`: the
//!   converted F32 file loads, tokenizes the 364 reference strings of
//!   tests/data/llama_cpp/tokenization.json (ids and detokenization)
//!   exactly as llama.cpp does with the source GGUF, and llama.cpp's greedy
//!   answers on it follow its answers
//!   on the source GGUF (the first [`PROMPTS`] prompts of
//!   tests/data/prompts/quant_parity_chat.json, [`GREEDY_TOKENS`] tokens),
//!   up to a step where llama.cpp hesitated on the source (the near-tie rule
//!   of `sotto_tests::parity::compare_greedy`: the F32 file runs the
//!   dequantized Q4_1 weights without Q4_1's 8-bit activation rounding, so
//!   a near tie may go the other way);
//! - `converted_sharded_f16_folder_answers_like_the_source_gguf`: the same
//!   for the CLI's default, an F16 folder in three shards written as F16;
//! - `quantized_files_are_as_close_as_llama_cpp_own`: the F32 file
//!   quantized by Sotto and by llama.cpp's own quantizer (`--pure`, the same
//!   one-type choice) to Q4_0, Q8_0 and Q4_K; llama.cpp loads both, and its
//!   logits on Sotto's file are as far from its logits on the F32 file, along
//!   the same tokens, as on its own quantizer's file: mean relative L2 at
//!   most [`ERROR_FACTOR`] times llama.cpp's. Both errors are printed;
//! - `quantized_at_load_equals_the_quantized_file`: `--quant` at load gives
//!   the CPU backend the logits of the file `sotto quantize` writes, bit for
//!   bit, and prints the load times.
//!
//! Files live in `<cache>/parity/hf_convert` (`$SOTTO_CACHE`), llama.cpp's
//! runs are cached by their inputs. Wall time on a loaded 2-core machine
//! with nothing cached, the four tests in parallel: about 2.5 min (the F16
//! fixture folder, llama.cpp's references on four files, three llama.cpp
//! quantizations and llama.cpp's logits over 278 positions of a
//! 49152-token vocabulary on seven files).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use sotto_kernels::quant::DType;
use sotto_models::convert::GgufConversion;
use sotto_tests::hf::{fixture_folder, FolderDtype};
use sotto_tests::parity::{
    cache_dir, compare_greedy, generate_reference_within, llama_python, llama_quantize,
    llama_tokenize, read_f32_file, repo_root, Criteria, RefBudget, Reference,
};
use sotto_tests::tokenization::{llama_cpp_cases, TokenizationCase};
use sotto_tests::{data_dir, default_model_path, rel_l2};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// Chat prompts of tests/data/prompts/quant_parity_chat.json compared.
const PROMPTS: usize = 4;
/// Greedy tokens per prompt.
const GREEDY_TOKENS: usize = 32;
/// How much larger than llama.cpp's own quantizer's the logit error of a
/// Sotto-quantized file may be.
const ERROR_FACTOR: f64 = 1.25;

fn work_dir() -> PathBuf {
    let dir = cache_dir().join("hf_convert");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// `source` written with its weights in `dtype` to `out` by the code
/// `sotto convert` / `sotto quantize` run.
fn convert(source: &Path, dtype: DType, out: &Path) {
    let started = Instant::now();
    let plan = GgufConversion::plan(source, dtype)
        .unwrap_or_else(|e| panic!("planning {} as {dtype}: {e}", source.display()));
    plan.write_file(out)
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    eprintln!(
        "sotto: {} -> {} ({:?}) in {:.1} s",
        source.display(),
        out.display(),
        plan.type_counts(),
        started.elapsed().as_secs_f64()
    );
}

/// The F32 fixture folder, made once per test process (the fixture's
/// temporary folder is per process, so two tests of one process must not
/// make it at the same time).
fn f32_folder() -> PathBuf {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER
        .get_or_init(|| fixture_folder(FolderDtype::F32, 1))
        .clone()
}

/// The F32 fixture folder converted to an F32 GGUF file (once per test
/// process: two tests read it).
fn converted_f32() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let folder = f32_folder();
        let out = work_dir().join("folder.F32.gguf");
        convert(&folder, DType::F32, &out);
        out
    })
    .clone()
}

fn budget() -> RefBudget {
    RefBudget {
        max_new_tokens: GREEDY_TOKENS,
        max_prompts: Some(PROMPTS),
    }
}

fn prompts() -> PathBuf {
    data_dir().join("prompts/quant_parity_chat.json")
}

#[derive(Deserialize)]
struct Tokenized {
    cases: Vec<TokenizationCase>,
}

#[test]
fn converted_folder_tokenizes_and_answers_like_the_source_gguf() {
    let started = Instant::now();
    let file = converted_f32();
    let dir = work_dir();
    let cases_path = data_dir().join("llama_cpp/tokenization.json");
    let expected = llama_cpp_cases();
    let got_path = dir.join("folder.F32.tokenization.json");
    llama_tokenize(&file, &cases_path, &got_path);
    let got: Tokenized = serde_json::from_str(&std::fs::read_to_string(&got_path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", got_path.display()));
    let got = got.cases;
    assert_eq!(got.len(), expected.len());
    assert!(expected.len() >= 364, "{} cases", expected.len());
    let differing: Vec<String> = expected
        .iter()
        .zip(&got)
        .filter(|(e, g)| {
            e.ids != g.ids
                || e.text != g.text
                || e.parse_special != g.parse_special
                || e.detok_hex != g.detok_hex
        })
        .map(|(e, g)| format!("{:?}: source {:?}, converted {:?}", e.text, e.ids, g.ids))
        .collect();
    assert!(
        differing.is_empty(),
        "llama.cpp tokenizes {} of {} strings differently on the converted file:\n{}",
        differing.len(),
        expected.len(),
        differing.join("\n")
    );

    assert_answers_like_the_source(&file, "F32");
    eprintln!(
        "converted folder vs source: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// The CLI's default: a folder sharded in three F16 safetensors files,
/// converted with `--type f16` (matrices F16, vectors F32).
#[test]
fn converted_sharded_f16_folder_answers_like_the_source_gguf() {
    let started = Instant::now();
    let folder = fixture_folder(FolderDtype::F16, 3);
    let file = work_dir().join("folder.F16.gguf");
    convert(&folder, DType::F16, &file);
    assert_answers_like_the_source(&file, "F16");
    eprintln!(
        "converted F16 folder vs source: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// llama.cpp's greedy answers on `file` follow its answers on the source
/// GGUF up to a step where it hesitated on the source.
fn assert_answers_like_the_source(file: &Path, label: &str) {
    let dir = work_dir();
    let source = generate_reference_within(
        &default_model_path(),
        &prompts(),
        &dir.join("source_refs"),
        budget(),
    );
    let converted = generate_reference_within(
        file,
        &prompts(),
        &dir.join(format!("{label}_refs")),
        budget(),
    );
    let criteria = Criteria::default();
    let self_swing = source.self_swing(criteria.tie_margin);
    let mut failures = Vec::new();
    assert_eq!(source.sequences.len(), PROMPTS);
    assert_eq!(converted.sequences.len(), PROMPTS);
    for (want, got) in source.sequences.iter().zip(&converted.sequences) {
        assert_eq!(want.name, got.name);
        if want.prompt_ids != got.prompt_ids {
            failures.push(format!(
                "{label} {}: the chat prompt tokenizes differently",
                want.name
            ));
            continue;
        }
        let report = compare_greedy(
            want,
            &got.continuation_ids,
            GREEDY_TOKENS,
            &criteria,
            self_swing,
            &[],
        );
        eprintln!(
            "{label} {:<24} {}/{} greedy tokens as on the source{}",
            want.name,
            report.matched,
            report.compared,
            match report.divergence {
                Some((_, _, margin)) =>
                    format!(", then a step where llama.cpp's margin on the source is {margin:.2}"),
                None => String::new(),
            }
        );
        if !report.acceptable {
            failures.push(format!(
                "{label} {}: llama.cpp's greedy answer on the converted file leaves its answer \
                 on the source at {:?} (index, token, source margin): {:?} vs {:?}",
                want.name, report.divergence, got.continuation_text, want.continuation_text
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// llama.cpp's logits at every position of `sequences` on `model`
/// (tests/scripts/llama_logits.py), one `Vec` per sequence.
fn llama_logits(model: &Path, sequences: &[Vec<u32>], n_vocab: usize) -> Vec<Vec<f32>> {
    let seq_path = model.with_extension("sequences.json");
    std::fs::write(&seq_path, serde_json::to_string(sequences).unwrap()).unwrap();
    let out = model.with_extension("logits.f32");
    let script = repo_root().join("tests/scripts/llama_logits.py");
    let mut cmd = Command::new(llama_python());
    cmd.arg(&script)
        .arg("--model")
        .arg(model)
        .arg("--sequences")
        .arg(&seq_path)
        .arg("--out")
        .arg(&out);
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed ({status})");
    let values = read_f32_file(&out);
    let mut rest = &values[..];
    sequences
        .iter()
        .map(|s| {
            let (head, tail) = rest.split_at(s.len() * n_vocab);
            rest = tail;
            head.to_vec()
        })
        .collect()
}

/// Mean over every position of every sequence of the relative L2 distance
/// of `a`'s logit vectors to `b`'s.
fn mean_rel_l2(a: &[Vec<f32>], b: &[Vec<f32>], n_vocab: usize) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for (x, y) in a.iter().zip(b) {
        for (row_x, row_y) in x.chunks_exact(n_vocab).zip(y.chunks_exact(n_vocab)) {
            sum += f64::from(rel_l2(row_x, row_y));
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

#[test]
fn quantized_files_are_as_close_as_llama_cpp_own() {
    let started = Instant::now();
    let float = converted_f32();
    let dir = work_dir();
    // Tokens to compare along: llama.cpp's greedy answers on the float file.
    let float_refs: Reference =
        generate_reference_within(&float, &prompts(), &dir.join("F32_refs"), budget());
    let sequences: Vec<Vec<u32>> = float_refs.sequences.iter().map(|s| s.tokens()).collect();
    let n_vocab = sotto_models::GgufFile::open(&float)
        .unwrap()
        .get_str_array("tokenizer.ggml.tokens")
        .map(|t| t.len())
        .unwrap();
    let float_logits = llama_logits(&float, &sequences, n_vocab);

    let mut failures = Vec::new();
    let mut table = Vec::new();
    for (dtype, ftype) in [
        (DType::Q4_0, "Q4_0"),
        (DType::Q8_0, "Q8_0"),
        (DType::Q4_K, "Q4_K_S"),
    ] {
        let ours = dir.join(format!("sotto.{}.gguf", dtype.name()));
        convert(&float, dtype, &ours);
        let theirs = dir.join(format!("llama.{}.gguf", dtype.name()));
        llama_quantize(&float, ftype, true, &theirs);
        let ours_err = mean_rel_l2(
            &llama_logits(&ours, &sequences, n_vocab),
            &float_logits,
            n_vocab,
        );
        let theirs_err = mean_rel_l2(
            &llama_logits(&theirs, &sequences, n_vocab),
            &float_logits,
            n_vocab,
        );
        let same = identical_tensors(&ours, &theirs);
        table.push(format!(
            "{:<6} {:>14.4e} {:>14.4e} {:>7.3} {:>12}",
            dtype.name(),
            ours_err,
            theirs_err,
            ours_err / theirs_err,
            same
        ));
        // NaN fails too.
        let within = ours_err <= ERROR_FACTOR * theirs_err;
        if !within {
            failures.push(format!(
                "{dtype}: logit error {ours_err:.4e} vs llama.cpp's quantizer's {theirs_err:.4e} \
                 (more than {ERROR_FACTOR}x)"
            ));
        }
    }
    eprintln!(
        "llama.cpp's logits vs its logits on the F32 file, mean relative L2 over {} positions:\n\
         {:<6} {:>14} {:>14} {:>7} {:>12}\n{}",
        sequences.iter().map(Vec::len).sum::<usize>(),
        "type",
        "sotto quantize",
        "llama.cpp",
        "ratio",
        "same bytes",
        table.join("\n")
    );
    eprintln!(
        "quantized files vs llama.cpp's: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// How many tensors of `a` have the same type and bytes in `b`, as `n/total`.
fn identical_tensors(a: &Path, b: &Path) -> String {
    let (a, b) = (
        sotto_models::GgufFile::open(a).unwrap(),
        sotto_models::GgufFile::open(b).unwrap(),
    );
    let same = a
        .tensors()
        .iter()
        .filter(|t| {
            b.tensor(&t.name).is_some_and(|u| {
                u.ggml_type == t.ggml_type && b.tensor_bytes(u) == a.tensor_bytes(t)
            })
        })
        .count();
    format!("{same}/{}", a.tensors().len())
}

/// `--quant T` at load ([`sotto_models::Model::load_quantized`]) runs the
/// very bytes `sotto quantize` writes for T: the CPU backend's logits on
/// the folder quantized at load equal, bit for bit, its logits on the file.
/// Prints the load times of issue 13's table (GGUF mmap, folder, folder
/// quantized at load; one run each on a shared machine: noisy).
#[test]
fn quantized_at_load_equals_the_quantized_file() {
    use sotto_models::Model;
    use sotto_tests::parity::sotto_logits;
    use std::sync::Arc;
    let folder = f32_folder();
    let timed = |what: &str, load: &dyn Fn() -> Model| {
        let t = Instant::now();
        let model = load();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        (Arc::new(model), format!("{what:<44} {ms:>9.0} ms"))
    };
    let mut table = vec![
        timed("GGUF (Q4_1, mmap)", &|| {
            Model::load(default_model_path()).unwrap()
        })
        .1,
        timed("Hugging Face folder (F32, mmap)", &|| {
            Model::load(&folder).unwrap()
        })
        .1,
    ];
    for dtype in [DType::Q4_0, DType::Q4_K] {
        let file = work_dir().join(format!("folder.{}.gguf", dtype.name()));
        convert(&folder, dtype, &file);
        let (at_load, row) = timed(
            &format!("Hugging Face folder, --quant {}", dtype.name()),
            &|| Model::load_quantized(&folder, dtype).unwrap(),
        );
        table.push(row);
        let from_file = Arc::new(Model::load(&file).unwrap());
        let tokens = from_file
            .template
            .render(
                &[sotto_models::ChatMessage::user(
                    "What is the capital of France?",
                )],
                true,
            )
            .and_then(|text| from_file.tokenizer.encode(&text, true))
            .unwrap();
        let (a, b) = (
            sotto_logits(&at_load, &tokens),
            sotto_logits(&from_file, &tokens),
        );
        assert_eq!(a.len(), tokens.len() * from_file.spec.vocab_size);
        let differing = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(
            differing,
            0,
            "{dtype}: {differing} of {} logits differ between --quant at load and the file",
            a.len()
        );
    }
    eprintln!(
        "load times (Model::load, this machine, one run):\n{}",
        table.join("\n")
    );
}
