//! Quantized models in ONNX's QDQ form: penni's export re-imports to the same model, onnxruntime
//! runs it, and penni imports what onnxruntime's own `quantize_static` writes. The onnxruntime
//! tests need PENNI_PYTHON (the python of `scripts/python-env.sh`): skipped with a message
//! without it, failed under CI=true.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use penni_compress::{Calibration, CalibrationOptions, QuantBits, calibrate_activations, quantize_weights};
use penni_model::reference::forward;
use penni_model::{Activation, Model, Op, passes};
use penni_onnx::npy;
use penni_onnx::proto::{ModelProto, data_type};
use prost::Message;

/// As `penni quantize` does it: batchnorms folded, activations calibrated at 8 bits on random
/// images, weights at 8 bits per output channel.
fn quantized(model: &Model, seed: u64) -> Model {
    let mut m = model.clone();
    passes::fold_batchnorms(&mut m);
    let batches: Vec<_> = (0..2).map(|i| random_input(&m, 4, seed + i)).collect();
    let opts = CalibrationOptions {
        bits: 8,
        method: Calibration::MinMax,
        percentile: 99.99,
        basis_bits: 8,
    };
    let (m, ranges) = calibrate_activations(&m, &batches, &opts).unwrap();
    assert!(!ranges.is_empty());
    quantize_weights(&m, &QuantBits::default()).unwrap().0
}

fn models() -> Vec<Model> {
    let mut dense = zoo("resnet20", 0.25);
    randomize_bn(&mut dense, 3);
    let penni = decompose(&dense, 3, 4);
    vec![quantized(&dense, 10), quantized(&penni, 20)]
}

/// Quantized tensors: quantize-dequantize nodes and PENNI layers' quantized basis maps.
fn count_qdq(m: &Model) -> usize {
    m.nodes
        .iter()
        .filter(|n| match &n.op {
            Op::Activation(Activation::QuantizeDequantize { .. }) => true,
            Op::DecomposedConv2d(d) => d.basis_quant.is_some(),
            _ => false,
        })
        .count()
}

#[test]
fn the_qdq_export_re_imports_to_the_same_model() {
    for m in models() {
        let bytes = penni_onnx::export_bytes(&m).unwrap();
        let proto = ModelProto::decode(bytes.as_slice()).unwrap();
        let g = proto.graph.as_ref().unwrap();
        let ops = |t: &str| g.node.iter().filter(|n| n.op_type == t).count();
        assert_eq!(
            ops("QuantizeLinear"),
            count_qdq(&m),
            "{}: one QuantizeLinear per quantized tensor",
            m.name
        );
        let int8 = g.initializer.iter().filter(|t| t.data_type == data_type::INT8).count();
        let int32 = g.initializer.iter().filter(|t| t.data_type == data_type::INT32).count();
        assert!(int8 > 10, "{}: weights written as int8 ({int8})", m.name);
        // (the PENNI layers' combination stages read their quantized basis maps: integer
        // biases there too)
        assert!(int32 > 10, "{}: biases written as int32 ({int32})", m.name);
        let back = penni_onnx::import_bytes(&bytes, "quantized").unwrap();
        assert_eq!(count_qdq(&back), count_qdq(&m));
        assert_eq!(back.nodes.len(), m.nodes.len(), "{}: the PENNI layers come back whole", m.name);
        let x = random_input(&m, 3, 99);
        let (a, b) = (forward(&m, &x).unwrap(), forward(&back, &x).unwrap());
        assert_eq!(a.data, b.data, "{}: the re-imported export computes something else", m.name);
    }
}

