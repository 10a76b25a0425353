use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::tensor::Tensor;

/// Hyper-parameters of an ordinary 2-D convolution. Padding is (top, left, bottom, right) so that
/// asymmetric ONNX/TensorFlow paddings are representable without an extra pad layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub bias: bool,
}

/// A PENNI convolution: every kernel w[n, c] is a combination of `num_bases` shared basis kernels,
/// w[n, c] = sum_j coefficients[n * C/groups + c, j] * bases[j]. Parameters: `bases` (d x kh*kw),
/// `coefficients` (N*C/groups x d, pruned entries are exactly zero), optional `bias` (N).
/// Its geometry is the dense conv's it replaces; in files its fields sit beside `num_bases`.
///
/// With `basis_quant` (an `Activation::QuantizeDequantize`, per tensor) the layer computes in
/// two stages, as an integer engine does: the basis maps m[c, j] = x[c] * bases[j] (every input
/// channel with every basis), quantized and dequantized, then y[n] = sum over (c, j) of
/// coefficients[n, c, j] m[c, j] + bias ([`crate::stages::split_decomposed`] spells it out).
/// Without it the layer is the dense conv of its combined kernels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecomposedConv2d {
    #[serde(flatten)]
    pub conv: Conv2d,
    pub num_bases: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis_quant: Option<Activation>,
}

impl DecomposedConv2d {
    /// The PENNI form of `conv` with `num_bases` bases per layer (basis maps in f32).
    pub fn from_conv(conv: &Conv2d, num_bases: usize) -> Self {
        DecomposedConv2d {
            conv: *conv,
            num_bases,
            basis_quant: None,
        }
    }
}

impl Conv2d {
    /// Input channels seen by each output channel.
    pub fn channels_per_group(&self) -> usize {
        self.in_channels / self.groups.max(1)
    }

    /// Output height and width for an `h` x `w` input; `None` when the kernel does not fit.
    pub fn output_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let oh = window_out(
            h,
            self.kernel[0],
            self.stride[0],
            self.padding[0],
            self.padding[2],
            self.dilation[0],
            false,
        )?;
        let ow = window_out(
            w,
            self.kernel[1],
            self.stride[1],
            self.padding[1],
            self.padding[3],
            self.dilation[1],
            false,
        )?;
        (oh > 0 && ow > 0).then_some((oh, ow))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 4],
    #[serde(default)]
    pub ceil_mode: bool,
    /// Average pooling only: whether zero padding counts in the divisor.
    #[serde(default)]
    pub count_include_pad: bool,
}

/// Element-wise functions besides ReLU and clip (which the engine fuses into convs): the
/// activations, and the quantize-dequantize round trip of a quantized activation tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// clamp(alpha * x + beta, 0, 1)
    HardSigmoid { alpha: f32, beta: f32 },
    /// x * clamp(x / 6 + 1/2, 0, 1) (MobileNet-v3)
    HardSwish,
    /// x for x >= 0, alpha * x below
    LeakyRelu { alpha: f32 },
    /// (clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale, rounding half
    /// to even: ONNX's QuantizeLinear followed by DequantizeLinear, per tensor. The tensor an
    /// integer engine would store, as the f32 values it stands for; 0 maps to 0 exactly.
    QuantizeDequantize { scale: f32, zero_point: i32, qmin: i32, qmax: i32 },
}

