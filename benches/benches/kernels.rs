//! Kernel benchmarks, named `<op>/<dtype>/<isa>` and run for every ISA this
//! CPU offers. Memory-bound ops (vec_dot, matvec, quantize) count weight
//! bytes, so criterion reports GB/s; matmul counts flops (Gelem/s = GFLOP/s).
//! `matvec` and `matmul` run on a 1-thread and a 2-thread pool (`.../t1`,
//! `.../t2`): the engine's two settings, and t1 shows the kernel alone.
//! Tables that read weights repacked at load time (the x16 panels) also run
//! on the packed copy, as `<isa>-x16`: that is the engine's path there, the
//! plain `<isa>` row the file's layout.
//!
//! `cargo bench -p sotto-benches --bench kernels -- 'matvec'`

use bytemuck::Zeroable;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use sotto_kernels::dispatch::{available_isas, table_for, KernelTable};
use sotto_kernels::ops::{
    attention_with, matmul_packed_with, matmul_with, AttentionParams, PackedMatrix, PackedSource,
    QMatrix,
};
use sotto_kernels::quant::{aligned_bytes, quantize_row, AlignedBytes, DType};
use sotto_models::HugeAnon;
use std::sync::Arc;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Weight bytes on 2 MiB pages where Linux gives them, as the engine's
/// weight and panel maps ask for them: on 4 KiB pages a matrix read from
/// DRAM pays a TLB miss every 64 lines that the engine's decode does not.
struct HugeBytes(HugeAnon);

impl PackedSource for HugeBytes {
    fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

fn quantized(dtype: DType, rows: usize, cols: usize) -> HugeAnon {
    let rb = dtype.row_bytes(cols).unwrap_or(0);
    let mut q = HugeAnon::new(rows * rb);
    let src = random(cols, 7);
    // One quantized row repeated: the values do not change the timing, and
    // quantizing every row of every shape of every type (the k-quants' and
    // IQ4's searches) took the bench minutes before its first timing.
    let bytes = q.bytes_mut();
    if rows > 0 && quantize_row(dtype, &src, &mut bytes[..rb]).is_ok() {
        let (first, rest) = bytes.split_at_mut(rb);
        for row in rest.chunks_exact_mut(rb) {
            row.copy_from_slice(first);
        }
    }
    q
}

/// `m`'s x16 panels for `t`, moved to 2 MiB pages as a warm start maps
/// them (`None` where `t` does not pack the type).
fn packed(t: &KernelTable, m: &QMatrix<'_>) -> Option<PackedMatrix> {
    let p = PackedMatrix::pack_for(t, m).ok()??;
    let mut huge = HugeAnon::new(p.bytes().len());
    huge.bytes_mut().copy_from_slice(p.bytes());
    let source = Arc::new(HugeBytes(huge));
    PackedMatrix::from_source(t, p.dtype(), p.rows(), p.cols(), source, 0).ok()
}

fn tables() -> Vec<&'static KernelTable> {
    available_isas()
        .into_iter()
        .filter_map(|i| table_for(i).ok())
        .collect()
}

/// Pools of 1 and 2 threads, as the engine builds them.
fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    [1, 2]
        .into_iter()
        .filter_map(|n| {
            Some((
                n,
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .ok()?,
            ))
        })
        .collect()
}

const DTYPES: [DType; 13] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
    DType::F16,
];

