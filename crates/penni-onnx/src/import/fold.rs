//! Constants and what folds on them: Constant, ConstantOfShape, Concat (also of run-time maps
//! along the channels and of shape vectors), Cast/CastLike and Expand. Every folded constant
//! counts against `MAX_FOLDED_VALUES`/`MAX_FOLDED_TOTAL`, so a small file cannot make penni
//! build huge tensors.

use std::collections::BTreeMap;
use std::rc::Rc;

use penni_model::{Op, Shape};

use super::context::attr_int;
use super::{BATCH_DEPENDENT, Ctx, Dim, Importer, MAX_FOLDED_TOTAL, MAX_FOLDED_VALUES, PResult, Value, dims_value, unsupported};
use crate::error::OnnxError;
use crate::proto::data_type as dt;
use crate::tensor::{Const, Data, decode, dims_of};

pub(super) fn check_constant(imp: &Importer, cx: &Ctx, _issues: &mut Vec<String>) -> Result<(), OnnxError> {
    if cx.node.attribute.is_empty() {
        return Err(OnnxError::InvalidNode {
            name: imp.name.clone(),
            node: cx.label.clone(),
            op: cx.op.clone(),
            message: "has no value attribute".into(),
        });
    }
    Ok(())
}

pub(super) fn cast_like(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let to = match imp.value_of_input(cx, 1)? {
        Value::Act { .. } => dt::FLOAT,
        Value::Const(c) if c.is_float() => dt::FLOAT,
        Value::Const(_) | Value::Dims { .. } => dt::INT64,
        Value::Poisoned => return unsupported("input comes from an unsupported node"),
    };
    cast_to(imp, cx, to)
}

pub(super) fn constant(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let a = &cx.node.attribute[0];
    let c = match a.name.as_str() {
        "value" => {
            let Some(t) = a.t.as_ref() else {
                return Err(imp.invalid(cx, "the value attribute holds no tensor"));
            };
            decode(t).map_err(|m| imp.invalid(cx, format!("value {m}")))?
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
    imp.set_output(cx, Value::Const(Rc::new(c)));
    Ok(())
}

pub(super) fn constant_of_shape(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let shape = imp.required_constant(cx, 0, "shape")?;
    let Some(dims) = shape.i64s() else {
        return Err(imp.invalid(cx, "the shape must be an int64 tensor"));
    };
    let (dims, numel) = dims_of(dims).map_err(|m| imp.invalid(cx, format!("shape {m}")))?;
    if numel > MAX_FOLDED_VALUES || imp.folded_total.saturating_add(numel) > MAX_FOLDED_TOTAL {
        return Err(imp.invalid(cx, format!("would create a constant of {numel} values; penni creates at most {MAX_FOLDED_VALUES} per tensor and {MAX_FOLDED_TOTAL} in total")));
    }
    imp.folded_total += numel;
    let fill = match cx.node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) {
        None => Const {
            dims: vec![1],
            data: Data::F32(vec![0.0]),
        },
        Some(t) => decode(t).map_err(|m| imp.invalid(cx, format!("value {m}")))?,
    };
    if fill.numel() != 1 {
        return Err(imp.invalid(cx, "value must hold exactly one element"));
    }
    let data = match fill.data {
        Data::F32(v) => Data::F32(vec![v[0]; numel]),
        Data::I64(v) => Data::I64(vec![v[0]; numel]),
    };
    imp.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
    Ok(())
}

/// Concat of run-time tensors along the channels of feature maps (or the features of
/// vectors): Inception branches, DenseNet and SqueezeNet blocks.
fn concat_acts(imp: &mut Importer, cx: &Ctx, axis: i64, parts: Vec<Value>) -> PResult<()> {
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
    if imp.axis_index(cx, axis, rank, "axis")? != 1 {
        return unsupported(format!(
            "Concat along axis {axis} of {} tensors; only along the channels (axis 1) is supported",
            shapes[0]
        ));
    }
    imp.emit(cx, Op::Concat, inputs, BTreeMap::new(), false)
}

/// ONNX Concat: of run-time tensors (see `concat_acts`), of constants (folded) or of shape
/// vectors (a Reshape target being built).
pub(super) fn concat(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let Some(axis) = attr_int(imp, cx, "axis")? else {
        return Err(imp.invalid(cx, "the axis attribute is missing"));
    };
    let mut parts = Vec::new();
    for i in 0..cx.node.input.len() {
        match imp.value_of_input(cx, i)? {
            Value::Poisoned => return unsupported("input comes from an unsupported node"),
            v => parts.push(v),
        }
    }
    if parts.iter().any(|p| matches!(p, Value::Act { .. })) {
        return concat_acts(imp, cx, axis, parts);
    }
    if parts.is_empty() {
        return Err(imp.invalid(cx, "has no inputs"));
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
                    return Err(imp.invalid(cx, format!("input #{i} cannot be concatenated with a 1-D shape")));
                }
            }
        }
        imp.axis_index(cx, axis, 1, "axis")?;
        imp.set_output(cx, dims_value(false, out));
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
        return Err(imp.invalid(cx, "Concat of scalars"));
    }
    let a = imp.axis_index(cx, axis, rank, "axis")?;
    let fits =
        |c: &Const| c.dims.len() == rank && c.is_float() == first.is_float() && (0..rank).all(|d| d == a || c.dims[d] == first.dims[d]);
    if let Some(c) = consts.iter().find(|c| !fits(c)) {
        return Err(imp.invalid(
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
    imp.fold_budget(cx, numel)?;
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
    imp.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
    Ok(())
}

/// ONNX Cast (and CastLike, with the type of its second input) to a float or integer type:
/// folded on constants, the identity on float activations and on integer shapes.
pub(super) fn cast(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let Some(to) = attr_int(imp, cx, "to")? else {
        return Err(imp.invalid(cx, "the 'to' attribute is missing"));
    };
    cast_to(imp, cx, i32::try_from(to).unwrap_or(dt::UNDEFINED))
}

fn cast_to(imp: &mut Importer, cx: &Ctx, to: i32) -> PResult<()> {
    let float = match to {
        dt::FLOAT | dt::DOUBLE => true,
        dt::INT64 | dt::INT32 | dt::INT16 | dt::INT8 | dt::UINT64 | dt::UINT32 | dt::UINT16 | dt::UINT8 | dt::BOOL => false,
        other => {
            return unsupported(format!("Cast to {} is not supported (penni computes in float32)", dt::name(other)));
        }
    };
    let out = match imp.value_of_input(cx, 0)? {
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
    imp.set_output(cx, out);
    Ok(())
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

/// ONNX Expand (numpy-style broadcast to a shape) of a constant, folded.
pub(super) fn expand(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (_, target) = imp.int_values(cx, 1, "shape")?;
    let c = match imp.value_of_input(cx, 0)? {
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
                return Err(imp.invalid(cx, format!("the shape has a negative dimension {v}")));
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
                return Err(imp.invalid(cx, format!("cannot broadcast {:?} to {shape:?}", c.dims)));
            }
        });
    }
    let numel = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    imp.fold_budget(cx, numel)?;
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
    imp.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
    Ok(())
}
