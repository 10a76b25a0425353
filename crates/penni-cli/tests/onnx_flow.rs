//! CNNs in ONNX files (one laid out as PyTorch exports it, one with the pieces of mobile and
//! multi-branch networks) go through import -> PENNI compression -> ONNX export, and
//! onnxruntime's outputs on the exported files match penni's.
//! Needs PENNI_PYTHON (scripts/python-env.sh; scripts/test.sh sets it) and Fashion-MNIST.

use std::path::Path;
use std::process::Command;

fn python() -> Option<String> {
    penni_testkit::python().map(|p| p.to_string_lossy().into_owned())
}

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("command runs");
    let t = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{cmd:?} failed: {t}");
    t
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn onnx_import_compress_export_runs_in_onnxruntime() {
    let Some(py) = python() else { return };
    compress_and_compare(&py, "make_cnn.py");
}

/// Concat, squeeze-and-excitation, HardSwish, Sigmoid, LeakyRelu and a final Softmax survive
/// compression and export: onnxruntime gives the same probabilities as penni.
#[test]
fn mobile_style_onnx_model_compresses_and_runs_in_onnxruntime() {
    let Some(py) = python() else { return };
    let probabilities = compress_and_compare(&py, "make_mobile_cnn.py");
    for row in probabilities.chunks(10) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
    }
}

/// Writes a CNN with tests/py/`script`, compresses it with PENNI, exports it, and checks that
/// onnxruntime and `penni infer` agree on the export; returns onnxruntime's outputs.
fn compress_and_compare(py: &str, script: &str) -> Vec<f32> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let dense = dir.path().join("cnn.onnx");
    ok(Command::new(py).arg(here.join("tests/py").join(script)).arg(&dense));

    let compressed = dir.path().join("cnn-penni.onnx");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[retrain]\nepochs = 1\nbatch_size = 64\n[finetune]\nepochs = 1\nbatch_size = 64\n",
    )
    .unwrap();
    let penni = env!("CARGO_BIN_EXE_penni");
    let report = ok(Command::new(penni).args([
        "compress",
        "--model",
        p(&dense),
        "--train-subset",
        "512",
        "--test-subset",
        "128",
        "--config",
        p(&cfg),
        "--mean",
        "0.5",
        "--std",
        "0.5",
        "--out",
        p(&compressed),
    ]));
    assert!(report.contains("DecomposedConv2d"), "{report}");

    // the exported file holds the PENNI layers as basis conv + 1x1 coefficient conv
    let model = penni_onnx::import_file(&compressed).unwrap();
    assert!(model.nodes.iter().any(|n| matches!(n.op, penni_model::Op::DecomposedConv2d(_))));

    // same input through onnxruntime and through penni's engine
    let n = 4;
    let x: Vec<f32> = (0..n * 28 * 28).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let input = dir.path().join("x.npy");
    std::fs::write(&input, penni_onnx::npy::write_f32(&[n, 1, 28, 28], &x)).unwrap();
    let (ort_out, penni_out) = (dir.path().join("ort.npy"), dir.path().join("penni.npy"));
    ok(Command::new(py)
        .arg(here.join("../penni-onnx/tests/ort_run.py"))
        .args([p(&compressed), p(&input), p(&ort_out)]));
    ok(Command::new(penni).args(["infer", "--model", p(&compressed), "--input", p(&input), "--output", p(&penni_out)]));
    let (ort_shape, a) = penni_onnx::npy::read_f32(&std::fs::read(&ort_out).unwrap()).unwrap();
    let (penni_shape, b) = penni_onnx::npy::read_f32(&std::fs::read(&penni_out).unwrap()).unwrap();
    assert_eq!(ort_shape, penni_shape, "{script}: output shapes differ");
    assert_eq!(a.len(), b.len(), "{script}");
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff <= 1e-4 * scale.max(1e-6),
        "{script}: onnxruntime and penni differ by {diff} (scale {scale})"
    );
    a
}
