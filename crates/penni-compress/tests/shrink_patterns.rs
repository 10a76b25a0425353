//! One test per tricky topology pattern of the shrinking pass. Every test checks exactness
//! against the reference forward pass and that the expected channels really went (or stayed).

mod common;

use std::collections::BTreeMap;

use common::*;
use penni_compress::groups::DependencyGraph;
use penni_compress::{DecomposeOptions, decompose, shrink};
use penni_model::zoo::GraphBuilder;
use penni_model::{Conv2d, Input, Model, Op, Tensor};

const TOL: f64 = 1e-5;

fn input(c: usize, hw: usize) -> Input {
    Input {
        name: "input".into(),
        channels: c,
        height: hw,
        width: hw,
    }
}

fn conv_bn_relu(b: &mut GraphBuilder, p: &str, x: &str, out: usize, k: usize, stride: usize, relu: bool) -> String {
    let c = b.conv(&format!("{p}conv"), x, out, k, stride, k / 2, false);
    let n = b.batch_norm(&format!("{p}bn"), &c);
    if relu { b.relu(&format!("{p}relu"), &n) } else { n }
}

fn head(b: &mut GraphBuilder, x: &str, classes: usize) -> String {
    let p = b.global_avg_pool("pool", x);
    let f = b.flatten("flatten", &p);
    b.linear("fc", &f, classes)
}

/// stem(3->4) -> [conv1 3x3 -> bn -> relu -> conv2 3x3 -> bn] + identity -> relu -> 1x1 head conv.
fn identity_block_model() -> Model {
    let mut b = GraphBuilder::new("identity", input(3, 8), 1);
    let x = conv_bn_relu(&mut b, "stem.", "input", 4, 3, 1, true);
    let h = conv_bn_relu(&mut b, "b.1.", &x, 4, 3, 1, true);
    let h = conv_bn_relu(&mut b, "b.2.", &h, 4, 3, 1, false);
    let s = b.add("b.add", &[&h, &x]);
    let r = b.relu("b.relu", &s);
    let c = b.conv("head.conv", &r, 6, 1, 1, 0, false);
    let y = head(&mut b, &c, 3);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 5);
    m
}

#[test]
fn residual_add_with_identity_shortcut_removes_a_channel_only_if_dead_in_every_member() {
    let mut m = identity_block_model();
    // channel 1: dead in both members of the residual group (stem and b.2); the stem constant is
    // negative so ReLU makes it 0 where the padded b.1 conv reads it; after the add it is a
    // positive constant, read only by the 1x1 head conv, which takes it into its bias.
    zero_slice(&mut m, "stem.conv", Some(1), None);
    set_bn(&mut m, "stem.bn", 1, 1.0, -0.8, 0.1, 1.0);
    zero_slice(&mut m, "b.2.conv", Some(1), None);
    set_bn(&mut m, "b.2.bn", 1, 1.0, 0.9, -0.2, 1.0);
    // channel 2: dead in b.2 only: the stem still feeds it, so it stays in the whole group
    zero_slice(&mut m, "b.2.conv", Some(2), None);
    let (s, report) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "identity shortcut");
    for t in ["stem.relu", "b.2.bn", "b.add", "b.relu"] {
        assert_eq!(channels(&s, t), 3, "{t} is in the residual group and loses exactly channel 1");
    }
    assert!(
        s.node("head.conv").unwrap().params.contains_key("bias"),
        "the constant 1 went into the head's bias"
    );
    let g = DependencyGraph::build(&m).unwrap();
    let group = g.group_of("b.add").unwrap();
    // stem conv, bn, relu; b.2 conv, bn; add; relu
    assert_eq!(group.tensors.len(), 7, "{:?}", group.tensors);
    assert_eq!(group.producers.len(), 2);
    assert!(report.folded_channels >= 1);
}

