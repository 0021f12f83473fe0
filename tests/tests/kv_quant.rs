//! KV cache quantization (issue 14, item 2): q8_0 and q4_0 keys and values
//! against f16, side by side with llama.cpp's own q8_0 / q4_0 against its
//! own f16 (`tests/scripts/llama_kv_quant.py`: `type_k` / `type_v`, flash
//! attention on for every type there), on the default model and the same
//! tokens.
//!
//! The text is the repository's README, [`PREFILL`] tokens decoded in
//! batches of [`CHUNK`] (the logits of each batch's last token kept), then
//! [`DECODE`] tokens one at a time: every kept row but the first few sees
//! hundreds of cached positions. The error of a type is the mean relative
//! L2 distance of its logits rows from the f16 run's, with the share of
//! rows whose argmax agrees.
//!
//! Sotto's error may exceed llama.cpp's by [`MARGIN`]× plus [`FLOOR`] (the
//! engines round the query differently on the way to the integer dots,
//! and their f16 baselines differ by the parity budget), q4_0 must be
//! worse than q8_0, and a cache whose keys were moved to other positions
//! after the prefill must fail the same check. A q8_0 chat saved to disk
//! restores bit for bit and answers as the uninterrupted one; a model
//! opened with another KV type refuses that file.
//!
//! llama.cpp (the build llama-cpp-python 0.3.36 makes) stores a quantized
//! plane rotated by the orthonormal Walsh–Hadamard transform when the head
//! size is a multiple of 64; Sotto does the same where it does
//! (`KvRotations::for_cache`), so both quantize the same vectors.
//!
//! Measured (SmolLM2-135M Q4_1, 1088 tokens, 80 rows; f16 Sotto vs f16
//! llama.cpp 0.0234 rel L2, 0.950 argmax agreement):
//!
//! | KV   | Sotto rel L2 | agree | llama.cpp rel L2 | agree |
//! |------|-------------:|------:|-----------------:|------:|
//! | q8_0 |       0.0223 | 0.963 |           0.0248 | 0.963 |
//! | q4_0 |       0.1083 | 0.787 |           0.1056 | 0.812 |
//!
//! (Before the rotation, at 031295a, Sotto's planes stored as they are gave
//! q8_0 0.0277 and q4_0 0.1690, over the margin.) The shuffled q8_0 cache:
//! 0.651 rel L2, 0.338 agreement.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use sotto_engine::{
    Backend, BackendChoice, CpuBackend, CpuOptions, Error, KvCache, KvType, KvTypes, LoadedModel,
    LogitsFor, SessionFileProblem,
};
use sotto_models::Model;
use sotto_tests::parity::{read_f32_file, run_llama_cases_script};
use sotto_tests::{argmax, default_model, default_model_path, greedy, readme_tokens, rel_l2};
use std::path::Path;
use std::sync::Arc;

/// Tokens decoded in batches before the single-token decodes.
const PREFILL: usize = 1024;
/// Batch size of the prefill.
const CHUNK: usize = 64;
/// Tokens decoded one at a time after the prefill.
const DECODE: usize = 64;
/// Sotto's error may be this many times llama.cpp's ...
const MARGIN: f64 = 1.5;
/// ... plus this much relative L2.
const FLOOR: f64 = 0.01;
/// ... and agree on this share of argmaxes fewer.
const AGREE_SLACK: f64 = 0.05;

const TYPES: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

/// Sotto's kept logits rows with keys and values of `kv`; `tamper` sees
/// the cache after the prefill.
fn sotto_rows(
    model: &Arc<Model>,
    kv: KvTypes,
    tokens: &[u32],
    tamper: Option<&dyn Fn(&mut KvCache)>,
) -> Vec<Vec<f32>> {
    let mut backend = CpuBackend::new(model.clone(), 0)
        .unwrap()
        .with_kv_types(kv)
        .unwrap();
    let mut cache = backend.new_cache(tokens.len()).unwrap();
    assert_eq!(cache.types(), kv);
    let mut rows = Vec::new();
    for chunk in tokens[..PREFILL].chunks(CHUNK) {
        rows.push(backend.forward(&mut cache, chunk, LogitsFor::Last).unwrap());
    }
    if let Some(t) = tamper {
        t(&mut cache);
    }
    for &t in &tokens[PREFILL..] {
        rows.push(backend.forward(&mut cache, &[t], LogitsFor::Last).unwrap());
    }
    rows
}

