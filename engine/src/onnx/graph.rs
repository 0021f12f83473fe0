//! A small graph builder over [`proto`](super::proto): named values with a
//! known element type, initializers from Rust slices, one helper per node
//! shape. It only records; validity is ONNX Runtime's to judge.

use std::collections::HashMap;

use super::proto::{
    attribute_type, AttributeProto, DataType, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, ValueInfoProto, IR_VERSION, MS_DOMAIN, OPSET,
};

/// An attribute value for [`GraphBuilder::node`].
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Str(String),
}

impl Attr {
    fn to_proto(&self, name: &str) -> AttributeProto {
        let mut a = AttributeProto {
            name: name.to_string(),
            ..Default::default()
        };
        match self {
            Attr::Int(v) => {
                a.i = *v;
                a.r#type = attribute_type::INT;
            }
            Attr::Ints(v) => {
                a.ints = v.clone();
                a.r#type = attribute_type::INTS;
            }
            Attr::Str(v) => {
                a.s = v.as_bytes().to_vec();
                a.r#type = attribute_type::STRING;
            }
        }
        a
    }
}

/// Records a graph: inputs, outputs, initializers and nodes in order.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    dtypes: HashMap<String, DataType>,
    next_id: usize,
    uses_ms_domain: bool,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto {
                name: name.to_string(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Element type of a value declared so far.
    pub fn dtype(&self, value: &str) -> Option<DataType> {
        self.dtypes.get(value).copied()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next_id += 1;
        format!("{hint}_{}", self.next_id)
    }

    /// Declares a graph input with a static shape.
    pub fn input(&mut self, name: &str, dtype: DataType, shape: &[i64]) -> String {
        self.graph
            .input
            .push(ValueInfoProto::tensor(name, dtype, shape));
        self.dtypes.insert(name.to_string(), dtype);
        name.to_string()
    }

    /// Declares `value` (already produced) as a graph output with a static shape.
    pub fn output(&mut self, value: &str, shape: &[i64]) {
        let dtype = self.dtype(value).unwrap_or(DataType::Float);
        self.graph
            .output
            .push(ValueInfoProto::tensor(value, dtype, shape));
    }

    /// A constant from little-endian bytes.
    pub fn init_raw(
        &mut self,
        hint: &str,
        dtype: DataType,
        shape: &[usize],
        raw: Vec<u8>,
    ) -> String {
        let name = self.fresh(hint);
        self.graph.initializer.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: dtype as i32,
            name: name.clone(),
            raw_data: raw,
        });
        self.dtypes.insert(name.clone(), dtype);
        name
    }

    pub fn init_f32(&mut self, hint: &str, shape: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(hint, DataType::Float, shape, raw)
    }

    pub fn init_i64(&mut self, hint: &str, shape: &[usize], values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(hint, DataType::Int64, shape, raw)
    }

    /// A 1-D int64 constant (shapes, axes, slice bounds).
    pub fn ints(&mut self, values: &[i64]) -> String {
        self.init_i64("c", &[values.len()], values)
    }

    /// A scalar float constant.
    pub fn scalar(&mut self, v: f32) -> String {
        self.init_f32("s", &[], &[v])
    }

    /// Appends a node with explicit outputs and their types.
    pub fn node_full(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        outputs: &[(&str, DataType)],
        attrs: &[(&str, Attr)],
    ) {
        if domain == MS_DOMAIN {
            self.uses_ms_domain = true;
        }
        let name = self.fresh(op);
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|(s, _)| s.to_string()).collect(),
            name,
            op_type: op.to_string(),
            attribute: attrs.iter().map(|(n, a)| a.to_proto(n)).collect(),
            domain: domain.to_string(),
        });
        for (o, t) in outputs {
            self.dtypes.insert(o.to_string(), *t);
        }
    }

    /// One-output node whose output has the first input's type.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let dtype = inputs
            .first()
            .and_then(|i| self.dtype(i))
            .unwrap_or(DataType::Float);
        self.node_typed(op, inputs, attrs, dtype)
    }

    /// One-output node with an explicit output type.
    pub fn node_typed(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
        dtype: DataType,
    ) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.node_full(op, "", inputs, &[(&out, dtype)], attrs);
        out
    }

    /// One-output node writing to a chosen name (graph outputs).
    pub fn node_named(&mut self, op: &str, inputs: &[&str], out: &str, attrs: &[(&str, Attr)]) {
        let dtype = inputs
            .first()
            .and_then(|i| self.dtype(i))
            .unwrap_or(DataType::Float);
        self.node_full(op, "", inputs, &[(out, dtype)], attrs);
    }

    // Shorthands for the ops the decoder uses.
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], &[])
    }
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.node("Sub", &[a, b], &[])
    }
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.node("Mul", &[a, b], &[])
    }
    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.node("Div", &[a, b], &[])
    }
    pub fn matmul(&mut self, a: &str, b: &str) -> String {
        self.node("MatMul", &[a, b], &[])
    }
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.ints(shape);
        self.node("Reshape", &[x, &s], &[])
    }
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], &[("perm", Attr::Ints(perm.to_vec()))])
    }
    /// `x[..., start..end]` on `axis`.
    pub fn slice(&mut self, x: &str, axis: i64, start: i64, end: i64) -> String {
        let (s, e, a) = (self.ints(&[start]), self.ints(&[end]), self.ints(&[axis]));
        self.node("Slice", &[x, &s, &e, &a], &[])
    }
    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.node("Concat", xs, &[("axis", Attr::Int(axis))])
    }

    /// Names of every float value (inputs, initializers, node outputs).
    pub fn float_values(&self) -> std::collections::HashSet<String> {
        self.dtypes
            .iter()
            .filter(|(_, t)| **t == DataType::Float)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The finished model (opset 21, plus com.microsoft when used).
    pub fn finish(self, doc: &str) -> ModelProto {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }];
        if self.uses_ms_domain {
            opset_import.push(OperatorSetIdProto {
                domain: MS_DOMAIN.to_string(),
                version: 1,
            });
        }
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "sotto".to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            doc_string: doc.to_string(),
            graph: Some(self.graph),
            opset_import,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_tracks_types_and_declares_the_contrib_domain_only_when_used() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", DataType::Float, &[1, 4]);
        let ids = g.input("ids", DataType::Int64, &[1]);
        let w = g.init_f32("w", &[4, 2], &[0.0; 8]);
        let y = g.matmul(&x, &w);
        let eq = g.node_typed("Equal", &[&ids, &ids], &[], DataType::Bool);
        assert_eq!(g.dtype(&y), Some(DataType::Float));
        assert_eq!(g.dtype(&eq), Some(DataType::Bool));
        g.output(&y, &[1, 2]);
        let m = g.finish("doc");
        assert_eq!(m.opset_import.len(), 1);
        let graph = m.graph.unwrap();
        assert_eq!(graph.node.len(), 2);
        assert_eq!(graph.initializer[0].raw_data.len(), 32);

        let mut g = GraphBuilder::new("t");
        let x = g.input("x", DataType::Float, &[1, 4]);
        g.node_full(
            "MatMulNBits",
            MS_DOMAIN,
            &[&x],
            &[("y", DataType::Float)],
            &[("K", Attr::Int(4))],
        );
        assert_eq!(g.finish("").opset_import[1].domain, MS_DOMAIN);
    }
}
