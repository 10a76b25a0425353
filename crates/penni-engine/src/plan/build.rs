//! The plan builder: the backend for the model, each buffer's layout (with the padding its
//! consumers read), and one step per fused group, made by the op family's constructor.
//!
//! Adding an op: give it a `GKind` in `fuse`, a step type implementing `StepOp` in its family's
//! module under `crate::ops`, and a case in `Builder::group_step` that builds it.

use std::collections::HashMap;

use penni_model::batchnorm::Affine;
use penni_model::{Conv2d, DecomposedConv2d, Model, Node, Op, Shape};

use super::fuse::{GKind, Group, Readers};
use crate::error::EngineError;
use crate::layout::map_lays;
use crate::layout::{Lay, MapLay, PLay, planar_lays, same_layout_kind};
use crate::ops::conv::int8::{InputGrid, IntWeights};
use crate::ops::conv::planar_access::PoolEpi;
use crate::ops::conv::{self, ConvIo};
use crate::ops::decomposed::analysis::Coefs;
use crate::ops::decomposed::cost::{self, Choice};
use crate::ops::{concat, convert, decomposed, elementwise, linear, pool, softmax};
use crate::options::{IntKernels, Knobs, Strategy};
use crate::simd::{IntIsa, L};
use crate::step::{Step, StepOp, Val, ValId};

/// Largest (output vectors x kernel taps) of a layer on the planar backend (about 64 MB of
/// tables); a model with a larger layer runs on the channel-blocked backend.
const PLANAR_MAX_TAPS: u128 = 1 << 22;

/// Time of a planar dense convolution per multiply-accumulate slot, in percent of the
/// channel-blocked one's (measured on a 2-core AVX-512 VM: about 30-45 against 50-80 GMAC/s).
const PLANAR_RATE_PERCENT: u128 = 160;
/// Output vectors per register tile of the planar convolution kernels.
const PLANAR_TILE: usize = conv::planar_access::TILE;

/// Steps with fewer multiply-accumulates than this (10 to 20 microseconds) run on one thread:
/// measured on a 2-core VM, handing a step to a second thread costs several microseconds.
const SERIAL_MACS: u64 = 1_000_000;
/// Steps without multiply-accumulates that write fewer floats than this run on one thread.
const SERIAL_FLOATS: usize = 16 * 1024;

/// What the builder decided about a convolution before making its step.
struct ConvPrep {
    /// The batchnorms folded into it (identity if none).
    fold: Affine,
    /// For a decomposed convolution: its coefficient analysis and dataflow.
    decomposed: Option<(Coefs, Choice)>,
}

/// The composition of the batchnorms `nodes` (applied in order) on `channels` channels.
fn fold_batchnorms(nodes: &[&Node], channels: usize) -> Result<Affine, EngineError> {
    let mut fold: Option<Affine> = None;
    for n in nodes {
        let a = Affine::of_batchnorm(n)?;
        if a.scale.len() != channels {
            return Err(EngineError::Unsupported {
                node: n.name.clone(),
                message: format!("a batchnorm of {} channels on a tensor of {channels}", a.scale.len()),
            });
        }
        fold = Some(match fold {
            Some(f) => f.then(&a),
            None => a,
        });
    }
    Ok(fold.unwrap_or_else(|| Affine::identity(channels)))
}

fn channels(s: Shape) -> usize {
    match s {
        Shape::Map { c, .. } => c,
        Shape::Vector(n) => n,
    }
}

fn dims(s: Shape) -> (usize, usize, usize) {
    match s {
        Shape::Map { c, h, w } => (c, h, w),
        Shape::Vector(n) => (n, 1, 1),
    }
}

/// The tensors of `model` on an activation grid: quantize-dequantize outputs, and what max
/// pooling or a ReLU makes of them (the max of grid values, or zero, is on the grid).
pub(super) fn activation_grids(model: &Model) -> HashMap<String, InputGrid> {
    let mut grids = HashMap::new();
    for n in &model.nodes {
        let g = match &n.op {
            Op::Activation(a) => InputGrid::of(a),
            Op::MaxPool2d(_) | Op::Relu => n.inputs.first().and_then(|i| grids.get(i).copied()),
            _ => None,
        };
        if let Some(g) = g {
            grids.insert(n.output.clone(), g);
        }
    }
    grids
}

