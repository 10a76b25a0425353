//! Element-wise ops: ReLU, Clip, the activations, Add/Sum, and Mul/Sub/Div with a per-channel
//! constant (an exact affine map) or of two run-time tensors (Mul only).

use std::collections::BTreeMap;
use std::rc::Rc;

use penni_model::batchnorm::Affine;
use penni_model::graph::mul_shape;
use penni_model::{Activation, Op, Shape, Tensor};

use super::context::{attr_float, attr_int};
use super::{BATCH_DEPENDENT, Ctx, Importer, PResult, Value, unsupported};
use crate::tensor::{Const, Data};

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

pub(super) fn relu(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (x, _, _) = imp.act(cx, 0)?;
    imp.emit(cx, Op::Relu, vec![x], BTreeMap::new(), false)
}

pub(super) fn mul(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    arith(imp, cx, Arith::Mul)
}

pub(super) fn sub(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    arith(imp, cx, Arith::Sub)
}

pub(super) fn div(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    arith(imp, cx, Arith::Div)
}

pub(super) fn clip(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (x, _, _) = imp.act(cx, 0)?;
    let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
    if imp.opset < 11 {
        lo = attr_float(imp, cx, "min")?.unwrap_or(lo);
        hi = attr_float(imp, cx, "max")?.unwrap_or(hi);
    } else {
        for (i, slot) in [(1, &mut lo), (2, &mut hi)] {
            if let Some(t) = imp.constant(cx, i, if i == 1 { "min" } else { "max" })? {
                if t.numel() != 1 {
                    return Err(imp.invalid(cx, format!("clip bound #{i} has {} values; it must be a scalar", t.numel())));
                }
                *slot = t.f32s()[0];
            }
        }
    }
    if lo.is_nan() || hi.is_nan() {
        return Err(imp.invalid(cx, "a clip bound is NaN"));
    }
    // ONNX: when min > max every value becomes max, which is clamp(max, max).
    let lo = lo.min(hi);
    imp.emit(cx, Op::Clip { min: lo, max: hi }, vec![x], BTreeMap::new(), false)
}

fn activation(imp: &mut Importer, cx: &Ctx, a: Activation) -> PResult<()> {
    let (x, _, _) = imp.act(cx, 0)?;
    imp.emit(cx, Op::Activation(a), vec![x], BTreeMap::new(), false)
}

pub(super) fn sigmoid(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    activation(imp, cx, Activation::Sigmoid)
}

pub(super) fn hard_swish(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    activation(imp, cx, Activation::HardSwish)
}

pub(super) fn hard_sigmoid(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let alpha = attr_float(imp, cx, "alpha")?.unwrap_or(0.2);
    let beta = attr_float(imp, cx, "beta")?.unwrap_or(0.5);
    activation(imp, cx, Activation::HardSigmoid { alpha, beta })
}

pub(super) fn leaky_relu(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let alpha = attr_float(imp, cx, "alpha")?.unwrap_or(0.01);
    activation(imp, cx, Activation::LeakyRelu { alpha })
}

