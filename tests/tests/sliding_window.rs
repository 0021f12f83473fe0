//! Sliding-window layers keep a ring (issue 14, item 1), on the real
//! Gemma 3 270M (window 512, five local layers to each global one).
//!
//! * Past the window, with the ring wrapped many times, the logits are
//!   those of the cache that keeps every position, and as close to
//!   llama.cpp's (whose SWA cache also keeps the window plus a batch) as
//!   the cache that keeps every position is; attention over every position
//!   instead of the window is far off, so the comparison sees the window.
//!   Measured (f16 cache, 52 rows, AVX2): ring vs every position kept
//!   3.52e-2 rel L2 (the rows before the ring wraps are identical); vs
//!   llama.cpp the ring 4.00e-2 (argmax 0.904), every position kept 3.51e-2
//!   (argmax 0.885), no window 5.45e-1 (argmax 0.038). This model amplifies
//!   rounding that much: the same whole cache is 3.51e-2 from llama.cpp on
//!   the AVX2 kernels, 3.74e-2 to 3.82e-2 on their earlier row-tile gemm
//!   and 4.24e-2 on the scalar kernels (where the ring is 3.84e-2).
//! * The KV cache of a context of 4096 or 32768 shrinks by the rings.
//! * A session saved with wrapped rings restores (only the rows the rings
//!   hold are in the file) and answers as the uninterrupted one.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use sotto_engine::{Backend, BackendChoice, CpuBackend, LoadedModel, LogitsFor};
use sotto_models::Model;
use sotto_tests::parity::{read_f32_file, run_llama_cases_script};
use sotto_tests::tiny_arch::gemma3_270m_path;
use sotto_tests::{argmax, greedy, readme_tokens, rel_l2};
use std::sync::Arc;

/// Tokens prefilled in batches (the last logits of each kept).
const PREFILL: usize = 1024;
/// The prefill's batch: the CPU backend's own chunk, llama.cpp's ubatch.
const CHUNK: usize = 256;
/// Tokens decoded one at a time after it, all past the window.
const DECODE: usize = 48;

/// Kept logits rows of the protocol above on `backend` with `cache`.
fn rows_of(
    backend: &mut CpuBackend,
    mut cache: sotto_engine::KvCache,
    tokens: &[u32],
) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    for chunk in tokens[..PREFILL].chunks(CHUNK) {
        rows.push(backend.forward(&mut cache, chunk, LogitsFor::Last).unwrap());
    }
    for &t in &tokens[PREFILL..] {
        rows.push(backend.forward(&mut cache, &[t], LogitsFor::Last).unwrap());
    }
    rows
}

/// Mean relative L2 distance of the rows and the share of equal argmaxes.
fn distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let n = a.len() as f64;
    let l2 = a
        .iter()
        .zip(b)
        .map(|(x, y)| rel_l2(x, y) as f64)
        .sum::<f64>()
        / n;
    let agree = a
        .iter()
        .zip(b)
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count() as f64
        / n;
    (l2, agree)
}

