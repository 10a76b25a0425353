//! PENNI step 4: shrinking. Removes dead channels and unused bases for real, so the pruned model
//! is smaller and faster, without changing what it computes.
//!
//! Works on the [`DependencyGraph`]: a channel k of a group is removed when, for every layer that
//! reads it (a consumer whose weight column for k is not all zero),
//! - the value it reads is a known constant (every producer of the group emits a constant on k,
//!   i.e. its weight row is zero and it emits its bias, and the channel-wise ops on the way map
//!   constants to constants: batchnorm, ReLU, clip, pools whose windows always see the input,
//!   global pooling, flatten, add, element-wise activations and products, a depthwise conv
//!   when the constant is 0 or its filter is zero or it is unpadded), and
//! - that constant can be moved into the consumer's bias exactly: the constant is 0, or the
//!   consumer is a linear layer, or an unpadded, ungrouped conv (every output pixel then sees
//!   all k*k taps; a zero-padded conv sees fewer taps at the border, so a non-zero constant
//!   there is not a bias and the channel stays).
//!
//! A channel nobody reads satisfies this trivially. Removing a channel deletes the producers'
//! weight rows and biases, the batchnorm entries and the consumers' columns (after folding).
//! Then bases no coefficient uses are dropped, and everything repeats until nothing changes.
//! Groups holding the model input or output, or touching a grouped conv that is not depthwise,
//! a concat or a softmax, are left alone; each group keeps at least one channel.

use std::collections::HashMap;

use penni_model::batchnorm::Affine;
use penni_model::{Model, Node, Op, Pool2d, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};
use crate::groups::{ChannelGroup, DependencyGraph, depthwise};

/// Channels and bases of one layer before and after shrinking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShrunkLayer {
    pub node: String,
    pub kind: String,
    pub in_before: usize,
    pub in_after: usize,
    pub out_before: usize,
    pub out_after: usize,
    pub bases_before: Option<usize>,
    pub bases_after: Option<usize>,
}

/// One channel group before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShrunkGroup {
    /// Member tensors (the first one names the group in tables).
    pub tensors: Vec<String>,
    pub channels_before: usize,
    pub channels_after: usize,
    /// Why the group could not shrink at all (empty if it could).
    pub pinned: Vec<String>,
    /// Channels that are constant but stay, because a zero-padded conv reads a non-zero constant.
    pub constant_kept: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShrinkReport {
    pub layers: Vec<ShrunkLayer>,
    pub groups: Vec<ShrunkGroup>,
    /// Passes until the fixed point (the last one changes nothing).
    pub iterations: usize,
    pub removed_channels: usize,
    /// Removed channels whose constant value was folded into consumer biases.
    pub folded_channels: usize,
    pub removed_bases: usize,
}

/// The weights of a channel-mixing layer seen as [N][C][L]: output n, input channel c, L values
/// per (n, c) pair (k*k taps of a conv, d coefficients of a decomposed conv, `unit` columns of a
/// linear layer). Rows, columns and folding are the same code for all three.
struct Mixing<'a> {
    n: usize,
    c: usize,
    l: usize,
    data: &'a [f32],
}

impl Mixing<'_> {
    fn slice(&self, n: usize, c: usize) -> &[f32] {
        let s = (n * self.c + c) * self.l;
        &self.data[s..s + self.l]
    }
    fn row_zero(&self, n: usize) -> bool {
        self.data[n * self.c * self.l..(n + 1) * self.c * self.l].iter().all(|v| *v == 0.0)
    }
    fn col_zero(&self, c: usize) -> bool {
        (0..self.n).all(|n| self.slice(n, c).iter().all(|v| *v == 0.0))
    }
}

fn param_err(node: &Node, msg: &str) -> CompressError {
    CompressError::Invalid(format!("shrink: node '{}': {msg}", node.name))
}