/// Matrix-vector products of the SmolLM2-135M shapes: q/o projections
/// (576x576 is too small to time well, so 1536x576 FFN up/gate), FFN down
/// (576x1536) and the tied embedding / output head (49152x576). Types of
/// 256-element blocks cannot take 576 columns: their large shape is
/// 73728x1536, 37-93 MB, read from DRAM past a 32 MiB L3 (18432x1536, as
/// many weights as the head, stayed in such an L3 and hid that the
/// k-quant decode kernels were slower from memory than from cache).
fn matvec(c: &mut Criterion) {
    let pools = pools();
    for dtype in DTYPES {
        let head = if dtype.row_bytes(576).is_some() {
            (49152usize, 576usize)
        } else {
            (73728, 1536)
        };
        for (rows, cols) in [(1536usize, 576usize), (576, 1536), head] {
            if dtype.row_bytes(cols).is_none() {
                continue;
            }
            let w = quantized(dtype, rows, cols);
            let Ok(m) = QMatrix::new(dtype, rows, cols, w.bytes()) else {
                continue;
            };
            let x = random(cols, 1);
            let mut out = vec![0f32; rows];
            let mut g = c.benchmark_group(format!("matvec/{dtype}"));
            g.throughput(Throughput::Bytes(w.bytes().len() as u64));
            for t in tables() {
                for (threads, pool) in &pools {
                    let id = BenchmarkId::new(t.isa.name(), format!("{rows}x{cols}/t{threads}"));
                    // The timing loop runs inside the pool, as the engine's
                    // forward pass does, so no call pays a cross-thread wake-up.
                    g.bench_function(id, |b| {
                        pool.install(|| b.iter(|| matmul_with(t, &m, black_box(&x), 1, &mut out)))
                    });
                }
                let Some(p) = packed(t, &m) else {
                    continue;
                };
                for (threads, pool) in &pools {
                    let id = BenchmarkId::new(
                        format!("{}-x16", t.isa.name()),
                        format!("{rows}x{cols}/t{threads}"),
                    );
                    g.bench_function(id, |b| {
                        pool.install(|| {
                            b.iter(|| matmul_packed_with(t, &p, black_box(&x), 1, &mut out))
                        })
                    });
                }
            }
            g.finish();
        }
    }
}

/// Decode of a matrix far larger than any L3 (737280x1536: Q4_K and Q4_0
/// 637 MB, Q6_K 929 MB, Q8_0 1.2 GB) on the engine's kernel tier, beside
/// plain sequential reads of as many bytes in the same process (the sum of
/// `sotto bench`'s bandwidth probe, without and with its prefetch): how
/// close the decode kernels' stream comes to what the memory gives a reader
/// that does no arithmetic. (The 73728-row shape of [`matvec`] stays in the L3 of a
/// Xeon with a large one.)
fn stream(c: &mut Criterion) {
    use rayon::prelude::*;
    use sotto_kernels::probe::{sum_words, READ_PREFETCH_BYTES};
    const ROWS: usize = 737280;
    const COLS: usize = 1536;
    let Ok(t) = sotto_kernels::dispatch::try_table() else {
        return;
    };
    let pools = pools();
    let x = random(COLS, 1);
    let mut out = vec![0f32; ROWS];
    for dtype in [
        DType::Q4_K,
        DType::Q6_K,
        DType::Q4_0,
        DType::Q5_0,
        DType::Q8_0,
    ] {
        let w = quantized(dtype, ROWS, COLS);
        let Ok(m) = QMatrix::new(dtype, ROWS, COLS, w.bytes()) else {
            continue;
        };
        let Some(p) = packed(t, &m) else {
            continue;
        };
        drop(w);
        let len = p.bytes().len();
        let mut g = c.benchmark_group(format!("stream/{ROWS}x{COLS}/{dtype}"));
        g.throughput(Throughput::Bytes(len as u64));
        for (threads, pool) in &pools {
            let id = BenchmarkId::new(format!("{}-x16", t.isa.name()), format!("t{threads}"));
            g.bench_function(id, |b| {
                pool.install(|| b.iter(|| matmul_packed_with(t, &p, black_box(&x), 1, &mut out)))
            });
        }
        drop(p);
        let mut mem = HugeAnon::new(len);
        for (i, word) in mem.bytes_mut().chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&(i as u64).to_le_bytes());
        }
        let words: &[u64] = bytemuck::try_cast_slice(mem.bytes()).unwrap_or(&[]);
        for (threads, pool) in &pools {
            let part = words.len().div_ceil(*threads).max(1);
            for (name, ahead) in [("read", None), ("read-prefetch", Some(READ_PREFETCH_BYTES))] {
                g.bench_function(BenchmarkId::new(name, format!("t{threads}")), |b| {
                    pool.install(|| {
                        b.iter(|| {
                            words
                                .par_chunks(part)
                                .map(|w| sum_words(black_box(w), ahead))
                                .reduce(|| 0, u64::wrapping_add)
                        })
                    })
                });
            }
        }
        g.finish();
    }
}