#[test]
fn gemma_rings_answer_as_every_position_and_as_llama_cpp_past_the_window() {
    let file = gemma3_270m_path();
    let model = Arc::new(Model::load(&file).unwrap());
    let window = model.spec.layers[0].attention.window.unwrap();
    assert_eq!(window, 512);
    let tokens = readme_tokens(&model, PREFILL + DECODE);
    let mut backend = CpuBackend::new(model.clone(), 0).unwrap();

    let cache = backend.new_cache(tokens.len()).unwrap();
    let slots = window + CHUNK - 1;
    let rings = (0..cache.n_layer()).filter(|&i| cache.is_ring(i)).count();
    assert_eq!(rings, 15, "the 15 local layers of 18");
    assert!((0..cache.n_layer())
        .filter(|&i| cache.is_ring(i))
        .all(|i| cache.layout(i).slots == slots));
    let ring = rows_of(&mut backend, cache, &tokens);
    let whole_cache = backend.new_linear_cache(tokens.len()).unwrap();
    let whole = rows_of(&mut backend, whole_cache, &tokens);

    // the same model attending to every position
    let mut unwindowed = Model::load(&file).unwrap();
    for l in &mut unwindowed.spec.layers {
        l.attention.window = None;
    }
    let mut every = CpuBackend::new(Arc::new(unwindowed), 0).unwrap();
    let every_cache = every.new_cache(tokens.len()).unwrap();
    let unwindowed = rows_of(&mut every, every_cache, &tokens);

    let dir = std::env::temp_dir().join(format!("sotto-sliding-window-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let case_path = dir.join("case.json");
    let case = serde_json::json!({
        "tokens": tokens,
        "prefill": PREFILL,
        "chunk": CHUNK,
        "types": "f16",
    });
    std::fs::write(&case_path, serde_json::to_vec(&case).unwrap()).unwrap();
    let out = dir.join("logits.f32");
    run_llama_cases_script("llama_kv_quant.py", &file, &case_path, &out);
    let values = read_f32_file(&out);
    std::fs::remove_dir_all(&dir).ok();
    let vocab = ring[0].len();
    assert_eq!(values.len(), ring.len() * vocab);
    let llama: Vec<Vec<f32>> = values.chunks_exact(vocab).map(<[f32]>::to_vec).collect();

    let (ring_whole, _) = distance(&ring, &whole);
    let (ring_llama, ring_agree) = distance(&ring, &llama);
    let (whole_llama, whole_agree) = distance(&whole, &llama);
    let (every_llama, every_agree) = distance(&unwindowed, &llama);
    eprintln!(
        "Gemma 3 270M, {} tokens ({PREFILL} in batches of {CHUNK}, {DECODE} decoded), {} rows: \
         ring vs every position kept {ring_whole:.2e}; vs llama.cpp: ring {ring_llama:.3e} \
         (argmax {ring_agree:.3}), every position kept {whole_llama:.3e} (argmax {whole_agree:.3}), \
         no window {every_llama:.3e} (argmax {every_agree:.3})",
        tokens.len(),
        ring.len()
    );
    // Until the ring first wraps (position `slots`) it is the same cache:
    // rows 0 and 1 are positions 255 and 511.
    for (i, (a, b)) in ring.iter().zip(&whole).enumerate().take(2) {
        assert_eq!(a, b, "row {i}, before the ring wraps");
    }
    // After, the wrapped window is scored in two runs of slots, which
    // rounds the online softmax otherwise; this model amplifies rounding,
    // so the ring is held to engine-to-engine noise.
    assert!(
        ring_whole <= 1.5 * whole_llama,
        "ring vs whole cache {ring_whole:.3e}, whole cache vs llama.cpp {whole_llama:.3e}"
    );
    // How far the whole cache itself lands from llama.cpp depends on how
    // the kernels round: 3.51e-2 to 4.24e-2 over the AVX2, earlier AVX2
    // and scalar kernels (module docs), a spread of 1.21x. The ring may be
    // as far within that spread; a ring that attends outside its window is
    // 15x as far.
    assert!(
        ring_llama <= 1.25 * whole_llama,
        "the ring is further from llama.cpp ({ring_llama:.3e}) than the whole cache ({whole_llama:.3e}) by more than the kernels' rounding moves the latter"
    );
    // Argmax agreement between two engines is bounded by this model's
    // near ties, whatever the cache: the ring must agree with llama.cpp as
    // often as the whole cache does, give or take one row.
    assert!(
        ring_agree >= whole_agree - 1.0 / ring.len() as f64 && ring_agree >= 0.8,
        "argmax agreement {ring_agree:.3} (whole cache {whole_agree:.3})"
    );
    assert!(
        every_llama > 3.0 * ring_llama,
        "without the window {every_llama:.3e}, with it {ring_llama:.3e}: the check does not see the window"
    );
}

#[test]
fn rings_shrink_the_cache() {
    let model = Arc::new(Model::load(gemma3_270m_path()).unwrap());
    let backend = CpuBackend::new(model.clone(), 1).unwrap();
    let s = &model.spec;
    let per_position = s.n_kv_head * s.head_dim * 2 * 2;
    for context in [1024, 4096, 32768] {
        let ring = backend.new_cache(context).unwrap();
        let whole = backend.new_linear_cache(context).unwrap();
        let slots = 512 + CHUNK - 1;
        assert_eq!(whole.bytes(), s.n_layer * context * per_position);
        assert_eq!(ring.bytes(), (15 * slots + 3 * context) * per_position);
        eprintln!(
            "context {context}: KV {:.1} MiB with rings, {:.1} MiB keeping every position",
            ring.bytes() as f64 / 1048576.0,
            whole.bytes() as f64 / 1048576.0
        );
    }
}

#[test]
fn a_session_with_wrapped_rings_restores_and_answers_as_the_uninterrupted_one() {
    let loaded = LoadedModel::open(gemma3_270m_path(), BackendChoice::default()).unwrap();
    let key = sotto_bridge::StorageKey::from_bytes([0x2c; 32]);
    let dir = std::env::temp_dir().join(format!("sotto-ring-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ring.session");
    let model = Model::load(gemma3_270m_path()).unwrap();
    let history = readme_tokens(&model, 1000);
    let context = 2048;

    let mut uninterrupted = loaded.session(context).unwrap();
    uninterrupted
        .generate(&history, &greedy(8), &mut |_| {})
        .unwrap();
    let cache = uninterrupted.cache();
    assert!(
        cache.is_ring(0) && cache.layout(0).first > 0,
        "the ring wrapped"
    );
    uninterrupted.save(&path, &key).unwrap();
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    let n = uninterrupted.cached_tokens().len();
    let row = cache.n_kv_head() * cache.head_dim() * 2 * 2;
    // 3 global layers hold every token, 15 rings their last `slots`
    let held = 3 * n + 15 * (512 + CHUNK - 1);
    assert!(
        size > held * row && size < held * row + 4 * n + 1024,
        "{size} bytes"
    );

    let mut next = uninterrupted.cached_tokens().to_vec();
    next.extend(readme_tokens(&model, 1040)[1000..].iter());
    let mut expected = String::new();
    let stats = uninterrupted
        .generate(&next, &greedy(16), &mut |t| expected.push_str(t))
        .unwrap();
    let mut restored = loaded.restore_session(&path, &key, context).unwrap();
    assert_eq!(restored.cached_tokens().len(), n);
    let mut reply = String::new();
    let again = restored
        .generate(&next, &greedy(16), &mut |t| reply.push_str(t))
        .unwrap();
    assert_eq!(reply, expected);
    assert_eq!(again.reused_tokens, stats.reused_tokens);
    assert!(
        again.prompt_tokens - again.reused_tokens <= 41,
        "no re-prefill"
    );
    std::fs::remove_dir_all(&dir).ok();
}
