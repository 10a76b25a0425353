//! Exported models run by onnxruntime must agree with penni's reference forward pass.
//! Needs PENNI_PYTHON (the python of `scripts/python-env.sh`): skipped with a message without it,
//! failed under CI=true.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use penni_model::Model;
use penni_model::reference::forward;
use penni_onnx::npy;

#[test]
fn onnxruntime_agrees_with_the_reference() {
    let Some(python) = penni_testkit::python() else { return };
    let mut models: Vec<Model> = Vec::new();
    for name in ["resnet20", "resnet18", "vgg16"] {
        let mut m = zoo(name, 0.25);
        randomize_bn(&mut m, 21);
        models.push(decompose(&m, 5, 22));
        models.push(m);
    }
    // MLCNN's reordering as `penni compress` writes it: average pools before their ReLUs, then
    // before their convs (a padded AvgPool counting the zeros, then a strided conv)
    let mut avg = zoo("vgg16avg", 0.25);
    randomize_bn(&mut avg, 23);
    penni_model::passes::pool_before_activation(&mut avg);
    assert_eq!(penni_model::passes::pool_before_conv(&mut avg), 5);
    models.push(decompose(&avg, 5, 24));
    models.push(avg);
    let mut pz = op_zoo();
    models.push(pz.clone());
    pz.name = "op_zoo_round_trip".into();
    // The re-imported export must also run the same.
    models.push(penni_onnx::import_bytes(&penni_onnx::export_bytes(&pz).unwrap(), "op_zoo").unwrap());

    let dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    let mut expected = Vec::new();
    for (i, m) in models.iter().enumerate() {
        let x = random_input(m, 2, 100 + i as u64);
        let y = forward(m, &x).unwrap();
        let p = |s: &str| dir.path().join(format!("{i}_{s}"));
        penni_onnx::export_file(m, &p("model.onnx")).unwrap();
        let s = m.input_shape();
        let Some(per) = (match s {
            penni_model::Shape::Map { c, h, w } => Some([c, h, w]),
            _ => None,
        }) else {
            unreachable!()
        };
        std::fs::write(p("in.npy"), npy::write_f32(&[2, per[0], per[1], per[2]], &x.data)).unwrap();
        args.extend([p("model.onnx"), p("in.npy"), p("out.npy")]);
        expected.push((format!("{} ({} nodes)", m.name, m.nodes.len()), y.data, p("out.npy")));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_run.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(&args)
        .output()
        .expect("cannot start PENNI_PYTHON");
    assert!(
        out.status.success(),
        "ort_run.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    for (label, want, path) in expected {
        let (_, got) = npy::read_f32(&std::fs::read(&path).unwrap()).unwrap();
        let diff = max_rel_diff(&got, &want);
        eprintln!("  {label}: max relative difference {diff:.2e}");
        assert!(diff < 1e-4, "{label}: onnxruntime differs from the reference by {diff}");
    }
}
