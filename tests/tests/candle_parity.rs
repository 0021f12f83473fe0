//! The candle reference backend (candle-transformers' quantized Llama, an
//! independent implementation) against sotto's CPU backend on the default
//! model: same greedy next token after the France prompt, close logits, and
//! candle's rebuilt cache after a truncate giving the same answer as a fresh
//! run. Needs `--features candle`.
#![cfg(feature = "candle")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sotto_engine::candle_backend::CandleBackend;
use sotto_engine::sampler::argmax;
use sotto_engine::{Backend, CpuBackend, LogitsFor};
use sotto_models::Model;
use sotto_tests::{default_model_path, read_json};
use std::sync::Arc;

fn france_prompt() -> Vec<u32> {
    let chat: serde_json::Value = read_json("llama_cpp/chat.json");
    let conv = chat["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "france_system")
        .expect("france_system conversation in chat.json");
    conv["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn top_k(logits: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(k);
    idx
}

#[test]
fn candle_and_cpu_agree_on_the_france_prompt() {
    let path = default_model_path();
    let prompt = france_prompt();

    let mut candle = CandleBackend::load(&path, 0).unwrap();
    let mut cache = candle.new_cache(prompt.len() + 8).unwrap();
    assert_eq!(cache.bytes(), 0, "candle holds its own cache");
    let candle_logits = candle
        .forward(&mut cache, &prompt, LogitsFor::Last)
        .unwrap();
    assert_eq!(cache.len(), prompt.len());

    let model = Arc::new(Model::load(&path).unwrap());
    let mut cpu = CpuBackend::new(model, 2).unwrap();
    let mut cpu_cache = cpu.new_cache(prompt.len() + 8).unwrap();
    let cpu_logits = cpu
        .forward(&mut cpu_cache, &prompt, LogitsFor::Last)
        .unwrap();

    assert_eq!(candle_logits.len(), cpu_logits.len());
    let (c, s) = (argmax(&candle_logits), argmax(&cpu_logits));
    assert_eq!(c, s, "greedy next token: candle {c}, sotto cpu {s}");
    // Both quantize activations to 8 bits, but sum in other orders, and
    // candle keeps f32 keys and values where sotto keeps f16. This small model
    // amplifies such rounding: llama.cpp run two equally valid ways differs
    // from itself by up to 0.17 relative L2 (tests/data/README.md), so that
    // is the budget between two independent engines too.
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in candle_logits.iter().zip(&cpu_logits) {
        num += f64::from(a - b).powi(2);
        den += f64::from(b).powi(2);
    }
    let rel_l2 = (num / den).sqrt();
    eprintln!("candle vs sotto cpu, last-token logits: relative L2 {rel_l2:.3e}");
    assert!(
        rel_l2 < 0.17,
        "relative L2 {rel_l2:.3e} between candle and sotto"
    );
    let shared = top_k(&candle_logits, 5)
        .iter()
        .filter(|i| top_k(&cpu_logits, 5).contains(i))
        .count();
    assert!(shared >= 4, "top-5 overlap {shared}");

    // Decoding the greedy token continues in step with the CPU backend.
    let next_candle = argmax(&candle.forward(&mut cache, &[c], LogitsFor::Last).unwrap());
    let next_cpu = argmax(&cpu.forward(&mut cpu_cache, &[s], LogitsFor::Last).unwrap());
    assert_eq!(next_candle, next_cpu);
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn candle_rebuilds_its_cache_after_a_truncate() {
    let path = default_model_path();
    let prompt = france_prompt();
    let half = prompt.len() / 2;

    // Reference: a fresh backend fed the two halves in turn.
    let mut fresh = CandleBackend::load(&path, 0).unwrap();
    let mut cache = fresh.new_cache(prompt.len()).unwrap();
    fresh
        .forward(&mut cache, &prompt[..half], LogitsFor::Last)
        .unwrap();
    let split = fresh
        .forward(&mut cache, &prompt[half..], LogitsFor::Last)
        .unwrap();
    drop(fresh);

    // Run everything, keep half, re-run the rest: candle's cache is rebuilt
    // from the kept tokens, so the logits are those of the split run.
    let mut candle = CandleBackend::load(&path, 0).unwrap();
    let mut cache = candle.new_cache(prompt.len()).unwrap();
    let whole = candle
        .forward(&mut cache, &prompt, LogitsFor::Last)
        .unwrap();
    cache.truncate(half);
    let again = candle
        .forward(&mut cache, &prompt[half..], LogitsFor::Last)
        .unwrap();
    assert_eq!(cache.len(), prompt.len());
    assert!(
        max_abs_diff(&again, &split) < 1e-4,
        "rebuilt cache differs from a fresh split run"
    );
    // Prefilling in two chunks (index_pos > 0, several tokens) is not bit-equal
    // to one pass in candle (up to ~0.3 on the top logits here, enough to
    // swap this prompt's near-tied first two tokens), but stays close.
    assert!(top_k(&whole, 3).contains(&(argmax(&again) as usize)));

    // Errors leave the cache length alone.
    let before = cache.len();
    assert!(candle
        .forward(&mut cache, &[u32::MAX], LogitsFor::Last)
        .is_err());
    assert!(
        candle.forward(&mut cache, &[1], LogitsFor::Last).is_err(),
        "cache is full"
    );
    assert_eq!(cache.len(), before);

    // LogitsFor::All returns one row per token, the last equal to Last's.
    let mut cache = candle.new_cache(4).unwrap();
    let all = candle
        .forward(&mut cache, &prompt[..4], LogitsFor::All)
        .unwrap();
    let vocab = candle.spec().vocab_size;
    assert_eq!(all.len(), 4 * vocab);
    let mut cache = candle.new_cache(4).unwrap();
    let last = candle
        .forward(&mut cache, &prompt[..4], LogitsFor::Last)
        .unwrap();
    let max_diff = all[3 * vocab..]
        .iter()
        .zip(&last)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff < 1e-3,
        "token-by-token vs batched last logits differ by {max_diff}"
    );
}

#[test]
fn candle_refuses_a_thread_count_it_cannot_honour() {
    // Unless the environment fixes candle's pool at 3 threads, 3 is refused.
    let fixed = ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|k| std::env::var(k).ok());
    if fixed.as_deref() == Some("3") {
        return;
    }
    let err = CandleBackend::load(default_model_path(), 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("CANDLE_NUM_THREADS"), "{err}");
}
