//! Random and mutated files into the importer: it may reject them, it must never panic.

mod common;

use penni_onnx::proto::ModelProto;
use proptest::prelude::*;
use prost::Message;

/// Every op the importer understands, plus one it must reject.
fn ops() -> Vec<&'static str> {
    penni_onnx::SUPPORTED_OPS.iter().copied().chain(["Hardmax"]).collect()
}
const NUMBERS: &[i64] = &[-(1 << 62), -7, -2, -1, 0, 1, 2, 3, 4, 5, 7, 64, 1 << 31, 1 << 40, i64::MAX];

/// Applies one semantic edit to a decoded model: reaches the converters with odd values that
/// byte flips (which mostly break the protobuf framing) rarely produce.
fn mutate(p: &mut ModelProto, kind: u8, a: usize, b: usize, v: i64) {
    let g = p.graph.as_mut().unwrap();
    let nn = g.node.len().max(1);
    match kind % 9 {
        0 if !g.initializer.is_empty() => {
            let ni = g.initializer.len();
            let t = &mut g.initializer[a % ni];
            if !t.dims.is_empty() {
                let k = b % t.dims.len();
                t.dims[k] = v;
            }
        }
        1 if !g.node.is_empty() => {
            let n = &mut g.node[a % nn];
            if !n.attribute.is_empty() {
                let k = b % n.attribute.len();
                let at = &mut n.attribute[k];
                at.i = v;
                if !at.ints.is_empty() {
                    let j = (v as usize) % at.ints.len();
                    at.ints[j] = v;
                }
                at.f = v as f32;
            }
        }
        2 if !g.node.is_empty() => {
            let ops = ops();
            g.node[a % nn].op_type = ops[b % ops.len()].to_string();
        }
        3 if !g.node.is_empty() => {
            g.node.remove(a % nn);
        }
        4 if g.node.len() > 1 => {
            let (i, j) = (a % nn, b % nn);
            let x = g.node[j].output[0].clone();
            if let Some(inp) = g.node[i].input.first_mut() {
                *inp = x;
            }
        }
        5 => {
            if let Some(d) = g
                .input
                .get_mut(0)
                .and_then(|i| i.r#type.as_mut())
                .and_then(|t| t.tensor_type.as_mut())
                .and_then(|t| t.shape.as_mut())
            {
                if !d.dim.is_empty() {
                    let k = a % d.dim.len();
                    d.dim[k].dim_value = Some(v);
                }
                if b.is_multiple_of(5) {
                    d.dim.truncate(b % 4);
                }
            }
        }
        6 if !g.node.is_empty() => {
            let n = &mut g.node[a % nn];
            if b.is_multiple_of(2) {
                n.input.pop();
            } else {
                n.input.push(String::new());
            }
        }
        7 => p.opset_import[0].version = [6, 7, 9, 11, 13, 22][a % 6],
        8 if !g.initializer.is_empty() => {
            let ni = g.initializer.len();
            let t = &mut g.initializer[a % ni];
            t.data_type = (v.rem_euclid(17)) as i32;
        }
        _ => {}
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut d = common::decompose(&common::zoo("resnet20", 0.125), 2, 1);
    d.nodes.truncate(12);
    d.output = d.nodes.last().unwrap().output.clone();
    vec![
        penni_onnx::export_bytes(&common::op_zoo()).unwrap(),
        penni_onnx::export_bytes(&d).unwrap(),
    ]
}

proptest! {
    // PROPTEST_CASES=20000 for a longer run (scripts/test.sh sets its short form)
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = penni_onnx::import_bytes(&bytes, "fuzz.onnx");
    }

    #[test]
    fn mutated_models_never_panic(
        which in 0usize..2,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        thread_local!(static SEEDS: Vec<Vec<u8>> = seeds());
        let mut bytes = SEEDS.with(|s| s[which].clone());
        for (at, v) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *v;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        if let Ok(m) = penni_onnx::import_bytes(&bytes, "fuzz.onnx") {
            // whatever imports is a valid model that exports again
            m.validate().unwrap();
            penni_onnx::export_bytes(&m).unwrap();
        }
    }

    #[test]
    fn semantically_mutated_models_never_panic(
        which in 0usize..2,
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<usize>(), proptest::sample::select(NUMBERS)), 1..4),
    ) {
        thread_local!(static PROTOS: Vec<ModelProto> = seeds().iter().map(|b| ModelProto::decode(b.as_slice()).unwrap()).collect());
        let mut p = PROTOS.with(|s| s[which].clone());
        for (kind, a, b, v) in edits {
            mutate(&mut p, kind, a, b, v);
        }
        if let Ok(m) = penni_onnx::import_proto(&p, "fuzz.onnx") {
            m.validate().unwrap();
            penni_onnx::export_bytes(&m).unwrap();
        }
    }

    /// `.npy` inputs (penni infer): random and mutated files give errors, never panics.
    #[test]
    fn npy_files_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut in any::<usize>(), random in proptest::collection::vec(any::<u8>(), 0..160)) {
        let _ = penni_onnx::npy::read_f32(&random);
        let mut bytes = penni_onnx::npy::write_f32(&[2, 3, 4], &[0.5; 24]);
        for (at, v) in flips {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        let _ = penni_onnx::npy::read_f32(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        let _ = penni_onnx::npy::read_f32(&bytes);
    }
}