#[test]
fn conv_fed_by_a_positive_constant_with_padding_keeps_it_and_a_zero_constant_goes() {
    let mut m = identity_block_model();
    // internal group of the block (b.1 output): channel 0 dead with positive constant after
    // ReLU, read by the zero-padded 3x3 b.2 conv: not a bias (border pixels see fewer taps), stays.
    zero_slice(&mut m, "b.1.conv", Some(0), None);
    set_bn(&mut m, "b.1.bn", 0, 1.0, 0.7, 0.0, 1.0);
    // channel 3 dead with a negative constant: ReLU makes it exactly 0, removable.
    zero_slice(&mut m, "b.1.conv", Some(3), None);
    set_bn(&mut m, "b.1.bn", 3, 1.0, -0.7, 0.0, 1.0);
    let (s, report) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "padded consumer");
    assert_eq!(channels(&s, "b.1.relu"), 3);
    let g = report.groups.iter().find(|g| g.tensors.contains(&"b.1.relu".to_string())).unwrap();
    assert_eq!((g.channels_before, g.channels_after, g.constant_kept), (4, 3, 1));
}

#[test]
fn residual_add_with_1x1_conv_shortcut() {
    let mut b = GraphBuilder::new("downsample", input(3, 8), 2);
    let x = conv_bn_relu(&mut b, "stem.", "input", 4, 3, 1, true);
    let h = conv_bn_relu(&mut b, "b.1.", &x, 6, 3, 2, true);
    let h = conv_bn_relu(&mut b, "b.2.", &h, 6, 3, 1, false);
    let sc = conv_bn_relu(&mut b, "b.shortcut.", &x, 6, 1, 2, false);
    let s = b.add("b.add", &[&h, &sc]);
    let r = b.relu("b.relu", &s);
    let y = head(&mut b, &r, 3);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 9);
    // output group: channel 5 dead in conv2 and in the shortcut conv -> constant, through
    // add/relu/avg-pool/flatten into the linear layer's bias
    zero_slice(&mut m, "b.2.conv", Some(5), None);
    zero_slice(&mut m, "b.shortcut.conv", Some(5), None);
    // stem channel 2: dead with a positive constant; the padded 3x3 b.1 conv does not read it,
    // only the unpadded 1x1 shortcut does, which folds it
    zero_slice(&mut m, "stem.conv", Some(2), None);
    set_bn(&mut m, "stem.bn", 2, 1.0, 0.6, 0.0, 1.0);
    zero_slice(&mut m, "b.1.conv", None, Some(2));
    let (s, _) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "1x1 shortcut");
    assert_eq!(channels(&s, "b.add"), 5);
    assert_eq!(channels(&s, "stem.relu"), 3);
    let sc = s.node("b.shortcut.conv").unwrap();
    assert!(sc.params.contains_key("bias"), "stem constant folded into the shortcut conv");
    match &s.node("fc").unwrap().op {
        Op::Linear { in_features, .. } => assert_eq!(*in_features, 5),
        _ => unreachable!(),
    }
}

#[test]
fn flatten_into_linear_after_max_pool_removes_column_blocks() {
    let mut b = GraphBuilder::new("flat", input(2, 8), 3);
    let x = conv_bn_relu(&mut b, "c.", "input", 5, 3, 1, true);
    let p = b.max_pool("pool", &x, 2, 2);
    let f = b.flatten("flatten", &p); // 5 channels x 4x4 = 80 features
    let y = b.linear("fc", &f, 3);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 4);
    zero_slice(&mut m, "c.conv", Some(1), None);
    set_bn(&mut m, "c.bn", 1, 1.0, 0.5, 0.0, 1.0); // positive constant -> linear bias
    zero_slice(&mut m, "c.conv", Some(3), None);
    set_bn(&mut m, "c.bn", 3, 1.0, -0.5, 0.0, 1.0); // zero after ReLU
    // channel 4 is computed but never read: its 16 columns in fc are zero
    m.node_mut("fc")
        .unwrap()
        .params
        .get_mut("weight")
        .unwrap()
        .data
        .chunks_mut(16)
        .skip(4)
        .step_by(5)
        .for_each(|c| c.fill(0.0));
    let g = DependencyGraph::build(&m).unwrap();
    let group = g.group_of("flatten").unwrap();
    assert_eq!(group.channels, 5);
    assert_eq!(
        group.consumers[0].unit, 16,
        "a channel is 16 consecutive features after the flatten"
    );
    let (s, _) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "flatten into linear");
    assert_eq!(channels(&s, "c.relu"), 2);
    match &s.node("fc").unwrap().op {
        Op::Linear { in_features, .. } => assert_eq!(*in_features, 32),
        _ => unreachable!(),
    }
}