/// The [N][C][L] view of a mixing layer; `unit` is the columns per channel of a linear input.
fn mixing(node: &Node, unit: usize) -> Result<Mixing<'_>> {
    match &node.op {
        Op::Conv2d(c) => {
            let w = node.param("weight")?;
            Ok(Mixing {
                n: c.out_channels,
                c: c.in_channels / c.groups,
                l: c.kernel[0] * c.kernel[1],
                data: &w.data,
            })
        }
        Op::DecomposedConv2d(c) => {
            let a = node.param("coefficients")?;
            Ok(Mixing {
                n: c.conv.out_channels,
                c: c.conv.in_channels / c.conv.groups,
                l: c.num_bases,
                data: &a.data,
            })
        }
        Op::Linear {
            in_features, out_features, ..
        } => {
            let w = node.param("weight")?;
            if unit == 0 || in_features % unit != 0 {
                return Err(param_err(node, "input features do not split into channels"));
            }
            Ok(Mixing {
                n: *out_features,
                c: in_features / unit,
                l: unit,
                data: &w.data,
            })
        }
        _ => Err(param_err(node, "not a conv or linear layer")),
    }
}

/// Whether a non-zero constant input channel can become a bias of this consumer exactly.
fn absorbs_constant(op: &Op) -> bool {
    match op {
        Op::Linear { .. } => true,
        Op::Conv2d(c) => c.groups == 1 && c.padding == [0; 4],
        Op::DecomposedConv2d(c) => c.conv.groups == 1 && c.conv.padding == [0; 4],
        _ => false,
    }
}

/// Every pooling window covers at least one input pixel (so max/avg of a constant is defined).
fn windows_see_input(p: &Pool2d) -> bool {
    p.padding[0] < p.kernel[0] && p.padding[2] < p.kernel[0] && p.padding[1] < p.kernel[1] && p.padding[3] < p.kernel[1]
}

/// Per-tensor constant value of every channel of a group (`None`: varies).
fn group_constants<'m>(model: &'m Model, g: &ChannelGroup) -> Result<HashMap<&'m str, Vec<Option<f32>>>> {
    let c = g.channels;
    let mut consts: HashMap<&str, Vec<Option<f32>>> = HashMap::new();
    if g.tensors.iter().any(|t| t.name == model.input.name) {
        consts.insert(model.input.name.as_str(), vec![None; c]);
    }
    for &p in &g.producers {
        let node = &model.nodes[p];
        let m = mixing(node, 1)?;
        let bias = node.params.get("bias");
        let v = (0..c).map(|k| m.row_zero(k).then(|| bias.map_or(0.0, |b| b.data[k]))).collect();
        consts.insert(node.output.as_str(), v);
    }
    for &i in &g.passthrough {
        let node = &model.nodes[i];
        let ins: Vec<&Vec<Option<f32>>> = node
            .inputs
            .iter()
            .map(|t| {
                consts
                    .get(t.as_str())
                    .ok_or_else(|| param_err(node, "input outside its channel group"))
            })
            .collect::<Result<_>>()?;
        let x = ins[0];
        let out: Vec<Option<f32>> = match &node.op {
            Op::BatchNorm2d { .. } => {
                // the same arithmetic as the reference forward pass
                let affine = Affine::of_batchnorm(node)?;
                (0..c).map(|k| x[k].map(|v| affine.apply(k, v))).collect()
            }
            Op::Relu => x.iter().map(|v| v.map(|v| v.max(0.0))).collect(),
            Op::Clip { min, max } => x.iter().map(|v| v.map(|v| v.clamp(*min, *max))).collect(),
            Op::Activation(a) => x.iter().map(|v| v.map(|v| a.apply(v))).collect(),
            // zero padding keeps a channel constant only when the constant is zero
            Op::Pad { .. } => x.iter().map(|v| v.filter(|v| *v == 0.0)).collect(),
            // a product is constant when both factors are, or when one is 0
            Op::Mul => (0..c)
                .map(|k| match (ins[0][k], ins[1][k]) {
                    (Some(a), Some(b)) => Some(a * b),
                    (Some(z), None) | (None, Some(z)) if z == 0.0 => Some(0.0),
                    _ => None,
                })
                .collect(),
            Op::MaxPool2d(p) => {
                let ok = windows_see_input(p);
                x.iter().map(|v| v.filter(|_| ok)).collect()
            }
            Op::AvgPool2d(p) => {
                // count_include_pad with padding divides border windows by more cells: only 0 survives
                let ok = windows_see_input(p) && (!p.count_include_pad || p.padding == [0; 4]);
                x.iter().map(|v| v.filter(|v| ok || *v == 0.0)).collect()
            }
            Op::GlobalAvgPool | Op::Flatten => x.clone(),
            // every output depends on every channel (and the group is pinned anyway)
            Op::Softmax { .. } => vec![None; c],
            Op::Conv2d(conv) if depthwise(conv) => {
                let kk = conv.kernel[0] * conv.kernel[1];
                let w = &node.param("weight")?.data;
                let bias = node.params.get("bias");
                (0..c)
                    .map(|k| {
                        let filter = &w[k * kk..(k + 1) * kk];
                        let b = bias.map_or(0.0, |b| b.data[k]);
                        // zero padding: a border pixel sees fewer taps, so only 0 stays constant
                        match x[k] {
                            _ if filter.iter().all(|v| *v == 0.0) => Some(b),
                            Some(0.0) => Some(b),
                            Some(v) if conv.padding == [0; 4] => {
                                Some((v as f64 * filter.iter().map(|w| *w as f64).sum::<f64>() + b as f64) as f32)
                            }
                            _ => None,
                        }
                    })
                    .collect()
            }
            Op::Add => (0..c)
                .map(|k| {
                    let mut s = ins[0][k]?;
                    for other in &ins[1..] {
                        s += other[k]?;
                    }
                    Some(s)
                })
                .collect(),
            _ => return Err(param_err(node, "unexpected channel-wise op")),
        };
        let out = out.into_iter().map(|v| v.filter(|v| v.is_finite())).collect();
        consts.insert(node.output.as_str(), out);
    }
    Ok(consts)
}

