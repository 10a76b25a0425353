//! Tucker-2 decomposition on whole models: exact at full ranks, three plain convs per layer that
//! every other part of penni reads, fewer MACs at lower ranks, and shrinking stays exact.

mod common;

use common::*;
use penni_compress::{CompressError, Ranks, TuckerOptions, shrink, tucker_decompose};
use penni_model::{Op, model_cost};

fn full_ranks() -> TuckerOptions {
    TuckerOptions {
        rank_fraction: 1.0,
        only_if_cheaper: false,
        ..Default::default()
    }
}

#[test]
fn at_full_ranks_the_outputs_equal_the_original() {
    for name in ["resnet20", "vgg16", "resnet18"] {
        let mut m = zoo(name, if name == "vgg16" { 32 } else { 16 }, 3);
        randomize_batchnorm(&mut m, 4);
        let (t, report) = tucker_decompose(&m, &full_ranks()).unwrap();
        let convs = m
            .nodes
            .iter()
            .filter(|n| matches!(&n.op, Op::Conv2d(c) if c.kernel[0] * c.kernel[1] > 1))
            .count();
        assert_eq!(report.layers.len(), convs, "{name}");
        assert_eq!(t.nodes.len(), m.nodes.len() + 2 * convs, "{name}");
        assert!(report.layers.iter().all(|l| l.relative_error < 1e-5), "{name}");
        assert_same_outputs(&m, &t, 1e-5, name);
        // the original names and output tensors are kept for whatever reads them
        for n in &m.nodes {
            assert_eq!(t.node(&n.name).unwrap().output, n.output);
        }
    }
}

/// The engine runs a narrow Tucker-2 model on its planar backend (the factors' few channels would
/// waste most lanes of the channel-blocked one) with every 1x1 -> k x k -> 1x1 chain as one step,
/// and matches the reference forward pass on both backends.
#[test]
fn the_engine_runs_each_tucker_conv_as_one_fused_step() {
    let quarter = TuckerOptions {
        rank_fraction: 0.25,
        ..Default::default()
    };
    for name in ["resnet20", "vgg16"] {
        let mut m = zoo(name, if name == "vgg16" { 32 } else { 16 }, 3);
        randomize_batchnorm(&mut m, 4);
        let (t, report) = tucker_decompose(&m, &quarter).unwrap();
        for batch in [1, 3] {
            let opts = penni_engine::EngineOptions {
                threads: 2,
                ..Default::default()
            };
            let x = penni_engine::pseudo_random_input(t.input_shape().numel() * batch, 9);
            let act = penni_model::reference::Activation {
                n: batch,
                shape: t.input_shape(),
                data: x.clone(),
            };
            let want = penni_model::reference::forward(&t, &act).unwrap().data;
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let plans = [
                (penni_engine::Plan::new(&t, batch, &opts).unwrap(), "chosen"),
                (penni_engine::testing::plan_backend(&t, batch, &opts, true, None).unwrap(), "planar"),
                (
                    penni_engine::testing::plan_backend(&t, batch, &opts, false, None).unwrap(),
                    "blocked",
                ),
            ];
            for (mut plan, backend) in plans {
                let chains = plan.describe().iter().filter(|d| d.contains("tucker chain")).count();
                if backend == "planar" || (backend == "chosen" && name == "resnet20") {
                    assert_eq!(chains, report.layers.len(), "{name} {backend}: {:#?}", plan.describe());
                }
                let got = plan.run(&x).unwrap();
                let err = got.iter().zip(&want).fold(0f32, |a, (g, w)| a.max((g - w).abs()));
                assert!(err <= 1e-4 * scale, "{name} batch {batch} {backend}: error {err} of {scale}");
            }
        }
    }
}

#[test]
fn lower_ranks_cost_fewer_macs_and_say_how_far_they_are() {
    let m = zoo("resnet20", 16, 5);
    let half = TuckerOptions::default();
    let (t, report) = tucker_decompose(&m, &half).unwrap();
    let macs = |m: &penni_model::Model| model_cost(m).unwrap().totals.macs_paper;
    assert!(macs(&t) < macs(&m), "{} >= {}", macs(&t), macs(&m));
    assert!(!report.layers.is_empty());
    for l in &report.layers {
        assert_eq!(l.ranks.r_in, l.in_channels.div_ceil(2));
        assert!(l.relative_error > 0.0 && l.relative_error < 1.0, "{l:?}");
    }
    // narrow layers where three convs cost more stay dense, with the reason
    assert!(
        report.kept_dense.iter().all(|(_, why)| why.contains("MACs")),
        "{:?}",
        report.kept_dense
    );
    // per-layer ranks
    let first = report.layers[0].node.clone();
    let mut opts = TuckerOptions::default();
    opts.per_layer.insert(first.clone(), Ranks { r_in: 1, r_out: 2 });
    let (t2, r2) = tucker_decompose(&m, &opts).unwrap();
    assert_eq!(
        r2.layers.iter().find(|l| l.node == first).unwrap().ranks,
        Ranks { r_in: 1, r_out: 2 }
    );
    assert_eq!(
        t2.node(&format!("{first}.tucker_core")).unwrap().params["weight"].shape[..2],
        [2, 1]
    );
    // bad requests
    for (name, ranks) in [
        ("nope", Ranks { r_in: 1, r_out: 1 }),
        ("fc", Ranks { r_in: 1, r_out: 1 }),
        (first.as_str(), Ranks { r_in: 0, r_out: 1 }),
    ] {
        let mut o = TuckerOptions::default();
        o.per_layer.insert(name.to_string(), ranks);
        assert!(matches!(tucker_decompose(&m, &o), Err(CompressError::Invalid(_))), "{name}");
    }
    let bad = TuckerOptions {
        rank_fraction: 0.0,
        ..Default::default()
    };
    assert!(matches!(tucker_decompose(&m, &bad), Err(CompressError::Invalid(_))));
}

#[test]
fn shrinking_removes_dead_factor_channels_exactly() {
    let mut m = zoo("resnet20", 16, 9);
    randomize_batchnorm(&mut m, 10);
    let (mut t, report) = tucker_decompose(&m, &full_ranks()).unwrap();
    // kill one core output channel of one layer: the last 1x1 no longer reads it
    let layer = &report.layers[3].node;
    zero_slice(&mut t, &format!("{layer}.tucker_core"), Some(0), None);
    let (s, sr) = shrink(&t).unwrap();
    assert!(sr.removed_channels >= 1, "{sr:?}");
    assert_same_outputs(&t, &s, 1e-5, "shrunk tucker model");
}
