//! Every quant type on a real trained model, against llama.cpp.
//!
//! The default model (SmolLM2-135M-Instruct Q4_1) is requantized by
//! llama.cpp's own quantizer (`llama_model_quantize` with
//! `allow_requantize`, through tests/scripts/llama_ref.py) into each type,
//! and llama.cpp records its references on the same file: greedy
//! continuations of 8 chat prompts (tests/data/prompts/quant_parity_chat.json,
//! used nowhere else), teacher-forced margins and logits, and its own
//! self-difference. The CPU backend is then teacher-forced along llama.cpp's
//! continuation and held to `sotto_tests::parity`'s criteria (argmax where
//! llama.cpp's margin exceeds 0.1, logits within llama.cpp's own
//! self-difference), and its free-running greedy tokens are compared.
//!
//! SmolLM2's 576-wide rows are not a multiple of 256, so llama.cpp's presets
//! fall back to other types for every tensor but `ffn_down` (1536 wide) when
//! the type has 256-element blocks; the table prints which ggml types each
//! file holds, and the test fails unless each row's types are among them and
//! every type occurs in some file. Where no preset uses a type (Q2_K: its
//! own mix puts Q3_K on `ffn_down`), a `--pure` requantization covers it.
//!
//! Files are generated at test time into `~/.cache/sotto/parity/quant`
//! (`$SOTTO_CACHE`), never committed, and reused while their inputs are the
//! same. llama.cpp comes from scripts/llama-deps.sh (`$SOTTO_LLAMA_PYTHON`).
//! `SOTTO_QUANT_TYPES=Q6_K,Q4_0` restricts the run to some rows.
//!
//! Run with `--nocapture` to see the table.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use sotto_engine::{CpuBackend, Session};
use sotto_models::Model;
use sotto_tests::parity::{
    cache_dir, compare_greedy, compare_model, generate_reference, llama_quantize, Criteria,
    GreedyReport, ParitySummary,
};
use sotto_tests::{data_dir, default_model_path, greedy};
use std::sync::Arc;

/// One requantization of the default model.
struct QuantCase {
    /// Row label and file name part.
    label: &'static str,
    /// llama.cpp ftype preset.
    ftype: &'static str,
    /// Every tensor in the type where its rows allow (no preset mix).
    pure: bool,
    /// The ggml types (gguf-py's names) this row is the evidence for: each
    /// must occur in the file.
    covers: &'static [&'static str],
}

const fn case(
    label: &'static str,
    ftype: &'static str,
    pure: bool,
    covers: &'static [&'static str],
) -> QuantCase {
    QuantCase {
        label,
        ftype,
        pure,
        covers,
    }
}

/// llama.cpp's presets as people download them, plus a pure Q2_K (no preset
/// uses Q2_K on this model: Q2_K's mix puts Q3_K on `ffn_down` and Q4_0 on
/// the 576-wide rows, and Q3_K_M's has no Q3_K at all).
const CASES: &[QuantCase] = &[
    case("F16", "F16", false, &["F16"]),
    case("BF16", "BF16", false, &["BF16"]),
    case("Q8_0", "Q8_0", false, &["Q8_0"]),
    case("Q4_0", "Q4_0", false, &["Q4_0"]),
    case("Q4_1", "Q4_1", false, &["Q4_1"]),
    case("Q5_0", "Q5_0", false, &["Q5_0"]),
    case("Q5_1", "Q5_1", false, &["Q5_1"]),
    case("Q2_K", "Q2_K", false, &["Q3_K"]),
    case("Q2_K-pure", "Q2_K", true, &["Q2_K"]),
    case("Q3_K_M", "Q3_K_M", false, &["Q4_K", "Q5_K"]),
    case("Q4_K_M", "Q4_K_M", false, &["Q4_K", "Q6_K"]),
    case("Q5_K_M", "Q5_K_M", false, &["Q5_K", "Q6_K"]),
    case("Q6_K", "Q6_K", false, &["Q6_K"]),
    case("IQ4_NL", "IQ4_NL", false, &["IQ4_NL"]),
    case("IQ4_XS", "IQ4_XS", false, &["IQ4_XS"]),
];

/// Every ggml type a GGUF people download holds: each must occur in some
/// file of a row that ran.
const ALL_TYPES: &[&str] = &[
    "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ4_NL", "IQ4_XS",
];

/// Greedy tokens compared per prompt.
const GREEDY_TOKENS: usize = 32;

struct Row {
    label: &'static str,
    types: String,
    outcome: Result<(ParitySummary, Vec<GreedyReport>), String>,
}

