//! Graph rewrites on the IR that any front end can run once it has built a model: they turn
//! what a file format spells with several ops into the one op that penni's engine runs. Each
//! pass computes exactly what the graph computed before, keeps the node order topological and
//! returns how many rewrites it made; what it cannot rewrite it leaves as it is.

use crate::batchnorm::Affine;
use crate::error::Result;
use crate::graph::{Activation, Model, Node, Op, Pool2d};
use crate::tensor::Tensor;

/// Merges each zero `Pad` into the padding of the convolutions that read it: a Pad whose
/// readers are all `Conv2d`, `DecomposedConv2d` or further Pads, and whose output is not the
/// model output, disappears and its readers read its input with the padding added. Chains of
/// Pads add up. A conv whose padding was derived from the padded size (ONNX `auto_pad`) keeps
/// it: zero padding is additive, so conv(pad(x, a), padding p) = conv(x, padding a + p).
pub fn fold_pads(model: &mut Model) -> usize {
    let mut folded = 0;
    let mut i = 0;
    // Nodes are in topological order, so a Pad that folds into a later Pad is gone before that
    // one is looked at, which then carries both paddings.
    while i < model.nodes.len() {
        if fold_pad(model, i) {
            folded += 1;
        } else {
            i += 1;
        }
    }
    folded
}

/// Folds the Pad at `i` into its readers; false (and no change) when it is not a Pad or cannot fold.
fn fold_pad(model: &mut Model, i: usize) -> bool {
    let node = &model.nodes[i];
    let Op::Pad { pads } = node.op else {
        return false;
    };
    if node.inputs.len() != 1 || node.output == model.output {
        return false;
    }
    let (source, padded) = (node.inputs[0].clone(), node.output.clone());
    let readers = model.consumers(&padded);
    let mut merged = Vec::with_capacity(readers.len());
    for &r in &readers {
        let current = match &model.nodes[r].op {
            Op::Conv2d(c) => c.padding,
            Op::DecomposedConv2d(d) => d.conv.padding,
            Op::Pad { pads } => *pads,
            _ => return false,
        };
        let mut sum = [0usize; 4];
        for k in 0..4 {
            match current[k].checked_add(pads[k]) {
                Some(v) => sum[k] = v,
                None => return false,
            }
        }
        merged.push(sum);
    }
    for (&r, sum) in readers.iter().zip(merged) {
        let reader = &mut model.nodes[r];
        match &mut reader.op {
            Op::Conv2d(c) => c.padding = sum,
            Op::DecomposedConv2d(d) => d.conv.padding = sum,
            Op::Pad { pads } => *pads = sum,
            _ => unreachable!("checked above"),
        }
        for input in reader.inputs.iter_mut().filter(|n| **n == padded) {
            input.clone_from(&source);
        }
    }
    model.nodes.remove(i);
    true
}

/// Fuses `x * HardSigmoid(x; alpha 1/6, beta 1/2)` (how ONNX before opset 14 and PyTorch's
/// exporters write HardSwish) into one `HardSwish`. The gate must be read by that Mul only and
/// not be the model output; the fused node sits where the gate was and takes the Mul's name
/// and output, so everything that read the Mul reads it.
pub fn fuse_hard_swish(model: &mut Model) -> usize {
    let mut fused = 0;
    let mut i = 0;
    while i < model.nodes.len() {
        match hard_swish_gate(model, i) {
            Some(gate) => {
                let mul = model.nodes.remove(i);
                // the gate comes before the Mul, so removing the Mul leaves its index alone
                let node = &mut model.nodes[gate];
                node.op = Op::Activation(Activation::HardSwish);
                node.name = mul.name;
                node.output = mul.output;
                fused += 1;
            }
            None => i += 1,
        }
    }
    fused
}

/// The index of the HardSigmoid node that the Mul at `i` fuses with, if any.
fn hard_swish_gate(model: &Model, i: usize) -> Option<usize> {
    let mul = &model.nodes[i];
    if mul.op != Op::Mul || mul.inputs.len() != 2 {
        return None;
    }
    [(0, 1), (1, 0)].into_iter().find_map(|(x, g)| {
        let (x, gate) = (&mul.inputs[x], &mul.inputs[g]);
        let p = model.producer(gate)?;
        let n = &model.nodes[p];
        let Op::Activation(Activation::HardSigmoid { alpha, beta }) = n.op else {
            return None;
        };
        let is_swish = (alpha - 1.0 / 6.0).abs() < 1e-6 && beta == 0.5;
        let sole_reader = *gate != model.output && model.consumers(gate) == [i];
        (is_swish && sole_reader && n.inputs.len() == 1 && n.inputs[0] == *x && p < i).then_some(p)
    })
}