impl Activation {
    pub fn apply(&self, x: f32) -> f32 {
        match *self {
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Activation::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Activation::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Activation::QuantizeDequantize {
                scale,
                zero_point,
                qmin,
                qmax,
            } => {
                let q = ((x / scale).round_ties_even() + zero_point as f32).clamp(qmin as f32, qmax as f32);
                (q - zero_point as f32) * scale
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Activation::Sigmoid => "Sigmoid",
            Activation::HardSigmoid { .. } => "HardSigmoid",
            Activation::HardSwish => "HardSwish",
            Activation::LeakyRelu { .. } => "LeakyReLU",
            Activation::QuantizeDequantize { .. } => "QuantizeDequantize",
        }
    }

    /// What is wrong with the parameters, if anything.
    fn param_problem(&self) -> Option<String> {
        let finite = match *self {
            Activation::HardSigmoid { alpha, beta } => alpha.is_finite() && beta.is_finite(),
            Activation::LeakyRelu { alpha } => alpha.is_finite(),
            Activation::QuantizeDequantize {
                scale,
                zero_point,
                qmin,
                qmax,
            } => {
                if !(scale.is_finite() && scale > 0.0) {
                    return Some(format!("quantization scale must be a finite number > 0, got {scale}"));
                }
                if qmin >= qmax || !(qmin..=qmax).contains(&zero_point) {
                    return Some(format!(
                        "quantization range [{qmin}, {qmax}] must be non-empty and hold the zero point {zero_point}"
                    ));
                }
                true
            }
            _ => true,
        };
        (!finite).then(|| format!("{self:?} has a non-finite parameter"))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    Conv2d(Conv2d),
    DecomposedConv2d(DecomposedConv2d),
    BatchNorm2d {
        channels: usize,
        eps: f32,
    },
    Relu,
    /// Element-wise clamp to [min, max] (ReLU6 is Clip { min: 0, max: 6 }).
    Clip {
        min: f32,
        max: f32,
    },
    Activation(Activation),
    /// Element-wise product of two tensors of one shape, or of a feature map and a C x 1 x 1
    /// map broadcast over its pixels (squeeze-and-excitation, SiLU as x * sigmoid(x)).
    Mul,
    /// Zero padding of a feature map on the spatial axes: (top, left, bottom, right). Front ends
    /// emit it for an explicit pad op; `passes::fold_pads` merges it into the convs that read it,
    /// and only the reference forward pass runs what is left.
    Pad {
        pads: [usize; 4],
    },
    MaxPool2d(Pool2d),
    AvgPool2d(Pool2d),
    GlobalAvgPool,
    /// Element-wise sum of all inputs (residual connections).
    Add,
    /// The inputs stacked along the channels (feature maps of one size) or the features
    /// (vectors), in input order: Inception branches, DenseNet and SqueezeNet blocks.
    Concat,
    Flatten,
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    /// Softmax over the channels: of each pixel for a feature map, of the whole vector for a
    /// vector. `log` gives log-softmax. Usually the last node of a classifier.
    Softmax {
        log: bool,
    },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "Conv2d",
            Op::DecomposedConv2d(_) => "DecomposedConv2d",
            Op::BatchNorm2d { .. } => "BatchNorm2d",
            Op::Relu => "ReLU",
            Op::Clip { .. } => "Clip",
            Op::Activation(a) => a.name(),
            Op::Mul => "Mul",
            Op::Pad { .. } => "Pad",
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::Add => "Add",
            Op::Concat => "Concat",
            Op::Flatten => "Flatten",
            Op::Linear { .. } => "Linear",
            Op::Softmax { log: false } => "Softmax",
            Op::Softmax { log: true } => "LogSoftmax",
        }
    }

    /// The parameters this op owns, with the shape each must have. The single source of truth
    /// for validation, file loading and every consumer that walks parameters.
    pub fn param_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        match self {
            Op::Conv2d(c) => {
                let mut v = vec![("weight", vec![c.out_channels, c.channels_per_group(), c.kernel[0], c.kernel[1]])];
                if c.bias {
                    v.push(("bias", vec![c.out_channels]));
                }
                v
            }
            Op::DecomposedConv2d(c) => {
                let mut v = vec![
                    ("bases", vec![c.num_bases, c.conv.kernel[0].saturating_mul(c.conv.kernel[1])]),
                    (
                        "coefficients",
                        vec![c.conv.out_channels.saturating_mul(c.conv.channels_per_group()), c.num_bases],
                    ),
                ];
                if c.conv.bias {
                    v.push(("bias", vec![c.conv.out_channels]));
                }
                v
            }
            Op::BatchNorm2d { channels, .. } => vec![
                ("weight", vec![*channels]),
                ("bias", vec![*channels]),
                ("running_mean", vec![*channels]),
                ("running_var", vec![*channels]),
            ],
            Op::Linear {
                in_features,
                out_features,
                bias,
            } => {
                let mut v = vec![("weight", vec![*out_features, *in_features])];
                if *bias {
                    v.push(("bias", vec![*out_features]));
                }
                v
            }
            _ => vec![],
        }
    }

    fn expected_inputs(&self) -> Option<usize> {
        match self {
            Op::Add | Op::Concat => None,
            Op::Mul => Some(2),
            _ => Some(1),
        }
    }
}

