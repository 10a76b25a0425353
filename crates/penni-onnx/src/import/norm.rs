//! Normalisation: BatchNormalization (inference form), Softmax and LogSoftmax.

use std::collections::BTreeMap;

use penni_model::{Op, Shape, Tensor};

use super::context::{attr_float, attr_int};
use super::{Ctx, Importer, PResult, unsupported};
use crate::error::OnnxError;

/// Training-mode forms of BatchNormalization, reported with every other problem.
pub(super) fn check_batch_norm(imp: &Importer, cx: &Ctx, issues: &mut Vec<String>) -> Result<(), OnnxError> {
    if attr_int(imp, cx, "training_mode")?.unwrap_or(0) != 0 {
        issues.push("training_mode=1 (batch statistics) is not supported; export the model in eval mode".into());
    }
    if attr_int(imp, cx, "spatial")?.unwrap_or(1) != 1 {
        issues.push("spatial=0 (per-activation statistics) is not supported".into());
    }
    if imp.opset < 7 && attr_int(imp, cx, "is_test")?.unwrap_or(0) == 0 {
        issues.push("is_test=0 (training mode) is not supported; export the model in eval mode".into());
    }
    if (1..cx.node.output.len()).any(|k| imp.uses_of(cx, k) > 0) {
        issues.push("the running-statistics outputs (training mode) are used".into());
    }
    Ok(())
}

pub(super) fn batch_norm(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (x, s, _) = imp.act(cx, 0)?;
    let Shape::Map { c, .. } = s else {
        return unsupported("batch normalization of an N x F tensor (BatchNorm1d) is not supported");
    };
    let mut params = BTreeMap::new();
    for (i, what) in [(1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")] {
        let t = imp.required_constant(cx, i, what)?;
        if t.numel() != c {
            return Err(imp.invalid(cx, format!("{what} has {} values for {c} channels", t.numel())));
        }
        params.insert(
            what.to_string(),
            Tensor {
                shape: vec![c],
                data: imp.float_const(cx, &t, what)?,
            },
        );
    }
    let eps = attr_float(imp, cx, "epsilon")?.unwrap_or(1e-5);
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(imp.invalid(cx, format!("epsilon {eps} must be a finite non-negative number")));
    }
    if params["running_var"].data.iter().any(|v| *v < 0.0) {
        return Err(imp.invalid(cx, "the running variance has negative values"));
    }
    imp.emit(cx, Op::BatchNorm2d { channels: c, eps }, vec![x], params, false)
}

/// ONNX Softmax / LogSoftmax. From opset 13 they normalise along `axis` (default -1); before,
/// over everything from `axis` (default 1) on, as one row of a 2-D matrix. Both cover
/// penni's softmax over the channels (or a vector's features) in these cases only.
pub(super) fn softmax(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    softmax_or_log(imp, cx, false)
}

fn softmax_or_log(imp: &mut Importer, cx: &Ctx, log: bool) -> PResult<()> {
    let (x, s, _) = imp.act(cx, 0)?;
    let rank = if matches!(s, Shape::Map { .. }) { 4 } else { 2 };
    let per_axis = imp.opset >= 13;
    let axis = attr_int(imp, cx, "axis")?.unwrap_or(if per_axis { -1 } else { 1 });
    let axis = imp.axis_index(cx, axis, rank, "axis")?;
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
    imp.emit(cx, Op::Softmax { log }, vec![x], BTreeMap::new(), false)
}

pub(super) fn log_softmax(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    softmax_or_log(imp, cx, true)
}
