//! The default model (SmolLM2-135M Q4_1) exported for the CPU EP with its
//! Q4 blocks re-packed as MatMulNBits, against the same decoder exported
//! with f32 weights (the CPU backend is the intended reference; until its
//! parity suite covers this, the float graph stands in: it has the same
//! weights dequantized, so the only difference is the re-packed 4-bit path).
#![cfg(feature = "ort")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sotto_engine::onnx::{export_model, ExportOptions, WeightFormat};
use sotto_engine::ort::{OrtBackend, OrtConfig};
use sotto_models::Model;
use sotto_tests::{argmax, rel_l2};

#[test]
fn matmulnbits_export_of_the_default_model_matches_the_float_graph() {
    // A missing model fails the test (with instructions), never skips it.
    let path = sotto_tests::default_model_path();
    let model = Model::load(&path).unwrap();
    let base = std::env::temp_dir().join(format!("sotto-ort-cpu-{}", std::process::id()));
    let (chunk, context) = (8, 64);
    let t = std::time::Instant::now();
    let nbits_dir = base.join("nbits");
    export_model(
        &model,
        &nbits_dir,
        ExportOptions {
            chunk,
            context,
            format: WeightFormat::MatMulNBits,
        },
    )
    .unwrap();
    let float_dir = base.join("float");
    export_model(
        &model,
        &float_dir,
        ExportOptions {
            chunk,
            context,
            format: WeightFormat::Float,
        },
    )
    .unwrap();
    eprintln!("export of both variants: {:?}", t.elapsed());

    let cfg = OrtConfig::default();
    let mut nbits = OrtBackend::open(&nbits_dir, &cfg).unwrap();
    let mut float = OrtBackend::open(&float_dir, &cfg).unwrap();
    eprintln!("nbits placement: {}", nbits.placement().0);
    let prompt = model
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap();
    let a = nbits.prefill(&prompt).unwrap();
    let b = float.prefill(&prompt).unwrap();
    let rel = rel_l2(&a, &b);
    eprintln!(
        "prompt of {} tokens: last-token logits rel L2 (MatMulNBits vs f32 graph) {rel:.2e}",
        prompt.len()
    );
    // Same dequantized values on both sides; only summation order and the
    // f32 zero points of Q4_1 differ.
    assert!(rel < 1e-3, "relative error {rel}");

    let (mut ta, mut tb) = (argmax(&a), argmax(&b));
    let (mut ga, mut gb) = (vec![ta], vec![tb]);
    for _ in 0..8 {
        ta = argmax(&nbits.decode(ta).unwrap());
        tb = argmax(&float.decode(tb).unwrap());
        ga.push(ta);
        gb.push(tb);
    }
    eprintln!("greedy: {ga:?} = {:?}", model.tokenizer.decode(&ga, false));
    assert_eq!(ga, gb);

    // KV hand-over round trip: export, reset, import, continue identically.
    let kv = nbits.export_kv();
    assert_eq!(kv.len, prompt.len() + 8);
    let next = nbits.decode(ta).unwrap();
    nbits.reset();
    nbits.import_kv(&kv).unwrap();
    let again = nbits.decode(ta).unwrap();
    assert!(rel_l2(&again, &next) < 1e-6);
    let _ = std::fs::remove_dir_all(&base);
}
