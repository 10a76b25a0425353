mod common;

use std::collections::BTreeMap;

use common::*;
use penni_compress::decompose::factorize;
use penni_compress::{CompressError, DecomposeOptions, Init, PruneOptions, decompose, gradual_zeros, prune, prune_to_zeros, shrink};
use penni_model::zoo::{GraphBuilder, InitRng};
use penni_model::{Conv2d, Input, Model, Op, Tensor};

/// A model with the awkward cases: biased first conv, a grouped conv, a non-square dilated
/// kernel with asymmetric padding, a 1x1 conv and a linear layer.
fn awkward_model() -> Model {
    let mut b = GraphBuilder::new(
        "awkward",
        Input {
            name: "input".into(),
            channels: 3,
            height: 9,
            width: 9,
        },
        21,
    );
    let x = b.conv("first", "input", 8, 3, 1, 1, true);
    let mut rng = InitRng::new(5);
    let mut w = |n: usize| Tensor {
        shape: vec![n],
        data: (0..n).map(|_| rng.normal() * 0.3).collect(),
    };
    let mut params = BTreeMap::new();
    params.insert("weight".to_string(), {
        let t = w(8 * 2 * 9);
        Tensor {
            shape: vec![8, 2, 3, 3],
            data: t.data,
        }
    });
    params.insert("bias".to_string(), w(8));
    let g = Conv2d {
        in_channels: 8,
        out_channels: 8,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 4,
        bias: true,
    };
    let x = b.push("grouped", Op::Conv2d(g), &[&x], params);
    let mut params = BTreeMap::new();
    params.insert("weight".to_string(), {
        let t = w(6 * 8 * 3);
        Tensor {
            shape: vec![6, 8, 3, 1],
            data: t.data,
        }
    });
    let r = Conv2d {
        in_channels: 8,
        out_channels: 6,
        kernel: [3, 1],
        stride: [2, 1],
        padding: [2, 0, 1, 0],
        dilation: [2, 1],
        groups: 1,
        bias: false,
    };
    let x = b.push("tall", Op::Conv2d(r), &[&x], params);
    let x = b.relu("relu", &x);
    let x = b.conv("pointwise", &x, 4, 1, 1, 0, false);
    let p = b.global_avg_pool("pool", &x);
    let f = b.flatten("flatten", &p);
    let y = b.linear("fc", &f, 3);
    let mut m = b.finish(&y).unwrap();
    // the builder initialises biases to zero; make the first one matter
    m.node_mut("first")
        .unwrap()
        .params
        .get_mut("bias")
        .unwrap()
        .data
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = 0.1 * i as f32 - 0.3);
    m
}

