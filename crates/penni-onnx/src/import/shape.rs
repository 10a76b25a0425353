//! Shapes and layout: Flatten and Reshape (a Flatten or nothing on activations, folded on
//! constants), Transpose, Identity and Dropout, and Shape with the Gather/Unsqueeze/Squeeze that
//! exporters put after it to build Reshape targets (on shape values or folded on constants).

use std::collections::BTreeMap;
use std::rc::Rc;

use penni_model::{Op, Shape};

use super::context::{attr_int, attr_ints};
use super::{BATCH_DEPENDENT, Ctx, Dim, Importer, PResult, Value, dims_value, strip_producer, unsupported};
use crate::error::OnnxError;
use crate::tensor::{Const, Data};

pub(super) fn identity(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let v = imp.value_of_input(cx, 0)?;
    imp.set_output(cx, strip_producer(v));
    Ok(())
}

pub(super) fn check_dropout(imp: &Importer, cx: &Ctx, issues: &mut Vec<String>) -> Result<(), OnnxError> {
    if imp.uses_of(cx, 1) > 0 {
        issues.push("the mask output is used".into());
    }
    Ok(())
}

/// Dropout at inference is the identity.
pub(super) fn dropout(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    if imp.opset >= 12
        && let Some(t) = imp.constant(cx, 2, "training_mode")?
        && t.f32s().iter().any(|v| *v != 0.0)
    {
        return unsupported("training_mode=true (random dropout at inference)");
    }
    identity(imp, cx)
}

pub(super) fn flatten(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    if let Value::Const(c) = imp.value_of_input(cx, 0)? {
        let axis = attr_int(imp, cx, "axis")?.unwrap_or(1);
        let r = c.dims.len() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if !(0..=r).contains(&a) {
            return Err(imp.invalid(cx, format!("axis {axis} is out of range for rank {r}")));
        }
        let rows: usize = c.dims[..a as usize].iter().product();
        let cols: usize = c.dims[a as usize..].iter().product();
        imp.set_output(
            cx,
            Value::Const(Rc::new(Const {
                dims: vec![rows, cols],
                data: c.data.clone(),
            })),
        );
        return Ok(());
    }
    let (x, s, _) = imp.act(cx, 0)?;
    let rank = if matches!(s, Shape::Map { .. }) { 4 } else { 2 };
    let axis = attr_int(imp, cx, "axis")?.unwrap_or(1);
    let a = if axis < 0 { axis + rank } else { axis };
    if !(0..=rank).contains(&a) {
        return Err(imp.invalid(cx, format!("axis {axis} is out of range for a rank-{rank} tensor")));
    }
    if a != 1 {
        return unsupported(format!(
            "Flatten with axis {axis} mixes the batch with other dimensions; only axis 1 is supported"
        ));
    }
    imp.emit(cx, Op::Flatten, vec![x], BTreeMap::new(), false)
}

