//! Fusion: which IR nodes become one step. A convolution absorbs the batchnorms that are the
//! sole readers of its output, then one residual add, then ReLU/Clip chains (one clamp); a
//! standalone add, batchnorm, pool or linear layer absorbs the activations after it. On the planar
//! backend a 1x1 -> k x k -> 1x1 chain of plain convolutions (a Tucker-2 convolution) is one
//! convolution step, with the last one's batchnorms, add and activations, and a convolution
//! absorbs a 2x2 max pool after it (and the activations after that) where its output tiles hold
//! whole pool windows (`ops::conv::planar_access::PoolEpi`), so the full-resolution map is
//! never written.

use std::collections::HashMap;

use penni_model::{Model, Op, Shape};

use crate::epilogue::{Act, Quant};
use crate::ops::elementwise::PointOp;

/// One step-to-be: IR nodes fused together, anchored at the last of them in node order.
pub(super) struct Group {
    anchor: usize,
    pub kind: GKind,
    /// Main input first; for convolutions the residuals follow.
    pub inputs: Vec<String>,
    pub output: String,
    pub act: Act,
    pub names: Vec<String>,
}

pub(super) enum GKind {
    /// A dense or decomposed convolution with the batchnorms folded into it, and the 2x2 max
    /// pool its epilogue computes, if any.
    Conv {
        node: usize,
        bns: Vec<usize>,
        pool: Option<usize>,
    },
    /// A 1x1 -> k x k -> 1x1 chain of dense convolutions, the batchnorms folded into the last.
    Chain {
        first: usize,
        core: usize,
        last: usize,
        bns: Vec<usize>,
    },
    Add,
    Affine {
        node: usize,
    },
    Act,
    Pool {
        node: usize,
    },
    Gap,
    Flatten,
    Linear {
        node: usize,
    },
    Softmax {
        log: bool,
    },
    Concat,
    Point(PointOp),
}

/// Who reads each tensor, for fusion decisions.
pub(super) struct Readers<'m> {
    model: &'m Model,
    count: HashMap<&'m str, usize>,
}