fn greedy_reports(
    model: &Arc<Model>,
    reference: &sotto_tests::parity::Reference,
    criteria: &Criteria,
) -> Vec<GreedyReport> {
    reference
        .sequences
        .iter()
        .map(|seq| {
            let backend = CpuBackend::new(model.clone(), 0).expect("cpu backend");
            let mut s = Session::new(Box::new(backend), Arc::new(model.tokenizer.clone()), 2048)
                .expect("session");
            let stats = s
                .generate(&seq.prompt_ids, &greedy(GREEDY_TOKENS), &mut |_| {})
                .expect("generate");
            compare_greedy(seq, &stats.tokens, GREEDY_TOKENS, criteria)
        })
        .collect()
}

#[test]
fn every_quant_type_agrees_with_llama_cpp_on_the_default_model() {
    let source = default_model_path();
    let prompts = data_dir().join("prompts/quant_parity_chat.json");
    let dir = cache_dir().join("quant");
    let only: Option<Vec<String>> = std::env::var("SOTTO_QUANT_TYPES")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(|t| t.trim().to_string()).collect());
    let criteria = Criteria::default();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for c in CASES {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|t| t == c.label))
        {
            continue;
        }
        let file = dir.join(format!("SmolLM2-135M-Instruct.{}.gguf", c.label));
        llama_quantize(&source, c.ftype, c.pure, &file);
        let reference = generate_reference(&file, &prompts, &dir.join(c.label));
        let types = reference
            .tensor_types
            .iter()
            .map(|(t, names)| format!("{t}:{}", names.len()))
            .collect::<Vec<_>>()
            .join(" ");
        for t in c.covers {
            if !reference.tensor_types.contains_key(*t) {
                failures.push(format!(
                    "{}: llama.cpp's {} requantization holds no {t} tensor ({types})",
                    c.label, c.ftype
                ));
            }
        }
        seen.extend(reference.tensor_types.keys().cloned());
        let outcome = Model::load(&file)
            .map_err(|e| format!("sotto cannot load it: {e}"))
            .map(|m| {
                let m = Arc::new(m);
                let summary = compare_model(&m, &reference, criteria);
                let greedy = greedy_reports(&m, &reference, &criteria);
                (summary, greedy)
            });
        match &outcome {
            Err(e) => failures.push(format!("{}: {e}", c.label)),
            Ok((summary, greedy)) => {
                eprintln!("--- {} ({types})\n{summary}", c.label);
                failures.extend(
                    summary
                        .failures()
                        .into_iter()
                        .map(|f| format!("{}: {f}", c.label)),
                );
                for g in greedy.iter().filter(|g| !g.acceptable) {
                    failures.push(format!(
                        "{}: {}: greedy diverged from llama.cpp at {:?} (index, ours, llama.cpp's margin)",
                        c.label, g.name, g.divergence
                    ));
                }
            }
        }
        rows.push(Row {
            label: c.label,
            types,
            outcome,
        });
    }

    eprintln!(
        "\n{:<10} {:>14} {:>6} {:>6} {:>9} {:>11} {:>11} {:>11} {:>11} {:>13}  ggml types in the file (tensors)",
        "type", "argmax agree", "flips", "hard", "greedy", "rel L2 max", "self max", "rel L2 mean", "self mean", "greedy ok"
    );
    for r in &rows {
        match &r.outcome {
            Err(e) => eprintln!("{:<10} {e}  [{}]", r.label, r.types),
            Ok((s, g)) => {
                let ((om, oa), (sm, sa)) = (s.rel_l2(), s.self_rel_l2());
                let matched: usize = g.iter().map(|g| g.matched).sum();
                let compared: usize = g.iter().map(|g| g.compared).sum();
                let full = g.iter().filter(|g| g.divergence.is_none()).count();
                eprintln!(
                    "{:<10} {:>14} {:>6} {:>6} {:>9} {:>11.2e} {:>11.2e} {:>11.2e} {:>11.2e} {:>13}  {}",
                    r.label,
                    format!("{}/{}", s.agreeing(), s.checked()),
                    s.flips(),
                    s.disagreements().count(),
                    format!("{matched}/{compared}"),
                    om,
                    sm,
                    oa,
                    sa,
                    format!("{full}/{} prompts", g.len()),
                    r.types
                );
            }
        }
    }
    assert!(!rows.is_empty(), "SOTTO_QUANT_TYPES selected no row");
    if only.is_none() {
        let missing: Vec<_> = ALL_TYPES.iter().filter(|t| !seen.contains(**t)).collect();
        eprintln!("ggml types covered: {seen:?}; missing: {missing:?}");
        if !missing.is_empty() {
            failures.push(format!("no requantized file holds {missing:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