#[test]
fn dead_channel_with_nonzero_beta_followed_by_relu() {
    // the same dead channels feed a 1x1 conv (exact fold) or a padded 3x3 conv (only zero folds)
    for (k, pad, expect) in [(1, 0, 2), (3, 1, 3)] {
        let mut b = GraphBuilder::new("beta", input(3, 6), 6);
        let x = conv_bn_relu(&mut b, "a.", "input", 4, 3, 1, true);
        let c = b.conv("b.conv", &x, 4, k, 1, pad, false);
        let y = head(&mut b, &c, 2);
        let mut m = b.finish(&y).unwrap();
        randomize_batchnorm(&mut m, 7);
        zero_slice(&mut m, "a.conv", Some(0), None);
        set_bn(&mut m, "a.bn", 0, 1.2, 0.8, 0.3, 0.9); // relu(0.8 - 1.2*0.3/sqrt(0.9)) > 0
        zero_slice(&mut m, "a.conv", Some(2), None);
        set_bn(&mut m, "a.bn", 2, 1.2, -0.8, 0.3, 0.9); // < 0 -> 0 after relu
        let (s, _) = shrink(&m).unwrap();
        assert_same_outputs(&m, &s, TOL, "beta then relu");
        assert_eq!(channels(&s, "a.relu"), expect, "kernel {k}");
        assert_eq!(
            s.node("b.conv").unwrap().params.contains_key("bias"),
            k == 1,
            "only the 1x1 conv gains a bias"
        );
    }
}

#[test]
fn decomposed_layers_lose_channels_and_unused_bases() {
    let mut b = GraphBuilder::new("dec", input(3, 6), 8);
    let x = conv_bn_relu(&mut b, "a.", "input", 6, 3, 1, true);
    let x = conv_bn_relu(&mut b, "b.", &x, 6, 3, 1, true);
    let y = head(&mut b, &x, 2);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 3);
    let (mut m, _) = decompose(&m, &DecomposeOptions::default()).unwrap();
    // basis 1 and 3 of b unused; input channel 4 of b unread -> a's output 4 goes
    {
        let a = m.node_mut("b.conv").unwrap().params.get_mut("coefficients").unwrap();
        for r in 0..36 {
            a.data[r * 5 + 1] = 0.0;
            a.data[r * 5 + 3] = 0.0;
        }
    }
    zero_slice(&mut m, "b.conv", None, Some(4));
    let (s, report) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "decomposed");
    let node = s.node("b.conv").unwrap();
    match &node.op {
        Op::DecomposedConv2d(c) => assert_eq!((c.conv.in_channels, c.num_bases), (5, 3)),
        _ => unreachable!(),
    }
    assert_eq!(node.params["bases"].shape, vec![3, 9]);
    assert_eq!(report.removed_bases, 2);
    let layer = report.layers.iter().find(|l| l.node == "b.conv").unwrap();
    assert_eq!(
        (layer.bases_before, layer.bases_after, layer.in_before, layer.in_after),
        (Some(5), Some(3), 6, 5)
    );
}

#[test]
fn removal_cascades_to_a_fixed_point() {
    let mut b = GraphBuilder::new("chain", input(2, 5), 10);
    let x = conv_bn_relu(&mut b, "a.", "input", 4, 3, 1, true);
    let x = conv_bn_relu(&mut b, "b.", &x, 4, 1, 1, true);
    let x = conv_bn_relu(&mut b, "c.", &x, 4, 1, 1, true);
    let y = head(&mut b, &x, 2);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 12);
    // only c's column 1 reads b's channel 1; only b's row 1 reads a's channel 3
    zero_slice(&mut m, "c.conv", None, Some(1));
    zero_slice(&mut m, "b.conv", None, Some(3));
    m.node_mut("b.conv").unwrap().params.get_mut("weight").unwrap().data[4 + 3] = 0.5; // b[1][3]
    let (s, report) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "cascade");
    assert_eq!(channels(&s, "b.relu"), 3);
    assert_eq!(channels(&s, "a.relu"), 3, "a.3 became unread once b.1 was gone");
    assert!(report.iterations >= 3, "needs more than one pass: {}", report.iterations);
}

