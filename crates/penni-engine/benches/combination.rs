//! The combination stage's two layouts, CSR and rows packed in pairs (`ops/decomposed/packed`),
//! on the real layers of the trained PENNI models in `experiments/fidelity` (ResNet-20, VGG-16
//! and ResNet-18, their own coefficients, bases and map sizes), batch 1 and 16, in MAC/s of the
//! layer's useful multiply-accumulates (the same count for both layouts, so the rates compare).
//! Each layer runs alone, under the dataflow the planner picks for it; layers without a
//! combination stage (mix-first, rebuilt dense) are skipped.
//!
//! Each case also prints its step (terms `nnz`, packed slots `packed2xS`) and which layout the
//! planner's rule (`cost::packing_pays`) picks by itself; `experiments/engine-bench/
//! combination.sh` runs this bench and tabulates both.
//!
//! One synthetic stand-in shows what packing does where it pays: a real VGG-16 layer whose
//! odd output channels are given the zero pattern of the even channel before them (fill 1, as
//! pair-structured pruning would give), labelled `paired-stand-in`. It is not a result.
//!
//!     cargo bench -p penni-engine --bench combination -- --quick
//!     cargo bench -p penni-engine --bench combination -- vgg16/features.8     (a filter)
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use penni_engine::{EngineOptions, Plan};
use penni_model::zoo::GraphBuilder;
use penni_model::{Input, Model, Node, Op, Shape};

const MODELS: &[&str] = &["resnet20", "vgg16", "resnet18"];

/// The decomposed convs of `model` as one-layer models named after them.
fn layers(model: &Model) -> Vec<(String, Model)> {
    let shapes = model.infer_shapes().unwrap();
    model
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::DecomposedConv2d(_)))
        .map(|n| (n.name.trim_end_matches(".conv").to_string(), alone(n, &shapes[&n.inputs[0]])))
        .collect()
}

fn alone(n: &Node, input: &Shape) -> Model {
    let Shape::Map { c, h, w } = *input else {
        panic!("'{}' reads a vector", n.name)
    };
    let mut b = GraphBuilder::new(
        "layer",
        Input {
            name: "x".into(),
            channels: c,
            height: h,
            width: w,
        },
        1,
    );
    let y = b.push("conv", n.op.clone(), &["x"], n.params.clone());
    b.finish(&y).unwrap()
}

/// `m` with every odd output channel's coefficients zero where the even one's are (and the
/// even one's kept where the odd one's are zero, with a small value): pairs of equal patterns.
fn paired(m: &Model) -> Model {
    let mut m = m.clone();
    let node = m.nodes.iter_mut().find(|n| n.name == "conv").unwrap();
    let Op::DecomposedConv2d(c) = &node.op else { unreachable!() };
    let per_out = c.conv.in_channels / c.conv.groups * c.num_bases;
    let a = &mut node.params.get_mut("coefficients").unwrap().data;
    for pair in a.chunks_mut(2 * per_out) {
        if pair.len() < 2 * per_out {
            break;
        }
        let (even, odd) = pair.split_at_mut(per_out);
        for (e, o) in even.iter().zip(odd.iter_mut()) {
            *o = if *e == 0.0 {
                0.0
            } else if *o == 0.0 {
                0.01 * e
            } else {
                *o
            };
        }
    }
    m
}

fn bench_combination(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/fidelity");
    let threads = std::env::var("PENNI_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut cases: Vec<(String, Model)> = Vec::new();
    for name in MODELS {
        let model = penni_model::io::load(&root.join(name).join("penni.penni")).unwrap();
        for (layer, m) in layers(&model) {
            if name == &"vgg16" && layer == "features.6" {
                cases.push(("vgg16/features.6-paired-stand-in".into(), paired(&m)));
            }
            cases.push((format!("{name}/{layer}"), m));
        }
    }
    for (name, model) in &cases {
        let mut group = c.benchmark_group(name.as_str());
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(400));
        for batch in [1usize, 16] {
            let opts = EngineOptions {
                threads,
                ..Default::default()
            };
            let plans: Vec<(&str, Plan)> = [("csr", false), ("packed", true)]
                .into_iter()
                .map(|(label, packed)| {
                    (
                        label,
                        penni_engine::testing::plan_packed(model, batch, &opts, packed, false).unwrap(),
                    )
                })
                .collect();
            let Some(packed) = plans[1].1.describe().into_iter().find(|d| d.contains(" packed2x")) else {
                continue; // no combination stage here
            };
            // what the planner's rule picks by itself, for combination.sh's table
            let auto = Plan::new(model, batch, &opts)
                .unwrap()
                .describe()
                .iter()
                .any(|d| d.contains(" packed2x"));
            eprintln!("layer {name} b{batch}: {packed} | auto {}", if auto { "packed" } else { "csr" });
            let x = common::input(model, batch, 5);
            group.throughput(Throughput::Elements(plans[0].1.macs()));
            for (label, mut plan) in plans {
                group.bench_with_input(BenchmarkId::new(label, format!("b{batch}")), &x, |bch, x| {
                    bch.iter_custom(|iters| common::conv_step_time(&mut plan, x, iters))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_combination);
criterion_main!(benches);