/// A constant input channel moved into a consumer's bias.
struct Fold {
    node: usize,
    unit: usize,
    channel: usize,
    value: f32,
}

struct Plan {
    keep: Vec<Vec<usize>>,
    folds: Vec<Fold>,
    removed: usize,
    folded: usize,
    constant_kept: Vec<usize>,
}

fn plan_step(model: &Model, dg: &DependencyGraph) -> Result<Plan> {
    let mut plan = Plan {
        keep: vec![],
        folds: vec![],
        removed: 0,
        folded: 0,
        constant_kept: vec![],
    };
    for g in &dg.groups {
        let all: Vec<usize> = (0..g.channels).collect();
        if g.is_pinned() {
            plan.keep.push(all);
            plan.constant_kept.push(0);
            continue;
        }
        let consts = group_constants(model, g)?;
        let views: Vec<Mixing> = g
            .consumers
            .iter()
            .map(|c| mixing(&model.nodes[c.node], c.unit))
            .collect::<Result<_>>()?;
        let mut keep = Vec::new();
        let mut removable: Vec<(usize, Vec<Fold>)> = Vec::new();
        let mut constant_kept = 0;
        for k in 0..g.channels {
            let mut folds = Vec::new();
            let (mut ok, mut constant) = (true, true);
            for (cons, view) in g.consumers.iter().zip(&views) {
                if view.col_zero(k) {
                    continue;
                }
                match consts.get(cons.tensor.as_str()).and_then(|v| v[k]) {
                    Some(0.0) => {} // -0.0 matches too
                    Some(v) if absorbs_constant(&model.nodes[cons.node].op) => folds.push(Fold {
                        node: cons.node,
                        unit: cons.unit,
                        channel: k,
                        value: v,
                    }),
                    Some(_) => ok = false,
                    None => {
                        ok = false;
                        constant = false;
                    }
                }
            }
            if ok {
                removable.push((k, folds));
            } else {
                keep.push(k);
                if constant {
                    constant_kept += 1;
                }
            }
        }
        if keep.is_empty() {
            // a tensor cannot have zero channels: keep the first one as it is
            keep.push(removable.remove(0).0);
        }
        plan.removed += removable.len();
        for (_, folds) in removable {
            if !folds.is_empty() {
                plan.folded += 1;
            }
            plan.folds.extend(folds);
        }
        plan.keep.push(keep);
        plan.constant_kept.push(constant_kept);
    }
    Ok(plan)
}