/// Computes each average pool of a linear convolution's output at the pooled resolution
/// (MLCNN's conv-pool co-optimization, exact): `conv(k x k, stride 1, padding p) -> [batchnorms]
/// -> AvgPool(window w, stride s, no padding)` becomes `AvgPool(w, stride 1, padding p, zeros
/// counted) -> conv(k x k, stride s, no padding) -> [batchnorms]`. Averaging commutes with the
/// convolution and with the per-channel affine batchnorms, so the input windows are averaged
/// once and the convolution runs s*s times fewer positions (4x fewer multiply-accumulates for
/// a 2x2 pool). Dense and decomposed convolutions alike (not those with quantized basis maps);
/// the intermediate maps must be read by the chain only. Returns the number of pools moved.
pub fn pool_before_conv(model: &mut Model) -> usize {
    let mut moved = 0;
    let mut i = 0;
    while i < model.nodes.len() {
        if pool_before_conv_at(model, i) {
            moved += 1;
        }
        i += 1;
    }
    moved
}

/// The rewrite for the convolution at `i`; false (and no change) where it does not apply.
fn pool_before_conv_at(model: &mut Model, i: usize) -> bool {
    let spec = match &model.nodes[i].op {
        Op::Conv2d(c) => *c,
        // quantized basis maps make the layer nonlinear: averaging no longer commutes
        Op::DecomposedConv2d(d) if d.basis_quant.is_none() => d.conv,
        _ => return false,
    };
    if spec.stride != [1, 1] || model.nodes[i].inputs.len() != 1 {
        return false;
    }
    // follow the sole readers: batchnorms, then the average pool
    let sole_reader = |m: &Model, t: &str| -> Option<usize> {
        let r = m.consumers(t);
        (r.len() == 1 && t != m.output && m.nodes[r[0]].inputs.len() == 1).then(|| r[0])
    };
    let mut chain = vec![i];
    let pool_at = loop {
        let last = *chain.last().expect("starts with the conv");
        let Some(r) = sole_reader(model, &model.nodes[last].output) else {
            return false;
        };
        match &model.nodes[r].op {
            Op::BatchNorm2d { .. } => chain.push(r),
            Op::AvgPool2d(p) if p.padding == [0; 4] && p.stride != [1, 1] => break r,
            _ => return false,
        }
    };
    let Op::AvgPool2d(pool) = model.nodes[pool_at].op.clone() else {
        return false;
    };
    let mut rewritten = model.clone();
    let pooled_input = format!("{}:pooled_input", model.nodes[pool_at].name);
    if model.producer(&pooled_input).is_some() || pooled_input == model.input.name {
        return false;
    }
    {
        let nodes = &mut rewritten.nodes;
        let conv = &mut nodes[i];
        let c = match &mut conv.op {
            Op::Conv2d(c) => c,
            Op::DecomposedConv2d(d) => &mut d.conv,
            _ => return false,
        };
        c.stride = pool.stride;
        c.padding = [0; 4];
        let source = std::mem::replace(&mut conv.inputs[0], pooled_input.clone());
        let last = *chain.last().expect("starts with the conv");
        nodes[last].output = nodes[pool_at].output.clone();
        let mut pre = nodes[pool_at].clone();
        pre.op = Op::AvgPool2d(Pool2d {
            kernel: pool.kernel,
            stride: [1, 1],
            padding: spec.padding,
            ceil_mode: false,
            count_include_pad: true,
        });
        pre.inputs = vec![source];
        pre.output = pooled_input;
        nodes.remove(pool_at);
        nodes.insert(i, pre);
    }
    // same output shape, or no rewrite (ceil mode with a partial window, a window wider than
    // the padded input)
    let before = model.infer_shapes();
    let after = rewritten.infer_shapes();
    match (before, after) {
        (Ok(b), Ok(a)) if b.get(&model.nodes[pool_at].output) == a.get(&model.nodes[pool_at].output) => {
            *model = rewritten;
            true
        }
        _ => false,
    }
}