/// One layer: reads named tensors, writes one named tensor, owns its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub output: String,
    pub params: BTreeMap<String, Tensor>,
}

impl Node {
    pub fn param(&self, name: &str) -> Result<&Tensor> {
        self.params.get(name).ok_or_else(|| ModelError::Param {
            node: self.name.clone(),
            param: name.into(),
            message: "missing".into(),
        })
    }

    pub fn param_mut(&mut self, name: &str) -> Result<&mut Tensor> {
        let node = self.name.clone();
        self.params.get_mut(name).ok_or(ModelError::Param {
            node,
            param: name.into(),
            message: "missing".into(),
        })
    }
}

/// The activation shape of one example (the batch dimension is implicit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// channels x height x width
    Map {
        c: usize,
        h: usize,
        w: usize,
    },
    Vector(usize),
}

/// Per-example activation size beyond which a model is rejected rather than run (16 GiB of f32).
pub const MAX_ACTIVATION: usize = 1 << 32;

impl Shape {
    pub fn numel_checked(&self) -> Option<usize> {
        match *self {
            Shape::Map { c, h, w } => crate::tensor::checked_numel(&[c, h, w]),
            Shape::Vector(n) => Some(n),
        }
    }

    pub fn numel(&self) -> usize {
        match *self {
            Shape::Map { c, h, w } => c * h * w,
            Shape::Vector(n) => n,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Map { c, h, w } => write!(f, "{c}x{h}x{w}"),
            Shape::Vector(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub name: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// A CNN as a list of nodes in execution (topological) order, one image input, one output.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub name: String,
    pub input: Input,
    pub nodes: Vec<Node>,
    pub output: String,
}

/// Output size of a sliding window along one axis; `None` when the window does not fit.
pub fn window_out(size: usize, kernel: usize, stride: usize, pad_lo: usize, pad_hi: usize, dilation: usize, ceil: bool) -> Option<usize> {
    let span = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    let padded = size.checked_add(pad_lo)?.checked_add(pad_hi)?;
    if padded < span || stride == 0 {
        return None;
    }
    let mut out = (padded - span) / stride + 1;
    // ceil_mode adds a partial window only if it starts inside the input or left padding (as PyTorch/ONNX).
    if ceil && (padded - span) % stride != 0 && (out * stride) < size + pad_lo {
        out += 1;
    }
    Some(out)
}

impl Model {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    pub fn input_shape(&self) -> Shape {
        Shape::Map {
            c: self.input.channels,
            h: self.input.height,
            w: self.input.width,
        }
    }

    /// Checks structure, parameters and shapes together; returns the shape of every tensor.
    /// Everything that loads or builds a model calls this, so the rest of penni can trust a Model.
    pub fn validate(&self) -> Result<HashMap<String, Shape>> {
        let mut names = HashSet::new();
        for node in &self.nodes {
            if node.name.is_empty() {
                return Err(ModelError::Graph("a node has an empty name".into()));
            }
            if !names.insert(node.name.as_str()) {
                return Err(ModelError::Graph(format!("two nodes are named '{}'", node.name)));
            }
            self.check_params(node)?;
        }
        self.infer_shapes()
    }

    fn check_params(&self, node: &Node) -> Result<()> {
        let expected = node.op.param_shapes();
        for (pname, shape) in &expected {
            let t = node.param(pname)?;
            if &t.shape != shape {
                return Err(ModelError::Param {
                    node: node.name.clone(),
                    param: pname.to_string(),
                    message: format!("shape {:?}, expected {:?}", t.shape, shape),
                });
            }
            if Some(t.data.len()) != crate::tensor::checked_numel(shape) {
                return Err(ModelError::Param {
                    node: node.name.clone(),
                    param: pname.to_string(),
                    message: format!("{} values for shape {:?}", t.data.len(), shape),
                });
            }
            if !t.is_finite() {
                return Err(ModelError::Param {
                    node: node.name.clone(),
                    param: pname.to_string(),
                    message: "contains NaN or infinite values".into(),
                });
            }
        }
        if let Some(extra) = node.params.keys().find(|k| !expected.iter().any(|(p, _)| p == k)) {
            return Err(ModelError::Param {
                node: node.name.clone(),
                param: extra.clone(),
                message: format!("not a parameter of {}", node.op.kind()),
            });
        }
        if let Op::BatchNorm2d { .. } = node.op
            && node.params["running_var"].data.iter().any(|v| *v < 0.0)
        {
            return Err(ModelError::Param {
                node: node.name.clone(),
                param: "running_var".into(),
                message: "negative variance".into(),
            });
        }
        Ok(())
    }

    /// Shapes of every tensor (input, each node output). Nodes must be in topological order:
    /// an input that no earlier node produced is reported (this also catches cycles).
    pub fn infer_shapes(&self) -> Result<HashMap<String, Shape>> {
        let mut shapes = HashMap::new();
        let (c, h, w) = (self.input.channels, self.input.height, self.input.width);
        if c == 0 || h == 0 || w == 0 || crate::tensor::checked_numel(&[c, h, w]).is_none_or(|n| n > MAX_ACTIVATION) {
            return Err(ModelError::Graph(format!(
                "input '{}' has a zero dimension {c}x{h}x{w}",
                self.input.name
            )));
        }
        shapes.insert(self.input.name.clone(), self.input_shape());
        for node in &self.nodes {
            let mut ins = Vec::with_capacity(node.inputs.len());
            for name in &node.inputs {
                match shapes.get(name) {
                    Some(s) => ins.push(*s),
                    None => {
                        return Err(shape_err(
                            node,
                            format!(
                                "input '{name}' is not produced by the model input or any earlier node (dangling name, wrong order or a cycle)"
                            ),
                        ));
                    }
                }
            }
            let out = node_output_shape(node, &ins)?;
            if out.numel_checked().is_none_or(|n| n > MAX_ACTIVATION) {
                return Err(shape_err(
                    node,
                    format!("output {out} is larger than {MAX_ACTIVATION} values per example"),
                ));
            }
            if shapes.insert(node.output.clone(), out).is_some() {
                return Err(shape_err(node, format!("output '{}' is written twice", node.output)));
            }
        }
        if !shapes.contains_key(&self.output) {
            return Err(ModelError::Graph(format!(
                "model output '{}' is not produced by any node",
                self.output
            )));
        }
        Ok(shapes)
    }

    pub fn output_shape(&self) -> Result<Shape> {
        Ok(self.infer_shapes()?[&self.output])
    }

    /// The scale of every tensor a quantize-dequantize node writes: what an integer layer
    /// reading it multiplies by (the bias grid of `penni quantize` and the ONNX export read it).
    pub fn activation_scales(&self) -> HashMap<String, f32> {
        self.nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::Activation(Activation::QuantizeDequantize { scale, .. }) => Some((n.output.clone(), scale)),
                _ => None,
            })
            .collect()
    }

    /// The nodes that read a tensor.
    pub fn consumers(&self, tensor: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].inputs.iter().any(|n| n == tensor))
            .collect()
    }

    /// The node that writes a tensor (`None` for the model input).
    pub fn producer(&self, tensor: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.output == tensor)
    }

    /// `base`, or `base.1`, `base.2`, ...: the first that no node and no tensor of the model
    /// is called (for nodes and tensors a rewrite adds).
    pub fn unused_name(&self, base: &str) -> String {
        let taken = |s: &str| s == self.input.name || self.nodes.iter().any(|n| n.name == s || n.output == s);
        let mut name = base.to_string();
        let mut k = 1;
        while taken(&name) {
            name = format!("{base}.{k}");
            k += 1;
        }
        name
    }
}

