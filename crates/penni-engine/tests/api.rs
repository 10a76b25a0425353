//! The public API's contracts: errors instead of panics on bad input, identical results for
//! any thread count, the portable kernels, profiling and benchmarking.
mod common;
use std::collections::BTreeMap;

use common::*;
use penni_engine::{EngineError, EngineOptions, Plan, Strategy, bench};
use penni_model::zoo::GraphBuilder;
use penni_model::{Conv2d, Input, Op, Shape, Tensor};

fn small_penni() -> penni_model::Model {
    let mut m = zoo("resnet20", 0.25, 16, 2);
    randomize_bn(&mut m, 4);
    decompose(&mut m, 5, 0.9, 6);
    m
}

#[test]
fn wrong_input_length_is_an_error() {
    let m = zoo("resnet20", 0.25, 8, 1);
    let mut plan = Plan::new(&m, 2, &EngineOptions::default()).unwrap();
    for len in [0, 3 * 8 * 8, 2 * 3 * 8 * 8 + 1] {
        match plan.run(&vec![0.0; len]) {
            Err(EngineError::InputLength { got, expected, .. }) => assert_eq!((got, expected), (len, 2 * 3 * 64)),
            other => panic!("expected an input length error, got {other:?}"),
        }
    }
    assert!(plan.profile(&[1.0], 1).is_err());
    assert_eq!(plan.run(&vec![0.0; 2 * 3 * 64]).unwrap().len(), 20);
}

#[test]
fn bad_options_and_models_are_errors() {
    let m = zoo("resnet20", 0.25, 8, 1);
    assert!(matches!(Plan::new(&m, 0, &EngineOptions::default()), Err(EngineError::Options(_))));
    assert!(matches!(
        Plan::new(
            &m,
            1,
            &EngineOptions {
                threads: 100_000,
                ..Default::default()
            }
        ),
        Err(EngineError::Options(_))
    ));
    // an invalid graph (channel mismatch) is reported, not run
    let mut bad = m.clone();
    if let Op::Conv2d(c) = &mut bad.nodes[0].op {
        c.in_channels = 4;
    }
    assert!(matches!(Plan::new(&bad, 1, &EngineOptions::default()), Err(EngineError::Model(_))));
    // a missing parameter
    let mut bad = m.clone();
    bad.nodes[0].params.remove("weight");
    assert!(Plan::new(&bad, 1, &EngineOptions::default()).is_err());
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // layers large enough to be shared between threads (tiny steps run on one thread)
    let mut m = zoo("resnet20", 1.0, 16, 2);
    randomize_bn(&mut m, 4);
    decompose(&mut m, 5, 0.9, 6);
    let dense = zoo("resnet18", 0.5, 16, 3);
    for model in [&m, &dense] {
        for strategy in [Strategy::Auto, Strategy::BasisFirst, Strategy::MixFirst] {
            let x = input(model, 5, 8);
            let mut outs = Vec::new();
            for threads in [1, 2, 3, 4] {
                let mut plan = Plan::new(
                    model,
                    5,
                    &EngineOptions {
                        threads,
                        decomposed_strategy: strategy,
                        ..Default::default()
                    },
                )
                .unwrap();
                outs.push(plan.run(&x).unwrap().to_vec());
            }
            for o in &outs[1..] {
                assert!(
                    rel_err(o, &outs[0]) <= 1e-5,
                    "{} {strategy:?}: {:e}",
                    model.name,
                    rel_err(o, &outs[0])
                );
            }
        }
    }
}

