use std::collections::BTreeMap;

use penni_model::zoo::{self, ZooOptions};
use penni_model::{Conv2d, DecomposedConv2d, Extras, Model, ModelError, Node, Op, Shape, Tensor, io, model_cost};

fn zoo_model(name: &str) -> Model {
    zoo::build(name, &ZooOptions::default()).unwrap()
}

// Hand-computed (conv: Cin*Cout*k*k weights, * H'W' MACs; BN: 2 per channel; linear 512*10+10).
#[test]
fn zoo_parameter_and_mac_counts_match_hand_computed_figures() {
    let expect = [
        ("resnet18", 11_164_352, 11_173_962, 555_422_720),
        ("resnet20", 270_896, 272_474, 40_813_184),
        ("resnet56", 851_504, 855_770, 125_747_840),
        ("vgg16", 14_715_584, 14_724_042, 313_201_664),
        ("vgg16avg", 14_715_584, 14_724_042, 313_201_664),
    ];
    for (name, paper_params, all_params, macs) in expect {
        let t = model_cost(&zoo_model(name)).unwrap().totals;
        // paper style: conv and linear weights; all: also biases and batchnorm scale/shift
        assert_eq!(t.params_paper, paper_params, "{name} paper params");
        assert_eq!(t.params_all, all_params, "{name} all params");
        assert_eq!(t.macs_paper, macs, "{name} MACs");
    }
}

#[test]
fn zoo_options_change_the_graph() {
    let opts = ZooOptions {
        in_channels: 1,
        height: 28,
        width: 28,
        num_classes: 7,
        width_multiplier: 0.5,
        seed: 1,
    };
    let m = zoo::build("resnet20", &opts).unwrap();
    assert_eq!(m.output_shape().unwrap(), Shape::Vector(7));
    let stem = m.node("stem.conv").unwrap();
    assert_eq!(stem.params["weight"].shape, vec![8, 1, 3, 3]);
    // same seed, same weights; other seed, other weights
    assert_eq!(m, zoo::build("resnet20", &opts).unwrap());
    assert_ne!(m, zoo::build("resnet20", &ZooOptions { seed: 2, ..opts }).unwrap());
}

#[test]
fn vgg_on_a_too_small_image_is_a_clear_error() {
    let opts = ZooOptions {
        in_channels: 1,
        height: 28,
        width: 28,
        ..Default::default()
    };
    let err = zoo::build("vgg16", &opts).unwrap_err().to_string();
    assert!(err.contains("pool5") && err.contains("too small"), "{err}");
    assert!(zoo::build("alexnet", &opts).unwrap_err().to_string().contains("resnet18"));
}

fn decomposed_model() -> Model {
    let mut m = zoo::build(
        "resnet20",
        &ZooOptions {
            width_multiplier: 0.25,
            ..Default::default()
        },
    )
    .unwrap();
    let node = m.node_mut("layer1.0.1.conv").unwrap();
    let Op::Conv2d(c) = node.op.clone() else { panic!() };
    let rows = c.out_channels * c.in_channels;
    let coefficients: Vec<f32> = (0..rows * 3).map(|i| if i % 4 == 0 { i as f32 * 0.5 - 3.0 } else { 0.0 }).collect();
    node.op = Op::DecomposedConv2d(DecomposedConv2d {
        conv: Conv2d {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
            groups: 1,
            bias: true,
        },
        num_bases: 3,
        basis_quant: None,
    });
    node.params = BTreeMap::from([
        (
            "bases".into(),
            Tensor::new(vec![3, 9], (0..27).map(|i| i as f32 / 7.0).collect()).unwrap(),
        ),
        ("coefficients".into(), Tensor::new(vec![rows, 3], coefficients).unwrap()),
        ("bias".into(), Tensor::full(vec![c.out_channels], 0.25)),
    ]);
    m.validate().unwrap();
    m
}

#[test]
fn save_load_round_trip_is_exact_including_sparse_tensors_and_extras() {
    let dir = tempfile::tempdir().unwrap();
    let m = decomposed_model();
    let mut extras = Extras::default();
    extras.metadata.insert("epoch".into(), "3".into());
    extras
        .tensors
        .insert("momentum/x".into(), Tensor::new(vec![2, 2], vec![0.0, 1.5, 0.0, 0.0]).unwrap());
    let path = dir.path().join("m.penni");
    io::save_with_extras(&m, &extras, &path).unwrap();
    let (back, back_extras) = io::load_with_extras(&path).unwrap();
    assert_eq!(back, m);
    assert_eq!(back_extras.metadata, extras.metadata);
    assert_eq!(back_extras.tensors, extras.tensors);
    let zoo_path = dir.path().join("z.penni");
    let z = zoo_model("resnet20");
    io::save(&z, &zoo_path).unwrap();
    assert_eq!(io::load(&zoo_path).unwrap(), z);
    assert!(std::fs::metadata(&zoo_path).unwrap().len() > 272_474 * 4);
}

