//! Timed runs of one test on one loaded backend, llama-bench style: the KV
//! cache is emptied before every run, the depth is filled untimed, tokens are
//! random (content does not change the cost of a dense forward pass).

use super::backends::LoadedBackend;
use super::machine;
use super::report::BenchRow;
use super::stats;
use super::sweep::{TestKind, TestSpec};
use sotto_engine::{Backend, KvCache, LogitsFor};
use std::time::Instant;

/// xorshift64*: reproducible random token ids without a dependency.
#[derive(Clone, Debug)]
pub struct TokenRng(u64);

impl TokenRng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_token(&mut self, vocab: usize) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32 % vocab.max(1) as u32
    }
    pub fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n).map(|_| self.next_token(vocab)).collect()
    }
}

/// Seconds of each timed repetition, plus what the test kind adds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    pub run_s: Vec<f64>,
    /// pp: prefill plus picking the first token, per repetition.
    pub ttft_s: Vec<f64>,
    /// tg: every single-token decode of every repetition.
    pub per_token_s: Vec<f64>,
}

fn err(e: sotto_engine::Error) -> String {
    e.to_string()
}

fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// One run; returns (seconds, time to first token, per-token seconds).
fn run_once(
    backend: &mut dyn Backend,
    cache: &mut KvCache,
    test: &TestSpec,
    rng: &mut TokenRng,
) -> Result<(f64, f64, Vec<f64>), String> {
    let vocab = backend.spec().vocab_size;
    cache.truncate(0);
    match test.kind {
        TestKind::Pp => {
            if test.depth > 0 {
                backend
                    .forward(cache, &rng.tokens(test.depth, vocab), LogitsFor::Last)
                    .map_err(err)?;
            }
            let prompt = rng.tokens(test.tokens, vocab);
            let t0 = Instant::now();
            let logits = backend
                .forward(cache, &prompt, LogitsFor::Last)
                .map_err(err)?;
            let prefill = t0.elapsed().as_secs_f64();
            std::hint::black_box(argmax(&logits));
            Ok((prefill, t0.elapsed().as_secs_f64(), Vec::new()))
        }
        TestKind::Tg => {
            backend
                .forward(cache, &rng.tokens(test.depth + 1, vocab), LogitsFor::Last)
                .map_err(err)?;
            let mut per_token = Vec::with_capacity(test.tokens);
            let t0 = Instant::now();
            for _ in 0..test.tokens {
                let tok = rng.next_token(vocab);
                let s = Instant::now();
                let logits = backend
                    .forward(cache, &[tok], LogitsFor::Last)
                    .map_err(err)?;
                std::hint::black_box(&logits);
                per_token.push(s.elapsed().as_secs_f64());
            }
            Ok((t0.elapsed().as_secs_f64(), 0.0, per_token))
        }
    }
}

/// `warmup` untimed runs, then `reps` timed ones; `tick` after each run
/// (progress bar).
pub fn measure(
    loaded: &mut LoadedBackend,
    test: &TestSpec,
    reps: usize,
    warmup: usize,
    rng: &mut TokenRng,
    tick: &mut dyn FnMut(),
) -> Result<(Measurement, KvCache), String> {
    let backend = loaded.backend.as_mut();
    let context = backend.spec().context_length;
    if test.positions() > context {
        return Err(format!(
            "{:?}{} at depth {} needs {} positions; the model's context is {context}",
            test.kind,
            test.tokens,
            test.depth,
            test.positions()
        ));
    }
    let mut cache = backend.new_cache(test.positions()).map_err(err)?;
    let mut m = Measurement::default();
    for _ in 0..warmup {
        run_once(backend, &mut cache, test, rng)?;
        tick();
    }
    for _ in 0..reps {
        let (run, ttft, per_token) = run_once(backend, &mut cache, test, rng)?;
        m.run_s.push(run);
        if test.kind == TestKind::Pp {
            m.ttft_s.push(ttft);
        }
        m.per_token_s.extend(per_token);
        tick();
    }
    Ok((m, cache))
}

