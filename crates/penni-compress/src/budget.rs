//! Budget mode: meet a cost budget (a fraction of the baseline's paper-style MACs) at the least
//! loss of validation accuracy, by choosing per layer the number of bases d (before retraining)
//! and the pruning threshold s (after it).
//!
//! Both choices work the same way, as a layer-wise sensitivity analysis:
//! 1. for every budgeted layer and every candidate setting, change that layer alone and measure
//!    the whole model on the validation split (the trainer's `evaluate_with_loss`: top-1 and
//!    mean cross-entropy) and the layer's cost;
//! 2. start every layer at its best candidate (lowest validation loss; 1 - top-1 where the
//!    trainer gives no loss: the loss resolves changes of one layer that top-1 on 5,000 examples
//!    cannot) and, while the predicted total is over the budget, make the move (one layer to a
//!    cheaper candidate) that raises the loss least per unit of cost saved; the changes of
//!    single layers are taken as additive;
//! 3. then give accuracy back: move layers to better candidates wherever the total stays within
//!    the budget.
//!
//! The d stage cannot know how sparse the coefficients will be after retraining, so it costs a
//! candidate with the combination stage at `coefficient_density` (the fraction of coefficients a
//! retrained layer keeps: about 0.1 after PENNI's L1 retraining in `experiments/`); the accuracy of
//! a candidate is that of the SVD factors before retraining, which ranks layers by how much they
//! lose, not by what they end at. The prune stage is exact in cost: the MACs after pruning are the
//! predicted ones, and shrinking can only lower them.

use std::collections::BTreeMap;

use penni_model::{Model, Op, model_cost};
use serde::{Deserialize, Serialize};

use crate::decompose::{DecomposeOptions, decompose};
use crate::error::{CompressError, Result};
use crate::prune::{prunable_param, prune_values};
use crate::training::Evaluation;

/// What a budget stage may choose from, and how much it may spend.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetOptions {
    /// The budget as a fraction of the baseline's MACs (paper-style), in (0, 1].
    pub target_macs: f64,
    /// Candidate numbers of bases (clamped to k*k per layer).
    pub d_choices: Vec<usize>,
    /// Candidate pruning thresholds, in standard deviations of a layer's values.
    pub s_choices: Vec<f64>,
    /// Fraction of coefficients assumed kept after pruning, to cost the combination stage when
    /// choosing d.
    pub coefficient_density: f64,
}

/// One candidate setting of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// d or s.
    pub value: f64,
    /// Predicted MACs (paper-style) of the layer with this setting.
    pub macs: u64,
    /// Validation top-1 of the model with only this layer changed.
    pub top1: f32,
    /// Its validation loss, when the trainer measures one.
    #[serde(default)]
    pub loss: Option<f32>,
}

impl Candidate {
    /// What the choice minimises: the validation loss, or 1 - top-1 without one.
    fn badness(&self) -> f64 {
        self.loss.map_or(1.0 - self.top1 as f64, |l| l as f64)
    }
}

/// The choice for one layer, with everything it was chosen from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerChoice {
    pub node: String,
    /// Index into `candidates`.
    pub chosen: usize,
    pub candidates: Vec<Candidate>,
}

impl LayerChoice {
    pub fn choice(&self) -> &Candidate {
        &self.candidates[self.chosen]
    }
}

/// One stage of the budget mode (bases or pruning).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetStage {
    /// "d" or "s".
    pub parameter: String,
    /// Validation top-1 (and loss) of the model the candidates were measured against.
    pub reference_top1: f32,
    #[serde(default)]
    pub reference_loss: Option<f32>,
    pub layers: Vec<LayerChoice>,
    /// MACs of the layers that this stage does not choose for.
    pub fixed_macs: u64,
    /// Predicted MACs of the whole model with the choices.
    pub predicted_macs: u64,
    /// Predicted loss of validation top-1: the sum of the chosen candidates' single-layer drops.
    pub predicted_drop: f32,
    /// Predicted rise of the validation loss, summed the same way.
    #[serde(default)]
    pub predicted_loss_rise: Option<f32>,
    /// Whether the predicted MACs are within the budget.
    pub met: bool,
}

/// What the budget mode chose and predicted; the phase records hold what was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetReport {
    pub target_macs_fraction: f64,
    pub baseline_macs: u64,
    pub target_macs: u64,
    pub coefficient_density: f64,
    pub bases: Option<BudgetStage>,
    pub prune: Option<BudgetStage>,
}

