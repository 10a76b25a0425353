//! QuantizeLinear and DequantizeLinear: the QDQ form of quantized models (onnxruntime's
//! `quantize_static`, PyTorch's and TensorFlow's QDQ exports). penni computes in f32 on the
//! values integers stand for, so:
//! - on constants both fold: an int8 weight behind a DequantizeLinear becomes the f32 weight
//!   it decodes to (which `.penni` then stores as integers again, losslessly);
//! - on a run-time tensor, a QuantizeLinear whose every reader is a DequantizeLinear with the
//!   same scale and zero point becomes one `Activation::QuantizeDequantize` (per tensor);
//! - anything that would leave an integer tensor at run time (a QuantizeLinear read by another
//!   op, a DequantizeLinear of an integer model input, per-channel activation scales, block
//!   quantization) is reported as unsupported.

use std::rc::Rc;

use penni_model::{Activation, Op};

use super::context::attr_int;
use super::{Ctx, Importer, PResult, Value, unsupported};
use crate::proto::data_type as dt;
use crate::tensor::{Const, Data};

/// The integer range of an ONNX quantized element type.
fn range_of(ty: i32) -> Option<(i32, i32)> {
    match ty {
        dt::UINT8 => Some((0, 255)),
        dt::INT8 => Some((-128, 127)),
        dt::UINT16 => Some((0, 65535)),
        dt::INT16 => Some((-32768, 32767)),
        // biases of integer convolutions (DequantizeLinear only, in practice)
        dt::INT32 => Some((i32::MIN, i32::MAX)),
        _ => None,
    }
}

/// The element type of a constant ONNX value: an initializer's or a Constant node's.
fn elem_type(imp: &Importer, name: &str) -> Option<i32> {
    if let Some(t) = imp.inits.get(name) {
        return Some(t.data_type);
    }
    imp.graph
        .node
        .iter()
        .find(|n| n.op_type == "Constant" && n.output.first().is_some_and(|o| o == name))
        .and_then(|n| n.attribute.iter().find(|a| a.name == "value"))
        .and_then(|a| a.t.as_ref())
        .map(|t| t.data_type)
}

/// Scale, zero point and integer range of a Q or DQ node (inputs 1 and 2), as per-axis lists
/// (length 1 for per tensor).
struct Params {
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    qmin: i32,
    qmax: i32,
}

fn params(imp: &mut Importer, cx: &Ctx) -> PResult<Params> {
    if attr_int(imp, cx, "block_size")?.is_some_and(|b| b != 0) {
        return unsupported("blocked quantization (block_size) is not supported");
    }
    let scale = imp.required_constant(cx, 1, "scale")?;
    let scales = imp.float_const(cx, &scale, "scale")?;
    if scales.is_empty() || scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(imp.invalid(cx, format!("the scale must hold finite numbers > 0, got {scales:?}")));
    }
    let zp = imp.constant(cx, 2, "zero point")?;
    let ty = match imp.input_name(cx, 2) {
        Some(name) => elem_type(imp, name).unwrap_or(dt::UNDEFINED),
        None => match attr_int(imp, cx, "output_dtype")? {
            Some(t) if t != 0 => t as i32,
            _ => dt::UINT8,
        },
    };
    let Some((qmin, qmax)) = range_of(ty) else {
        return unsupported(format!(
            "quantization to {} is not supported (penni reads 8-, 16- and 32-bit integers)",
            dt::name(ty)
        ));
    };
    let zero_points: Vec<i64> = match zp {
        Some(c) => match c.i64s() {
            Some(v) => v.to_vec(),
            None => return Err(imp.invalid(cx, "the zero point is not an integer tensor")),
        },
        None => vec![0; scales.len()],
    };
    if zero_points.len() != scales.len() || zero_points.iter().any(|z| !(qmin as i64..=qmax as i64).contains(z)) {
        return Err(imp.invalid(
            cx,
            format!(
                "the zero point {zero_points:?} does not fit {} or does not match the {} scale(s)",
                dt::name(ty),
                scales.len()
            ),
        ));
    }
    Ok(Params {
        scales,
        zero_points,
        qmin,
        qmax,
    })
}

/// The index into per-axis parameters of each element of a constant (`axis` of its dims).
fn per_axis(imp: &Importer, cx: &Ctx, c: &Const, p: &Params, axis: i64) -> PResult<Vec<usize>> {
    let n = c.numel();
    if p.scales.len() == 1 {
        return Ok(vec![0; n]);
    }
    let rank = c.dims.len();
    let a = imp.axis_index(cx, axis, rank, "axis")?;
    if c.dims[a] != p.scales.len() {
        return Err(imp.invalid(
            cx,
            format!("{} scales for axis {a} of a tensor of shape {:?}", p.scales.len(), c.dims),
        ));
    }
    let inner: usize = c.dims[a + 1..].iter().product();
    Ok((0..n).map(|i| (i / inner.max(1)) % c.dims[a]).collect())
}