#[test]
fn input_output_and_grouped_conv_groups_are_pinned() {
    let mut b = GraphBuilder::new("pinned", input(3, 6), 13);
    let x = conv_bn_relu(&mut b, "a.", "input", 4, 3, 1, true);
    let mut params = BTreeMap::new();
    params.insert("weight".to_string(), Tensor::full(vec![4, 2, 3, 3], 0.1));
    let spec = Conv2d {
        in_channels: 4,
        out_channels: 4,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 2,
        bias: false,
    };
    let d = b.push("dw", Op::Conv2d(spec), &[&x], params);
    let y = head(&mut b, &d, 2);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 14);
    zero_slice(&mut m, "a.conv", Some(1), None);
    zero_slice(&mut m, "a.conv", None, Some(0)); // input channel 0 unread: the input is pinned
    zero_slice(&mut m, "fc", Some(1), None); // a dead class still is a class
    let (s, report) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "pinned");
    assert_eq!(channels(&s, "a.relu"), 4, "read by a grouped conv: left alone");
    assert_eq!(s.input.channels, 3);
    assert_eq!(channels(&s, "fc"), 2);
    let g = report.groups.iter().find(|g| g.tensors.contains(&"a.relu".to_string())).unwrap();
    assert!(g.pinned.iter().any(|r| r.contains("grouped conv 'dw'")), "{:?}", g.pinned);
    // the depthwise conv and the decomposition agree on grouped layouts
    let (dm, _) = decompose(
        &m,
        &DecomposeOptions {
            d: 9,
            only_if_cheaper: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_same_outputs(&m, &dm, 1e-4, "grouped decomposition");
}

#[test]
fn a_group_never_loses_its_last_channel() {
    let mut b = GraphBuilder::new("alldead", input(3, 5), 15);
    let x = conv_bn_relu(&mut b, "a.", "input", 3, 3, 1, true);
    let y = head(&mut b, &x, 2);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 16);
    zero_slice(&mut m, "a.conv", None, None);
    let (s, _) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "all dead");
    assert_eq!(channels(&s, "a.relu"), 1);
    s.validate().unwrap();
}

#[test]
fn hidden_linear_layer_features_are_channels_too() {
    let mut b = GraphBuilder::new("mlp", input(2, 4), 17);
    let x = conv_bn_relu(&mut b, "a.", "input", 3, 3, 1, true);
    let f = b.flatten("flatten", &x); // 3 x 16
    let h = b.linear("fc1", &f, 6);
    let h = b.relu("fc1.relu", &h);
    let y = b.linear("fc2", &h, 2);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 18);
    // hidden feature 2: zero row, positive bias -> relu keeps a constant -> folded into fc2
    zero_slice(&mut m, "fc1", Some(2), None);
    m.node_mut("fc1").unwrap().params.get_mut("bias").unwrap().data[2] = 0.4;
    // hidden feature 4: fc2 never reads it
    zero_slice(&mut m, "fc2", None, Some(4));
    let (s, _) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "hidden linear");
    assert_eq!(channels(&s, "fc1.relu"), 4);
}

