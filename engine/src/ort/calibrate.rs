//! QDQ export for NPUs: the float graphs are run on the CPU EP over a
//! calibration token sequence, every float value's range is recorded, and
//! the QDQ pass ([`crate::onnx::qdq`]) turns them into scales.

use std::collections::HashMap;
use std::path::Path;

use sotto_models::Model;

use crate::onnx::bundle::{write_bundle, ExportOptions};
use crate::onnx::export::{export_decoder_typed, GraphShape, WeightFormat};
use crate::onnx::manifest::{Manifest, Quantization};
use crate::onnx::proto::ModelProto;
use crate::onnx::qdq::{self, ActivationType, QdqScope, Ranges, WeightType};

use super::backend::OrtBackend;
use super::ep::Ep;
use super::runtime::OrtConfig;
use super::{Error, Result};

/// The prefill and decode graphs are one exporter's output over different
/// token counts, so a value of the same name made by the same op holds the
/// same quantity (a per-token activation, a KV slot) in both. Each graph
/// gets the union of both graphs' ranges for such values: the decode graph
/// otherwise sees only the few calibration tokens run through it, and a
/// token outside them clipped its FFN activations (0.13 rel L2 on the
/// third decode step of the tiny decoder before this).
fn share_ranges(prefill: &ModelProto, decode: &ModelProto, a: &mut Ranges, b: &mut Ranges) {
    let producers = |m: &ModelProto| -> HashMap<String, String> {
        m.graph
            .iter()
            .flat_map(|g| &g.node)
            .flat_map(|n| n.output.iter().map(move |o| (o.clone(), n.op_type.clone())))
            .collect()
    };
    let (pa, pb) = (producers(prefill), producers(decode));
    let shared: Vec<String> = a
        .keys()
        .filter(|k| b.contains_key(*k) && pa.get(*k) == pb.get(*k))
        .cloned()
        .collect();
    for k in shared {
        let (x, y) = (a[&k], b[&k]);
        let u = (x.0.min(y.0), x.1.max(y.1));
        a.insert(k.clone(), u);
        b.insert(k, u);
    }
}

/// Exports `model` as QDQ graphs (int8 per-channel weights, `act`
/// activations) into `dir`. `calibration` tokens go through prefill except
/// the last `decode_steps`, which go through the decode graph so both
/// graphs see representative values. `config` only supplies the runtime
/// path; calibration always runs on the CPU EP.
pub fn export_qdq(
    model: &Model,
    dir: &Path,
    opts: ExportOptions,
    calibration: &[u32],
    decode_steps: usize,
    act: ActivationType,
    config: &OrtConfig,
) -> Result<Manifest> {
    export_qdq_scoped(
        model,
        dir,
        opts,
        calibration,
        decode_steps,
        act,
        QdqScope::All,
        config,
    )
}

/// [`export_qdq`] with QDQ limited to `scope` (see [`QdqScope::MatMuls`]
/// for the mixed-precision graphs).
#[allow(clippy::too_many_arguments)]
pub fn export_qdq_scoped(
    model: &Model,
    dir: &Path,
    opts: ExportOptions,
    calibration: &[u32],
    decode_steps: usize,
    act: ActivationType,
    scope: QdqScope,
    config: &OrtConfig,
) -> Result<Manifest> {
    if decode_steps == 0 || calibration.len() <= decode_steps {
        return Err(Error::Graph(format!(
            "calibration needs more than {decode_steps} tokens and at least one decode step (got {})",
            calibration.len()
        )));
    }
    let spec = &model.spec;
    let w = &model.weights;
    let (prefill, prefill_floats) = export_decoder_typed(
        spec,
        w,
        GraphShape {
            tokens: opts.chunk,
            context: opts.context,
        },
        WeightFormat::Float,
    )?;
    let (decode, decode_floats) = export_decoder_typed(
        spec,
        w,
        GraphShape {
            tokens: 1,
            context: opts.context,
        },
        WeightFormat::Float,
    )?;
    let (mut prefill_cal, mut decode_cal) = (prefill.clone(), decode.clone());
    qdq::add_calibration_outputs(&mut prefill_cal, &prefill_floats);
    qdq::add_calibration_outputs(&mut decode_cal, &decode_floats);
    let cal_dir = dir.join("calibration");
    write_bundle(
        model,
        &cal_dir,
        opts,
        Quantization::Float,
        &prefill_cal,
        &decode_cal,
    )?;
    let cpu = OrtConfig {
        eps: vec![Ep::Cpu],
        npu_only: false,
        ..config.clone()
    };
    let mut backend = OrtBackend::open(&cal_dir, &cpu)?;
    backend.observe_ranges();
    let split = calibration.len() - decode_steps;
    backend.prefill(&calibration[..split])?;
    for &t in &calibration[split..] {
        backend.decode(t)?;
    }
    let [mut prefill_ranges, mut decode_ranges] = backend
        .take_ranges()
        .ok_or_else(|| Error::Graph("no ranges recorded".into()))?;
    share_ranges(&prefill, &decode, &mut prefill_ranges, &mut decode_ranges);
    drop(backend);
    let _ = std::fs::remove_dir_all(&cal_dir);
    let qp = qdq::quantize_scoped(
        &prefill,
        &prefill_floats,
        &prefill_ranges,
        act,
        WeightType::PerChannelI8,
        scope,
    )?;
    let qd = qdq::quantize_scoped(
        &decode,
        &decode_floats,
        &decode_ranges,
        act,
        WeightType::PerChannelI8,
        scope,
    )?;
    let quantization = match (scope, act) {
        (QdqScope::All, ActivationType::Uint16) => Quantization::QdqW8A16,
        (QdqScope::All, ActivationType::Uint8) => Quantization::QdqW8A8,
        (QdqScope::MatMuls, ActivationType::Uint16) => Quantization::QdqMixedW8A16,
        (QdqScope::MatMuls, ActivationType::Uint8) => Quantization::QdqMixedW8A8,
    };
    Ok(write_bundle(model, dir, opts, quantization, &qp, &qd)?)
}