fn set_bias_flag(op: &mut Op) {
    match op {
        Op::Conv2d(c) => c.bias = true,
        Op::DecomposedConv2d(c) => c.conv.bias = true,
        Op::Linear { bias, .. } => *bias = true,
        _ => {}
    }
}

/// Adds the contribution of constant input channels to each consumer's bias (creating the bias
/// when the layer had none).
fn apply_folds(model: &mut Model, folds: &[Fold]) -> Result<()> {
    let mut by_node: HashMap<usize, Vec<f64>> = HashMap::new();
    for f in folds {
        let node = &model.nodes[f.node];
        let m = mixing(node, f.unit)?;
        // what one unit of the channel contributes per (n, c) entry of the view
        let tap_weight: Vec<f64> = match &node.op {
            Op::DecomposedConv2d(c) => {
                let b = node.param("bases")?;
                let kk = c.conv.kernel[0] * c.conv.kernel[1];
                (0..c.num_bases)
                    .map(|j| b.data[j * kk..(j + 1) * kk].iter().map(|v| *v as f64).sum())
                    .collect()
            }
            _ => vec![1.0; m.l],
        };
        let delta = by_node.entry(f.node).or_insert_with(|| vec![0.0; m.n]);
        for (n, d) in delta.iter_mut().enumerate() {
            let s: f64 = m.slice(n, f.channel).iter().zip(&tap_weight).map(|(w, t)| *w as f64 * t).sum();
            *d += s * f.value as f64;
        }
    }
    for (i, delta) in by_node {
        if delta.iter().all(|d| *d == 0.0) {
            continue;
        }
        let node = &mut model.nodes[i];
        if !node.params.contains_key("bias") {
            node.params.insert("bias".into(), Tensor::zeros(vec![delta.len()]));
            set_bias_flag(&mut node.op);
        }
        let b = node.param_mut("bias")?;
        for (b, d) in b.data.iter_mut().zip(&delta) {
            *b = (*b as f64 + d) as f32;
        }
    }
    Ok(())
}

/// Keeps rows `keep_n` and channel columns `keep_c` of an [N][C][L] tensor.
fn select(data: &[f32], c: usize, l: usize, keep_n: &[usize], keep_c: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(keep_n.len() * keep_c.len() * l);
    for &n in keep_n {
        for &k in keep_c {
            let s = (n * c + k) * l;
            out.extend_from_slice(&data[s..s + l]);
        }
    }
    out
}

fn select_vec(t: &mut Tensor, keep: &[usize]) {
    t.data = keep.iter().map(|&i| t.data[i]).collect();
    t.shape = vec![keep.len()];
}

