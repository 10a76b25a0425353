//! ONNX -> penni IR. The importer walks the graph once in topological order and maps each ONNX
//! value to either a run-time activation (an IR tensor with a known per-example shape) or a
//! constant (initializers, Constant nodes and everything folded from them). Problems the IR cannot
//! express are collected, not thrown, so the user sees all of them in one `UnsupportedModel`
//! error; a malformed file stops at the first problem with a specific error.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::rc::Rc;

use penni_model::graph::window_out;
use penni_model::{Activation, Conv2d, DecomposedConv2d, Input, Model, Node, Op, Pool2d, Shape, Tensor};
use prost::Message;

use crate::error::{Issue, OnnxError};
use crate::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, attribute_type as at, data_type as dt};
use crate::tensor::{Const, Data, decode, dims_of};

/// Opsets of the default ONNX domain that penni reads. 6-8 are accepted because PyTorch's
/// classic exports (and the ONNX `pytorch-converted` test models) use them; their legacy
/// attributes (BatchNormalization `spatial`/`is_test`, Add `broadcast`/`axis`, Gemm
/// `broadcast`) are interpreted, not ignored.
pub const MIN_OPSET: i64 = 6;
pub const MAX_OPSET: i64 = 22;
/// Oldest ONNX IR version accepted (ONNX 1.0 wrote version 3).
pub const MIN_IR_VERSION: i64 = 3;

/// Metadata key prefix that marks a basis conv + 1x1 conv pair written by `export` as one
/// PENNI layer: `penni.decomposed.<1x1 conv node>` = `<basis conv node>`.
pub const DECOMPOSED_KEY: &str = "penni.decomposed.";

/// ONNX operators (default domain) that the importer understands.
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Add",
    "Sum",
    "Mul",
    "Sub",
    "Div",
    "Flatten",
    "Reshape",
    "Gemm",
    "MatMul",
    "Softmax",
    "LogSoftmax",
    "Pad",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Transpose",
    "Identity",
    "Dropout",
    "Constant",
    "ConstantOfShape",
    "ReduceMean",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Cast",
    "CastLike",
    "Expand",
];

/// Largest constant penni will create by folding (ConstantOfShape), in values per tensor and
/// in total: a 12-byte node must not be able to ask for terabytes.
const MAX_FOLDED_VALUES: usize = 1 << 28;
const MAX_FOLDED_TOTAL: usize = 1 << 30;
/// Upper bound for kernel sizes, strides, dilations and paddings read from attributes.
const MAX_WINDOW: i64 = 1 << 20;

/// Reads a `.onnx` file. The file name is used in error messages.
pub fn import_file(path: &std::path::Path) -> Result<Model, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    import_bytes(&bytes, &path.display().to_string())
}

/// Parses an ONNX model held in memory; `name_for_errors` names it in every error.
pub fn import_bytes(bytes: &[u8], name_for_errors: &str) -> Result<Model, OnnxError> {
    let proto = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        name: name_for_errors.to_string(),
        message: e.to_string(),
    })?;
    import_proto(&proto, name_for_errors)
}

/// Converts an already decoded model (useful when a tool edits the protobuf first).
pub fn import_proto(proto: &ModelProto, name_for_errors: &str) -> Result<Model, OnnxError> {
    let name = name_for_errors.to_string();
    if proto.ir_version < MIN_IR_VERSION {
        return Err(OnnxError::IrVersion {
            name,
            found: proto.ir_version,
        });
    }
    let opset = default_opset(proto, &name)?;
    let Some(graph) = proto.graph.as_ref() else {
        return Err(OnnxError::Malformed {
            name,
            message: "the model has no graph".into(),
        });
    };
    let decomposed: HashMap<&str, &str> = proto
        .metadata_props
        .iter()
        .filter_map(|p| p.key.strip_prefix(DECOMPOSED_KEY).map(|k| (k, p.value.as_str())))
        .collect();
    let mut imp = Importer::new(name, opset, graph, decomposed)?;
    imp.run()
}

fn default_opset(proto: &ModelProto, name: &str) -> Result<i64, OnnxError> {
    let found = proto
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max();
    match found {
        None if proto.opset_import.is_empty() && proto.ir_version >= MIN_IR_VERSION => Err(OnnxError::Opset {
            name: name.into(),
            message: "the model declares no opset (opset_import is empty)".into(),
        }),
        None => Err(OnnxError::Opset {
            name: name.into(),
            message: "the model does not import the default ONNX operator set".into(),
        }),
        Some(v) if (MIN_OPSET..=MAX_OPSET).contains(&v) => Ok(v),
        Some(v) => Err(OnnxError::Opset {
            name: name.into(),
            message: format!(
                "opset {v} of the default ONNX domain is not supported (penni reads opsets {MIN_OPSET} to {MAX_OPSET}); convert it with onnx.version_converter.convert_version(model, {})",
                if v > MAX_OPSET { MAX_OPSET } else { 13 }
            ),
        }),
    }
}

/// What an ONNX value is during import.
#[derive(Clone)]
enum Value {
    /// A run-time tensor: IR tensor name and per-example shape. `producer` is the IR node that
    /// wrote it when that node is a Conv/Gemm/MatMul whose bias a following constant Add may
    /// absorb.
    Act {
        tensor: String,
        shape: Shape,
        producer: Option<usize>,
    },
    Const(Rc<Const>),
    /// An int64 scalar or vector computed from the shape of a run-time tensor (Shape and the
    /// Gather/Unsqueeze/Squeeze/Concat that exporters put after it to build a Reshape target):
    /// at least one element is the run-time batch size, the others are known. A shape whose
    /// elements are all known is a `Const` instead.
    Dims {
        scalar: bool,
        dims: Vec<Dim>,
    },
    /// Comes from something that could not be imported; consumers are only checked statically.
    Poisoned,
}

/// One element of a `Value::Dims`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    Known(i64),
    Batch,
}

/// A shape value, as a `Const` when every element is known.
fn dims_value(scalar: bool, dims: Vec<Dim>) -> Value {
    let known: Option<Vec<i64>> = dims
        .iter()
        .map(|d| match d {
            Dim::Known(v) => Some(*v),
            Dim::Batch => None,
        })
        .collect();
    match known {
        Some(v) => Value::Const(Rc::new(Const {
            dims: if scalar { vec![] } else { vec![v.len()] },
            data: Data::I64(v),
        })),
        None => Value::Dims { scalar, dims },
    }
}

const BATCH_DEPENDENT: &str = "depends on the run-time batch size (the batch dimension of the input is symbolic)";

enum Problem {
    Unsupported(String),
    Fatal(OnnxError),
}

impl From<OnnxError> for Problem {
    fn from(e: OnnxError) -> Self {
        Problem::Fatal(e)
    }
}

type PResult<T> = Result<T, Problem>;

fn unsupported<T>(msg: impl Into<String>) -> PResult<T> {
    Err(Problem::Unsupported(msg.into()))
}

struct Importer<'g> {
    name: String,
    opset: i64,
    graph: &'g GraphProto,
    decomposed: HashMap<&'g str, &'g str>,
    inits: HashMap<&'g str, &'g TensorProto>,
    values: HashMap<String, Value>,
    /// Number of live readers of each ONNX value (graph outputs count as readers).
    uses: HashMap<&'g str, usize>,
    all_names: HashSet<String>,
    node_names: HashSet<String>,
    nodes: Vec<Node>,
    /// ONNX node name -> IR node index, for recognising exported PENNI layers.
    ir_index_of: HashMap<String, usize>,
    issues: Vec<Issue>,
    /// Per-example shape of every IR tensor made so far.
    ir_shapes: HashMap<String, Shape>,
    folded_total: usize,
    batch: Option<i64>,
    /// Zero paddings written by Pad nodes and not yet taken by a Conv: the stand-in tensor a
    /// Pad output refers to -> (the unpadded tensor, its shape, padding top/left/bottom/right).
    pending_pads: HashMap<String, (String, Shape, [usize; 4])>,
    /// Set while a Conv or Pad reads its input: the only readers that may take a pending pad.
    taking_pad: bool,
}

/// The element-wise arithmetic that imports as a per-channel affine map.
#[derive(Clone, Copy)]
enum Arith {
    Mul,
    Sub,
    Div,
}

impl Arith {
    fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Arith::Mul => a * b,
            Arith::Sub => a - b,
            Arith::Div => a / b,
        }
    }

    /// ONNX integer semantics: wrapping, division truncates; `None` for a division by zero.
    fn apply_int(self, a: i64, b: i64) -> Option<i64> {
        match self {
            Arith::Mul => Some(a.wrapping_mul(b)),
            Arith::Sub => Some(a.wrapping_sub(b)),
            Arith::Div => a.checked_div(b),
        }
    }
}

/// The node being converted, for messages.
struct Ctx<'g> {
    node: &'g NodeProto,
    label: String,
    op: String,
}

impl<'g> Importer<'g> {
    fn new(name: String, opset: i64, graph: &'g GraphProto, decomposed: HashMap<&'g str, &'g str>) -> Result<Self, OnnxError> {
        let mut inits = HashMap::new();
        for t in &graph.initializer {
            if t.name.is_empty() {
                return Err(OnnxError::Malformed {
                    name,
                    message: "an initializer has no name".into(),
                });
            }
            if inits.insert(t.name.as_str(), t).is_some() {
                return Err(OnnxError::Malformed {
                    name,
                    message: format!("two initializers are named '{}'", t.name),
                });
            }
        }
        let mut all_names: HashSet<String> = inits.keys().map(|s| s.to_string()).collect();
        all_names.extend(graph.input.iter().map(|i| i.name.clone()));
        for n in &graph.node {
            all_names.extend(n.output.iter().cloned());
        }
        Ok(Self {
            name,
            opset,
            graph,
            decomposed,
            inits,
            values: HashMap::new(),
            uses: HashMap::new(),
            all_names,
            node_names: HashSet::new(),
            nodes: Vec::new(),
            ir_index_of: HashMap::new(),
            issues: Vec::new(),
            ir_shapes: HashMap::new(),
            folded_total: 0,
            batch: None,
            pending_pads: HashMap::new(),
            taking_pad: false,
        })
    }

    fn malformed(&self, message: impl Into<String>) -> OnnxError {
        OnnxError::Malformed {
            name: self.name.clone(),
            message: message.into(),
        }
    }

    fn graph_issue(&mut self, message: impl Into<String>) {
        self.issues.push(Issue {
            node: String::new(),
            op: String::new(),
            message: message.into(),
        });
    }

    fn invalid(&self, cx: &Ctx, message: impl Into<String>) -> Problem {
        Problem::Fatal(OnnxError::InvalidNode {
            name: self.name.clone(),
            node: cx.label.clone(),
            op: cx.op.clone(),
            message: message.into(),
        })
    }