/// Whether the knobs let integer kernels run: on VNNI, or everywhere when forced.
pub(super) fn int8_allowed(knobs: &Knobs) -> bool {
    let vnni = IntIsa::for_isa(knobs.isa) == IntIsa::Vnni;
    knobs.int8 == IntKernels::Always || knobs.int8 == IntKernels::Vnni && vnni
}

/// A conversion step and the buffer it writes.
type Converted = (Box<dyn StepOp>, ValId);

/// The steps and buffers of one micro-batch, before placement.
pub(super) struct Built {
    pub steps: Vec<Step>,
    pub vals: Vec<Val>,
    pub out_val: ValId,
}

pub(super) struct Builder<'m> {
    model: &'m Model,
    shapes: &'m HashMap<String, Shape>,
    batch: usize,
    threads: usize,
    strategy: Strategy,
    knobs: Knobs,
    readers: Readers<'m>,
    /// The planar backend (else channel-blocked).
    planar: bool,
    /// Border each blocked map needs for the convolutions that read it.
    pads: HashMap<String, [usize; 4]>,
    convs: HashMap<usize, ConvPrep>,
    /// Tensors whose values lie on an activation grid (written by a quantize-dequantize, then
    /// maybe max-pooled or rectified): what an integer convolution may read as codes.
    grids: HashMap<String, InputGrid>,
    steps: Vec<Step>,
    vals: Vec<Val>,
    val_of: HashMap<String, ValId>,
}

impl<'m> Builder<'m> {
    pub fn new(
        model: &'m Model,
        shapes: &'m HashMap<String, Shape>,
        batch: usize,
        threads: usize,
        strategy: Strategy,
        knobs: Knobs,
    ) -> Result<Self, EngineError> {
        if let Some(n) = model.nodes.iter().find(|n| matches!(n.op, Op::Pad { .. })) {
            return Err(EngineError::Unsupported {
                node: n.name.clone(),
                message: "a Pad is run only when it is folded into the padding of the convs that read it".into(),
            });
        }
        let mut b = Builder {
            model,
            shapes,
            batch,
            threads,
            strategy,
            knobs,
            readers: Readers::new(model),
            planar: false,
            pads: HashMap::new(),
            convs: HashMap::new(),
            grids: activation_grids(model),
            steps: vec![],
            vals: vec![],
            val_of: HashMap::new(),
        };
        b.planar = knobs.planar.unwrap_or_else(|| b.planar_mode());
        Ok(b)
    }

    pub fn build(mut self) -> Result<Built, EngineError> {
        let model = self.model;
        let groups = self.readers.groups(self.planar, self.shapes);

        // 1. convolutions first: folds, dataflows, and the padding they need of their input
        for g in &groups {
            if let GKind::Conv { node, bns, .. } = &g.kind {
                self.prepare_conv(g, *node, bns)?;
            }
        }

        // 2. the model input, converted to the working layout if anything reads it
        let input_name = model.input.name.clone();
        if self.readers.is_read(&input_name) {
            let lay = self.lay_of(model.input_shape(), &input_name);
            let v = self.batch_val(lay)?;
            self.val_of.insert(input_name.clone(), v);
            let batch = self.batch;
            let op: Box<dyn StepOp> = match lay {
                Lay::Planar(p) => Box::new(convert::ToPlanar { dst: v, lay: p, batch }),
                Lay::Map(m) => Box::new(convert::ToMap { dst: v, lay: m, batch }),
                _ => return Err(EngineError::Internal("the model input is not a map".into())),
            };
            self.push(std::slice::from_ref(&input_name), op, vec![], vec![v]);
        }

        // 3. one step per group
        for g in &groups {
            match g.kind {
                GKind::Flatten => self.flatten_group(g)?,
                GKind::Softmax { log } => self.softmax_group(g, log)?,
                _ => self.group_step(g)?,
            }
        }

        // 4. the output, flat and in NCHW order
        let out_name = model.output.clone();
        let out_val = if model.producer(&out_name).is_none() {
            let len = model.input_shape().numel();
            let dst = self.batch_val(Lay::Flat { len })?;
            let op = Box::new(convert::CopyIn {
                dst,
                len: len * self.batch,
            });
            self.push(std::slice::from_ref(&out_name), op, vec![], vec![dst]);
            dst
        } else {
            let v = self.input_val(&out_name, "output")?;
            match self.flatten_step(v, "output to NCHW")? {
                Some((op, dst)) => {
                    self.push(std::slice::from_ref(&out_name), op, vec![v], vec![dst]);
                    dst
                }
                None => v,
            }
        };
        Ok(Built {
            steps: self.steps,
            vals: self.vals,
            out_val,
        })
    }

