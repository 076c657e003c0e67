//! A minimal ONNX graph builder: named values, scoped node names, deterministic output.
//!
//! Node names are `"{scope}/{Op}_{n}"`, where the scope is the checkpoint key path of the
//! module being built (e.g. `encoder_blocks.0.attn`), so a node leads back to its weights.

use super::proto::*;
use std::collections::HashMap;

/// A tensor name inside the graph.
pub type Val = String;

/// Element types used by the exported graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    /// Only the weights and inputs of bfloat16 products (`--dtype bf16`).
    Bf16,
    /// Only the solver state (the reference keeps it in float64).
    F64,
    I64,
    Bool,
}

impl Elem {
    pub fn onnx(self) -> i32 {
        match self {
            Elem::F32 => data_type::FLOAT,
            Elem::F16 => data_type::FLOAT16,
            Elem::Bf16 => data_type::BFLOAT16,
            Elem::F64 => data_type::DOUBLE,
            Elem::I64 => data_type::INT64,
            Elem::Bool => data_type::BOOL,
        }
    }
}

/// A dimension of a graph input or output: fixed, or symbolic (shared by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Sym(&'static str),
}

/// One ONNX graph under construction.
pub struct Graph {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    scope: Vec<String>,
    counters: HashMap<String, usize>,
    consts: HashMap<String, Val>,
    param_count: usize,
    /// Element type of activations and weights; norm statistics, softmax and the time
    /// embedding always stay float32.
    act: Elem,
    /// int8 linears (`convert --quantize`), and the key paths of those built so far.
    quantize: Option<crate::quantize::Quantize>,
    quantized: Vec<String>,
    /// Linears compute in bfloat16 (`convert --dtype bf16`; see [`crate::precision`]).
    bf16_products: bool,
    /// Non-finite probes (see [`Graph::probe`]).
    probes: Vec<Val>,
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i,
        ..Default::default()
    }
}
pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}
pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f,
        ..Default::default()
    }
}
pub fn attr_str(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Sym(s) => dimension::Value::DimParam((*s).to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: elem.onnx(),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: String::new(),
    }
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Graph {
            name: name.into(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            scope: Vec::new(),
            counters: HashMap::new(),
            consts: HashMap::new(),
            param_count: 0,
            act: Elem::F32,
            quantize: None,
            quantized: Vec::new(),
            bf16_products: false,
            probes: Vec::new(),
        }
    }

    /// Records a non-finite probe of `x`: its float32 mean, NaN or infinite exactly when
    /// `x` holds a NaN or infinity (no min/max that an engine could let swallow a NaN).
    pub fn probe(&mut self, x: &str) {
        let x = self.to_f32(x);
        let m = self.node("ReduceMean", &[&x], vec![attr_int("keepdims", 0)]);
        self.probes.push(m);
    }

    /// The sum of every probe recorded so far, shaped `[1]` (engines read rank-0
    /// outputs unevenly), if any: finite exactly when every probed activation was.
    pub fn probe_sum(&mut self) -> Option<Val> {
        let probes = std::mem::take(&mut self.probes);
        let mut it = probes.into_iter();
        let first = it.next()?;
        let sum = it.fold(first, |acc, p| self.add(&acc, &p));
        Some(self.reshape(&sum, &[1]))
    }

    /// Builds every linear as a bfloat16 product (see [`crate::precision`]).
    pub fn with_bf16_products(mut self, on: bool) -> Self {
        self.bf16_products = on;
        self
    }

    /// Whether linears compute in bfloat16.
    pub fn bf16_products(&self) -> bool {
        self.bf16_products
    }

    /// `x` cast to `to`.
    pub fn cast(&mut self, x: &str, to: Elem) -> Val {
        self.node("Cast", &[x], vec![attr_int("to", to.onnx() as i64)])
    }

    /// Builds the linears `q` chooses with int8 weights (see [`crate::quantize`]).
    pub fn with_quantize(mut self, q: Option<crate::quantize::Quantize>) -> Self {
        self.quantize = q;
        self
    }

    /// Whether the linear at `key_path` is to be built with int8 weights.
    pub fn quantizes(&self, key_path: &str) -> bool {
        self.quantize.is_some_and(|q| q.quantizes(key_path))
    }

    /// Records a linear built with int8 weights.
    pub fn mark_quantized(&mut self, key_path: &str) {
        if !self.quantized.iter().any(|k| k == key_path) {
            self.quantized.push(key_path.to_string());
        }
    }

    /// The key paths of the linears built with int8 weights, in build order.
    pub fn quantized(&self) -> &[String] {
        &self.quantized
    }

    /// A graph whose activations and weights are `act` (F32 or F16).
    pub fn with_precision(name: &str, act: Elem) -> Self {
        Graph {
            act,
            ..Graph::new(name)
        }
    }

    /// The activation element type.
    pub fn act(&self) -> Elem {
        self.act
    }

    /// Casts `x` to float32 (no node when activations already are).
    pub fn to_f32(&mut self, x: &str) -> Val {
        self.cast_between_precisions(x, Elem::F32)
    }

    /// Casts a float32 `x` to the activation type (no node when that is float32).
    pub fn to_act(&mut self, x: &str) -> Val {
        self.cast_between_precisions(x, self.act)
    }

    /// A Cast to `to`, only in graphs whose activations are not float32 (in a float32
    /// graph both sides of every precision boundary already agree).
    fn cast_between_precisions(&mut self, x: &str, to: Elem) -> Val {
        if self.act == Elem::F32 {
            return x.to_string();
        }
        self.cast(x, to)
    }

    /// A scalar constant in the activation type.
    pub fn scalar(&mut self, x: f32) -> Val {
        self.const_act(&[], &[x])
    }

    /// A constant in the activation type, deduplicated by content.
    pub fn const_act(&mut self, dims: &[usize], data: &[f32]) -> Val {
        if self.act == Elem::F32 {
            return self.const_f32(dims, data);
        }
        let key = format!(
            "f16{dims:?}{:?}",
            data.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        if let Some(v) = self.consts.get(&key) {
            return v.clone();
        }
        let name = format!("const.f16.{}", self.consts.len());
        self.add_initializer(&name, dims, data, "", Elem::F16);
        self.consts.insert(key, name.clone());
        name
    }

    /// Number of weight elements added with [`Graph::weight`].
    pub fn param_count(&self) -> usize {
        self.param_count
    }

    /// Runs `f` with node names prefixed by `scope` (a checkpoint key path).
    pub fn scoped<T>(&mut self, scope: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.scope.push(scope.to_string());
        let out = f(self);
        self.scope.pop();
        out
    }

    fn scope_path(&self) -> String {
        self.scope.last().cloned().unwrap_or_default()
    }

    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> Val {
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares `v` as a graph output called `name` (through an Identity node when renamed).
    pub fn output(&mut self, v: &Val, name: &str, elem: Elem, dims: &[Dim]) {
        if v != name {
            self.nodes.push(NodeProto {
                input: vec![v.clone()],
                output: vec![name.to_string()],
                name: format!("output/{name}"),
                op_type: "Identity".into(),
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, elem, dims));
    }

    /// Adds a weight initializer named by its checkpoint key, in the activation type.
    pub fn weight(&mut self, name: &str, dims: &[usize], data: &[f32], doc: &str) -> Val {
        self.param_count += data.len();
        let act = self.act;
        self.add_initializer(name, dims, data, doc, act)
    }

    /// Adds a weight stored as bfloat16 (a bfloat16 product's), counted as parameters.
    pub fn weight_bf16(&mut self, name: &str, dims: &[usize], data: &[f32], doc: &str) -> Val {
        self.param_count += data.len();
        self.add_initializer(name, dims, data, doc, Elem::Bf16)
    }

    /// Adds a weight that stays float32 whatever the activation type (norm parameters).
    pub fn weight_f32(&mut self, name: &str, dims: &[usize], data: &[f32], doc: &str) -> Val {
        self.param_count += data.len();
        self.add_initializer(name, dims, data, doc, Elem::F32)
    }

    /// Adds an int8 weight (a quantized linear's), counted as parameters.
    pub fn weight_i8(&mut self, name: &str, dims: &[usize], data: &[i8]) -> Val {
        self.param_count += data.len();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::INT8,
            name: name.to_string(),
            doc_string: "int8 per output channel, stored transposed as [in, out]".into(),
            raw_data: data.iter().map(|&x| x as u8).collect(),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a float32 tensor that is not a parameter of the model (a quantization scale).
    pub fn aux_f32(&mut self, name: &str, dims: &[usize], data: &[f32], doc: &str) -> Val {
        self.add_f32_initializer(name, dims, data, doc)
    }

    fn add_f32_initializer(&mut self, name: &str, dims: &[usize], data: &[f32], doc: &str) -> Val {
        self.add_initializer(name, dims, data, doc, Elem::F32)
    }

    fn add_initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        data: &[f32],
        doc: &str,
        elem: Elem,
    ) -> Val {
        let raw: Vec<u8> = match elem {
            Elem::F16 => data
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            Elem::Bf16 => data
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
            Elem::F64 => data
                .iter()
                .flat_map(|x| (*x as f64).to_le_bytes())
                .collect(),
            _ => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: elem.onnx(),
            name: name.to_string(),
            doc_string: doc.to_string(),
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// A float32 constant (not a model weight), deduplicated by content.
    pub fn const_f32(&mut self, dims: &[usize], data: &[f32]) -> Val {
        let key = format!(
            "f32{dims:?}{:?}",
            data.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        if let Some(v) = self.consts.get(&key) {
            return v.clone();
        }
        let name = format!("const.f32.{}", self.consts.len());
        self.add_f32_initializer(&name, dims, data, "");
        self.consts.insert(key, name.clone());
        name
    }

    pub fn scalar_f32(&mut self, x: f32) -> Val {
        self.const_f32(&[], &[x])
    }

    /// A 1-D int64 constant (shapes, axes, indices), deduplicated by content.
    pub fn const_i64(&mut self, data: &[i64]) -> Val {
        self.const_i64_dims(&[data.len()], data)
    }

    pub fn const_i64_dims(&mut self, dims: &[usize], data: &[i64]) -> Val {
        let key = format!("i64{dims:?}{data:?}");
        if let Some(v) = self.consts.get(&key) {
            return v.clone();
        }
        let name = format!("const.i64.{}", self.consts.len());
        let mut raw = Vec::with_capacity(data.len() * 8);
        for x in data {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::INT64,
            name: name.clone(),
            raw_data: raw,
            ..Default::default()
        });
        self.consts.insert(key, name.clone());
        name
    }

    /// Adds a node with `n_out` outputs.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        n_out: usize,
    ) -> Vec<Val> {
        let scope = self.scope_path();
        let counter = self.counters.entry(format!("{scope}/{op}")).or_insert(0);
        let name = if scope.is_empty() {
            format!("{op}_{counter}")
        } else {
            format!("{scope}/{op}_{counter}")
        };
        *counter += 1;
        let outputs: Vec<Val> = if n_out == 1 {
            vec![name.clone()]
        } else {
            (0..n_out).map(|i| format!("{name}:{i}")).collect()
        };
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name,
            op_type: op.to_string(),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> Val {
        self.node_n(op, inputs, attrs, 1).remove(0)
    }

    // ---- elementwise and shape helpers -------------------------------------------------

    pub fn add(&mut self, a: &str, b: &str) -> Val {
        self.node("Add", &[a, b], vec![])
    }
    pub fn sub(&mut self, a: &str, b: &str) -> Val {
        self.node("Sub", &[a, b], vec![])
    }
    pub fn mul(&mut self, a: &str, b: &str) -> Val {
        self.node("Mul", &[a, b], vec![])
    }
    pub fn div(&mut self, a: &str, b: &str) -> Val {
        self.node("Div", &[a, b], vec![])
    }
    pub fn matmul(&mut self, a: &str, b: &str) -> Val {
        self.node("MatMul", &[a, b], vec![])
    }
    pub fn unary(&mut self, op: &str, a: &str) -> Val {
        self.node(op, &[a], vec![])
    }
    /// `x * sigmoid(x)`.
    pub fn silu(&mut self, x: &str) -> Val {
        let s = self.unary("Sigmoid", x);
        self.mul(x, &s)
    }
    /// Exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`, in the form onnxruntime fuses into
    /// one Gelu kernel (a Div by sqrt 2; a Mul by 1/sqrt 2 stays five element-wise passes).
    pub fn gelu(&mut self, x: &str) -> Val {
        let sqrt2 = self.scalar(std::f32::consts::SQRT_2);
        let one = self.scalar(1.0);
        let half = self.scalar(0.5);
        let xs = self.div(x, &sqrt2);
        let e = self.unary("Erf", &xs);
        let e1 = self.add(&e, &one);
        let hx = self.mul(x, &half);
        self.mul(&hx, &e1)
    }
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> Val {
        let s = self.const_i64(shape);
        self.node("Reshape", &[x, &s], vec![])
    }
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> Val {
        self.node("Transpose", &[x], vec![attr_ints("perm", perm)])
    }
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> Val {
        let a = self.const_i64(axes);
        self.node("Unsqueeze", &[x, &a], vec![])
    }
    pub fn concat(&mut self, xs: &[&str], axis: i64) -> Val {
        self.node("Concat", xs, vec![attr_int("axis", axis)])
    }
    pub fn softmax(&mut self, x: &str, axis: i64) -> Val {
        self.node("Softmax", &[x], vec![attr_int("axis", axis)])
    }
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64]) -> Val {
        self.node(
            "ReduceMean",
            &[x],
            vec![attr_ints("axes", axes), attr_int("keepdims", 1)],
        )
    }
    /// Splits `x` along `axis` into pieces of the given sizes.
    pub fn split(&mut self, x: &str, sizes: &[i64], axis: i64) -> Vec<Val> {
        let s = self.const_i64(sizes);
        self.node_n("Split", &[x, &s], vec![attr_int("axis", axis)], sizes.len())
    }
    /// Gathers with a constant index; a scalar index drops the axis.
    pub fn gather_const(&mut self, x: &str, index: &[i64], scalar: bool, axis: i64) -> Val {
        let idx = if scalar {
            self.const_i64_dims(&[], index)
        } else {
            self.const_i64(index)
        };
        self.node("Gather", &[x, &idx], vec![attr_int("axis", axis)])
    }

    /// Finishes the model.
    pub fn finish(self, doc: &str, producer_version: &str) -> ModelProto {
        ModelProto {
            ir_version: super::IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: super::OPSET,
            }],
            producer_name: "flowar-exporter".into(),
            producer_version: producer_version.into(),
            domain: "ai.flowar".into(),
            model_version: 1,
            doc_string: doc.into(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: self.initializers,
                doc_string: String::new(),
                input: self.inputs,
                output: self.outputs,
                value_info: vec![],
            }),
            metadata_props: vec![],
        }
    }
}
