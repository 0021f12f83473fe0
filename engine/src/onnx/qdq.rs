//! Float graph → QDQ graph for NPUs (QNN HTP): every float value gets a
//! QuantizeLinear → DequantizeLinear pair, every float constant becomes a
//! quantized initializer behind a DequantizeLinear. The NPU EP then fuses
//! each `DQ → op → Q` unit into one integer kernel.
//!
//! * Weights of MatMul (`[in, out]` initializers): uint8, per output channel
//!   (axis 1), asymmetric min/max.
//! * Other constants (norm gains, rope tables, scalars): uint8 per tensor.
//! * Activations: uint16 per tensor (or uint8), ranges from a calibration
//!   run of the float graph ([`add_calibration_outputs`]).

use std::collections::{HashMap, HashSet};

use super::proto::{
    attribute_type, AttributeProto, DataType, ModelProto, NodeProto, TensorProto, TensorTypeProto,
    TypeProto, ValueInfoProto,
};
use super::{Error, Result};

/// Activation type of the QDQ graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationType {
    /// 8-bit activations: smaller and faster on NPUs, coarser (256 levels
    /// over each value's calibrated range).
    Uint8,
    /// 16-bit activations (what QNN HTP's A16 kernels take): 65,536
    /// levels, the accurate choice for most decoders.
    Uint16,
}

/// How MatMul weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// uint8 per output channel, asymmetric. No export uses it: QNN HTP
    /// refuses it (a test shows the refusal), hence `PerChannelI8`.
    #[cfg_attr(not(test), allow(dead_code))]
    PerChannelU8,
    /// int8 per output channel, symmetric (zero point 0): what QNN HTP's
    /// per-channel kernels accept.
    PerChannelI8,
    /// uint8 per tensor, asymmetric.
    PerTensorU8,
}

/// Which float values get quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QdqScope {
    /// Every float value and constant: a fully integer graph.
    All,
    /// Only the weight MatMuls (projections, FFN, LM head): their weights,
    /// their activation inputs and their outputs. Everything else (the
    /// residual stream, norms, RoPE, attention, softmax) stays float, which
    /// QNN HTP runs in f16: mixed precision for models whose residual
    /// stream spans more than one 16-bit per-tensor scale can hold.
    MatMuls,
}

/// Observed `[min, max]` of a float value.
pub type Ranges = HashMap<String, (f32, f32)>;

fn float_initializers(model: &ModelProto) -> HashSet<String> {
    let g = model.graph.as_ref();
    g.map(|g| {
        g.initializer
            .iter()
            .filter(|t| t.data_type == DataType::Float as i32)
            .map(|t| t.name.clone())
            .collect()
    })
    .unwrap_or_default()
}

/// Float outputs of nodes, in graph order (`float_types`: values known to be float).
fn float_node_outputs(model: &ModelProto, float_types: &HashSet<String>) -> Vec<String> {
    let Some(g) = model.graph.as_ref() else {
        return Vec::new();
    };
    g.node
        .iter()
        .flat_map(|n| n.output.iter())
        .filter(|o| float_types.contains(*o))
        .cloned()
        .collect()
}

/// Adds every float node output as a graph output (type only, no shape) so
/// a run of the float graph reports its range. Returns the names added.
pub fn add_calibration_outputs(
    model: &mut ModelProto,
    float_values: &HashSet<String>,
) -> Vec<String> {
    let outs = float_node_outputs(model, float_values);
    let Some(g) = model.graph.as_mut() else {
        return Vec::new();
    };
    let existing: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut added = Vec::new();
    for o in outs {
        if !existing.contains(&o) {
            g.output.push(ValueInfoProto {
                name: o.clone(),
                r#type: Some(TypeProto {
                    tensor_type: Some(TensorTypeProto {
                        elem_type: DataType::Float as i32,
                        shape: None,
                    }),
                }),
            });
            added.push(o);
        }
    }
    added
}

/// Factor by which calibrated activation ranges are widened. Calibration
/// sees a few dozen tokens; other tokens (another embedding row, another
/// position) land outside those ranges and are clipped, which is what put
/// the tiny decoder's QDQ logits 0.27 rel L2 off the float graph on a prompt
/// outside the calibration set (first clipped value: the first RMSNorm's
/// output). Widening costs resolution: with 16-bit activations 4x leaves 14
/// bits and brought that error to 0.020 (2x: 0.031; the calibration prompt
/// itself: 0.015). With 8 bits every bit counts, so only a small margin.
pub const HEADROOM_U16: f32 = 4.0;
pub const HEADROOM_U8: f32 = 1.25;

fn affine_params(min: f32, max: f32, levels: f32) -> (f32, f32) {
    // The range must hold 0 exactly (padding, masked slots, ReLU-like ops).
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let scale = if hi > lo { (hi - lo) / levels } else { 1.0 };
    let zp = (-lo / scale).round().clamp(0.0, levels);
    (scale, zp)
}