/// llama.cpp's kept logits rows, per type of [`TYPES`].
fn llama_rows(model: &Path, tokens: &[u32]) -> Vec<Vec<Vec<f32>>> {
    let dir = std::env::temp_dir().join(format!("sotto-kv-quant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let case_path = dir.join("case.json");
    let names: Vec<&str> = TYPES.iter().map(|t| t.name()).collect();
    let case = serde_json::json!({
        "tokens": tokens,
        "prefill": PREFILL,
        "chunk": CHUNK,
        "types": names.join(","),
    });
    std::fs::write(&case_path, serde_json::to_vec(&case).unwrap()).unwrap();
    let out = dir.join("logits.f32");
    run_llama_cases_script("llama_kv_quant.py", model, &case_path, &out);
    let values = read_f32_file(&out);
    std::fs::remove_dir_all(&dir).ok();
    let n_rows = PREFILL / CHUNK + DECODE;
    let vocab = values.len() / (TYPES.len() * n_rows);
    assert_eq!(values.len(), TYPES.len() * n_rows * vocab);
    values
        .chunks_exact(n_rows * vocab)
        .map(|t| t.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
        .collect()
}

/// How far rows are from the f16 run's.
#[derive(Clone, Copy, Debug)]
struct KvError {
    /// Mean relative L2 distance of the rows.
    rel_l2: f64,
    /// Share of rows with the same argmax.
    agree: f64,
}

fn kv_error(rows: &[Vec<f32>], f16: &[Vec<f32>]) -> KvError {
    assert_eq!(rows.len(), f16.len());
    let n = rows.len() as f64;
    KvError {
        rel_l2: rows
            .iter()
            .zip(f16)
            .map(|(a, b)| rel_l2(a, b) as f64)
            .sum::<f64>()
            / n,
        agree: rows
            .iter()
            .zip(f16)
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count() as f64
            / n,
    }
}

/// The criterion Sotto's error is held to against llama.cpp's.
fn check(ours: KvError, theirs: KvError) -> Result<(), String> {
    let limit = MARGIN * theirs.rel_l2 + FLOOR;
    if ours.rel_l2 > limit {
        return Err(format!(
            "rel L2 {:.4} over {limit:.4} (llama.cpp {:.4})",
            ours.rel_l2, theirs.rel_l2
        ));
    }
    if ours.agree < theirs.agree - AGREE_SLACK {
        return Err(format!(
            "argmax agreement {:.3} under llama.cpp's {:.3} - {AGREE_SLACK}",
            ours.agree, theirs.agree
        ));
    }
    Ok(())
}

/// Keys of every layer and head moved to other positions (reversed over
/// the prefill), values left in place: the pairs no longer match.
fn shuffle_keys(cache: &mut KvCache) {
    let (cap, hd, len) = (cache.capacity(), cache.head_dim(), cache.len());
    let mut rows = vec![0f32; len * hd];
    for l in 0..cache.n_layer() {
        for h in 0..cache.n_kv_head() {
            let k = &mut cache.layer_mut(l).k;
            k.read_rows(h * cap, &mut rows).unwrap();
            let reversed: Vec<f32> = rows.chunks_exact(hd).rev().flatten().copied().collect();
            k.write_rows(h * cap, &reversed).unwrap();
        }
    }
}

#[test]
fn quantized_kv_costs_no_more_than_in_llama_cpp() {
    let model = default_model();
    let tokens = readme_tokens(&model, PREFILL + DECODE);
    let ours: Vec<Vec<Vec<f32>>> = TYPES
        .iter()
        .map(|&t| sotto_rows(&model, KvTypes::both(t), &tokens, None))
        .collect();
    let theirs = llama_rows(&default_model_path(), &tokens);
    let e = |rows: &[Vec<Vec<f32>>], i: usize| kv_error(&rows[i], &rows[0]);
    let base = kv_error(&ours[0], &theirs[0]);
    eprintln!(
        "{} tokens ({PREFILL} in batches of {CHUNK}, {DECODE} decoded), {} rows; \
         f16 Sotto vs f16 llama.cpp: rel L2 {:.4}, argmax agreement {:.3}",
        tokens.len(),
        ours[0].len(),
        base.rel_l2,
        base.agree
    );
    eprintln!(
        "| KV | Sotto rel L2 | Sotto argmax agree | llama.cpp rel L2 | llama.cpp argmax agree |"
    );
    eprintln!("|---|---:|---:|---:|---:|");
    let mut failures = Vec::new();
    for (i, t) in TYPES.iter().enumerate().skip(1) {
        let (o, l) = (e(&ours, i), e(&theirs, i));
        eprintln!(
            "| {t} | {:.4} | {:.3} | {:.4} | {:.3} |",
            o.rel_l2, o.agree, l.rel_l2, l.agree
        );
        if let Err(why) = check(o, l) {
            failures.push(format!("{t}: {why}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    let (q8, q4) = (e(&ours, 1), e(&ours, 2));
    assert!(q8.rel_l2 > 0.0, "q8_0 changed nothing: not quantized?");
    assert!(
        q4.rel_l2 > q8.rel_l2,
        "q4_0 {q4:?} not worse than q8_0 {q8:?}"
    );

    // A broken cache fails the same check, against the type it broke.
    let shuffled = sotto_rows(
        &model,
        KvTypes::both(KvType::Q8_0),
        &tokens,
        Some(&shuffle_keys),
    );
    let broken = kv_error(&shuffled, &ours[0]);
    eprintln!(
        "q8_0 with its keys shuffled after the prefill: rel L2 {:.4}, argmax agreement {:.3}",
        broken.rel_l2, broken.agree
    );
    assert!(
        check(broken, e(&theirs, 1)).is_err(),
        "a shuffled cache passed: {broken:?}"
    );
}

fn loaded(kv: KvTypes) -> LoadedModel {
    let choice = BackendChoice::Cpu(CpuOptions {
        kv,
        ..Default::default()
    });
    LoadedModel::open(default_model_path(), choice).unwrap()
}

#[test]
fn a_saved_q8_0_chat_restores_bit_for_bit_and_only_into_q8_0() {
    let key = sotto_bridge::StorageKey::from_bytes([0x4b; 32]);
    let dir = std::env::temp_dir().join(format!("sotto-kv-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("q8.session");
    let q8 = loaded(KvTypes::both(KvType::Q8_0));
    let mut chat = q8.chat(256, Some("Be brief.")).unwrap();
    chat.send("Name three rivers.", &greedy(16), &mut |_| {})
        .unwrap();
    chat.save(&path, &key).unwrap();
    let mut restored = q8.restore_chat(&path, &key, 256).unwrap();
    let (a, b) = (chat.session().cache(), restored.session().cache());
    assert_eq!(b.types(), KvTypes::both(KvType::Q8_0));
    assert_eq!(a.len(), b.len());
    for l in 0..a.n_layer() {
        for (pa, pb) in [
            (&a.layer(l).k, &b.layer(l).k),
            (&a.layer(l).v, &b.layer(l).v),
        ] {
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            for h in 0..a.n_kv_head() {
                pa.encode_rows(h * a.capacity(), a.len(), &mut ea).unwrap();
                pb.encode_rows(h * b.capacity(), b.len(), &mut eb).unwrap();
            }
            assert!(ea == eb, "layer {l}: restored blocks differ");
        }
    }
    let expected = chat
        .send("And three lakes?", &greedy(16), &mut |_| {})
        .unwrap();
    let reply = restored
        .send("And three lakes?", &greedy(16), &mut |_| {})
        .unwrap();
    assert_eq!(reply.text, expected.text);

    for other in [KvTypes::default(), KvTypes::parse("q8_0,q4_0").unwrap()] {
        match loaded(other).restore_chat(&path, &key, 256) {
            Err(Error::SessionFile {
                problem: SessionFileProblem::Geometry { saved, current },
                ..
            }) => {
                // q8_0 keys and values of SmolLM2's 64 wide heads are
                // stored rotated, and the file says so
                assert!(saved.ends_with("/q8_0 (K H64, V H64)"), "{saved}");
                assert!(current.contains(&format!("/{other}")), "{current}");
            }
            Err(e) => panic!("restoring q8_0 into {other}: {e}"),
            Ok(_) => panic!("a q8_0 session restored into {other}"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn kv_types_reach_the_cache_and_its_size() {
    let model = default_model();
    let s = &model.spec;
    let per_pos =
        |bytes_per_32: usize| s.n_layer * 2 * s.n_kv_head * s.head_dim / 32 * bytes_per_32;
    for (kv, bytes_per_32) in [("f16", 64), ("q8_0", 34), ("q4_0", 18)] {
        let backend = CpuBackend::new(model.clone(), 1)
            .unwrap()
            .with_kv_types(KvTypes::parse(kv).unwrap())
            .unwrap();
        let cache = backend.new_cache(100).unwrap();
        assert_eq!(cache.bytes(), 100 * per_pos(bytes_per_32), "{kv}");
        assert_eq!(backend.describe().contains("KV"), kv != "f16");
    }
    assert!(matches!(KvTypes::parse("q8_1"), Err(Error::KvType(_))));
}
