//! A direct, unoptimised evaluation of the IR in inference mode (batchnorm uses running
//! statistics). It is the yardstick that the engine, the compressor and the ONNX code are tested
//! against: simple loops that follow the definitions, in f64 accumulators.

use std::collections::HashMap;

use crate::batchnorm::Affine;
use crate::error::{ModelError, Result};
use crate::graph::{Conv2d, Model, Node, Op, Pool2d, Shape};

/// A batch of activations: `n` examples of `shape`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Activation {
    pub n: usize,
    pub shape: Shape,
    pub data: Vec<f32>,
}

/// Kernel of a decomposed conv as a dense (N, C/groups, kh, kw) weight: coefficients x bases.
pub fn decomposed_weight(node: &Node) -> Result<Vec<f32>> {
    let Op::DecomposedConv2d(c) = &node.op else {
        return Err(ModelError::Graph(format!("'{}' is not a decomposed conv", node.name)));
    };
    let a = node.param("coefficients")?;
    let b = node.param("bases")?;
    let (d, kk) = (c.num_bases, c.conv.kernel[0] * c.conv.kernel[1]);
    let rows = a.shape[0];
    let mut w = vec![0f32; rows * kk];
    for r in 0..rows {
        for j in 0..d {
            let coef = a.data[r * d + j];
            if coef != 0.0 {
                for t in 0..kk {
                    w[r * kk + t] += coef * b.data[j * kk + t];
                }
            }
        }
    }
    Ok(w)
}

/// The basis maps of a decomposed conv on `x`, its first stage before any quantizer: C x d
/// channels, channel c * d + j the input channel c convolved with basis j.
pub fn basis_maps(node: &Node, x: &Activation) -> Result<Activation> {
    let stage1 = crate::stages::split_decomposed(node)?.swap_remove(0);
    let shape = crate::graph::node_output_shape(&stage1, &[x.shape])?;
    let data = eval_node(&stage1, &[x], shape)?.data;
    Ok(Activation { n: x.n, shape, data })
}

pub fn forward(model: &Model, input: &Activation) -> Result<Activation> {
    let mut all = forward_all(model, input)?;
    Ok(all.remove(model.output.as_str()).expect("validated output"))
}

/// Every tensor of the forward pass by name, the input included (calibration reads the
/// intermediate maps).
pub fn forward_all(model: &Model, input: &Activation) -> Result<HashMap<String, Activation>> {
    let shapes = model.validate()?;
    if input.shape != model.input_shape() || input.data.len() != input.n * input.shape.numel() {
        return Err(ModelError::Graph(format!(
            "input is {} x {} ({} values), the model takes N x {}",
            input.n,
            input.shape,
            input.data.len(),
            model.input_shape()
        )));
    }
    let mut env: HashMap<String, Activation> = HashMap::new();
    env.insert(model.input.name.clone(), input.clone());
    for node in &model.nodes {
        let ins: Vec<&Activation> = node.inputs.iter().map(|i| &env[i.as_str()]).collect();
        let out_shape = shapes[&node.output];
        let y = eval_node(node, &ins, out_shape)?;
        env.insert(node.output.clone(), y);
    }
    Ok(env)
}

fn dims(s: Shape) -> (usize, usize, usize) {
    match s {
        Shape::Map { c, h, w } => (c, h, w),
        Shape::Vector(n) => (n, 1, 1),
    }
}

