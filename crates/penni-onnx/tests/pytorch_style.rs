//! ONNX files written the way PyTorch's exporter writes them, built here without PyTorch:
//! `/module/Op` node names, weights in raw_data and in float_data, old-style weights listed as
//! graph inputs with initializers, a Constant node holding the Reshape target, a bias Add after
//! a Conv and after a MatMul, Dropout and Identity left in. Imported, the graph must be exactly
//! the IR model written by hand below.

mod common;

use std::collections::BTreeMap;

use common::proto::{attr_float, attr_int, attr_ints, vi};

use penni_model::zoo::InitRng;
use penni_model::{Conv2d, Input, Model, Node, Op, Pool2d, Tensor};
use penni_onnx::proto::*;
use prost::Message;

fn raw(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type::FLOAT,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn typed(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type::FLOAT,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

fn rand(rng: &mut InitRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * 0.3).collect()
}

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
}

#[test]
fn pytorch_style_export_imports_to_the_expected_graph() {
    let mut rng = InitRng::new(5);
    let w1 = rand(&mut rng, 8 * 3 * 9);
    let b1 = rand(&mut rng, 8);
    let (g, beta, mean) = (rand(&mut rng, 8), rand(&mut rng, 8), rand(&mut rng, 8));
    let var: Vec<f32> = (0..8).map(|i| 0.5 + i as f32 * 0.1).collect();
    let w2 = rand(&mut rng, 8 * 8 * 9);
    let b2 = rand(&mut rng, 8); // added by a separate Add node, as older exporters do
    let fc1_w = rand(&mut rng, 10 * 8); // Gemm transB=1: (out, in)
    let fc1_b = rand(&mut rng, 10);
    let fc2_w = rand(&mut rng, 10 * 4); // MatMul: (in, out)
    let fc2_b = rand(&mut rng, 4);

    let nodes = vec![
        node(
            "Conv",
            "/conv1/Conv",
            &["input", "conv1.weight", "conv1.bias"],
            &["/conv1/Conv_output_0"],
            vec![
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_ints("strides", &[1, 1]),
            ],
        ),
        node(
            "BatchNormalization",
            "/bn1/BatchNormalization",
            &[
                "/conv1/Conv_output_0",
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var",
            ],
            &["/bn1/BatchNormalization_output_0"],
            vec![attr_float("epsilon", 1e-5), attr_float("momentum", 0.9)],
        ),
        node(
            "Relu",
            "/relu/Relu",
            &["/bn1/BatchNormalization_output_0"],
            &["/relu/Relu_output_0"],
            vec![],
        ),
        node(
            "MaxPool",
            "/pool/MaxPool",
            &["/relu/Relu_output_0"],
            &["/pool/MaxPool_output_0"],
            vec![
                attr_int("ceil_mode", 0),
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("pads", &[0, 0, 0, 0]),
                attr_ints("strides", &[2, 2]),
            ],
        ),
        node(
            "Conv",
            "/layer1/conv/Conv",
            &["/pool/MaxPool_output_0", "layer1.conv.weight"],
            &["/layer1/conv/Conv_output_0"],
            vec![attr_ints("kernel_shape", &[3, 3]), attr_ints("pads", &[1, 1, 1, 1])],
        ),
        node(
            "Add",
            "/layer1/conv/Add",
            &["/layer1/conv/Conv_output_0", "layer1.conv.bias"],
            &["/layer1/conv/Add_output_0"],
            vec![],
        ),
        node(
            "Add",
            "/layer1/Add",
            &["/layer1/conv/Add_output_0", "/pool/MaxPool_output_0"],
            &["/layer1/Add_output_0"],
            vec![],
        ),
        node(
            "Relu",
            "/layer1/relu/Relu",
            &["/layer1/Add_output_0"],
            &["/layer1/relu/Relu_output_0"],
            vec![],
        ),
        node(
            "GlobalAveragePool",
            "/avgpool/GlobalAveragePool",
            &["/layer1/relu/Relu_output_0"],
            &["/avgpool/GlobalAveragePool_output_0"],
            vec![],
        ),
        node(
            "Constant",
            "/Constant",
            &[],
            &["/Constant_output_0"],
            vec![AttributeProto {
                name: "value".into(),
                r#type: attribute_type::TENSOR,
                t: Some(TensorProto {
                    dims: vec![2],
                    data_type: data_type::INT64,
                    raw_data: [0i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        ),
        node(
            "Reshape",
            "/Reshape",
            &["/avgpool/GlobalAveragePool_output_0", "/Constant_output_0"],
            &["/Reshape_output_0"],
            vec![attr_int("allowzero", 0)],
        ),
        node(
            "Gemm",
            "/fc1/Gemm",
            &["/Reshape_output_0", "fc1.weight", "fc1.bias"],
            &["/fc1/Gemm_output_0"],
            vec![attr_float("alpha", 1.0), attr_float("beta", 1.0), attr_int("transB", 1)],
        ),
        node(
            "Dropout",
            "/drop/Dropout",
            &["/fc1/Gemm_output_0"],
            &["/drop/Dropout_output_0"],
            vec![],
        ),
        node(
            "Identity",
            "/Identity",
            &["/drop/Dropout_output_0"],
            &["/Identity_output_0"],
            vec![],
        ),
        node(
            "MatMul",
            "/fc2/MatMul",
            &["/Identity_output_0", "onnx::MatMul_42"],
            &["/fc2/MatMul_output_0"],
            vec![],
        ),
        node("Add", "/fc2/Add", &["fc2.bias", "/fc2/MatMul_output_0"], &["logits"], vec![]),
        // A dead branch (not reaching the output) is ignored, whatever it uses.
        node("Softmax", "/unused/Softmax", &["logits"], &["probabilities"], vec![]),
    ];
    let initializer = vec![
        raw("conv1.weight", &[8, 3, 3, 3], &w1),
        typed("conv1.bias", &[8], &b1),
        raw("bn1.weight", &[8], &g),
        typed("bn1.bias", &[8], &beta),
        raw("bn1.running_mean", &[8], &mean),
        typed("bn1.running_var", &[8], &var),
        raw("layer1.conv.weight", &[8, 8, 3, 3], &w2),
        typed("layer1.conv.bias", &[1, 8, 1, 1], &b2),
        raw("fc1.weight", &[10, 8], &fc1_w),
        typed("fc1.bias", &[10], &fc1_b),
        raw("onnx::MatMul_42", &[10, 4], &fc2_w),
        raw("fc2.bias", &[4], &fc2_b),
    ];
    // keep_initializers_as_inputs=True: the first weights are listed as graph inputs too.
    let mut inputs = vec![vi("input", &[None, Some(3), Some(8), Some(8)])];
    for name in [
        "conv1.weight",
        "conv1.bias",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
    ] {
        inputs.push(vi(name, &[Some(8)]));
    }
    let proto = ModelProto {
        ir_version: 8,
        producer_name: "pytorch".into(),
        producer_version: "2.5.0".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "main_graph".into(),
            node: nodes,
            initializer,
            input: inputs,
            output: vec![vi("logits", &[None, Some(4)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = penni_onnx::import_bytes(&proto.encode_to_vec(), "pytorch_style.onnx").unwrap_or_else(|e| panic!("{e}"));

    let mut fc2_t = vec![0f32; 40];
    for i in 0..10 {
        for o in 0..4 {
            fc2_t[o * 10 + i] = fc2_w[i * 4 + o];
        }
    }
    let conv = |cin, bias| Conv2d {
        in_channels: cin,
        out_channels: 8,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 1,
        bias,
    };
    let n = |name: &str, op: Op, inputs: &[&str], output: &str, params: Vec<(&str, Tensor)>| Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        output: output.into(),
        params: params.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
    };
    let expected = Model {
        name: "main_graph".into(),
        input: Input {
            name: "input".into(),
            channels: 3,
            height: 8,
            width: 8,
        },
        nodes: vec![
            n(
                "/conv1/Conv",
                Op::Conv2d(conv(3, true)),
                &["input"],
                "/conv1/Conv_output_0",
                vec![("weight", t(&[8, 3, 3, 3], &w1)), ("bias", t(&[8], &b1))],
            ),
            n(
                "/bn1/BatchNormalization",
                Op::BatchNorm2d { channels: 8, eps: 1e-5 },
                &["/conv1/Conv_output_0"],
                "/bn1/BatchNormalization_output_0",
                vec![
                    ("weight", t(&[8], &g)),
                    ("bias", t(&[8], &beta)),
                    ("running_mean", t(&[8], &mean)),
                    ("running_var", t(&[8], &var)),
                ],
            ),
            n(
                "/relu/Relu",
                Op::Relu,
                &["/bn1/BatchNormalization_output_0"],
                "/relu/Relu_output_0",
                vec![],
            ),
            n(
                "/pool/MaxPool",
                Op::MaxPool2d(Pool2d {
                    kernel: [2, 2],
                    stride: [2, 2],
                    padding: [0; 4],
                    ceil_mode: false,
                    count_include_pad: false,
                }),
                &["/relu/Relu_output_0"],
                "/pool/MaxPool_output_0",
                vec![],
            ),
            n(
                "/layer1/conv/Conv",
                Op::Conv2d(conv(8, true)),
                &["/pool/MaxPool_output_0"],
                "/layer1/conv/Conv_output_0",
                vec![("weight", t(&[8, 8, 3, 3], &w2)), ("bias", t(&[8], &b2))],
            ),
            n(
                "/layer1/Add",
                Op::Add,
                &["/layer1/conv/Conv_output_0", "/pool/MaxPool_output_0"],
                "/layer1/Add_output_0",
                vec![],
            ),
            n(
                "/layer1/relu/Relu",
                Op::Relu,
                &["/layer1/Add_output_0"],
                "/layer1/relu/Relu_output_0",
                vec![],
            ),
            n(
                "/avgpool/GlobalAveragePool",
                Op::GlobalAvgPool,
                &["/layer1/relu/Relu_output_0"],
                "/avgpool/GlobalAveragePool_output_0",
                vec![],
            ),
            n(
                "/Reshape",
                Op::Flatten,
                &["/avgpool/GlobalAveragePool_output_0"],
                "/Reshape_output_0",
                vec![],
            ),
            n(
                "/fc1/Gemm",
                Op::Linear {
                    in_features: 8,
                    out_features: 10,
                    bias: true,
                },
                &["/Reshape_output_0"],
                "/fc1/Gemm_output_0",
                vec![("weight", t(&[10, 8], &fc1_w)), ("bias", t(&[10], &fc1_b))],
            ),
            n(
                "/fc2/MatMul",
                Op::Linear {
                    in_features: 10,
                    out_features: 4,
                    bias: true,
                },
                &["/fc1/Gemm_output_0"],
                "/fc2/MatMul_output_0",
                vec![("weight", t(&[4, 10], &fc2_t)), ("bias", t(&[4], &fc2_b))],
            ),
        ],
        output: "/fc2/MatMul_output_0".into(),
    };
    assert_eq!(model, expected);
}

/// Keras via tf2onnx writes SAME padding as auto_pad and ReLU6 as Clip with attribute bounds in
/// old opsets; the legacy opset-6 broadcast Add with an axis is a per-channel bias.
#[test]
fn keras_style_auto_pad_and_legacy_opset() {
    let w = vec![0.5f32; 2 * 3 * 3]; // weight 2 x 1 x 3 x 3
    let proto = |opset: i64, clip: NodeProto, add_attrs: Vec<AttributeProto>| ModelProto {
        ir_version: 3,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(GraphProto {
            name: "keras".into(),
            node: vec![
                node(
                    "Conv",
                    "conv",
                    &["x", "w"],
                    &["c"],
                    vec![
                        AttributeProto {
                            name: "auto_pad".into(),
                            r#type: attribute_type::STRING,
                            s: b"SAME_UPPER".to_vec(),
                            ..Default::default()
                        },
                        attr_ints("strides", &[2, 2]),
                    ],
                ),
                node("Add", "bias_add", &["c", "b"], &["cb"], add_attrs),
                clip,
            ],
            initializer: vec![raw("w", &[2, 1, 3, 3], &w), raw("b", &[2], &[1.0, -1.0])],
            input: vec![vi("x", &[Some(1), Some(1), Some(6), Some(5)])],
            output: vec![vi("y", &[Some(1), Some(2), Some(3), Some(3)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let clip_attr = node(
        "Clip",
        "relu6",
        &["cb"],
        &["y"],
        vec![attr_float("min", 0.0), attr_float("max", 6.0)],
    );
    let m = penni_onnx::import_bytes(
        &proto(6, clip_attr, vec![attr_int("broadcast", 1), attr_int("axis", 1)]).encode_to_vec(),
        "keras.onnx",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let Op::Conv2d(c) = &m.nodes[0].op else { panic!() };
    // 6x5 input, stride 2, kernel 3: output 3x3, total padding 1 (rows) / 2 (cols), extra at the end.
    assert_eq!(c.padding, [0, 1, 1, 1]);
    assert!(c.bias);
    assert_eq!(m.nodes[0].params["bias"].data, vec![1.0, -1.0]);
    assert_eq!(m.nodes[1].op, Op::Clip { min: 0.0, max: 6.0 });
    assert_eq!(m.nodes.len(), 2);

    // Opset 13: Clip bounds are inputs; a [2] constant added to N x 2 x 3 x 3 broadcasts over the
    // width, not the channels, so it is not a bias and is reported.
    let clip_in = node("Clip", "relu6", &["cb", "lo", "hi"], &["y"], vec![]);
    let mut p = proto(13, clip_in, vec![]);
    let g = p.graph.as_mut().unwrap();
    g.initializer.push(raw("lo", &[], &[0.0]));
    g.initializer.push(raw("hi", &[], &[6.0]));
    let err = penni_onnx::import_bytes(&p.encode_to_vec(), "keras13.onnx").unwrap_err();
    assert!(matches!(err, penni_onnx::OnnxError::UnsupportedModel { .. }), "{err}");
    assert!(err.to_string().contains("bias_add"), "{err}");
    // With a [2, 1, 1] bias it is one.
    let g = p.graph.as_mut().unwrap();
    g.initializer[1] = raw("b", &[2, 1, 1], &[1.0, -1.0]);
    let m = penni_onnx::import_bytes(&p.encode_to_vec(), "keras13.onnx").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.nodes[1].op, Op::Clip { min: 0.0, max: 6.0 });
    assert_eq!(m.nodes[0].params["bias"].data, vec![1.0, -1.0]);
}
