//! PENNI step 3: magnitude pruning relative to each layer's spread. Per layer, every coefficient
//! with |a| < s * std(A) is set to exactly zero (std over all entries of the layer, population
//! form). 1x1 convs (on by default) and linear layers (off by default) use the same rule on their
//! weights. Keeping the zeros during fine-tuning is the trainer's job (`freeze_zeros`).

use std::collections::BTreeMap;

use penni_model::{Model, Op};
use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneOptions {
    /// Threshold in standard deviations of the layer's values.
    pub s: f32,
    pub prune_1x1: bool,
    pub prune_linear: bool,
    #[serde(default)]
    /// Per-layer threshold by node name, overriding `s` (0 leaves a layer unpruned).
    pub per_layer: BTreeMap<String, f32>,
    /// Whole input channels of decomposed layers whose coefficient norm is below `group_s` times
    /// the layer's mean channel norm are zeroed first (0: off).
    #[serde(default)]
    pub group_s: f32,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            s: 1.0,
            prune_1x1: true,
            prune_linear: false,
            per_layer: BTreeMap::new(),
            group_s: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrunedLayer {
    pub node: String,
    /// "coefficients" for a decomposed conv, "weight" for a 1x1 conv or linear layer.
    pub param: String,
    pub total: usize,
    /// Exact zeros after pruning (including those that were already zero).
    pub zeros: usize,
    /// Exact zeros before the threshold (already zero, or zeroed with their input channel):
    /// where a gradual pruning starts.
    #[serde(default)]
    pub zeros_before: usize,
    /// Input channels whose coefficients were zeroed as a group (`group_s`).
    #[serde(default)]
    pub zeroed_input_channels: usize,
    pub sparsity: f64,
    pub threshold: f32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    pub layers: Vec<PrunedLayer>,
    /// Zeros / entries over the decomposed layers' coefficients only.
    pub coefficient_sparsity: f64,
    /// Zeros / entries over every pruned tensor.
    pub total_sparsity: f64,
}

/// Population standard deviation in f64 (the spread of the layer's values).
fn std_dev(v: &[f32]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len() as f64;
    let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n;
    (v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// Zeros every entry below `s * std` in place; returns (threshold, zeros after).
pub fn prune_values(values: &mut [f32], s: f32) -> (f32, usize) {
    let threshold = (s as f64 * std_dev(values)) as f32;
    for v in values.iter_mut() {
        if v.abs() < threshold {
            *v = 0.0;
        }
    }
    (threshold, values.iter().filter(|v| **v == 0.0).count())
}

/// The tensor that pruning works on in `node`, if it is pruned.
/// Zeros every input channel c of an [N, C/groups, d] coefficient tensor whose norm
/// ||A[:, c, :]|| is below `group_s` times the mean channel norm; returns how many.
pub fn prune_input_channels(a: &mut [f32], n: usize, cg: usize, d: usize, group_s: f32) -> usize {
    if cg == 0 || a.len() != n * cg * d {
        return 0;
    }
    let norm = |a: &[f32], c: usize| -> f64 {
        (0..n)
            .flat_map(|o| (0..d).map(move |j| (o * cg + c) * d + j))
            .map(|i| (a[i] as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let norms: Vec<f64> = (0..cg).map(|c| norm(a, c)).collect();
    let limit = group_s as f64 * norms.iter().sum::<f64>() / cg as f64;
    let mut zeroed = 0;
    for (c, g) in norms.iter().enumerate() {
        if *g < limit {
            for o in 0..n {
                a[(o * cg + c) * d..(o * cg + c + 1) * d].fill(0.0);
            }
            zeroed += 1;
        }
    }
    zeroed
}

/// `model` with [`prune_input_channels`] applied to every decomposed layer.
pub fn prune_groups(model: &Model, group_s: f32) -> Result<Model> {
    let mut out = model.clone();
    for node in &mut out.nodes {
        if let Op::DecomposedConv2d(c) = &node.op {
            let (n, cg, d) = (c.conv.out_channels, c.conv.channels_per_group(), c.num_bases);
            prune_input_channels(&mut node.param_mut("coefficients")?.data, n, cg, d, group_s);
        }
    }
    Ok(out)
}

pub fn prunable_param(op: &Op, prune_1x1: bool, prune_linear: bool) -> Option<&'static str> {
    match op {
        Op::DecomposedConv2d(_) => Some("coefficients"),
        Op::Conv2d(c) if c.kernel[0] * c.kernel[1] == 1 && prune_1x1 => Some("weight"),
        Op::Linear { .. } if prune_linear => Some("weight"),
        _ => None,
    }
}

pub fn prune(model: &Model, opts: &PruneOptions) -> Result<(Model, PruneReport)> {
    model.validate()?;
    if !(opts.group_s.is_finite() && opts.group_s >= 0.0) {
        return Err(CompressError::Invalid(format!("prune: group_s must be >= 0, got {}", opts.group_s)));
    }
    if !(opts.s.is_finite() && opts.s > 0.0) {
        return Err(CompressError::Invalid(format!(
            "prune: s must be a positive number, got {}",
            opts.s
        )));
    }
    if let Some((name, s)) = opts.per_layer.iter().find(|(_, s)| !(s.is_finite() && **s >= 0.0)) {
        return Err(CompressError::Invalid(format!(
            "prune: the threshold of '{name}' must be >= 0, got {s}"
        )));
    }
    let mut out = model.clone();
    let mut report = PruneReport::default();
    let (mut coef_zeros, mut coef_total, mut all_zeros, mut all_total) = (0usize, 0usize, 0usize, 0usize);
    for node in &mut out.nodes {
        let Some(param) = prunable_param(&node.op, opts.prune_1x1, opts.prune_linear) else {
            continue;
        };
        let name = node.name.clone();
        let s = opts.per_layer.get(&name).copied().unwrap_or(opts.s);
        let groups = match &node.op {
            Op::DecomposedConv2d(c) if opts.group_s > 0.0 => Some((c.conv.out_channels, c.conv.channels_per_group(), c.num_bases)),
            _ => None,
        };
        let t = node.param_mut(param)?;
        let zeroed_input_channels = groups.map_or(0, |(n, cg, d)| prune_input_channels(&mut t.data, n, cg, d, opts.group_s));
        let zeros_before = t.data.iter().filter(|v| **v == 0.0).count();
        let (threshold, zeros) = prune_values(&mut t.data, s);
        let total = t.data.len();
        if param == "coefficients" {
            coef_zeros += zeros;
            coef_total += total;
        }
        all_zeros += zeros;
        all_total += total;
        report.layers.push(PrunedLayer {
            node: name,
            param: param.into(),
            total,
            zeros,
            zeros_before,
            zeroed_input_channels,
            sparsity: ratio(zeros, total),
            threshold,
        });
    }
    report.coefficient_sparsity = ratio(coef_zeros, coef_total);
    report.total_sparsity = ratio(all_zeros, all_total);
    Ok((out, report))
}

/// Zeros of each pruned layer at step `step` (1..=steps) of a gradual pruning toward `report`:
/// from `zeros_before` to `zeros` in equal parts.
pub fn gradual_zeros(report: &PruneReport, step: usize, steps: usize) -> BTreeMap<String, usize> {
    report
        .layers
        .iter()
        .map(|l| {
            let removed = l.zeros.saturating_sub(l.zeros_before);
            (l.node.clone(), l.zeros_before + removed * step.min(steps) / steps.max(1))
        })
        .collect()
}

/// `model` with the smallest-magnitude entries of each named layer's pruned tensor (see
/// [`prunable_param`]) zeroed until it holds the given number of zeros (ties: the earlier
/// entry first); zeros already there stay. One step of a gradual pruning, by current magnitudes.
pub fn prune_to_zeros(model: &Model, zeros: &BTreeMap<String, usize>, prune_1x1: bool, prune_linear: bool) -> Result<Model> {
    let mut out = model.clone();
    for node in &mut out.nodes {
        let Some(&target) = zeros.get(&node.name) else { continue };
        let Some(param) = prunable_param(&node.op, prune_1x1, prune_linear) else {
            return Err(CompressError::Invalid(format!(
                "gradual pruning: '{}' has no tensor that pruning works on",
                node.name
            )));
        };
        let t = node.param_mut(param)?;
        let have = t.data.iter().filter(|v| **v == 0.0).count();
        if target <= have {
            continue;
        }
        let mut live: Vec<usize> = (0..t.data.len()).filter(|&i| t.data[i] != 0.0).collect();
        live.sort_by(|&a, &b| t.data[a].abs().total_cmp(&t.data[b].abs()).then(a.cmp(&b)));
        for &i in live.iter().take(target - have) {
            t.data[i] = 0.0;
        }
    }
    Ok(out)
}

pub(crate) fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}