#[test]
fn average_pooling_that_counts_padding_only_passes_zero_constants() {
    use penni_model::Pool2d;
    for (include_pad, expect) in [(true, 3), (false, 2)] {
        let mut b = GraphBuilder::new("avg", input(2, 6), 19);
        let x = conv_bn_relu(&mut b, "a.", "input", 4, 3, 1, true);
        let p = Pool2d {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1; 4],
            ceil_mode: false,
            count_include_pad: include_pad,
        };
        let x = b.push("avg", Op::AvgPool2d(p), &[&x], BTreeMap::new());
        let f = b.flatten("flatten", &x);
        let y = b.linear("fc", &f, 2);
        let mut m = b.finish(&y).unwrap();
        randomize_batchnorm(&mut m, 20);
        zero_slice(&mut m, "a.conv", Some(0), None);
        set_bn(&mut m, "a.bn", 0, 1.0, 0.5, 0.0, 1.0); // positive: border windows average it with padding
        zero_slice(&mut m, "a.conv", Some(1), None);
        set_bn(&mut m, "a.bn", 1, 1.0, -0.5, 0.0, 1.0); // zero: fine either way
        let (s, _) = shrink(&m).unwrap();
        assert_same_outputs(&m, &s, TOL, "avg pool");
        assert_eq!(channels(&s, "a.relu"), expect, "count_include_pad = {include_pad}");
    }
}

#[test]
fn softmax_pins_the_channels_it_normalises() {
    let mut b = GraphBuilder::new("softmax", input(3, 5), 19);
    let x = conv_bn_relu(&mut b, "a.", "input", 4, 3, 1, true);
    let c = b.conv("b.conv", &x, 5, 1, 1, 0, false);
    let s = b.softmax("b.softmax", &c, false);
    let y = head(&mut b, &s, 3);
    let y = b.softmax("prob", &y, false);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 20);
    zero_slice(&mut m, "a.conv", Some(1), None); // a plain dead channel: goes
    zero_slice(&mut m, "b.conv", Some(2), None); // a constant 0 still counts in the softmax
    zero_slice(&mut m, "fc", Some(0), None); // and so does a dead class
    let (s, report) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "softmax");
    assert_eq!(channels(&s, "a.relu"), 3);
    assert_eq!(channels(&s, "b.softmax"), 5);
    assert_eq!(channels(&s, "prob"), 3);
    let g = report.groups.iter().find(|g| g.tensors.contains(&"b.softmax".to_string())).unwrap();
    assert!(g.pinned.iter().any(|r| r.contains("softmax 'b.softmax'")), "{:?}", g.pinned);
}

