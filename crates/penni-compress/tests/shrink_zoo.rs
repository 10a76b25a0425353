//! Shrinking whole zoo topologies (VGG-16, ResNet-20, ResNet-18 at a quarter width, small inputs)
//! after decomposition, pruning and randomly killed channels: the shrunk model must compute the
//! same outputs, and residual groups must really lose channels.

mod common;

use common::*;
use penni_compress::groups::DependencyGraph;
use penni_compress::{DecomposeOptions, PruneOptions, decompose, prune, shrink};
use penni_model::zoo::InitRng;
use penni_model::{Model, Op, model_cost};

/// Zeros channel k's columns in a consumer (a block of `unit` columns for a linear layer).
fn zero_columns(model: &mut Model, node: usize, k: usize, unit: usize) {
    let node = &mut model.nodes[node];
    match &node.op {
        Op::Linear {
            in_features, out_features, ..
        } => {
            let (i, o) = (*in_features, *out_features);
            let w = node.params.get_mut("weight").unwrap();
            for r in 0..o {
                w.data[r * i + k * unit..r * i + (k + 1) * unit].fill(0.0);
            }
        }
        _ => {
            let name = node.name.clone();
            zero_slice(model, &name, None, Some(k));
        }
    }
}

/// Kills channels the way training + pruning does, but more often: per channel group, some
/// channels dead in every producer (they become constants), some unread by every consumer; plus
/// independent dead rows/columns in single layers that must not lead to wrong removals.
/// Returns the unread channels per group.
fn kill_channels(model: &mut Model, seed: u64) -> Vec<(usize, Vec<usize>)> {
    let dg = DependencyGraph::build(model).unwrap();
    let mut rng = InitRng::new(seed);
    let mut unread = Vec::new();
    for (gi, g) in dg.groups.iter().enumerate() {
        if g.is_pinned() {
            continue;
        }
        let mut u = Vec::new();
        for k in 0..g.channels {
            let r = rng.uniform();
            if r < 0.3 {
                for &p in &g.producers {
                    let name = model.nodes[p].name.clone();
                    zero_slice(model, &name, Some(k), None);
                }
            } else if r < 0.45 {
                for c in &g.consumers {
                    zero_columns(model, c.node, k, c.unit);
                }
                u.push(k);
            }
        }
        unread.push((gi, u));
    }
    let names: Vec<(String, usize, usize)> = model
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv2d(c) if c.groups == 1 => Some((n.name.clone(), c.out_channels, c.in_channels)),
            Op::DecomposedConv2d(c) if c.conv.groups == 1 => Some((n.name.clone(), c.conv.out_channels, c.conv.in_channels)),
            _ => None,
        })
        .collect();
    for (name, n, c) in names {
        for o in 0..n {
            if rng.uniform() < 0.1 {
                zero_slice(model, &name, Some(o), None);
            }
        }
        for i in 0..c {
            if rng.uniform() < 0.1 {
                zero_slice(model, &name, None, Some(i));
            }
        }
    }
    unread
}

fn prepare(name: &str, hw: usize, seed: u64) -> (Model, Vec<(usize, Vec<usize>)>) {
    let mut m = zoo(name, hw, seed);
    randomize_batchnorm(&mut m, seed + 100);
    let (m, _) = decompose(&m, &DecomposeOptions::default()).unwrap();
    let (mut m, _) = prune(
        &m,
        &PruneOptions {
            s: 0.7,
            ..Default::default()
        },
    )
    .unwrap();
    let unread = kill_channels(&mut m, seed + 200);
    (m, unread)
}

fn check(name: &str, hw: usize, seed: u64) -> penni_compress::ShrinkReport {
    let (m, unread) = prepare(name, hw, seed);
    let (s, report) = shrink(&m).unwrap();
    s.validate().unwrap();
    assert_same_outputs(&m, &s, 1e-5, name);
    let (before, after) = (model_cost(&m).unwrap().totals, model_cost(&s).unwrap().totals);
    assert!(
        after.params_all < before.params_all && after.macs_all < before.macs_all,
        "{name}: {before:?} -> {after:?}"
    );
    // every channel no layer reads is gone (unless it is a group's last one)
    for (gi, u) in unread {
        let g = &report.groups[gi];
        assert!(
            g.channels_after <= g.channels_before - u.len().min(g.channels_before - 1),
            "{name}: group of {} kept unread channels",
            g.tensors[0]
        );
    }
    // a second shrink finds nothing more: the first one reached the fixed point
    let (s2, r2) = shrink(&s).unwrap();
    assert_eq!(r2.removed_channels + r2.removed_bases, 0, "{name}: not a fixed point");
    assert_eq!(s2, s);
    report
}

fn residual_groups_shrank(report: &penni_compress::ShrinkReport) -> usize {
    report
        .groups
        .iter()
        .filter(|g| g.tensors.iter().any(|t| t.ends_with(".add")) && g.channels_after < g.channels_before)
        .count()
}

#[test]
fn vgg16_shrinks_exactly() {
    let r = check("vgg16", 32, 1);
    let convs_shrunk = r
        .layers
        .iter()
        .filter(|l| l.kind == "DecomposedConv2d" && l.out_after < l.out_before)
        .count();
    assert!(convs_shrunk >= 10, "{convs_shrunk} of 13 convs lost output channels");
    assert!(r.folded_channels > 0, "constant channels were folded");
}

#[test]
fn resnet20_shrinks_exactly_including_residual_groups() {
    let r = check("resnet20", 16, 2);
    assert_eq!(residual_groups_shrank(&r), 3, "all three stage groups shrink");
}

#[test]
fn resnet18_shrinks_exactly_including_residual_groups() {
    let r = check("resnet18", 16, 3);
    assert_eq!(residual_groups_shrank(&r), 4, "all four stage groups shrink");
    assert!(r.folded_channels > 0, "constant channels were folded");
    // the first stage's group couples the stem with both blocks (identity shortcuts)
    let g = r.groups.iter().find(|g| g.tensors.iter().any(|t| t == "layer1.0.add")).unwrap();
    for t in ["stem.relu", "layer1.0.2.bn", "layer1.1.add", "layer1.1.relu"] {
        assert!(g.tensors.iter().any(|x| x == t), "{t} in {:?}", g.tensors);
    }
    assert!(g.channels_after < g.channels_before);
}