#[test]
fn pruned_tensors_are_stored_sparse() {
    let mut m = zoo_model("resnet20");
    let dense = io::to_bytes(&m, &Extras::default()).unwrap().len();
    for node in &mut m.nodes {
        if let Some(w) = node.params.get_mut("weight")
            && w.shape.len() == 4
        {
            for (i, v) in w.data.iter_mut().enumerate() {
                if i % 10 != 0 {
                    *v = 0.0;
                }
            }
        }
    }
    let bytes = io::to_bytes(&m, &Extras::default()).unwrap();
    let sparse = bytes.len();
    assert!(sparse * 4 < dense, "sparse {sparse} dense {dense}");
    // format 2 (bit masks) reads back the same model, larger: at a density of 0.1 a mask
    // costs 10 bits per non-zero, Rice-coded gaps about 5
    let v2 = io::to_bytes_as(&m, &Extras::default(), 2).unwrap();
    assert_eq!(load_bytes(&v2).unwrap(), m);
    assert_eq!(load_bytes(&bytes).unwrap(), m);
    let weights = 272_474 / 10;
    assert!(v2.len() - sparse > weights / 2, "v2 {} v3 {sparse}", v2.len());
    assert!(io::to_bytes_as(&m, &Extras::default(), 1).is_err());
}

fn load_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
    io::from_bytes(bytes, std::path::Path::new("test.penni")).map(|r| r.0)
}

#[test]
fn corrupt_truncated_foreign_and_newer_files_are_clear_errors() {
    let m = zoo_model("resnet20");
    let good = io::to_bytes(&m, &Extras::default()).unwrap();
    assert!(load_bytes(&good).is_ok());

    let mut flipped = good.clone();
    let last = flipped.len() - 10;
    flipped[last] ^= 0x55;
    let e = load_bytes(&flipped).unwrap_err().to_string();
    assert!(e.contains("checksum") && e.contains("test.penni"), "{e}");

    let e = load_bytes(&good[..good.len() / 2]).unwrap_err().to_string();
    assert!(e.contains("not a valid .penni"), "{e}");
    assert!(load_bytes(b"").is_err());
    assert!(load_bytes(&[0xff; 64]).is_err());

    // a newer format version is refused with a hint, not misread
    let version = format!("\"format_version\":\"{}\"", io::FORMAT_VERSION);
    let needle = version.as_bytes();
    let at = good.windows(needle.len()).position(|w| w == needle).expect("version in header");
    let mut newer = good.clone();
    newer[at + needle.len() - 2] = b'9';
    let e = load_bytes(&newer).unwrap_err();
    assert!(matches!(e, ModelError::NewerFormat { found: 9, .. }), "{e}");
    assert!(e.to_string().contains("upgrade"));

    // a safetensors file that is not a penni model
    let plain = safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView)>::new(), None).unwrap();
    assert!(load_bytes(&plain).unwrap_err().to_string().contains("not a penni model"));
}

fn node(name: &str, op: Op, inputs: &[&str]) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        output: name.into(),
        params: BTreeMap::new(),
    }
}

#[test]
fn invalid_graphs_are_reported_with_the_node_name() {
    let mut m = zoo_model("resnet20");
    m.nodes[3].inputs = vec!["nowhere".into()];
    let e = m.validate().unwrap_err().to_string();
    assert!(e.contains("nowhere") && e.contains(&m.nodes[3].name), "{e}");

    // a cycle: a node reading its own output
    let mut m = zoo_model("resnet20");
    let out = m.nodes[2].output.clone();
    m.nodes[2].inputs = vec![out];
    assert!(m.validate().unwrap_err().to_string().contains("cycle"));

    let mut m = zoo_model("resnet20");
    m.nodes[0].params.get_mut("weight").unwrap().data[5] = f32::NAN;
    assert!(m.validate().unwrap_err().to_string().contains("NaN"));

    let mut m = zoo_model("resnet20");
    m.nodes[0].params.get_mut("weight").unwrap().shape = vec![16, 3, 9, 1];
    assert!(m.validate().unwrap_err().to_string().contains("shape"));

    let mut m = zoo_model("resnet20");
    let fc = m.nodes.len() - 1;
    m.nodes[fc].inputs = vec!["pool".into()];
    assert!(m.validate().unwrap_err().to_string().contains("Flatten"));

    let mut m = zoo_model("resnet20");
    m.nodes.push(node("bad_add", Op::Add, &["stem.relu", "layer3.2.relu"]));
    let e = m.validate().unwrap_err().to_string();
    assert!(e.contains("bad_add") && e.contains("different shapes"), "{e}");
}

