//! Budget mode: meet a cost budget at the least loss of validation accuracy, by choosing per
//! layer the number of bases d (before retraining; with the auto method the form: PENNI at some
//! d, Tucker-2 at some ranks, or dense) and the pruning threshold s (after it). The
//! cost is either paper-style MACs (a fraction of the baseline's) or latency measured by the
//! caller's engine (milliseconds per batch), through [`CostModel`].
//!
//! Both choices work the same way, as a layer-wise sensitivity analysis:
//! 1. for every budgeted layer and every candidate setting, change that layer alone and measure
//!    the whole model on the validation split (the trainer's `evaluate_with_loss`: top-1 and
//!    mean cross-entropy) and the layer's cost (one [`CostModel::costs`] of the changed model);
//! 2. start every layer at its best candidate (lowest validation loss; 1 - top-1 where the
//!    trainer gives no loss: the loss resolves changes of one layer that top-1 on 5,000 examples
//!    cannot) and, while the predicted total is over the budget, make the move (one layer to a
//!    cheaper candidate) that raises the loss least per unit of cost saved; the changes of
//!    single layers are taken as additive;
//! 3. then give accuracy back: move layers to better candidates wherever the total stays within
//!    the budget.
//!
//! The decomposition stage cannot know how sparse the coefficients will be after retraining, so it costs a
//! candidate with the combination stage at `coefficient_density` (the fraction of coefficients a
//! retrained layer keeps: about 0.1 after PENNI's L1 retraining in `experiments/`); the accuracy of
//! a candidate is that of the SVD factors before retraining, which ranks layers by how much they
//! lose, not by what they end at. In MACs the prune stage is exact: the MACs after pruning are the
//! predicted ones, and shrinking can only lower them. In latency the prediction is the measured
//! total of the reference model with the chosen layers' measured times swapped in.

use std::collections::BTreeMap;

use penni_model::{Model, Op, model_cost};
use serde::{Deserialize, Serialize};

use crate::decompose::{DecomposeOptions, decompose};
use crate::error::{CompressError, Result};
use crate::prune::{prunable_param, prune_values};
use crate::training::Evaluation;
use crate::tucker::{Ranks, TuckerOptions, tucker_decompose};

/// What the budget limits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// MACs (paper-style) as a fraction of the baseline's, in (0, 1].
    MacsFraction(f64),
    /// Milliseconds per batch of `batch` images on `threads` threads, as the caller's engine
    /// measures them on this machine.
    LatencyMs { ms: f64, batch: usize, threads: usize },
}

/// Per-layer costs of a model and its total, in one unit.
pub trait CostModel {
    /// What the costs count, for reports: "MACs (paper)", "ms per batch of 1 on 2 threads".
    fn unit(&self) -> String;
    /// The cost of each layer of `model` by node name (layers without a cost may be absent), and
    /// the whole model's.
    fn costs(&mut self, model: &Model) -> Result<(BTreeMap<String, f64>, f64)>;
}

/// Paper-style MACs ([`penni_model::model_cost`]): exact, and free to compute.
pub struct MacCost;

impl CostModel for MacCost {
    fn unit(&self) -> String {
        "MACs (paper)".into()
    }

    fn costs(&mut self, model: &Model) -> Result<(BTreeMap<String, f64>, f64)> {
        let c = model_cost(model)?;
        let layers = c.layers.iter().map(|l| (l.node.clone(), l.macs_paper as f64)).collect();
        Ok((layers, c.totals.macs_paper as f64))
    }
}

/// What a budget stage may choose from, and how much it may spend.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetOptions {
    pub target: Target,
    /// Candidate numbers of bases (clamped to k*k per layer).
    pub d_choices: Vec<usize>,
    /// Candidate pruning thresholds, in standard deviations of a layer's values.
    pub s_choices: Vec<f64>,
    /// Tucker-2 ranks as fractions of a layer's channels (the auto method's candidates).
    pub tucker_ranks: Vec<f64>,
    /// Fraction of coefficients assumed kept after pruning, to cost the combination stage when
    /// choosing d.
    pub coefficient_density: f64,
}