/// Moves each non-decreasing activation after the max pool that alone reads it (MLCNN's
/// conv-pool co-optimization, exact): `act -> MaxPool` becomes `MaxPool -> act`, so the
/// activation runs on the pooled map. For a non-decreasing f, max(f(a), f(b)) = f(max(a, b)),
/// and a max pool's padding is never the maximum of a window that holds a value. ReLU, Clip,
/// Sigmoid, HardSigmoid and LeakyReLU with a slope >= 0 move; HardSwish (not monotone) and
/// quantize-dequantize (integer kernels read the codes where calibration put it) stay.
/// Returns the number of moves.
pub fn activation_after_max_pool(model: &mut Model) -> usize {
    swap_activations_and_pools(model, |act, pool| matches!(pool, Op::MaxPool2d(_)) && non_decreasing(act))
}

/// Moves each element-wise activation after the average pool that alone reads it: `act ->
/// AvgPool` becomes `AvgPool -> act` (MLCNN's approximate reordering). This changes what the
/// model computes (an average of activations is not the activation of the average), so a
/// model needs fine-tuning after it; in return the pool can then move before a linear
/// convolution ([`pool_before_conv`]). Quantize-dequantize stays. Returns the number of moves.
pub fn pool_before_activation(model: &mut Model) -> usize {
    swap_activations_and_pools(model, |act, pool| {
        matches!(pool, Op::AvgPool2d(_))
            && matches!(act, Op::Relu | Op::Clip { .. } | Op::Activation(_))
            && !matches!(act, Op::Activation(Activation::QuantizeDequantize { .. }))
    })
}

/// Whether an element-wise op is a non-decreasing function (so it commutes with max).
fn non_decreasing(op: &Op) -> bool {
    match op {
        Op::Relu | Op::Clip { .. } => true,
        Op::Activation(a) => match *a {
            Activation::Sigmoid => true,
            Activation::HardSigmoid { alpha, .. } | Activation::LeakyRelu { alpha } => alpha >= 0.0,
            Activation::HardSwish | Activation::QuantizeDequantize { .. } => false,
        },
        _ => false,
    }
}

/// Swaps every activation with the pool that alone reads it where `swap(act, pool)` says so,
/// until none is left (an activation chain moves past the pool one node at a time).
fn swap_activations_and_pools(model: &mut Model, swap: impl Fn(&Op, &Op) -> bool) -> usize {
    let mut moved = 0;
    loop {
        let before = moved;
        for i in 0..model.nodes.len() {
            if swap_at(model, i, &swap) {
                moved += 1;
            }
        }
        if moved == before {
            return moved;
        }
    }
}

/// The swap for the activation at `i`; false (and no change) where it does not apply.
fn swap_at(model: &mut Model, i: usize, swap: &impl Fn(&Op, &Op) -> bool) -> bool {
    let act = &model.nodes[i];
    if act.inputs.len() != 1 || act.output == model.output {
        return false;
    }
    let readers = model.consumers(&act.output);
    let [j] = readers[..] else {
        return false;
    };
    let pool = &model.nodes[j];
    if pool.inputs.len() != 1 || !swap(&act.op, &pool.op) {
        return false;
    }
    // the pooled, not yet activated map gets a name of its own (a chain of activations moves
    // past the same pool several times)
    let taken = |t: &str| model.producer(t).is_some() || t == model.input.name || !model.consumers(t).is_empty();
    let Some(pooled) = (0..model.nodes.len() + 1)
        .map(|k| {
            format!(
                "{}:before_activation{}",
                pool.name,
                if k == 0 { String::new() } else { k.to_string() }
            )
        })
        .find(|t| !taken(t))
    else {
        return false;
    };
    let source = act.inputs[0].clone();
    let pool_output = std::mem::replace(&mut model.nodes[j].output, pooled.clone());
    model.nodes[j].inputs = vec![source];
    let mut act = model.nodes.remove(i);
    act.inputs = vec![pooled];
    act.output = pool_output;
    // the pool is now at j - 1; the activation goes right after it
    model.nodes.insert(j, act);
    true
}