#[test]
fn shapes_follow_strides_paddings_and_ceil_mode() {
    use penni_model::graph::window_out;
    assert_eq!(window_out(32, 3, 1, 1, 1, 1, false), Some(32));
    assert_eq!(window_out(32, 3, 2, 1, 1, 1, false), Some(16));
    assert_eq!(window_out(7, 3, 2, 0, 0, 1, false), Some(3));
    assert_eq!(window_out(6, 3, 2, 0, 0, 1, true), Some(3));
    assert_eq!(window_out(6, 3, 2, 0, 0, 1, false), Some(2));
    assert_eq!(window_out(5, 3, 1, 0, 0, 2, false), Some(1));
    assert_eq!(window_out(2, 3, 1, 0, 0, 1, false), None);
    assert_eq!(window_out(5, 2, 2, 0, 1, 1, false), Some(3));
}

#[test]
fn reference_forward_matches_hand_computed_conv_pool_linear() {
    use penni_model::reference::{Activation, forward};
    use penni_model::zoo::GraphBuilder;
    use penni_model::{Conv2d, Input, Pool2d};
    let mut b = GraphBuilder::new(
        "tiny",
        Input {
            name: "x".into(),
            channels: 1,
            height: 3,
            width: 3,
        },
        0,
    );
    // 2x2 conv of ones, stride 1, padding only on the bottom/right (asymmetric), with bias 0.5
    let conv = Conv2d {
        in_channels: 1,
        out_channels: 1,
        kernel: [2, 2],
        stride: [1, 1],
        padding: [0, 0, 1, 1],
        dilation: [1, 1],
        groups: 1,
        bias: true,
    };
    let params = BTreeMap::from([
        ("weight".to_string(), Tensor::full(vec![1, 1, 2, 2], 1.0)),
        ("bias".to_string(), Tensor::full(vec![1], 0.5)),
    ]);
    let c = b.push("conv", Op::Conv2d(conv), &["x"], params);
    let pool = Pool2d {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0; 4],
        ceil_mode: true,
        count_include_pad: false,
    };
    let p = b.push("avg", Op::AvgPool2d(pool), &[&c], BTreeMap::new());
    let f = b.flatten("flat", &p);
    let m = b.finish(&f).unwrap();
    let x = Activation {
        n: 1,
        shape: Shape::Map { c: 1, h: 3, w: 3 },
        data: (1..=9).map(|v| v as f32).collect(),
    };
    let y = forward(&m, &x).unwrap();
    // conv output (3x3): [12.5,16.5,9.5 | 24.5,28.5,15.5 | 15.5,17.5,9.5]; ceil-mode 2x2 average pool of that:
    let expect = [(12.5 + 16.5 + 24.5 + 28.5) / 4.0, (9.5 + 15.5) / 2.0, (15.5 + 17.5) / 2.0, 9.5];
    assert_eq!(y.shape, Shape::Vector(4));
    assert_eq!(y.data.len(), expect.len());
    for (a, e) in y.data.iter().zip(expect) {
        assert!((a - e).abs() < 1e-5, "{:?} vs {expect:?}", y.data);
    }
    // wrong input shape is an error, not a panic
    let bad = Activation {
        n: 1,
        shape: Shape::Map { c: 2, h: 3, w: 3 },
        data: vec![0.0; 18],
    };
    assert!(forward(&m, &bad).is_err());
}