#[test]
fn concat_keeps_the_channels_it_stacks_and_shrinking_goes_on_around_it() {
    let mut b = GraphBuilder::new("fire", input(3, 6), 21);
    let s = conv_bn_relu(&mut b, "stem.", "input", 6, 3, 1, true);
    let e1 = conv_bn_relu(&mut b, "e1.", &s, 4, 1, 1, true);
    let e3 = conv_bn_relu(&mut b, "e3.", &s, 5, 3, 1, true);
    let cat = b.concat("concat", &[&e1, &e3]);
    let y = head(&mut b, &cat, 3);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 22);
    zero_slice(&mut m, "stem.conv", Some(2), None); // feeds only convs: goes
    set_bn(&mut m, "stem.bn", 2, 1.0, -0.5, 0.0, 1.0);
    zero_slice(&mut m, "e3.conv", Some(1), None); // stacked by the concat: stays
    let (s, report) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "concat");
    assert_eq!(channels(&s, "stem.relu"), 5);
    assert_eq!(channels(&s, "e3.relu"), 5);
    assert_eq!(channels(&s, "concat"), 9);
    let g = report.groups.iter().find(|g| g.tensors.contains(&"e3.relu".to_string())).unwrap();
    assert!(g.pinned.iter().any(|r| r.contains("read by concat 'concat'")), "{:?}", g.pinned);
    let (dm, _) = decompose(
        &m,
        &DecomposeOptions {
            d: 9,
            only_if_cheaper: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_same_outputs(&m, &dm, 1e-4, "decomposed concat model");
}

/// A MobileNet-v2 inverted residual: expand 1x1 -> depthwise 3x3 -> project 1x1. The depthwise
/// conv is channel-wise, so a channel dead in the expansion goes through it and leaves with it.
#[test]
fn depthwise_convs_pass_dead_channels_through() {
    let mut b = GraphBuilder::new("mobile", input(3, 6), 23);
    let x = conv_bn_relu(&mut b, "stem.", "input", 4, 3, 1, true);
    let e = conv_bn_relu(&mut b, "expand.", &x, 6, 1, 1, true);
    let mut rng = penni_model::zoo::InitRng::new(24);
    let w = Tensor::new(vec![6, 1, 3, 3], (0..54).map(|_| rng.normal() * 0.4).collect()).unwrap();
    let spec = Conv2d {
        in_channels: 6,
        out_channels: 6,
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 6,
        bias: false,
    };
    let d = b.push("dw.conv", Op::Conv2d(spec), &[&e], BTreeMap::from([("weight".to_string(), w)]));
    let d = b.batch_norm("dw.bn", &d);
    let d = b.relu("dw.relu", &d);
    let p = b.conv("project", &d, 4, 1, 1, 0, false);
    let y = head(&mut b, &p, 3);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 25);
    // channel 1: expansion row zero, ReLU(negative beta) = 0 reaches the depthwise conv, which
    // emits its batchnorm's constant: folded into the 1x1 projection
    zero_slice(&mut m, "expand.conv", Some(1), None);
    set_bn(&mut m, "expand.bn", 1, 1.0, -0.5, 0.0, 1.0);
    // channel 4: the depthwise filter is zero
    zero_slice(&mut m, "dw.conv", Some(4), None);
    // channel 2: a positive constant into a zero-padded depthwise conv varies at the border: stays
    zero_slice(&mut m, "expand.conv", Some(2), None);
    set_bn(&mut m, "expand.bn", 2, 1.0, 0.7, 0.0, 1.0);
    let (s, report) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "depthwise");
    assert_eq!(channels(&s, "dw.relu"), 4);
    assert_eq!(channels(&s, "expand.relu"), 4);
    match &s.node("dw.conv").unwrap().op {
        Op::Conv2d(c) => assert_eq!((c.in_channels, c.out_channels, c.groups), (4, 4, 4)),
        other => panic!("{other:?}"),
    }
    assert_eq!(report.removed_channels, 2, "{report:?}");
}

/// Squeeze-and-excitation: the scale (global pool -> 1x1 convs -> hard sigmoid) multiplies the
/// feature map channel by channel, so the excitation conv's outputs share the map's channels.
/// A channel that is 0 in the map is 0 after the product, whatever the scale: it goes, with
/// the excitation row that scaled it.
#[test]
fn squeeze_excitation_products_shrink_together() {
    use penni_model::Activation;
    let mut b = GraphBuilder::new("se", input(3, 6), 26);
    let x = conv_bn_relu(&mut b, "stem.", "input", 4, 3, 1, true);
    let e = conv_bn_relu(&mut b, "expand.", &x, 6, 1, 1, true);
    let p = b.global_avg_pool("se.pool", &e);
    let r = b.conv("se.reduce", &p, 2, 1, 1, 0, true);
    let r = b.relu("se.relu", &r);
    let g = b.conv("se.expand", &r, 6, 1, 1, 0, true);
    let g = b.activation("se.gate", &g, Activation::HardSigmoid { alpha: 0.2, beta: 0.5 });
    let s = b.mul("se.scale", &e, &g);
    let s = b.activation("hswish", &s, Activation::HardSwish);
    let c = b.conv("project", &s, 4, 1, 1, 0, false);
    let y = head(&mut b, &c, 3);
    let mut m = b.finish(&y).unwrap();
    randomize_batchnorm(&mut m, 27);
    zero_slice(&mut m, "expand.conv", Some(1), None);
    set_bn(&mut m, "expand.bn", 1, 1.0, -0.5, 0.0, 1.0);
    let (s, report) = shrink(&m).unwrap();
    assert_same_outputs(&m, &s, TOL, "squeeze-excitation");
    assert_eq!(channels(&s, "expand.relu"), 5);
    assert_eq!(channels(&s, "se.expand"), 5);
    assert_eq!(channels(&s, "se.scale"), 5);
    assert_eq!(report.removed_channels, 1, "{report:?}");
}