fn shape_err(node: &Node, message: String) -> ModelError {
    ModelError::Shape {
        node: node.name.clone(),
        message,
    }
}

fn expect_map(node: &Node, s: Shape) -> Result<(usize, usize, usize)> {
    match s {
        Shape::Map { c, h, w } => Ok((c, h, w)),
        Shape::Vector(n) => Err(shape_err(node, format!("expects a CxHxW feature map, got a vector of {n}"))),
    }
}

fn positive(node: &Node, what: &str, v: &[usize]) -> Result<()> {
    if v.contains(&0) {
        return Err(shape_err(node, format!("{what} must be positive, got {v:?}")));
    }
    Ok(())
}

fn conv_out(node: &Node, input: Shape, conv: &Conv2d) -> Result<Shape> {
    let Conv2d {
        in_channels: in_ch,
        out_channels: out_ch,
        kernel,
        stride,
        padding,
        dilation,
        groups,
        ..
    } = *conv;
    let (c, h, w) = expect_map(node, input)?;
    positive(node, "kernel", &kernel)?;
    positive(node, "stride", &stride)?;
    positive(node, "dilation", &dilation)?;
    positive(node, "channels and groups", &[in_ch, out_ch, groups])?;
    if c != in_ch {
        return Err(shape_err(node, format!("expects {in_ch} input channels, got {c}")));
    }
    if !in_ch.is_multiple_of(groups) || !out_ch.is_multiple_of(groups) {
        return Err(shape_err(
            node,
            format!("groups {groups} must divide in ({in_ch}) and out ({out_ch}) channels"),
        ));
    }
    match conv.output_hw(h, w) {
        Some((oh, ow)) => Ok(Shape::Map { c: out_ch, h: oh, w: ow }),
        None => Err(shape_err(
            node,
            format!("kernel {kernel:?} (dilation {dilation:?}) does not fit the {h}x{w} input with padding {padding:?}"),
        )),
    }
}

