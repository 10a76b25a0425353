//! An IR model as burn tensors. The graph stays in the IR: forward walks `Model::nodes`, and the
//! tensors here are only the parameters (flattened to 1-D so one list holds every kind) and the
//! batchnorm running statistics. Writing back is the inverse, so the IR remains the one truth.

use std::collections::HashMap;

use burn::tensor::activation::{hard_sigmoid, hard_swish, leaky_relu, log_softmax, relu, sigmoid, softmax};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions, PadMode};
use burn::tensor::{Device, Tensor, TensorData};
use penni_model::{Activation, Model, Node, Op};

use crate::error::{Result, TrainError};
use crate::ops;

/// What a parameter is, for the rules that treat kinds differently (L1, alternation, masks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Conv or linear weight.
    Weight,
    Bias,
    Bases,
    Coefficients,
    /// Batchnorm scale and shift.
    Norm,
}

pub struct ParamSlot {
    pub node: usize,
    pub name: String,
    pub kind: ParamKind,
    pub shape: Vec<usize>,
}

/// Running statistics of one batchnorm node (not trained by gradient).
struct BnState {
    mean: Tensor<1>,
    var: Tensor<1>,
}

pub struct Net {
    pub slots: Vec<ParamSlot>,
    /// Parameter values, on the autodiff device while training.
    pub values: Vec<Tensor<1>>,
    index: HashMap<(usize, String), usize>,
    bn: HashMap<usize, BnState>,
    pub bn_momentum: f64,
}

pub(crate) fn to_tensor(data: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(data.to_vec(), [data.len()]), device)
}

pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("tensors here are f32")
}

fn kind_of(op: &Op, name: &str) -> ParamKind {
    match (op, name) {
        (Op::BatchNorm2d { .. }, _) => ParamKind::Norm,
        (_, "bias") => ParamKind::Bias,
        (_, "bases") => ParamKind::Bases,
        (_, "coefficients") => ParamKind::Coefficients,
        _ => ParamKind::Weight,
    }
}

/// A forward-pass value: a feature map (N, C, H, W) or a flat batch (N, F).
#[derive(Clone)]
enum Act {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

impl Net {
    /// Copies the model's parameters to `device` (plain, not tracking gradients).
    pub fn from_model(model: &Model, device: &Device) -> Self {
        let mut slots = vec![];
        let mut values = vec![];
        let mut index = HashMap::new();
        let mut bn = HashMap::new();
        for (i, node) in model.nodes.iter().enumerate() {
            for (pname, shape) in node.op.param_shapes() {
                if matches!(node.op, Op::BatchNorm2d { .. }) && (pname == "running_mean" || pname == "running_var") {
                    continue;
                }
                index.insert((i, pname.to_string()), slots.len());
                values.push(to_tensor(&node.params[pname].data, device));
                slots.push(ParamSlot {
                    node: i,
                    name: pname.to_string(),
                    kind: kind_of(&node.op, pname),
                    shape,
                });
            }
            if let Op::BatchNorm2d { .. } = node.op {
                bn.insert(
                    i,
                    BnState {
                        mean: to_tensor(&node.params["running_mean"].data, device),
                        var: to_tensor(&node.params["running_var"].data, device),
                    },
                );
            }
        }
        Self {
            slots,
            values,
            index,
            bn,
            bn_momentum: 0.1,
        }
    }

    fn p(&self, node: usize, name: &str) -> Tensor<1> {
        self.values[self.index[&(node, name.to_string())]].clone()
    }

    fn p4(&self, node: usize, name: &str, shape: [usize; 4]) -> Tensor<4> {
        self.p(node, name).reshape(shape)
    }

    /// Writes parameters and running statistics back into a copy of `model`.
    pub fn to_model(&self, model: &Model) -> Model {
        let mut out = model.clone();
        for (slot, value) in self.slots.iter().zip(&self.values) {
            let t = out.nodes[slot.node].params.get_mut(&slot.name).expect("slot from this model");
            t.data = to_vec(value.clone().inner());
        }
        for (i, st) in &self.bn {
            let params = &mut out.nodes[*i].params;
            params.get_mut("running_mean").expect("bn").data = to_vec(st.mean.clone());
            params.get_mut("running_var").expect("bn").data = to_vec(st.var.clone());
        }
        out
    }

