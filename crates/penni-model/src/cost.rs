//! Parameter and multiply-accumulate counts, per layer and in total.
//!
//! Two ways of counting, because papers and deployments count differently:
//! - `paper`: conv and linear weights plus PENNI coefficients, non-zeros only (a pruned entry is
//!   not stored); MACs of conv and linear layers, a decomposed conv counted as its dense basis
//!   stage (H'W' * C * d * k*k) plus its combination stage by non-zeros (nnz(A) * H'W').
//! - `all`: everything a deployed model stores and computes: `paper` plus bases, biases and
//!   batchnorm scale/shift (running statistics are not learned and not counted); MACs plus one per
//!   output element for each bias and batchnorm.
//!
//! `macs_basis` is the part of `macs_paper` spent in the basis stages of decomposed convs: the
//! floor that pruning coefficients cannot lower (only removing input channels or bases does).

use serde::Serialize;

use crate::error::Result;
use crate::graph::{Model, Op, Shape};

#[derive(Clone, Debug, Serialize)]
pub struct LayerCost {
    pub node: String,
    pub kind: &'static str,
    pub input_shapes: Vec<Shape>,
    pub output_shape: Shape,
    pub params_paper: u64,
    pub params_all: u64,
    pub macs_paper: u64,
    pub macs_all: u64,
    pub macs_basis: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub params_paper: u64,
    pub params_all: u64,
    pub macs_paper: u64,
    pub macs_all: u64,
    pub macs_basis: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelCost {
    pub layers: Vec<LayerCost>,
    pub totals: Totals,
}

pub fn model_cost(model: &Model) -> Result<ModelCost> {
    let shapes = model.validate()?;
    let mut layers = Vec::with_capacity(model.nodes.len());
    let mut totals = Totals::default();
    for node in &model.nodes {
        let input_shapes: Vec<Shape> = node.inputs.iter().map(|i| shapes[i]).collect();
        let out = shapes[&node.output];
        let pixels = match out {
            Shape::Map { h, w, .. } => (h * w) as u64,
            Shape::Vector(_) => 1,
        };
        let out_elems = out.numel() as u64;
        let nnz = |p: &str| node.params.get(p).map_or(0, |t| t.nnz() as u64);
        let numel = |p: &str| node.params.get(p).map_or(0, |t| t.numel() as u64);
        let mut basis = 0;
        let (pp, pa, mp, ma) = match &node.op {
            Op::Conv2d(c) => {
                let w = nnz("weight");
                let b = numel("bias");
                (w, w + b, w * pixels, w * pixels + if c.bias { out_elems } else { 0 })
            }
            Op::DecomposedConv2d(c) => {
                let a = nnz("coefficients");
                let bases = numel("bases");
                let b = numel("bias");
                let k = (c.conv.kernel[0] * c.conv.kernel[1]) as u64;
                let stage1 = pixels * c.conv.in_channels as u64 * c.num_bases as u64 * k;
                let stage2 = a * pixels;
                basis = stage1;
                let macs = stage1 + stage2;
                (a, a + bases + b, macs, macs + if c.conv.bias { out_elems } else { 0 })
            }
            Op::BatchNorm2d { channels, .. } => (0, 2 * *channels as u64, 0, out_elems),
            Op::Linear { bias, .. } => {
                let w = nnz("weight");
                let b = numel("bias");
                (w, w + b, w, w + if *bias { out_elems } else { 0 })
            }
            _ => (0, 0, 0, 0),
        };
        totals.params_paper += pp;
        totals.params_all += pa;
        totals.macs_paper += mp;
        totals.macs_all += ma;
        totals.macs_basis += basis;
        layers.push(LayerCost {
            node: node.name.clone(),
            kind: node.op.kind(),
            input_shapes,
            output_shape: out,
            params_paper: pp,
            params_all: pa,
            macs_paper: mp,
            macs_all: ma,
            macs_basis: basis,
        });
    }
    Ok(ModelCost { layers, totals })
}