    /// Folds the batchnorms of conv group `g`, picks a decomposed layer's dataflow, and records
    /// the padding the convolution reads of its input.
    fn prepare_conv(&mut self, g: &Group, node: usize, bns: &[usize]) -> Result<(), EngineError> {
        let model = self.model;
        let n = &model.nodes[node];
        let bn_nodes: Vec<&Node> = bns.iter().map(|&j| &model.nodes[j]).collect();
        let fold = fold_batchnorms(&bn_nodes, channels(self.shape(&g.output)))?;
        let (need, decomposed) = match &n.op {
            Op::Conv2d(c) => (c.padding, None),
            Op::DecomposedConv2d(c) => {
                let co = Coefs::new(n, c, &fold)?;
                let hw = |t: &str| {
                    let (_, h, w) = dims(self.shape(t));
                    (h, w)
                };
                let choice = cost::choose(
                    c,
                    &co,
                    self.planar,
                    hw(&n.inputs[0]),
                    hw(&n.output),
                    self.batch,
                    self.threads,
                    self.strategy,
                    self.knobs.blocked_combination,
                    self.knobs.packed_combination,
                );
                // mix-first convolves the mixed maps, not the input: the input needs no border
                let pad = if !self.planar && choice.strategy == Strategy::MixFirst {
                    [0; 4]
                } else {
                    c.conv.padding
                };
                (pad, Some((co, choice)))
            }
            _ => return Err(EngineError::Internal(format!("'{}' is not a convolution", n.name))),
        };
        let e = self.pads.entry(g.inputs[0].clone()).or_default();
        for k in 0..4 {
            e[k] = e[k].max(need[k]);
        }
        self.convs.insert(node, ConvPrep { fold, decomposed });
        Ok(())
    }

    /// What an integer step of dense convolution `c` (weights `w`) reading `input` needs, when
    /// it can have one: the input's grid, the integer weights and the blocked layouts.
    fn int8_conv(&self, input: &str, c: &Conv2d, w: &[f32], io: &ConvIo) -> Option<(InputGrid, IntWeights, MapLay, MapLay)> {
        if !int8_allowed(&self.knobs) {
            return None;
        }
        let (Lay::Map(xl), Lay::Map(yl)) = (io.xl, io.yl) else {
            return None;
        };
        let xg = *self.grids.get(input)?;
        Some((xg, IntWeights::of(c, w)?, xl, yl))
    }

    /// The integer step of a PENNI layer with quantized basis maps (`rewrites` split those it
    /// cannot take into their stages).
    fn int8_penni(&self, n: &Node, c: &DecomposedConv2d, fold: &Affine, io: ConvIo) -> Result<Box<dyn StepOp>, EngineError> {
        let ip = self
            .grids
            .get(&n.inputs[0])
            .and_then(|&xg| decomposed::int8::IntPenni::of(n, c, xg));
        match (ip, io.xl, io.yl, io.pool) {
            (Some(ip), Lay::Planar(xl), Lay::Planar(yl), None) => {
                let b = n.params.get("bias").map(|t| t.data.as_slice());
                Ok(Box::new(decomposed::int8::QDecompStep::new(
                    n,
                    c,
                    &ip,
                    b,
                    fold,
                    io.x,
                    xl,
                    io.y,
                    yl,
                    io.res,
                    io.act,
                    io.batch,
                    io.threads,
                    IntIsa::for_isa(self.knobs.isa),
                )?))
            }
            _ => Err(EngineError::Internal(format!(
                "'{}': quantized basis maps without an integer planar step",
                n.name
            ))),
        }
    }

