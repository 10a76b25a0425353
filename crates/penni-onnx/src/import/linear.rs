//! Fully connected layers: Gemm and MatMul with a constant weight become Linear.

use std::collections::BTreeMap;

use penni_model::{Op, Shape, Tensor};

use super::context::{attr_float, attr_int};
use super::{Ctx, Importer, PResult, unsupported};
use crate::error::OnnxError;

pub(super) fn check_gemm(imp: &Importer, cx: &Ctx, issues: &mut Vec<String>) -> Result<(), OnnxError> {
    if attr_int(imp, cx, "transA")?.unwrap_or(0) != 0 {
        issues.push("transA=1 is not supported (the activation must be N x K)".into());
    }
    Ok(())
}

pub(super) fn gemm(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (x, s, _) = imp.act(cx, 0)?;
    let Shape::Vector(k) = s else {
        return unsupported(format!("Gemm on a {s} feature map; insert a Flatten"));
    };
    let b = imp.required_constant(cx, 1, "weight")?;
    let c = imp.constant(cx, 2, "bias")?;
    if b.dims.len() != 2 {
        return Err(imp.invalid(cx, format!("weight shape {:?} is not 2-D", b.dims)));
    }
    let trans_b = attr_int(imp, cx, "transB")?.unwrap_or(0) != 0;
    let alpha = attr_float(imp, cx, "alpha")?.unwrap_or(1.0);
    let beta = attr_float(imp, cx, "beta")?.unwrap_or(1.0);
    let w = if trans_b { (*b).clone() } else { b.transpose(&[1, 0]) };
    let (out, inf) = (w.dims[0], w.dims[1]);
    if inf != k {
        return Err(imp.invalid(
            cx,
            format!(
                "weight {:?} (transB={}) expects {inf} input features, got {k}",
                b.dims, trans_b as u8
            ),
        ));
    }
    let mut wd = imp.float_const(cx, &w, "weight")?;
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
            return Err(imp.invalid(cx, format!("bias shape {:?} has more than 2 dimensions", c.dims)));
        }
        let mut aligned = vec![1usize; 2 - c.dims.len()];
        aligned.extend(&c.dims);
        if aligned[0] != 1 || !(aligned[1] == 1 || aligned[1] == out) {
            return unsupported(format!(
                "bias of shape {:?} differs per batch row; only a bias of {out} values (or a scalar) is supported",
                c.dims
            ));
        }
        let v = imp.float_const(cx, &c, "bias")?;
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
    imp.emit(
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

pub(super) fn matmul(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (x, s, _) = imp.act(cx, 0)?;
    let b = imp.required_constant(cx, 1, "right operand")?;
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
        return Err(imp.invalid(cx, format!("right operand {:?} expects {} features, got {k}", b.dims, b.dims[0])));
    }
    let w = b.transpose(&[1, 0]);
    let out = w.dims[0];
    let params = BTreeMap::from([(
        "weight".to_string(),
        Tensor {
            shape: vec![out, k],
            data: imp.float_const(cx, &w, "weight")?,
        },
    )]);
    imp.emit(
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