/// Prefill: 128 tokens through the FFN up/gate (1536x576) and down
/// (576x1536) matrices, and 128 and 512 through those of Llama-3.2-1B
/// (8192x2048, 2048x8192) (the 256-element block types, whose rows are
/// whole super-blocks, only the latter: as in a Q4_K_M file). At 512 a
/// down projection's quantized activations outgrow L2 unless the product
/// takes the tokens in blocks. Prefill is compute-bound, so throughput
/// counts the `2 * rows * cols * n` multiply-add flops of a call as
/// elements: criterion's Gelem/s is GFLOP/s here.
fn matmul(c: &mut Criterion) {
    let pools = pools();
    for dtype in DTYPES.into_iter().filter(|&d| d != DType::F16) {
        for (rows, cols, n) in [
            (1536usize, 576usize, 128usize),
            (576, 1536, 128),
            (8192, 2048, 128),
            (2048, 8192, 128),
            (8192, 2048, 512),
            (2048, 8192, 512),
        ] {
            if dtype.row_bytes(cols).is_none() {
                continue;
            }
            let w = quantized(dtype, rows, cols);
            let Ok(m) = QMatrix::new(dtype, rows, cols, w.bytes()) else {
                continue;
            };
            let x = random(n * cols, 2);
            let mut out = vec![0f32; n * rows];
            let mut g = c.benchmark_group(format!("matmul/{dtype}"));
            g.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
            for t in tables() {
                for (threads, pool) in &pools {
                    let id =
                        BenchmarkId::new(t.isa.name(), format!("{rows}x{cols}x{n}/t{threads}"));
                    g.bench_function(id, |b| {
                        pool.install(|| b.iter(|| matmul_with(t, &m, black_box(&x), n, &mut out)))
                    });
                }
                let Some(p) = packed(t, &m) else {
                    continue;
                };
                for (threads, pool) in &pools {
                    let id = BenchmarkId::new(
                        format!("{}-x16", t.isa.name()),
                        format!("{rows}x{cols}x{n}/t{threads}"),
                    );
                    g.bench_function(id, |b| {
                        pool.install(|| {
                            b.iter(|| matmul_packed_with(t, &p, black_box(&x), n, &mut out))
                        })
                    });
                }
            }
            g.finish();
        }
    }
}

/// One layer's attention over an f16 cache in the default model's shape (9
/// query heads over 3 KV heads of 64): a follow-up turn's 19 new tokens
/// after a history of 1,044 (`pp19-d1044`), and one decoded token there
/// (`tg-d1044`). Throughput counts the q·k and p·v multiply-adds as 2 flops
/// each over every visible key.
fn attention(c: &mut Criterion) {
    let p = AttentionParams {
        n_head: 9,
        n_kv_head: 3,
        head_dim: 64,
        scale: 0.125,
        softcap: None,
        window: None,
    };
    let cases = [("pp19-d1044", 19), ("tg-d1044", 1)];
    attention_group(c, "attention/f16", &p, 1044, &cases, 11);
}

/// A prefill's attention in Llama-3.2-1B's shape (32 query heads over 8 KV
/// heads of 64): one layer's 512 new tokens after a history of 1,024
/// (`pp512-d1024`), the pass where attention weighs most against the
/// weights. Throughput as in [`attention`], so criterion's Gelem/s over
/// the f32 FMA peak (16 lanes x 2 flops per FMA) is the kernels' FMA use.
fn attention_prefill(c: &mut Criterion) {
    let p = AttentionParams {
        n_head: 32,
        n_kv_head: 8,
        head_dim: 64,
        scale: 0.125,
        softcap: None,
        window: None,
    };
    attention_group(
        c,
        "attention/f16-prefill",
        &p,
        1024,
        &[("pp512-d1024", 512)],
        31,
    );
}

