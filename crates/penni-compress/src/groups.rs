//! The channel-dependency graph: which tensors must lose the same channels together.
//!
//! Channel-wise ops (batchnorm, activations, pools, global pooling, flatten, depthwise convs
//! with one filter per channel, and every input and the output of an Add or a Mul, such as a
//! squeeze-and-excitation scale) do not mix channels,
//! so channel k of their input *is* channel k of their output: all those tensors form one
//! [`ChannelGroup`], and a channel can only leave the group as a whole. Channel-mixing layers (conv, decomposed conv, linear) sit on group borders: they
//! *produce* the channels of their output group (one weight row per channel) and *consume* the
//! channels of their input group (one weight column, or a block of columns after a flatten).
//! A residual network therefore yields one group per stage (every block's output and shortcut),
//! which is exactly the coupling the shrinking pass has to respect. A softmax keeps the channel
//! count but normalises over all channels, so removing any channel would change every output:
//! its group is pinned. A concat starts a new group (its output stacks the channels of several
//! groups); removing channels across it is not done: the groups it reads and writes are pinned.

use std::collections::HashMap;

use penni_model::{Conv2d, Model, Op, Shape};
use serde::Serialize;

use crate::error::Result;

/// A tensor of a group and how many values one channel of it holds per example (h*w for a
/// feature map, h*w of the map it came from for a flattened vector, 1 for linear features).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupTensor {
    pub name: String,
    pub unit: usize,
}

/// A channel-mixing node that reads a tensor of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Consumer {
    /// Index into `model.nodes`.
    pub node: usize,
    pub tensor: String,
    /// Input columns per channel (1 for a conv, h*w for a linear layer after a flatten).
    pub unit: usize,
}

/// Tensors whose channels are coupled, with the layers on its border.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChannelGroup {
    /// Number of channels every tensor of the group has.
    pub channels: usize,
    /// Members in model order (the model input first when it belongs here).
    pub tensors: Vec<GroupTensor>,
    /// Conv / decomposed conv / linear nodes whose output is a member (they emit the channels).
    pub producers: Vec<usize>,
    /// Channel-wise nodes whose output is a member (their inputs are members too), model order.
    pub passthrough: Vec<usize>,
    /// Conv / decomposed conv / linear nodes that read a member.
    pub consumers: Vec<Consumer>,
    /// Why the channels of this group must not change (empty: they may).
    pub pinned: Vec<String>,
}

impl ChannelGroup {
    pub fn is_pinned(&self) -> bool {
        !self.pinned.is_empty()
    }
}

/// All channel groups of a model. Built from the graph alone; rebuilding it after shrinking
/// gives the same groups in the same order (the topology does not change).
#[derive(Clone, Debug, Serialize)]
pub struct DependencyGraph {
    pub groups: Vec<ChannelGroup>,
    #[serde(skip)]
    tensor_group: HashMap<String, usize>,
}

/// Whether an op mixes channels (and so starts a new group at its output).
pub fn is_mixing(op: &Op) -> bool {
    matches!(op, Op::Conv2d(_) | Op::DecomposedConv2d(_) | Op::Linear { .. }) && !is_depthwise(op)
}

/// A dense depthwise conv with one filter per channel (groups = in = out channels): output
/// channel k reads input channel k only, so it is channel-wise like a batchnorm.
pub fn is_depthwise(op: &Op) -> bool {
    matches!(op, Op::Conv2d(c) if depthwise(c))
}

pub fn depthwise(c: &Conv2d) -> bool {
    c.groups > 1 && c.groups == c.in_channels && c.groups == c.out_channels
}

/// Whether an op's output starts a new group: channel-mixing layers, and concat.
fn starts_group(op: &Op) -> bool {
    is_mixing(op) || matches!(op, Op::Concat)
}