fn apply_keep(model: &mut Model, dg: &DependencyGraph, keep: &[Vec<usize>]) -> Result<()> {
    let group_keep = |t: &str| -> Result<&Vec<usize>> {
        dg.group_index(t)
            .map(|g| &keep[g])
            .ok_or_else(|| CompressError::Invalid(format!("shrink: tensor '{t}' has no channel group")))
    };
    for node in &mut model.nodes {
        match &mut node.op {
            Op::Conv2d(c) if c.groups == 1 => {
                let (ki, ko) = (group_keep(&node.inputs[0])?, group_keep(&node.output)?);
                if ki.len() == c.in_channels && ko.len() == c.out_channels {
                    continue;
                }
                let kk = c.kernel[0] * c.kernel[1];
                let w = node
                    .params
                    .get_mut("weight")
                    .ok_or_else(|| CompressError::Invalid(format!("shrink: '{}' has no weight", node.name)))?;
                w.data = select(&w.data, c.in_channels, kk, ko, ki);
                w.shape = vec![ko.len(), ki.len(), c.kernel[0], c.kernel[1]];
                if let Some(b) = node.params.get_mut("bias") {
                    select_vec(b, ko);
                }
                c.in_channels = ki.len();
                c.out_channels = ko.len();
            }
            Op::DecomposedConv2d(c) if c.conv.groups == 1 => {
                let (ki, ko) = (group_keep(&node.inputs[0])?, group_keep(&node.output)?);
                if ki.len() == c.conv.in_channels && ko.len() == c.conv.out_channels {
                    continue;
                }
                let a = node
                    .params
                    .get_mut("coefficients")
                    .ok_or_else(|| CompressError::Invalid(format!("shrink: '{}' has no coefficients", node.name)))?;
                a.data = select(&a.data, c.conv.in_channels, c.num_bases, ko, ki);
                a.shape = vec![ko.len() * ki.len(), c.num_bases];
                if let Some(b) = node.params.get_mut("bias") {
                    select_vec(b, ko);
                }
                c.conv.in_channels = ki.len();
                c.conv.out_channels = ko.len();
            }
            Op::Linear {
                in_features, out_features, ..
            } => {
                let (ki, ko) = (group_keep(&node.inputs[0])?, group_keep(&node.output)?);
                let full = |t: &str, k: &Vec<usize>| dg.group_of(t).is_some_and(|g| g.channels == k.len());
                if full(&node.inputs[0], ki) && full(&node.output, ko) {
                    continue;
                }
                // input untouched: keep every column, whatever the group's granularity
                let all_cols: Vec<usize>;
                let (ki, unit) = if full(&node.inputs[0], ki) {
                    all_cols = (0..*in_features).collect();
                    (&all_cols, 1)
                } else {
                    (ki, dg.unit(&node.inputs[0]).unwrap_or(1).max(1))
                };
                let channels = *in_features / unit;
                let w = node
                    .params
                    .get_mut("weight")
                    .ok_or_else(|| CompressError::Invalid(format!("shrink: '{}' has no weight", node.name)))?;
                w.data = select(&w.data, channels, unit, ko, ki);
                w.shape = vec![ko.len(), ki.len() * unit];
                if let Some(b) = node.params.get_mut("bias") {
                    select_vec(b, ko);
                }
                *in_features = ki.len() * unit;
                *out_features = ko.len();
            }
            Op::Conv2d(c) if depthwise(c) => {
                let k = group_keep(&node.output)?;
                if k.len() == c.out_channels {
                    continue;
                }
                let kk = c.kernel[0] * c.kernel[1];
                let w = node
                    .params
                    .get_mut("weight")
                    .ok_or_else(|| CompressError::Invalid(format!("shrink: '{}' has no weight", node.name)))?;
                w.data = select(&w.data, 1, kk, k, &[0]);
                w.shape = vec![k.len(), 1, c.kernel[0], c.kernel[1]];
                if let Some(b) = node.params.get_mut("bias") {
                    select_vec(b, k);
                }
                (c.in_channels, c.out_channels, c.groups) = (k.len(), k.len(), k.len());
            }
            Op::BatchNorm2d { channels, .. } => {
                let k = group_keep(&node.output)?;
                if k.len() == *channels {
                    continue;
                }
                for p in ["weight", "bias", "running_mean", "running_var"] {
                    if let Some(t) = node.params.get_mut(p) {
                        select_vec(t, k);
                    }
                }
                *channels = k.len();
            }
            _ => {}
        }
    }
    Ok(())
}

