//! A uint8 QDQ MatMul graph written by the ONNX writer runs on Qualcomm's QNN
//! HTP EP (the x86-64 emulator from PyPI onnxruntime-qnn) with CPU fallback
//! refused, and the bad-input cases of a graph session are typed errors.
//! These drive the crate's internals (the graph builder, the protobuf
//! messages, the QDQ pass, one graph's session) directly, so they live next
//! to them rather than in tests/. They need the libraries from
//! scripts/ort-deps.sh and fail (naming the script) without them.

use std::collections::HashSet;

use prost::Message;

use super::session::{self, Input};
use super::{Ep, Error, OrtConfig, QnnOptions};
use crate::onnx::graph::GraphBuilder;
use crate::onnx::proto::{DataType, DimValue, Dimension, ModelProto, ValueInfoProto};
use crate::onnx::qdq::{self, ActivationType, QdqScope, Ranges, WeightType};

/// Deterministic values in [-1, 1).
fn lcg(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn qnn_config() -> OrtConfig {
    OrtConfig {
        eps: vec![Ep::Qnn(QnnOptions::default())],
        npu_only: true,
        ..Default::default()
    }
}

const M: usize = 16;
const K: usize = 64;
const N: usize = 32;

/// `y = x·W` in f32, and the same graph in QDQ (uint8 weights per channel,
/// uint8 activations).
fn matmul_graphs(x: &[f32], w: &[f32], wt: WeightType) -> (Vec<u8>, Vec<f32>) {
    let mut g = GraphBuilder::new("qdq_matmul");
    let xin = g.input("x", DataType::Float, &[M as i64, K as i64]);
    let wname = g.init_f32("w", &[K, N], w);
    g.node_named("MatMul", &[&xin, &wname], "y", &[]);
    g.output("y", &[M as i64, N as i64]);
    let float = g.finish("qdq matmul test");
    let mut y = vec![0f32; M * N];
    for i in 0..M {
        for j in 0..N {
            y[i * N + j] = (0..K).map(|k| x[i * K + k] * w[k * N + j]).sum();
        }
    }
    let range = |v: &[f32]| {
        (
            v.iter().copied().fold(f32::INFINITY, f32::min),
            v.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        )
    };
    let ranges: Ranges = [("x".to_string(), range(x)), ("y".to_string(), range(&y))]
        .into_iter()
        .collect();
    let floats: HashSet<String> = ["x".to_string(), "y".to_string()].into_iter().collect();
    let q = qdq::quantize_scoped(
        &float,
        &floats,
        &ranges,
        ActivationType::Uint8,
        wt,
        QdqScope::All,
    )
    .unwrap();
    (q.encode_to_vec(), y)
}

#[test]
fn qdq_matmul_runs_wholly_on_qnn_htp_close_to_f32() {
    let x = lcg(M * K, 1);
    let w = lcg(K * N, 2);
    // uint8 weights per tensor, and int8 symmetric weights per channel: the
    // two weight encodings QNN HTP takes (see the next test for the third).
    for wt in [WeightType::PerTensorU8, WeightType::PerChannelI8] {
        let (bytes, want) = matmul_graphs(&x, &w, wt);
        let mut s = session::create(&qnn_config(), &bytes).unwrap();
        eprintln!("{wt:?} placement: {}", s.placement);
        assert!(s.placement.fully_offloaded(), "{}", s.placement);
        assert!(
            s.placement
                .per_ep
                .get("QNNExecutionProvider")
                .copied()
                .unwrap_or(0)
                >= 1,
            "{}",
            s.placement
        );
        let out = s.run(&[("x", Input::F32(&[M, K], &x))]).unwrap();
        let got = &out["y"].1;
        let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        let rel = err / norm;
        eprintln!("QNN HTP {wt:?} weights, uint8 activations, [{M}x{K}]·[{K}x{N}]: relative L2 error vs f32 {rel:.4}");
        // uint8 activations and weights: each operand carries ~0.4% rounding
        // noise of its range; 3% of the output norm is a generous bound.
        assert!(rel < 0.03, "relative error {rel}");
    }
}

#[test]
fn qnn_htp_rejects_asymmetric_per_channel_weights_and_the_refusal_says_so() {
    let (bytes, _) = matmul_graphs(&lcg(M * K, 1), &lcg(K * N, 2), WeightType::PerChannelU8);
    let err = session::create(&qnn_config(), &bytes).unwrap_err();
    assert!(
        matches!(err, Error::FallbackRefused { .. } if err.to_string().contains("MatMul")),
        "{err}"
    );
}

#[test]
fn second_session_loads_the_cached_qnn_context_binary() {
    let (bytes, _) = matmul_graphs(&lcg(M * K, 1), &lcg(K * N, 2), WeightType::PerChannelI8);
    let dir = tempfile::Builder::new()
        .prefix("sotto-qnn-ctx-")
        .tempdir()
        .unwrap();
    let ctx = dir.path().join("matmul.qnn_ctx.onnx");
    let cfg = OrtConfig {
        eps: vec![Ep::Qnn(QnnOptions {
            context_cache: Some(ctx.clone()),
            ..Default::default()
        })],
        npu_only: true,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let first = session::create(&cfg, &bytes).unwrap();
    let t_first = t0.elapsed();
    assert!(!first.placement.from_context_cache);
    assert!(ctx.is_file(), "no context file written");
    drop(first);
    let t1 = std::time::Instant::now();
    let mut second = session::create(&cfg, &bytes).unwrap();
    let t_second = t1.elapsed();
    eprintln!("session creation: first {t_first:?} (QNN graph preparation), second {t_second:?} (context binary); placement {}", second.placement);
    assert!(
        second.placement.from_context_cache && second.placement.fully_offloaded(),
        "{}",
        second.placement
    );
    let x = lcg(M * K, 1);
    let out = second.run(&[("x", Input::F32(&[M, K], &x))]).unwrap();
    assert_eq!(out["y"].1.len(), M * N);
    // A different source graph must not reuse the stale context.
    let (other, _) = matmul_graphs(&lcg(M * K, 1), &lcg(K * N, 9), WeightType::PerChannelI8);
    let third = session::create(&cfg, &other).unwrap();
    assert!(!third.placement.from_context_cache);
}

#[test]
fn bad_inputs_are_typed_errors() {
    // Missing runtime library.
    let missing = OrtConfig {
        runtime_path: Some("/nonexistent/libonnxruntime.so.1.31.1".into()),
        ..Default::default()
    };
    let (bytes, _) = matmul_graphs(&lcg(M * K, 3), &lcg(K * N, 4), WeightType::PerTensorU8);
    let err = session::create(&missing, &bytes).unwrap_err();
    assert!(matches!(err, Error::LibraryMissing { .. }), "{err}");
    assert!(err.to_string().contains("ort-deps.sh"), "{err}");

    // An EP this runtime does not have.
    let cfg = OrtConfig {
        eps: vec![Ep::CoreMl, Ep::Cpu],
        ..Default::default()
    };
    let err = session::create(&cfg, &bytes).unwrap_err();
    assert!(
        matches!(err, Error::EpUnavailable { ref ep, .. } if ep == "CoreMLExecutionProvider"),
        "{err}"
    );
    // A missing QNN EP library.
    let cfg = OrtConfig {
        eps: vec![Ep::Qnn(QnnOptions {
            ep_library: Some("/nonexistent/libonnxruntime_providers_qnn.so".into()),
            ..Default::default()
        })],
        ..Default::default()
    };
    assert!(matches!(
        session::create(&cfg, &bytes).unwrap_err(),
        Error::LibraryMissing { .. }
    ));

    // A dynamic-shape graph to an NPU-only session.
    let mut model = ModelProto::from_bytes(&bytes).unwrap();
    let g = model.graph.as_mut().unwrap();
    let mut dynamic = ValueInfoProto::tensor("x", DataType::Float, &[M as i64, K as i64]);
    dynamic
        .r#type
        .as_mut()
        .unwrap()
        .tensor_type
        .as_mut()
        .unwrap()
        .shape
        .as_mut()
        .unwrap()
        .dim[0] = Dimension {
        value: Some(DimValue::Param("batch".into())),
    };
    g.input[0] = dynamic;
    let err = session::create(&qnn_config(), &model.encode_to_vec()).unwrap_err();
    assert!(
        matches!(err, Error::DynamicShape { ref input, .. } if input == "x"),
        "{err}"
    );

    // A float graph QNN HTP cannot finalize, with CPU fallback refused.
    let mut g = GraphBuilder::new("float");
    let xin = g.input("x", DataType::Float, &[M as i64, K as i64]);
    let wname = g.init_f32("w", &[K, N], &lcg(K * N, 5));
    let y = g.matmul(&xin, &wname);
    // Det has no QNN implementation: it can only run on the CPU EP.
    let sq = g.slice(&y, 1, 0, M as i64);
    g.node_named("Det", &[&sq], "det", &[]);
    g.output("det", &[]);
    let err = session::create(&qnn_config(), &g.finish("").encode_to_vec()).unwrap_err();
    assert!(matches!(err, Error::FallbackRefused { .. }), "{err}");
}
