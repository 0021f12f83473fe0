//! End-to-end generation on the default model (SmolLM2-135M Q4_1): prefill,
//! single-token decode at a filled context, and a whole greedy generation
//! through `Session`. Names follow `<op>/<dtype>/<isa>`; throughput is in
//! tokens. Skips (with a note) when the model file is absent.
//!
//! Run: `cargo bench -p sotto-benches --features e2e --bench e2e`.
//!
//! `sotto bench` is the sweep tool (threads, depths, ISAs, llama.cpp side by
//! side); this bench is the quick regression check criterion can compare
//! between commits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sotto_engine::{Backend, CpuBackend, GenerateOptions, LogitsFor, SamplerConfig, Session};
use sotto_models::Model;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn model_path() -> Option<PathBuf> {
    let path = std::env::var_os("SOTTO_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            sotto_engine::user_cache_dir().map(|c| c.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        })?;
    path.is_file().then_some(path)
}

/// Deterministic token ids spread over the vocabulary.
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

fn e2e(c: &mut Criterion) {
    let Some(path) = model_path() else {
        eprintln!("e2e: no model (set SOTTO_MODEL or run `sotto fetch`); skipping");
        return;
    };
    let model = Arc::new(Model::load(&path).expect("default model loads"));
    let isa = format!("{:?}", sotto_kernels::dispatch::table().isa).to_lowercase();
    let dtype = format!("{:?}", model.weights.layers[0].ffn_down.weight.dtype).to_lowercase();
    let vocab = model.spec.vocab_size;
    let mut backend = CpuBackend::new(model.clone(), 0).expect("cpu backend");

    let mut group = c.benchmark_group("e2e");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    for p in [32usize, 128] {
        let prompt = tokens(p, vocab);
        let mut cache = backend.new_cache(p).unwrap();
        group.throughput(Throughput::Elements(p as u64));
        group.bench_function(
            BenchmarkId::new(format!("prefill_{p}/{dtype}"), &isa),
            |b| {
                b.iter(|| {
                    cache.truncate(0);
                    backend
                        .forward(&mut cache, &prompt, LogitsFor::Last)
                        .unwrap()
                })
            },
        );
    }

    // Decode one token after 128 cached positions; truncating back keeps
    // every iteration at the same depth.
    let depth = 128;
    let mut cache = backend.new_cache(depth + 1).unwrap();
    backend
        .forward(&mut cache, &tokens(depth, vocab), LogitsFor::Last)
        .unwrap();
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new(format!("decode_at_{depth}/{dtype}"), &isa),
        |b| {
            b.iter(|| {
                cache.truncate(depth);
                backend.forward(&mut cache, &[42], LogitsFor::Last).unwrap()
            })
        },
    );

    // The whole loop: template-free prompt, 16 greedy tokens (stops early
    // only on an end-of-generation token, which this prompt does not reach).
    let tokenizer = Arc::new(model.tokenizer.clone());
    let prompt = tokenizer
        .encode(
            "The capital of France is Paris. The capital of Italy is",
            false,
        )
        .unwrap();
    let mut session = Session::new(Box::new(backend), tokenizer, 512).unwrap();
    let opts = GenerateOptions {
        sampler: SamplerConfig::greedy(),
        max_tokens: 16,
        ..GenerateOptions::default()
    };
    group.throughput(Throughput::Elements(16));
    group.bench_function(
        BenchmarkId::new(format!("generate_16/{dtype}"), &isa),
        |b| {
            b.iter(|| {
                session.reset();
                session.generate(&prompt, &opts, &mut |_| {}).unwrap()
            })
        },
    );
    group.finish();
}

criterion_group!(benches, e2e);
criterion_main!(benches);