    /// The step of a group that writes one new buffer in the working layout.
    fn group_step(&mut self, g: &Group) -> Result<(), EngineError> {
        let model = self.model;
        let out_shape = self.shape(&g.output);
        let dst = self.batch_val(self.lay_of(out_shape, &g.output))?;
        self.val_of.insert(g.output.clone(), dst);
        let ins: Vec<ValId> = g.inputs.iter().map(|t| self.input_val(t, &g.names[0])).collect::<Result<_, _>>()?;
        let lays: Vec<Lay> = ins.iter().map(|&v| self.vals[v].lay).collect();
        let ylay = self.vals[dst].lay;
        let batch = self.batch;
        let op: Box<dyn StepOp> = match &g.kind {
            GKind::Conv { node, pool, .. } => {
                let n = &model.nodes[*node];
                let prep = self
                    .convs
                    .get(node)
                    .ok_or_else(|| EngineError::Internal(format!("'{}' was not prepared", n.name)))?;
                // with a pool in the epilogue, the convolution's own output (the pool's input)
                // is never allocated: the step writes the pooled map
                let (yl, pool) = match (pool, ylay) {
                    (Some(j), Lay::Planar(pooled)) => {
                        let t = &model.nodes[*j].inputs[0];
                        (self.lay_of(self.shape(t), t), Some(PoolEpi { lay: pooled }))
                    }
                    (Some(_), _) => {
                        return Err(EngineError::Internal(format!(
                            "'{}': a pool epilogue off the planar backend",
                            n.name
                        )));
                    }
                    (None, _) => (ylay, None),
                };
                let io = ConvIo {
                    x: ins[0],
                    xl: lays[0],
                    y: dst,
                    yl,
                    pool,
                    res: ins[1..].to_vec(),
                    rl: lays[1..].to_vec(),
                    act: g.act,
                    batch,
                    threads: self.threads,
                };
                match (&n.op, &prep.decomposed) {
                    (Op::Conv2d(c), _) => {
                        let b = n.params.get("bias").map(|t| t.data.as_slice());
                        let w = &n.param("weight")?.data;
                        match self.int8_conv(&n.inputs[0], c, w, &io) {
                            Some((xg, iw, xl, yl)) => {
                                let rl = map_lays(&io.rl)?;
                                Box::new(conv::int8::QConvStep::new(
                                    &n.name,
                                    c,
                                    &iw,
                                    xg,
                                    b,
                                    &prep.fold,
                                    io.x,
                                    xl,
                                    io.y,
                                    yl,
                                    io.res,
                                    rl,
                                    io.act,
                                    batch,
                                    self.threads,
                                    IntIsa::for_isa(self.knobs.isa),
                                )?)
                            }
                            None => conv::dense_step(&n.name, c, w, b, &prep.fold, io, String::new())?,
                        }
                    }
                    (Op::DecomposedConv2d(c), _) if c.basis_quant.is_some() => self.int8_penni(n, c, &prep.fold, io)?,
                    (Op::DecomposedConv2d(c), Some((co, choice))) => decomposed::step(n, c, &prep.fold, co, *choice, io)?,
                    _ => return Err(EngineError::Internal(format!("'{}' is not a convolution", n.name))),
                }
            }
            GKind::Chain { first, core, last, bns } => {
                let nodes = &model.nodes;
                let bn_nodes: Vec<&Node> = bns.iter().map(|&j| &nodes[j]).collect();
                let fold = fold_batchnorms(&bn_nodes, channels(out_shape))?;
                let part = |j: usize| -> Result<_, EngineError> {
                    let n = &nodes[j];
                    let Op::Conv2d(c) = &n.op else {
                        return Err(EngineError::Internal(format!("'{}' is not a convolution", n.name)));
                    };
                    Ok((
                        c,
                        n.param("weight")?.data.as_slice(),
                        n.params.get("bias").map(|t| t.data.as_slice()),
                    ))
                };
                let convs = conv::planar_chain::ChainConvs {
                    first: part(*first)?,
                    core: part(*core)?,
                    last: part(*last)?,
                };
                let (Lay::Planar(xl), Lay::Planar(yl)) = (lays[0], ylay) else {
                    return Err(EngineError::Internal("a Tucker chain off the planar backend".into()));
                };
                Box::new(conv::planar_chain::PChain::new(
                    &g.names[0],
                    convs,
                    &fold,
                    ins[0],
                    xl,
                    dst,
                    yl,
                    ins[1..].to_vec(),
                    g.act,
                    batch,
                    self.threads,
                )?)
            }
            GKind::Add | GKind::Act | GKind::Affine { .. } => {
                let affine = match g.kind {
                    GKind::Affine { node } => {
                        let n = &model.nodes[node];
                        Some(fold_batchnorms(&[n], channels(self.shape(&n.output)))?)
                    }
                    _ => None,
                };
                let label = match g.kind {
                    GKind::Add => format!("add x{}", ins.len()),
                    GKind::Affine { .. } => "batchnorm".into(),
                    _ => "activation".into(),
                };
                match ylay {
                    Lay::Planar(ol) => {
                        planar_lays(&lays)?;
                        Box::new(elementwise::PElt::new(ins.clone(), dst, ol, affine.as_ref(), g.act, batch, label))
                    }
                    _ => Box::new(elementwise::EltStep::new(
                        ins.clone(),
                        lays.clone(),
                        dst,
                        ylay,
                        affine.as_ref(),
                        g.act,
                        batch,
                        label,
                    )),
                }
            }
            GKind::Pool { node } => {
                let n = &model.nodes[*node];
                let (p, max) = match &n.op {
                    Op::MaxPool2d(p) => (p.clone(), true),
                    Op::AvgPool2d(p) => (p.clone(), false),
                    _ => return Err(EngineError::Internal(format!("'{}' is not a pool", n.name))),
                };
                match (lays[0], ylay) {
                    (Lay::Planar(xl), Lay::Planar(yl)) => Box::new(pool::PPool::new(ins[0], xl, dst, yl, p, max, g.act, batch)),
                    (Lay::Map(xl), Lay::Map(yl)) => Box::new(pool::PoolStep {
                        x: ins[0],
                        y: dst,
                        xl,
                        yl,
                        p,
                        max,
                        act: g.act,
                        batch,
                    }),
                    _ => return Err(EngineError::Internal("pool on a vector".into())),
                }
            }
            GKind::Gap => match (lays[0], ylay) {
                (Lay::Planar(xl), Lay::Planar(yl)) => Box::new(pool::PGap {
                    x: ins[0],
                    xl,
                    y: dst,
                    yl,
                    batch,
                }),
                (Lay::Map(xl), Lay::Map(yl)) => Box::new(pool::GapStep {
                    x: ins[0],
                    y: dst,
                    xl,
                    yl,
                    batch,
                }),
                _ => return Err(EngineError::Internal("global pool on a vector".into())),
            },
            GKind::Linear { node } => Box::new(linear::LinearStep::new(&model.nodes[*node], ins[0], dst, g.act, batch)?),
            GKind::Concat => {
                same_layout_kind(&lays, ylay)?;
                Box::new(concat::ConcatStep {
                    ins: ins.iter().copied().zip(lays.iter().copied()).collect(),
                    out: dst,
                    ol: ylay,
                    batch,
                })
            }
            GKind::Point(op) => {
                same_layout_kind(&lays, ylay)?;
                let (c, h, w) = dims(out_shape);
                let pins = g
                    .inputs
                    .iter()
                    .zip(&ins)
                    .zip(&lays)
                    .map(|((t, v), l)| {
                        let (_, ih, iw) = dims(self.shape(t));
                        (*v, *l, ih, iw)
                    })
                    .collect();
                Box::new(elementwise::PointStep {
                    op: *op,
                    ins: pins,
                    out: dst,
                    ol: ylay,
                    c,
                    h,
                    w,
                    batch,
                })
            }
            GKind::Flatten | GKind::Softmax { .. } => return Err(EngineError::Internal("flatten and softmax are planned apart".into())),
        };
        self.push(&g.names, op, ins, vec![dst]);
        Ok(())
    }