pub(super) fn reshape(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (_, target) = imp.int_values(cx, 1, "target shape")?;
    let allowzero = attr_int(imp, cx, "allowzero")?.unwrap_or(0) != 0;
    let input = imp.value_of_input(cx, 0)?;
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
        let dims = resolve_reshape(&c.dims, &t, allowzero).map_err(|m| imp.invalid(cx, m))?;
        imp.set_output(
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
        let to = resolve_reshape(&from, &t, allowzero).map_err(|m| imp.invalid(cx, m))?;
        if to.len() > 1 {
            return unsupported(format!("Reshape of a shape to rank {}; shapes are scalars or vectors", to.len()));
        }
        imp.set_output(
            cx,
            Value::Dims {
                scalar: to.is_empty(),
                dims,
            },
        );
        return Ok(());
    }
    let (x, s, _) = imp.act(cx, 0)?;
    let numel = s.numel() as i64;
    let batch_ok = |b: i64| b == 0 || imp.batch.is_none() || imp.batch == Some(b);
    let flatten_like = t.len() == 2
        && match (t[0], t[1]) {
            (-1, f) => f == numel,
            (b, -1) => b >= 0 && batch_ok(b),
            (b, f) => b >= 0 && batch_ok(b) && f == numel,
        };
    if flatten_like {
        return match s {
            Shape::Vector(_) => {
                imp.set_output(
                    cx,
                    Value::Act {
                        tensor: x,
                        shape: s,
                        producer: None,
                    },
                );
                Ok(())
            }
            Shape::Map { .. } => imp.emit(cx, Op::Flatten, vec![x], BTreeMap::new(), false),
        };
    }
    if let Shape::Map { c, h, w } = s {
        let same = t.len() == 4 && batch_ok(t[0]) && t[0] != -1 && {
            let want = [c as i64, h as i64, w as i64];
            (1..4).all(|i| t[i] == 0 || t[i] == want[i - 1] || (t[i] == -1 && t.iter().filter(|v| **v == -1).count() == 1))
        };
        if same {
            imp.set_output(
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

pub(super) fn transpose(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let v = imp.value_of_input(cx, 0)?;
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
    let perm: Vec<usize> = match attr_ints(imp, cx, "perm")? {
        None => (0..rank).rev().collect(),
        Some(p) => {
            let mut seen = vec![false; rank];
            let ok = p.len() == rank
                && p.iter()
                    .all(|&a| (0..rank as i64).contains(&a) && !std::mem::replace(&mut seen[a as usize], true));
            if !ok {
                return Err(imp.invalid(cx, format!("perm {p:?} is not a permutation of the {rank} axes")));
            }
            p.iter().map(|&a| a as usize).collect()
        }
    };
    match v {
        Value::Const(c) => {
            imp.set_output(cx, Value::Const(Rc::new(c.transpose(&perm))));
            Ok(())
        }
        Value::Act { tensor, shape, .. } if perm.iter().enumerate().all(|(i, &p)| i == p) => {
            imp.set_output(
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

/// ONNX Shape (with opset-15 start/end): the input's dimensions, the first one being the
/// run-time batch size for an activation with a symbolic batch.
pub(super) fn shape(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let dims: Vec<Dim> = match imp.value_of_input(cx, 0)? {
        Value::Act { shape, .. } => {
            let rest = match shape {
                Shape::Map { c, h, w } => vec![c, h, w],
                Shape::Vector(n) => vec![n],
            };
            std::iter::once(imp.batch.map_or(Dim::Batch, Dim::Known))
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
    let start = clamp(attr_int(imp, cx, "start")?.unwrap_or(0));
    let end = clamp(attr_int(imp, cx, "end")?.unwrap_or(r));
    let out = if start < end { dims[start..end].to_vec() } else { vec![] };
    imp.set_output(cx, dims_value(false, out));
    Ok(())
}

/// ONNX Gather with constant indices, on a constant (folded) or on a shape.
pub(super) fn gather(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let axis = attr_int(imp, cx, "axis")?.unwrap_or(0);
    let idx = imp.required_constant(cx, 1, "indices")?;
    let Some(iv) = idx.i64s() else {
        return Err(imp.invalid(cx, "the indices must be an integer tensor"));
    };
    let data = imp.value_of_input(cx, 0)?;
    let rank = match &data {
        Value::Const(c) => c.dims.len(),
        Value::Dims { scalar, .. } => usize::from(!scalar),
        Value::Act { .. } => {
            return unsupported("Gather of a run-time tensor (an embedding lookup or a selection of channels) is not supported");
        }
        Value::Poisoned => return unsupported("input comes from an unsupported node"),
    };
    if rank == 0 {
        return Err(imp.invalid(cx, "Gather needs data of rank 1 or more, got a scalar"));
    }
    let a = imp.axis_index(cx, axis, rank, "axis")?;
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
                Err(imp.invalid(cx, format!("index {i} is out of range for a dimension of {n}")))
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
            imp.set_output(cx, dims_value(idx.dims.is_empty(), out));
        }
        Value::Const(c) => {
            let outer: usize = c.dims[..a].iter().product();
            let inner: usize = c.dims[a + 1..].iter().product();
            let numel = outer.checked_mul(picks.len()).and_then(|v| v.checked_mul(inner));
            imp.fold_budget(cx, numel)?;
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
            imp.set_output(cx, Value::Const(Rc::new(Const { dims, data })));
        }
        _ => unreachable!(),
    }
    Ok(())
}

/// ONNX Unsqueeze (axes an attribute before opset 13, an input from 13) on a constant or a
/// shape scalar.
pub(super) fn unsqueeze(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let Some(axes) = imp.axes(cx, 13, 1)? else {
        return Err(imp.invalid(cx, "axes is missing"));
    };
    let v = imp.value_of_input(cx, 0)?;
    let in_rank = match &v {
        Value::Const(c) => c.dims.len(),
        Value::Dims { scalar, .. } => usize::from(!scalar),
        Value::Act { .. } => {
            return unsupported("Unsqueeze of a run-time tensor is not supported");
        }
        Value::Poisoned => return unsupported("input comes from an unsupported node"),
    };
    let out_rank = in_rank + axes.len();
    let set = imp.axis_set(cx, &axes, out_rank)?;
    match v {
        Value::Const(c) => {
            let mut rest = c.dims.iter();
            let dims = (0..out_rank)
                .map(|i| if set.contains(&i) { 1 } else { *rest.next().unwrap() })
                .collect();
            imp.set_output(
                cx,
                Value::Const(Rc::new(Const {
                    dims,
                    data: c.data.clone(),
                })),
            );
        }
        Value::Dims { dims, .. } if out_rank == 1 => {
            imp.set_output(cx, Value::Dims { scalar: false, dims });
        }
        _ => {
            return unsupported(format!("Unsqueeze of a shape to rank {out_rank}; shapes are scalars or vectors"));
        }
    }
    Ok(())
}

/// ONNX Squeeze (axes an attribute before opset 13, an optional input from 13) on a
/// constant or a shape.
pub(super) fn squeeze(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let axes = imp.axes(cx, 13, 1)?;
    let v = imp.value_of_input(cx, 0)?;
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
            let set = imp.axis_set(cx, &a, dims.len())?;
            if let Some(&i) = set.iter().find(|&&i| dims[i] != 1) {
                return Err(imp.invalid(cx, format!("axis {i} has size {}; only axes of size 1 can be squeezed", dims[i])));
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
    imp.set_output(cx, value);
    Ok(())
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