/// A decomposed conv costs its dense basis stage (H'W' * C * d * k*k, reported separately as
/// `macs_basis`) plus its combination stage by non-zeros (nnz(A) * H'W').
#[test]
fn decomposed_conv_macs_are_basis_stage_plus_nonzero_combinations() {
    let spec = DecomposedConv2d {
        conv: Conv2d {
            in_channels: 3,
            out_channels: 4,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1; 4],
            dilation: [1, 1],
            groups: 1,
            bias: false,
        },
        num_bases: 2,
        basis_quant: None,
    };
    let mut coefficients = vec![0f32; 4 * 3 * 2];
    for i in [0, 5, 9, 17, 23] {
        coefficients[i] = 0.5;
    }
    let node = Node {
        name: "pconv".into(),
        op: Op::DecomposedConv2d(spec),
        inputs: vec!["x".into()],
        output: "y".into(),
        params: [
            ("bases".to_string(), Tensor::new(vec![2, 9], vec![0.1; 18]).unwrap()),
            ("coefficients".to_string(), Tensor::new(vec![12, 2], coefficients).unwrap()),
        ]
        .into_iter()
        .collect(),
    };
    let m = Model {
        name: "one".into(),
        input: penni_model::Input {
            name: "x".into(),
            channels: 3,
            height: 5,
            width: 5,
        },
        nodes: vec![node],
        output: "y".into(),
    };
    let t = model_cost(&m).unwrap().totals;
    assert_eq!(t.macs_basis, 25 * 3 * 2 * 9);
    assert_eq!(t.macs_paper, 25 * 3 * 2 * 9 + 5 * 25);
    assert_eq!(t.params_paper, 5);
    assert_eq!(
        model_cost(&zoo_model("resnet20")).unwrap().totals.macs_basis,
        0,
        "a dense model has no basis stage"
    );
}

/// A `.penni` file written before the conv geometry was shared between the conv kinds (format 1,
/// a compressed ResNet-20 from experiments/penni-fmnist) still loads, and computes what it
/// computed then. The expected scores were printed by the reference forward pass of commit
/// 4d918d3 on the same input.
#[test]
fn format1_decomposed_model_still_loads_and_computes_the_same() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1-resnet20-penni.penni");
    let m = io::load(&path).unwrap();
    let decomposed: Vec<&DecomposedConv2d> = m
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::DecomposedConv2d(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(decomposed.len(), 19);
    let x = penni_model::reference::Activation {
        n: 1,
        shape: Shape::Map { c: 1, h: 28, w: 28 },
        data: (0..784).map(|i| ((i * 37 % 101) as f32) / 101.0 - 0.4).collect(),
    };
    let y = penni_model::reference::forward(&m, &x).unwrap();
    let expect: [f32; 10] = [
        2.7901807,
        0.7924346,
        1.6882248,
        0.5107546,
        -1.5302145,
        -1.695852,
        -0.062305454,
        -2.2432444,
        1.984424,
        -2.1231277,
    ];
    assert_eq!(y.data.len(), expect.len());
    for (a, e) in y.data.iter().zip(expect) {
        assert!((a - e).abs() <= 1e-5 * (1.0 + e.abs()), "{:?} vs {expect:?}", y.data);
    }
}

/// A model whose weights lie on per-channel integer grids (as `penni quantize` writes them),
/// dense and pruned: the file stores packed integers and scales, gives every value back
/// exactly, and is a fraction of the f32 file.
#[test]
fn quantized_tensors_are_stored_packed_and_read_back_exactly() {
    let mut m = decomposed_model();
    let f32_len = io::to_bytes(&m, &Extras::default()).unwrap().len();
    for node in &mut m.nodes {
        let out_channels = match &node.op {
            Op::DecomposedConv2d(c) => c.conv.out_channels,
            Op::Conv2d(c) => c.out_channels,
            _ => continue,
        };
        for (name, t) in node.params.iter_mut() {
            let (g, bits) = match name.as_str() {
                "coefficients" => (out_channels, 4),
                "weight" | "bases" => (t.shape[0], 8),
                _ => continue,
            };
            let len = t.data.len().div_ceil(g);
            for chunk in t.data.chunks_mut(len) {
                let max = chunk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let s = penni_model::grid::canonical_scale(max, bits);
                let q = ((1 << (bits - 1)) - 1) as f32;
                for v in chunk.iter_mut() {
                    if max > 0.0 {
                        *v = (*v / s).round_ties_even().clamp(-q, q) * s;
                    }
                }
            }
        }
    }
    let bytes = io::to_bytes(&m, &Extras::default()).unwrap();
    let (back, _) = io::from_bytes(&bytes, std::path::Path::new("q.penni")).unwrap();
    for (a, b) in m.nodes.iter().zip(&back.nodes) {
        assert_eq!(a.params, b.params, "{}", a.name);
    }
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(names.iter().any(|n| n.ends_with("coefficients#q4")), "{names:?}");
    assert!(bytes.len() * 2 < f32_len, "{} bytes against {f32_len} for f32", bytes.len());
}
