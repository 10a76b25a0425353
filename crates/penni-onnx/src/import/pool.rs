//! Pooling: MaxPool, AveragePool, GlobalAveragePool and the ReduceMean that is one.

use std::collections::BTreeMap;

use penni_model::{Op, Pool2d, Shape};

use super::context::{attr_int, attr_ints};
use super::conv::window_attrs;
use super::{Ctx, Importer, MAX_WINDOW, PResult, Value, unsupported};
use crate::error::OnnxError;

/// What the IR's pools cannot hold, reported with every other problem.
pub(super) fn check_pool(imp: &Importer, cx: &Ctx, issues: &mut Vec<String>) -> Result<(), OnnxError> {
    if attr_ints(imp, cx, "dilations")?.is_some_and(|v| v.iter().any(|&d| d != 1)) {
        issues.push("pooling with dilations other than 1 is not supported".into());
    }
    if attr_int(imp, cx, "storage_order")?.unwrap_or(0) != 0 {
        issues.push("storage_order=1 (column-major argmax indices) is not supported".into());
    }
    if cx.node.op_type == "MaxPool" && imp.uses_of(cx, 1) > 0 {
        issues.push("the Indices output (argmax) is used; penni's MaxPool has no indices".into());
    }
    Ok(())
}

pub(super) fn max_pool(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    pool(imp, cx, true)
}

pub(super) fn average_pool(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    pool(imp, cx, false)
}

pub(super) fn global_average_pool(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (x, s, _) = imp.act(cx, 0)?;
    if let Shape::Vector(_) = s {
        return unsupported("global pooling of an N x F tensor");
    }
    imp.emit(cx, Op::GlobalAvgPool, vec![x], BTreeMap::new(), false)
}

fn pool(imp: &mut Importer, cx: &Ctx, max: bool) -> PResult<()> {
    let (x, s, _) = imp.act(cx, 0)?;
    let Some(k) = attr_ints(imp, cx, "kernel_shape")? else {
        return Err(imp.invalid(cx, "kernel_shape is missing"));
    };
    if k.len() != 2 {
        return unsupported(format!("{}-D pooling (kernel_shape {k:?}); only 2-D pooling is supported", k.len()));
    }
    if k.iter().any(|v| !(1..=MAX_WINDOW).contains(v)) {
        return Err(imp.invalid(cx, format!("kernel_shape {k:?} must be between 1 and {MAX_WINDOW}")));
    }
    let Shape::Map { h, w, .. } = s else {
        return unsupported("pooling of an N x F tensor");
    };
    let kernel = [k[0] as usize, k[1] as usize];
    let (stride, padding) = window_attrs(imp, cx, kernel, [1, 1], (h, w))?;
    let ceil_mode = attr_int(imp, cx, "ceil_mode")?.unwrap_or(0) != 0;
    let count_include_pad = !max && attr_int(imp, cx, "count_include_pad")?.unwrap_or(0) != 0;
    let p = Pool2d {
        kernel,
        stride,
        padding,
        ceil_mode,
        count_include_pad,
    };
    let op = if max { Op::MaxPool2d(p) } else { Op::AvgPool2d(p) };
    imp.emit(cx, op, vec![x], BTreeMap::new(), false)
}

/// ReduceMean over the two spatial axes of a feature map is global average pooling (what
/// the dynamo exporter writes for AdaptiveAvgPool2d(1) and `x.mean((2, 3))`).
pub(super) fn reduce_mean(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let axes = imp.axes(cx, 18, 1)?;
    let keepdims = attr_int(imp, cx, "keepdims")?.unwrap_or(1) != 0;
    let noop_empty = imp.opset >= 18 && attr_int(imp, cx, "noop_with_empty_axes")?.unwrap_or(0) != 0;
    let (x, s, _) = imp.act(cx, 0)?;
    let rank = if matches!(s, Shape::Map { .. }) { 4 } else { 2 };
    let axes = match axes {
        Some(a) if !a.is_empty() => a,
        _ if noop_empty => {
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
        _ => return unsupported("ReduceMean over all axes averages over the batch"),
    };
    let set = imp.axis_set(cx, &axes, rank)?;
    if set != [2, 3] {
        return unsupported(format!(
            "ReduceMean over axes {axes:?} of a {s} tensor; only the mean over both spatial axes (global average pooling) is supported"
        ));
    }
    if keepdims {
        return imp.emit(cx, Op::GlobalAvgPool, vec![x], BTreeMap::new(), false);
    }
    let pooled = imp.fresh_tensor(&format!("{}.pooled", cx.label));
    imp.emit_to(cx, Op::GlobalAvgPool, vec![x], BTreeMap::new(), false, pooled.clone())?;
    imp.emit(cx, Op::Flatten, vec![pooled], BTreeMap::new(), false)
}