/// The shape of a concat: feature maps of one size stacked along the channels, or vectors;
/// `None` when the inputs do not stack (or there are none).
pub fn concat_shape(ins: &[Shape]) -> Option<Shape> {
    let mut total = 0usize;
    for s in ins {
        let c = match (ins.first()?, s) {
            (Shape::Map { h, w, .. }, Shape::Map { c, h: h2, w: w2 }) if h == h2 && w == w2 => *c,
            (Shape::Vector(_), Shape::Vector(n)) => *n,
            _ => return None,
        };
        total = total.checked_add(c)?;
    }
    Some(match *ins.first()? {
        Shape::Map { h, w, .. } => Shape::Map { c: total, h, w },
        Shape::Vector(_) => Shape::Vector(total),
    })
}

/// The shape of a product: equal shapes, or a feature map and a C x 1 x 1 map (either side).
pub fn mul_shape(a: Shape, b: Shape) -> Option<Shape> {
    match (a, b) {
        _ if a == b => Some(a),
        (Shape::Map { c, .. }, Shape::Map { c: c2, h: 1, w: 1 }) if c == c2 => Some(a),
        (Shape::Map { c, h: 1, w: 1 }, Shape::Map { c: c2, .. }) if c == c2 => Some(b),
        _ => None,
    }
}