/// `group`: for each `(name, tokens)` case, that many new tokens after a
/// history of `depth` (random f16 keys and values from `seed`), on every
/// table and pool, the q·k and p·v multiply-adds counted as 2 flops each.
fn attention_group(
    c: &mut Criterion,
    group: &str,
    p: &AttentionParams,
    depth: usize,
    cases: &[(&str, usize)],
    seed: u64,
) {
    let pools = pools();
    let cap = depth + cases.iter().map(|c| c.1).max().unwrap_or(0);
    let kv = |seed| -> Vec<half::f16> {
        random(p.n_kv_head * cap * p.head_dim, seed)
            .into_iter()
            .map(half::f16::from_f32)
            .collect()
    };
    let (k, v) = (kv(seed), kv(seed + 1));
    for &(name, n_tokens) in cases {
        let q = random(n_tokens * p.n_head * p.head_dim, seed + 2);
        let mut out = vec![0f32; q.len()];
        let keys: usize = (0..n_tokens).map(|t| depth + t + 1).sum();
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(
            (4 * keys * p.n_head * p.head_dim) as u64,
        ));
        for t in tables() {
            for (threads, pool) in &pools {
                let id = BenchmarkId::new(t.isa.name(), format!("{name}/t{threads}"));
                g.bench_function(id, |b| {
                    pool.install(|| {
                        b.iter(|| {
                            attention_with(
                                t,
                                p,
                                black_box(&q),
                                &k,
                                &v,
                                cap,
                                depth,
                                n_tokens,
                                &mut out,
                            )
                        })
                    })
                });
            }
        }
        g.finish();
    }
}

/// The tiled attention's kernels alone on one unit's tile (64 query rows,
/// 64 keys of a head of 64, in L1/L2 as in a prefill): `scores` and
/// `accumulate` count their multiply-adds (2 flops each), `softmax` its
/// scores, so the three compare with the f32 FMA peak and each other.
fn attention_tile(c: &mut Criterion) {
    use sotto_kernels::dispatch::ATTN_TILE;
    let (rows, hd) = (64usize, 64usize);
    let mut g = c.benchmark_group("attention/tile");
    for t in tables() {
        let Some(tk) = t.attn_tile else { continue };
        let isa = t.isa.name();
        let keys: Vec<half::f16> = random(ATTN_TILE * hd, 41)
            .into_iter()
            .map(half::f16::from_f32)
            .collect();
        let mut kt = vec![0f32; hd * ATTN_TILE];
        (tk.load_keys)(&keys, hd, 0, &mut kt);
        let mut vt = vec![0f32; ATTN_TILE * hd];
        (tk.load_values)(&keys, &mut vt);
        let q = random(rows * hd, 42);
        let mut sc = vec![0f32; rows * ATTN_TILE];
        let lim = vec![ATTN_TILE; rows];
        let mut acc = vec![0f32; rows * hd];
        g.throughput(Throughput::Elements((2 * rows * ATTN_TILE * hd) as u64));
        g.bench_function(format!("scores/{isa}"), |b| {
            b.iter(|| (tk.scores)(&kt, hd, ATTN_TILE, black_box(&q), &mut sc))
        });
        g.bench_function(format!("accumulate/{isa}"), |b| {
            b.iter(|| (tk.accumulate)(&vt, hd, black_box(&sc), &lim, &mut acc))
        });
        // a running max above every score: no row rescales, as in most
        // tiles past a long history's first
        let (scores, m0) = (random(rows * ATTN_TILE, 43), 8.0f32);
        let (mut m, mut l) = (vec![m0; rows], vec![1f32; rows]);
        g.throughput(Throughput::Elements((rows * ATTN_TILE) as u64));
        g.bench_function(format!("softmax/{isa}"), |b| {
            b.iter(|| {
                sc.copy_from_slice(&scores);
                m.fill(m0);
                (tk.softmax)(&mut sc, &lim, 0.125, &mut m, &mut l, &mut acc)
            })
        });
    }
    g.finish();
}