pub(super) fn quantize_linear(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let p = params(imp, cx)?;
    let axis = attr_int(imp, cx, "axis")?.unwrap_or(1);
    match imp.value_of_input(cx, 0)? {
        Value::Const(c) => {
            let x = imp.float_const(cx, &c, "input")?;
            let at = per_axis(imp, cx, &c, &p, axis)?;
            let q = x
                .iter()
                .zip(at)
                .map(|(&v, k)| {
                    let z = p.zero_points[k] as f32;
                    ((v / p.scales[k]).round_ties_even() + z).clamp(p.qmin as f32, p.qmax as f32) as i64
                })
                .collect();
            imp.set_output(
                cx,
                Value::Const(Rc::new(Const {
                    dims: c.dims.clone(),
                    data: Data::I64(q),
                })),
            );
            Ok(())
        }
        Value::Act { tensor, .. } => {
            if p.scales.len() != 1 {
                return unsupported(
                    "per-channel quantization of a run-time tensor is not supported (penni quantizes activations per tensor)",
                );
            }
            let Some(out) = cx.node.output.first().filter(|o| !o.is_empty()) else {
                return Err(imp.invalid(cx, "the node has no output"));
            };
            // the integers must not escape: only DequantizeLinear may read them
            let other: Vec<&str> = imp
                .graph
                .node
                .iter()
                .filter(|n| n.input.iter().any(|i| i == out) && n.op_type != "DequantizeLinear")
                .map(|n| n.op_type.as_str())
                .collect();
            if !other.is_empty() || imp.graph.output.iter().any(|o| &o.name == out) {
                return unsupported(format!(
                    "its integer output '{out}' is read by {}; penni computes in f32 and imports a QuantizeLinear only when DequantizeLinear nodes read it",
                    if other.is_empty() {
                        "the graph output".to_string()
                    } else {
                        other.join(", ")
                    }
                ));
            }
            let q = Activation::QuantizeDequantize {
                scale: p.scales[0],
                zero_point: p.zero_points[0] as i32,
                qmin: p.qmin,
                qmax: p.qmax,
            };
            imp.quantized.insert(out.clone(), (p.scales[0], p.zero_points[0]));
            imp.emit(cx, Op::Activation(q), vec![tensor], Default::default(), false)
        }
        Value::Dims { .. } => unsupported("QuantizeLinear of a shape is not supported"),
        Value::Poisoned => unsupported("input comes from an unsupported node"),
    }
}

pub(super) fn dequantize_linear(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let p = params(imp, cx)?;
    let axis = attr_int(imp, cx, "axis")?.unwrap_or(1);
    let name = imp.input_name(cx, 0).unwrap_or_default().to_string();
    match imp.value_of_input(cx, 0)? {
        Value::Const(c) => {
            let Some(ints) = c.i64s() else {
                return Err(imp.invalid(cx, "the input of a DequantizeLinear must be an integer tensor"));
            };
            let at = per_axis(imp, cx, &c, &p, axis)?;
            // in f32, as the operator is defined: (x - zero point) * scale
            let x = ints
                .iter()
                .zip(at)
                .map(|(&v, k)| (v - p.zero_points[k]) as f32 * p.scales[k])
                .collect();
            imp.set_output(
                cx,
                Value::Const(Rc::new(Const {
                    dims: c.dims.clone(),
                    data: Data::F32(x),
                })),
            );
            Ok(())
        }
        v @ Value::Act { .. } => match imp.quantized.get(&name) {
            Some(&(scale, zp)) if p.scales.len() == 1 && p.scales[0] == scale && p.zero_points[0] == zp => {
                imp.set_output(cx, v);
                Ok(())
            }
            Some(&(scale, zp)) => unsupported(format!(
                "it dequantizes with scale {:?} and zero point {:?}, its QuantizeLinear quantized with {scale} and {zp}: requantization is not supported",
                p.scales, p.zero_points
            )),
            None => unsupported(
                "DequantizeLinear of a run-time tensor that no QuantizeLinear wrote (an integer model input?) is not supported: penni models take f32 input",
            ),
        },
        Value::Dims { .. } => unsupported("DequantizeLinear of a shape is not supported"),
        Value::Poisoned => unsupported("input comes from an unsupported node"),
    }
}