#[test]
fn full_rank_svd_decomposition_computes_the_same_outputs() {
    for m in [awkward_model(), zoo("resnet20", 16, 4), zoo("vgg16", 32, 5)] {
        let (d, report) = decompose(
            &m,
            &DecomposeOptions {
                d: 9,
                only_if_cheaper: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert_same_outputs(&m, &d, 1e-4, &m.name);
        for l in &report.layers {
            assert!(l.relative_error < 1e-6, "{}: {}", l.node, l.relative_error);
            assert_eq!(l.d, l.kernel[0] * l.kernel[1], "d clamped to k*k");
        }
    }
}

#[test]
fn decompose_covers_every_kxk_conv_and_leaves_1x1_and_linear_alone() {
    let m = awkward_model();
    let all = DecomposeOptions {
        only_if_cheaper: false,
        ..Default::default()
    };
    let (d, report) = decompose(&m, &all).unwrap();
    let names: Vec<&str> = report.layers.iter().map(|l| l.node.as_str()).collect();
    assert_eq!(names, ["first", "grouped", "tall"]);
    let first = d.node("first").unwrap();
    match &first.op {
        Op::DecomposedConv2d(c) => assert!(c.conv.bias && c.num_bases == 5),
        other => panic!("{other:?}"),
    }
    assert_eq!(first.params["bias"], m.node("first").unwrap().params["bias"], "bias kept");
    let grouped = d.node("grouped").unwrap();
    assert_eq!(grouped.params["coefficients"].shape, vec![8 * 2, 5], "rows are n*(C/groups)+c");
    assert_eq!(d.node("tall").unwrap().params["bases"].shape, vec![3, 3], "d clamped to kh*kw = 3");
    assert_eq!(d.node("pointwise").unwrap(), m.node("pointwise").unwrap());
    assert_eq!(d.node("fc").unwrap(), m.node("fc").unwrap());
    // decomposing again changes nothing (decomposed layers are left alone)
    let (again, r2) = decompose(&d, &all).unwrap();
    assert_eq!(again, d);
    assert!(r2.layers.is_empty());
}

/// PENNI's basis stage convolves every input channel with d bases (C*d*k*k MACs per pixel): for
/// a conv with d*groups >= N outputs (a depthwise conv) that alone costs as much as the dense
/// conv, so such convs stay dense unless named in the per-layer settings.
#[test]
fn convs_that_decomposition_would_make_dearer_stay_dense() {
    let mut b = GraphBuilder::new(
        "mobile",
        Input {
            name: "input".into(),
            channels: 3,
            height: 8,
            width: 8,
        },
        3,
    );
    let x = b.conv("stem", "input", 16, 3, 1, 1, false);
    let mut rng = InitRng::new(4);
    let dw = Conv2d {
        in_channels: 16,
        out_channels: 16,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 16,
        bias: false,
    };
    let w = Tensor {
        shape: vec![16, 1, 3, 3],
        data: (0..144).map(|_| rng.normal() * 0.3).collect(),
    };
    let x = b.push("depthwise", Op::Conv2d(dw), &[&x], BTreeMap::from([("weight".to_string(), w)]));
    let x = b.conv("narrow", &x, 4, 3, 1, 1, false);
    let p = b.global_avg_pool("pool", &x);
    let f = b.flatten("flatten", &p);
    let y = b.linear("fc", &f, 3);
    let m = b.finish(&y).unwrap();
    let (d, report) = decompose(&m, &DecomposeOptions::default()).unwrap();
    assert_eq!(report.layers.iter().map(|l| l.node.as_str()).collect::<Vec<_>>(), ["stem"]);
    assert_eq!(report.kept_dense, ["depthwise", "narrow"]);
    assert_eq!(d.node("depthwise").unwrap(), m.node("depthwise").unwrap());
    let cost = |m: &Model| penni_model::cost::model_cost(m).unwrap().totals.macs_paper;
    assert!(cost(&d) < cost(&m), "decomposition never adds work: {} -> {}", cost(&m), cost(&d));
    // named in the per-layer settings: decomposed as asked
    let per_layer = BTreeMap::from([("depthwise".to_string(), 2)]);
    let (d, report) = decompose(
        &m,
        &DecomposeOptions {
            per_layer,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(d.node("depthwise").unwrap().op, Op::DecomposedConv2d(_)));
    assert_eq!(report.kept_dense, ["narrow"]);
}

#[test]
fn per_layer_d_overrides_and_bad_names_are_errors() {
    let m = zoo("resnet20", 8, 6);
    let mut per_layer = BTreeMap::new();
    per_layer.insert("stem.conv".to_string(), 2);
    per_layer.insert("layer1.0.1.conv".to_string(), 20);
    let opts = DecomposeOptions {
        d: 4,
        per_layer,
        init: Init::Svd,
        only_if_cheaper: false,
        only: None,
    };
    let (d, report) = decompose(&m, &opts).unwrap();
    let bases = |n: &str| d.node(n).unwrap().params["bases"].shape[0];
    assert_eq!((bases("stem.conv"), bases("layer1.0.1.conv"), bases("layer1.0.2.conv")), (2, 9, 4));
    assert_eq!(report.layers.len(), 19);

    let mut bad = BTreeMap::new();
    bad.insert("no.such.layer".to_string(), 3);
    bad.insert("layer2.0.shortcut.conv".to_string(), 3); // a 1x1 conv
    bad.insert("stem.conv".to_string(), 0);
    let err = decompose(
        &m,
        &DecomposeOptions {
            d: 4,
            per_layer: bad,
            init: Init::Svd,
            ..Default::default()
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    for part in ["no.such.layer", "layer2.0.shortcut.conv", "stem.conv"] {
        assert!(msg.contains(part), "error names {part}: {msg}");
    }
    assert!(matches!(
        decompose(
            &m,
            &DecomposeOptions {
                d: 0,
                ..Default::default()
            }
        ),
        Err(CompressError::Invalid(_))
    ));
}

#[test]
fn svd_is_the_best_rank_d_fit_and_pca_drops_the_mean() {
    let mut rng = InitRng::new(9);
    let (rows, kk, d) = (64, 9, 3);
    // kernels with a common mean, as trained kernels tend to have
    let m: Vec<f32> = (0..rows * kk).map(|i| rng.normal() + if i % kk == 4 { 2.0 } else { 0.0 }).collect();
    let svd = factorize(&m, rows, kk, d, Init::Svd).unwrap();
    let pca = factorize(&m, rows, kk, d, Init::Pca).unwrap();
    assert!(
        factorize(&m, rows + 1, kk, d, Init::Svd).is_err(),
        "a wrong size is an error, not a panic"
    );
    assert!(
        svd.relative_error <= pca.relative_error + 1e-9,
        "svd {} pca {}",
        svd.relative_error,
        pca.relative_error
    );
    assert!(svd.relative_error > 0.0 && svd.relative_error < 1.0);
    // PCA coefficients are projections of centred rows: each column has zero mean
    for j in 0..d {
        let mean: f64 = (0..rows).map(|r| pca.coefficients[r * d + j] as f64).sum::<f64>() / rows as f64;
        assert!(mean.abs() < 1e-5, "column {j} mean {mean}");
    }
    // bases are orthonormal
    for a in 0..d {
        for b in 0..d {
            let dot: f64 = (0..kk).map(|t| svd.bases[a * kk + t] as f64 * svd.bases[b * kk + t] as f64).sum();
            assert!((dot - if a == b { 1.0 } else { 0.0 }).abs() < 1e-6);
        }
    }
    // the SVD error is what the discarded singular values say: ||M||^2 - ||A||^2
    let norm2: f64 = m.iter().map(|v| (*v as f64).powi(2)).sum();
    let kept2: f64 = svd.coefficients.iter().map(|v| (*v as f64).powi(2)).sum();
    assert!((svd.relative_error - ((norm2 - kept2) / norm2).sqrt()).abs() < 1e-5);
}

#[test]
fn pca_decomposition_of_a_zoo_model_reports_larger_errors_than_svd() {
    let m = zoo("resnet20", 8, 7);
    let (_, svd) = decompose(&m, &DecomposeOptions::default()).unwrap();
    let (_, pca) = decompose(
        &m,
        &DecomposeOptions {
            init: Init::Pca,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(svd.layers.len(), pca.layers.len());
    for (s, p) in svd.layers.iter().zip(&pca.layers) {
        assert_eq!(s.node, p.node);
        assert!(
            s.relative_error <= p.relative_error + 1e-6,
            "{}: svd {} pca {}",
            s.node,
            s.relative_error,
            p.relative_error
        );
        assert_eq!(p.init, Init::Pca);
    }
}

/// Zeros |a| < s * population std of the whole tensor, counted independently.
fn expected_zeros(v: &[f32], s: f64) -> usize {
    let n = v.len() as f64;
    let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n;
    let std = (v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    v.iter().filter(|x| (x.abs() as f64) < s * std || **x == 0.0).count()
}

#[test]
fn prune_zeros_coefficients_below_s_standard_deviations_per_layer() {
    let m = zoo("resnet20", 8, 8);
    // width 0.25: the first stage has 4 channels, fewer than d = 5; decompose it all the same
    let (d, _) = decompose(
        &m,
        &DecomposeOptions {
            only_if_cheaper: false,
            ..Default::default()
        },
    )
    .unwrap();
    for s in [1.0f32, 0.5] {
        let (p, report) = prune(&d, &PruneOptions { s, ..Default::default() }).unwrap();
        for l in &report.layers {
            let before = &d.node(&l.node).unwrap().params[&l.param];
            let after = &p.node(&l.node).unwrap().params[&l.param];
            assert_eq!(l.zeros, expected_zeros(&before.data, s as f64), "{}", l.node);
            assert_eq!(after.data.iter().filter(|v| **v == 0.0).count(), l.zeros);
            // survivors are untouched
            assert_eq!(before.data.len(), after.data.len());
            for (a, b) in before.data.iter().zip(&after.data) {
                assert!(*b == 0.0 || a == b);
            }
        }
        let kinds: Vec<&str> = report.layers.iter().map(|l| p.node(&l.node).unwrap().op.kind()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "DecomposedConv2d").count(), 19);
        assert_eq!(kinds.iter().filter(|k| **k == "Conv2d").count(), 2, "the two 1x1 shortcuts");
        assert!(!kinds.contains(&"Linear"), "linear layers are not pruned by default");
        assert!(report.coefficient_sparsity > 0.1 && report.coefficient_sparsity < 0.9);
        assert_eq!(p.node("fc").unwrap(), d.node("fc").unwrap());
    }
}

#[test]
fn prune_options_select_layers_and_reject_bad_thresholds() {
    let m = zoo("resnet20", 8, 8);
    let (p, report) = prune(
        &m,
        &PruneOptions {
            s: 1.0,
            prune_1x1: false,
            prune_linear: true,
            ..Default::default()
        },
    )
    .unwrap();
    let names: Vec<&str> = report.layers.iter().map(|l| l.node.as_str()).collect();
    assert_eq!(names, ["fc"], "an undecomposed model: only the linear layer was asked for");
    assert!(p.node("fc").unwrap().params["weight"].nnz() < m.node("fc").unwrap().params["weight"].nnz());
    for s in [0.0, -1.0, f32::NAN] {
        assert!(matches!(
            prune(&m, &PruneOptions { s, ..Default::default() }),
            Err(CompressError::Invalid(_))
        ));
    }
    // a per-layer threshold overrides s; 0 leaves the layer as it is; a negative one is refused
    let opts = |s: f32| PruneOptions {
        prune_linear: true,
        per_layer: [("fc".to_string(), s)].into(),
        ..Default::default()
    };
    let (kept, _) = prune(&m, &opts(0.0)).unwrap();
    assert_eq!(kept.node("fc").unwrap().params["weight"], m.node("fc").unwrap().params["weight"]);
    let (hard, r) = prune(&m, &opts(2.0)).unwrap();
    assert!(hard.node("fc").unwrap().params["weight"].nnz() < p.node("fc").unwrap().params["weight"].nnz());
    assert!(r.layers.iter().find(|l| l.node == "fc").unwrap().threshold > 0.0);
    assert!(matches!(prune(&m, &opts(-1.0)), Err(CompressError::Invalid(_))));
}

/// Group pruning zeroes a decomposed layer's whole input channel when its coefficients are weak
/// against the layer's mean channel, and then shrinking removes the channel that fed it.
#[test]
fn group_pruning_zeroes_weak_input_channels_for_shrinking() {
    let mut m = zoo("resnet20", 8, 12);
    randomize_batchnorm(&mut m, 13);
    let (mut d, _) = decompose(&m, &DecomposeOptions::default()).unwrap();
    let name = "layer3.0.2.conv";
    let (n, cg, nb) = match &d.node(name).unwrap().op {
        Op::DecomposedConv2d(c) => (c.conv.out_channels, c.conv.channels_per_group(), c.num_bases),
        _ => panic!(),
    };
    let a = &mut d.node_mut(name).unwrap().params.get_mut("coefficients").unwrap().data;
    for o in 0..n {
        for j in 0..nb {
            a[(o * cg + 3) * nb + j] *= 1e-3;
        }
    }
    let opts = PruneOptions {
        group_s: 0.05,
        s: 1e-6,
        ..Default::default()
    };
    let (p, report) = prune(&d, &opts).unwrap();
    let layer = report.layers.iter().find(|l| l.node == name).unwrap();
    assert_eq!(layer.zeroed_input_channels, 1);
    let a = &p.node(name).unwrap().params["coefficients"].data;
    assert!((0..n).all(|o| a[(o * cg + 3) * nb..(o * cg + 4) * nb].iter().all(|v| *v == 0.0)));
    // the other layers' channels are all of similar strength: none zeroed
    assert_eq!(report.layers.iter().map(|l| l.zeroed_input_channels).sum::<usize>(), 1);
    // the producer of that input channel (layer3.0.1) loses it in shrinking
    let (s, _) = shrink(&p).unwrap();
    let out_channels = |m: &Model, n: &str| match &m.node(n).unwrap().op {
        Op::DecomposedConv2d(c) => c.conv.out_channels,
        Op::Conv2d(c) => c.out_channels,
        _ => panic!(),
    };
    assert_eq!(out_channels(&s, "layer3.0.1.conv"), out_channels(&p, "layer3.0.1.conv") - 1);
    assert_same_outputs(&p, &s, 1e-5, "shrunk after group pruning");
    assert!(matches!(
        prune(
            &d,
            &PruneOptions {
                group_s: -1.0,
                ..Default::default()
            }
        ),
        Err(CompressError::Invalid(_))
    ));
}

#[test]
fn gradual_steps_zero_the_smallest_magnitudes_and_keep_earlier_zeros() {
    let m = zoo("resnet20", 8, 41);
    let (d, _) = decompose(
        &m,
        &DecomposeOptions {
            d: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let (full, report) = prune(&d, &PruneOptions::default()).unwrap();
    let zeros = |m: &Model, name: &str| {
        let n = m.node(name).unwrap();
        let t = n.params.get("coefficients").or_else(|| n.params.get("weight")).unwrap();
        t.data.iter().filter(|v| **v == 0.0).count()
    };
    let half = gradual_zeros(&report, 1, 2);
    let step = prune_to_zeros(&d, &half, true, false).unwrap();
    for l in &report.layers {
        assert_eq!(zeros(&step, &l.node), l.zeros_before + (l.zeros - l.zeros_before) / 2, "{}", l.node);
        // by magnitude: every zeroed entry is no larger than every kept one
        let (a, b) = (
            &d.node(&l.node).unwrap().params[&l.param].data,
            &step.node(&l.node).unwrap().params[&l.param].data,
        );
        let cut = a
            .iter()
            .zip(b)
            .filter(|(x, y)| **y == 0.0 && **x != 0.0)
            .fold(0f32, |m, (x, _)| m.max(x.abs()));
        assert!(b.iter().filter(|y| **y != 0.0).all(|y| y.abs() >= cut), "{}", l.node);
    }
    // the last step reaches the one-shot pruning's zeros, and zeros already there stay
    let last = prune_to_zeros(&step, &gradual_zeros(&report, 2, 2), true, false).unwrap();
    for l in &report.layers {
        assert_eq!(zeros(&last, &l.node), zeros(&full, &l.node), "{}", l.node);
        let (s, e) = (
            &step.node(&l.node).unwrap().params[&l.param].data,
            &last.node(&l.node).unwrap().params[&l.param].data,
        );
        assert!(s.iter().zip(e).all(|(x, y)| *x != 0.0 || *y == 0.0), "{}", l.node);
    }
    let bad = prune_to_zeros(&d, &BTreeMap::from([("stem.bn".to_string(), 1)]), true, false).unwrap_err();
    assert!(bad.to_string().contains("stem.bn"), "{bad}");
}