pub fn node_output_shape(node: &Node, ins: &[Shape]) -> Result<Shape> {
    if let Some(n) = node.op.expected_inputs()
        && ins.len() != n
    {
        return Err(shape_err(node, format!("expects {n} input(s), got {}", ins.len())));
    }
    match &node.op {
        Op::Conv2d(c) => conv_out(node, ins[0], c),
        Op::DecomposedConv2d(c) => {
            if c.num_bases == 0 {
                return Err(shape_err(node, "needs at least one basis".into()));
            }
            match &c.basis_quant {
                None => {}
                Some(q @ Activation::QuantizeDequantize { .. }) => {
                    if let Some(p) = q.param_problem() {
                        return Err(shape_err(node, format!("basis maps: {p}")));
                    }
                }
                Some(other) => {
                    return Err(shape_err(
                        node,
                        format!("basis maps can only be quantized (QuantizeDequantize), got {}", other.name()),
                    ));
                }
            }
            conv_out(node, ins[0], &c.conv)
        }
        Op::BatchNorm2d { channels, eps } => {
            let (c, _, _) = expect_map(node, ins[0])?;
            if c != *channels {
                return Err(shape_err(node, format!("expects {channels} channels, got {c}")));
            }
            if !(eps.is_finite() && *eps >= 0.0) {
                return Err(shape_err(node, format!("eps must be a finite non-negative number, got {eps}")));
            }
            Ok(ins[0])
        }
        Op::Relu | Op::Softmax { .. } => Ok(ins[0]),
        Op::Activation(a) => match a.param_problem() {
            Some(p) => Err(shape_err(node, p)),
            None => Ok(ins[0]),
        },
        Op::Mul => mul_shape(ins[0], ins[1]).ok_or_else(|| {
            shape_err(
                node,
                format!(
                    "cannot multiply {} by {}: shapes must match, or one must be C x 1 x 1 with the same C",
                    ins[0], ins[1]
                ),
            )
        }),
        Op::Clip { min, max } => {
            if min.is_nan() || max.is_nan() || min > max {
                return Err(shape_err(node, format!("clip range [{min}, {max}] is empty")));
            }
            Ok(ins[0])
        }
        Op::Pad { pads } => {
            let (c, h, w) = expect_map(node, ins[0])?;
            let grow = |size: usize, lo: usize, hi: usize| size.checked_add(lo)?.checked_add(hi);
            match (grow(h, pads[0], pads[2]), grow(w, pads[1], pads[3])) {
                (Some(h), Some(w)) => Ok(Shape::Map { c, h, w }),
                _ => Err(shape_err(node, format!("padding {pads:?} overflows the {h}x{w} map"))),
            }
        }
        Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
            let (c, h, w) = expect_map(node, ins[0])?;
            positive(node, "kernel", &p.kernel)?;
            positive(node, "stride", &p.stride)?;
            // a window made only of padding has no input to pool
            if p.padding[0].max(p.padding[2]) >= p.kernel[0] || p.padding[1].max(p.padding[3]) >= p.kernel[1] {
                return Err(shape_err(
                    node,
                    format!("padding {:?} larger than the kernel {:?}", p.padding, p.kernel),
                ));
            }
            let oh = window_out(h, p.kernel[0], p.stride[0], p.padding[0], p.padding[2], 1, p.ceil_mode);
            let ow = window_out(w, p.kernel[1], p.stride[1], p.padding[1], p.padding[3], 1, p.ceil_mode);
            match (oh, ow) {
                (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok(Shape::Map { c, h: oh, w: ow }),
                _ => Err(shape_err(
                    node,
                    format!(
                        "pooling window {:?} does not fit the {h}x{w} input (is the input image too small for this network? try padding it)",
                        p.kernel
                    ),
                )),
            }
        }
        Op::GlobalAvgPool => {
            let (c, _, _) = expect_map(node, ins[0])?;
            Ok(Shape::Map { c, h: 1, w: 1 })
        }
        Op::Add => {
            if ins.len() < 2 {
                return Err(shape_err(node, format!("expects at least 2 inputs, got {}", ins.len())));
            }
            if let Some(s) = ins.iter().find(|s| **s != ins[0]) {
                return Err(shape_err(node, format!("inputs have different shapes: {} and {s}", ins[0])));
            }
            Ok(ins[0])
        }
        Op::Concat => {
            if ins.is_empty() {
                return Err(shape_err(node, "expects at least 1 input, got 0".into()));
            }
            concat_shape(ins).ok_or_else(|| {
                let list: Vec<String> = ins.iter().map(|s| s.to_string()).collect();
                shape_err(node, format!("inputs {} do not stack along the channels", list.join(", ")))
            })
        }
        Op::Flatten => Ok(Shape::Vector(ins[0].numel())),
        Op::Linear {
            in_features, out_features, ..
        } => match ins[0] {
            Shape::Vector(n) if n == *in_features && *out_features > 0 => Ok(Shape::Vector(*out_features)),
            Shape::Vector(n) => Err(shape_err(node, format!("expects {in_features} features, got {n}"))),
            s => Err(shape_err(node, format!("expects a flat vector, got a {s} map (add a Flatten)"))),
        },
    }
}
