//! The official ONNX backend test data (shipped in the onnx==1.22.0 wheel) run through the
//! importer and the reference forward pass. `conformance/run.sh` fetches the data and runs this
//! with PENNI_ONNX_TESTDATA pointing at `onnx/backend/test/data`; without it the test is skipped.
//!
//! `conformance/manifest.txt` lists the cases that must pass (as tract does): a listed case that
//! fails fails the test; cases outside it that now pass are printed so the list can grow.
//! Node tests feed weights as extra graph inputs; the runner binds every input after the first to
//! its test data as an initializer, so the first input is the one run-time image.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use penni_model::reference::{Activation, forward};
use penni_onnx::proto::{ModelProto, TensorProto};
use penni_onnx::tensor::{Data, decode};
use prost::Message;

const RTOL: f32 = 1e-3;
const ATOL: f32 = 1e-4;
const SUITES: &[&str] = &["node", "pytorch-converted", "pytorch-operator", "simple"];

fn read_tensor(path: &Path) -> Result<(Vec<usize>, Vec<f32>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = TensorProto::decode(bytes.as_slice()).map_err(|e| format!("{}: {e}", path.display()))?;
    let c = decode(&t).map_err(|e| format!("{}: {e}", path.display()))?;
    match c.data {
        Data::F32(v) => Ok((c.dims, v)),
        Data::I64(_) => Err(format!("{}: not a float tensor", path.display())),
    }
}

fn data_sets(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Imports one case and checks every data set. Err holds a one-line reason.
fn run_case(dir: &Path) -> Result<(), String> {
    let bytes = std::fs::read(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let mut proto = ModelProto::decode(bytes.as_slice()).map_err(|e| format!("decode: {e}"))?;
    let sets = data_sets(dir);
    let first = sets.first().ok_or("no test data")?;
    if let Some(g) = proto.graph.as_mut() {
        let inits: BTreeSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
        let real: Vec<String> = g.input.iter().map(|i| i.name.clone()).filter(|n| !inits.contains(n)).collect();
        for (k, name) in real.iter().enumerate().skip(1) {
            let p = first.join(format!("input_{k}.pb"));
            let Ok(b) = std::fs::read(&p) else { continue };
            let mut t = TensorProto::decode(b.as_slice()).map_err(|e| format!("{}: {e}", p.display()))?;
            t.name = name.clone();
            g.initializer.push(t);
        }
    }
    let model = penni_onnx::import_proto(&proto, "model.onnx").map_err(|e| format!("import: {e}"))?;
    for set in &sets {
        let (dims, x) = read_tensor(&set.join("input_0.pb"))?;
        let per = model.input_shape().numel();
        let n = dims.first().copied().unwrap_or(1);
        if n * per != x.len() {
            return Err(format!("input {dims:?} does not match the model input N x {}", model.input_shape()));
        }
        let y = forward(
            &model,
            &Activation {
                n,
                shape: model.input_shape(),
                data: x,
            },
        )
        .map_err(|e| format!("forward: {e}"))?;
        let (edims, want) = read_tensor(&set.join("output_0.pb"))?;
        if want.len() != y.data.len() {
            return Err(format!("output has {} values, expected {} ({edims:?})", y.data.len(), want.len()));
        }
        for (i, (a, b)) in y.data.iter().zip(&want).enumerate() {
            let ok = (a - b).abs() <= ATOL + RTOL * b.abs() || (a.is_nan() && b.is_nan()) || a == b;
            if !ok {
                return Err(format!(
                    "{}: value {i}: got {a}, expected {b}",
                    set.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    Ok(())
}

fn short(e: &str) -> String {
    let line = e.lines().take(3).collect::<Vec<_>>().join(" | ");
    if line.len() > 220 {
        format!("{}...", &line[..line.char_indices().nth(217).map_or(line.len(), |c| c.0)])
    } else {
        line
    }
}

#[test]
fn onnx_backend_conformance() {
    let Some(root) = penni_testkit::onnx_testdata() else { return };
    assert!(root.join("node").is_dir(), "{} has no node/ folder", root.display());
    let manifest_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/manifest.txt");
    let manifest: BTreeSet<String> = std::fs::read_to_string(&manifest_path)
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let verbose = std::env::var_os("PENNI_ONNX_VERBOSE").is_some();
    let (mut tried, mut passed) = (0, 0);
    let mut broken = Vec::new();
    let mut newly = Vec::new();
    let mut panics = Vec::new();
    let mut seen = BTreeSet::new();
    for suite in SUITES {
        let Ok(rd) = std::fs::read_dir(root.join(suite)) else {
            continue;
        };
        let mut cases: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("model.onnx").is_file())
            .collect();
        cases.sort();
        for dir in cases {
            let id = format!("{suite}/{}", dir.file_name().unwrap().to_string_lossy());
            seen.insert(id.clone());
            tried += 1;
            let result = match catch_unwind(AssertUnwindSafe(|| run_case(&dir))) {
                Ok(r) => r,
                Err(_) => {
                    panics.push(id.clone());
                    Err("PANIC".into())
                }
            };
            let listed = manifest.contains(&id);
            match &result {
                Ok(()) => {
                    passed += 1;
                    if !listed {
                        newly.push(id.clone());
                    }
                }
                Err(e) if listed => broken.push(format!("{id}: {}", short(e))),
                Err(e) if verbose => eprintln!("  fail {id}: {}", short(e)),
                Err(_) => {}
            }
        }
    }
    // The light/ zoo models (weights made by ConstantOfShape): structural import only.
    let mut light: Vec<PathBuf> = std::fs::read_dir(root.join("light"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
                .collect()
        })
        .unwrap_or_default();
    light.sort();
    eprintln!("light models (structural import):");
    for p in &light {
        let id = format!("light/{}", p.file_stem().unwrap().to_string_lossy());
        seen.insert(id.clone());
        let r = catch_unwind(AssertUnwindSafe(|| penni_onnx::import_file(p)));
        let outcome = match r {
            Err(_) => {
                panics.push(id.clone());
                "PANIC".to_string()
            }
            Ok(Ok(m)) => format!("imported ({} IR nodes)", m.nodes.len()),
            Ok(Err(penni_onnx::OnnxError::UnsupportedModel { issues, .. })) => {
                let mut ops: Vec<&str> = issues
                    .iter()
                    .filter(|i| i.message.starts_with("operator "))
                    .map(|i| i.op.as_str())
                    .collect();
                ops.sort();
                ops.dedup();
                format!("rejected: {} issue(s), unsupported operators: {}", issues.len(), ops.join(", "))
            }
            Ok(Err(e)) => format!("rejected: {}", short(&e.to_string())),
        };
        let listed = manifest.contains(&id);
        if listed && !outcome.starts_with("imported") {
            broken.push(format!("{id}: {outcome}"));
        }
        eprintln!("  {id}: {outcome}");
    }
    let missing: Vec<&String> = manifest.iter().filter(|m| !seen.contains(*m)).collect();
    eprintln!(
        "conformance: {passed} of {tried} backend cases pass ({} listed in the manifest)",
        manifest.len()
    );
    if !newly.is_empty() {
        eprintln!("{} case(s) outside the manifest now pass:", newly.len());
        for n in &newly {
            eprintln!("  {n}");
        }
    }
    assert!(panics.is_empty(), "the importer or the reference panicked on: {panics:?}");
    assert!(missing.is_empty(), "manifest entries with no test data: {missing:?}");
    assert!(broken.is_empty(), "{} manifest case(s) fail:\n{}", broken.len(), broken.join("\n"));
}
