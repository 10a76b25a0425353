//! Conv (also rebuilding PENNI layers from exported pairs), Pad, and the window attributes
//! (strides, pads, auto_pad) that Conv and the pools share.

use std::collections::BTreeMap;

use penni_model::{Activation, Conv2d, DecomposedConv2d, Node, Op, Shape, Tensor};

use super::context::{attr_float, attr_int, attr_ints, attr_string};
use super::{Ctx, Importer, MAX_WINDOW, PResult, Value, unsupported};

pub(super) fn window_attrs(
    imp: &Importer,
    cx: &Ctx,
    kernel: [usize; 2],
    dilation: [usize; 2],
    in_hw: (usize, usize),
) -> PResult<([usize; 2], [usize; 4])> {
    let strides = pair(imp, cx, "strides", 1)?;
    let auto = attr_string(imp, cx, "auto_pad")?.unwrap_or_else(|| "NOTSET".into());
    let pads = match auto.as_str() {
        "NOTSET" | "" => match attr_ints(imp, cx, "pads")? {
            None => [0; 4],
            Some(p) if p.len() == 4 => {
                let mut out = [0usize; 4];
                for (o, v) in out.iter_mut().zip(&p) {
                    if !(0..=MAX_WINDOW).contains(v) {
                        return Err(imp.invalid(cx, format!("pads {p:?} must be between 0 and {MAX_WINDOW}")));
                    }
                    *o = *v as usize;
                }
                out
            }
            Some(p) => {
                return Err(imp.invalid(cx, format!("pads {p:?} must have 4 values for a 2-D window")));
            }
        },
        "VALID" => [0; 4],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut out = [0usize; 4];
            for (ax, size) in [in_hw.0, in_hw.1].into_iter().enumerate() {
                let s = strides[ax];
                let span = dilation[ax] * (kernel[ax] - 1) + 1;
                let o = size.div_ceil(s);
                let total = ((o - 1) * s + span).saturating_sub(size);
                let small = total / 2;
                let (lo, hi) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                out[ax] = lo;
                out[ax + 2] = hi;
            }
            out
        }
        other => {
            return Err(imp.invalid(
                cx,
                format!("auto_pad '{other}' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID"),
            ));
        }
    };
    Ok((strides, pads))
}

/// A 2-element window attribute (strides, dilations) with a default, checked for sanity.
pub(super) fn pair(imp: &Importer, cx: &Ctx, name: &str, default: usize) -> PResult<[usize; 2]> {
    match attr_ints(imp, cx, name)? {
        None => Ok([default; 2]),
        Some(v) if v.len() == 2 && v.iter().all(|x| (1..=MAX_WINDOW).contains(x)) => Ok([v[0] as usize, v[1] as usize]),
        Some(v) if v.len() != 2 => unsupported(format!("{name} {v:?}: only 2-D windows (N x C x H x W) are supported")),
        Some(v) => Err(imp.invalid(cx, format!("{name} {v:?} must be between 1 and {MAX_WINDOW}"))),
    }
}

pub(super) fn conv(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (x, s, _) = imp.act(cx, 0)?;
    let w = imp.required_constant(cx, 1, "weight")?;
    let b = imp.constant(cx, 2, "bias")?;
    if w.dims.len() != 4 {
        return unsupported(format!(
            "{}-D convolution (weight shape {:?}); only 2-D convolutions are supported",
            w.dims.len().saturating_sub(2),
            w.dims
        ));
    }
    let Shape::Map { c, h, w: width } = s else {
        return unsupported("convolution of an N x F tensor");
    };
    let group = attr_int(imp, cx, "group")?.unwrap_or(1);
    if !(1..=c as i64).contains(&group) {
        return Err(imp.invalid(cx, format!("group {group} must be between 1 and the {c} input channels")));
    }
    let group = group as usize;
    let [m, cg, kh, kw] = [w.dims[0], w.dims[1], w.dims[2], w.dims[3]];
    if cg.checked_mul(group) != Some(c) || m % group != 0 || m == 0 || kh == 0 || kw == 0 {
        return Err(imp.invalid(
            cx,
            format!("weight {:?} with group {group} does not fit an input with {c} channels", w.dims),
        ));
    }
    if let Some(k) = attr_ints(imp, cx, "kernel_shape")?
        && (k.len() != 2 || k[0] as usize != kh || k[1] as usize != kw)
    {
        return Err(imp.invalid(cx, format!("kernel_shape {k:?} does not match the weight shape {:?}", w.dims)));
    }
    let dilation = pair(imp, cx, "dilations", 1)?;
    // after a Pad, auto_pad sees the padded size (the Pad is an IR node until `fold_pads`
    // adds its padding to this conv's)
    let (stride, padding) = window_attrs(imp, cx, [kh, kw], dilation, (h, width))?;
    let mut params = BTreeMap::new();
    params.insert(
        "weight".into(),
        Tensor {
            shape: w.dims.clone(),
            data: imp.float_const(cx, &w, "weight")?,
        },
    );
    if let Some(b) = &b {
        if b.numel() != m {
            return Err(imp.invalid(cx, format!("bias has {} values for {m} output channels", b.numel())));
        }
        params.insert(
            "bias".into(),
            Tensor {
                shape: vec![m],
                data: imp.float_const(cx, b, "bias")?,
            },
        );
    }
    let spec = Conv2d {
        in_channels: c,
        out_channels: m,
        kernel: [kh, kw],
        stride,
        padding,
        dilation,
        groups: group,
        bias: b.is_some(),
    };
    if let Some(stage1) = imp.decomposed.get(cx.label.as_str()).copied()
        && try_decomposed(imp, cx, &x, stage1, &spec, &params)?
    {
        return Ok(());
    }
    imp.emit(cx, Op::Conv2d(spec), vec![x], params, true)
}