    fn flatten_group(&mut self, g: &Group) -> Result<(), EngineError> {
        let src = self.input_val(&g.inputs[0], &g.names[0])?;
        if let Some((op, dst)) = self.flatten_step(src, "flatten")? {
            self.val_of.insert(g.output.clone(), dst);
            self.push(&g.names, op, vec![src], vec![dst]);
        } else {
            // a vector is already flat: the output is the same buffer
            self.val_of.insert(g.output.clone(), src);
        }
        Ok(())
    }

    /// Softmax works on plain NCHW order, so its output is flat: fine for the model output and
    /// a flatten, the only readers allowed after a softmax over a feature map.
    fn softmax_group(&mut self, g: &Group, log: bool) -> Result<(), EngineError> {
        let (c, hw) = match self.shape(&g.output) {
            Shape::Map { c, h, w } => {
                if let Some(r) = self
                    .model
                    .nodes
                    .iter()
                    .find(|n| n.inputs.contains(&g.output) && !matches!(n.op, Op::Flatten))
                {
                    return Err(EngineError::Unsupported {
                        node: g.names[0].clone(),
                        message: format!(
                            "a softmax over a feature map may only end the network or feed a Flatten, not '{}'",
                            r.name
                        ),
                    });
                }
                (c, h * w)
            }
            Shape::Vector(n) => (n, 1),
        };
        let mut src = self.input_val(&g.inputs[0], &g.names[0])?;
        if let Some((op, flat)) = self.flatten_step(src, "to NCHW")? {
            self.push(&g.names, op, vec![src], vec![flat]);
            src = flat;
        }
        let dst = self.batch_val(Lay::Flat { len: c * hw })?;
        self.val_of.insert(g.output.clone(), dst);
        let op = Box::new(softmax::SoftmaxStep {
            src,
            dst,
            c,
            hw,
            log,
            batch: self.batch,
        });
        self.push(&g.names, op, vec![src], vec![dst]);
        Ok(())
    }