/// Folds every batchnorm that is the sole reader of a convolution's output (dense or
/// decomposed) into that convolution: the per-channel affine map scales the output channel's
/// weights (a decomposed conv's coefficients; the shared bases stay) and becomes its bias.
/// Quantizers fold first, so that the weights they put on a grid are the ones that run and
/// the activation ranges they measure are those of the folded model. Returns the number folded.
pub fn fold_batchnorms(model: &mut Model) -> usize {
    let mut folded = 0;
    let mut i = 0;
    while i < model.nodes.len() {
        if fold_batchnorm_into(model, i) {
            folded += 1;
        } else {
            i += 1;
        }
    }
    folded
}

/// Folds the batchnorm that reads the conv at `i`, if there is one to fold.
fn fold_batchnorm_into(model: &mut Model, i: usize) -> bool {
    let (out_channels, per_channel) = match &model.nodes[i].op {
        Op::Conv2d(c) => (c.out_channels, "weight"),
        Op::DecomposedConv2d(d) => (d.conv.out_channels, "coefficients"),
        _ => return false,
    };
    let out = &model.nodes[i].output;
    let readers = model.consumers(out);
    if readers.len() != 1 || *out == model.output {
        return false;
    }
    let bn = readers[0];
    let Ok(affine) = Affine::of_batchnorm(&model.nodes[bn]) else {
        return false;
    };
    if affine.scale.len() != out_channels || model.nodes[bn].inputs.len() != 1 {
        return false;
    }
    let bn_output = model.nodes[bn].output.clone();
    let conv = &mut model.nodes[i];
    let Some(w) = conv.params.get_mut(per_channel) else {
        return false;
    };
    let run = w.data.len() / out_channels;
    for (n, chunk) in w.data.chunks_mut(run).enumerate() {
        for v in chunk {
            *v = (*v as f64 * affine.scale[n]) as f32;
        }
    }
    let old_bias = conv.params.get("bias").map(|b| b.data.clone());
    let bias = (0..out_channels)
        .map(|n| (old_bias.as_ref().map_or(0.0, |b| b[n] as f64) * affine.scale[n] + affine.shift[n]) as f32)
        .collect();
    conv.params.insert(
        "bias".into(),
        Tensor {
            shape: vec![out_channels],
            data: bias,
        },
    );
    match &mut conv.op {
        Op::Conv2d(c) => c.bias = true,
        Op::DecomposedConv2d(d) => d.conv.bias = true,
        _ => unreachable!("matched above"),
    }
    conv.output = bn_output;
    model.nodes.remove(bn);
    true
}