/// One candidate setting of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// d or s.
    pub value: f64,
    /// Predicted cost of the layer with this setting (MACs or ms, as the report's unit).
    #[serde(alias = "macs")]
    pub cost: f64,
    /// Validation top-1 of the model with only this layer changed.
    pub top1: f32,
    /// Its validation loss, when the trainer measures one.
    #[serde(default)]
    pub loss: Option<f32>,
    /// What the layer becomes (the auto method's decomposition stage; otherwise `value` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<Form>,
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
    /// Cost of everything this stage does not choose for: the reference model's total less its
    /// budgeted layers' costs.
    #[serde(alias = "fixed_macs")]
    pub fixed_cost: f64,
    /// Predicted cost of the whole model with the choices.
    #[serde(alias = "predicted_macs")]
    pub predicted_cost: f64,
    /// Predicted loss of validation top-1: the sum of the chosen candidates' single-layer drops.
    pub predicted_drop: f32,
    /// Predicted rise of the validation loss, summed the same way.
    #[serde(default)]
    pub predicted_loss_rise: Option<f32>,
    /// Whether the predicted cost is within the budget.
    pub met: bool,
    /// The cost of the model this stage produced, measured (for the bases stage: before
    /// retraining and pruning, so with dense coefficients).
    #[serde(default)]
    pub measured_cost: Option<f64>,
}

/// What the budget mode chose and predicted; the phase records hold what was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetReport {
    /// What the costs count, e.g. "MACs (paper)".
    #[serde(default = "mac_unit")]
    pub unit: String,
    /// The target as asked for (a MAC fraction or a latency).
    #[serde(default)]
    pub target: Option<Target>,
    /// The input model's cost and the budget, in `unit`.
    #[serde(alias = "baseline_macs")]
    pub baseline_cost: f64,
    #[serde(alias = "target_macs")]
    pub budget: f64,
    pub coefficient_density: f64,
    pub bases: Option<BudgetStage>,
    pub prune: Option<BudgetStage>,
    /// The final model's cost, measured after the last phase.
    #[serde(default)]
    pub measured_final: Option<f64>,
}

fn mac_unit() -> String {
    "MACs (paper)".into()
}

impl BudgetReport {
    pub fn new(baseline: &Model, opts: &BudgetOptions, cost: &mut dyn CostModel) -> Result<Self> {
        let (_, baseline_cost) = cost.costs(baseline)?;
        let budget = match opts.target {
            Target::MacsFraction(f) => (baseline_cost * f).floor(),
            Target::LatencyMs { ms, .. } => ms,
        };
        Ok(Self {
            unit: cost.unit(),
            target: Some(opts.target),
            baseline_cost,
            budget,
            coefficient_density: opts.coefficient_density,
            bases: None,
            prune: None,
            measured_final: None,
        })
    }
}

/// Greedy choice under a budget: `layers[i]` is layer i's candidates, index 0 the best.
/// Returns the chosen index per layer.
fn choose(layers: &[Vec<Candidate>], fixed: f64, budget: f64) -> Vec<usize> {
    let mut at = vec![0usize; layers.len()];
    let total = |at: &[usize]| fixed + at.iter().zip(layers).map(|(i, c)| c[*i].cost).sum::<f64>();
    // loss added per unit of cost saved; a move that loses nothing is taken first, biggest
    // saving first
    while total(&at) > budget {
        let mut best: Option<(f64, usize, usize)> = None;
        for (l, cands) in layers.iter().enumerate() {
            let cur = &cands[at[l]];
            for (j, c) in cands.iter().enumerate() {
                if c.cost >= cur.cost {
                    continue;
                }
                let lost = (c.badness() - cur.badness()).max(0.0) + 1e-9;
                let ratio = lost / (cur.cost - c.cost);
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
                if gain <= 0.0 || now - cur.cost + c.cost > budget {
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
    fixed_cost: f64,
    budget: f64,
) -> BudgetStage {
    let at = choose(&candidates, fixed_cost, budget);
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
    let predicted_cost = fixed_cost + layers.iter().map(|l| l.choice().cost).sum::<f64>();
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
        fixed_cost,
        predicted_cost,
        predicted_drop,
        met: predicted_cost <= budget,
        measured_cost: None,
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

fn layer_cost(cost: &mut dyn CostModel, model: &Model, name: &str) -> Result<f64> {
    Ok(cost.costs(model)?.0.get(name).copied().unwrap_or(0.0))
}

/// Everything but the budgeted layers: the reference total less their costs.
fn fixed_cost(cost: &mut dyn CostModel, model: &Model, budgeted: &[String]) -> Result<f64> {
    let (layers, total) = cost.costs(model)?;
    Ok((total - budgeted.iter().filter_map(|n| layers.get(n)).sum::<f64>()).max(0.0))
}

/// What one layer becomes in the decomposition stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    Penni { d: usize },
    Tucker { ranks: Ranks },
    Dense,
}

impl std::fmt::Display for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Form::Penni { d } => write!(f, "penni d = {d}"),
            Form::Tucker { ranks } => write!(f, "tucker {} x {}", ranks.r_in, ranks.r_out),
            Form::Dense => f.write_str("dense"),
        }
    }
}

/// The decomposition stage's choices, per layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forms {
    /// Layers to decompose with PENNI, and their d.
    pub penni: BTreeMap<String, usize>,
    /// Layers to decompose into Tucker-2, and their ranks.
    pub tucker: BTreeMap<String, Ranks>,
}