/// ONNX Pad with zeros on the spatial axes (what TensorFlow/Keras exports write for
/// ZeroPadding2D and 'same' strided convs): an IR Pad, which `passes::fold_pads` merges into
/// the padding of the Convs that read it once the whole graph is converted.
pub(super) fn pad(imp: &mut Importer, cx: &Ctx) -> PResult<()> {
    let (x, s, _) = imp.act(cx, 0)?;
    let Shape::Map { .. } = s else {
        return unsupported("Pad of an N x F tensor");
    };
    let mode = attr_string(imp, cx, "mode")?.unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        return unsupported(format!("Pad mode '{mode}'; only constant zero padding is supported"));
    }
    let (pads, value) = if imp.opset < 11 {
        let Some(p) = attr_ints(imp, cx, "pads")? else {
            return Err(imp.invalid(cx, "the pads attribute is missing"));
        };
        (p, attr_float(imp, cx, "value")?.unwrap_or(0.0))
    } else {
        let p = imp.required_constant(cx, 1, "pads")?;
        let Some(p) = p.i64s().map(|v| v.to_vec()) else {
            return Err(imp.invalid(cx, "pads must be an int64 tensor"));
        };
        let value = match imp.constant(cx, 2, "constant_value")? {
            Some(v) => v.f32s().first().copied().unwrap_or(0.0),
            None => 0.0,
        };
        // opset 18: pads may name only some axes
        let p = match imp.constant(cx, 3, "axes")? {
            None => p,
            Some(a) => {
                let Some(axes) = a.i64s().map(|v| v.to_vec()) else {
                    return Err(imp.invalid(cx, "axes must be an int64 tensor"));
                };
                if p.len() != 2 * axes.len() {
                    return Err(imp.invalid(cx, format!("{} pads for {} axes", p.len(), axes.len())));
                }
                let mut full = vec![0i64; 8];
                for (i, &a) in axes.iter().enumerate() {
                    let ax = imp.axis_index(cx, a, 4, "axes")?;
                    full[ax] = p[i];
                    full[4 + ax] = p[axes.len() + i];
                }
                full
            }
        };
        (p, value)
    };
    if pads.len() != 8 {
        return Err(imp.invalid(cx, format!("pads {pads:?} must have 8 values for a 4-D tensor")));
    }
    if value != 0.0 {
        return unsupported(format!("Pad with the value {value}; only zero padding folds into a Conv"));
    }
    if pads.iter().any(|p| !(0..=MAX_WINDOW).contains(p)) {
        return unsupported(format!(
            "pads {pads:?}: negative pads (cropping) or pads over {MAX_WINDOW} are not supported"
        ));
    }
    if pads[0] != 0 || pads[1] != 0 || pads[4] != 0 || pads[5] != 0 {
        return unsupported(format!(
            "pads {pads:?} pad the batch or channel axis; only the spatial axes can be padded"
        ));
    }
    let pads = [pads[2], pads[3], pads[6], pads[7]].map(|p| p as usize);
    if pads == [0; 4] {
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
    imp.emit(cx, Op::Pad { pads }, vec![x], BTreeMap::new(), false)
}