/// Replaces every decomposed conv with quantized basis maps for which `split` holds by the
/// ops of [`crate::stages::split_decomposed`] (for a runtime that has no integer kernel for the
/// layer).
/// Names that would clash with the model's get a numeric suffix.
pub fn split_quantized_decomposed(model: &mut Model, split: impl Fn(&Node) -> bool) -> Result<usize> {
    let mut count = 0;
    let mut i = 0;
    while i < model.nodes.len() {
        let n = &model.nodes[i];
        let quantized = matches!(&n.op, Op::DecomposedConv2d(dc) if dc.basis_quant.is_some());
        if !quantized || !split(n) {
            i += 1;
            continue;
        }
        let mut parts = crate::stages::split_decomposed(n)?;
        let last = parts.len() - 1;
        for k in 0..last {
            parts[k].name = model.unused_name(&parts[k].name);
            parts[k].output = model.unused_name(&parts[k].output);
            parts[k + 1].inputs = vec![parts[k].output.clone()];
        }
        let added = parts.len();
        model.nodes.splice(i..=i, parts);
        i += added;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::graph::{Conv2d, DecomposedConv2d, Input, Node, Pool2d};
    use crate::reference::{Activation as Batch, forward};
    use crate::tensor::Tensor;
    use crate::zoo::InitRng;

    fn node(name: &str, op: Op, inputs: &[&str], output: &str, rng: &mut InitRng) -> Node {
        let params = op
            .param_shapes()
            .into_iter()
            .map(|(p, shape)| {
                let n = shape.iter().product();
                // running_var must not be negative
                let data = (0..n).map(|_| if p == "running_var" { 1.0 } else { rng.normal() }).collect();
                (p.to_string(), Tensor { shape, data })
            })
            .collect::<BTreeMap<_, _>>();
        Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.into(),
            params,
        }
    }

    fn model(c: usize, h: usize, w: usize, nodes: Vec<Node>, output: &str) -> Model {
        Model {
            name: "m".into(),
            input: Input {
                name: "x".into(),
                channels: c,
                height: h,
                width: w,
            },
            nodes,
            output: output.into(),
        }
    }

    fn conv(c: usize, m: usize, k: usize, stride: usize, padding: [usize; 4], groups: usize) -> Conv2d {
        Conv2d {
            in_channels: c,
            out_channels: m,
            kernel: [k, k],
            stride: [stride; 2],
            padding,
            dilation: [1; 2],
            groups,
            bias: true,
        }
    }

    fn pad(pads: [usize; 4]) -> Op {
        Op::Pad { pads }
    }

    /// Output of the reference forward pass on a seeded batch of two.
    fn run(m: &Model) -> Vec<f32> {
        let shape = m.input_shape();
        let mut rng = InitRng::new(7);
        let x = Batch {
            n: 2,
            shape,
            data: (0..2 * shape.numel()).map(|_| rng.normal() * 4.0).collect(),
        };
        forward(m, &x).unwrap().data
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }

    fn kinds(m: &Model) -> Vec<&'static str> {
        m.nodes.iter().map(|n| n.op.kind()).collect()
    }

    /// Runs `pass` on `m` and checks that the output is the unrewritten graph's; returns the
    /// rewritten model and the number of rewrites.
    fn rewrite(mut m: Model, pass: fn(&mut Model) -> usize) -> (Model, usize) {
        m.validate().unwrap();
        let want = run(&m);
        let n = pass(&mut m);
        m.validate().unwrap();
        assert_close(&run(&m), &want);
        (m, n)
    }

    #[test]
    fn pads_fold_into_the_convs_that_read_them() {
        let mut rng = InitRng::new(1);
        // asymmetric pad, strided conv with its own padding
        let m = model(
            2,
            5,
            6,
            vec![
                node("p", pad([1, 2, 0, 1]), &["x"], "xp", &mut rng),
                node("c", Op::Conv2d(conv(2, 3, 3, 2, [0, 1, 1, 0], 1)), &["xp"], "y", &mut rng),
            ],
            "y",
        );
        let (m, n) = rewrite(m, fold_pads);
        assert_eq!(n, 1);
        assert_eq!(kinds(&m), ["Conv2d"]);
        let Op::Conv2d(c) = &m.nodes[0].op else { panic!() };
        assert_eq!(c.padding, [1, 3, 1, 1]);
        assert_eq!(m.nodes[0].inputs, ["x"]);
    }

    #[test]
    fn chained_pads_and_several_conv_readers_fold() {
        let mut rng = InitRng::new(2);
        let dc = DecomposedConv2d::from_conv(&conv(2, 4, 3, 1, [0; 4], 2), 2);
        let m = model(
            2,
            4,
            4,
            vec![
                node("relu", Op::Relu, &["x"], "r", &mut rng),
                node("p1", pad([1, 0, 0, 0]), &["r"], "r1", &mut rng),
                node("p2", pad([0, 1, 1, 1]), &["r1"], "r2", &mut rng),
                node("a", Op::Conv2d(conv(2, 4, 3, 1, [0; 4], 1)), &["r2"], "ya", &mut rng),
                node("b", Op::DecomposedConv2d(dc), &["r2"], "yb", &mut rng),
                node("sum", Op::Add, &["ya", "yb"], "y", &mut rng),
            ],
            "y",
        );
        let (m, n) = rewrite(m, fold_pads);
        assert_eq!(n, 2);
        assert_eq!(kinds(&m), ["ReLU", "Conv2d", "DecomposedConv2d", "Add"]);
        for node in &m.nodes[1..3] {
            assert_eq!(node.inputs, ["r"]);
        }
        let Op::DecomposedConv2d(d) = &m.nodes[2].op else { panic!() };
        assert_eq!(d.conv.padding, [1, 1, 1, 1]);
    }

    #[test]
    fn pads_that_cannot_fold_stay() {
        let mut rng = InitRng::new(3);
        let pool = Pool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0; 4],
            ceil_mode: false,
            count_include_pad: false,
        };
        // read by a conv and a max pool (which pads with -inf, not zeros)
        let m = model(
            1,
            4,
            4,
            vec![
                node("p", pad([1, 1, 1, 1]), &["x"], "xp", &mut rng),
                node("c", Op::Conv2d(conv(1, 1, 2, 2, [0; 4], 1)), &["xp"], "a", &mut rng),
                node("m", Op::MaxPool2d(pool), &["xp"], "b", &mut rng),
                node("sum", Op::Add, &["a", "b"], "y", &mut rng),
            ],
            "y",
        );
        let (m, n) = rewrite(m, fold_pads);
        assert_eq!((n, kinds(&m)), (0, vec!["Pad", "Conv2d", "MaxPool2d", "Add"]));
        // the model output
        let m = model(1, 3, 3, vec![node("p", pad([0, 1, 0, 1]), &["x"], "y", &mut rng)], "y");
        let (m, n) = rewrite(m, fold_pads);
        assert_eq!((n, kinds(&m)), (0, vec!["Pad"]));
        // a Relu between the Pad and the Conv: only direct Conv readers take a Pad
        let m = model(
            1,
            3,
            3,
            vec![
                node("p", pad([1; 4]), &["x"], "xp", &mut rng),
                node("r", Op::Relu, &["xp"], "r", &mut rng),
                node("c", Op::Conv2d(conv(1, 2, 3, 1, [0; 4], 1)), &["r"], "y", &mut rng),
            ],
            "y",
        );
        let (m, n) = rewrite(m, fold_pads);
        assert_eq!((n, kinds(&m)), (0, vec!["Pad", "ReLU", "Conv2d"]));
    }

    fn hard_sigmoid(alpha: f32, beta: f32) -> Op {
        Op::Activation(Activation::HardSigmoid { alpha, beta })
    }

    #[test]
    fn x_times_its_hard_sigmoid_becomes_a_hard_swish() {
        let mut rng = InitRng::new(4);
        for gate_first in [false, true] {
            let mul_in: [&str; 2] = if gate_first { ["g", "r"] } else { ["r", "g"] };
            let m = model(
                2,
                3,
                3,
                vec![
                    node("c", Op::Conv2d(conv(2, 2, 1, 1, [0; 4], 1)), &["x"], "r", &mut rng),
                    node("hs", hard_sigmoid(1.0 / 6.0, 0.5), &["r"], "g", &mut rng),
                    node("mul", Op::Mul, &mul_in, "h", &mut rng),
                    node("flat", Op::Flatten, &["h"], "y", &mut rng),
                ],
                "y",
            );
            let (m, n) = rewrite(m, fuse_hard_swish);
            assert_eq!(n, 1);
            assert_eq!(kinds(&m), ["Conv2d", "HardSwish", "Flatten"]);
            let hs = &m.nodes[1];
            assert_eq!(
                (hs.name.as_str(), hs.inputs.as_slice(), hs.output.as_str()),
                ("mul", &["r".to_string()][..], "h")
            );
        }
    }

    #[test]
    fn other_gates_do_not_fuse() {
        let mut rng = InitRng::new(5);
        let cases: Vec<(Vec<Node>, &str)> = vec![
            // the PyTorch default HardSigmoid (alpha 0.2) is not HardSwish's gate
            (
                vec![
                    node("hs", hard_sigmoid(0.2, 0.5), &["x"], "g", &mut rng),
                    node("mul", Op::Mul, &["x", "g"], "y", &mut rng),
                ],
                "y",
            ),
            // the gate is read by something else too
            (
                vec![
                    node("hs", hard_sigmoid(1.0 / 6.0, 0.5), &["x"], "g", &mut rng),
                    node("mul", Op::Mul, &["x", "g"], "m", &mut rng),
                    node("sum", Op::Add, &["m", "g"], "y", &mut rng),
                ],
                "y",
            ),
            // the gate of another tensor
            (
                vec![
                    node("r", Op::Relu, &["x"], "r", &mut rng),
                    node("hs", hard_sigmoid(1.0 / 6.0, 0.5), &["r"], "g", &mut rng),
                    node("mul", Op::Mul, &["x", "g"], "y", &mut rng),
                ],
                "y",
            ),
        ];
        for (nodes, out) in cases {
            let before: Vec<&str> = nodes.iter().map(|n| n.op.kind()).collect();
            let (m, n) = rewrite(model(2, 2, 3, nodes.clone(), out), fuse_hard_swish);
            assert_eq!((n, kinds(&m)), (0, before));
        }
    }
}
