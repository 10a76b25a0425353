//! CNNs exported by PyTorch itself (torch 2.15.0, the TorchScript exporter and the dynamo
//! exporter; the files are committed under tests/fixtures/torch, written by
//! tests/py/export_torch.py) go through import -> PENNI compression -> ONNX export.
//!
//! * Always: each file imports, and `penni infer` on it matches torch's own recorded output
//!   to 1e-4 (relative to the largest output); each compresses, and the exported file imports
//!   back with its PENNI layers and runs in `penni infer`. Needs Fashion-MNIST, no Python.
//! * With PENNI_PYTHON (scripts/python-env.sh; scripts/test.sh sets it): onnxruntime runs the
//!   original and the compressed files, and its outputs match torch's and penni's to 1e-4.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every committed fixture: <model>-<exporter>.onnx with torch's output in <same>.npy.
const FIXTURES: &[&str] = &[
    "resnet_mini-torchscript-opset17",
    "resnet_mini-dynamo-opset18",
    "resnet_mini-dynamo-noopt-opset18",
    "vgg_mini-torchscript-opset17",
    "vgg_mini-dynamo-opset18",
    "vgg_mini-dynamo-noopt-opset18",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch")
}

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

fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    penni_onnx::npy::read_f32(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest |a - b| divided by the largest |a|; the shapes must agree.
fn rel_diff(what: &str, a: &Path, b: &Path) -> f32 {
    let ((sa, va), (sb, vb)) = (npy(a), npy(b));
    assert_eq!(sa, sb, "{what}: output shapes differ");
    let scale = va.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = va.iter().zip(&vb).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff.is_finite(), "{what}: non-finite outputs");
    diff / scale
}

fn infer(model: &Path, input: &Path, out: &Path) {
    ok(Command::new(env!("CARGO_BIN_EXE_penni")).args(["infer", "--model", p(model), "--input", p(input), "--output", p(out)]));
}

#[test]
fn torch_exports_import_and_match_torch() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("input.npy");
    assert_eq!(npy(&input).0, vec![4, 1, 28, 28]);
    for name in FIXTURES {
        let onnx = fixtures().join(format!("{name}.onnx"));
        let model = penni_onnx::import_file(&onnx).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((model.input.channels, model.input.height, model.input.width), (1, 28, 28), "{name}");
        let out = dir.path().join(format!("{name}.penni.npy"));
        infer(&onnx, &input, &out);
        let rel = rel_diff(name, &fixtures().join(format!("{name}.npy")), &out);
        eprintln!("{name}: penni vs torch, max relative difference {rel:.2e}");
        assert!(rel <= 1e-4, "{name}: penni and torch differ by {rel} (relative)");
    }
}

#[test]
fn torch_exports_compress_export_and_run_in_onnxruntime() {
    let penni = env!("CARGO_BIN_EXE_penni");
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("input.npy");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[retrain]\nepochs = 1\nbatch_size = 64\n[finetune]\nepochs = 1\nbatch_size = 64\n",
    )
    .unwrap();
    // (model, input, output) triples for one onnxruntime run, and what each output is checked against
    let mut ort_args: Vec<PathBuf> = Vec::new();
    let mut checks: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    for name in FIXTURES {
        let dense = fixtures().join(format!("{name}.onnx"));
        let compressed = dir.path().join(format!("{name}-penni.onnx"));
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
        assert!(report.contains("DecomposedConv2d"), "{name}: {report}");
        let model = penni_onnx::import_file(&compressed).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            model.nodes.iter().any(|n| matches!(n.op, penni_model::Op::DecomposedConv2d(_))),
            "{name}: the exported file has no PENNI layer"
        );
        let penni_out = dir.path().join(format!("{name}-penni.penni.npy"));
        infer(&compressed, &input, &penni_out);

        let (ort_dense, ort_compressed) = (
            dir.path().join(format!("{name}.ort.npy")),
            dir.path().join(format!("{name}-penni.ort.npy")),
        );
        ort_args.extend([
            dense,
            input.clone(),
            ort_dense.clone(),
            compressed,
            input.clone(),
            ort_compressed.clone(),
        ]);
        checks.push((
            format!("{name}: onnxruntime (original file) vs torch"),
            fixtures().join(format!("{name}.npy")),
            ort_dense,
        ));
        checks.push((
            format!("{name}: onnxruntime (compressed export) vs penni"),
            penni_out,
            ort_compressed,
        ));
    }

    let Some(py) = python() else { return };
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    ok(Command::new(&py).arg(here.join("../penni-onnx/tests/ort_run.py")).args(&ort_args));
    for (what, expected, got) in &checks {
        let rel = rel_diff(what, expected, got);
        eprintln!("{what}: max relative difference {rel:.2e}");
        assert!(rel <= 1e-4, "{what}: differ by {rel} (relative)");
    }
}