fn conv(x: &Activation, out: Shape, weight: &[f32], bias: Option<&[f32]>, geometry: &Conv2d) -> Vec<f32> {
    let Conv2d {
        kernel,
        stride,
        padding,
        dilation,
        groups,
        ..
    } = *geometry;
    let (c, h, w) = dims(x.shape);
    let (oc, oh, ow) = dims(out);
    let (cg, og) = (c / groups, oc / groups);
    let mut y = vec![0f32; x.n * oc * oh * ow];
    for n in 0..x.n {
        for o in 0..oc {
            let g = o / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for ky in 0..kernel[0] {
                            let iy = (oy * stride[0] + ky * dilation[0]) as isize - padding[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kernel[1] {
                                let ix = (ox * stride[1] + kx * dilation[1]) as isize - padding[1] as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let wv = weight[((o * cg + ci) * kernel[0] + ky) * kernel[1] + kx];
                                let xv = x.data[((n * c + cin) * h + iy as usize) * w + ix as usize];
                                acc += wv as f64 * xv as f64;
                            }
                        }
                    }
                    y[((n * oc + o) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// A quantized dense convolution (groups = 1) computed on the integers, as an integer engine
/// must: the input lies on a grid (k - zero_point) * scale, so each value gives back its
/// k - zero_point (the zero padding reads the zero point: 0), the weight codes `w_codes` (N x C x kh x kw) have one
/// scale per output channel, the sum of (k - zero_point) q is exact, and output channel n is
/// f32(sum) * factor + bias with factor = [`grid::int_output_factor`](crate::grid::int_output_factor)
/// and bias [`Affine::folded_bias`]: a multiply, then an add, each rounded. `fold` is the
/// batchnorm folded into the layer (identity if none).
#[allow(clippy::too_many_arguments)]
pub fn int8_conv2d(
    x: &Activation,
    out: Shape,
    geometry: &Conv2d,
    scale: f32,
    w_codes: &[i8],
    w_scales: &[f32],
    bias: Option<&[f32]>,
    fold: &Affine,
) -> Vec<f32> {
    let Conv2d {
        kernel,
        stride,
        padding,
        dilation,
        ..
    } = *geometry;
    let (c, h, w) = dims(x.shape);
    let (oc, oh, ow) = dims(out);
    let code = |v: f32| (v / scale).round_ties_even() as i64;
    let mut y = vec![0f32; x.n * oc * oh * ow];
    for n in 0..x.n {
        for o in 0..oc {
            let factor = crate::grid::int_output_factor(scale, w_scales[o], fold.scale[o]);
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0i64;
                    for ci in 0..c {
                        for ky in 0..kernel[0] {
                            let iy = (oy * stride[0] + ky * dilation[0]) as isize - padding[0] as isize;
                            for kx in 0..kernel[1] {
                                let ix = (ox * stride[1] + kx * dilation[1]) as isize - padding[1] as isize;
                                if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
                                    continue; // the zero point: k - zero_point = 0
                                }
                                let q = w_codes[((o * c + ci) * kernel[0] + ky) * kernel[1] + kx] as i64;
                                acc += code(x.data[((n * c + ci) * h + iy as usize) * w + ix as usize]) * q;
                            }
                        }
                    }
                    y[((n * oc + o) * oh + oy) * ow + ox] = acc as i32 as f32 * factor + fold.folded_bias(bias, o);
                }
            }
        }
    }
    y
}

/// A PENNI layer with quantized basis maps (`DecomposedConv2d::basis_quant`) computed on the
/// integers, as an integer engine must. The input lies on a grid of step `scale` (its values
/// give back k - zero_point; the padding reads 0); per basis j,
/// A = sum of base_codes x (k - zero_point), exact, and its map code
/// clamp(round(f32(A) * f_j) + zp_m, qmin_m, qmax_m), f_j = [`grid::basis_map_factor`](crate::grid::basis_map_factor); per
/// output channel o, S = sum of coef_codes x (map code - zp_m), exact, and the output
/// f32(S) * factor + bias as in [`int8_conv2d`], the map scale as input scale.
#[allow(clippy::too_many_arguments)]
pub fn int8_decomposed(
    x: &Activation,
    out: Shape,
    layer: &crate::graph::DecomposedConv2d,
    scale: f32,
    base_codes: &[i8],
    base_scales: &[f32],
    map_grid: (f32, i32, i32, i32),
    coef_codes: &[i8],
    coef_scales: &[f32],
    bias: Option<&[f32]>,
    fold: &Affine,
) -> Vec<f32> {
    let g = &layer.conv;
    let d = layer.num_bases;
    let [kh, kw] = g.kernel;
    let (c, h, w) = dims(x.shape);
    let (oc, oh, ow) = dims(out);
    let (m_scale, m_zp, m_min, m_max) = map_grid;
    let code = |v: f32| (v / scale).round_ties_even() as i64;
    let (cpg, og) = (g.channels_per_group(), oc / g.groups.max(1));
    let mut y = vec![0f32; x.n * oc * oh * ow];
    let mut maps = vec![0i64; c * d * oh * ow];
    for n in 0..x.n {
        for ci in 0..c {
            for j in 0..d {
                let f = crate::grid::basis_map_factor(scale, base_scales[j], m_scale);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0i64;
                        for ky in 0..kh {
                            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
                            for kx in 0..kw {
                                let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                                if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let b = base_codes[(j * kh + ky) * kw + kx] as i64;
                                acc += code(x.data[((n * c + ci) * h + iy as usize) * w + ix as usize]) * b;
                            }
                        }
                        let k = ((acc as i32 as f32 * f).round_ties_even() + m_zp as f32).clamp(m_min as f32, m_max as f32);
                        maps[((ci * d + j) * oh + oy) * ow + ox] = k as i64 - m_zp as i64;
                    }
                }
            }
        }
        for o in 0..oc {
            let factor = crate::grid::int_output_factor(m_scale, coef_scales[o], fold.scale[o]);
            let first = (o / og) * cpg;
            for p in 0..oh * ow {
                let mut acc = 0i64;
                for cl in 0..cpg {
                    for j in 0..d {
                        let a = coef_codes[(o * cpg + cl) * d + j] as i64;
                        acc += a * maps[((first + cl) * d + j) * oh * ow + p];
                    }
                }
                y[(n * oc + o) * oh * ow + p] = acc as i32 as f32 * factor + fold.folded_bias(bias, o);
            }
        }
    }
    y
}

