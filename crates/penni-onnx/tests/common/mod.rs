//! Model builders shared by the integration tests.
#![allow(dead_code)]

pub mod proto;

use std::collections::BTreeMap;

use penni_model::reference::Activation;
use penni_model::zoo::{InitRng, ZooOptions};
use penni_model::{Conv2d, DecomposedConv2d, Model, Op, Tensor};

pub fn zoo(name: &str, width: f32) -> Model {
    penni_model::zoo::build(
        name,
        &ZooOptions {
            width_multiplier: width,
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Gives every batchnorm random statistics, so that a mistake in its export shows in the outputs.
pub fn randomize_bn(model: &mut Model, seed: u64) {
    let mut rng = InitRng::new(seed);
    for n in &mut model.nodes {
        if let Op::BatchNorm2d { .. } = n.op {
            for (p, t) in n.params.iter_mut() {
                for v in &mut t.data {
                    *v = match p.as_str() {
                        "weight" => 0.5 + rng.uniform(),
                        "bias" => rng.normal() * 0.1,
                        "running_mean" => rng.normal() * 0.1,
                        _ => 0.5 + rng.uniform(),
                    };
                }
            }
        }
    }
}

/// Replaces every conv with a kernel larger than 1x1 by a PENNI layer with `d` random bases and
/// random coefficients of which about half are exactly zero; every other one gets a bias.
pub fn decompose(model: &Model, d: usize, seed: u64) -> Model {
    let mut rng = InitRng::new(seed);
    let mut m = model.clone();
    m.name = format!("{}_penni", m.name);
    for (i, n) in m.nodes.iter_mut().enumerate() {
        let Op::Conv2d(c) = &n.op else { continue };
        if c.kernel == [1, 1] {
            continue;
        }
        let kk = c.kernel[0] * c.kernel[1];
        let rows = c.out_channels * (c.in_channels / c.groups);
        let scale = (2.0 / (rows as f32 / c.out_channels as f32 * d as f32)).sqrt();
        let bases = Tensor {
            shape: vec![d, kk],
            data: (0..d * kk).map(|_| rng.normal() * (1.0 / kk as f32).sqrt()).collect(),
        };
        let coef = Tensor {
            shape: vec![rows, d],
            data: (0..rows * d)
                .map(|_| if rng.uniform() < 0.5 { 0.0 } else { rng.normal() * scale })
                .collect(),
        };
        let bias = i % 2 == 0;
        let mut params = BTreeMap::from([("bases".to_string(), bases), ("coefficients".to_string(), coef)]);
        if bias {
            params.insert(
                "bias".into(),
                Tensor {
                    shape: vec![c.out_channels],
                    data: (0..c.out_channels).map(|_| rng.normal() * 0.1).collect(),
                },
            );
        }
        n.op = Op::DecomposedConv2d(DecomposedConv2d {
            conv: Conv2d {
                in_channels: c.in_channels,
                out_channels: c.out_channels,
                kernel: c.kernel,
                stride: c.stride,
                padding: c.padding,
                dilation: c.dilation,
                groups: c.groups,
                bias,
            },
            num_bases: d,
            basis_quant: None,
        });
        n.params = params;
    }
    m.validate().unwrap();
    m
}

pub fn random_input(model: &Model, n: usize, seed: u64) -> Activation {
    let mut rng = InitRng::new(seed);
    let shape = model.input_shape();
    Activation {
        n,
        shape,
        data: (0..n * shape.numel()).map(|_| rng.normal()).collect(),
    }
}

/// Largest |a - b| relative to the largest |b| (the scale of the output).
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn rand_tensor(rng: &mut InitRng, shape: Vec<usize>, scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor {
        shape,
        data: (0..n).map(|_| rng.normal() * scale).collect(),
    }
}

fn bn_params(rng: &mut InitRng, c: usize) -> BTreeMap<String, Tensor> {
    BTreeMap::from([
        (
            "weight".to_string(),
            Tensor {
                shape: vec![c],
                data: (0..c).map(|_| 0.5 + rng.uniform()).collect(),
            },
        ),
        ("bias".to_string(), rand_tensor(rng, vec![c], 0.1)),
        ("running_mean".to_string(), rand_tensor(rng, vec![c], 0.1)),
        (
            "running_var".to_string(),
            Tensor {
                shape: vec![c],
                data: (0..c).map(|_| 0.5 + rng.uniform()).collect(),
            },
        ),
    ])
}

/// A small model that uses every IR op with its less common settings: grouped, dilated,
/// asymmetric-padded convs, a grouped PENNI layer, ReLU6, ceil-mode and count-include-pad
/// pooling, a three-way Add, a bias-free Linear.
pub fn op_zoo() -> Model {
    use penni_model::{Conv2d, Input, Node, Pool2d};
    let mut rng = InitRng::new(99);
    let mut nodes = Vec::new();
    let mut push = |name: &str, op: Op, inputs: &[&str], params: BTreeMap<String, Tensor>| {
        nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: format!("{name}_out"),
            params,
        });
    };
    let conv = Conv2d {
        in_channels: 4,
        out_channels: 8,
        kernel: [3, 3],
        stride: [2, 1],
        padding: [1, 0, 2, 1],
        dilation: [1, 2],
        groups: 2,
        bias: true,
    };
    push(
        "conv",
        Op::Conv2d(conv),
        &["image"],
        BTreeMap::from([
            ("weight".into(), rand_tensor(&mut rng, vec![8, 2, 3, 3], 0.3)),
            ("bias".into(), rand_tensor(&mut rng, vec![8], 0.1)),
        ]),
    );
    push(
        "bn",
        Op::BatchNorm2d { channels: 8, eps: 1e-3 },
        &["conv_out"],
        bn_params(&mut rng, 8),
    );
    push("relu6", Op::Clip { min: 0.0, max: 6.0 }, &["bn_out"], BTreeMap::new());
    let pen = DecomposedConv2d {
        conv: Conv2d {
            in_channels: 8,
            out_channels: 8,
            kernel: [3, 2],
            stride: [1, 1],
            padding: [2, 1, 2, 0],
            dilation: [2, 1],
            groups: 2,
            bias: true,
        },
        num_bases: 3,
        basis_quant: None,
    };
    push(
        "penni",
        Op::DecomposedConv2d(pen),
        &["relu6_out"],
        BTreeMap::from([
            ("bases".into(), rand_tensor(&mut rng, vec![3, 6], 0.4)),
            ("coefficients".into(), rand_tensor(&mut rng, vec![8 * 4, 3], 0.4)),
            ("bias".into(), rand_tensor(&mut rng, vec![8], 0.1)),
        ]),
    );
    push("clip", Op::Clip { min: -0.5, max: 0.75 }, &["penni_out"], BTreeMap::new());
    push("relu", Op::Relu, &["penni_out"], BTreeMap::new());
    push("sum3", Op::Add, &["penni_out", "clip_out", "relu_out"], BTreeMap::new());
    let avg = Pool2d {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1, 1, 1],
        ceil_mode: true,
        count_include_pad: true,
    };
    push("softmax", Op::Softmax { log: false }, &["sum3_out"], BTreeMap::new());
    push("avg", Op::AvgPool2d(avg), &["softmax_out"], BTreeMap::new());
    let avg2 = Pool2d {
        kernel: [2, 3],
        stride: [1, 2],
        padding: [0, 1, 1, 1],
        ceil_mode: false,
        count_include_pad: false,
    };
    push("avg2", Op::AvgPool2d(avg2), &["avg_out"], BTreeMap::new());
    let maxp = Pool2d {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0, 1, 1],
        ceil_mode: true,
        count_include_pad: false,
    };
    push("max", Op::MaxPool2d(maxp), &["avg2_out"], BTreeMap::new());
    // MobileNet-v3 / EfficientNet pieces: HardSwish, SiLU, a squeeze-and-excitation scale
    use penni_model::Activation;
    push("hswish", Op::Activation(Activation::HardSwish), &["max_out"], BTreeMap::new());
    push("sig", Op::Activation(Activation::Sigmoid), &["hswish_out"], BTreeMap::new());
    push("silu", Op::Mul, &["hswish_out", "sig_out"], BTreeMap::new());
    push("se_pool", Op::GlobalAvgPool, &["silu_out"], BTreeMap::new());
    let gate = Activation::HardSigmoid { alpha: 0.2, beta: 0.5 };
    push("se_gate", Op::Activation(gate), &["se_pool_out"], BTreeMap::new());
    push("se_scale", Op::Mul, &["silu_out", "se_gate_out"], BTreeMap::new());
    push(
        "leaky",
        Op::Activation(Activation::LeakyRelu { alpha: 0.1 }),
        &["se_scale_out"],
        BTreeMap::new(),
    );
    push("gap", Op::GlobalAvgPool, &["leaky_out"], BTreeMap::new());
    push("flat", Op::Flatten, &["gap_out"], BTreeMap::new());
    push(
        "fc1",
        Op::Linear {
            in_features: 8,
            out_features: 6,
            bias: false,
        },
        &["flat_out"],
        BTreeMap::from([("weight".into(), rand_tensor(&mut rng, vec![6, 8], 0.5))]),
    );
    push("cat", Op::Concat, &["fc1_out", "flat_out"], BTreeMap::new());
    push("fc_relu", Op::Relu, &["cat_out"], BTreeMap::new());
    push(
        "fc2",
        Op::Linear {
            in_features: 14,
            out_features: 3,
            bias: true,
        },
        &["fc_relu_out"],
        BTreeMap::from([
            ("weight".into(), rand_tensor(&mut rng, vec![3, 14], 0.5)),
            ("bias".into(), rand_tensor(&mut rng, vec![3], 0.1)),
        ]),
    );
    push("log_softmax", Op::Softmax { log: true }, &["fc2_out"], BTreeMap::new());
    let m = Model {
        name: "op_zoo".into(),
        input: Input {
            name: "image".into(),
            channels: 4,
            height: 13,
            width: 11,
        },
        nodes,
        output: "log_softmax_out".into(),
    };
    m.validate().unwrap();
    m
}