/// Rebuilds a PENNI layer from the basis conv + 1x1 conv pair that `export` writes, when
/// the metadata names the pair and the weights really have that structure (else the two
/// convs stay ordinary convs, which compute the same function).
fn try_decomposed(imp: &mut Importer, cx: &Ctx, x: &str, stage1: &str, spec: &Conv2d, params: &BTreeMap<String, Tensor>) -> PResult<bool> {
    let Some(&i1) = imp.ir_index_of.get(stage1) else {
        return Ok(false);
    };
    let n1 = &imp.nodes[i1];
    let Op::Conv2d(c1) = &n1.op else {
        return Ok(false);
    };
    let used_once = |t: &str| imp.uses.get(t).copied() == Some(1);
    // the basis maps' quantizer between the stages: the node right after the basis conv, and
    // the last one imported so far (so that removing it moves no other node)
    let basis_quant = match imp.nodes.get(i1 + 1) {
        Some(
            q @ Node {
                op: Op::Activation(grid @ Activation::QuantizeDequantize { .. }),
                ..
            },
        ) if i1 + 2 == imp.nodes.len() && q.output == x && q.inputs == [n1.output.clone()] && used_once(&q.output) => Some(*grid),
        _ => None,
    };
    let c = c1.in_channels;
    let reads_stage1 = n1.output == x || basis_quant.is_some();
    if !reads_stage1 || !used_once(&n1.output) || c1.bias || c1.groups != c || c1.out_channels % c != 0 {
        return Ok(false);
    }
    let d = c1.out_channels / c;
    let kk = c1.kernel[0] * c1.kernel[1];
    let w1 = &n1.params["weight"].data;
    let bases = &w1[..d * kk];
    if (1..c).any(|ch| &w1[ch * d * kk..(ch + 1) * d * kk] != bases) {
        return Ok(false);
    }
    let g = spec.groups;
    if spec.kernel != [1, 1] || spec.stride != [1, 1] || spec.padding != [0; 4] || c % g != 0 || spec.in_channels != c * d {
        return Ok(false);
    }
    let (n, cpg) = (spec.out_channels, c / g);
    let w2 = &params["weight"].data; // (n, cpg*d, 1, 1)
    let mut coef = vec![0f32; n * cpg * d];
    for o in 0..n {
        for cl in 0..cpg {
            for j in 0..d {
                coef[(o * cpg + cl) * d + j] = w2[o * cpg * d + cl * d + j];
            }
        }
    }
    let dc = DecomposedConv2d {
        conv: Conv2d {
            in_channels: c,
            out_channels: n,
            kernel: c1.kernel,
            stride: c1.stride,
            padding: c1.padding,
            dilation: c1.dilation,
            groups: g,
            bias: spec.bias,
        },
        num_bases: d,
        basis_quant,
    };
    let mut p = BTreeMap::new();
    p.insert(
        "bases".to_string(),
        Tensor {
            shape: vec![d, kk],
            data: bases.to_vec(),
        },
    );
    p.insert(
        "coefficients".to_string(),
        Tensor {
            shape: vec![n * cpg, d],
            data: coef,
        },
    );
    if let Some(b) = params.get("bias") {
        p.insert("bias".to_string(), b.clone());
    }
    let Some(output) = cx.node.output.first().filter(|o| !o.is_empty()).cloned() else {
        return Err(imp.invalid(cx, "the node has no output"));
    };
    let mut node = Node {
        name: String::new(),
        op: Op::DecomposedConv2d(dc),
        inputs: vec![n1.inputs[0].clone()],
        output: output.clone(),
        params: p,
    };
    let shape = imp.ir_shape(cx, &node)?;
    if basis_quant.is_some()
        && let Some(q) = imp.nodes.pop()
    {
        // the quantizer is now inside the layer (the last node, matched above)
        imp.node_names.remove(&q.name);
        imp.onnx_label.remove(&q.name);
        imp.ir_index_of.retain(|_, at| *at != i1 + 1);
    }
    // the pair becomes one node, at the basis conv's place and with the 1x1 conv's name
    let old = std::mem::take(&mut imp.nodes[i1].name);
    imp.node_names.remove(&old);
    imp.onnx_label.remove(&old);
    node.name = imp.fresh_node_name(&cx.label);
    imp.onnx_label.insert(node.name.clone(), cx.label.clone());
    imp.nodes[i1] = node;
    imp.ir_index_of.insert(cx.label.clone(), i1);
    imp.ir_shapes.insert(output.clone(), shape);
    imp.values.insert(
        output.clone(),
        Value::Act {
            tensor: output,
            shape,
            producer: Some(i1),
        },
    );
    Ok(true)
}