    /// The step that turns map `src` into plain NCHW order, and its output (None: already flat).
    fn flatten_step(&mut self, src: ValId, label: &'static str) -> Result<Option<Converted>, EngineError> {
        let batch = self.batch;
        Ok(match self.vals[src].lay {
            Lay::Map(m) => {
                let dst = self.batch_val(Lay::Flat { len: m.c * m.h * m.w })?;
                let op = convert::ToFlat {
                    src,
                    dst,
                    lay: m,
                    batch,
                    label,
                };
                Some((Box::new(op), dst))
            }
            Lay::Planar(p) => {
                let dst = self.batch_val(Lay::Flat { len: p.c * p.h * p.w })?;
                let op = convert::PToFlat {
                    src,
                    lay: p,
                    dst,
                    batch,
                    label,
                };
                Some((Box::new(op), dst))
            }
            _ => None,
        })
    }

    /// The layout of tensor `t` of shape `shape` on this plan's backend.
    fn lay_of(&self, shape: Shape, t: &str) -> Lay {
        let p = self.pads.get(t).copied().unwrap_or_default();
        match shape {
            // planar maps have no border: kernels mask the lanes that fall outside
            Shape::Map { c, h, w } if self.planar => Lay::Planar(PLay { c, h, w }),
            Shape::Map { c, h, w } => Lay::Map(MapLay { c, h, w, pad: p }),
            Shape::Vector(len) => Lay::Flat { len },
        }
    }

    fn new_val(&mut self, lay: Lay, size: usize) -> ValId {
        self.vals.push(Val { lay, size, off: 0 });
        self.vals.len() - 1
    }

    /// A per-image buffer of the given layout for the whole batch.
    fn batch_val(&mut self, lay: Lay) -> Result<ValId, EngineError> {
        let per = match lay {
            Lay::Map(m) => m.checked_img(),
            Lay::Planar(p) => p.checked_img(),
            Lay::Flat { len } => Some(len),
            Lay::Scratch => Some(0),
        };
        let size = per
            .and_then(|p| p.checked_mul(self.batch))
            .ok_or(EngineError::TooLarge(u128::MAX))?;
        Ok(self.new_val(lay, size))
    }