impl BudgetReport {
    pub fn new(baseline: &Model, opts: &BudgetOptions) -> Result<Self> {
        let baseline_macs = model_cost(baseline)?.totals.macs_paper;
        Ok(Self {
            target_macs_fraction: opts.target_macs,
            baseline_macs,
            target_macs: (baseline_macs as f64 * opts.target_macs).floor() as u64,
            coefficient_density: opts.coefficient_density,
            bases: None,
            prune: None,
        })
    }
}

/// Greedy choice under a budget: `layers[i]` is layer i's candidates, index 0 the most
/// accurate. Returns the chosen index per layer.
fn choose(layers: &[Vec<Candidate>], fixed: u64, budget: u64) -> Vec<usize> {
    let mut at = vec![0usize; layers.len()];
    let total = |at: &[usize]| fixed + at.iter().zip(layers).map(|(i, c)| c[*i].macs).sum::<u64>();
    // accuracy lost per MAC saved; a move that loses nothing is taken first, biggest saving first
    while total(&at) > budget {
        let mut best: Option<(f64, usize, usize)> = None;
        for (l, cands) in layers.iter().enumerate() {
            let cur = &cands[at[l]];
            for (j, c) in cands.iter().enumerate() {
                if c.macs >= cur.macs {
                    continue;
                }
                let lost = (c.badness() - cur.badness()).max(0.0) + 1e-9;
                let ratio = lost / (cur.macs - c.macs) as f64;
                if best.is_none_or(|(r, _, _)| ratio < r) {
                    best = Some((ratio, l, j));
                }
            }
        }
        let Some((_, l, j)) = best else { break };
        at[l] = j;
    }
    // give accuracy back where the budget allows: the largest gain that still fits, repeatedly
    loop {
        let now = total(&at);
        if now > budget {
            break;
        }
        let mut best: Option<(f64, usize, usize)> = None;
        for (l, cands) in layers.iter().enumerate() {
            let cur = &cands[at[l]];
            for (j, c) in cands.iter().enumerate() {
                let gain = cur.badness() - c.badness();
                if gain <= 0.0 || now - cur.macs + c.macs > budget {
                    continue;
                }
                if best.is_none_or(|(g, _, _)| gain > g) {
                    best = Some((gain, l, j));
                }
            }
        }
        let Some((_, l, j)) = best else { break };
        at[l] = j;
    }
    at
}

fn stage(
    parameter: &str,
    reference: Evaluation,
    nodes: Vec<String>,
    candidates: Vec<Vec<Candidate>>,
    fixed_macs: u64,
    budget: u64,
) -> BudgetStage {
    let at = choose(&candidates, fixed_macs, budget);
    let layers: Vec<LayerChoice> = nodes
        .into_iter()
        .zip(candidates)
        .zip(&at)
        .map(|((node, candidates), chosen)| LayerChoice {
            node,
            chosen: *chosen,
            candidates,
        })
        .collect();
    let predicted_macs = fixed_macs + layers.iter().map(|l| l.choice().macs).sum::<u64>();
    let predicted_drop = layers.iter().map(|l| (reference.top1 - l.choice().top1).max(0.0)).sum();
    let predicted_loss_rise = reference.loss.and_then(|r| {
        layers
            .iter()
            .map(|l| l.choice().loss.map(|c| (c - r).max(0.0)))
            .sum::<Option<f32>>()
    });
    BudgetStage {
        parameter: parameter.into(),
        reference_top1: reference.top1,
        reference_loss: reference.loss,
        predicted_loss_rise,
        layers,
        fixed_macs,
        predicted_macs,
        predicted_drop,
        met: predicted_macs <= budget,
    }
}

fn checked(e: Evaluation, what: &str) -> Result<Evaluation> {
    if !(e.top1.is_finite() && (0.0..=1.0).contains(&e.top1)) {
        return Err(CompressError::Trainer(format!(
            "{what}: evaluate returned top-1 {}, expected a fraction in [0, 1]",
            e.top1
        )));
    }
    if let Some(l) = e.loss.filter(|l| !(l.is_finite() && *l >= 0.0)) {
        return Err(CompressError::Trainer(format!(
            "{what}: evaluate returned loss {l}, expected a finite number >= 0"
        )));
    }
    Ok(e)
}

/// `model` with node `name` taken from `other` (same name, inputs and output).
fn with_node_from(model: &Model, other: &Model, name: &str) -> Result<Model> {
    let mut m = model.clone();
    let src = other
        .node(name)
        .ok_or_else(|| CompressError::Invalid(format!("budget: no layer '{name}' in the decomposed model")))?;
    let dst = m
        .nodes
        .iter_mut()
        .find(|n| n.name == name)
        .ok_or_else(|| CompressError::Invalid(format!("budget: no layer '{name}' in the model")))?;
    *dst = src.clone();
    Ok(m)
}