fn pool(x: &Activation, out: Shape, p: &Pool2d, max: bool) -> Vec<f32> {
    let (c, h, w) = dims(x.shape);
    let (_, oh, ow) = dims(out);
    let mut y = vec![0f32; x.n * c * oh * ow];
    for nc in 0..x.n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut m, mut s, mut cnt, mut padded_cnt) = (f32::NEG_INFINITY, 0f64, 0usize, 0usize);
                for ky in 0..p.kernel[0] {
                    for kx in 0..p.kernel[1] {
                        let iy = (oy * p.stride[0] + ky) as isize - p.padding[0] as isize;
                        let ix = (ox * p.stride[1] + kx) as isize - p.padding[1] as isize;
                        // windows may run past the padded border in ceil mode; those cells never count
                        if iy < h as isize + p.padding[2] as isize && ix < w as isize + p.padding[3] as isize {
                            padded_cnt += 1;
                        }
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let v = x.data[(nc * h + iy as usize) * w + ix as usize];
                        m = m.max(v);
                        s += v as f64;
                        cnt += 1;
                    }
                }
                let div = if p.count_include_pad { padded_cnt } else { cnt };
                y[(nc * oh + oy) * ow + ox] = if max { m } else { (s / div.max(1) as f64) as f32 };
            }
        }
    }
    y
}

/// Softmax over the channels (stride h*w within each example), in f64, max-subtracted.
fn softmax(x: &Activation, log: bool) -> Vec<f32> {
    let (c, h, w) = dims(x.shape);
    let hw = h * w;
    let mut y = vec![0f32; x.data.len()];
    for (xs, ys) in x.data.chunks(c * hw).zip(y.chunks_mut(c * hw)) {
        for p in 0..hw {
            let m = (0..c).map(|k| xs[k * hw + p] as f64).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..c).map(|k| (xs[k * hw + p] as f64 - m).exp()).sum();
            for k in 0..c {
                let z = xs[k * hw + p] as f64 - m;
                ys[k * hw + p] = if log { (z - sum.ln()) as f32 } else { (z.exp() / sum) as f32 };
            }
        }
    }
    y
}

