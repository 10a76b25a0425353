//! Real architectures from the ONNX model zoo (the 'light' models of the onnx==1.22.0 test
//! data: SqueezeNet, ResNet-50, DenseNet-121, Inception-v2, 224x224 ImageNet classifiers written
//! by other exporters) given random weights: `penni infer` must match onnxruntime.
//! Needs PENNI_PYTHON and PENNI_ONNX_TESTDATA (scripts/test.sh sets both).

use std::path::{Path, PathBuf};
use std::process::Command;

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("command runs");
    let t = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{cmd:?} failed: {t}");
    t
}

fn read(path: &Path) -> Vec<f32> {
    penni_onnx::npy::read_f32(&std::fs::read(path).unwrap()).unwrap().1
}

#[test]
fn zoo_models_with_random_weights_match_onnxruntime() {
    let (Some(py), Some(data)) = (penni_testkit::python(), penni_testkit::onnx_testdata()) else {
        return;
    };
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let penni = env!("CARGO_BIN_EXE_penni");
    let x: Vec<f32> = (0..3 * 224 * 224).map(|i| ((i * 7919 % 2000) as f32 / 1000.0) - 1.0).collect();
    let input = dir.path().join("x.npy");
    std::fs::write(&input, penni_onnx::npy::write_f32(&[1, 3, 224, 224], &x)).unwrap();
    for (i, name) in ["squeezenet", "resnet50", "densenet121", "inception_v2"].iter().enumerate() {
        let original = PathBuf::from(&data).join(format!("light/light_{name}.onnx"));
        let model = dir.path().join(format!("{name}.onnx"));
        let (ort_out, penni_out) = (
            dir.path().join(format!("{name}.ort.npy")),
            dir.path().join(format!("{name}.penni.npy")),
        );
        ok(Command::new(&py)
            .arg(here.join("tests/py/randomize_light.py"))
            .arg(&original)
            .arg(&model)
            .arg(i.to_string()));
        ok(Command::new(&py)
            .arg(here.join("../penni-onnx/tests/ort_run.py"))
            .arg(&model)
            .arg(&input)
            .arg(&ort_out));
        let args = [
            "infer",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            penni_out.to_str().unwrap(),
        ];
        ok(Command::new(penni).args(args));
        let (a, b) = (read(&ort_out), read(&penni_out));
        assert_eq!(a.len(), 1000, "{name}");
        assert_eq!(a.len(), b.len(), "{name}");
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(&b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        eprintln!("{name}: max |penni - onnxruntime| / max |onnxruntime| = {:.2e}", diff / scale);
        assert!(scale > 0.0 && diff <= 1e-4 * scale, "{name}: difference {diff} at scale {scale}");
    }
}