/// A decode step's attention at depth 1,024 in Llama-3.2-3B's shape (24
/// query heads over 8 KV heads of 128), each call on the next of 28
/// layers' caches (117 MB, as the engine's f16 planes are: 4 KiB pages):
/// a layer's keys and values come from memory, as between two layers of
/// a real step the weights streaming through evict them. Throughput counts
/// the key and value bytes read, so criterion reports the KV read rate.
fn attention_deep(c: &mut Criterion) {
    let pools = pools();
    let p = AttentionParams {
        n_head: 24,
        n_kv_head: 8,
        head_dim: 128,
        scale: 128f32.powf(-0.5),
        softcap: None,
        window: None,
    };
    let (depth, layers) = (1024usize, 28usize);
    let cap = depth + 1;
    let plane = p.n_kv_head * cap * p.head_dim;
    let kv = |seed| -> Vec<half::f16> {
        let row: Vec<half::f16> = random(plane, seed)
            .into_iter()
            .map(half::f16::from_f32)
            .collect();
        (0..layers).flat_map(|_| row.iter().copied()).collect()
    };
    let (k, v) = (kv(21), kv(22));
    let q = random(p.n_head * p.head_dim, 23);
    let mut out = vec![0f32; q.len()];
    let mut g = c.benchmark_group("attention/f16-deep");
    g.throughput(Throughput::Bytes((2 * plane * 2) as u64));
    for t in tables() {
        for (threads, pool) in &pools {
            let id = BenchmarkId::new(t.isa.name(), format!("tg-d{depth}/t{threads}"));
            let mut layer = 0;
            g.bench_function(id, |b| {
                pool.install(|| {
                    b.iter(|| {
                        layer = (layer + 1) % layers;
                        let at = layer * plane..(layer + 1) * plane;
                        attention_with(
                            t,
                            &p,
                            black_box(&q),
                            &k[at.clone()],
                            &v[at],
                            cap,
                            depth,
                            1,
                            &mut out,
                        )
                    })
                })
            });
        }
    }
    g.finish();
}

/// One dot of a 1536-element row (no threading): the kernels themselves.
fn vec_dot(c: &mut Criterion) {
    let n = 1536;
    let w = random(n, 3);
    let x = random(n, 4);
    let q = |d: DType, v: &[f32]| {
        let mut b = aligned_bytes(d.row_bytes(v.len()).unwrap_or(0));
        let _ = quantize_row(d, v, b.as_bytes_mut());
        b
    };
    let (w40, w41, w80, x80, x81) = (
        q(DType::Q4_0, &w),
        q(DType::Q4_1, &w),
        q(DType::Q8_0, &w),
        q(DType::Q8_0, &x),
        q(DType::Q8_1, &x),
    );
    let wh: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
    for t in tables() {
        let isa = t.isa.name();
        c.bench_function(&format!("vec_dot/q4_0/{isa}"), |b| {
            b.iter(|| (t.q4_0.dot)(bytemuck_cast(&w40), bytemuck_cast(&x80)))
        });
        c.bench_function(&format!("vec_dot/q4_1/{isa}"), |b| {
            b.iter(|| (t.q4_1.dot)(bytemuck_cast(&w41), bytemuck_cast(&x81)))
        });
        c.bench_function(&format!("vec_dot/q8_0/{isa}"), |b| {
            b.iter(|| (t.q8_0.dot)(bytemuck_cast(&w80), bytemuck_cast(&x80)))
        });
        c.bench_function(&format!("vec_dot/f16/{isa}"), |b| {
            b.iter(|| (t.f16.dot)(black_box(&wh), &x))
        });
    }
}

fn bytemuck_cast<B: bytemuck::Pod>(b: &AlignedBytes) -> &[B] {
    bytemuck::cast_slice(b.as_bytes())
}

/// Activation quantizers over a 1536-element row.
fn quantize(c: &mut Criterion) {
    let x = random(1536, 5);
    let mut q80 = vec![Zeroable::zeroed(); 1536 / 32];
    let mut q81 = vec![Zeroable::zeroed(); 1536 / 32];
    let mut q8k = vec![Zeroable::zeroed(); 1536 / 256];
    for t in tables() {
        let isa = t.isa.name();
        c.bench_function(&format!("quantize/q8_0/{isa}"), |b| {
            b.iter(|| (t.act_q8_0.quantize)(black_box(&x), &mut q80))
        });
        c.bench_function(&format!("quantize/q8_1/{isa}"), |b| {
            b.iter(|| (t.act_q8_1.quantize)(black_box(&x), &mut q81))
        });
        c.bench_function(&format!("quantize/q8_K/{isa}"), |b| {
            b.iter(|| (t.act_q8_k.quantize)(black_box(&x), &mut q8k))
        });
    }
}

criterion_group!(
    benches,
    matvec,
    stream,
    matmul,
    attention,
    attention_prefill,
    attention_tile,
    attention_deep,
    vec_dot,
    quantize
);
criterion_main!(benches);
