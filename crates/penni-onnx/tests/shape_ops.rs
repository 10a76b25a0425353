//! The patterns that PyTorch's exporters write around flatten and global pooling, built here
//! without PyTorch (the real exports are tested in crates/penni-cli/tests/torch_flow.rs):
//! shape arithmetic on a symbolic batch (Shape, Gather, Unsqueeze, Squeeze, Concat, Reshape),
//! ReduceMean as global average pooling, and the constant folds of Cast, CastLike, Expand,
//! Gather and Concat. Each imported model is checked against the reference forward pass of a
//! hand-written IR model, or its folded weights against the values ONNX defines.

mod common;

use std::collections::BTreeMap;

use common::proto::{attr_int, attr_ints, attr_string, vi};

use penni_model::reference::{Activation, forward};
use penni_model::zoo::InitRng;
use penni_model::{Conv2d, Input, Model, Node, Op, Tensor};
use penni_onnx::OnnxError;
use penni_onnx::proto::*;

fn floats(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn ints64(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::INT64,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("/{output}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn rand(rng: &mut InitRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * 0.3).collect()
}

/// Weights of the small model every test starts from: x (2 x 4 x 4) -> Conv 3x3 (3 out,
/// padding 1) -> Relu -> [the pattern under test] -> Gemm (5 out).
struct Weights {
    conv_w: Vec<f32>,
    conv_b: Vec<f32>,
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
}

fn weights(fc_in: usize) -> Weights {
    let mut rng = InitRng::new(11);
    Weights {
        conv_w: rand(&mut rng, 3 * 2 * 9),
        conv_b: rand(&mut rng, 3),
        fc_w: rand(&mut rng, 5 * fc_in),
        fc_b: rand(&mut rng, 5),
    }
}

/// An ONNX model: `nodes` read "r" (the Relu output, 3 x 4 x 4) and write "flat" (N x fc_in).
fn onnx_model(opset: i64, batch: Option<i64>, fc_in: usize, nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    let w = weights(fc_in);
    let mut node = vec![
        node("Conv", &["x", "conv.w", "conv.b"], "c", vec![attr_ints("pads", &[1, 1, 1, 1])]),
        node("Relu", &["c"], "r", vec![]),
    ];
    node.extend(nodes);
    node.push(node_gemm());
    let mut initializer = vec![
        floats("conv.w", &[3, 2, 3, 3], &w.conv_w),
        floats("conv.b", &[3], &w.conv_b),
        floats("fc.w", &[5, fc_in as i64], &w.fc_w),
        floats("fc.b", &[5], &w.fc_b),
    ];
    initializer.extend(inits);
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "pytorch".into(),
        graph: Some(GraphProto {
            name: "main_graph".into(),
            node,
            initializer,
            input: vec![vi("x", &[batch, Some(2), Some(4), Some(4)])],
            output: vec![vi("y", &[batch, Some(5)])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node_gemm() -> NodeProto {
    node("Gemm", &["flat", "fc.w", "fc.b"], "y", vec![attr_int("transB", 1)])
}

/// The IR model the patterns must come out as: Conv, Relu, `mid`, Linear.
fn ir_model(fc_in: usize, mid: &[Op]) -> Model {
    let w = weights(fc_in);
    let t = |shape: Vec<usize>, data: Vec<f32>| Tensor::new(shape, data).unwrap();
    let mut nodes = vec![
        Node {
            name: "conv".into(),
            op: Op::Conv2d(Conv2d {
                in_channels: 2,
                out_channels: 3,
                kernel: [3, 3],
                stride: [1, 1],
                padding: [1; 4],
                dilation: [1, 1],
                groups: 1,
                bias: true,
            }),
            inputs: vec!["x".into()],
            output: "c".into(),
            params: BTreeMap::from([
                ("weight".into(), t(vec![3, 2, 3, 3], w.conv_w)),
                ("bias".into(), t(vec![3], w.conv_b)),
            ]),
        },
        Node {
            name: "relu".into(),
            op: Op::Relu,
            inputs: vec!["c".into()],
            output: "t0".into(),
            params: BTreeMap::new(),
        },
    ];
    for (i, op) in mid.iter().enumerate() {
        nodes.push(Node {
            name: format!("mid{i}"),
            op: op.clone(),
            inputs: vec![format!("t{i}")],
            output: format!("t{}", i + 1),
            params: BTreeMap::new(),
        });
    }
    nodes.push(Node {
        name: "fc".into(),
        op: Op::Linear {
            in_features: fc_in,
            out_features: 5,
            bias: true,
        },
        inputs: vec![format!("t{}", mid.len())],
        output: "y".into(),
        params: BTreeMap::from([("weight".into(), t(vec![5, fc_in], w.fc_w)), ("bias".into(), t(vec![5], w.fc_b))]),
    });
    let m = Model {
        name: "expected".into(),
        input: Input {
            name: "x".into(),
            channels: 2,
            height: 4,
            width: 4,
        },
        nodes,
        output: "y".into(),
    };
    m.validate().unwrap();
    m
}

fn import(p: &ModelProto) -> Result<Model, OnnxError> {
    penni_onnx::import_proto(p, "test.onnx")
}

fn kinds(m: &Model) -> Vec<&'static str> {
    m.nodes.iter().map(|n| n.op.kind()).collect()
}

/// Imports `p` and checks that it has the ops and computes the function of `ir_model(fc_in, mid)`.
fn check(p: &ModelProto, fc_in: usize, mid: &[Op]) -> Model {
    let got = import(p).unwrap_or_else(|e| panic!("{e}"));
    let want = ir_model(fc_in, mid);
    assert_eq!(kinds(&got), kinds(&want));
    let mut rng = InitRng::new(3);
    let x = Activation {
        n: 3,
        shape: want.input_shape(),
        data: (0..3 * 32).map(|_| rng.normal()).collect(),
    };
    let (a, b) = (forward(&got, &x).unwrap(), forward(&want, &x).unwrap());
    assert_eq!(a.data, b.data);
    got
}

/// TorchScript's `x.view(x.size(0), -1)`: Shape -> Gather(0) -> Unsqueeze -> Concat with [-1].
fn view_batch_minus_one(opset: i64) -> (Vec<NodeProto>, Vec<TensorProto>) {
    let unsqueeze = if opset >= 13 {
        node("Unsqueeze", &["n", "axes0"], "n1", vec![])
    } else {
        node("Unsqueeze", &["n"], "n1", vec![attr_ints("axes", &[0])])
    };
    let nodes = vec![
        node("Shape", &["r"], "s", vec![]),
        node("Gather", &["s", "zero"], "n", vec![attr_int("axis", 0)]),
        unsqueeze,
        node("Concat", &["n1", "minus1"], "target", vec![attr_int("axis", 0)]),
        node("Reshape", &["r", "target"], "flat", vec![]),
    ];
    let inits = vec![
        ints64("zero", &[], &[0]),
        ints64("axes0", &[1], &[0]),
        ints64("minus1", &[1], &[-1]),
    ];
    (nodes, inits)
}

#[test]
fn torchscript_view_with_the_run_time_batch_size_is_a_flatten() {
    for opset in [11, 13, 17] {
        for batch in [None, Some(3)] {
            let (nodes, inits) = view_batch_minus_one(opset);
            check(&onnx_model(opset, batch, 48, nodes, inits), 48, &[Op::Flatten]);
        }
    }
}

#[test]
fn dynamo_unoptimized_flatten_target_is_a_flatten() {
    // Shape(start=0, end=1) -> Squeeze -> Reshape([-1]) -> Concat with [48] -> Reshape(allowzero=1)
    let nodes = vec![
        node("Shape", &["r"], "s", vec![attr_int("start", 0), attr_int("end", 1)]),
        node("Squeeze", &["s"], "n", vec![]),
        node("Reshape", &["n", "minus1"], "n1", vec![]),
        node("Concat", &["n1", "feat"], "target", vec![attr_int("axis", 0)]),
        node("Reshape", &["r", "target"], "flat", vec![attr_int("allowzero", 1)]),
    ];
    let inits = vec![ints64("minus1", &[1], &[-1]), ints64("feat", &[1], &[48])];
    check(&onnx_model(18, None, 48, nodes, inits), 48, &[Op::Flatten]);
    // the shape without the batch: Shape(start=1) = [3, 4, 4], a constant
    let nodes = vec![
        node("Shape", &["r"], "s", vec![attr_int("start", -3)]),
        node("Concat", &["zero", "s"], "target", vec![attr_int("axis", 0)]),
        node("Reshape", &["r", "target"], "same", vec![]),
        node("Flatten", &["same"], "flat", vec![]),
    ];
    check(
        &onnx_model(18, None, 48, nodes, vec![ints64("zero", &[1], &[0])]),
        48,
        &[Op::Flatten],
    );
}

#[test]
fn reduce_mean_over_space_is_global_average_pooling() {
    // opset 18: axes as an input; keepdims=1 then Flatten, or keepdims=0
    let nodes = vec![
        node("ReduceMean", &["r", "axes"], "m", vec![attr_int("keepdims", 1)]),
        node("Reshape", &["m", "target"], "flat", vec![attr_int("allowzero", 1)]),
    ];
    let inits = vec![ints64("axes", &[2], &[-1, -2]), ints64("target", &[2], &[-1, 3])];
    check(&onnx_model(18, None, 3, nodes, inits), 3, &[Op::GlobalAvgPool, Op::Flatten]);
    let nodes = vec![node("ReduceMean", &["r", "axes"], "flat", vec![attr_int("keepdims", 0)])];
    let inits = vec![ints64("axes", &[2], &[2, 3])];
    check(&onnx_model(18, None, 3, nodes, inits), 3, &[Op::GlobalAvgPool, Op::Flatten]);
    // opset 13: axes as an attribute, keepdims defaults to 1
    let nodes = vec![
        node("ReduceMean", &["r"], "m", vec![attr_ints("axes", &[3, 2])]),
        node("Flatten", &["m"], "flat", vec![]),
    ];
    check(&onnx_model(13, Some(1), 3, nodes, vec![]), 3, &[Op::GlobalAvgPool, Op::Flatten]);
    // opset 18, no axes and noop_with_empty_axes=1: the identity
    let nodes = vec![
        node("ReduceMean", &["r"], "m", vec![attr_int("noop_with_empty_axes", 1)]),
        node("Flatten", &["m"], "flat", vec![]),
    ];
    check(&onnx_model(18, None, 48, nodes, vec![]), 48, &[Op::Flatten]);
}

/// The weight of the imported Gemm, built from `w` by the pattern in `nodes`.
fn folded_fc_weight(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, fc_in: usize) -> Vec<f32> {
    let mut p = onnx_model(13, None, fc_in, vec![node("Flatten", &["r"], "flat", vec![])], inits);
    let g = p.graph.as_mut().unwrap();
    g.initializer.retain(|t| t.name != "fc.w");
    let last = g.node.len() - 1;
    g.node.splice(last..last, nodes);
    let m = import(&p).unwrap_or_else(|e| panic!("{e}"));
    m.nodes.last().unwrap().params["weight"].data.clone()
}

#[test]
fn constants_fold_as_onnx_defines() {
    let ramp = |n: usize| (0..n).map(|i| i as f32).collect::<Vec<f32>>();
    // Gather along axis 1 with a negative index, rows of a 5 x 2 x 48 constant
    let w = folded_fc_weight(
        vec![node("Gather", &["big", "idx"], "fc.w", vec![attr_int("axis", 1)])],
        vec![floats("big", &[5, 2, 48], &ramp(480)), ints64("idx", &[], &[-1])],
        48,
    );
    let want: Vec<f32> = (0..5).flat_map(|o| (0..48).map(move |k| (o * 96 + 48 + k) as f32)).collect();
    assert_eq!(w, want);
    // Concat along axis 1 of 5 x 16 and 5 x 32
    let w = folded_fc_weight(
        vec![node("Concat", &["a", "b"], "fc.w", vec![attr_int("axis", -1)])],
        vec![floats("a", &[5, 16], &ramp(80)), floats("b", &[5, 32], &vec![-1.0; 160])],
        48,
    );
    for o in 0..5 {
        assert_eq!(&w[o * 48..o * 48 + 16], &ramp(80)[o * 16..o * 16 + 16]);
        assert!(w[o * 48 + 16..o * 48 + 48].iter().all(|v| *v == -1.0));
    }
    // Expand a 5 x 1 column to 5 x 48, its values cast to int32 (truncated) and back to float
    let w = folded_fc_weight(
        vec![
            node("Cast", &["col"], "coli", vec![attr_int("to", data_type::INT32 as i64)]),
            node("Expand", &["coli", "shape"], "wide", vec![]),
            node("CastLike", &["wide", "r"], "fc.w", vec![]),
        ],
        vec![
            floats("col", &[5, 1], &[1.9, -1.9, 2.5, 0.0, -0.5]),
            ints64("shape", &[2], &[1, 48]),
        ],
        48,
    );
    let want: Vec<f32> = [1.0, -1.0, 2.0, 0.0, 0.0].iter().flat_map(|v| vec![*v; 48]).collect();
    assert_eq!(w, want);
    // Unsqueeze / Squeeze of constants only change the shape
    let w = folded_fc_weight(
        vec![
            node("Unsqueeze", &["flat_w", "ax"], "u", vec![]),
            node("Squeeze", &["u"], "fc.w", vec![]),
        ],
        vec![floats("flat_w", &[5, 48], &ramp(240)), ints64("ax", &[2], &[0, -1])],
        48,
    );
    assert_eq!(w, ramp(240));
}

#[test]
fn what_penni_cannot_express_is_listed_together() {
    // Gather of a run-time tensor, a Concat along a spatial axis, a mean over channels, the
    // batch size used as a feature count: all reported in one error
    let nodes = vec![
        node("Gather", &["r", "idx"], "g", vec![attr_int("axis", 1)]),
        node("Concat", &["r", "r"], "cat", vec![attr_int("axis", 2)]),
        node("ReduceMean", &["cat", "axes"], "m", vec![]),
        node("Shape", &["g"], "s", vec![]),
        node("Add", &["m", "s"], "mix", vec![]),
        node("Shape", &["r"], "s2", vec![]),
        node("Gather", &["s2", "zero"], "n", vec![]),
        node("Unsqueeze", &["n", "zero1"], "n1", vec![]),
        node("Concat", &["minus1", "n1"], "target", vec![attr_int("axis", 0)]),
        node("Reshape", &["r", "target"], "flat", vec![]),
    ];
    let inits = vec![
        ints64("idx", &[1], &[0]),
        ints64("axes", &[1], &[1]),
        ints64("zero", &[], &[0]),
        ints64("zero1", &[1], &[0]),
        ints64("minus1", &[1], &[-1]),
    ];
    let mut p = onnx_model(17, None, 48, nodes, inits);
    p.graph.as_mut().unwrap().output.push(vi("mix", &[None, Some(1)]));
    let e = import(&p).unwrap_err();
    let OnnxError::UnsupportedModel { issues, .. } = &e else {
        panic!("{e}")
    };
    let text = e.to_string();
    for (node, what) in [
        ("/g", "Gather of a run-time tensor"),
        ("/cat", "only along the channels"),
        ("/flat", "batch size at axis 1"),
    ] {
        assert!(
            issues.iter().any(|i| i.node == node && i.message.contains(what)),
            "{node}: {what} missing from:\n{text}"
        );
    }
    assert!(text.contains("2 outputs"), "{text}");
}

#[test]
fn malformed_shape_ops_are_errors_not_panics() {
    let bad: Vec<(Vec<NodeProto>, Vec<TensorProto>)> = vec![
        // index out of range
        (
            vec![node("Gather", &["w", "idx"], "fc.w", vec![])],
            vec![floats("w", &[5, 48], &[0.0; 240]), ints64("idx", &[1], &[7])],
        ),
        // shapes that do not fit along the other axes
        (
            vec![node("Concat", &["a", "b"], "fc.w", vec![attr_int("axis", 0)])],
            vec![floats("a", &[2, 48], &[0.0; 96]), floats("b", &[3, 47], &[0.0; 141])],
        ),
        // squeezing an axis that is not 1
        (
            vec![node("Squeeze", &["w", "ax"], "fc.w", vec![])],
            vec![floats("w", &[5, 48], &[0.0; 240]), ints64("ax", &[1], &[0])],
        ),
        // not broadcastable
        (
            vec![node("Expand", &["w", "shape"], "fc.w", vec![])],
            vec![floats("w", &[5, 3], &[0.0; 15]), ints64("shape", &[2], &[5, 48])],
        ),
        // Expand asking for 2^50 values (every fold counts against the same limits as
        // ConstantOfShape, so a chain of Concats cannot double a constant without end either)
        (
            vec![node("Expand", &["w", "shape"], "fc.w", vec![])],
            vec![floats("w", &[1, 1], &[0.0]), ints64("shape", &[2], &[1 << 25, 1 << 25])],
        ),
    ];
    for (nodes, inits) in bad {
        let what = nodes[0].op_type.clone();
        let mut p = onnx_model(13, None, 48, vec![node("Flatten", &["r"], "flat", vec![])], inits);
        let g = p.graph.as_mut().unwrap();
        g.initializer.retain(|t| t.name != "fc.w");
        let last = g.node.len() - 1;
        g.node.splice(last..last, nodes);
        let e = import(&p).unwrap_err();
        assert!(matches!(e, OnnxError::InvalidNode { .. }), "{what}: {e}");
    }
}

/// Softmax and LogSoftmax import as penni's softmax over the channels when that is what they
/// compute: axis 1 from opset 13; before 13 (over all axes from `axis` on) only for a vector or
/// a C x 1 x 1 map. Any other axis is the one clear unsupported-model error.
#[test]
fn softmax_over_the_channels_imports_and_other_axes_are_refused() {
    let flatten = node("Flatten", &["sm"], "flat", vec![]);
    for (op, log) in [("Softmax", false), ("LogSoftmax", true)] {
        let sm = node(op, &["r"], "sm", vec![attr_int("axis", 1)]);
        let p = onnx_model(13, None, 48, vec![sm, flatten.clone()], vec![]);
        check(&p, 48, &[Op::Softmax { log }, Op::Flatten]);
        // opset 11 over a pooled 3 x 1 x 1 map: the same as over its channels
        let gap = node("GlobalAveragePool", &["r"], "g", vec![]);
        let sm = node(op, &["g"], "sm", vec![]);
        let p = onnx_model(11, Some(3), 3, vec![gap, sm, flatten.clone()], vec![]);
        check(&p, 3, &[Op::GlobalAvgPool, Op::Softmax { log }, Op::Flatten]);
    }
    for (opset, axis) in [(13, None), (13, Some(2)), (11, None), (11, Some(1))] {
        let attrs = axis.map(|a| vec![attr_int("axis", a)]).unwrap_or_default();
        let sm = node("Softmax", &["r"], "sm", attrs);
        let e = import(&onnx_model(opset, None, 48, vec![sm, flatten.clone()], vec![])).unwrap_err();
        assert!(
            matches!(e, OnnxError::UnsupportedModel { .. }) && e.to_string().contains("only the softmax over the channels"),
            "opset {opset} axis {axis:?}: {e}"
        );
    }
}

/// Mul, Sub and Div of a feature map and per-channel or scalar constants (what input
/// normalisation and rescaling layers export) import as one exact per-channel affine map each.
#[test]
fn arithmetic_with_per_channel_constants_is_a_batchnorm() {
    let (k, m, sd, c) = ([0.5f32, -2.0, 3.0], 0.25f32, [2.0f32, 4.0, 0.5], 1.5f32);
    let nodes = vec![
        node("Mul", &["r", "k"], "a", vec![]),
        node("Sub", &["a", "m"], "b", vec![]),
        node("Div", &["b", "sd"], "d", vec![]),
        node("Sub", &["c0", "d"], "e", vec![]),
        node("Flatten", &["e"], "flat", vec![]),
    ];
    let inits = vec![
        floats("k", &[3, 1, 1], &k),
        floats("m", &[], &[m]),
        floats("sd", &[1, 3, 1, 1], &sd),
        floats("c0", &[1], &[c]),
    ];
    let got = import(&onnx_model(13, None, 48, nodes, inits)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kinds(&got),
        [
            "Conv2d",
            "ReLU",
            "BatchNorm2d",
            "BatchNorm2d",
            "BatchNorm2d",
            "BatchNorm2d",
            "Flatten",
            "Linear"
        ]
    );
    // the same function as one hand-made affine map: y = c - (k x - m) / sd
    let mut want = ir_model(48, &[Op::Flatten]);
    let scale: Vec<f32> = (0..3).map(|i| -k[i] / sd[i]).collect();
    let shift: Vec<f32> = (0..3).map(|i| c + m / sd[i]).collect();
    want.nodes[2].inputs = vec!["affine".into()];
    want.nodes.insert(
        2,
        Node {
            name: "affine".into(),
            op: Op::BatchNorm2d { channels: 3, eps: 0.0 },
            inputs: vec!["t0".into()],
            output: "affine".into(),
            params: BTreeMap::from([
                ("weight".into(), Tensor::new(vec![3], scale).unwrap()),
                ("bias".into(), Tensor::new(vec![3], shift).unwrap()),
                ("running_mean".into(), Tensor::zeros(vec![3])),
                ("running_var".into(), Tensor::full(vec![3], 1.0)),
            ]),
        },
    );
    want.validate().unwrap();
    let mut rng = InitRng::new(5);
    let x = Activation {
        n: 2,
        shape: want.input_shape(),
        data: (0..2 * 32).map(|_| rng.normal()).collect(),
    };
    let (a, b) = (forward(&got, &x).unwrap().data, forward(&want, &x).unwrap().data);
    assert_eq!(a.len(), b.len());
    let err = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(err < 1e-5, "max difference {err}");

    // what is not an affine map of one tensor is refused clearly
    for (nodes, inits, what) in [
        (vec![node("Sub", &["r", "r"], "a", vec![])], vec![], "two run-time tensors"),
        (
            vec![node("Div", &["k", "r"], "a", vec![])],
            vec![floats("k", &[3, 1, 1], &k)],
            "divides a constant",
        ),
        (
            vec![node("Mul", &["r", "w"], "a", vec![])],
            vec![floats("w", &[4, 4], &[1.0; 16])],
            "not per-channel",
        ),
    ] {
        let mut nodes = nodes;
        nodes.push(node("Flatten", &["a"], "flat", vec![]));
        let e = import(&onnx_model(13, None, 48, nodes, inits)).unwrap_err();
        assert!(
            matches!(e, OnnxError::UnsupportedModel { .. }) && e.to_string().contains(what),
            "{what}: {e}"
        );
    }
    let nodes = vec![node("Div", &["r", "z"], "a", vec![]), node("Flatten", &["a"], "flat", vec![])];
    let e = import(&onnx_model(13, None, 48, nodes, vec![floats("z", &[3, 1, 1], &[1.0, 0.0, 1.0])])).unwrap_err();
    assert!(e.to_string().contains("divides by a constant that has zeros"), "{e}");
}

/// `x.view(-1, x.size(1) * x.size(2) * x.size(3))`: the feature count is integer arithmetic
/// on known sizes, folded to the constant 48.
#[test]
fn view_with_a_product_of_sizes_is_a_flatten() {
    let mut nodes = vec![node("Shape", &["r"], "s", vec![])];
    for (i, idx) in ["one", "two", "three"].iter().enumerate() {
        nodes.push(node("Gather", &["s", idx], &format!("d{i}"), vec![attr_int("axis", 0)]));
    }
    nodes.extend([
        node("Mul", &["d0", "d1"], "p01", vec![]),
        node("Mul", &["p01", "d2"], "p", vec![]),
        node("Unsqueeze", &["p", "axes0"], "p1", vec![]),
        node("Concat", &["minus1", "p1"], "target", vec![attr_int("axis", 0)]),
        node("Reshape", &["r", "target"], "flat", vec![]),
    ]);
    let inits = vec![
        ints64("one", &[], &[1]),
        ints64("two", &[], &[2]),
        ints64("three", &[], &[3]),
        ints64("axes0", &[1], &[0]),
        ints64("minus1", &[1], &[-1]),
    ];
    check(&onnx_model(13, None, 48, nodes, inits), 48, &[Op::Flatten]);
}

/// Inception/SqueezeNet branches: Concat of run-time feature maps along the channels (axis 1
/// or -3) imports as one Concat node; other axes and constants mixed in are refused clearly.
#[test]
fn concat_of_feature_maps_along_the_channels() {
    for axis in [1, -3] {
        let nodes = vec![
            node("Relu", &["r"], "r2", vec![]),
            node("Concat", &["r", "r2", "r"], "cat", vec![attr_int("axis", axis)]),
            node("Flatten", &["cat"], "flat", vec![]),
        ];
        let got = import(&onnx_model(13, None, 144, nodes, vec![])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kinds(&got), ["Conv2d", "ReLU", "ReLU", "Concat", "Flatten", "Linear"]);
        assert_eq!(got.nodes[3].inputs.len(), 3);
    }
    let cases = [
        (
            vec![node("Concat", &["r", "r"], "cat", vec![attr_int("axis", 2)])],
            vec![],
            "only along the channels",
        ),
        (
            vec![node("Concat", &["r", "k"], "cat", vec![attr_int("axis", 1)])],
            vec![floats("k", &[1, 3, 4, 4], &[0.0; 48])],
            "constant concatenated",
        ),
    ];
    for (mut nodes, inits, what) in cases {
        nodes.push(node("Flatten", &["cat"], "flat", vec![]));
        let e = import(&onnx_model(13, None, 96, nodes, inits)).unwrap_err();
        assert!(
            matches!(e, OnnxError::UnsupportedModel { .. }) && e.to_string().contains(what),
            "{what}: {e}"
        );
    }
}

/// A zero Pad that not only Convs read cannot become their padding (`passes::fold_pads` leaves
/// it) and the engine runs no standalone Pad: the import refuses it, naming the Pad and its readers.
#[test]
fn a_pad_that_does_not_fold_is_refused_at_import() {
    let mut rng = InitRng::new(5);
    let kw = rand(&mut rng, 3 * 3 * 9);
    let pool = |input: &str, out: &str, k: i64| node("MaxPool", &[input], out, vec![attr_ints("kernel_shape", &[k, k])]);
    let pad = || node("Pad", &["r", "pads"], "p", vec![]);
    let cases: Vec<(usize, Vec<NodeProto>, &[&str])> = vec![
        // read by a max pool only (which pads with -inf, not zeros)
        (
            75,
            vec![pad(), pool("p", "mp", 2), node("Flatten", &["mp"], "flat", vec![])],
            &["'/mp' (MaxPool2d)"],
        ),
        // read by a conv and a max pool
        (
            48,
            vec![
                pad(),
                node("Conv", &["p", "k"], "cv", vec![]),
                pool("p", "mp", 3),
                node("Add", &["cv", "mp"], "sum", vec![]),
                node("Flatten", &["sum"], "flat", vec![]),
            ],
            &["'/cv' (Conv2d)", "'/mp' (MaxPool2d)"],
        ),
    ];
    for (fc_in, nodes, readers) in cases {
        let inits = vec![ints64("pads", &[8], &[0, 0, 1, 1, 0, 0, 1, 1]), floats("k", &[3, 3, 3, 3], &kw)];
        let e = import(&onnx_model(13, None, fc_in, nodes, inits)).unwrap_err();
        let OnnxError::UnsupportedModel { issues, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(issues.len(), 1, "{e}");
        let (issue, text) = (&issues[0], issues[0].to_string());
        assert_eq!((issue.node.as_str(), issue.op.as_str()), ("/p", "Pad"), "{e}");
        assert!(text.contains("only supported right before a Conv"), "{e}");
        for r in readers {
            assert!(text.contains(r), "{r}: {e}");
        }
    }
}

/// A zero Pad on the spatial axes in front of a Conv (TensorFlow/Keras ZeroPadding2D, 'same'
/// strided convs) becomes the Conv's own padding: attribute form (opset < 11), input form,
/// opset-18 axes, two Pads in a row, and auto_pad on the padded size. Anything else is refused.
#[test]
fn zero_pad_before_a_conv_is_folded_into_its_padding() {
    let mut rng = InitRng::new(21);
    let kw = rand(&mut rng, 2 * 3 * 9);
    let conv = |input: &str, attrs: Vec<AttributeProto>| node("Conv", &[input, "k"], "cv", attrs);
    let tail = || node("Flatten", &["cv"], "flat", vec![]);
    let k_init = || floats("k", &[2, 3, 3, 3], &kw);
    // the reference: the conv pads (top 1, left 2, bottom 1, right 0) itself
    let want = import(&onnx_model(
        13,
        None,
        32,
        vec![conv("r", vec![attr_ints("pads", &[1, 2, 1, 0])]), tail()],
        vec![k_init()],
    ))
    .unwrap();
    let mut rng = InitRng::new(3);
    let x = Activation {
        n: 2,
        shape: want.input_shape(),
        data: (0..2 * 32).map(|_| rng.normal()).collect(),
    };
    let expected = forward(&want, &x).unwrap().data;
    let pads = [0i64, 0, 1, 2, 0, 0, 1, 0];
    let cases: Vec<(i64, Vec<NodeProto>, Vec<TensorProto>)> = vec![
        (
            9,
            vec![node("Pad", &["r"], "p", vec![attr_ints("pads", &pads)]), conv("p", vec![])],
            vec![],
        ),
        (
            13,
            vec![node("Pad", &["r", "pads"], "p", vec![]), conv("p", vec![])],
            vec![ints64("pads", &[8], &pads)],
        ),
        (
            18,
            vec![node("Pad", &["r", "pads", "", "axes"], "p", vec![]), conv("p", vec![])],
            vec![ints64("pads", &[4], &[1, 2, 1, 0]), ints64("axes", &[2], &[2, 3])],
        ),
        (
            13,
            vec![
                node("Pad", &["r", "pa"], "p0", vec![]),
                node("Pad", &["p0", "pb"], "p", vec![]),
                conv("p", vec![]),
            ],
            vec![
                ints64("pa", &[8], &[0, 0, 1, 0, 0, 0, 0, 0]),
                ints64("pb", &[8], &[0, 0, 0, 2, 0, 0, 1, 0]),
            ],
        ),
        // VALID on the padded input is the same conv
        (
            13,
            vec![
                node("Pad", &["r", "pads"], "p", vec![]),
                conv("p", vec![attr_string("auto_pad", "VALID")]),
            ],
            vec![ints64("pads", &[8], &pads)],
        ),
    ];
    for (i, (opset, mut nodes, mut inits)) in cases.into_iter().enumerate() {
        nodes.push(tail());
        inits.push(k_init());
        let got = import(&onnx_model(opset, None, 32, nodes, inits)).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(kinds(&got), kinds(&want), "case {i}");
        assert_eq!(forward(&got, &x).unwrap().data, expected, "case {i}");
    }
    let refused: Vec<(Vec<NodeProto>, Vec<TensorProto>, &str)> = vec![
        (
            vec![
                node("Pad", &["r", "pads"], "p", vec![]),
                node("Relu", &["p"], "q", vec![]),
                conv("q", vec![]),
            ],
            vec![ints64("pads", &[8], &pads)],
            "only supported right before a Conv",
        ),
        (
            vec![
                node("Pad", &["r", "pads"], "p", vec![attr_string("mode", "reflect")]),
                conv("p", vec![]),
            ],
            vec![ints64("pads", &[8], &pads)],
            "mode 'reflect'",
        ),
        (
            vec![node("Pad", &["r", "pads", "v"], "p", vec![]), conv("p", vec![])],
            vec![ints64("pads", &[8], &pads), floats("v", &[], &[1.0])],
            "only zero padding",
        ),
        (
            vec![node("Pad", &["r", "pads"], "p", vec![]), conv("p", vec![])],
            vec![ints64("pads", &[8], &[0, 1, 0, 0, 0, 0, 0, 0])],
            "channel axis",
        ),
        (
            vec![node("Pad", &["r", "pads"], "p", vec![]), conv("p", vec![])],
            vec![ints64("pads", &[8], &[0, 0, -1, 0, 0, 0, 0, 0])],
            "cropping",
        ),
    ];
    for (mut nodes, mut inits, what) in refused {
        nodes.push(tail());
        inits.push(k_init());
        let e = import(&onnx_model(13, None, 32, nodes, inits)).unwrap_err();
        assert!(
            matches!(e, OnnxError::UnsupportedModel { .. }) && e.to_string().contains(what),
            "{what}: {e}"
        );
    }
}
