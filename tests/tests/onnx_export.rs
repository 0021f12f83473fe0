//! ONNX export of the generic decoder: graphs and manifest, without ONNX
//! Runtime (the ort_* tests run them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sotto_engine::onnx::{export_model, ExportOptions, Manifest, WeightFormat};
use sotto_models::Model;

/// The tiny model, with its file (kept while the model is in use).
fn tiny() -> (Model, sotto_tests::TempFile) {
    sotto_tests::tiny_llama("onnx-tiny")
}

#[test]
fn tiny_model_exports_both_graphs_with_a_manifest_that_validates() {
    let (model, _file) = tiny();
    let tmp = sotto_tests::scratch_dir("onnx-tiny");
    let dir = tmp.path();
    let m = export_model(
        &model,
        dir,
        ExportOptions {
            chunk: 8,
            context: 32,
            format: WeightFormat::Float,
        },
    )
    .unwrap();
    let again = Manifest::open(dir).unwrap();
    assert_eq!(again, m);
    assert_eq!(
        m.prefill.inputs[..3],
        ["input_ids", "position_ids", "attention_mask"]
    );
    assert_eq!(m.prefill.inputs.len(), 3 + 2 * model.spec.n_layer);
    assert_eq!(m.decode.outputs[0], "logits");
    assert_eq!(m.decode.outputs[1], "present.0.key");
    m.prefill.load(dir).unwrap();
    m.decode.load(dir).unwrap();
    eprintln!("exported to {}", dir.display());
}