fn run_python(python: &Path, script: &str, args: &[&Path]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(script);
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .expect("cannot start PENNI_PYTHON");
    assert!(
        out.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_input(path: &Path, x: &penni_model::reference::Activation) {
    let penni_model::Shape::Map { c, h, w } = x.shape else {
        panic!("image models only")
    };
    std::fs::write(path, npy::write_f32(&[x.n, c, h, w], &x.data)).unwrap();
}

/// Largest difference relative to the output's range, and the fraction of examples whose
/// top class differs.
fn compare(got: &[f32], want: &[f32], classes: usize) -> (f32, f64) {
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let n = want.len() / classes;
    let flips = (0..n)
        .filter(|&i| argmax(&got[i * classes..(i + 1) * classes]) != argmax(&want[i * classes..(i + 1) * classes]))
        .count();
    (max_rel_diff(got, want), flips as f64 / n as f64)
}

#[test]
fn onnxruntime_runs_the_qdq_export_as_penni_does() {
    let Some(python) = penni_testkit::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (i, m) in models().iter().enumerate() {
        let p = |s: &str| dir.path().join(format!("{i}_{s}"));
        penni_onnx::export_file(m, &p("model.onnx")).unwrap();
        let x = random_input(m, 8, 200 + i as u64);
        write_input(&p("in.npy"), &x);
        run_python(&python, "ort_run.py", &[&p("model.onnx"), &p("in.npy"), &p("out.npy")]);
        let (_, got) = npy::read_f32(&std::fs::read(p("out.npy")).unwrap()).unwrap();
        let want = forward(m, &x).unwrap();
        let (diff, _) = compare(&got, &want.data, want.shape.numel());
        eprintln!(
            "  {}: onnxruntime (integer kernels) vs penni: max relative difference {diff:.2e}",
            m.name
        );
        // onnxruntime requantizes in integers, penni rounds f32 sums: a value on a rounding
        // edge may land one level over, and that spreads a little through the layers
        assert!(diff < 0.05, "{}: onnxruntime differs from penni by {diff}", m.name);
    }
}

#[test]
fn penni_imports_what_onnxruntime_quantize_static_writes() {
    let Some(python) = penni_testkit::python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    let mut dense = zoo("resnet20", 0.25);
    randomize_bn(&mut dense, 5);
    // folded, as a deployer exports for quantization: onnxruntime then fuses every conv into its
    // integer QLinearConv
    passes::fold_batchnorms(&mut dense);
    penni_onnx::export_file(&dense, &p("f32.onnx")).unwrap();
    write_input(&p("calibration.npy"), &random_input(&dense, 16, 300));
    run_python(&python, "ort_quantize.py", &[&p("f32.onnx"), &p("calibration.npy"), &p("qdq.onnx")]);

    let imported = penni_onnx::import_file(&p("qdq.onnx")).unwrap();
    assert!(count_qdq(&imported) > 10, "activations imported as quantize-dequantize nodes");
    let x = random_input(&dense, 8, 301);
    write_input(&p("in.npy"), &x);
    run_python(&python, "ort_run.py", &[&p("qdq.onnx"), &p("in.npy"), &p("out.npy")]);
    let (_, got) = npy::read_f32(&std::fs::read(p("out.npy")).unwrap()).unwrap();
    let want = forward(&imported, &x).unwrap();
    let (diff, _) = compare(&got, &want.data, want.shape.numel());
    eprintln!("  quantize_static model: onnxruntime vs penni's import: max relative difference {diff:.2e}");
    assert!(
        diff < 0.05,
        "penni's import of the quantize_static model differs from onnxruntime by {diff}"
    );
    // and the integers really are what the f32 model computes, within quantization error
    let f32_out = forward(&dense, &x).unwrap();
    let (qerr, _) = compare(&want.data, &f32_out.data, want.shape.numel());
    eprintln!("  quantize_static model vs the f32 model: max relative difference {qerr:.2e}");
    assert!(qerr < 0.2, "{qerr}");
}

/// Integers that would escape into other ops at run time are reported, not mis-imported.
#[test]
fn integers_read_by_other_ops_are_reported() {
    let m = &models()[0];
    let bytes = penni_onnx::export_bytes(m).unwrap();
    let mut proto = ModelProto::decode(bytes.as_slice()).unwrap();
    let g = proto.graph.as_mut().unwrap();
    let q_out = g.node.iter().find(|n| n.op_type == "QuantizeLinear").unwrap().output[0].clone();
    let dq = g
        .node
        .iter_mut()
        .find(|n| n.op_type == "DequantizeLinear" && n.input[0] == q_out)
        .unwrap();
    // a Relu reading the uint8 integers themselves
    dq.op_type = "Relu".into();
    dq.input.truncate(1);
    dq.attribute.clear();
    let err = penni_onnx::import_proto(&proto, "escaping integers").unwrap_err().to_string();
    assert!(err.contains("QuantizeLinear") && err.contains("Relu"), "{err}");
}