    /// The model's forward pass. `train` selects batch statistics for batchnorm (and updates
    /// the running statistics) instead of the running statistics.
    pub fn forward(&mut self, model: &Model, x: Tensor<4>, train: bool) -> Result<Tensor<2>> {
        self.run(model, x, train, false)
    }

    /// What the cross-entropy loss takes: the output, or the input of a final softmax (the
    /// loss applies log-softmax itself; a final log-softmax passes, as it is idempotent there).
    pub fn logits(&mut self, model: &Model, x: Tensor<4>, train: bool) -> Result<Tensor<2>> {
        self.run(model, x, train, true)
    }

    fn run(&mut self, model: &Model, x: Tensor<4>, train: bool, skip_final_softmax: bool) -> Result<Tensor<2>> {
        let last = model.producer(&model.output);
        let skip = skip_final_softmax && last.is_some_and(|i| matches!(model.nodes[i].op, Op::Softmax { log: false }));
        let output = if skip {
            model.nodes[last.expect("checked")].inputs[0].as_str()
        } else {
            model.output.as_str()
        };
        let mut env: HashMap<&str, Act> = HashMap::new();
        env.insert(model.input.name.as_str(), Act::Map(x));
        // Free each activation after its last reader so memory stays flat on deep nets.
        let mut remaining: HashMap<&str, usize> = HashMap::new();
        for node in &model.nodes {
            for i in &node.inputs {
                *remaining.entry(i.as_str()).or_default() += 1;
            }
        }
        for (i, node) in model.nodes.iter().enumerate() {
            if skip && Some(i) == last {
                continue;
            }
            let ins: Vec<Act> = node.inputs.iter().map(|n| env[n.as_str()].clone()).collect();
            for n in &node.inputs {
                let r = remaining.get_mut(n.as_str()).expect("counted");
                *r -= 1;
                if *r == 0 && n != output {
                    env.remove(n.as_str());
                }
            }
            let y = self.node_forward(i, node, ins, train)?;
            env.insert(node.output.as_str(), y);
        }
        match env.remove(output) {
            Some(Act::Flat(t)) => Ok(t),
            Some(Act::Map(t)) => {
                let [n, c, h, w] = t.dims();
                Ok(t.reshape([n, c * h * w]))
            }
            None => Err(TrainError::Model(format!("output '{output}' was not computed"))),
        }
    }