fn conv_groups(op: &Op) -> usize {
    match op {
        Op::Conv2d(c) => c.groups,
        Op::DecomposedConv2d(c) => c.conv.groups,
        _ => 1,
    }
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

impl DependencyGraph {
    pub fn build(model: &Model) -> Result<Self> {
        let shapes = model.validate()?;
        // tensor 0 is the model input, tensor i+1 the output of node i
        let mut index: HashMap<&str, usize> = HashMap::new();
        index.insert(model.input.name.as_str(), 0);
        for (i, n) in model.nodes.iter().enumerate() {
            index.insert(n.output.as_str(), i + 1);
        }
        let names: Vec<&str> = std::iter::once(model.input.name.as_str())
            .chain(model.nodes.iter().map(|n| n.output.as_str()))
            .collect();
        let mut parent: Vec<usize> = (0..names.len()).collect();
        for (i, n) in model.nodes.iter().enumerate() {
            if starts_group(&n.op) {
                continue;
            }
            for inp in &n.inputs {
                let (a, b) = (find(&mut parent, index[inp.as_str()]), find(&mut parent, i + 1));
                if a != b {
                    // keep the earlier tensor as the root so group order follows the model
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
        let mut root_group: HashMap<usize, usize> = HashMap::new();
        let mut groups: Vec<ChannelGroup> = Vec::new();
        let mut tensor_group = HashMap::new();
        for t in 0..names.len() {
            let r = find(&mut parent, t);
            let g = *root_group.entry(r).or_insert_with(|| {
                groups.push(ChannelGroup {
                    channels: 0,
                    tensors: vec![],
                    producers: vec![],
                    passthrough: vec![],
                    consumers: vec![],
                    pinned: vec![],
                });
                groups.len() - 1
            });
            tensor_group.insert(names[t].to_string(), g);
            groups[g].tensors.push(GroupTensor {
                name: names[t].to_string(),
                unit: 0,
            });
            if t == 0 {
                groups[g].pinned.push(format!("holds the model input '{}'", names[0]));
            } else {
                let node = &model.nodes[t - 1];
                if is_mixing(&node.op) {
                    groups[g].producers.push(t - 1);
                    if conv_groups(&node.op) > 1 {
                        groups[g].pinned.push(format!("written by grouped conv '{}'", node.name));
                    }
                } else if matches!(node.op, Op::Concat) {
                    groups[g].pinned.push(format!("written by concat '{}'", node.name));
                } else {
                    groups[g].passthrough.push(t - 1);
                    if matches!(node.op, Op::Softmax { .. }) {
                        groups[g].pinned.push(format!("normalised by softmax '{}'", node.name));
                    }
                }
            }
            if names[t] == model.output {
                groups[g].pinned.push(format!("holds the model output '{}'", model.output));
            }
        }
        // channel count: feature maps say it directly, linear outputs by their features
        for g in &mut groups {
            let mut candidates = Vec::new();
            for t in &g.tensors {
                match shapes[&t.name] {
                    Shape::Map { c, .. } => candidates.push(c),
                    Shape::Vector(n) => {
                        if model
                            .producer(&t.name)
                            .is_some_and(|p| matches!(model.nodes[p].op, Op::Linear { .. }))
                        {
                            candidates.push(n);
                        }
                    }
                }
            }
            g.channels = candidates.first().copied().unwrap_or_else(|| shapes[&g.tensors[0].name].numel());
            if candidates.iter().any(|c| *c != g.channels) {
                g.pinned
                    .push("couples feature-map channels with linear features of another granularity".into());
            }
            for t in &mut g.tensors {
                let numel = shapes[&t.name].numel();
                if g.channels > 0 && numel % g.channels == 0 {
                    t.unit = numel / g.channels;
                } else {
                    t.unit = 1;
                    g.pinned.push(format!(
                        "tensor '{}' ({} values) does not split into {} channels",
                        t.name, numel, g.channels
                    ));
                }
            }
        }
        for (i, n) in model.nodes.iter().enumerate() {
            if matches!(n.op, Op::Concat) {
                for inp in &n.inputs {
                    let g = tensor_group[inp.as_str()];
                    groups[g].pinned.push(format!("read by concat '{}'", n.name));
                }
            }
            if !is_mixing(&n.op) {
                continue;
            }
            for inp in &n.inputs {
                let g = tensor_group[inp.as_str()];
                let unit = groups[g].tensors.iter().find(|t| &t.name == inp).map_or(1, |t| t.unit);
                // a conv reads a channel as one plane; a linear layer reads its block of columns
                let unit = if matches!(n.op, Op::Linear { .. }) { unit } else { 1 };
                groups[g].consumers.push(Consumer {
                    node: i,
                    tensor: inp.clone(),
                    unit,
                });
                if conv_groups(&n.op) > 1 {
                    groups[g].pinned.push(format!("read by grouped conv '{}'", n.name));
                }
            }
        }
        Ok(Self { groups, tensor_group })
    }

    /// Index of the group a tensor belongs to.
    pub fn group_index(&self, tensor: &str) -> Option<usize> {
        self.tensor_group.get(tensor).copied()
    }

    pub fn group_of(&self, tensor: &str) -> Option<&ChannelGroup> {
        self.group_index(tensor).map(|g| &self.groups[g])
    }

    /// Values per channel of a member tensor.
    pub fn unit(&self, tensor: &str) -> Option<usize> {
        self.group_of(tensor)?.tensors.iter().find(|t| t.name == tensor).map(|t| t.unit)
    }
}