/// Context of a row that the measurement itself does not know.
#[derive(Clone, Debug)]
pub struct RowContext<'a> {
    pub backend: &'a str,
    pub describe: String,
    pub isa: String,
    pub threads: usize,
    pub load_s: f64,
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    /// The KV cache's element types (`T` or `K,V`).
    pub kv_type: String,
    /// The CPU backend's repacked panels at load (see
    /// [`super::backends::LoadedBackend::packing`]).
    pub packing: Option<String>,
}

pub fn summarize(test: &TestSpec, m: &Measurement, ctx: &RowContext<'_>) -> BenchRow {
    let rss = machine::rss_split();
    let tps: Vec<f64> = m
        .run_s
        .iter()
        .filter(|&&s| s > 0.0)
        .map(|s| test.tokens as f64 / s)
        .collect();
    let ms = |xs: &[f64], q: f64| (!xs.is_empty()).then(|| stats::percentile(xs, q) * 1e3);
    BenchRow {
        backend: ctx.backend.to_string(),
        describe: ctx.describe.clone(),
        isa: ctx.isa.clone(),
        threads: ctx.threads,
        test: test.kind,
        n_prompt: if test.kind == TestKind::Pp {
            test.tokens
        } else {
            0
        },
        n_gen: if test.kind == TestKind::Tg {
            test.tokens
        } else {
            0
        },
        depth: test.depth,
        repetitions: m.run_s.len(),
        tokens_per_s_mean: stats::mean(&tps),
        tokens_per_s_sd: stats::sample_sd(&tps),
        tokens_per_s_samples: tps,
        ttft_ms: (!m.ttft_s.is_empty()).then(|| stats::mean(&m.ttft_s) * 1e3),
        latency_p50_ms: ms(&m.per_token_s, 50.0),
        latency_p90_ms: ms(&m.per_token_s, 90.0),
        latency_p99_ms: ms(&m.per_token_s, 99.0),
        load_ms: ctx.load_s * 1e3,
        packing: ctx.packing.clone(),
        peak_rss_bytes: machine::peak_rss_bytes().unwrap_or(0),
        rss_file_bytes: rss.map(|r| r.file),
        rss_anon_bytes: rss.map(|r| r.anon),
        weights_bytes: ctx.weights_bytes,
        kv_bytes: ctx.kv_bytes,
        kv_type: ctx.kv_type.clone(),
        bandwidth_fraction: None,
        compute_fraction: None,
        llama_cpp_tokens_per_s: None,
        ratio_vs_llama_cpp: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rng_is_reproducible_and_in_range() {
        let a = TokenRng::new(7).tokens(1000, 49152);
        let b = TokenRng::new(7).tokens(1000, 49152);
        assert_eq!(a, b);
        assert!(a.iter().all(|&t| t < 49152));
        // Not degenerate: many distinct ids.
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 900);
        assert_ne!(a, TokenRng::new(8).tokens(1000, 49152));
    }

    #[test]
    fn summary_turns_seconds_into_tokens_per_second() {
        let test = TestSpec {
            kind: TestKind::Tg,
            tokens: 10,
            depth: 0,
        };
        let m = Measurement {
            run_s: vec![0.5, 1.0],
            ttft_s: vec![],
            per_token_s: (1..=10).map(|i| i as f64 / 1000.0).collect(),
        };
        let ctx = RowContext {
            backend: "cpu",
            describe: "cpu".into(),
            isa: "avx2".into(),
            threads: 2,
            load_s: 0.25,
            weights_bytes: 100,
            kv_bytes: 10,
            kv_type: "q8_0".into(),
            packing: None,
        };
        let row = summarize(&test, &m, &ctx);
        assert_eq!(row.tokens_per_s_samples, [20.0, 10.0]);
        assert!((row.tokens_per_s_mean - 15.0).abs() < 1e-9);
        assert!((row.tokens_per_s_sd - 50f64.sqrt()).abs() < 1e-9);
        assert!((row.latency_p50_ms.unwrap() - 5.5).abs() < 1e-9);
        assert_eq!(row.ttft_ms, None);
        assert_eq!((row.n_prompt, row.n_gen), (0, 10));
        assert!((row.load_ms - 250.0).abs() < 1e-9);
    }
}