    fn shape(&self, t: &str) -> Shape {
        self.shapes[t]
    }

    /// Adds step `op`, with the scratch buffers it asks for appended to its writes.
    fn push(&mut self, names: &[String], mut op: Box<dyn StepOp>, reads: Vec<ValId>, mut writes: Vec<ValId>) {
        for (slot, floats) in op.scratch_floats().into_iter().enumerate() {
            let v = self.new_val(Lay::Scratch, floats.max(16));
            op.set_scratch(slot, v);
            writes.push(v);
        }
        let macs = op.macs();
        // a step of a few microseconds runs on one thread: handing out its tasks and waiting
        // for the others would cost about as much as it saves
        let floats: usize = writes.iter().map(|&v| self.vals[v].size).sum();
        let serial = if macs > 0 {
            op.f32_equivalent_macs() < SERIAL_MACS
        } else {
            floats < SERIAL_FLOATS
        };
        self.steps.push(Step {
            name: names.join("+"),
            kind: op.describe(),
            macs,
            serial,
            op,
            reads,
            writes,
        });
    }

    fn input_val(&self, t: &str, node: &str) -> Result<ValId, EngineError> {
        self.val_of
            .get(t)
            .copied()
            .ok_or_else(|| EngineError::Internal(format!("tensor '{t}' read by '{node}' has no buffer")))
    }

    /// Planar backend when most convolution work is decomposed (a PENNI model), blocked
    /// otherwise. Dense-equivalent MACs of k>1 dense convolutions are compared with those of
    /// decomposed ones.
    fn planar_mode(&self) -> bool {
        // per convolution, what it would cost on each backend (multiply-accumulates including
        // the lanes each wastes); `planar` and `blocked` sum the margins each side wins by
        let (mut planar, mut blocked) = (0u128, 0u128);
        for n in &self.model.nodes {
            let (oh, ow) = match self.shapes.get(&n.output) {
                Some(Shape::Map { h, w, .. }) => (*h, *w),
                _ => continue,
            };
            let out = (oh * ow) as u128;
            let (spec, decomposed): (Conv2d, bool) = match &n.op {
                Op::Conv2d(c) => (*c, false),
                // the integer PENNI step is planar only
                Op::DecomposedConv2d(c) if c.basis_quant.is_some() => return true,
                Op::DecomposedConv2d(c) => (c.conv, true),
                _ => continue,
            };
            let kk = (spec.kernel[0] * spec.kernel[1]) as u128;
            // the planar kernels keep a (vector, tap) table per layer: refuse absurd sizes
            if out.div_ceil(16) * kk > PLANAR_MAX_TAPS {
                return false;
            }
            let (cg, og) = (spec.in_channels / spec.groups, spec.out_channels / spec.groups);
            let work = (og * cg * spec.groups) as u128 * kk * out;
            if decomposed {
                planar += work;
                continue;
            }
            if spec.groups > 1 {
                if kk > 1 {
                    blocked += work;
                }
                continue;
            }
            // blocked computes whole 16-channel blocks: a convolution with few channels (a
            // Tucker-2 factor, a stem) wastes most of its lanes there; planar computes whole
            // 16-pixel vectors in tiles of TILE, which small maps fill badly
            let lanes = |c: usize| c.div_ceil(L) as u128 * L as u128;
            let blocked_cost = lanes(og) * lanes(cg) * kk * out;
            let (_, _, iw) = dims(self.shape(&n.inputs[0]));
            let flat = (spec.stride == [1, 1] && ow == iw) || (spec.stride != [1, 1] && ow < L);
            let nvec = if flat { (oh * ow).div_ceil(L) } else { oh * ow.div_ceil(L) } as u128;
            let slots = nvec.max((PLANAR_TILE as u128).div_ceil(self.batch as u128)) * L as u128;
            let planar_cost = (og * cg) as u128 * kk * slots * PLANAR_RATE_PERCENT / 100;
            if blocked_cost > planar_cost {
                planar += blocked_cost - planar_cost;
            } else {
                blocked += planar_cost - blocked_cost;
            }
        }
        planar > 0 && planar >= blocked
    }
}