/// Drops bases that no coefficient uses (keeping at least one); returns how many went.
fn drop_unused_bases(model: &mut Model) -> Result<usize> {
    let mut removed = 0;
    for node in &mut model.nodes {
        let Op::DecomposedConv2d(c) = &mut node.op else { continue };
        let d = c.num_bases;
        let kk = c.conv.kernel[0] * c.conv.kernel[1];
        let a = node
            .params
            .get("coefficients")
            .ok_or_else(|| CompressError::Invalid(format!("shrink: '{}' has no coefficients", node.name)))?;
        let rows = a.shape[0];
        let mut used: Vec<usize> = (0..d).filter(|&j| (0..rows).any(|r| a.data[r * d + j] != 0.0)).collect();
        if used.is_empty() {
            used.push(0);
        }
        if used.len() == d {
            continue;
        }
        let new_a: Vec<f32> = (0..rows)
            .flat_map(|r| used.iter().map(move |&j| (r, j)))
            .map(|(r, j)| a.data[r * d + j])
            .collect();
        let b = node
            .params
            .get("bases")
            .ok_or_else(|| CompressError::Invalid(format!("shrink: '{}' has no bases", node.name)))?;
        let new_b: Vec<f32> = used.iter().flat_map(|&j| b.data[j * kk..(j + 1) * kk].iter().copied()).collect();
        removed += d - used.len();
        c.num_bases = used.len();
        node.params.insert(
            "coefficients".into(),
            Tensor {
                shape: vec![rows, used.len()],
                data: new_a,
            },
        );
        node.params.insert(
            "bases".into(),
            Tensor {
                shape: vec![used.len(), kk],
                data: new_b,
            },
        );
    }
    Ok(removed)
}

/// (in, out, bases) of the layers that own channels.
fn layer_dims(model: &Model) -> Vec<(String, String, usize, usize, Option<usize>)> {
    model
        .nodes
        .iter()
        .filter_map(|n| {
            let (i, o, b) = match &n.op {
                Op::Conv2d(c) => (c.in_channels, c.out_channels, None),
                Op::DecomposedConv2d(c) => (c.conv.in_channels, c.conv.out_channels, Some(c.num_bases)),
                Op::Linear {
                    in_features, out_features, ..
                } => (*in_features, *out_features, None),
                Op::BatchNorm2d { channels, .. } => (*channels, *channels, None),
                _ => return None,
            };
            Some((n.name.clone(), n.op.kind().to_string(), i, o, b))
        })
        .collect()
}

/// Removes dead channels and unused bases to a fixed point; the result computes the same
/// function as the input (up to float rounding of folded biases).
pub fn shrink(model: &Model) -> Result<(Model, ShrinkReport)> {
    let dg0 = DependencyGraph::build(model)?;
    let before = layer_dims(model);
    let mut m = model.clone();
    let mut report = ShrinkReport::default();
    let max_iterations = model.nodes.len() * 4 + dg0.groups.iter().map(|g| g.channels).sum::<usize>() + 4;
    let last_plan = loop {
        report.iterations += 1;
        let dg = DependencyGraph::build(&m)?;
        let plan = plan_step(&m, &dg)?;
        apply_folds(&mut m, &plan.folds)?;
        apply_keep(&mut m, &dg, &plan.keep)?;
        let bases = drop_unused_bases(&mut m)?;
        report.removed_channels += plan.removed;
        report.folded_channels += plan.folded;
        report.removed_bases += bases;
        m.validate()?;
        if plan.removed == 0 && bases == 0 {
            break plan;
        }
        if report.iterations > max_iterations {
            return Err(CompressError::Invalid("shrink: no fixed point reached (this is a bug)".into()));
        }
    };
    let dg1 = DependencyGraph::build(&m)?;
    for ((g0, g1), kept) in dg0.groups.iter().zip(&dg1.groups).zip(&last_plan.constant_kept) {
        report.groups.push(ShrunkGroup {
            tensors: g0.tensors.iter().map(|t| t.name.clone()).collect(),
            channels_before: g0.channels,
            channels_after: g1.channels,
            pinned: g0.pinned.clone(),
            constant_kept: *kept,
        });
    }
    let after: HashMap<String, (usize, usize, Option<usize>)> = layer_dims(&m).into_iter().map(|(n, _, i, o, b)| (n, (i, o, b))).collect();
    for (name, kind, i, o, b) in before {
        let (ia, oa, ba) = after.get(&name).copied().unwrap_or((i, o, b));
        report.layers.push(ShrunkLayer {
            node: name,
            kind,
            in_before: i,
            in_after: ia,
            out_before: o,
            out_after: oa,
            bases_before: b,
            bases_after: ba,
        });
    }
    Ok((m, report))
}