/// Chooses per layer under `budget` (decomposition stage) the number of bases d, or with
/// `tucker` (the auto method: Tucker options and rank fractions) PENNI at some d, Tucker-2 at
/// some ranks or dense. `evaluate` measures a model on the validation split, `cost` prices it.
pub fn choose_forms(
    model: &Model,
    decompose_opts: &DecomposeOptions,
    tucker: Option<(&TuckerOptions, &[f64])>,
    opts: &BudgetOptions,
    budget: f64,
    cost: &mut dyn CostModel,
    evaluate: &mut dyn FnMut(&Model) -> Result<Evaluation>,
) -> Result<(Forms, BudgetStage)> {
    let reference = checked(evaluate(model)?, "budget (decomposition)")?;
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
    let (reference_costs, reference_total) = cost.costs(model)?;
    let fixed = fixed_cost(cost, model, &budgeted)?;
    // a candidate's cost: what it adds to the reference model with that layer's cost taken out
    let candidate_cost = |cost: &mut dyn CostModel, m: &Model, name: &str| -> Result<f64> {
        let layer = reference_costs.get(name).copied().unwrap_or(0.0);
        Ok((cost.costs(m)?.1 - (reference_total - layer)).max(0.0))
    };
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
    let mut forms: Vec<Vec<Form>> = Vec::with_capacity(budgeted.len());
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
        let mut cands = Vec::new();
        for d in ds {
            let decomposed = by_d
                .get(&d)
                .ok_or_else(|| CompressError::Invalid(format!("budget: no decomposition at d = {d}")))?;
            let one = with_node_from(model, decomposed, name)?;
            let e = checked(evaluate(&one)?, "budget (decomposition)")?;
            let mut costed = one;
            if let Some(node) = costed.nodes.iter_mut().find(|n| &n.name == name) {
                keep_largest(&mut node.param_mut("coefficients")?.data, opts.coefficient_density);
            }
            let c = candidate_cost(cost, &costed, name)?;
            cands.push((Form::Penni { d }, c, e));
        }
        if let Some((topts, fractions)) = tucker {
            if c.groups == 1 {
                let mut seen = std::collections::BTreeSet::new();
                for f in fractions {
                    let r = |ch: usize| ((ch as f64 * f).ceil() as usize).clamp(1, ch);
                    let ranks = Ranks {
                        r_in: r(c.in_channels),
                        r_out: r(c.out_channels),
                    };
                    if !seen.insert((ranks.r_in, ranks.r_out)) {
                        continue;
                    }
                    let o = TuckerOptions {
                        per_layer: BTreeMap::from([(name.clone(), ranks)]),
                        only: Some([name.clone()].into()),
                        only_if_cheaper: false,
                        ..topts.clone()
                    };
                    let (one, _) = tucker_decompose(model, &o)?;
                    let e = checked(evaluate(&one)?, "budget (decomposition)")?;
                    let c = candidate_cost(cost, &one, name)?;
                    cands.push((Form::Tucker { ranks }, c, e));
                }
            }
            cands.push((Form::Dense, reference_costs.get(name).copied().unwrap_or(0.0), reference));
        }
        let mut cands: Vec<(Candidate, Form)> = cands
            .into_iter()
            .map(|(form, c, e)| {
                let value = match form {
                    Form::Penni { d } => d as f64,
                    _ => 0.0,
                };
                (
                    Candidate {
                        value,
                        cost: c,
                        top1: e.top1,
                        loss: e.loss,
                        form: tucker.is_some().then_some(form),
                    },
                    form,
                )
            })
            .collect();
        // most accurate first: the greedy starts there
        cands.sort_by(|a, b| a.0.badness().total_cmp(&b.0.badness()).then(b.0.cost.total_cmp(&a.0.cost)));
        nodes.push(name.clone());
        forms.push(cands.iter().map(|c| c.1).collect());
        candidates.push(cands.into_iter().map(|c| c.0).collect());
    }
    let parameter = if tucker.is_some() { "form" } else { "d" };
    let s = stage(parameter, reference, nodes, candidates, fixed, budget);
    let mut out = Forms::default();
    for (l, f) in s.layers.iter().zip(&forms) {
        match f[l.chosen] {
            Form::Penni { d } => {
                out.penni.insert(l.node.clone(), d);
            }
            Form::Tucker { ranks } => {
                out.tucker.insert(l.node.clone(), ranks);
            }
            Form::Dense => {}
        }
    }
    Ok((out, s))
}