impl<'m> Readers<'m> {
    pub fn new(model: &'m Model) -> Self {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for n in &model.nodes {
            for i in &n.inputs {
                *count.entry(i.as_str()).or_default() += 1;
            }
        }
        Readers { model, count }
    }

    /// Whether any node reads `t`.
    pub fn is_read(&self, t: &str) -> bool {
        self.count.contains_key(t)
    }

    /// The node that is the only reader of `t` (read exactly once, and not the model output):
    /// only then can `t` disappear into a fused step.
    fn sole_reader(&self, t: &str) -> Option<usize> {
        if t == self.model.output || self.count.get(t).copied() != Some(1) {
            return None;
        }
        self.model.nodes.iter().position(|n| n.inputs.iter().any(|i| i == t))
    }

    /// Follows ReLU/Clip nodes that are the sole readers of `t`, composing them into `act`,
    /// and a quantizer after them, which ends the epilogue.
    fn absorb_acts(&self, t: &mut String, act: &mut Act, anchor: &mut usize, names: &mut Vec<String>, absorbed: &mut [bool]) {
        while let Some(j) = self.sole_reader(t) {
            if act.ends_with_quantizer() || absorbed[j] {
                break;
            }
            let node = &self.model.nodes[j];
            let next = match &node.op {
                Op::Relu => act.then(0.0, f32::INFINITY),
                Op::Clip { min, max } => act.then(*min, *max),
                Op::Activation(a) => match Quant::of(a).and_then(|q| act.then_quantize(q)) {
                    Some(next) => next,
                    None => break,
                },
                _ => break,
            };
            *act = next;
            absorbed[j] = true;
            *anchor = j;
            names.push(node.name.clone());
            *t = node.output.clone();
        }
    }

    /// The quantizer that alone reads `t`, if an add (not yet absorbed) alone reads its output.
    fn quantizer_before_add(&self, t: &str, absorbed: &[bool]) -> Option<(usize, Quant)> {
        let nodes = &self.model.nodes;
        let qi = self.sole_reader(t).filter(|&j| !absorbed[j])?;
        let Op::Activation(a) = &nodes[qi].op else { return None };
        let q = Quant::of(a)?;
        let j = self.sole_reader(&nodes[qi].output).filter(|&j| !absorbed[j])?;
        (matches!(nodes[j].op, Op::Add) && nodes[j].inputs.len() <= 4).then_some((qi, q))
    }

    /// The chain `i -> core -> last` starting at convolution `i`, if its intermediate maps are
    /// read only inside it.
    fn chain_from(&self, i: usize, absorbed: &[bool]) -> Option<(usize, usize)> {
        let nodes = &self.model.nodes;
        let conv = |j: usize| match &nodes[j].op {
            Op::Conv2d(c) if !absorbed[j] => Some(c),
            _ => None,
        };
        let Op::Conv2d(first) = &nodes[i].op else { return None };
        let core = self.sole_reader(&nodes[i].output)?;
        let last = self.sole_reader(&nodes[core].output)?;
        crate::ops::conv::planar_chain::chainable(first, conv(core)?, conv(last)?).then_some((core, last))
    }

    /// The 2x2 max pool that alone reads `t`, if the planar epilogue can compute it: windows
    /// of a stride-2 pool without padding, on a map 8, 16 or 32 wide whose tiles of 64 pixels
    /// hold whole rows of windows (a multiple of 64 / width rows).
    fn fusable_max_pool(&self, t: &str, shapes: &HashMap<String, Shape>, absorbed: &[bool]) -> Option<usize> {
        let j = self.sole_reader(t).filter(|&j| !absorbed[j])?;
        let Op::MaxPool2d(p) = &self.model.nodes[j].op else { return None };
        let Some(&Shape::Map { h, w, .. }) = shapes.get(t) else {
            return None;
        };
        let windows = p.kernel == [2, 2] && p.stride == [2, 2] && p.padding == [0; 4];
        (windows && matches!(w, 8 | 16 | 32) && h % (64 / w) == 0).then_some(j)
    }

    /// The model's nodes grouped into steps-to-be, in node order of their last node; `planar`:
    /// for the planar backend (which has the chain step and pool epilogues), `shapes`: every
    /// tensor's.
    pub fn groups(&self, planar: bool, shapes: &HashMap<String, Shape>) -> Vec<Group> {
        let nodes = &self.model.nodes;
        let mut absorbed = vec![false; nodes.len()];
        let mut groups = Vec::new();
        for i in 0..nodes.len() {
            if absorbed[i] {
                continue;
            }
            absorbed[i] = true;
            let node = &nodes[i];
            let mut t = node.output.clone();
            let mut act = Act::NONE;
            let mut anchor = i;
            let mut names = vec![node.name.clone()];
            let mut inputs = vec![node.inputs[0].clone()];
            let kind = match &node.op {
                Op::Conv2d(_) | Op::DecomposedConv2d(_) => {
                    let chain = if planar { self.chain_from(i, &absorbed) } else { None };
                    if let Some((core, last)) = chain {
                        for j in [core, last] {
                            absorbed[j] = true;
                            names.push(nodes[j].name.clone());
                        }
                        anchor = last;
                        t = nodes[last].output.clone();
                    }
                    let mut bns = Vec::new();
                    while let Some(j) = self.sole_reader(&t) {
                        if !matches!(nodes[j].op, Op::BatchNorm2d { .. }) || absorbed[j] {
                            break;
                        }
                        absorbed[j] = true;
                        bns.push(j);
                        anchor = j;
                        names.push(nodes[j].name.clone());
                        t = nodes[j].output.clone();
                    }
                    // a quantized model rounds the conv's result before the shortcut add: that
                    // quantizer opens the epilogue
                    if let Some((qi, q)) = self.quantizer_before_add(&t, &absorbed) {
                        absorbed[qi] = true;
                        anchor = qi;
                        names.push(nodes[qi].name.clone());
                        t = nodes[qi].output.clone();
                        act = Act::quantize_before_residuals(q);
                    }
                    if let Some(j) = self.sole_reader(&t) {
                        let add = &nodes[j];
                        if matches!(add.op, Op::Add) && !absorbed[j] && add.inputs.len() <= 4 {
                            absorbed[j] = true;
                            anchor = j;
                            names.push(add.name.clone());
                            let mut skipped = false;
                            for x in &add.inputs {
                                if !skipped && *x == t {
                                    skipped = true;
                                } else {
                                    inputs.push(x.clone());
                                }
                            }
                            t = add.output.clone();
                        }
                    }
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    // the activations commute with the max (all are monotone), so the epilogue
                    // applies them all before pooling
                    // (the integer PENNI step has no pool epilogue)
                    let quantized_penni = matches!(&node.op, Op::DecomposedConv2d(d) if d.basis_quant.is_some());
                    let pool = match chain {
                        None if planar && !quantized_penni => self.fusable_max_pool(&t, shapes, &absorbed),
                        _ => None,
                    };
                    if let Some(j) = pool {
                        absorbed[j] = true;
                        anchor = j;
                        names.push(nodes[j].name.clone());
                        t = nodes[j].output.clone();
                        self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    }
                    match chain {
                        Some((core, last)) => GKind::Chain { first: i, core, last, bns },
                        None => GKind::Conv { node: i, bns, pool },
                    }
                }
                Op::Add => {
                    inputs = node.inputs.clone();
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Add
                }
                Op::BatchNorm2d { .. } => {
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Affine { node: i }
                }
                Op::Relu | Op::Clip { .. } => {
                    let (lo, hi) = match node.op {
                        Op::Clip { min, max } => (min, max),
                        _ => (0.0, f32::INFINITY),
                    };
                    act = Act::NONE.then(lo, hi);
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Act
                }
                Op::MaxPool2d(_) | Op::AvgPool2d(_) => {
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Pool { node: i }
                }
                Op::GlobalAvgPool => GKind::Gap,
                Op::Flatten => GKind::Flatten,
                // rejected by Builder::new
                Op::Pad { .. } => continue,
                Op::Softmax { log } => GKind::Softmax { log: *log },
                Op::Concat => {
                    inputs = node.inputs.clone();
                    GKind::Concat
                }
                // a quantizer no epilogue took (after a pool, say) is an activation step
                Op::Activation(a) => match Quant::of(a) {
                    Some(q) => {
                        act = Act::NONE.then_quantize(q).expect("no quantizer yet");
                        GKind::Act
                    }
                    None => GKind::Point(PointOp::Unary(*a)),
                },
                Op::Mul => {
                    inputs = node.inputs.clone();
                    GKind::Point(PointOp::Mul)
                }
                Op::Linear { .. } => {
                    self.absorb_acts(&mut t, &mut act, &mut anchor, &mut names, &mut absorbed);
                    GKind::Linear { node: i }
                }
            };
            groups.push(Group {
                anchor,
                kind,
                inputs,
                output: t,
                act,
                names,
            });
        }
        groups.sort_by_key(|g| g.anchor);
        groups
    }
}
