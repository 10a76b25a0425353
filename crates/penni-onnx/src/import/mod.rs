//! ONNX -> penni IR. The importer walks the graph once in topological order and maps each ONNX
//! value to either a run-time activation (an IR tensor with a known per-example shape) or a
//! constant (initializers, Constant nodes and everything folded from them). Problems the IR cannot
//! express are collected, not thrown, so the user sees all of them in one `UnsupportedModel`
//! error; a malformed file stops at the first problem with a specific error.
//!
//! This file is the driver (graph checks, the walk, the IR passes at the end); `registry` holds
//! the one table of operators, each with its attributes and converter, and the converters live
//! by op family (`conv`, `norm`, `pool`, `arith`, `linear`, `quant`, `shape`, `fold`) on top of the
//! accessors in `context`. Shape rules are the IR's (`penni_model::graph::node_output_shape`);
//! rewrites that span nodes (a Pad into its Conv, x * HardSigmoid(x) into HardSwish) are the
//! IR's passes (`penni_model::passes`).

mod arith;
mod context;
mod conv;
mod fold;
mod linear;
mod norm;
mod pool;
mod quant;
mod registry;
mod shape;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::rc::Rc;

use penni_model::{Input, Model, Node, Op, Shape, passes};
use prost::Message;

use crate::error::{Issue, OnnxError};
use crate::proto::{GraphProto, ModelProto, NodeProto, TensorProto, data_type as dt};
use crate::tensor::{Const, Data};

pub use registry::SUPPORTED_OPS;

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
    /// IR node name -> the ONNX node it came from, for problems found after the IR passes.
    onnx_label: HashMap<String, String>,
    /// Outputs of QuantizeLinear nodes on run-time tensors -> their scale and zero point, which
    /// the DequantizeLinear nodes reading them must repeat.
    quantized: HashMap<String, (f32, i64)>,
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
            onnx_label: HashMap::new(),
            quantized: HashMap::new(),
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
            let def = registry::check_static(self, &cx, &mut static_issues)?;
            let poisoned = !static_issues.is_empty() || node.input.iter().any(|s| matches!(self.values.get(s), Some(Value::Poisoned)));
            if let Some(def) = def.filter(|_| !poisoned) {
                match (def.convert)(self, &cx) {
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
        // Without an input nothing was emitted from the image, so there is nothing to rewrite
        // (and there is already an issue saying why).
        let model = input.map(|input| {
            let mut model = Model {
                name: model_name(g, &self.name),
                input,
                nodes: std::mem::take(&mut self.nodes),
                output,
            };
            passes::fuse_hard_swish(&mut model);
            passes::fold_pads(&mut model);
            self.report_unfolded_pads(&model);
            model
        });
        if !self.issues.is_empty() {
            return Err(OnnxError::UnsupportedModel {
                name: self.name.clone(),
                issues: std::mem::take(&mut self.issues),
            });
        }
        let Some(model) = model else {
            return Err(self.malformed("the model has no input"));
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

    /// The engine runs no standalone Pad, so one that `fold_pads` could not merge into the convs
    /// reading it is reported here, at import, rather than when the model is run.
    fn report_unfolded_pads(&mut self, model: &Model) {
        for n in model.nodes.iter().filter(|n| matches!(n.op, Op::Pad { .. })) {
            let readers: Vec<String> = model
                .consumers(&n.output)
                .into_iter()
                .map(|r| {
                    let r = &model.nodes[r];
                    format!("'{}' ({})", self.onnx_label.get(&r.name).unwrap_or(&r.name), r.op.kind())
                })
                .collect();
            let what = if n.output == model.output {
                "its output is the model output".to_string()
            } else {
                format!("its output '{}' is read by {}", n.output, readers.join(", "))
            };
            self.issues.push(Issue {
                node: self.onnx_label.get(&n.name).unwrap_or(&n.name).clone(),
                op: "Pad".into(),
                message: format!("{what}; a zero Pad is only supported right before a Conv, which takes it as its padding"),
            });
        }
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