fn eval_node(node: &Node, ins: &[&Activation], out: Shape) -> Result<Activation> {
    let x = ins[0];
    let n = x.n;
    let data = match &node.op {
        Op::Conv2d(c) => {
            let bias = node.params.get("bias").map(|b| b.data.as_slice());
            conv(x, out, &node.param("weight")?.data, bias, c)
        }
        Op::DecomposedConv2d(c) if c.basis_quant.is_some() => {
            // quantized basis maps: the two stages as they are defined
            let mut y = x.clone();
            for part in crate::stages::split_decomposed(node)? {
                let shape = crate::graph::node_output_shape(&part, &[y.shape])?;
                y = eval_node(&part, &[&y], shape)?;
            }
            y.data
        }
        Op::DecomposedConv2d(c) => {
            let w = decomposed_weight(node)?;
            let bias = node.params.get("bias").map(|b| b.data.as_slice());
            conv(x, out, &w, bias, &c.conv)
        }
        Op::BatchNorm2d { .. } => {
            let (c, h, w) = dims(x.shape);
            let affine = Affine::of_batchnorm(node)?;
            let mut y = x.data.clone();
            for (i, chunk) in y.chunks_mut(h * w).enumerate() {
                for v in chunk {
                    *v = affine.apply(i % c, *v);
                }
            }
            y
        }
        Op::Relu => x.data.iter().map(|v| v.max(0.0)).collect(),
        Op::Clip { min, max } => x.data.iter().map(|v| v.clamp(*min, *max)).collect(),
        Op::Pad { pads } => {
            let ((_, h, w), (_, oh, ow)) = (dims(x.shape), dims(out));
            let mut y = vec![0f32; n * out.numel()];
            for (src, dst) in x.data.chunks(h * w).zip(y.chunks_mut(oh * ow)) {
                for (row, line) in src.chunks(w).enumerate() {
                    let at = (row + pads[0]) * ow + pads[1];
                    dst[at..at + w].copy_from_slice(line);
                }
            }
            y
        }
        Op::MaxPool2d(p) => pool(x, out, p, true),
        Op::AvgPool2d(p) => pool(x, out, p, false),
        Op::GlobalAvgPool => {
            let (_, h, w) = dims(x.shape);
            x.data
                .chunks(h * w)
                .map(|ch| (ch.iter().map(|v| *v as f64).sum::<f64>() / (h * w) as f64) as f32)
                .collect()
        }
        Op::Add => {
            let mut y = x.data.clone();
            for other in &ins[1..] {
                for (a, b) in y.iter_mut().zip(&other.data) {
                    *a += b;
                }
            }
            y
        }
        Op::Flatten => x.data.clone(),
        Op::Softmax { log } => softmax(x, *log),
        Op::Activation(a) => x.data.iter().map(|v| a.apply(*v)).collect(),
        Op::Mul => {
            // the C x 1 x 1 side (if any) is broadcast over the other's pixels
            let (big, small) = if ins[1].shape.numel() > x.shape.numel() {
                (ins[1], x)
            } else {
                (x, ins[1])
            };
            let (per_big, per_small) = (big.shape.numel(), small.shape.numel());
            let hw = per_big / per_small;
            let mut y = big.data.clone();
            for (i, v) in y.iter_mut().enumerate() {
                let (img, e) = (i / per_big, i % per_big);
                *v *= small.data[img * per_small + e / hw];
            }
            y
        }
        Op::Concat => {
            // per image, each input's channels (c*h*w contiguous values) in turn
            let mut y = Vec::with_capacity(n * out.numel());
            for i in 0..n {
                for a in ins {
                    let per = a.shape.numel();
                    y.extend_from_slice(&a.data[i * per..(i + 1) * per]);
                }
            }
            y
        }
        Op::Linear {
            in_features, out_features, ..
        } => {
            let w = &node.param("weight")?.data;
            let b = node.params.get("bias");
            let mut y = vec![0f32; n * out_features];
            for i in 0..n {
                for o in 0..*out_features {
                    let mut acc = b.map_or(0.0, |b| b.data[o] as f64);
                    for k in 0..*in_features {
                        acc += w[o * in_features + k] as f64 * x.data[i * in_features + k] as f64;
                    }
                    y[i * out_features + o] = acc as f32;
                }
            }
            y
        }
    };
    Ok(Activation { n, shape: out, data })
}
