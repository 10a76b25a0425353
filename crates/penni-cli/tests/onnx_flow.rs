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

/// `penni decompose --method tucker` exports each conv as three ONNX Conv nodes: at full ranks
/// onnxruntime on the export gives the dense model's outputs; at half ranks onnxruntime and
/// penni's engine agree on it, and its weights are numpy's HOSVD of the dense ones.
#[test]
fn tucker_decomposition_exports_three_convs_that_onnxruntime_runs() {
    let Some(py) = python() else { return };
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let dense = dir.path().join("cnn.onnx");
    ok(Command::new(&py).arg(here.join("tests/py/make_cnn.py")).arg(&dense));
    let penni = env!("CARGO_BIN_EXE_penni");
    let n = 3;
    let x: Vec<f32> = (0..n * 28 * 28).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let input = dir.path().join("x.npy");
    std::fs::write(&input, penni_onnx::npy::write_f32(&[n, 1, 28, 28], &x)).unwrap();
    let ort = |model: &Path, tag: &str| {
        let out = dir.path().join(format!("{tag}.npy"));
        ok(Command::new(&py)
            .arg(here.join("../penni-onnx/tests/ort_run.py"))
            .args([p(model), p(&input), p(&out)]));
        penni_onnx::npy::read_f32(&std::fs::read(&out).unwrap()).unwrap().1
    };
    let max_diff = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    };
    let reference = ort(&dense, "dense");
    for (rank, tag) in [("1.0", "full"), ("0.5", "half")] {
        let cfg = dir.path().join(format!("{tag}.toml"));
        std::fs::write(&cfg, format!("[tucker]\nrank = {rank}\nonly_if_cheaper = false\n")).unwrap();
        let out = dir.path().join(format!("{tag}.onnx"));
        let table = ok(Command::new(penni).args([
            "decompose",
            "--method",
            "tucker",
            "--model",
            p(&dense),
            "--config",
            p(&cfg),
            "--out",
            p(&out),
        ]));
        assert!(table.contains("rel. error"), "{table}");
        let imported = penni_onnx::import_file(&out).unwrap();
        let original = penni_onnx::import_file(&dense).unwrap();
        let convs = |m: &penni_model::Model| m.nodes.iter().filter(|n| matches!(n.op, penni_model::Op::Conv2d(_))).count();
        let spatial = original
            .nodes
            .iter()
            .filter(|n| matches!(&n.op, penni_model::Op::Conv2d(c) if c.kernel[0] * c.kernel[1] > 1 && c.groups == 1))
            .count();
        assert!(spatial > 0);
        assert_eq!(convs(&imported), convs(&original) + 2 * spatial, "{tag}");
        let a = ort(&out, tag);
        if tag == "full" {
            assert!(max_diff(&reference, &a) < 1e-4, "full ranks: {}", max_diff(&reference, &a));
        } else {
            // an independent HOSVD (numpy's SVD of the unfoldings) composes the same weights
            ok(Command::new(&py)
                .arg(here.join("tests/py/tucker_hosvd.py"))
                .args([p(&dense), p(&out)]));
        }
        let penni_out = dir.path().join(format!("{tag}-penni.npy"));
        ok(Command::new(penni).args(["infer", "--model", p(&out), "--input", p(&input), "--output", p(&penni_out)]));
        let b = penni_onnx::npy::read_f32(&std::fs::read(&penni_out).unwrap()).unwrap().1;
        assert!(
            max_diff(&a, &b) < 1e-4,
            "{tag}: onnxruntime and penni differ by {}",
            max_diff(&a, &b)
        );
    }
}