/// Keeps the `density` fraction of largest-magnitude values, zeroing the rest.
fn keep_largest(values: &mut [f32], density: f64) {
    let keep = ((values.len() as f64 * density).ceil() as usize).min(values.len());
    if keep == values.len() {
        return;
    }
    let mut mags: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    let (_, kth, _) = mags.select_nth_unstable_by(values.len() - keep, |a, b| a.total_cmp(b));
    let threshold = *kth;
    let mut kept = 0;
    // ties at the threshold: keep exactly `keep` values
    for v in values.iter_mut() {
        if v.abs() > threshold {
            kept += 1;
        }
    }
    for v in values.iter_mut() {
        if v.abs() < threshold || (v.abs() == threshold && kept >= keep) {
            *v = 0.0;
        } else if v.abs() == threshold {
            kept += 1;
        }
    }
}

fn layer_macs(model: &Model, name: &str) -> Result<u64> {
    let cost = model_cost(model)?;
    Ok(cost.layers.iter().find(|l| l.node == name).map_or(0, |l| l.macs_paper))
}

/// Chooses d per layer under the budget (decomposition stage). `evaluate` is the validation
/// top-1 of a model. Returns the per-layer d for [`decompose`] and the stage's record.
pub fn choose_bases(
    model: &Model,
    decompose_opts: &DecomposeOptions,
    opts: &BudgetOptions,
    target_macs: u64,
    evaluate: &mut dyn FnMut(&Model) -> Result<Evaluation>,
) -> Result<(BTreeMap<String, usize>, BudgetStage)> {
    let reference = checked(evaluate(model)?, "budget (bases)")?;
    // the layers the decomposition would touch at the fewest bases, each at every candidate d
    let fewest = opts.d_choices.iter().copied().min().unwrap_or(1).max(1);
    let (_, plan) = decompose(
        model,
        &DecomposeOptions {
            d: fewest,
            ..decompose_opts.clone()
        },
    )?;
    let budgeted: Vec<String> = plan.layers.iter().map(|l| l.node.clone()).collect();
    let base_cost = model_cost(model)?;
    let fixed_macs = base_cost
        .layers
        .iter()
        .filter(|l| !budgeted.contains(&l.node))
        .map(|l| l.macs_paper)
        .sum();
    // the whole model decomposed at each candidate d; a candidate takes one layer from it
    let mut by_d: BTreeMap<usize, Model> = BTreeMap::new();
    for d in &opts.d_choices {
        let o = DecomposeOptions {
            per_layer: budgeted.iter().map(|n| (n.clone(), *d)).collect(),
            ..decompose_opts.clone()
        };
        by_d.insert(*d, decompose(model, &o)?.0);
    }
    let mut nodes = Vec::with_capacity(budgeted.len());
    let mut candidates = Vec::with_capacity(budgeted.len());
    for name in &budgeted {
        let Some(Op::Conv2d(c)) = model.node(name).map(|n| &n.op) else {
            continue;
        };
        let kk = c.kernel[0] * c.kernel[1];
        // d above k*k is clamped by the decomposition: the same candidate
        let mut ds: Vec<usize> = opts.d_choices.iter().copied().filter(|d| *d <= kk).collect();
        if ds.is_empty() {
            ds.extend(opts.d_choices.iter().copied().min());
        }
        ds.sort_unstable_by(|a, b| b.cmp(a));
        ds.dedup();
        let mut cands = Vec::with_capacity(ds.len());
        for d in ds {
            let decomposed = by_d
                .get(&d)
                .ok_or_else(|| CompressError::Invalid(format!("budget: no decomposition at d = {d}")))?;
            let one = with_node_from(model, decomposed, name)?;
            let e = checked(evaluate(&one)?, "budget (bases)")?;
            let mut costed = one;
            if let Some(node) = costed.nodes.iter_mut().find(|n| &n.name == name) {
                keep_largest(&mut node.param_mut("coefficients")?.data, opts.coefficient_density);
            }
            cands.push(Candidate {
                value: d as f64,
                macs: layer_macs(&costed, name)?,
                top1: e.top1,
                loss: e.loss,
            });
        }
        // most accurate first: the greedy starts there
        cands.sort_by(|a, b| a.badness().total_cmp(&b.badness()).then(b.macs.cmp(&a.macs)));
        nodes.push(name.clone());
        candidates.push(cands);
    }
    let s = stage("d", reference, nodes, candidates, fixed_macs, target_macs);
    let per_layer = s.layers.iter().map(|l| (l.node.clone(), l.choice().value as usize)).collect();
    Ok((per_layer, s))
}