#[test]
fn batch_parallel_lanes_match_shared_layers() {
    // threads running separate micro-batches must give what one thread gives
    let mut m = zoo("resnet20", 0.5, 16, 2);
    randomize_bn(&mut m, 4);
    decompose(&mut m, 5, 0.9, 6);
    let x = input(&m, 12, 8);
    let mut one = Plan::new(
        &m,
        12,
        &EngineOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let want = one.run(&x).unwrap().to_vec();
    for threads in [2, 3, 5] {
        for (micro, lanes) in [(1, true), (2, true), (3, true), (4, false), (12, true)] {
            let opts = EngineOptions {
                threads,
                ..Default::default()
            };
            let mut plan = penni_engine::testing::plan_lanes(&m, 12, &opts, micro, lanes).unwrap();
            assert_eq!(plan.batch_parallel(), lanes && micro < 12, "threads {threads} micro {micro}");
            let err = rel_err(plan.run(&x).unwrap(), &want);
            assert!(err <= 1e-5, "threads {threads} micro {micro} lanes {lanes}: {err:e}");
            // and again: lanes keep no state between runs
            assert!(rel_err(plan.run(&x).unwrap(), &want) <= 1e-5);
        }
    }
    // a large batch of a small model runs batch-parallel by default
    let plan = Plan::new(
        &m,
        64,
        &EngineOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(plan.batch_parallel() && plan.micro_batch() <= 32);
    let plan = Plan::new(
        &m,
        1,
        &EngineOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!plan.batch_parallel());
}

#[test]
fn portable_kernels_match_the_reference() {
    for m in [zoo("resnet20", 0.25, 16, 5), small_penni()] {
        let x = input(&m, 2, 1);
        let r = reference(&m, 2, &x);
        for planar in [false, true] {
            let mut plan = penni_engine::testing::plan_backend_fallback(&m, 2, &EngineOptions::default(), planar).unwrap();
            assert!(rel_err(plan.run(&x).unwrap(), &r) < 1e-4);
        }
        let mut plan = penni_engine::testing::plan_fallback(&m, 2, &EngineOptions::default()).unwrap();
        assert!(rel_err(plan.run(&x).unwrap(), &r) < 1e-4);
    }
}

#[test]
fn repeated_runs_give_the_same_output() {
    let m = small_penni();
    let mut plan = Plan::new(&m, 3, &EngineOptions::default()).unwrap();
    let (a, b) = (input(&m, 3, 1), input(&m, 3, 2));
    let ya = plan.run(&a).unwrap().to_vec();
    let yb = plan.run(&b).unwrap().to_vec();
    assert_ne!(ya, yb);
    assert_eq!(plan.run(&a).unwrap(), &ya[..]);
}

#[test]
fn shapes_memory_and_profile_are_reported() {
    let m = small_penni();
    let mut plan = Plan::new(
        &m,
        4,
        &EngineOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(plan.output_shape(), Shape::Vector(10));
    assert_eq!(plan.batch(), 4);
    assert!(plan.arena_peak_bytes() > 0 && plan.weight_bytes() > 0);
    let t = plan.profile(&input(&m, 4, 1), 3).unwrap();
    assert!(
        t.iter()
            .any(|l| l.name.contains("layer1.0.2.conv") && l.name.contains("add") && l.macs > 0)
    );
    assert!(t.iter().all(|l| !l.kind.is_empty()));
    // liveness: the arena is smaller than every buffer side by side
    let one = Plan::new(
        &m,
        1,
        &EngineOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let all: usize = 16 * 4 * (3 * 16 * 16 + 4 * 16 * 16 * 20);
    assert!(one.arena_peak_bytes() < all, "{}", one.arena_peak_bytes());
    let opts = EngineOptions {
        threads: 1,
        ..Default::default()
    };
    let r = bench(&m, 2, &opts, 1, 3).unwrap();
    assert_eq!((r.batch, r.threads, r.reps), (2, 1, 3));
    assert!(r.median_ms > 0.0 && r.p90_ms >= r.median_ms && r.throughput_ips > 0.0);
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("median_ms"));
}

/// A map-shaped model output comes back in NCHW order; a model whose output is its input too.
#[test]
fn map_outputs_are_nchw() {
    let mut b = GraphBuilder::new(
        "id",
        Input {
            name: "x".into(),
            channels: 3,
            height: 4,
            width: 5,
        },
        1,
    );
    let spec = Conv2d {
        in_channels: 3,
        out_channels: 3,
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0; 4],
        dilation: [1, 1],
        groups: 3,
        bias: false,
    };
    let w = Tensor::new(vec![3, 1, 1, 1], vec![1.0; 3]).unwrap();
    let y = b.push("conv", Op::Conv2d(spec), &["x"], BTreeMap::from([("weight".into(), w)]));
    let m = b.finish(&y).unwrap();
    let x: Vec<f32> = (0..2 * 60).map(|i| i as f32).collect();
    for planar in [false, true] {
        let mut plan = penni_engine::testing::plan_backend(&m, 2, &EngineOptions::default(), planar, None).unwrap();
        assert_eq!(plan.run(&x).unwrap(), &x[..]);
    }
    let mut id = m.clone();
    id.nodes.clear();
    id.output = "x".into();
    let mut plan = Plan::new(&id, 2, &EngineOptions::default()).unwrap();
    assert_eq!(plan.run(&x).unwrap(), &x[..]);
}

#[test]
fn micro_batches_match_the_reference() {
    for m in [small_penni(), zoo("resnet20", 0.25, 16, 7)] {
        let x = input(&m, 6, 3);
        let r = reference(&m, 6, &x);
        for micro in [1, 2, 3, 6] {
            let mut plan = penni_engine::testing::plan_micro(&m, 6, &EngineOptions::default(), micro).unwrap();
            assert_eq!(plan.micro_batch(), micro);
            assert!(rel_err(plan.run(&x).unwrap(), &r) < 1e-4);
            let t = plan.profile(&x, 2).unwrap();
            assert_eq!(t.iter().map(|l| l.macs).sum::<u64>(), plan.macs());
        }
    }
}

#[test]
fn a_plan_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Plan>();
    let m = small_penni();
    let mut plan = Plan::new(&m, 1, &EngineOptions::default()).unwrap();
    let x = input(&m, 1, 1);
    let y = std::thread::spawn(move || plan.run(&x).unwrap().to_vec()).join().unwrap();
    assert_eq!(y.len(), 10);
}

/// Appends a softmax (or log-softmax) node that reads the model's output and becomes it.
fn with_softmax(mut m: penni_model::Model, log: bool) -> penni_model::Model {
    let node = penni_model::Node {
        name: "prob".into(),
        op: Op::Softmax { log },
        inputs: vec![m.output.clone()],
        output: "prob".into(),
        params: BTreeMap::new(),
    };
    m.nodes.push(node);
    m.output = "prob".into();
    m.validate().unwrap();
    m
}

/// A classifier ending in softmax gives probabilities (rows sum to 1), on both backends and in
/// micro-batches; log-softmax gives their logarithms.
#[test]
fn softmax_outputs_match_the_reference() {
    let base = small_penni();
    let x = input(&base, 5, 8);
    let logits = reference(&base, 5, &x);
    for log in [false, true] {
        let m = with_softmax(base.clone(), log);
        let r = reference(&m, 5, &x);
        for planar in [false, true] {
            let mut plan = penni_engine::testing::plan_backend(&m, 5, &EngineOptions::default(), planar, None).unwrap();
            let y = plan.run(&x).unwrap().to_vec();
            assert!(rel_err(&y, &r) < 1e-5, "log {log} planar {planar}");
            assert_eq!(y.len(), logits.len());
            for (row, z) in y.chunks(10).zip(logits.chunks(10)) {
                let p: Vec<f32> = if log { row.iter().map(|v| v.exp()).collect() } else { row.to_vec() };
                assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
                assert_eq!(argmax(&p), argmax(z));
            }
        }
        let mut plan = penni_engine::testing::plan_micro(&m, 5, &EngineOptions::default(), 2).unwrap();
        assert!(rel_err(plan.run(&x).unwrap(), &r) < 1e-5);
    }
}

/// A softmax over the channels of a feature map: per pixel, as the model output or before a
/// flatten; anything else reading it is refused with a clear error, not a wrong answer.
#[test]
fn softmax_over_feature_maps() {
    // conv -> softmax, then "" (the softmax is the output), "linear" (flatten, linear) or "conv"
    let build = |tail: &str| {
        let input = Input {
            name: "x".into(),
            channels: 3,
            height: 6,
            width: 5,
        };
        let mut b = GraphBuilder::new("seg", input, 4);
        let c = b.conv("conv", "x", 7, 3, 1, 1, true);
        let s = b.softmax("softmax", &c, false);
        let out = match tail {
            "linear" => {
                let f = b.flatten("flatten", &s);
                b.linear("fc", &f, 4)
            }
            "conv" => b.conv("conv2", &s, 2, 3, 1, 1, true),
            _ => s,
        };
        b.finish(&out).unwrap()
    };
    for m in [build(""), build("linear")] {
        let x = input(&m, 3, 2);
        let r = reference(&m, 3, &x);
        for planar in [false, true] {
            let mut plan = penni_engine::testing::plan_backend(&m, 3, &EngineOptions::default(), planar, None).unwrap();
            assert!(
                rel_err(plan.run(&x).unwrap(), &r) < 1e-5,
                "{} nodes, planar {planar}",
                m.nodes.len()
            );
        }
    }
    match Plan::new(&build("conv"), 1, &EngineOptions::default()) {
        Err(EngineError::Unsupported { node, message }) => {
            assert_eq!(node, "softmax");
            assert!(message.contains("conv2"), "{message}");
        }
        other => panic!("expected an unsupported-model error, got {:?}", other.map(|_| ())),
    }
}