fn scalar_tensor(name: &str, dtype: DataType, raw: Vec<u8>, dims: Vec<i64>) -> TensorProto {
    TensorProto {
        dims,
        data_type: dtype as i32,
        name: name.to_string(),
        raw_data: raw,
    }
}

fn f32_values(t: &TensorProto) -> Vec<f32> {
    t.raw_data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn node(op: &str, inputs: Vec<String>, output: String, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs,
        output: vec![output.clone()],
        name: format!("{op}_{output}"),
        op_type: op.to_string(),
        attribute: attrs,
        domain: String::new(),
    }
}

fn axis_attr(axis: i64) -> AttributeProto {
    AttributeProto {
        name: "axis".into(),
        i: axis,
        r#type: attribute_type::INT,
        ..Default::default()
    }
}

/// The QDQ version of a float graph, limited to `scope`. `ranges` must
/// cover every float node output and every float graph input in scope;
/// `float_values` names the float values (node outputs and inputs) of the
/// graph.
pub fn quantize_scoped(
    model: &ModelProto,
    float_values: &HashSet<String>,
    ranges: &Ranges,
    act: ActivationType,
    weights: WeightType,
    scope: QdqScope,
) -> Result<ModelProto> {
    let mut out = model.clone();
    let float_inits_all = float_initializers(model);
    // Under `MatMuls`, the float values and constants in scope: MatMuls
    // whose B input is a float constant, with their A input and output.
    let (float_values, float_inits): (HashSet<String>, HashSet<String>) = match scope {
        QdqScope::All => (float_values.clone(), float_inits_all),
        QdqScope::MatMuls => {
            let mut vals = HashSet::new();
            let mut inits = HashSet::new();
            for n in model.graph.iter().flat_map(|g| &g.node) {
                let Some(b) = n.input.get(1) else { continue };
                if n.op_type != "MatMul" || !float_inits_all.contains(b) {
                    continue;
                }
                inits.insert(b.clone());
                vals.extend(
                    n.input
                        .first()
                        .into_iter()
                        .chain(&n.output)
                        .filter(|v| float_values.contains(*v))
                        .cloned(),
                );
            }
            (vals, inits)
        }
    };
    let float_values = &float_values;
    let Some(g) = out.graph.as_mut() else {
        return Err(Error::Unsupported("a model without a graph".into()));
    };
    let (act_dtype, act_levels) = match act {
        ActivationType::Uint8 => (DataType::Uint8, 255.0),
        ActivationType::Uint16 => (DataType::Uint16, 65535.0),
    };
    let headroom = match act {
        ActivationType::Uint8 => HEADROOM_U8,
        ActivationType::Uint16 => HEADROOM_U16,
    };
    let encode_act = |zp: f32| -> Vec<u8> {
        match act {
            ActivationType::Uint8 => vec![zp as u8],
            ActivationType::Uint16 => (zp as u16).to_le_bytes().to_vec(),
        }
    };

    // Weights consumed as MatMul's B input are quantized per output channel.
    let matmul_weights: HashSet<String> = g
        .node
        .iter()
        .filter(|n| n.op_type == "MatMul")
        .filter_map(|n| n.input.get(1).cloned())
        .collect();
    let mut new_inits = Vec::new();
    let mut prologue = Vec::new();
    for t in g.initializer.drain(..) {
        if !float_inits.contains(&t.name) {
            new_inits.push(t);
            continue;
        }
        let values = f32_values(&t);
        let q_name = format!("{}_quantized", t.name);
        let (s_name, z_name) = (
            format!("{}_scale", t.name),
            format!("{}_zero_point", t.name),
        );
        let per_channel = matmul_weights.contains(&t.name)
            && t.dims.len() == 2
            && weights != WeightType::PerTensorU8;
        let symmetric = weights == WeightType::PerChannelI8;
        let mut attrs = Vec::new();
        if per_channel {
            let (rows, cols) = (t.dims[0] as usize, t.dims[1] as usize);
            let mut scales = Vec::with_capacity(cols);
            let mut zps = Vec::with_capacity(cols);
            for c in 0..cols {
                let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
                for r in 0..rows {
                    lo = lo.min(values[r * cols + c]);
                    hi = hi.max(values[r * cols + c]);
                }
                let (s, z) = if symmetric {
                    let m = lo.abs().max(hi.abs());
                    (if m > 0.0 { m / 127.0 } else { 1.0 }, 0.0)
                } else {
                    affine_params(lo, hi, 255.0)
                };
                scales.push(s);
                zps.push(z);
            }
            let (wtype, q): (DataType, Vec<u8>) = if symmetric {
                (
                    DataType::Int8,
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            (v / scales[i % cols]).round().clamp(-127.0, 127.0) as i8 as u8
                        })
                        .collect(),
                )
            } else {
                (
                    DataType::Uint8,
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            (v / scales[i % cols] + zps[i % cols])
                                .round()
                                .clamp(0.0, 255.0) as u8
                        })
                        .collect(),
                )
            };
            new_inits.push(scalar_tensor(&q_name, wtype, q, t.dims.clone()));
            new_inits.push(scalar_tensor(
                &s_name,
                DataType::Float,
                scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                vec![cols as i64],
            ));
            new_inits.push(scalar_tensor(
                &z_name,
                wtype,
                zps.iter().map(|&z| z as u8).collect(),
                vec![cols as i64],
            ));
            attrs.push(axis_attr(1));
        } else {
            let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (s, z) = affine_params(lo, hi, 255.0);
            let q: Vec<u8> = values
                .iter()
                .map(|&v| (v / s + z).round().clamp(0.0, 255.0) as u8)
                .collect();
            new_inits.push(scalar_tensor(&q_name, DataType::Uint8, q, t.dims.clone()));
            new_inits.push(scalar_tensor(
                &s_name,
                DataType::Float,
                s.to_le_bytes().to_vec(),
                vec![],
            ));
            new_inits.push(scalar_tensor(
                &z_name,
                DataType::Uint8,
                vec![z as u8],
                vec![],
            ));
        }
        prologue.push(node(
            "DequantizeLinear",
            vec![q_name, s_name, z_name],
            t.name.clone(),
            attrs,
        ));
    }
    g.initializer = new_inits;

    // Float graph inputs: Q → DQ, consumers read the DQ output.
    let mut renamed: HashMap<String, String> = HashMap::new();
    for inp in &g.input {
        if !float_values.contains(&inp.name) {
            continue;
        }
        let &(lo, hi) = ranges
            .get(&inp.name)
            .ok_or_else(|| Error::MissingRange(inp.name.clone()))?;
        let (s, z) = affine_params(lo * headroom, hi * headroom, act_levels);
        let base = &inp.name;
        g.initializer.push(scalar_tensor(
            &format!("{base}_scale"),
            DataType::Float,
            s.to_le_bytes().to_vec(),
            vec![],
        ));
        g.initializer.push(scalar_tensor(
            &format!("{base}_zero_point"),
            act_dtype,
            encode_act(z),
            vec![],
        ));
        let q = format!("{base}_q");
        let dq = format!("{base}_dq");
        prologue.push(node(
            "QuantizeLinear",
            vec![
                base.clone(),
                format!("{base}_scale"),
                format!("{base}_zero_point"),
            ],
            q.clone(),
            vec![],
        ));
        prologue.push(node(
            "DequantizeLinear",
            vec![q, format!("{base}_scale"), format!("{base}_zero_point")],
            dq.clone(),
            vec![],
        ));
        renamed.insert(base.clone(), dq);
    }

    // Float node outputs: the node writes `name_f`, Q/DQ restore `name`.
    let mut nodes = prologue;
    for mut n in std::mem::take(&mut g.node) {
        for i in n.input.iter_mut() {
            if let Some(r) = renamed.get(i) {
                *i = r.clone();
            }
        }
        let mut tail = Vec::new();
        for o in n.output.iter_mut() {
            if !float_values.contains(o) {
                continue;
            }
            let &(lo, hi) = ranges
                .get(o)
                .ok_or_else(|| Error::MissingRange(o.clone()))?;
            let (s, z) = affine_params(lo * headroom, hi * headroom, act_levels);
            let base = o.clone();
            let f = format!("{base}_f");
            let q = format!("{base}_q");
            g.initializer.push(scalar_tensor(
                &format!("{base}_scale"),
                DataType::Float,
                s.to_le_bytes().to_vec(),
                vec![],
            ));
            g.initializer.push(scalar_tensor(
                &format!("{base}_zero_point"),
                act_dtype,
                encode_act(z),
                vec![],
            ));
            tail.push(node(
                "QuantizeLinear",
                vec![
                    f.clone(),
                    format!("{base}_scale"),
                    format!("{base}_zero_point"),
                ],
                q.clone(),
                vec![],
            ));
            tail.push(node(
                "DequantizeLinear",
                vec![q, format!("{base}_scale"), format!("{base}_zero_point")],
                base,
                vec![],
            ));
            *o = f;
        }
        nodes.push(n);
        nodes.extend(tail);
    }
    g.node = nodes;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_params_hold_zero_and_span_the_range() {
        let (s, z) = affine_params(-1.0, 3.0, 255.0);
        assert!((s - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(z, (1.0f32 / s).round());
        let (s, z) = affine_params(2.0, 2.0, 65535.0);
        assert!(s > 0.0 && z == 0.0);
    }
}