/// Chooses the pruning threshold s per layer under the budget (pruning stage); "no pruning" is
/// a candidate too (s = 0). Returns the per-layer s for [`crate::prune::prune`].
pub fn choose_thresholds(
    model: &Model,
    prune_1x1: bool,
    prune_linear: bool,
    opts: &BudgetOptions,
    target_macs: u64,
    evaluate: &mut dyn FnMut(&Model) -> Result<Evaluation>,
) -> Result<(BTreeMap<String, f32>, BudgetStage)> {
    let reference = checked(evaluate(model)?, "budget (pruning)")?;
    let base_cost = model_cost(model)?;
    let mut nodes = Vec::new();
    let mut candidates = Vec::new();
    let mut fixed_macs = 0;
    for (node, lc) in model.nodes.iter().zip(&base_cost.layers) {
        let Some(param) = prunable_param(&node.op, prune_1x1, prune_linear) else {
            fixed_macs += lc.macs_paper;
            continue;
        };
        let mut cands = vec![Candidate {
            value: 0.0,
            macs: lc.macs_paper,
            top1: reference.top1,
            loss: reference.loss,
        }];
        let mut ss: Vec<f64> = opts.s_choices.clone();
        ss.sort_by(f64::total_cmp);
        ss.dedup();
        for s in ss {
            let mut one = model.clone();
            let t = one
                .nodes
                .iter_mut()
                .find(|n| n.name == node.name)
                .map(|n| n.param_mut(param))
                .transpose()?;
            if let Some(t) = t {
                prune_values(&mut t.data, s as f32);
            }
            let macs = layer_macs(&one, &node.name)?;
            let e = checked(evaluate(&one)?, "budget (pruning)")?;
            cands.push(Candidate {
                value: s,
                macs,
                top1: e.top1,
                loss: e.loss,
            });
        }
        cands.sort_by(|a, b| a.badness().total_cmp(&b.badness()).then(b.macs.cmp(&a.macs)));
        nodes.push(node.name.clone());
        candidates.push(cands);
    }
    let s = stage("s", reference, nodes, candidates, fixed_macs, target_macs);
    let per_layer = s.layers.iter().map(|l| (l.node.clone(), l.choice().value as f32)).collect();
    Ok((per_layer, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(macs: u64, top1: f32) -> Candidate {
        Candidate {
            value: 0.0,
            macs,
            top1,
            loss: None,
        }
    }

    #[test]
    fn the_greedy_meets_the_budget_where_it_loses_least() {
        // layer 0 loses much when cut, layer 1 little: the cut goes to layer 1
        let layers = vec![vec![c(100, 0.9), c(50, 0.5)], vec![c(100, 0.9), c(50, 0.89)]];
        assert_eq!(choose(&layers, 10, 160), vec![0, 1]);
        // a budget that needs both cuts takes both
        assert_eq!(choose(&layers, 10, 110), vec![1, 1]);
        // an unreachable budget ends at the cheapest candidates
        assert_eq!(choose(&layers, 10, 50), vec![1, 1]);
        // a loose one changes nothing
        assert_eq!(choose(&layers, 10, 1000), vec![0, 0]);
    }

    #[test]
    fn the_greedy_gives_accuracy_back_where_the_budget_allows() {
        // the cheapest per MAC move (layer 0 to 10 MACs) overshoots; then layer 0 can come back
        // up to its middle candidate
        let layers = vec![vec![c(100, 0.9), c(60, 0.85), c(10, 0.84)], vec![c(100, 0.9), c(40, 0.6)]];
        let at = choose(&layers, 0, 160);
        let total: u64 = at.iter().zip(&layers).map(|(i, l)| l[*i].macs).sum();
        assert!(total <= 160);
        assert_eq!(at, vec![1, 0]);
    }

    #[test]
    fn keep_largest_keeps_exactly_the_fraction() {
        let mut v = vec![0.1, -0.5, 0.3, 0.3, -0.2, 0.0, 0.9, 0.3, -0.3, 0.05];
        keep_largest(&mut v, 0.3);
        assert_eq!(v.iter().filter(|x| **x != 0.0).count(), 3);
        assert!(v.contains(&0.9) && v.contains(&-0.5));
        let mut w = vec![1.0, 2.0];
        keep_largest(&mut w, 1.0);
        assert_eq!(w, vec![1.0, 2.0]);
    }
}