    fn run(&mut self) -> Result<Model, OnnxError> {
        let g = self.graph;
        let labels = node_labels(g);
        // Who produces each value; duplicates are malformed (ONNX graphs are SSA).
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                if producer.insert(o.as_str(), i).is_some() || self.inits.contains_key(o.as_str()) || g.input.iter().any(|x| &x.name == o) {
                    return Err(self.malformed(format!("tensor '{o}' is written more than once (node '{}')", labels[i])));
                }
            }
        }
        let graph_inputs: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
        for (i, n) in g.node.iter().enumerate() {
            for inp in n.input.iter().filter(|s| !s.is_empty()) {
                if !producer.contains_key(inp.as_str()) && !self.inits.contains_key(inp.as_str()) && !graph_inputs.contains(inp.as_str()) {
                    return Err(OnnxError::DanglingInput {
                        name: self.name.clone(),
                        node: labels[i].clone(),
                        op: op_label(n),
                        input: inp.clone(),
                    });
                }
            }
        }
        for o in &g.output {
            if !producer.contains_key(o.name.as_str())
                && !self.inits.contains_key(o.name.as_str())
                && !graph_inputs.contains(o.name.as_str())
            {
                return Err(self.malformed(format!("graph output '{}' is not produced by any node", o.name)));
            }
        }
        let order = topo_order(g, &producer).map_err(|cycle| OnnxError::Cycle {
            name: self.name.clone(),
            nodes: cycle.into_iter().map(|i| labels[i].clone()).collect(),
        })?;

        // Live nodes: those the graph outputs depend on. Dead branches are ignored.
        let mut live = vec![false; g.node.len()];
        let mut stack: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
        while let Some(v) = stack.pop() {
            if let Some(&p) = producer.get(v)
                && !live[p]
            {
                live[p] = true;
                stack.extend(g.node[p].input.iter().filter(|s| !s.is_empty()).map(|s| s.as_str()));
            }
        }
        for (i, n) in g.node.iter().enumerate() {
            if live[i] {
                for inp in n.input.iter().filter(|s| !s.is_empty()) {
                    *self.uses.entry(inp.as_str()).or_default() += 1;
                }
            }
        }
        for o in &g.output {
            *self.uses.entry(o.name.as_str()).or_default() += 1;
        }

        if !g.sparse_initializer.is_empty() {
            self.graph_issue(format!(
                "{} sparse initializer(s): sparse weights are not supported",
                g.sparse_initializer.len()
            ));
        }
        let input = self.read_input()?;
        if g.output.len() != 1 {
            let names: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
            self.graph_issue(format!(
                "the model has {} outputs ({}); penni models have exactly one",
                names.len(),
                names.join(", ")
            ));
        }

        for &i in &order {
            if !live[i] {
                continue;
            }
            let node = &g.node[i];
            let cx = Ctx {
                node,
                label: labels[i].clone(),
                op: op_label(node),
            };
            let mut static_issues = Vec::new();
            self.check_static(&cx, &mut static_issues)?;
            let poisoned = !static_issues.is_empty() || node.input.iter().any(|s| matches!(self.values.get(s), Some(Value::Poisoned)));
            if !poisoned {
                match self.convert(&cx) {
                    Ok(()) => continue,
                    Err(Problem::Fatal(e)) => return Err(e),
                    Err(Problem::Unsupported(m)) => static_issues.push(m),
                }
            }
            for m in static_issues {
                self.issues.push(Issue {
                    node: cx.label.clone(),
                    op: cx.op.clone(),
                    message: m,
                });
            }
            for o in &node.output {
                self.values.insert(o.clone(), Value::Poisoned);
            }
        }

        let mut output = String::new();
        if let Some(o) = g.output.first() {
            match self.value(&o.name) {
                Ok(Value::Act { tensor, .. }) => output = tensor,
                Ok(Value::Const(_)) => self.graph_issue(format!("the model output '{}' is a constant", o.name)),
                Ok(Value::Dims { .. }) => self.graph_issue(format!(
                    "the model output '{}' is a shape, not a tensor computed from the image",
                    o.name
                )),
                Ok(Value::Poisoned) => {}
                Err(Problem::Fatal(e)) => return Err(e),
                Err(Problem::Unsupported(m)) => self.graph_issue(m),
            }
        }
        if !self.issues.is_empty() {
            return Err(OnnxError::UnsupportedModel {
                name: self.name.clone(),
                issues: std::mem::take(&mut self.issues),
            });
        }
        let Some(input) = input else {
            return Err(self.malformed("the model has no input"));
        };
        let model = Model {
            name: model_name(g, &self.name),
            input,
            nodes: std::mem::take(&mut self.nodes),
            output,
        };
        for node in &model.nodes {
            for (pname, t) in &node.params {
                if !t.is_finite() {
                    return Err(OnnxError::NonFiniteWeight {
                        name: self.name.clone(),
                        node: node.name.clone(),
                        op: node.op.kind().to_string(),
                        param: pname.clone(),
                    });
                }
            }
        }
        model.validate().map_err(|source| OnnxError::Invalid {
            name: self.name.clone(),
            source,
        })?;
        Ok(model)
    }

    /// Finds the one run-time image input and records it as the IR input. A 2-D `N x F` input
    /// becomes an `F x 1 x 1` image followed by a Flatten, so MLP heads import too.
    fn read_input(&mut self) -> Result<Option<Input>, OnnxError> {
        let g = self.graph;
        let real: Vec<_> = g.input.iter().filter(|i| !self.inits.contains_key(i.name.as_str())).collect();
        if real.len() != 1 {
            let names: Vec<&str> = real.iter().map(|i| i.name.as_str()).collect();
            self.graph_issue(format!(
                "the model has {} run-time inputs ({}); penni models take exactly one image (weights must be initializers)",
                real.len(),
                names.join(", ")
            ));
            for i in &real {
                self.values.insert(i.name.clone(), Value::Poisoned);
            }
            return Ok(None);
        }
        let vi = real[0];
        let poison = |s: &mut Self, msg: String| {
            s.graph_issue(msg);
            s.values.insert(vi.name.clone(), Value::Poisoned);
            Ok(None)
        };
        let Some(tt) = vi.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) else {
            return poison(
                self,
                format!(
                    "input '{}' is not a tensor (sequences, maps and optionals are not supported)",
                    vi.name
                ),
            );
        };
        if tt.elem_type != dt::FLOAT {
            return poison(
                self,
                format!(
                    "input '{}' has element type {}; penni takes float32 images",
                    vi.name,
                    dt::name(tt.elem_type)
                ),
            );
        }
        let Some(shape) = tt.shape.as_ref() else {
            return poison(
                self,
                format!(
                    "input '{}' has no declared shape; penni needs N x C x H x W with fixed C, H, W",
                    vi.name
                ),
            );
        };
        let mut dims: Vec<Option<i64>> = Vec::new();
        for d in &shape.dim {
            match d.dim_value {
                Some(v) if v < 0 => {
                    return Err(self.malformed(format!("input '{}' has a negative dimension {v}", vi.name)));
                }
                Some(v) if v > 0 => dims.push(Some(v)),
                _ => dims.push(None),
            }
        }
        let fixed = |d: &[Option<i64>]| -> Option<Vec<usize>> { d.iter().map(|v| v.and_then(|v| usize::try_from(v).ok())).collect() };
        let shown: Vec<String> = dims.iter().map(|d| d.map_or("?".to_string(), |v| v.to_string())).collect();
        let (c, h, w) = match (dims.len(), fixed(dims.get(1..).unwrap_or(&[]))) {
            (4, Some(chw)) => (chw[0], chw[1], chw[2]),
            (2, Some(f)) => (f[0], 1, 1),
            (4 | 2, None) => {
                return poison(
                    self,
                    format!(
                        "input '{}' has shape [{}]; all dimensions but the batch must be fixed numbers",
                        vi.name,
                        shown.join(", ")
                    ),
                );
            }
            _ => {
                return poison(
                    self,
                    format!(
                        "input '{}' has rank {} ([{}]); penni takes N x C x H x W images (or N x F vectors)",
                        vi.name,
                        dims.len(),
                        shown.join(", ")
                    ),
                );
            }
        };
        if penni_model::tensor::checked_numel(&[c, h, w]).is_none_or(|n| n > penni_model::graph::MAX_ACTIVATION) {
            return Err(self.malformed(format!("input '{}' is too large ([{}])", vi.name, shown.join(", "))));
        }
        self.batch = dims[0];
        let input = Input {
            name: vi.name.clone(),
            channels: c,
            height: h,
            width: w,
        };
        let map = Shape::Map { c, h, w };
        if dims.len() == 2 {
            let node_name = self.fresh_node_name(&format!("{}.flatten", vi.name));
            let out = self.fresh_tensor(&format!("{}.flat", vi.name));
            self.nodes.push(Node {
                name: node_name,
                op: Op::Flatten,
                inputs: vec![vi.name.clone()],
                output: out.clone(),
                params: BTreeMap::new(),
            });
            self.ir_shapes.insert(vi.name.clone(), map);
            self.ir_shapes.insert(out.clone(), Shape::Vector(c));
            self.values.insert(
                vi.name.clone(),
                Value::Act {
                    tensor: out,
                    shape: Shape::Vector(c),
                    producer: None,
                },
            );
        } else {
            self.ir_shapes.insert(vi.name.clone(), map);
            self.values.insert(
                vi.name.clone(),
                Value::Act {
                    tensor: vi.name.clone(),
                    shape: map,
                    producer: None,
                },
            );
        }
        Ok(Some(input))
    }

    fn fresh_tensor(&mut self, base: &str) -> String {
        let mut s = base.to_string();
        let mut k = 1;
        while self.all_names.contains(&s) {
            k += 1;
            s = format!("{base}.{k}");
        }
        self.all_names.insert(s.clone());
        s
    }

    fn fresh_node_name(&mut self, base: &str) -> String {
        let mut s = base.to_string();
        let mut k = 1;
        while self.node_names.contains(&s) {
            k += 1;
            s = format!("{base}_{k}");
        }
        self.node_names.insert(s.clone());
        s
    }

    /// The value of an ONNX name; initializers are decoded on first use.
    fn value(&mut self, name: &str) -> PResult<Value> {
        if let Some(v) = self.values.get(name) {
            if let Value::Act { tensor, .. } = v
                && !self.taking_pad
                && self.pending_pads.contains_key(tensor)
            {
                return unsupported(format!(
                    "'{name}' is the output of a Pad; a zero Pad is only supported right before a Conv, which takes it as its padding"
                ));
            }
            return Ok(v.clone());
        }
        if let Some(t) = self.inits.get(name) {
            let c = decode(t).map_err(|message| OnnxError::Tensor {
                name: self.name.clone(),
                tensor: name.to_string(),
                message,
            })?;
            let v = Value::Const(Rc::new(c));
            self.values.insert(name.to_string(), v.clone());
            return Ok(v);
        }
        Err(Problem::Fatal(
            self.malformed(format!("value '{name}' is used before it is computed")),
        ))
    }

    fn input_name<'a>(&self, cx: &'a Ctx, i: usize) -> Option<&'a str> {
        cx.node.input.get(i).map(|s| s.as_str()).filter(|s| !s.is_empty())
    }

    /// Input `i` as a run-time activation.
    fn act(&mut self, cx: &Ctx, i: usize) -> PResult<(String, Shape, Option<usize>)> {
        let Some(name) = self.input_name(cx, i) else {
            return Err(self.invalid(cx, format!("input #{i} is missing")));
        };
        match self.value(name)? {
            Value::Act { tensor, shape, producer } => Ok((tensor, shape, producer)),
            Value::Const(_) => unsupported(format!(
                "input '{name}' is a constant; penni needs a run-time tensor computed from the image here"
            )),
            Value::Dims { .. } => unsupported(format!(
                "input '{name}' is a shape (computed by a Shape node); penni needs a run-time tensor computed from the image here"
            )),
            Value::Poisoned => unsupported("input comes from an unsupported node"),
        }
    }

    /// Input `i` as a constant (weights, shapes, bounds).
    fn constant(&mut self, cx: &Ctx, i: usize, what: &str) -> PResult<Option<Rc<Const>>> {
        let Some(name) = self.input_name(cx, i) else {
            return Ok(None);
        };
        match self.value(name)? {
            Value::Const(c) => Ok(Some(c)),
            Value::Act { .. } => unsupported(format!(
                "its {what} '{name}' is computed at run time; penni needs it to be a constant (an initializer or a Constant node; export with constant folding)"
            )),
            Value::Dims { .. } => unsupported(format!("its {what} '{name}' {BATCH_DEPENDENT}")),
            Value::Poisoned => unsupported("input comes from an unsupported node"),
        }
    }

    fn required_constant(&mut self, cx: &Ctx, i: usize, what: &str) -> PResult<Rc<Const>> {
        match self.constant(cx, i, what)? {
            Some(c) => Ok(c),
            None => Err(self.invalid(cx, format!("the {what} (input #{i}) is missing"))),
        }
    }

    /// Input `i` as an int64 scalar or vector whose elements are known or the run-time batch
    /// size (shapes, Reshape targets); the bool says whether it is a scalar.
    fn int_values(&mut self, cx: &Ctx, i: usize, what: &str) -> PResult<(bool, Vec<Dim>)> {
        let Some(name) = self.input_name(cx, i) else {
            return Err(self.invalid(cx, format!("the {what} (input #{i}) is missing")));
        };
        match self.value(name)? {
            Value::Dims { scalar, dims } => Ok((scalar, dims)),
            Value::Const(c) => {
                let Some(v) = c.i64s() else {
                    return Err(self.invalid(cx, format!("the {what} must be an integer tensor")));
                };
                if c.dims.len() > 1 {
                    return Err(self.invalid(cx, format!("the {what} has shape {:?}; it must be a scalar or a vector", c.dims)));
                }
                Ok((c.dims.is_empty(), v.iter().map(|&x| Dim::Known(x)).collect()))
            }
            Value::Act { .. } => unsupported(format!(
                "its {what} '{name}' is computed at run time; penni needs it to be a constant (an initializer or a Constant node; export with constant folding)"
            )),
            Value::Poisoned => unsupported("input comes from an unsupported node"),
        }
    }

    /// Integer list from an attribute (older opsets) or from constant input `i` (newer ones),
    /// as Unsqueeze, Squeeze and ReduceMean moved their `axes`; `None` when absent.
    fn axes(&mut self, cx: &Ctx, attr_until: i64, i: usize) -> PResult<Option<Vec<i64>>> {
        if self.opset < attr_until {
            return Ok(attr_ints(self, cx, "axes")?);
        }
        match self.constant(cx, i, "axes")? {
            None => Ok(None),
            Some(c) => match c.i64s() {
                Some(v) if c.dims.len() <= 1 => Ok(Some(v.to_vec())),
                _ => Err(self.invalid(cx, "axes must be a 1-D integer tensor")),
            },
        }
    }

    fn float_const(&self, cx: &Ctx, c: &Const, what: &str) -> PResult<Vec<f32>> {
        if !c.is_float() {
            return Err(self.invalid(cx, format!("the {what} is an integer tensor; expected floats")));
        }
        Ok(c.f32s())
    }

    fn set_output(&mut self, cx: &Ctx, v: Value) {
        if let Some(o) = cx.node.output.first().filter(|o| !o.is_empty()) {
            self.values.insert(o.clone(), v);
        }
    }

    /// Adds an IR node that writes the node's first ONNX output.
    fn emit(&mut self, cx: &Ctx, op: Op, inputs: Vec<String>, params: BTreeMap<String, Tensor>, fusable: bool) -> PResult<()> {
        let Some(output) = cx.node.output.first().filter(|o| !o.is_empty()).cloned() else {
            return Err(self.invalid(cx, "the node has no output"));
        };
        self.emit_to(cx, op, inputs, params, fusable, output)
    }

    /// Adds an IR node that writes `output` (an ONNX value name or a fresh tensor name).
    fn emit_to(
        &mut self,
        cx: &Ctx,
        op: Op,
        inputs: Vec<String>,
        params: BTreeMap<String, Tensor>,
        fusable: bool,
        output: String,
    ) -> PResult<()> {
        let shapes: Vec<Shape> = inputs
            .iter()
            .map(|i| self.shape_of(i))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.invalid(cx, "internal: input shape unknown"))?;
        let shape = infer(&op, &shapes).map_err(|m| self.invalid(cx, m))?;
        let name = self.fresh_node_name(&cx.label);
        let idx = self.nodes.len();
        self.ir_index_of.insert(cx.label.clone(), idx);
        self.nodes.push(Node {
            name,
            op,
            inputs,
            output: output.clone(),
            params,
        });
        self.ir_shapes.insert(output.clone(), shape);
        self.values.insert(
            output.clone(),
            Value::Act {
                tensor: output,
                shape,
                producer: fusable.then_some(idx),
            },
        );
        Ok(())
    }

    fn shape_of(&self, tensor: &str) -> Option<Shape> {
        self.ir_shapes.get(tensor).copied()
    }

    fn uses_of(&self, cx: &Ctx, output: usize) -> usize {
        cx.node
            .output
            .get(output)
            .filter(|o| !o.is_empty())
            .map_or(0, |o| self.uses.get(o.as_str()).copied().unwrap_or(0))
    }

    fn check_static(&self, cx: &Ctx, issues: &mut Vec<String>) -> Result<(), OnnxError> {
        let n = cx.node;
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            issues.push(format!("operator {} from domain '{}' is not supported", n.op_type, n.domain));
            return Ok(());
        }
        let allowed: &[&str] = match n.op_type.as_str() {
            "Conv" => &["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"],
            "BatchNormalization" => &["epsilon", "momentum", "spatial", "is_test", "training_mode", "consumed_inputs"],
            "Relu" | "GlobalAveragePool" | "Sum" | "MatMul" | "Identity" => &[],
            "Softmax" | "LogSoftmax" => &["axis"],
            "Pad" => &["mode", "pads", "value"],
            "Sigmoid" | "HardSwish" => &[],
            "HardSigmoid" => &["alpha", "beta"],
            "LeakyRelu" => &["alpha"],
            "Clip" => &["min", "max"],
            "MaxPool" => &[
                "auto_pad",
                "ceil_mode",
                "dilations",
                "kernel_shape",
                "pads",
                "storage_order",
                "strides",
            ],
            "AveragePool" => &[
                "auto_pad",
                "ceil_mode",
                "count_include_pad",
                "dilations",
                "kernel_shape",
                "pads",
                "strides",
            ],
            "Add" | "Mul" | "Sub" | "Div" => &["broadcast", "axis"],
            "Flatten" => &["axis"],
            "Reshape" => &["allowzero"],
            "Gemm" => &["alpha", "beta", "transA", "transB", "broadcast"],
            "Transpose" => &["perm"],
            "Dropout" => &["ratio", "is_test", "seed"],
            "Constant" => &["value", "value_float", "value_floats", "value_int", "value_ints"],
            "ConstantOfShape" => &["value"],
            "ReduceMean" => &["axes", "keepdims", "noop_with_empty_axes"],
            "Shape" => &["start", "end"],
            "Gather" | "Concat" => &["axis"],
            "Unsqueeze" | "Squeeze" => &["axes"],
            "Cast" => &["to", "saturate"],
            "CastLike" => &["saturate"],
            "Expand" => &[],
            other => {
                issues.push(format!("operator {other} is not supported"));
                return Ok(());
            }
        };
        for a in &n.attribute {
            if !a.ref_attr_name.is_empty() {
                issues.push(format!(
                    "attribute '{}' refers to a function attribute, which is not supported",
                    a.name
                ));
            } else if matches!(a.r#type, at::GRAPH | at::GRAPHS) {
                issues.push(format!("attribute '{}' holds a subgraph; subgraphs are not supported", a.name));
            } else if !allowed.contains(&a.name.as_str()) {
                issues.push(format!("attribute '{}' is not supported for {}", a.name, n.op_type));
            }
        }
        let ints_not_one =
            |name: &str| -> Result<bool, OnnxError> { Ok(attr_ints(self, cx, name)?.is_some_and(|v| v.iter().any(|&d| d != 1))) };
        match n.op_type.as_str() {
            "MaxPool" | "AveragePool" => {
                if ints_not_one("dilations")? {
                    issues.push("pooling with dilations other than 1 is not supported".into());
                }
                if attr_int(self, cx, "storage_order")?.unwrap_or(0) != 0 {
                    issues.push("storage_order=1 (column-major argmax indices) is not supported".into());
                }
                if n.op_type == "MaxPool" && self.uses_of(cx, 1) > 0 {
                    issues.push("the Indices output (argmax) is used; penni's MaxPool has no indices".into());
                }
            }
            "BatchNormalization" => {
                if attr_int(self, cx, "training_mode")?.unwrap_or(0) != 0 {
                    issues.push("training_mode=1 (batch statistics) is not supported; export the model in eval mode".into());
                }
                if attr_int(self, cx, "spatial")?.unwrap_or(1) != 1 {
                    issues.push("spatial=0 (per-activation statistics) is not supported".into());
                }
                if self.opset < 7 && attr_int(self, cx, "is_test")?.unwrap_or(0) == 0 {
                    issues.push("is_test=0 (training mode) is not supported; export the model in eval mode".into());
                }
                if (1..n.output.len()).any(|k| self.uses_of(cx, k) > 0) {
                    issues.push("the running-statistics outputs (training mode) are used".into());
                }
            }
            "Gemm" if attr_int(self, cx, "transA")?.unwrap_or(0) != 0 => {
                issues.push("transA=1 is not supported (the activation must be N x K)".into());
            }
            "Dropout" if self.uses_of(cx, 1) > 0 => issues.push("the mask output is used".into()),
            "Constant" if n.attribute.is_empty() => {
                return Err(OnnxError::InvalidNode {
                    name: self.name.clone(),
                    node: cx.label.clone(),
                    op: cx.op.clone(),
                    message: "has no value attribute".into(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn convert(&mut self, cx: &Ctx) -> PResult<()> {
        match cx.node.op_type.as_str() {
            "Conv" => self.conv(cx),
            "BatchNormalization" => self.batch_norm(cx),
            "Relu" => {
                let (x, _, _) = self.act(cx, 0)?;
                self.emit(cx, Op::Relu, vec![x], BTreeMap::new(), false)
            }
            "Clip" => self.clip(cx),
            "MaxPool" => self.pool(cx, true),
            "AveragePool" => self.pool(cx, false),
            "GlobalAveragePool" => {
                let (x, s, _) = self.act(cx, 0)?;
                if let Shape::Vector(_) = s {
                    return unsupported("global pooling of an N x F tensor");
                }
                self.emit(cx, Op::GlobalAvgPool, vec![x], BTreeMap::new(), false)
            }
            "Add" | "Sum" => self.add(cx),
            "Mul" => self.arith(cx, Arith::Mul),
            "Sub" => self.arith(cx, Arith::Sub),
            "Div" => self.arith(cx, Arith::Div),
            "Flatten" => self.flatten(cx),
            "Reshape" => self.reshape(cx),
            "Gemm" => self.gemm(cx),
            "MatMul" => self.matmul(cx),
            "Transpose" => self.transpose(cx),
            "Identity" => {
                let v = self.value_of_input(cx, 0)?;
                self.set_output(cx, strip_producer(v));
                Ok(())
            }
            "Dropout" => {
                if self.opset >= 12
                    && let Some(t) = self.constant(cx, 2, "training_mode")?
                    && t.f32s().iter().any(|v| *v != 0.0)
                {
                    return unsupported("training_mode=true (random dropout at inference)");
                }
                let v = self.value_of_input(cx, 0)?;
                self.set_output(cx, strip_producer(v));
                Ok(())
            }
            "Constant" => self.constant_node(cx),
            "ConstantOfShape" => self.constant_of_shape(cx),
            "ReduceMean" => self.reduce_mean(cx),
            "Pad" => self.pad(cx),
            "Sigmoid" => self.activation(cx, Activation::Sigmoid),
            "HardSwish" => self.activation(cx, Activation::HardSwish),
            "HardSigmoid" => {
                let alpha = attr_float(self, cx, "alpha")?.unwrap_or(0.2);
                let beta = attr_float(self, cx, "beta")?.unwrap_or(0.5);
                self.activation(cx, Activation::HardSigmoid { alpha, beta })
            }
            "LeakyRelu" => {
                let alpha = attr_float(self, cx, "alpha")?.unwrap_or(0.01);
                self.activation(cx, Activation::LeakyRelu { alpha })
            }
            "Softmax" => self.softmax(cx, false),
            "LogSoftmax" => self.softmax(cx, true),
            "Shape" => self.shape(cx),
            "Gather" => self.gather(cx),
            "Unsqueeze" => self.unsqueeze(cx),
            "Squeeze" => self.squeeze(cx),
            "Concat" => self.concat(cx),
            "Cast" => {
                let Some(to) = attr_int(self, cx, "to")? else {
                    return Err(self.invalid(cx, "the 'to' attribute is missing"));
                };
                self.cast(cx, i32::try_from(to).unwrap_or(dt::UNDEFINED))
            }
            "CastLike" => {
                let to = match self.value_of_input(cx, 1)? {
                    Value::Act { .. } => dt::FLOAT,
                    Value::Const(c) if c.is_float() => dt::FLOAT,
                    Value::Const(_) | Value::Dims { .. } => dt::INT64,
                    Value::Poisoned => return unsupported("input comes from an unsupported node"),
                };
                self.cast(cx, to)
            }
            "Expand" => self.expand(cx),
            other => unsupported(format!("operator {other} is not supported")),
        }
    }

    fn value_of_input(&mut self, cx: &Ctx, i: usize) -> PResult<Value> {
        match self.input_name(cx, i) {
            Some(n) => self.value(n),
            None => Err(self.invalid(cx, format!("input #{i} is missing"))),
        }
    }

    fn window_attrs(&self, cx: &Ctx, kernel: [usize; 2], dilation: [usize; 2], in_hw: (usize, usize)) -> PResult<([usize; 2], [usize; 4])> {
        let strides = self.pair(cx, "strides", 1)?;
        let auto = attr_string(self, cx, "auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        let pads = match auto.as_str() {
            "NOTSET" | "" => match attr_ints(self, cx, "pads")? {
                None => [0; 4],
                Some(p) if p.len() == 4 => {
                    let mut out = [0usize; 4];
                    for (o, v) in out.iter_mut().zip(&p) {
                        if !(0..=MAX_WINDOW).contains(v) {
                            return Err(self.invalid(cx, format!("pads {p:?} must be between 0 and {MAX_WINDOW}")));
                        }
                        *o = *v as usize;
                    }
                    out
                }
                Some(p) => {
                    return Err(self.invalid(cx, format!("pads {p:?} must have 4 values for a 2-D window")));
                }
            },
            "VALID" => [0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut out = [0usize; 4];
                for (ax, size) in [in_hw.0, in_hw.1].into_iter().enumerate() {
                    let s = strides[ax];
                    let span = dilation[ax] * (kernel[ax] - 1) + 1;
                    let o = size.div_ceil(s);
                    let total = ((o - 1) * s + span).saturating_sub(size);
                    let small = total / 2;
                    let (lo, hi) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    out[ax] = lo;
                    out[ax + 2] = hi;
                }
                out
            }
            other => {
                return Err(self.invalid(
                    cx,
                    format!("auto_pad '{other}' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID"),
                ));
            }
        };
        Ok((strides, pads))
    }

    /// A 2-element window attribute (strides, dilations) with a default, checked for sanity.
    fn pair(&self, cx: &Ctx, name: &str, default: usize) -> PResult<[usize; 2]> {
        match attr_ints(self, cx, name)? {
            None => Ok([default; 2]),
            Some(v) if v.len() == 2 && v.iter().all(|x| (1..=MAX_WINDOW).contains(x)) => Ok([v[0] as usize, v[1] as usize]),
            Some(v) if v.len() != 2 => unsupported(format!("{name} {v:?}: only 2-D windows (N x C x H x W) are supported")),
            Some(v) => Err(self.invalid(cx, format!("{name} {v:?} must be between 1 and {MAX_WINDOW}"))),
        }
    }

    fn conv(&mut self, cx: &Ctx) -> PResult<()> {
        let (x, s, pre) = self.act_after_pad(cx)?;
        let w = self.required_constant(cx, 1, "weight")?;
        let b = self.constant(cx, 2, "bias")?;
        if w.dims.len() != 4 {
            return unsupported(format!(
                "{}-D convolution (weight shape {:?}); only 2-D convolutions are supported",
                w.dims.len().saturating_sub(2),
                w.dims
            ));
        }
        let Shape::Map { c, h, w: width } = s else {
            return unsupported("convolution of an N x F tensor");
        };
        let group = attr_int(self, cx, "group")?.unwrap_or(1);
        if !(1..=c as i64).contains(&group) {
            return Err(self.invalid(cx, format!("group {group} must be between 1 and the {c} input channels")));
        }
        let group = group as usize;
        let [m, cg, kh, kw] = [w.dims[0], w.dims[1], w.dims[2], w.dims[3]];
        if cg.checked_mul(group) != Some(c) || m % group != 0 || m == 0 || kh == 0 || kw == 0 {
            return Err(self.invalid(
                cx,
                format!("weight {:?} with group {group} does not fit an input with {c} channels", w.dims),
            ));
        }
        if let Some(k) = attr_ints(self, cx, "kernel_shape")?
            && (k.len() != 2 || k[0] as usize != kh || k[1] as usize != kw)
        {
            return Err(self.invalid(cx, format!("kernel_shape {k:?} does not match the weight shape {:?}", w.dims)));
        }
        let dilation = self.pair(cx, "dilations", 1)?;
        // auto_pad sees the explicitly padded size; the two zero paddings then add up
        let padded = (h + pre[0] + pre[2], width + pre[1] + pre[3]);
        let (stride, mut padding) = self.window_attrs(cx, [kh, kw], dilation, padded)?;
        for (p, extra) in padding.iter_mut().zip(pre) {
            *p += extra;
        }
        let mut params = BTreeMap::new();
        params.insert(
            "weight".into(),
            Tensor {
                shape: w.dims.clone(),
                data: self.float_const(cx, &w, "weight")?,
            },
        );
        if let Some(b) = &b {
            if b.numel() != m {
                return Err(self.invalid(cx, format!("bias has {} values for {m} output channels", b.numel())));
            }
            params.insert(
                "bias".into(),
                Tensor {
                    shape: vec![m],
                    data: self.float_const(cx, b, "bias")?,
                },
            );
        }
        let spec = Conv2d {
            in_channels: c,
            out_channels: m,
            kernel: [kh, kw],
            stride,
            padding,
            dilation,
            groups: group,
            bias: b.is_some(),
        };
        if let Some(stage1) = self.decomposed.get(cx.label.as_str()).copied()
            && self.try_decomposed(cx, &x, stage1, &spec, &params)?
        {
            return Ok(());
        }
        self.emit(cx, Op::Conv2d(spec), vec![x], params, true)
    }

    /// Input 0 of a Conv or Pad, with the zero padding of a Pad in front of it taken over:
    /// (the unpadded tensor, its shape, padding top/left/bottom/right).
    fn act_after_pad(&mut self, cx: &Ctx) -> PResult<(String, Shape, [usize; 4])> {
        self.taking_pad = true;
        let r = self.act(cx, 0);
        self.taking_pad = false;
        let (x, s, _) = r?;
        Ok(match self.pending_pads.get(&x) {
            Some((t, shape, p)) => (t.clone(), *shape, *p),
            None => (x, s, [0; 4]),
        })
    }

    /// ONNX Pad with zeros on the spatial axes (what TensorFlow/Keras exports write for
    /// ZeroPadding2D and 'same' strided convs): folded into the padding of the Conv that reads it.
    fn pad(&mut self, cx: &Ctx) -> PResult<()> {
        let (x, s, pre) = self.act_after_pad(cx)?;
        let Shape::Map { c, h, w } = s else {
            return unsupported("Pad of an N x F tensor");
        };
        let mode = attr_string(self, cx, "mode")?.unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return unsupported(format!("Pad mode '{mode}'; only constant zero padding is supported"));
        }
        let (pads, value) = if self.opset < 11 {
            let Some(p) = attr_ints(self, cx, "pads")? else {
                return Err(self.invalid(cx, "the pads attribute is missing"));
            };
            (p, attr_float(self, cx, "value")?.unwrap_or(0.0))
        } else {
            let p = self.required_constant(cx, 1, "pads")?;
            let Some(p) = p.i64s().map(|v| v.to_vec()) else {
                return Err(self.invalid(cx, "pads must be an int64 tensor"));
            };
            let value = match self.constant(cx, 2, "constant_value")? {
                Some(v) => v.f32s().first().copied().unwrap_or(0.0),
                None => 0.0,
            };
            // opset 18: pads may name only some axes
            let p = match self.constant(cx, 3, "axes")? {
                None => p,
                Some(a) => {
                    let Some(axes) = a.i64s().map(|v| v.to_vec()) else {
                        return Err(self.invalid(cx, "axes must be an int64 tensor"));
                    };
                    if p.len() != 2 * axes.len() {
                        return Err(self.invalid(cx, format!("{} pads for {} axes", p.len(), axes.len())));
                    }
                    let mut full = vec![0i64; 8];
                    for (i, &a) in axes.iter().enumerate() {
                        let ax = self.axis_index(cx, a, 4, "axes")?;
                        full[ax] = p[i];
                        full[4 + ax] = p[axes.len() + i];
                    }
                    full
                }
            };
            (p, value)
        };
        if pads.len() != 8 {
            return Err(self.invalid(cx, format!("pads {pads:?} must have 8 values for a 4-D tensor")));
        }
        if value != 0.0 {
            return unsupported(format!("Pad with the value {value}; only zero padding folds into a Conv"));
        }
        if pads.iter().any(|p| !(0..=MAX_WINDOW).contains(p)) {
            return unsupported(format!(
                "pads {pads:?}: negative pads (cropping) or pads over {MAX_WINDOW} are not supported"
            ));
        }
        if pads[0] != 0 || pads[1] != 0 || pads[4] != 0 || pads[5] != 0 {
            return unsupported(format!(
                "pads {pads:?} pad the batch or channel axis; only the spatial axes can be padded"
            ));
        }
        let total = [
            pre[0] + pads[2] as usize,
            pre[1] + pads[3] as usize,
            pre[2] + pads[6] as usize,
            pre[3] + pads[7] as usize,
        ];
        let shape = Shape::Map {
            c,
            h: h + total[0] + total[2],
            w: w + total[1] + total[3],
        };
        let tensor = if total == [0; 4] {
            x
        } else {
            let stand_in = self.fresh_tensor(&format!("{}.padded", cx.label));
            self.pending_pads.insert(stand_in.clone(), (x, s, total));
            stand_in
        };
        self.set_output(
            cx,
            Value::Act {
                tensor,
                shape,
                producer: None,
            },
        );
        Ok(())
    }

    /// Rebuilds a PENNI layer from the basis conv + 1x1 conv pair that `export` writes, when
    /// the metadata names the pair and the weights really have that structure (else the two
    /// convs stay ordinary convs, which compute the same function).
    fn try_decomposed(&mut self, cx: &Ctx, x: &str, stage1: &str, spec: &Conv2d, params: &BTreeMap<String, Tensor>) -> PResult<bool> {
        let Some(&i1) = self.ir_index_of.get(stage1) else {
            return Ok(false);
        };
        let n1 = &self.nodes[i1];
        let Op::Conv2d(c1) = &n1.op else {
            return Ok(false);
        };
        let single_use = self.uses.get(n1.output.as_str()).copied() == Some(1);
        let c = c1.in_channels;
        if n1.output != x || !single_use || c1.bias || c1.groups != c || c1.out_channels % c != 0 {
            return Ok(false);
        }
        let d = c1.out_channels / c;
        let kk = c1.kernel[0] * c1.kernel[1];
        let w1 = &n1.params["weight"].data;
        let bases = &w1[..d * kk];
        if (1..c).any(|ch| &w1[ch * d * kk..(ch + 1) * d * kk] != bases) {
            return Ok(false);
        }
        let g = spec.groups;
        if spec.kernel != [1, 1] || spec.stride != [1, 1] || spec.padding != [0; 4] || c % g != 0 || spec.in_channels != c * d {
            return Ok(false);
        }
        let (n, cpg) = (spec.out_channels, c / g);
        let w2 = &params["weight"].data; // (n, cpg*d, 1, 1)
        let mut coef = vec![0f32; n * cpg * d];
        for o in 0..n {
            for cl in 0..cpg {
                for j in 0..d {
                    coef[(o * cpg + cl) * d + j] = w2[o * cpg * d + cl * d + j];
                }
            }
        }
        let dc = DecomposedConv2d {
            conv: Conv2d {
                in_channels: c,
                out_channels: n,
                kernel: c1.kernel,
                stride: c1.stride,
                padding: c1.padding,
                dilation: c1.dilation,
                groups: g,
                bias: spec.bias,
            },
            num_bases: d,
        };
        let mut p = BTreeMap::new();
        p.insert(
            "bases".to_string(),
            Tensor {
                shape: vec![d, kk],
                data: bases.to_vec(),
            },
        );
        p.insert(
            "coefficients".to_string(),
            Tensor {
                shape: vec![n * cpg, d],
                data: coef,
            },
        );
        if let Some(b) = params.get("bias") {
            p.insert("bias".to_string(), b.clone());
        }
        let input = n1.inputs[0].clone();
        let in_shape = self
            .shape_of(&input)
            .ok_or_else(|| self.invalid(cx, "internal: input shape unknown"))?;
        let op = Op::DecomposedConv2d(dc);
        let shape = infer(&op, &[in_shape]).map_err(|m| self.invalid(cx, m))?;
        let Some(output) = cx.node.output.first().filter(|o| !o.is_empty()).cloned() else {
            return Err(self.invalid(cx, "the node has no output"));
        };
        self.node_names.remove(&self.nodes[i1].name);
        let name = self.fresh_node_name(&cx.label);
        self.nodes[i1] = Node {
            name,
            op,
            inputs: vec![input],
            output: output.clone(),
            params: p,
        };
        self.ir_index_of.insert(cx.label.clone(), i1);
        self.ir_shapes.insert(output.clone(), shape);
        self.values.insert(
            output.clone(),
            Value::Act {
                tensor: output,
                shape,
                producer: Some(i1),
            },
        );
        Ok(true)
    }

    fn batch_norm(&mut self, cx: &Ctx) -> PResult<()> {
        let (x, s, _) = self.act(cx, 0)?;
        let Shape::Map { c, .. } = s else {
            return unsupported("batch normalization of an N x F tensor (BatchNorm1d) is not supported");
        };
        let mut params = BTreeMap::new();
        for (i, what) in [(1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")] {
            let t = self.required_constant(cx, i, what)?;
            if t.numel() != c {
                return Err(self.invalid(cx, format!("{what} has {} values for {c} channels", t.numel())));
            }
            params.insert(
                what.to_string(),
                Tensor {
                    shape: vec![c],
                    data: self.float_const(cx, &t, what)?,
                },
            );
        }
        let eps = attr_float(self, cx, "epsilon")?.unwrap_or(1e-5);
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(self.invalid(cx, format!("epsilon {eps} must be a finite non-negative number")));
        }
        if params["running_var"].data.iter().any(|v| *v < 0.0) {
            return Err(self.invalid(cx, "the running variance has negative values"));
        }
        self.emit(cx, Op::BatchNorm2d { channels: c, eps }, vec![x], params, false)
    }

    fn clip(&mut self, cx: &Ctx) -> PResult<()> {
        let (x, _, _) = self.act(cx, 0)?;
        let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
        if self.opset < 11 {
            lo = attr_float(self, cx, "min")?.unwrap_or(lo);
            hi = attr_float(self, cx, "max")?.unwrap_or(hi);
        } else {
            for (i, slot) in [(1, &mut lo), (2, &mut hi)] {
                if let Some(t) = self.constant(cx, i, if i == 1 { "min" } else { "max" })? {
                    if t.numel() != 1 {
                        return Err(self.invalid(cx, format!("clip bound #{i} has {} values; it must be a scalar", t.numel())));
                    }
                    *slot = t.f32s()[0];
                }
            }
        }
        if lo.is_nan() || hi.is_nan() {
            return Err(self.invalid(cx, "a clip bound is NaN"));
        }
        // ONNX: when min > max every value becomes max, which is clamp(max, max).
        let lo = lo.min(hi);
        self.emit(cx, Op::Clip { min: lo, max: hi }, vec![x], BTreeMap::new(), false)
    }

    fn pool(&mut self, cx: &Ctx, max: bool) -> PResult<()> {
        let (x, s, _) = self.act(cx, 0)?;
        let Some(k) = attr_ints(self, cx, "kernel_shape")? else {
            return Err(self.invalid(cx, "kernel_shape is missing"));
        };
        if k.len() != 2 {
            return unsupported(format!("{}-D pooling (kernel_shape {k:?}); only 2-D pooling is supported", k.len()));
        }
        if k.iter().any(|v| !(1..=MAX_WINDOW).contains(v)) {
            return Err(self.invalid(cx, format!("kernel_shape {k:?} must be between 1 and {MAX_WINDOW}")));
        }
        let Shape::Map { h, w, .. } = s else {
            return unsupported("pooling of an N x F tensor");
        };
        let kernel = [k[0] as usize, k[1] as usize];
        let (stride, padding) = self.window_attrs(cx, kernel, [1, 1], (h, w))?;
        let ceil_mode = attr_int(self, cx, "ceil_mode")?.unwrap_or(0) != 0;
        let count_include_pad = !max && attr_int(self, cx, "count_include_pad")?.unwrap_or(0) != 0;
        let p = Pool2d {
            kernel,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
        };
        let op = if max { Op::MaxPool2d(p) } else { Op::AvgPool2d(p) };
        self.emit(cx, op, vec![x], BTreeMap::new(), false)
    }

    fn add(&mut self, cx: &Ctx) -> PResult<()> {
        let mut acts = Vec::new();
        let mut consts = Vec::new();
        for i in 0..cx.node.input.len() {
            match self.value_of_input(cx, i)? {
                Value::Act { tensor, shape, producer } => acts.push((tensor, shape, producer, cx.node.input[i].clone())),
                Value::Const(c) => consts.push(c),
                Value::Dims { .. } => {
                    return unsupported(format!("input #{i} is a shape that {BATCH_DEPENDENT}"));
                }
                Value::Poisoned => return unsupported("input comes from an unsupported node"),
            }
        }
        if acts.is_empty() && consts.is_empty() {
            return Err(self.invalid(cx, "has no inputs"));
        }
        if acts.is_empty() {
            // Constant + constant of one shape: fold.
            let first = &consts[0];
            if consts.iter().any(|c| c.dims != first.dims) {
                return unsupported("adds constants of different shapes");
            }
            let mut sum = first.f32s();
            for c in &consts[1..] {
                for (a, b) in sum.iter_mut().zip(c.f32s()) {
                    *a += b;
                }
            }
            self.set_output(
                cx,
                Value::Const(Rc::new(Const {
                    dims: first.dims.clone(),
                    data: Data::F32(sum),
                })),
            );
            return Ok(());
        }
        if consts.is_empty() {
            if let Some((_, s, _, _)) = acts.iter().find(|a| a.1 != acts[0].1) {
                return unsupported(format!(
                    "adds run-time tensors of different shapes ({} and {s}); broadcasting is not supported",
                    acts[0].1
                ));
            }
            if acts.len() == 1 {
                let (tensor, shape, _, _) = acts.remove(0);
                self.set_output(
                    cx,
                    Value::Act {
                        tensor,
                        shape,
                        producer: None,
                    },
                );
                return Ok(());
            }
            let inputs = acts.into_iter().map(|a| a.0).collect();
            return self.emit(cx, Op::Add, inputs, BTreeMap::new(), false);
        }
        if acts.len() != 1 {
            return unsupported("adds a constant to a sum of several run-time tensors");
        }
        let (tensor, shape, producer, onnx_name) = acts.remove(0);
        let (rank, channels) = match shape {
            Shape::Map { c, .. } => (4, c),
            Shape::Vector(n) => (2, n),
        };
        let mut per_channel = vec![0f32; channels];
        for c in &consts {
            for (slot, v) in per_channel.iter_mut().zip(self.per_channel(cx, c, shape, "added to")?) {
                *slot += v;
            }
        }
        // Fold into the bias of the Conv/Gemm/MatMul that produced the tensor, when nothing else reads it.
        let sole_reader = self.uses.get(onnx_name.as_str()).copied() == Some(1);
        if let Some(idx) = producer.filter(|_| sole_reader) {
            let node = &mut self.nodes[idx];
            let (flag, out_ch) = match &mut node.op {
                Op::Conv2d(c) => (Some(&mut c.bias), c.out_channels),
                Op::DecomposedConv2d(c) => (Some(&mut c.conv.bias), c.conv.out_channels),
                Op::Linear { out_features, bias, .. } => (Some(bias), *out_features),
                _ => (None, 0),
            };
            if let Some(flag) = flag.filter(|_| out_ch == channels) {
                *flag = true;
                let b = node.params.entry("bias".into()).or_insert_with(|| Tensor::zeros(vec![channels]));
                for (x, add) in b.data.iter_mut().zip(&per_channel) {
                    *x += add;
                }
                self.set_output(
                    cx,
                    Value::Act {
                        tensor,
                        shape,
                        producer: Some(idx),
                    },
                );
                return Ok(());
            }
        }
        if rank != 4 {
            return unsupported("adds a constant to an N x F tensor that does not come straight from a Gemm/MatMul");
        }
        self.emit_affine(cx, tensor, vec![1.0; channels], per_channel)
    }

    /// y = scale * x + shift per channel of a feature map, as a batchnorm with zero mean, unit
    /// variance and eps 0 (exact).
    fn emit_affine(&mut self, cx: &Ctx, tensor: String, scale: Vec<f32>, shift: Vec<f32>) -> PResult<()> {
        let channels = scale.len();
        let params = BTreeMap::from([
            (
                "weight".to_string(),
                Tensor {
                    shape: vec![channels],
                    data: scale,
                },
            ),
            (
                "bias".to_string(),
                Tensor {
                    shape: vec![channels],
                    data: shift,
                },
            ),
            ("running_mean".to_string(), Tensor::zeros(vec![channels])),
            ("running_var".to_string(), Tensor::full(vec![channels], 1.0)),
        ]);
        self.emit(cx, Op::BatchNorm2d { channels, eps: 0.0 }, vec![tensor], params, false)
    }

    /// The values of a constant operand of an element-wise op, one per channel of the
    /// activation `shape` it meets: it must broadcast along batch and space only (a scalar, C,
    /// C x 1 x 1, 1 x C x 1 x 1; opset-6 `broadcast`/`axis` honoured).
    fn per_channel(&self, cx: &Ctx, c: &Const, shape: Shape, what: &str) -> PResult<Vec<f32>> {
        let (rank, channels) = match shape {
            Shape::Map { c, .. } => (4, c),
            Shape::Vector(n) => (2, n),
        };
        let legacy_axis = if self.opset < 7 && attr_int(self, cx, "broadcast")?.unwrap_or(0) != 0 {
            attr_int(self, cx, "axis")?
        } else {
            None
        };
        if c.dims.len() > rank {
            return unsupported(format!(
                "the constant {:?} has more dimensions than the {rank}-D tensor it is {what}",
                c.dims
            ));
        }
        let start = match legacy_axis {
            Some(a) if a >= 0 && a as usize + c.dims.len() <= rank => a as usize,
            Some(a) => {
                return Err(self.invalid(cx, format!("broadcast axis {a} does not fit a constant of shape {:?}", c.dims)));
            }
            None => rank - c.dims.len(),
        };
        let mut aligned = vec![1usize; rank];
        aligned[start..start + c.dims.len()].copy_from_slice(&c.dims);
        let ok = aligned.iter().enumerate().all(|(ax, &d)| d == 1 || (ax == 1 && d == channels));
        if !ok {
            return unsupported(format!(
                "the constant of shape {:?} {what} the {shape} tensor is not per-channel (only N x C x 1 x 1-broadcastable constants are supported)",
                c.dims
            ));
        }
        let v = c.f32s();
        Ok((0..channels).map(|ch| if v.len() == 1 { v[0] } else { v[ch] }).collect())
    }

    /// Mul, Sub and Div of a feature map and a per-channel constant (input normalisation such
    /// as `(x - mean) / std`, a rescaling by 1/255): a batchnorm with that scale and shift.
    /// Two constants fold; two run-time tensors are not supported.
    fn arith(&mut self, cx: &Ctx, op: Arith) -> PResult<()> {
        if cx.node.input.len() != 2 {
            return Err(self.invalid(cx, format!("has {} inputs, expected 2", cx.node.input.len())));
        }
        let (a, b) = (self.value_of_input(cx, 0)?, self.value_of_input(cx, 1)?);
        let (tensor, shape, k, act_first) = match (a, b) {
            (Value::Const(x), Value::Const(y)) => {
                // equal shapes or a scalar side; integers stay integers (shape arithmetic such
                // as `x.size(1) * x.size(2)` for a Reshape target)
                let (nx, ny) = (x.numel(), y.numel());
                if !(x.dims == y.dims || nx == 1 || ny == 1) {
                    return unsupported(format!("{} of constants of shapes {:?} and {:?}", cx.op, x.dims, y.dims));
                }
                let dims = if nx >= ny { x.dims.clone() } else { y.dims.clone() };
                let idx = |len: usize, i: usize| if len == 1 { 0 } else { i };
                let data = match (x.i64s(), y.i64s()) {
                    (Some(xv), Some(yv)) => {
                        let mut out = Vec::with_capacity(nx.max(ny));
                        for i in 0..nx.max(ny) {
                            let (a, b) = (xv[idx(nx, i)], yv[idx(ny, i)]);
                            match op.apply_int(a, b) {
                                Some(v) => out.push(v),
                                None => return Err(self.invalid(cx, format!("integer {} of {a} and {b} is undefined", cx.op))),
                            }
                        }
                        Data::I64(out)
                    }
                    _ => {
                        let (xv, yv) = (x.f32s(), y.f32s());
                        Data::F32((0..nx.max(ny)).map(|i| op.apply(xv[idx(nx, i)], yv[idx(ny, i)])).collect())
                    }
                };
                self.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
                return Ok(());
            }
            (Value::Act { tensor, shape, .. }, Value::Const(k)) => (tensor, shape, k, true),
            (Value::Const(k), Value::Act { tensor, shape, .. }) => (tensor, shape, k, false),
            (Value::Act { .. }, Value::Act { .. }) if matches!(op, Arith::Mul) => return self.mul_acts(cx),
            (Value::Act { .. }, Value::Act { .. }) => {
                return unsupported(format!("{} of two run-time tensors is not supported", cx.op));
            }
            (Value::Dims { .. }, _) | (_, Value::Dims { .. }) => {
                return unsupported(format!("an input is a shape that {BATCH_DEPENDENT}"));
            }
            _ => return unsupported("input comes from an unsupported node"),
        };
        let Shape::Map { c: channels, .. } = shape else {
            return unsupported(format!("{} of an N x F tensor and a constant is not supported", cx.op));
        };
        let k = self.per_channel(cx, &k, shape, "combined with")?;
        // y = scale * x + shift
        let (scale, shift): (Vec<f32>, Vec<f32>) = match (op, act_first) {
            (Arith::Mul, _) => (k, vec![0.0; channels]),
            (Arith::Sub, true) => (vec![1.0; channels], k.iter().map(|v| -v).collect()),
            (Arith::Sub, false) => (vec![-1.0; channels], k),
            (Arith::Div, true) => {
                if k.contains(&0.0) {
                    return Err(self.invalid(cx, "divides by a constant that has zeros"));
                }
                (k.iter().map(|v| 1.0 / v).collect(), vec![0.0; channels])
            }
            (Arith::Div, false) => return unsupported("divides a constant by a run-time tensor"),
        };
        if scale.iter().chain(&shift).any(|v| !v.is_finite()) {
            return Err(self.invalid(cx, "its constant gives a non-finite scale or shift"));
        }
        self.emit_affine(cx, tensor, scale, shift)
    }

    fn flatten(&mut self, cx: &Ctx) -> PResult<()> {
        if let Value::Const(c) = self.value_of_input(cx, 0)? {
            let axis = attr_int(self, cx, "axis")?.unwrap_or(1);
            let r = c.dims.len() as i64;
            let a = if axis < 0 { axis + r } else { axis };
            if !(0..=r).contains(&a) {
                return Err(self.invalid(cx, format!("axis {axis} is out of range for rank {r}")));
            }
            let rows: usize = c.dims[..a as usize].iter().product();
            let cols: usize = c.dims[a as usize..].iter().product();
            self.set_output(
                cx,
                Value::Const(Rc::new(Const {
                    dims: vec![rows, cols],
                    data: c.data.clone(),
                })),
            );
            return Ok(());
        }
        let (x, s, _) = self.act(cx, 0)?;
        let rank = if matches!(s, Shape::Map { .. }) { 4 } else { 2 };
        let axis = attr_int(self, cx, "axis")?.unwrap_or(1);
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..=rank).contains(&a) {
            return Err(self.invalid(cx, format!("axis {axis} is out of range for a rank-{rank} tensor")));
        }
        if a != 1 {
            return unsupported(format!(
                "Flatten with axis {axis} mixes the batch with other dimensions; only axis 1 is supported"
            ));
        }
        self.emit(cx, Op::Flatten, vec![x], BTreeMap::new(), false)
    }

    fn reshape(&mut self, cx: &Ctx) -> PResult<()> {
        let (_, target) = self.int_values(cx, 1, "target shape")?;
        let allowzero = attr_int(self, cx, "allowzero")?.unwrap_or(0) != 0;
        let input = self.value_of_input(cx, 0)?;
        // A target built from the input's own Shape has the run-time batch size as its first
        // element; for the batch-major tensors penni handles, that is "keep dimension 0".
        if let Some(i) = target.iter().position(|d| *d == Dim::Batch)
            && (i != 0 || !matches!(input, Value::Act { .. }))
        {
            return unsupported(format!(
                "the target shape has the run-time batch size at axis {i}; only a leading batch dimension is supported"
            ));
        }
        let t: Vec<i64> = target
            .iter()
            .map(|d| match d {
                Dim::Known(v) => *v,
                Dim::Batch => 0,
            })
            .collect();
        if allowzero && target.contains(&Dim::Known(0)) && matches!(input, Value::Act { .. }) {
            return unsupported(format!("Reshape to {t:?} with allowzero=1 makes an empty tensor"));
        }
        if let Value::Const(c) = input {
            let dims = resolve_reshape(&c.dims, &t, allowzero).map_err(|m| self.invalid(cx, m))?;
            self.set_output(
                cx,
                Value::Const(Rc::new(Const {
                    dims,
                    data: c.data.clone(),
                })),
            );
            return Ok(());
        }
        if let Value::Dims { scalar, dims } = input {
            // e.g. the batch size as a scalar reshaped to [1] or [-1] to build a target shape
            let from = if scalar { vec![] } else { vec![dims.len()] };
            let to = resolve_reshape(&from, &t, allowzero).map_err(|m| self.invalid(cx, m))?;
            if to.len() > 1 {
                return unsupported(format!("Reshape of a shape to rank {}; shapes are scalars or vectors", to.len()));
            }
            self.set_output(
                cx,
                Value::Dims {
                    scalar: to.is_empty(),
                    dims,
                },
            );
            return Ok(());
        }
        let (x, s, _) = self.act(cx, 0)?;
        let numel = s.numel() as i64;
        let batch_ok = |b: i64| b == 0 || self.batch.is_none() || self.batch == Some(b);
        let flatten_like = t.len() == 2
            && match (t[0], t[1]) {
                (-1, f) => f == numel,
                (b, -1) => b >= 0 && batch_ok(b),
                (b, f) => b >= 0 && batch_ok(b) && f == numel,
            };
        if flatten_like {
            return match s {
                Shape::Vector(_) => {
                    self.set_output(
                        cx,
                        Value::Act {
                            tensor: x,
                            shape: s,
                            producer: None,
                        },
                    );
                    Ok(())
                }
                Shape::Map { .. } => self.emit(cx, Op::Flatten, vec![x], BTreeMap::new(), false),
            };
        }
        if let Shape::Map { c, h, w } = s {
            let same = t.len() == 4 && batch_ok(t[0]) && t[0] != -1 && {
                let want = [c as i64, h as i64, w as i64];
                (1..4).all(|i| t[i] == 0 || t[i] == want[i - 1] || (t[i] == -1 && t.iter().filter(|v| **v == -1).count() == 1))
            };
            if same {
                self.set_output(
                    cx,
                    Value::Act {
                        tensor: x,
                        shape: s,
                        producer: None,
                    },
                );
                return Ok(());
            }
        }
        unsupported(format!(
            "Reshape of a {s} tensor to {t:?} is not a flatten to [N, -1]; only flattening reshapes are supported"
        ))
    }

    fn gemm(&mut self, cx: &Ctx) -> PResult<()> {
        let (x, s, _) = self.act(cx, 0)?;
        let Shape::Vector(k) = s else {
            return unsupported(format!("Gemm on a {s} feature map; insert a Flatten"));
        };
        let b = self.required_constant(cx, 1, "weight")?;
        let c = self.constant(cx, 2, "bias")?;
        if b.dims.len() != 2 {
            return Err(self.invalid(cx, format!("weight shape {:?} is not 2-D", b.dims)));
        }
        let trans_b = attr_int(self, cx, "transB")?.unwrap_or(0) != 0;
        let alpha = attr_float(self, cx, "alpha")?.unwrap_or(1.0);
        let beta = attr_float(self, cx, "beta")?.unwrap_or(1.0);
        let w = if trans_b { (*b).clone() } else { b.transpose(&[1, 0]) };
        let (out, inf) = (w.dims[0], w.dims[1]);
        if inf != k {
            return Err(self.invalid(
                cx,
                format!(
                    "weight {:?} (transB={}) expects {inf} input features, got {k}",
                    b.dims, trans_b as u8
                ),
            ));
        }
        let mut wd = self.float_const(cx, &w, "weight")?;
        if alpha != 1.0 {
            wd.iter_mut().for_each(|v| *v *= alpha);
        }
        let mut params = BTreeMap::from([(
            "weight".to_string(),
            Tensor {
                shape: vec![out, inf],
                data: wd,
            },
        )]);
        if let Some(c) = c.filter(|_| beta != 0.0) {
            if c.dims.len() > 2 {
                return Err(self.invalid(cx, format!("bias shape {:?} has more than 2 dimensions", c.dims)));
            }
            let mut aligned = vec![1usize; 2 - c.dims.len()];
            aligned.extend(&c.dims);
            if aligned[0] != 1 || !(aligned[1] == 1 || aligned[1] == out) {
                return unsupported(format!(
                    "bias of shape {:?} differs per batch row; only a bias of {out} values (or a scalar) is supported",
                    c.dims
                ));
            }
            let v = self.float_const(cx, &c, "bias")?;
            let bias: Vec<f32> = (0..out).map(|o| beta * if v.len() == 1 { v[0] } else { v[o] }).collect();
            params.insert(
                "bias".into(),
                Tensor {
                    shape: vec![out],
                    data: bias,
                },
            );
        }
        let bias = params.contains_key("bias");
        self.emit(
            cx,
            Op::Linear {
                in_features: inf,
                out_features: out,
                bias,
            },
            vec![x],
            params,
            true,
        )
    }

    fn matmul(&mut self, cx: &Ctx) -> PResult<()> {
        let (x, s, _) = self.act(cx, 0)?;
        let b = self.required_constant(cx, 1, "right operand")?;
        let Shape::Vector(k) = s else {
            return unsupported(format!(
                "MatMul on a {s} feature map; only N x K times a constant K x M matrix is supported"
            ));
        };
        if b.dims.len() != 2 {
            return unsupported(format!(
                "MatMul with a constant of shape {:?}; only a 2-D constant right operand is supported",
                b.dims
            ));
        }
        if b.dims[0] != k {
            return Err(self.invalid(cx, format!("right operand {:?} expects {} features, got {k}", b.dims, b.dims[0])));
        }
        let w = b.transpose(&[1, 0]);
        let out = w.dims[0];
        let params = BTreeMap::from([(
            "weight".to_string(),
            Tensor {
                shape: vec![out, k],
                data: self.float_const(cx, &w, "weight")?,
            },
        )]);
        self.emit(
            cx,
            Op::Linear {
                in_features: k,
                out_features: out,
                bias: false,
            },
            vec![x],
            params,
            true,
        )
    }

    fn transpose(&mut self, cx: &Ctx) -> PResult<()> {
        let v = self.value_of_input(cx, 0)?;
        let rank = match &v {
            Value::Const(c) => c.dims.len(),
            Value::Act {
                shape: Shape::Map { .. }, ..
            } => 4,
            Value::Act { .. } => 2,
            Value::Dims { .. } => {
                return unsupported(format!("Transpose of a shape that {BATCH_DEPENDENT}"));
            }
            Value::Poisoned => return unsupported("input comes from an unsupported node"),
        };
        let perm: Vec<usize> = match attr_ints(self, cx, "perm")? {
            None => (0..rank).rev().collect(),
            Some(p) => {
                let mut seen = vec![false; rank];
                let ok = p.len() == rank
                    && p.iter()
                        .all(|&a| (0..rank as i64).contains(&a) && !std::mem::replace(&mut seen[a as usize], true));
                if !ok {
                    return Err(self.invalid(cx, format!("perm {p:?} is not a permutation of the {rank} axes")));
                }
                p.iter().map(|&a| a as usize).collect()
            }
        };
        match v {
            Value::Const(c) => {
                self.set_output(cx, Value::Const(Rc::new(c.transpose(&perm))));
                Ok(())
            }
            Value::Act { tensor, shape, .. } if perm.iter().enumerate().all(|(i, &p)| i == p) => {
                self.set_output(
                    cx,
                    Value::Act {
                        tensor,
                        shape,
                        producer: None,
                    },
                );
                Ok(())
            }
            _ => unsupported(format!("Transpose of a run-time tensor (perm {perm:?}) is not supported")),
        }
    }

    fn constant_node(&mut self, cx: &Ctx) -> PResult<()> {
        let a = &cx.node.attribute[0];
        let c = match a.name.as_str() {
            "value" => {
                let Some(t) = a.t.as_ref() else {
                    return Err(self.invalid(cx, "the value attribute holds no tensor"));
                };
                decode(t).map_err(|m| self.invalid(cx, format!("value {m}")))?
            }
            "value_float" => Const {
                dims: vec![],
                data: Data::F32(vec![a.f]),
            },
            "value_floats" => Const {
                dims: vec![a.floats.len()],
                data: Data::F32(a.floats.clone()),
            },
            "value_int" => Const {
                dims: vec![],
                data: Data::I64(vec![a.i]),
            },
            "value_ints" => Const {
                dims: vec![a.ints.len()],
                data: Data::I64(a.ints.clone()),
            },
            other => return unsupported(format!("Constant with '{other}' is not supported")),
        };
        self.set_output(cx, Value::Const(Rc::new(c)));
        Ok(())
    }

    fn constant_of_shape(&mut self, cx: &Ctx) -> PResult<()> {
        let shape = self.required_constant(cx, 0, "shape")?;
        let Some(dims) = shape.i64s() else {
            return Err(self.invalid(cx, "the shape must be an int64 tensor"));
        };
        let (dims, numel) = dims_of(dims).map_err(|m| self.invalid(cx, format!("shape {m}")))?;
        if numel > MAX_FOLDED_VALUES || self.folded_total.saturating_add(numel) > MAX_FOLDED_TOTAL {
            return Err(self.invalid(cx, format!("would create a constant of {numel} values; penni creates at most {MAX_FOLDED_VALUES} per tensor and {MAX_FOLDED_TOTAL} in total")));
        }
        self.folded_total += numel;
        let fill = match cx.node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) {
            None => Const {
                dims: vec![1],
                data: Data::F32(vec![0.0]),
            },
            Some(t) => decode(t).map_err(|m| self.invalid(cx, format!("value {m}")))?,
        };
        if fill.numel() != 1 {
            return Err(self.invalid(cx, "value must hold exactly one element"));
        }
        let data = match fill.data {
            Data::F32(v) => Data::F32(vec![v[0]; numel]),
            Data::I64(v) => Data::I64(vec![v[0]; numel]),
        };
        self.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
        Ok(())
    }

    /// Counts `numel` folded values against the limits, so that a small file cannot make
    /// penni build huge constants (repeated Concat doubles a tensor each time).
    fn fold_budget(&mut self, cx: &Ctx, numel: Option<usize>) -> PResult<()> {
        match numel {
            Some(n)
                if n <= MAX_FOLDED_VALUES
                    && self.folded_total.saturating_add(n) <= MAX_FOLDED_TOTAL =>
            {
                self.folded_total += n;
                Ok(())
            }
            _ => Err(self.invalid(cx, format!("would create a constant of {} values; penni creates at most {MAX_FOLDED_VALUES} per tensor and {MAX_FOLDED_TOTAL} in total", numel.map_or("too many".to_string(), |n| n.to_string())))),
        }
    }

    /// An axis in [-rank, rank-1] as an index, or an InvalidNode error.
    fn axis_index(&self, cx: &Ctx, axis: i64, rank: usize, what: &str) -> PResult<usize> {
        let r = rank as i64;
        if (-r..r).contains(&axis) {
            Ok((if axis < 0 { axis + r } else { axis }) as usize)
        } else {
            Err(self.invalid(cx, format!("{what} {axis} is out of range for rank {rank}")))
        }
    }

    /// Distinct axes in [-rank, rank-1], as sorted indices.
    fn axis_set(&self, cx: &Ctx, axes: &[i64], rank: usize) -> PResult<Vec<usize>> {
        let mut out = Vec::with_capacity(axes.len());
        for &a in axes {
            let i = self.axis_index(cx, a, rank, "axis")?;
            if out.contains(&i) {
                return Err(self.invalid(cx, format!("axes {axes:?} name axis {i} twice")));
            }
            out.push(i);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// ReduceMean over the two spatial axes of a feature map is global average pooling (what
    /// the dynamo exporter writes for AdaptiveAvgPool2d(1) and `x.mean((2, 3))`).
    fn reduce_mean(&mut self, cx: &Ctx) -> PResult<()> {
        let axes = self.axes(cx, 18, 1)?;
        let keepdims = attr_int(self, cx, "keepdims")?.unwrap_or(1) != 0;
        let noop_empty = self.opset >= 18 && attr_int(self, cx, "noop_with_empty_axes")?.unwrap_or(0) != 0;
        let (x, s, _) = self.act(cx, 0)?;
        let rank = if matches!(s, Shape::Map { .. }) { 4 } else { 2 };
        let axes = match axes {
            Some(a) if !a.is_empty() => a,
            _ if noop_empty => {
                self.set_output(
                    cx,
                    Value::Act {
                        tensor: x,
                        shape: s,
                        producer: None,
                    },
                );
                return Ok(());
            }
            _ => return unsupported("ReduceMean over all axes averages over the batch"),
        };
        let set = self.axis_set(cx, &axes, rank)?;
        if set != [2, 3] {
            return unsupported(format!(
                "ReduceMean over axes {axes:?} of a {s} tensor; only the mean over both spatial axes (global average pooling) is supported"
            ));
        }
        if keepdims {
            return self.emit(cx, Op::GlobalAvgPool, vec![x], BTreeMap::new(), false);
        }
        let pooled = self.fresh_tensor(&format!("{}.pooled", cx.label));
        self.emit_to(cx, Op::GlobalAvgPool, vec![x], BTreeMap::new(), false, pooled.clone())?;
        self.emit(cx, Op::Flatten, vec![pooled], BTreeMap::new(), false)
    }

    fn activation(&mut self, cx: &Ctx, a: Activation) -> PResult<()> {
        let (x, _, _) = self.act(cx, 0)?;
        // recorded as the producer so that a Mul by its input can fuse into a HardSwish
        self.emit(cx, Op::Activation(a), vec![x], BTreeMap::new(), true)
    }

    /// Mul of two run-time tensors: of one shape, or a feature map and a C x 1 x 1 map (a
    /// squeeze-and-excitation scale). x * HardSigmoid(x; 1/6, 1/2), as exporters before opset 14
    /// write HardSwish, becomes one HardSwish.
    fn mul_acts(&mut self, cx: &Ctx) -> PResult<()> {
        let (a, sa, pa) = self.act(cx, 0)?;
        let (b, sb, pb) = self.act(cx, 1)?;
        for (x, gate, producer, i) in [(&a, &b, pb, 1), (&b, &a, pa, 0)] {
            let Some(idx) = producer else { continue };
            let n = &self.nodes[idx];
            let sole_reader = self.input_name(cx, i).is_some_and(|name| self.uses.get(name).copied() == Some(1));
            if let Op::Activation(Activation::HardSigmoid { alpha, beta }) = n.op
                && (alpha - 1.0 / 6.0).abs() < 1e-6
                && beta == 0.5
                && n.inputs[0] == *x
                && n.output == *gate
                && sole_reader
            {
                // the gate node becomes the HardSwish and takes this node's name and output
                let Some(output) = cx.node.output.first().filter(|o| !o.is_empty()).cloned() else {
                    return Err(self.invalid(cx, "the node has no output"));
                };
                let name = self.fresh_node_name(&cx.label);
                let node = &mut self.nodes[idx];
                node.op = Op::Activation(Activation::HardSwish);
                node.name = name;
                node.output = output.clone();
                self.ir_shapes.insert(output.clone(), sa);
                self.values.insert(
                    output.clone(),
                    Value::Act {
                        tensor: output,
                        shape: sa,
                        producer: None,
                    },
                );
                return Ok(());
            }
        }
        if penni_model::graph::mul_shape(sa, sb).is_none() {
            return unsupported(format!(
                "Mul of run-time tensors of shapes {sa} and {sb}; they must have one shape, or one must be C x 1 x 1"
            ));
        }
        self.emit(cx, Op::Mul, vec![a, b], BTreeMap::new(), false)
    }

    /// ONNX Softmax / LogSoftmax. From opset 13 they normalise along `axis` (default -1); before,
    /// over everything from `axis` (default 1) on, as one row of a 2-D matrix. Both cover
    /// penni's softmax over the channels (or a vector's features) in these cases only.
    fn softmax(&mut self, cx: &Ctx, log: bool) -> PResult<()> {
        let (x, s, _) = self.act(cx, 0)?;
        let rank = if matches!(s, Shape::Map { .. }) { 4 } else { 2 };
        let per_axis = self.opset >= 13;
        let axis = attr_int(self, cx, "axis")?.unwrap_or(if per_axis { -1 } else { 1 });
        let axis = self.axis_index(cx, axis, rank, "axis")?;
        let over_channels = match s {
            Shape::Vector(_) => axis == 1,
            Shape::Map { h, w, .. } => axis == 1 && (per_axis || h * w == 1),
        };
        if !over_channels {
            return unsupported(format!(
                "{} over axis {axis} of a {s} tensor{}; only the softmax over the channels (axis 1) is supported",
                cx.op,
                if per_axis {
                    ""
                } else {
                    " (before opset 13: over all axes from it on)"
                }
            ));
        }
        self.emit(cx, Op::Softmax { log }, vec![x], BTreeMap::new(), false)
    }

    /// ONNX Shape (with opset-15 start/end): the input's dimensions, the first one being the
    /// run-time batch size for an activation with a symbolic batch.
    fn shape(&mut self, cx: &Ctx) -> PResult<()> {
        let dims: Vec<Dim> = match self.value_of_input(cx, 0)? {
            Value::Act { shape, .. } => {
                let rest = match shape {
                    Shape::Map { c, h, w } => vec![c, h, w],
                    Shape::Vector(n) => vec![n],
                };
                std::iter::once(self.batch.map_or(Dim::Batch, Dim::Known))
                    .chain(rest.into_iter().map(|d| Dim::Known(d as i64)))
                    .collect()
            }
            Value::Const(c) => c.dims.iter().map(|&d| Dim::Known(d as i64)).collect(),
            Value::Dims { scalar: true, .. } => vec![],
            Value::Dims { dims, .. } => vec![Dim::Known(dims.len() as i64)],
            Value::Poisoned => return unsupported("input comes from an unsupported node"),
        };
        let r = dims.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let start = clamp(attr_int(self, cx, "start")?.unwrap_or(0));
        let end = clamp(attr_int(self, cx, "end")?.unwrap_or(r));
        let out = if start < end { dims[start..end].to_vec() } else { vec![] };
        self.set_output(cx, dims_value(false, out));
        Ok(())
    }

    /// ONNX Gather with constant indices, on a constant (folded) or on a shape.
    fn gather(&mut self, cx: &Ctx) -> PResult<()> {
        let axis = attr_int(self, cx, "axis")?.unwrap_or(0);
        let idx = self.required_constant(cx, 1, "indices")?;
        let Some(iv) = idx.i64s() else {
            return Err(self.invalid(cx, "the indices must be an integer tensor"));
        };
        let data = self.value_of_input(cx, 0)?;
        let rank = match &data {
            Value::Const(c) => c.dims.len(),
            Value::Dims { scalar, .. } => usize::from(!scalar),
            Value::Act { .. } => {
                return unsupported("Gather of a run-time tensor (an embedding lookup or a selection of channels) is not supported");
            }
            Value::Poisoned => return unsupported("input comes from an unsupported node"),
        };
        if rank == 0 {
            return Err(self.invalid(cx, "Gather needs data of rank 1 or more, got a scalar"));
        }
        let a = self.axis_index(cx, axis, rank, "axis")?;
        let n = match &data {
            Value::Const(c) => c.dims[a],
            Value::Dims { dims, .. } => dims.len(),
            _ => unreachable!(),
        };
        let picks = iv
            .iter()
            .map(|&i| {
                let j = if i < 0 { i + n as i64 } else { i };
                if (0..n as i64).contains(&j) {
                    Ok(j as usize)
                } else {
                    Err(self.invalid(cx, format!("index {i} is out of range for a dimension of {n}")))
                }
            })
            .collect::<PResult<Vec<usize>>>()?;
        match data {
            Value::Dims { dims, .. } => {
                if idx.dims.len() > 1 {
                    return unsupported(format!(
                        "Gather of a shape with indices of shape {:?}; only scalar or 1-D indices are supported",
                        idx.dims
                    ));
                }
                let out = picks.iter().map(|&p| dims[p]).collect();
                self.set_output(cx, dims_value(idx.dims.is_empty(), out));
            }
            Value::Const(c) => {
                let outer: usize = c.dims[..a].iter().product();
                let inner: usize = c.dims[a + 1..].iter().product();
                let numel = outer.checked_mul(picks.len()).and_then(|v| v.checked_mul(inner));
                self.fold_budget(cx, numel)?;
                let mut dims = c.dims[..a].to_vec();
                dims.extend(&idx.dims);
                dims.extend(&c.dims[a + 1..]);
                fn pick<T: Copy>(v: &[T], outer: usize, n: usize, inner: usize, picks: &[usize]) -> Vec<T> {
                    let mut out = Vec::with_capacity(outer * picks.len() * inner);
                    for o in 0..outer {
                        for &p in picks {
                            let at = (o * n + p) * inner;
                            out.extend_from_slice(&v[at..at + inner]);
                        }
                    }
                    out
                }
                let data = match &c.data {
                    Data::F32(v) => Data::F32(pick(v, outer, n, inner, &picks)),
                    Data::I64(v) => Data::I64(pick(v, outer, n, inner, &picks)),
                };
                self.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
            }
            _ => unreachable!(),
        }
        Ok(())
    }

    /// ONNX Unsqueeze (axes an attribute before opset 13, an input from 13) on a constant or a
    /// shape scalar.
    fn unsqueeze(&mut self, cx: &Ctx) -> PResult<()> {
        let Some(axes) = self.axes(cx, 13, 1)? else {
            return Err(self.invalid(cx, "axes is missing"));
        };
        let v = self.value_of_input(cx, 0)?;
        let in_rank = match &v {
            Value::Const(c) => c.dims.len(),
            Value::Dims { scalar, .. } => usize::from(!scalar),
            Value::Act { .. } => {
                return unsupported("Unsqueeze of a run-time tensor is not supported");
            }
            Value::Poisoned => return unsupported("input comes from an unsupported node"),
        };
        let out_rank = in_rank + axes.len();
        let set = self.axis_set(cx, &axes, out_rank)?;
        match v {
            Value::Const(c) => {
                let mut rest = c.dims.iter();
                let dims = (0..out_rank)
                    .map(|i| if set.contains(&i) { 1 } else { *rest.next().unwrap() })
                    .collect();
                self.set_output(
                    cx,
                    Value::Const(Rc::new(Const {
                        dims,
                        data: c.data.clone(),
                    })),
                );
            }
            Value::Dims { dims, .. } if out_rank == 1 => {
                self.set_output(cx, Value::Dims { scalar: false, dims });
            }
            _ => {
                return unsupported(format!("Unsqueeze of a shape to rank {out_rank}; shapes are scalars or vectors"));
            }
        }
        Ok(())
    }

    /// ONNX Squeeze (axes an attribute before opset 13, an optional input from 13) on a
    /// constant or a shape.
    fn squeeze(&mut self, cx: &Ctx) -> PResult<()> {
        let axes = self.axes(cx, 13, 1)?;
        let v = self.value_of_input(cx, 0)?;
        let dims: Vec<usize> = match &v {
            Value::Const(c) => c.dims.clone(),
            Value::Dims { scalar: true, .. } => vec![],
            Value::Dims { dims, .. } => vec![dims.len()],
            Value::Act { .. } => {
                return unsupported("Squeeze of a run-time tensor is not supported");
            }
            Value::Poisoned => return unsupported("input comes from an unsupported node"),
        };
        let drop: Vec<usize> = match axes {
            Some(a) => {
                let set = self.axis_set(cx, &a, dims.len())?;
                if let Some(&i) = set.iter().find(|&&i| dims[i] != 1) {
                    return Err(self.invalid(cx, format!("axis {i} has size {}; only axes of size 1 can be squeezed", dims[i])));
                }
                set
            }
            None => (0..dims.len()).filter(|&i| dims[i] == 1).collect(),
        };
        let out: Vec<usize> = (0..dims.len()).filter(|i| !drop.contains(i)).map(|i| dims[i]).collect();
        let value = match v {
            Value::Const(c) => Value::Const(Rc::new(Const {
                dims: out,
                data: c.data.clone(),
            })),
            Value::Dims { dims, .. } => Value::Dims {
                scalar: out.is_empty(),
                dims,
            },
            _ => unreachable!(),
        };
        self.set_output(cx, value);
        Ok(())
    }

    /// Concat of run-time tensors along the channels of feature maps (or the features of
    /// vectors): Inception branches, DenseNet and SqueezeNet blocks.
    fn concat_acts(&mut self, cx: &Ctx, axis: i64, parts: Vec<Value>) -> PResult<()> {
        let mut inputs = Vec::with_capacity(parts.len());
        let mut shapes = Vec::with_capacity(parts.len());
        for (i, p) in parts.into_iter().enumerate() {
            match p {
                Value::Act { tensor, shape, .. } => {
                    inputs.push(tensor);
                    shapes.push(shape);
                }
                _ => {
                    return unsupported(format!("input #{i} is a constant concatenated with run-time tensors"));
                }
            }
        }
        let rank = if matches!(shapes[0], Shape::Map { .. }) { 4 } else { 2 };
        if self.axis_index(cx, axis, rank, "axis")? != 1 {
            return unsupported(format!(
                "Concat along axis {axis} of {} tensors; only along the channels (axis 1) is supported",
                shapes[0]
            ));
        }
        self.emit(cx, Op::Concat, inputs, BTreeMap::new(), false)
    }

    /// ONNX Concat: of run-time tensors (see `concat_acts`), of constants (folded) or of shape
    /// vectors (a Reshape target being built).
    fn concat(&mut self, cx: &Ctx) -> PResult<()> {
        let Some(axis) = attr_int(self, cx, "axis")? else {
            return Err(self.invalid(cx, "the axis attribute is missing"));
        };
        let mut parts = Vec::new();
        for i in 0..cx.node.input.len() {
            match self.value_of_input(cx, i)? {
                Value::Poisoned => return unsupported("input comes from an unsupported node"),
                v => parts.push(v),
            }
        }
        if parts.iter().any(|p| matches!(p, Value::Act { .. })) {
            return self.concat_acts(cx, axis, parts);
        }
        if parts.is_empty() {
            return Err(self.invalid(cx, "has no inputs"));
        }
        if parts.iter().any(|p| matches!(p, Value::Dims { .. })) {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                match p {
                    Value::Dims { scalar: false, dims } => out.extend(dims),
                    Value::Const(c) if c.dims.len() == 1 && c.i64s().is_some() => {
                        out.extend(c.i64s().unwrap().iter().map(|&v| Dim::Known(v)));
                    }
                    _ => {
                        return Err(self.invalid(cx, format!("input #{i} cannot be concatenated with a 1-D shape")));
                    }
                }
            }
            self.axis_index(cx, axis, 1, "axis")?;
            self.set_output(cx, dims_value(false, out));
            return Ok(());
        }
        let consts: Vec<Rc<Const>> = parts
            .into_iter()
            .map(|p| match p {
                Value::Const(c) => c,
                _ => unreachable!(),
            })
            .collect();
        let first = &consts[0];
        let rank = first.dims.len();
        if rank == 0 {
            return Err(self.invalid(cx, "Concat of scalars"));
        }
        let a = self.axis_index(cx, axis, rank, "axis")?;
        let fits =
            |c: &Const| c.dims.len() == rank && c.is_float() == first.is_float() && (0..rank).all(|d| d == a || c.dims[d] == first.dims[d]);
        if let Some(c) = consts.iter().find(|c| !fits(c)) {
            return Err(self.invalid(
                cx,
                format!(
                    "cannot concatenate {:?} and {:?} (or float and integer tensors) along axis {a}",
                    first.dims, c.dims
                ),
            ));
        }
        let total: usize = consts.iter().map(|c| c.dims[a]).sum();
        let outer: usize = first.dims[..a].iter().product();
        let inner: usize = first.dims[a + 1..].iter().product();
        let numel = outer.checked_mul(total).and_then(|v| v.checked_mul(inner));
        self.fold_budget(cx, numel)?;
        let mut dims = first.dims.clone();
        dims[a] = total;
        // per outer index, each part's slab of dims[a] * inner values in turn
        fn interleave<T: Copy>(parts: &[(&[T], usize)], outer: usize, cap: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(cap);
            for o in 0..outer {
                for &(v, len) in parts {
                    out.extend_from_slice(&v[o * len..(o + 1) * len]);
                }
            }
            out
        }
        let cap = numel.unwrap_or(0);
        let data = if first.is_float() {
            let parts: Vec<(&[f32], usize)> = consts
                .iter()
                .map(|c| match &c.data {
                    Data::F32(v) => (v.as_slice(), c.dims[a] * inner),
                    Data::I64(_) => unreachable!(),
                })
                .collect();
            Data::F32(interleave(&parts, outer, cap))
        } else {
            let parts: Vec<(&[i64], usize)> = consts
                .iter()
                .map(|c| match &c.data {
                    Data::I64(v) => (v.as_slice(), c.dims[a] * inner),
                    Data::F32(_) => unreachable!(),
                })
                .collect();
            Data::I64(interleave(&parts, outer, cap))
        };
        self.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
        Ok(())
    }

    /// ONNX Cast (and CastLike, with the type of its second input) to a float or integer type:
    /// folded on constants, the identity on float activations and on integer shapes.
    fn cast(&mut self, cx: &Ctx, to: i32) -> PResult<()> {
        let float = match to {
            dt::FLOAT | dt::DOUBLE => true,
            dt::INT64 | dt::INT32 | dt::INT16 | dt::INT8 | dt::UINT64 | dt::UINT32 | dt::UINT16 | dt::UINT8 | dt::BOOL => false,
            other => {
                return unsupported(format!("Cast to {} is not supported (penni computes in float32)", dt::name(other)));
            }
        };
        let out = match self.value_of_input(cx, 0)? {
            Value::Act { tensor, shape, .. } if float => Value::Act {
                tensor,
                shape,
                producer: None,
            },
            Value::Act { .. } => {
                return unsupported(format!("Cast of a run-time tensor to {} is not supported", dt::name(to)));
            }
            Value::Dims { .. } if float => {
                return unsupported(format!("Cast of a shape that {BATCH_DEPENDENT} to a float type"));
            }
            v @ Value::Dims { .. } => v,
            Value::Const(c) => {
                let data = if float {
                    Data::F32(c.f32s())
                } else {
                    let ints: Vec<i64> = match &c.data {
                        // float -> integer truncates toward zero (NaN becomes 0)
                        Data::F32(v) if to == dt::BOOL => v.iter().map(|x| (*x != 0.0) as i64).collect(),
                        Data::F32(v) => v.iter().map(|x| x.trunc() as i64).collect(),
                        Data::I64(v) => v.clone(),
                    };
                    Data::I64(ints.into_iter().map(|v| wrap_int(v, to)).collect())
                };
                Value::Const(Rc::new(Const {
                    dims: c.dims.clone(),
                    data,
                }))
            }
            Value::Poisoned => return unsupported("input comes from an unsupported node"),
        };
        self.set_output(cx, out);
        Ok(())
    }

    /// ONNX Expand (numpy-style broadcast to a shape) of a constant, folded.
    fn expand(&mut self, cx: &Ctx) -> PResult<()> {
        let (_, target) = self.int_values(cx, 1, "shape")?;
        let c = match self.value_of_input(cx, 0)? {
            Value::Const(c) => c,
            Value::Act { .. } => {
                return unsupported("Expand of a run-time tensor is not supported");
            }
            Value::Dims { .. } => {
                return unsupported(format!("Expand of a shape that {BATCH_DEPENDENT}"));
            }
            Value::Poisoned => return unsupported("input comes from an unsupported node"),
        };
        let mut shape = Vec::with_capacity(target.len());
        for d in &target {
            match d {
                Dim::Known(v) if *v >= 0 => shape.push(*v as usize),
                Dim::Known(v) => {
                    return Err(self.invalid(cx, format!("the shape has a negative dimension {v}")));
                }
                Dim::Batch => {
                    return unsupported(format!("Expand to a shape that {BATCH_DEPENDENT}"));
                }
            }
        }
        let rank = c.dims.len().max(shape.len());
        let pad = |d: &[usize]| -> Vec<usize> {
            let mut v = vec![1; rank - d.len()];
            v.extend(d);
            v
        };
        let (from, want) = (pad(&c.dims), pad(&shape));
        let mut dims = Vec::with_capacity(rank);
        for (&a, &b) in from.iter().zip(&want) {
            dims.push(match (a, b) {
                _ if a == b || b == 1 => a,
                (1, _) => b,
                _ => {
                    return Err(self.invalid(cx, format!("cannot broadcast {:?} to {shape:?}", c.dims)));
                }
            });
        }
        let numel = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        self.fold_budget(cx, numel)?;
        let n = numel.unwrap_or(0);
        // source index of every output element: strides of the input, 0 along broadcast axes
        let mut strides = vec![0usize; rank];
        let mut acc = 1;
        for ax in (0..rank).rev() {
            strides[ax] = if from[ax] == 1 { 0 } else { acc };
            acc *= from[ax];
        }
        let mut src = Vec::with_capacity(n);
        let mut idx = vec![0usize; rank];
        for _ in 0..n {
            src.push(idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>());
            for ax in (0..rank).rev() {
                idx[ax] += 1;
                if idx[ax] < dims[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        let data = match &c.data {
            Data::F32(v) => Data::F32(src.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(src.iter().map(|&i| v[i]).collect()),
        };
        self.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
        Ok(())
    }
}

/// An integer as the ONNX integer type `to` would hold it (two's-complement wrap-around).
fn wrap_int(v: i64, to: i32) -> i64 {
    match to {
        dt::INT32 => v as i32 as i64,
        dt::INT16 => v as i16 as i64,
        dt::INT8 => v as i8 as i64,
        dt::UINT32 => v as u32 as i64,
        dt::UINT16 => v as u16 as i64,
        dt::UINT8 => v as u8 as i64,
        dt::BOOL => (v != 0) as i64,
        _ => v,
    }
}

fn strip_producer(v: Value) -> Value {
    match v {
        Value::Act { tensor, shape, .. } => Value::Act {
            tensor,
            shape,
            producer: None,
        },
        other => other,
    }
}

fn model_name(g: &GraphProto, fallback: &str) -> String {
    if !g.name.is_empty() {
        return g.name.clone();
    }
    let stem = std::path::Path::new(fallback)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    if stem.is_empty() { "onnx_model".into() } else { stem }
}

fn op_label(n: &NodeProto) -> String {
    if n.domain.is_empty() || n.domain == "ai.onnx" {
        n.op_type.clone()
    } else {
        format!("{}.{}", n.domain, n.op_type)
    }
}

/// Node names for messages and IR nodes: the ONNX name, or `OpType_#index` for unnamed nodes.
fn node_labels(g: &GraphProto) -> Vec<String> {
    g.node
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if n.name.is_empty() {
                format!("{}_#{i}", n.op_type)
            } else {
                n.name.clone()
            }
        })
        .collect()
}

/// Kahn's algorithm, preferring file order; on a cycle returns the nodes that never became ready.
fn topo_order(g: &GraphProto, producer: &HashMap<&str, usize>) -> Result<Vec<usize>, Vec<usize>> {
    let n = g.node.len();
    let mut indeg = vec![0usize; n];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in g.node.iter().enumerate() {
        for inp in node.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producer.get(inp.as_str()) {
                indeg[i] += 1;
                consumers[p].push(i);
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &c in &consumers[i] {
            indeg[c] -= 1;
            if indeg[c] == 0 {
                ready.push(Reverse(c));
            }
        }
    }
    if order.len() == n {
        Ok(order)
    } else {
        Err((0..n).filter(|&i| indeg[i] > 0).take(20).collect())
    }
}

/// ONNX Reshape on a constant: 0 copies a dimension (unless allowzero), one -1 is inferred.
fn resolve_reshape(dims: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    let numel: usize = dims.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(
                *dims
                    .get(i)
                    .ok_or_else(|| format!("target {target:?}: 0 at axis {i} has no input dimension to copy"))?,
            ),
            t if t >= 0 => out.push(usize::try_from(t).map_err(|_| format!("target dimension {t} is too large"))?),
            _ => return Err(format!("target shape {target:?} is invalid")),
        }
    }
    if out.iter().try_fold(1usize, |a, &d| a.checked_mul(d.max(1))).is_none() {
        return Err(format!("target shape {target:?} overflows"));
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer_at {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(format!("cannot reshape {dims:?} to {target:?}"));
        }
        out[i] = numel / known;
    } else if known != numel {
        return Err(format!("cannot reshape {dims:?} ({numel} values) to {target:?}"));
    }
    Ok(out)
}

/// Output shape of an IR op, with the same rules as `Model::validate` (which has the final
/// word), computed here so later nodes can be converted (auto_pad, Reshape, Gemm sizes).
fn infer(op: &Op, ins: &[Shape]) -> Result<Shape, String> {
    let map = |s: Shape| match s {
        Shape::Map { c, h, w } => Ok((c, h, w)),
        Shape::Vector(n) => Err(format!("expects a C x H x W feature map, got a vector of {n}")),
    };
    let conv = |in_ch: usize, out_ch: usize, k: [usize; 2], s: [usize; 2], p: [usize; 4], d: [usize; 2]| -> Result<Shape, String> {
        let (c, h, w) = map(ins[0])?;
        if c != in_ch {
            return Err(format!("expects {in_ch} input channels, got {c}"));
        }
        let oh = window_out(h, k[0], s[0], p[0], p[2], d[0], false);
        let ow = window_out(w, k[1], s[1], p[1], p[3], d[1], false);
        match (oh, ow) {
            (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok(Shape::Map { c: out_ch, h: oh, w: ow }),
            _ => Err(format!(
                "kernel {k:?} (dilation {d:?}) does not fit the {h}x{w} input with padding {p:?}"
            )),
        }
    };
    match op {
        Op::Conv2d(c) => conv(c.in_channels, c.out_channels, c.kernel, c.stride, c.padding, c.dilation),
        Op::DecomposedConv2d(c) => conv(
            c.conv.in_channels,
            c.conv.out_channels,
            c.conv.kernel,
            c.conv.stride,
            c.conv.padding,
            c.conv.dilation,
        ),
        Op::BatchNorm2d { .. } | Op::Relu | Op::Clip { .. } | Op::Softmax { .. } | Op::Activation(_) => Ok(ins[0]),
        Op::Pad { pads } => {
            let (c, h, w) = map(ins[0])?;
            Ok(Shape::Map {
                c,
                h: h + pads[0] + pads[2],
                w: w + pads[1] + pads[3],
            })
        }
        Op::Mul => penni_model::graph::mul_shape(ins[0], ins[1]).ok_or_else(|| format!("cannot multiply {} by {}", ins[0], ins[1])),
        Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
            let (c, h, w) = map(ins[0])?;
            if p.padding[0] >= p.kernel[0] || p.padding[1] >= p.kernel[1] || p.padding[2] >= p.kernel[0] || p.padding[3] >= p.kernel[1] {
                return Err(format!("padding {:?} must be smaller than the kernel {:?}", p.padding, p.kernel));
            }
            let oh = window_out(h, p.kernel[0], p.stride[0], p.padding[0], p.padding[2], 1, p.ceil_mode);
            let ow = window_out(w, p.kernel[1], p.stride[1], p.padding[1], p.padding[3], 1, p.ceil_mode);
            match (oh, ow) {
                (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok(Shape::Map { c, h: oh, w: ow }),
                _ => Err(format!("pooling window {:?} does not fit the {h}x{w} input", p.kernel)),
            }
        }
        Op::GlobalAvgPool => {
            let (c, _, _) = map(ins[0])?;
            Ok(Shape::Map { c, h: 1, w: 1 })
        }
        Op::Add => Ok(ins[0]),
        Op::Concat => penni_model::graph::concat_shape(ins).ok_or_else(|| {
            let list: Vec<String> = ins.iter().map(|s| s.to_string()).collect();
            format!("inputs of shapes {} do not stack along the channels", list.join(", "))
        }),
        Op::Flatten => Ok(Shape::Vector(ins[0].numel())),
        Op::Linear { out_features, .. } => Ok(Shape::Vector(*out_features)),
    }
}

fn attr<'a>(cx: &'a Ctx, name: &str) -> Option<&'a AttributeProto> {
    cx.node.attribute.iter().find(|a| a.name == name)
}

fn wrong_type(imp: &Importer, cx: &Ctx, name: &str, want: &str) -> OnnxError {
    OnnxError::InvalidNode {
        name: imp.name.clone(),
        node: cx.label.clone(),
        op: cx.op.clone(),
        message: format!("attribute '{name}' must be {want}"),
    }
}

fn attr_int(imp: &Importer, cx: &Ctx, name: &str) -> Result<Option<i64>, OnnxError> {
    match attr(cx, name) {
        None => Ok(None),
        Some(a) if a.r#type == at::INT || a.r#type == at::UNDEFINED => Ok(Some(a.i)),
        Some(_) => Err(wrong_type(imp, cx, name, "an integer")),
    }
}

fn attr_ints(imp: &Importer, cx: &Ctx, name: &str) -> Result<Option<Vec<i64>>, OnnxError> {
    match attr(cx, name) {
        None => Ok(None),
        Some(a) if a.r#type == at::INTS || a.r#type == at::UNDEFINED => Ok(Some(a.ints.clone())),
        Some(_) => Err(wrong_type(imp, cx, name, "a list of integers")),
    }
}

fn attr_float(imp: &Importer, cx: &Ctx, name: &str) -> Result<Option<f32>, OnnxError> {
    match attr(cx, name) {
        None => Ok(None),
        Some(a) if a.r#type == at::FLOAT || a.r#type == at::UNDEFINED => Ok(Some(a.f)),
        Some(_) => Err(wrong_type(imp, cx, name, "a float")),
    }
}

fn attr_string(imp: &Importer, cx: &Ctx, name: &str) -> Result<Option<String>, OnnxError> {
    match attr(cx, name) {
        None => Ok(None),
        Some(a) if a.r#type == at::STRING || a.r#type == at::UNDEFINED => Ok(Some(String::from_utf8_lossy(&a.s).into_owned())),
        Some(_) => Err(wrong_type(imp, cx, name, "a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_resolution() {
        assert_eq!(resolve_reshape(&[2, 3, 4], &[0, -1], false).unwrap(), vec![2, 12]);
        assert_eq!(resolve_reshape(&[2, 3, 4], &[-1], false).unwrap(), vec![24]);
        assert!(resolve_reshape(&[2, 3, 4], &[5, -1], false).is_err());
        assert!(resolve_reshape(&[2, 3, 4], &[-1, -1], false).is_err());
        assert!(resolve_reshape(&[2, 3, 4], &[0, 0, 0, 0], false).is_err());
        assert!(resolve_reshape(&[4], &[-1, 0], true).is_err());
    }
}