    fn node_forward(&mut self, i: usize, node: &Node, mut ins: Vec<Act>, train: bool) -> Result<Act> {
        let unsupported = |what: &str| TrainError::Model(format!("node '{}': {what}", node.name));
        let map = |a: Act| match a {
            Act::Map(t) => Ok(t),
            Act::Flat(_) => Err(unsupported("expects a feature map")),
        };
        Ok(match &node.op {
            Op::Conv2d(c) => {
                let w = self.p4(i, "weight", [c.out_channels, c.in_channels / c.groups, c.kernel[0], c.kernel[1]]);
                let b = c.bias.then(|| self.p(i, "bias"));
                let opts = ConvOptions::new_with_padding(
                    c.stride,
                    [(c.padding[0], c.padding[2]), (c.padding[1], c.padding[3])],
                    c.dilation,
                    c.groups,
                );
                Act::Map(ops::conv2d(map(ins.remove(0))?, w, b, opts))
            }
            Op::DecomposedConv2d(c @ penni_model::DecomposedConv2d { basis_quant: Some(q), .. }) => {
                // quantized basis maps: the two stages, fake-quantized between them
                let (cin, d, [kh, kw]) = (c.conv.in_channels, c.num_bases, c.conv.kernel);
                let bases = self
                    .p(i, "bases")
                    .reshape([1, d, kh, kw])
                    .repeat_dim(0, cin)
                    .reshape([cin * d, 1, kh, kw]);
                let basis = ConvOptions::new_with_padding(
                    c.conv.stride,
                    [(c.conv.padding[0], c.conv.padding[2]), (c.conv.padding[1], c.conv.padding[3])],
                    c.conv.dilation,
                    cin,
                );
                let maps = ops::conv2d(map(ins.remove(0))?, bases, None, basis);
                let maps = activate(*q, maps);
                let coef = self
                    .p(i, "coefficients")
                    .reshape([c.conv.out_channels, cin / c.conv.groups * d, 1, 1]);
                let b = c.conv.bias.then(|| self.p(i, "bias"));
                let combine = ConvOptions::new([1, 1], [0, 0], [1, 1], c.conv.groups);
                Act::Map(ops::conv2d(maps, coef, b, combine))
            }
            Op::DecomposedConv2d(c) => {
                let cg = c.conv.in_channels / c.conv.groups;
                let coef = self.p(i, "coefficients").reshape([c.conv.out_channels * cg, c.num_bases]);
                let bases = self.p(i, "bases").reshape([c.num_bases, c.conv.kernel[0] * c.conv.kernel[1]]);
                let w = coef
                    .matmul(bases)
                    .reshape([c.conv.out_channels, cg, c.conv.kernel[0], c.conv.kernel[1]]);
                let b = c.conv.bias.then(|| self.p(i, "bias"));
                let opts = ConvOptions::new_with_padding(
                    c.conv.stride,
                    [(c.conv.padding[0], c.conv.padding[2]), (c.conv.padding[1], c.conv.padding[3])],
                    c.conv.dilation,
                    c.conv.groups,
                );
                Act::Map(ops::conv2d(map(ins.remove(0))?, w, b, opts))
            }
            Op::BatchNorm2d { channels, eps } => {
                let x = map(ins.remove(0))?;
                if x.dims()[1] != *channels {
                    return Err(unsupported("batchnorm channel count differs from its input's"));
                }
                let (gamma, beta) = (self.p(i, "weight"), self.p(i, "bias"));
                let st = self.bn.get_mut(&i).expect("bn state");
                if train {
                    let [n, _, h, w] = x.dims();
                    let (y, mean, var) = ops::batch_norm_train(x, gamma, beta, *eps as f64);
                    let count = (n * h * w) as f64;
                    let m = self.bn_momentum;
                    let unbiased = count / (count - 1.0).max(1.0);
                    st.mean = st.mean.clone() * (1.0 - m) + mean.inner() * m;
                    st.var = st.var.clone() * (1.0 - m) + var.inner() * (m * unbiased);
                    Act::Map(y)
                } else {
                    let (mean, var) = (st.mean.clone(), st.var.clone());
                    Act::Map(burn::tensor::module::batch_norm(x, gamma, beta, mean, var, *eps as f64))
                }
            }
            Op::Relu => match ins.remove(0) {
                Act::Map(t) => Act::Map(relu(t)),
                Act::Flat(t) => Act::Flat(relu(t)),
            },
            Op::Clip { min, max } => match ins.remove(0) {
                Act::Map(t) => Act::Map(t.clamp(*min, *max)),
                Act::Flat(t) => Act::Flat(t.clamp(*min, *max)),
            },
            Op::MaxPool2d(p) => {
                let opts = MaxPoolOptions {
                    kernel_size: p.kernel,
                    stride: p.stride,
                    padding: [(p.padding[0], p.padding[2]), (p.padding[1], p.padding[3])],
                    dilation: [1, 1],
                    ceil_mode: p.ceil_mode,
                };
                Act::Map(burn::tensor::module::max_pool2d(map(ins.remove(0))?, opts))
            }
            Op::AvgPool2d(p) => {
                let opts = AvgPoolOptions {
                    kernel_size: p.kernel,
                    stride: p.stride,
                    padding: [(p.padding[0], p.padding[2]), (p.padding[1], p.padding[3])],
                    count_include_pad: p.count_include_pad,
                    ceil_mode: p.ceil_mode,
                };
                Act::Map(burn::tensor::module::avg_pool2d(map(ins.remove(0))?, opts))
            }
            Op::Pad { pads } => Act::Map(map(ins.remove(0))?.pad([(pads[0], pads[2]), (pads[1], pads[3])], PadMode::Constant(0.0))),
            Op::GlobalAvgPool => Act::Map(map(ins.remove(0))?.mean_dim(2).mean_dim(3)),
            Op::Add => {
                let mut it = ins.into_iter();
                let first = it.next().ok_or_else(|| unsupported("add without inputs"))?;
                it.try_fold(first, |acc, x| match (acc, x) {
                    (Act::Map(a), Act::Map(b)) => Ok(Act::Map(a + b)),
                    (Act::Flat(a), Act::Flat(b)) => Ok(Act::Flat(a + b)),
                    _ => Err(unsupported("adds a feature map to a vector")),
                })?
            }
            Op::Activation(a) => match ins.remove(0) {
                Act::Map(t) => Act::Map(activate(*a, t)),
                Act::Flat(t) => Act::Flat(activate(*a, t)),
            },
            // burn broadcasts a C x 1 x 1 factor over the pixels
            Op::Mul => match (ins.remove(0), ins.remove(0)) {
                (Act::Map(a), Act::Map(b)) => Act::Map(a * b),
                (Act::Flat(a), Act::Flat(b)) => Act::Flat(a * b),
                _ => return Err(unsupported("multiplies a feature map by a vector")),
            },
            // over dim 1: the channels of a map, the features of a vector
            Op::Softmax { log } => match (ins.remove(0), log) {
                (Act::Map(t), true) => Act::Map(log_softmax(t, 1)),
                (Act::Map(t), false) => Act::Map(softmax(t, 1)),
                (Act::Flat(t), true) => Act::Flat(log_softmax(t, 1)),
                (Act::Flat(t), false) => Act::Flat(softmax(t, 1)),
            },
            Op::Concat => {
                if ins.iter().all(|a| matches!(a, Act::Map(_))) {
                    Act::Map(Tensor::cat(ins.into_iter().map(map).collect::<Result<Vec<_>>>()?, 1))
                } else {
                    let flat = |a: Act| match a {
                        Act::Flat(t) => Ok(t),
                        Act::Map(_) => Err(unsupported("concatenates a feature map with a vector")),
                    };
                    Act::Flat(Tensor::cat(ins.into_iter().map(flat).collect::<Result<Vec<_>>>()?, 1))
                }
            }
            Op::Flatten => match ins.remove(0) {
                Act::Map(t) => {
                    let [n, c, h, w] = t.dims();
                    Act::Flat(t.reshape([n, c * h * w]))
                }
                flat => flat,
            },
            Op::Linear {
                in_features,
                out_features,
                bias,
            } => {
                let x = match ins.remove(0) {
                    Act::Flat(t) => t,
                    Act::Map(_) => return Err(unsupported("linear layer needs a flattened input")),
                };
                let w = self.p(i, "weight").reshape([*out_features, *in_features]);
                let y = x.matmul(w.transpose());
                Act::Flat(if *bias {
                    y + self.p(i, "bias").reshape([1, *out_features])
                } else {
                    y
                })
            }
        })
    }
}

fn activate<const D: usize>(a: Activation, t: Tensor<D>) -> Tensor<D> {
    match a {
        Activation::Sigmoid => sigmoid(t),
        Activation::HardSigmoid { alpha, beta } => hard_sigmoid(t, alpha as f64, beta as f64),
        Activation::HardSwish => hard_swish(t),
        Activation::LeakyRelu { alpha } => leaky_relu(t, alpha as f64),
        Activation::QuantizeDequantize {
            scale,
            zero_point,
            qmin,
            qmax,
        } => {
            // straight-through: the quantized values forward, the gradient of the clamp to the
            // representable range backward (1 inside, 0 outside)
            let (s, z) = (scale as f64, zero_point as f64);
            let inside = t.clone().clamp((qmin as f64 - z) * s, (qmax as f64 - z) * s);
            let q = (t
                .detach()
                .div_scalar(s)
                .round()
                .add_scalar(z)
                .clamp(qmin as f64, qmax as f64)
                .sub_scalar(z))
            .mul_scalar(s);
            inside.clone() + (q - inside.detach())
        }
    }
}