/// Chooses the pruning threshold s per layer under the budget (pruning stage); "no pruning" is
/// a candidate too (s = 0). Returns the per-layer s for [`crate::prune::prune`].
pub fn choose_thresholds(
    model: &Model,
    prune_1x1: bool,
    prune_linear: bool,
    opts: &BudgetOptions,
    budget: f64,
    cost: &mut dyn CostModel,
    evaluate: &mut dyn FnMut(&Model) -> Result<Evaluation>,
) -> Result<(BTreeMap<String, f32>, BudgetStage)> {
    let reference = checked(evaluate(model)?, "budget (pruning)")?;
    let (reference_costs, _) = cost.costs(model)?;
    let budgeted: Vec<String> = model
        .nodes
        .iter()
        .filter(|n| prunable_param(&n.op, prune_1x1, prune_linear).is_some())
        .map(|n| n.name.clone())
        .collect();
    let fixed = fixed_cost(cost, model, &budgeted)?;
    let mut nodes = Vec::new();
    let mut candidates = Vec::new();
    for node in &model.nodes {
        let Some(param) = prunable_param(&node.op, prune_1x1, prune_linear) else {
            continue;
        };
        let mut cands = vec![Candidate {
            form: None,
            value: 0.0,
            cost: reference_costs.get(&node.name).copied().unwrap_or(0.0),
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
            let c = layer_cost(cost, &one, &node.name)?;
            let e = checked(evaluate(&one)?, "budget (pruning)")?;
            cands.push(Candidate {
                value: s,
                cost: c,
                top1: e.top1,
                loss: e.loss,
                form: None,
            });
        }
        cands.sort_by(|a, b| a.badness().total_cmp(&b.badness()).then(b.cost.total_cmp(&a.cost)));
        nodes.push(node.name.clone());
        candidates.push(cands);
    }
    let s = stage("s", reference, nodes, candidates, fixed, budget);
    let per_layer = s.layers.iter().map(|l| (l.node.clone(), l.choice().value as f32)).collect();
    Ok((per_layer, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(cost: u64, top1: f32) -> Candidate {
        Candidate {
            value: 0.0,
            cost: cost as f64,
            top1,
            loss: None,
            form: None,
        }
    }

    #[test]
    fn the_greedy_meets_the_budget_where_it_loses_least() {
        // layer 0 loses much when cut, layer 1 little: the cut goes to layer 1
        let layers = vec![vec![c(100, 0.9), c(50, 0.5)], vec![c(100, 0.9), c(50, 0.89)]];
        assert_eq!(choose(&layers, 10.0, 160.0), vec![0, 1]);
        // a budget that needs both cuts takes both
        assert_eq!(choose(&layers, 10.0, 110.0), vec![1, 1]);
        // an unreachable budget ends at the cheapest candidates
        assert_eq!(choose(&layers, 10.0, 50.0), vec![1, 1]);
        // a loose one changes nothing
        assert_eq!(choose(&layers, 10.0, 1000.0), vec![0, 0]);
    }

    #[test]
    fn the_greedy_gives_accuracy_back_where_the_budget_allows() {
        // the cheapest per MAC move (layer 0 to 10 MACs) overshoots; then layer 0 can come back
        // up to its middle candidate
        let layers = vec![vec![c(100, 0.9), c(60, 0.85), c(10, 0.84)], vec![c(100, 0.9), c(40, 0.6)]];
        let at = choose(&layers, 0.0, 160.0);
        let total: f64 = at.iter().zip(&layers).map(|(i, l)| l[*i].cost).sum();
        assert!(total <= 160.0);
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
