//! A corpus of broken and unsupported files: each must give its own clear error, none may panic.

mod common;

use penni_onnx::OnnxError;
use penni_onnx::proto::*;
use prost::Message;

fn tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// A float value info with fixed dimensions.
fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dims: Vec<Option<i64>> = dims.iter().map(|&d| Some(d)).collect();
    common::proto::vi(name, &dims)
}

/// x (1x2x4x4) -> conv (w: 3x2x3x3) -> relu -> y
fn base() -> ModelProto {
    ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: vec![node("Conv", "conv", &["x", "w"], "c"), node("Relu", "relu", &["c"], "y")],
            initializer: vec![tensor("w", &[3, 2, 3, 3], &[0.1; 54])],
            input: vec![vi("x", &[1, 2, 4, 4])],
            output: vec![vi("y", &[1, 3, 2, 2])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn import(p: &ModelProto) -> Result<penni_model::Model, OnnxError> {
    penni_onnx::import_bytes(&p.encode_to_vec(), "bad.onnx")
}

fn graph(p: &mut ModelProto) -> &mut GraphProto {
    p.graph.as_mut().unwrap()
}

#[test]
fn the_base_model_is_fine() {
    import(&base()).unwrap();
}

#[test]
fn truncated_protobuf() {
    let bytes = penni_onnx::export_bytes(&common::zoo("resnet20", 0.25)).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 3, 7] {
        let e = penni_onnx::import_bytes(&bytes[..cut], "cut.onnx").unwrap_err();
        assert!(matches!(e, OnnxError::Decode { .. }), "{e}");
        assert!(e.to_string().starts_with("cut.onnx: not a readable ONNX model"), "{e}");
    }
}

#[test]
fn garbage_bytes() {
    for bytes in [&b"this is not an onnx file at all"[..], &[0xff; 64], b"PK\x03\x04zipzipzip", &[]] {
        let e = penni_onnx::import_bytes(bytes, "garbage.onnx").unwrap_err();
        assert!(matches!(e, OnnxError::Decode { .. } | OnnxError::IrVersion { .. }), "{e}");
    }
}

#[test]
fn huge_declared_dims_with_tiny_data() {
    let mut p = base();
    graph(&mut p).initializer[0].dims = vec![1 << 20, 1 << 20, 3, 3];
    let e = import(&p).unwrap_err();
    assert!(matches!(&e, OnnxError::Tensor { tensor, .. } if tensor == "w"), "{e}");
    assert!(e.to_string().contains("holds 216 bytes"), "{e}");
    graph(&mut p).initializer[0].dims = vec![i64::MAX, 4];
    assert!(matches!(import(&p).unwrap_err(), OnnxError::Tensor { .. }));
    // typed data: count mismatch
    let mut p = base();
    graph(&mut p).initializer[0] = TensorProto {
        name: "w".into(),
        dims: vec![1 << 40],
        data_type: data_type::FLOAT,
        float_data: vec![1.0; 3],
        ..Default::default()
    };
    let e = import(&p).unwrap_err();
    assert!(e.to_string().contains("float_data holds 3"), "{e}");
    // huge input image
    let mut p = base();
    graph(&mut p).input[0] = vi("x", &[1, 2, 1 << 40, 1 << 40]);
    assert!(matches!(import(&p).unwrap_err(), OnnxError::Malformed { .. }));
}

#[test]
fn negative_dims() {
    let mut p = base();
    graph(&mut p).initializer[0].dims = vec![-3, 2, 3, 3];
    let e = import(&p).unwrap_err();
    assert!(matches!(e, OnnxError::Tensor { .. }) && e.to_string().contains("negative"), "{e}");
    let mut p = base();
    graph(&mut p).input[0] = vi("x", &[1, 2, -4, 4]);
    let e = import(&p).unwrap_err();
    assert!(
        matches!(e, OnnxError::Malformed { .. }) && e.to_string().contains("negative"),
        "{e}"
    );
}

#[test]
fn missing_initializer() {
    let mut p = base();
    graph(&mut p).initializer.clear();
    let e = import(&p).unwrap_err();
    assert!(
        matches!(&e, OnnxError::DanglingInput { node, op, input, .. } if node == "conv" && op == "Conv" && input == "w"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "bad.onnx: node 'conv' (Conv) reads 'w', which no node, initializer or graph input provides"
    );
}

#[test]
fn cycle() {
    let mut p = base();
    let g = graph(&mut p);
    g.node = vec![
        node("Conv", "conv", &["x", "w"], "c"),
        node("Add", "a", &["c", "r"], "s"),
        node("Relu", "r1", &["s"], "r"),
        node("Relu", "out", &["r"], "y"),
    ];
    let e = import(&p).unwrap_err();
    assert!(
        matches!(&e, OnnxError::Cycle { nodes, .. } if nodes.contains(&"a".to_string()) && nodes.contains(&"r1".to_string())),
        "{e}"
    );
    // out-of-order but acyclic files are sorted, not rejected
    let mut p = base();
    graph(&mut p).node.reverse();
    import(&p).unwrap();
}

#[test]
fn unsupported_ops_are_listed_together() {
    let mut p = base();
    let g = graph(&mut p);
    g.node[0].attribute.push(AttributeProto {
        name: "fancy".into(),
        r#type: attribute_type::INT,
        i: 1,
        ..Default::default()
    });
    g.node[1] = node("LRN", "norm", &["c"], "n");
    let mut pool = node("MaxPool", "pool", &["n"], "p");
    pool.attribute = vec![
        AttributeProto {
            name: "kernel_shape".into(),
            r#type: attribute_type::INTS,
            ints: vec![2, 2],
            ..Default::default()
        },
        AttributeProto {
            name: "storage_order".into(),
            r#type: attribute_type::INT,
            i: 1,
            ..Default::default()
        },
    ];
    g.node.push(pool);
    g.node.push(node("Hardmax", "hardmax", &["p"], "s"));
    let mut custom = node("FusedConv", "fused", &["s"], "y");
    custom.domain = "com.microsoft".into();
    g.node.push(custom);
    let e = import(&p).unwrap_err();
    let OnnxError::UnsupportedModel { issues, .. } = &e else {
        panic!("{e}")
    };
    let text = e.to_string();
    for (node, what) in [
        ("conv", "fancy"),
        ("norm", "LRN"),
        ("pool", "storage_order"),
        ("hardmax", "Hardmax"),
        ("fused", "com.microsoft"),
    ] {
        assert!(
            issues.iter().any(|i| i.node == node && i.to_string().contains(what)),
            "{node}/{what} missing from:\n{text}"
        );
    }
    assert!(
        text.contains("unsupported operators: LRN, Hardmax, com.microsoft.FusedConv"),
        "{text}"
    );
    assert_eq!(issues.len(), 5, "{text}");
}

#[test]
fn graph_level_problems_join_the_list() {
    let mut p = base();
    let g = graph(&mut p);
    g.input.push(vi("mask", &[1, 3, 2, 2]));
    g.output.push(vi("c", &[1, 3, 2, 2]));
    g.node.push(node("Hardmax", "hm", &["y"], "z"));
    g.output[0].name = "z".into();
    let e = import(&p).unwrap_err();
    let OnnxError::UnsupportedModel { issues, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(issues.len(), 3, "{e}");
    assert!(e.to_string().contains("2 run-time inputs (x, mask)"), "{e}");
    assert!(e.to_string().contains("2 outputs"), "{e}");
}

#[test]
fn wrong_opset_and_ir_version() {
    for v in [1, 5, 23, 99] {
        let mut p = base();
        p.opset_import[0].version = v;
        let e = import(&p).unwrap_err();
        assert!(
            matches!(e, OnnxError::Opset { .. }) && e.to_string().contains(&format!("opset {v}")),
            "{e}"
        );
    }
    let mut p = base();
    p.opset_import.clear();
    assert!(matches!(import(&p).unwrap_err(), OnnxError::Opset { .. }));
    let mut p = base();
    p.ir_version = 2;
    let e = import(&p).unwrap_err();
    assert!(matches!(e, OnnxError::IrVersion { found: 2, .. }), "{e}");
}

#[test]
fn nan_weights() {
    let mut p = base();
    let mut w = vec![0.1f32; 54];
    w[7] = f32::NAN;
    graph(&mut p).initializer[0] = tensor("w", &[3, 2, 3, 3], &w);
    let e = import(&p).unwrap_err();
    assert!(
        matches!(&e, OnnxError::NonFiniteWeight { node, param, .. } if node == "conv" && param == "weight"),
        "{e}"
    );
}

#[test]
fn malformed_nodes() {
    // weight does not fit the input channels
    let mut p = base();
    graph(&mut p).initializer[0] = tensor("w", &[3, 5, 3, 3], &[0.1; 135]);
    let e = import(&p).unwrap_err();
    assert!(
        matches!(&e, OnnxError::InvalidNode { node, op, .. } if node == "conv" && op == "Conv"),
        "{e}"
    );
    // attribute of the wrong type
    let mut p = base();
    graph(&mut p).node[0].attribute.push(AttributeProto {
        name: "group".into(),
        r#type: attribute_type::FLOAT,
        f: 1.0,
        ..Default::default()
    });
    let e = import(&p).unwrap_err();
    assert!(e.to_string().contains("'group' must be an integer"), "{e}");
    // absurd strides
    let mut p = base();
    graph(&mut p).node[0].attribute.push(AttributeProto {
        name: "strides".into(),
        r#type: attribute_type::INTS,
        ints: vec![i64::MAX, 1],
        ..Default::default()
    });
    assert!(matches!(import(&p).unwrap_err(), OnnxError::InvalidNode { .. }));
    // a tensor written twice
    let mut p = base();
    graph(&mut p).node[1].output[0] = "c".into();
    assert!(matches!(import(&p).unwrap_err(), OnnxError::Malformed { .. }));
    // no graph
    let mut p = base();
    p.graph = None;
    assert!(matches!(import(&p).unwrap_err(), OnnxError::Malformed { .. }));
}

#[test]
fn subgraphs_external_data_and_giant_constants() {
    let mut p = base();
    let mut iff = node("If", "branch", &["c"], "y");
    iff.attribute.push(AttributeProto {
        name: "then_branch".into(),
        r#type: attribute_type::GRAPH,
        ..Default::default()
    });
    graph(&mut p).node[1] = iff;
    let e = import(&p).unwrap_err();
    assert!(
        matches!(e, OnnxError::UnsupportedModel { .. }) && e.to_string().contains("'branch' (If)"),
        "{e}"
    );

    let mut p = base();
    let w = &mut graph(&mut p).initializer[0];
    w.raw_data.clear();
    w.data_location = DATA_LOCATION_EXTERNAL;
    w.external_data = vec![StringStringEntryProto {
        key: "location".into(),
        value: "weights.bin".into(),
    }];
    let e = import(&p).unwrap_err();
    assert!(matches!(e, OnnxError::Tensor { .. }) && e.to_string().contains("external"), "{e}");

    // ConstantOfShape asking for 2^60 values
    let mut p = base();
    let g = graph(&mut p);
    g.initializer.clear();
    g.initializer.push(TensorProto {
        name: "shape".into(),
        dims: vec![4],
        data_type: data_type::INT64,
        int64_data: vec![1 << 15; 4],
        ..Default::default()
    });
    g.node.insert(0, node("ConstantOfShape", "fill", &["shape"], "w"));
    let e = import(&p).unwrap_err();
    assert!(matches!(&e, OnnxError::InvalidNode { node, .. } if node == "fill"), "{e}");
}

#[test]
fn import_file_reports_the_path() {
    let e = penni_onnx::import_file(std::path::Path::new("/nonexistent/model.onnx")).unwrap_err();
    assert!(
        matches!(e, OnnxError::Io { .. }) && e.to_string().starts_with("/nonexistent/model.onnx"),
        "{e}"
    );
}
