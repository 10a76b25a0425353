//! IR -> ONNX -> IR without Python: exact for dense models, exact for PENNI layers too (the
//! export tags basis/combination conv pairs in the metadata).

mod common;

use common::*;
use penni_model::reference::forward;
use penni_onnx::{export_bytes, import_bytes};

#[test]
fn dense_zoo_models_round_trip_exactly() {
    for (name, width) in [("resnet20", 0.25), ("resnet18", 0.125), ("vgg16", 0.125), ("resnet56", 0.25)] {
        let mut m = zoo(name, width);
        randomize_bn(&mut m, 3);
        let bytes = export_bytes(&m).unwrap();
        let back = import_bytes(&bytes, name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, m, "{name} changed in the round trip");
    }
}

#[test]
fn decomposed_models_round_trip_exactly() {
    for (name, width) in [("resnet20", 0.25), ("vgg16", 0.125)] {
        let mut m = zoo(name, width);
        randomize_bn(&mut m, 4);
        let d = decompose(&m, 5, 11);
        let bytes = export_bytes(&d).unwrap();
        let back = import_bytes(&bytes, name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, d, "{name} (decomposed) changed in the round trip");
    }
}

#[test]
fn every_op_round_trips_exactly() {
    let m = op_zoo();
    let back = import_bytes(&export_bytes(&m).unwrap(), "op_zoo").unwrap();
    assert_eq!(back, m);
}

#[test]
fn decomposed_without_metadata_still_computes_the_same() {
    let mut m = zoo("resnet20", 0.25);
    randomize_bn(&mut m, 5);
    let d = decompose(&m, 3, 12);
    let mut proto = penni_onnx::export_proto(&d).unwrap();
    proto.metadata_props.clear();
    let back = penni_onnx::import_proto(&proto, "no-meta").unwrap();
    assert!(back.nodes.len() > d.nodes.len(), "without the tags the layers stay two plain convs");
    let x = random_input(&d, 2, 1);
    let (a, b) = (forward(&d, &x).unwrap(), forward(&back, &x).unwrap());
    assert!(max_rel_diff(&b.data, &a.data) < 1e-5);
}

#[test]
fn export_file_is_atomic_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let m = zoo("resnet20", 0.25);
    penni_onnx::export_file(&m, &path).unwrap();
    let back = penni_onnx::import_file(&path).unwrap();
    assert_eq!(back, m);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
}