pub(super) fn add(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let mut acts = Vec::new();
    let mut consts = Vec::new();
    for i in 0..cx.node.input.len() {
        match imp.value_of_input(cx, i)? {
            Value::Act { tensor, shape, producer } => acts.push((tensor, shape, producer, cx.node.input[i].clone())),
            Value::Const(c) => consts.push(c),
            Value::Dims { .. } => {
                return unsupported(format!("input #{i} is a shape that {BATCH_DEPENDENT}"));
            }
            Value::Poisoned => return unsupported("input comes from an unsupported node"),
        }
    }
    if acts.is_empty() && consts.is_empty() {
        return Err(imp.invalid(cx, "has no inputs"));
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
        imp.set_output(
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
            imp.set_output(
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
        return imp.emit(cx, Op::Add, inputs, BTreeMap::new(), false);
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
        for (slot, v) in per_channel.iter_mut().zip(channel_values(imp, cx, c, shape, "added to")?) {
            *slot += v;
        }
    }
    // Fold into the bias of the Conv/Gemm/MatMul that produced the tensor, when nothing else reads it.
    let sole_reader = imp.uses.get(onnx_name.as_str()).copied() == Some(1);
    if let Some(idx) = producer.filter(|_| sole_reader) {
        let node = &mut imp.nodes[idx];
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
            imp.set_output(
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
    emit_affine(imp, cx, tensor, vec![1.0; channels], per_channel)
}

/// y = scale * x + shift per channel of a feature map, as a batchnorm with zero mean, unit
/// variance and eps 0 (exact).
fn emit_affine(imp: &mut Importer, cx: &Ctx, tensor: String, scale: Vec<f32>, shift: Vec<f32>) -> PResult<()> {
    let channels = scale.len();
    let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
    let params = Affine {
        scale: widen(scale),
        shift: widen(shift),
    }
    .to_batchnorm_params();
    imp.emit(cx, Op::BatchNorm2d { channels, eps: 0.0 }, vec![tensor], params, false)
}

/// The values of a constant operand of an element-wise op, one per channel of the
/// activation `shape` it meets: it must broadcast along batch and space only (a scalar, C,
/// C x 1 x 1, 1 x C x 1 x 1; opset-6 `broadcast`/`axis` honoured).
fn channel_values(imp: &Importer, cx: &Ctx, c: &Const, shape: Shape, what: &str) -> PResult<Vec<f32>> {
    let (rank, channels) = match shape {
        Shape::Map { c, .. } => (4, c),
        Shape::Vector(n) => (2, n),
    };
    let legacy_axis = if imp.opset < 7 && attr_int(imp, cx, "broadcast")?.unwrap_or(0) != 0 {
        attr_int(imp, cx, "axis")?
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
            return Err(imp.invalid(cx, format!("broadcast axis {a} does not fit a constant of shape {:?}", c.dims)));
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
fn arith(imp: &mut Importer, cx: &Ctx, op: Arith) -> PResult<()> {
    if cx.node.input.len() != 2 {
        return Err(imp.invalid(cx, format!("has {} inputs, expected 2", cx.node.input.len())));
    }
    let (a, b) = (imp.value_of_input(cx, 0)?, imp.value_of_input(cx, 1)?);
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
                            None => return Err(imp.invalid(cx, format!("integer {} of {a} and {b} is undefined", cx.op))),
                        }
                    }
                    Data::I64(out)
                }
                _ => {
                    let (xv, yv) = (x.f32s(), y.f32s());
                    Data::F32((0..nx.max(ny)).map(|i| op.apply(xv[idx(nx, i)], yv[idx(ny, i)])).collect())
                }
            };
            imp.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
            return Ok(());
        }
        (Value::Act { tensor, shape, .. }, Value::Const(k)) => (tensor, shape, k, true),
        (Value::Const(k), Value::Act { tensor, shape, .. }) => (tensor, shape, k, false),
        (Value::Act { .. }, Value::Act { .. }) if matches!(op, Arith::Mul) => return mul_acts(imp, cx),
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
    let k = channel_values(imp, cx, &k, shape, "combined with")?;
    // y = scale * x + shift
    let (scale, shift): (Vec<f32>, Vec<f32>) = match (op, act_first) {
        (Arith::Mul, _) => (k, vec![0.0; channels]),
        (Arith::Sub, true) => (vec![1.0; channels], k.iter().map(|v| -v).collect()),
        (Arith::Sub, false) => (vec![-1.0; channels], k),
        (Arith::Div, true) => {
            if k.contains(&0.0) {
                return Err(imp.invalid(cx, "divides by a constant that has zeros"));
            }
            (k.iter().map(|v| 1.0 / v).collect(), vec![0.0; channels])
        }
        (Arith::Div, false) => return unsupported("divides a constant by a run-time tensor"),
    };
    if scale.iter().chain(&shift).any(|v| !v.is_finite()) {
        return Err(imp.invalid(cx, "its constant gives a non-finite scale or shift"));
    }
    emit_affine(imp, cx, tensor, scale, shift)
}

/// Mul of two run-time tensors: of one shape, or a feature map and a C x 1 x 1 map (a
/// squeeze-and-excitation scale). x * HardSigmoid(x; 1/6, 1/2), as exporters before opset 14
/// write HardSwish, becomes one HardSwish in `passes::fuse_hard_swish` after conversion.
fn mul_acts(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (a, sa, _) = imp.act(cx, 0)?;
    let (b, sb, _) = imp.act(cx, 1)?;
    if mul_shape(sa, sb).is_none() {
        return unsupported(format!(
            "Mul of run-time tensors of shapes {sa} and {sb}; they must have one shape, or one must be C x 1 x 1"
        ));
    }
    imp.emit(cx, Op::Mul, vec![a, b], BTreeMap::new(), false)
}
