//! Every PENNI hyper-parameter in one TOML file. Defaults are the paper's (penni-spec.md), so an
//! empty file is a valid config. Unknown keys are rejected (a typo must not silently fall back
//! to a default) and every out-of-range value is reported at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use penni_model::Model;
use serde::{Deserialize, Serialize};

use crate::budget::{BudgetOptions, Target};
use crate::decompose::{DecomposeOptions, Init};
use crate::error::{CompressError, Result};
use crate::prune::PruneOptions;
use crate::quantize::QuantBits;
use crate::training::{DistillTerm, PhaseTraining, ProximalTerm};
use crate::tucker::{Ranks, TuckerOptions};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seed handed to the trainer (shuffling, augmentation); the fine-tune phase gets seed + 1.
    pub seed: u64,
    /// Which compressor: PENNI (decompose, retrain, prune, fine-tune, shrink) or Tucker-2
    /// (ADMM training toward Tucker form, projection, fine-tune, shrink). Left out of the
    /// serialised config when PENNI, so older run directories still resume.
    #[serde(skip_serializing_if = "Method::is_penni")]
    pub method: Method,
    pub decompose: DecomposeConfig,
    pub retrain: RetrainConfig,
    pub prune: PruneConfig,
    pub finetune: FinetuneConfig,
    /// Budget mode (off unless `target_macs` is set). Left out of the serialised config when
    /// off, so run directories started before this section existed still resume.
    #[serde(skip_serializing_if = "BudgetConfig::is_off")]
    pub budget: BudgetConfig,
    /// Tucker-2 settings (`penni decompose --method tucker`); left out of the serialised config
    /// at its defaults, as `budget`.
    #[serde(skip_serializing_if = "TuckerConfig::is_default")]
    pub tucker: TuckerConfig,
    /// ADMM training of the Tucker method.
    #[serde(skip_serializing_if = "AdmmConfig::is_default")]
    pub admm: AdmmConfig,
    /// Weight bit widths of `penni quantize`.
    #[serde(skip_serializing_if = "is_default_bits")]
    pub quantize: QuantBits,
    /// Knowledge distillation from the input model during every training phase (off unless
    /// `weight > 0`); left out of the serialised config when off, as `budget`.
    #[serde(skip_serializing_if = "DistillConfig::is_off")]
    pub distill: DistillConfig,
    /// MLCNN's conv-pool reordering (off by default); left out of the serialised config when
    /// off, as `budget`.
    #[serde(skip_serializing_if = "MlcnnConfig::is_off")]
    pub mlcnn: MlcnnConfig,
}

/// MLCNN's conv-pool co-optimization, beyond the paper. `reorder_avg_pools` moves every average
/// pool before the activation in front of it (`penni_model::passes::pool_before_activation`).
/// That is approximate: an average of activations is not the activation of the average, so
/// the training phases that follow fine-tune the reordered model, and the report says how
/// many pools moved and what validation accuracy the move cost before any training. Then a
/// linear conv -> [batchnorm] -> average pool runs at the pooled resolution
/// (`passes::pool_before_conv`, exact): the input windows averaged once and the conv at the
/// pool's stride, a quarter of the multiply-accumulates for a 2x2 pool, in training too.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlcnnConfig {
    pub reorder_avg_pools: bool,
}

impl MlcnnConfig {
    fn is_off(&self) -> bool {
        *self == Self::default()
    }
}

/// Knowledge distillation (Hinton et al. 2015), beyond the paper: retraining, fine-tuning and
/// ADMM minimise `(1 - weight) * CE(labels) + weight * T^2 * KL(teacher_T || student_T)`, with
/// the uncompressed input model as the teacher and `_T` the softmax at temperature T. The
/// compressed network starts as a close copy of its teacher, so the teacher's soft targets carry
/// much more of what it knows than the labels do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// Share of the distillation term in the loss, in [0, 1]; 0 turns distillation off.
    pub weight: f64,
    pub temperature: f64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            weight: 0.0,
            temperature: 4.0,
        }
    }
}

impl DistillConfig {
    fn is_off(&self) -> bool {
        *self == Self::default()
    }
}

fn is_default_bits(b: &QuantBits) -> bool {
    *b == QuantBits::default()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    #[default]
    Penni,
    Tucker,
    /// Per layer PENNI, Tucker-2 or dense, chosen by the budget mode (needs a budget).
    Auto,
}

impl Method {
    fn is_penni(&self) -> bool {
        *self == Method::Penni
    }
}

/// ADMM toward Tucker form (crate::admm): loss + rho/2 ||W - Z + U||^2, with Z the Tucker
/// projection of W + U and U the scaled dual, updated every `interval` epochs; rho is multiplied
/// by `rho_growth` at each update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmmConfig {
    pub epochs: usize,
    pub interval: usize,
    pub rho: f64,
    pub rho_growth: f64,
    pub lr: f64,
    /// Fractions of `epochs` at which the learning rate is multiplied by `gamma`.
    pub milestones: Vec<f64>,
    pub gamma: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub batch_size: usize,
}

impl Default for AdmmConfig {
    fn default() -> Self {
        Self {
            epochs: 6,
            interval: 1,
            // the penalty's pull per step is lr * rho * (W - T): 0.05 at lr 0.01 closes most of
            // the gap in a few epochs of ~400 steps without swamping the cross-entropy
            rho: 0.05,
            rho_growth: 1.5,
            lr: 0.01,
            milestones: vec![0.67],
            gamma: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            batch_size: 128,
        }
    }
}

impl AdmmConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Tucker-2 decomposition (crate::tucker).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TuckerConfig {
    /// Ranks as a fraction of each layer's input and output channels (rounded up), in (0, 1].
    pub rank: f64,
    /// Per-layer ranks [R_in, R_out] by node name.
    pub layers: BTreeMap<String, [usize; 2]>,
    /// Keep a conv dense where its three convs would cost at least as many MACs.
    pub only_if_cheaper: bool,
}

impl Default for TuckerConfig {
    fn default() -> Self {
        Self {
            rank: 0.5,
            layers: BTreeMap::new(),
            only_if_cheaper: true,
        }
    }
}

impl TuckerConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Budget mode (crate::budget): d and the pruning threshold chosen per layer to meet a MAC
/// budget at the least loss of validation accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// MACs (paper-style) of the compressed model as a fraction of the baseline's, in (0, 1].
    pub target_macs: Option<f64>,
    /// Or: latency of the compressed model in milliseconds per batch of `batch` images on
    /// `threads` threads (0 = all cores), measured by penni's engine on this machine.
    pub target_latency_ms: Option<f64>,
    pub batch: usize,
    pub threads: usize,
    /// Candidate numbers of bases per layer.
    pub d_choices: Vec<usize>,
    /// Candidate pruning thresholds (standard deviations of a layer's values); not pruning a
    /// layer is always a candidate.
    pub s_choices: Vec<f64>,
    /// Candidate Tucker-2 ranks, as fractions of a layer's channels (method = "auto").
    pub tucker_ranks: Vec<f64>,
    /// Fraction of coefficients assumed kept after pruning, to cost the combination stage when
    /// d is chosen (before retraining).
    pub coefficient_density: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            target_macs: None,
            target_latency_ms: None,
            batch: 1,
            threads: 0,
            d_choices: vec![1, 2, 3, 4, 5, 6],
            s_choices: vec![0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0],
            tucker_ranks: vec![0.125, 0.25, 0.5],
            coefficient_density: 0.1,
        }
    }
}

impl BudgetConfig {
    fn is_off(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecomposeConfig {
    /// Bases per layer (clamped to k*k).
    pub d: usize,
    pub init: Init,
    /// Per-layer d, by node name.
    pub layers: BTreeMap<String, usize>,
    /// Keep convs dense where decomposing would not save work (d * groups >= output channels,
    /// e.g. depthwise convs). Left out of the serialised config when true, so run directories
    /// started before this key existed still resume.
    #[serde(skip_serializing_if = "is_true")]
    pub only_if_cheaper: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainConfig {
    pub epochs: usize,
    pub lr: f64,
    /// Fractions of `epochs` at which the learning rate is multiplied by `gamma`.
    pub milestones: Vec<f64>,
    pub gamma: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub batch_size: usize,
    /// Weight of the L1 term sum |coefficients| added to the loss.
    pub lambda: f64,
    /// Weight of a group lasso on each input channel's coefficients, sum_c ||A[:, c, :]||_2
    /// (beyond the paper): whole input channels die, and shrinking removes them with their share
    /// of the basis stage. 0 (the default) turns it off and leaves it out of the written config.
    #[serde(skip_serializing_if = "is_zero")]
    pub group_lambda: f64,
    /// Epochs per turn when alternating coefficients and bases (epoch 0 trains coefficients).
    pub alternate_interval: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneConfig {
    /// Zero every value below s standard deviations of its layer.
    pub s: f64,
    pub prune_1x1: bool,
    pub prune_linear: bool,
    /// Zero a decomposed layer's whole input channel (all its coefficients) when the channel's
    /// coefficient norm is below `group_s` times the layer's mean channel norm; 0 (the default)
    /// turns it off and leaves it out of the written config.
    #[serde(skip_serializing_if = "is_zero")]
    pub group_s: f64,
    /// Gradual pruning (beyond the paper): the zeros arrive in `steps` equal parts, one before
    /// each of `steps` fine-tuning rounds (the fine-tuning epochs split between them), instead
    /// of all at once. 1 (the default) is the paper's one-shot pruning and is left out of the
    /// written config.
    #[serde(skip_serializing_if = "is_one")]
    pub steps: usize,
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    pub epochs: usize,
    pub lr: f64,
    pub milestones: Vec<f64>,
    pub gamma: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub batch_size: usize,
}

impl Default for DecomposeConfig {
    fn default() -> Self {
        Self {
            d: 5,
            init: Init::Svd,
            layers: BTreeMap::new(),
            only_if_cheaper: true,
        }
    }
}

impl Default for RetrainConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            lr: 0.01,
            milestones: vec![0.5, 0.75],
            gamma: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            batch_size: 128,
            lambda: 1e-4,
            group_lambda: 0.0,
            alternate_interval: 2,
        }
    }
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            s: 1.0,
            prune_1x1: true,
            prune_linear: false,
            group_s: 0.0,
            steps: 1,
        }
    }
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            lr: 0.01,
            milestones: vec![0.5, 0.75],
            gamma: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            batch_size: 128,
        }
    }
}

/// Milestone fractions -> epoch indices (floor, as `int(0.75 * epochs)`), kept in 1..epochs.
pub fn milestone_epochs(fractions: &[f64], epochs: usize) -> Vec<usize> {
    let mut v: Vec<usize> = fractions
        .iter()
        .map(|f| (f * epochs as f64).floor() as usize)
        .filter(|e| *e >= 1 && *e < epochs)
        .collect();
    v.dedup();
    v
}

#[allow(clippy::too_many_arguments)]
fn check_schedule(
    p: &mut Vec<String>,
    section: &str,
    lr: f64,
    milestones: &[f64],
    gamma: f64,
    momentum: f64,
    weight_decay: f64,
    batch_size: usize,
) {
    if !(lr.is_finite() && lr > 0.0) {
        p.push(format!("{section}.lr must be > 0, got {lr}"));
    }
    if !(gamma.is_finite() && gamma > 0.0) {
        p.push(format!("{section}.gamma must be > 0, got {gamma}"));
    }
    if !(momentum.is_finite() && (0.0..1.0).contains(&momentum)) {
        p.push(format!("{section}.momentum must be in [0, 1), got {momentum}"));
    }
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        p.push(format!("{section}.weight_decay must be >= 0, got {weight_decay}"));
    }
    if batch_size == 0 {
        p.push(format!("{section}.batch_size must be >= 1, got 0"));
    }
    for m in milestones {
        if !(m.is_finite() && *m > 0.0 && *m <= 1.0) {
            p.push(format!("{section}.milestones: {m} is not a fraction of the epochs in (0, 1]"));
        }
    }
    if milestones.windows(2).any(|w| w[0] > w[1]) {
        p.push(format!("{section}.milestones must be in ascending order, got {milestones:?}"));
    }
}

/// "line 3 (in [retrain]): unknown field `lamda`, expected one of ... (at `lamda = 0.1`)": one
/// line that names the key, for a CLI that prints one line per error.
fn one_line_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(span) = e.span() else { return msg };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let section = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| format!(" (in {l})"))
        .unwrap_or_default();
    format!("line {line_no}{section}: {msg} (at `{line}`)")
}

impl Config {
    /// Parses and validates a config. Syntax errors, unknown keys and wrong types name the key
    /// and line; range errors are all listed.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let cfg: Config = toml::from_str(text).map_err(|e| CompressError::ConfigParse {
            path: None,
            message: one_line_error(text, &e),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CompressError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            CompressError::ConfigParse { message, .. } => CompressError::ConfigParse {
                path: Some(path.to_path_buf()),
                message,
            },
            CompressError::ConfigInvalid { problems, .. } => CompressError::ConfigInvalid {
                path: Some(path.to_path_buf()),
                problems,
            },
            other => other,
        })
    }

    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| CompressError::ConfigParse {
            path: None,
            message: e.to_string(),
        })
    }

    /// Checks every value; lists all problems at once, each naming its key.
    pub fn validate(&self) -> Result<()> {
        let mut p = Vec::new();
        if self.decompose.d == 0 {
            p.push("decompose.d must be >= 1, got 0".to_string());
        }
        for (name, d) in &self.decompose.layers {
            if *d == 0 {
                p.push(format!("decompose.layers.\"{name}\" must be >= 1, got 0"));
            }
        }
        let r = &self.retrain;
        check_schedule(
            &mut p,
            "retrain",
            r.lr,
            &r.milestones,
            r.gamma,
            r.momentum,
            r.weight_decay,
            r.batch_size,
        );
        if !(r.lambda.is_finite() && r.lambda >= 0.0) {
            p.push(format!("retrain.lambda must be >= 0, got {}", r.lambda));
        }
        if !(r.group_lambda.is_finite() && r.group_lambda >= 0.0) {
            p.push(format!("retrain.group_lambda must be >= 0, got {}", r.group_lambda));
        }
        if !(self.prune.group_s.is_finite() && self.prune.group_s >= 0.0) {
            p.push(format!("prune.group_s must be >= 0, got {}", self.prune.group_s));
        }
        if r.alternate_interval == 0 {
            p.push("retrain.alternate_interval must be >= 1, got 0".into());
        }
        if !(self.prune.s.is_finite() && self.prune.s > 0.0) {
            p.push(format!("prune.s must be > 0, got {}", self.prune.s));
        }
        if self.prune.steps == 0 {
            p.push("prune.steps must be >= 1, got 0".into());
        } else if self.prune.steps > 1 && self.finetune.epochs < self.prune.steps {
            p.push(format!(
                "prune.steps = {} needs at least as many fine-tuning epochs, finetune.epochs is {}",
                self.prune.steps, self.finetune.epochs
            ));
        }
        let f = &self.finetune;
        check_schedule(
            &mut p,
            "finetune",
            f.lr,
            &f.milestones,
            f.gamma,
            f.momentum,
            f.weight_decay,
            f.batch_size,
        );
        let b = &self.budget;
        if let Some(t) = b.target_macs
            && !(t.is_finite() && t > 0.0 && t <= 1.0)
        {
            p.push(format!("budget.target_macs must be a fraction in (0, 1], got {t}"));
        }
        if let Some(t) = b.target_latency_ms
            && !(t.is_finite() && t > 0.0)
        {
            p.push(format!("budget.target_latency_ms must be a number of milliseconds > 0, got {t}"));
        }
        if b.target_macs.is_some() && b.target_latency_ms.is_some() {
            p.push("budget: give target_macs or target_latency_ms, not both".into());
        }
        if b.batch == 0 {
            p.push("budget.batch must be >= 1, got 0".into());
        }
        if (b.target_macs.is_some() || b.target_latency_ms.is_some()) && !self.decompose.layers.is_empty() {
            p.push("decompose.layers cannot be combined with a budget: the budget chooses d for every layer".into());
        }
        if b.d_choices.is_empty() || b.d_choices.contains(&0) {
            p.push(format!(
                "budget.d_choices must be a non-empty list of numbers >= 1, got {:?}",
                b.d_choices
            ));
        }
        if b.s_choices.is_empty() || b.s_choices.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            p.push(format!(
                "budget.s_choices must be a non-empty list of numbers > 0, got {:?}",
                b.s_choices
            ));
        }
        if !(b.coefficient_density.is_finite() && b.coefficient_density > 0.0 && b.coefficient_density <= 1.0) {
            p.push(format!(
                "budget.coefficient_density must be a fraction in (0, 1], got {}",
                b.coefficient_density
            ));
        }
        let a = &self.admm;
        check_schedule(
            &mut p,
            "admm",
            a.lr,
            &a.milestones,
            a.gamma,
            a.momentum,
            a.weight_decay,
            a.batch_size,
        );
        if a.interval == 0 {
            p.push("admm.interval must be >= 1, got 0".into());
        }
        if !(a.rho.is_finite() && a.rho > 0.0) {
            p.push(format!("admm.rho must be > 0, got {}", a.rho));
        }
        if !(a.rho_growth.is_finite() && a.rho_growth >= 1.0) {
            p.push(format!("admm.rho_growth must be >= 1, got {}", a.rho_growth));
        }
        if self.method == Method::Auto && self.budget_options().is_none() {
            p.push("method = \"auto\" chooses under a budget: set budget.target_macs or budget.target_latency_ms".into());
        }
        if b.tucker_ranks.is_empty() || b.tucker_ranks.iter().any(|r| !(r.is_finite() && *r > 0.0 && *r <= 1.0)) {
            p.push(format!(
                "budget.tucker_ranks must be a non-empty list of fractions in (0, 1], got {:?}",
                b.tucker_ranks
            ));
        }
        if self.method == Method::Tucker && self.budget_options().is_some() {
            p.push("budget mode chooses PENNI's d and thresholds; it cannot be combined with method = \"tucker\"".into());
        }
        if let Err(e) = self.quantize.validate() {
            p.push(e.to_string());
        }
        let k = &self.distill;
        if !(k.weight.is_finite() && (0.0..=1.0).contains(&k.weight)) {
            p.push(format!("distill.weight must be a fraction in [0, 1], got {}", k.weight));
        }
        if !(k.temperature.is_finite() && k.temperature > 0.0) {
            p.push(format!("distill.temperature must be > 0, got {}", k.temperature));
        }
        let t = &self.tucker;
        if !(t.rank.is_finite() && t.rank > 0.0 && t.rank <= 1.0) {
            p.push(format!("tucker.rank must be a fraction in (0, 1], got {}", t.rank));
        }
        for (name, [ri, ro]) in &t.layers {
            if *ri == 0 || *ro == 0 {
                p.push(format!("tucker.layers.\"{name}\" ranks must be >= 1, got [{ri}, {ro}]"));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(CompressError::ConfigInvalid { path: None, problems: p })
        }
    }

    pub fn decompose_options(&self) -> DecomposeOptions {
        DecomposeOptions {
            d: self.decompose.d,
            per_layer: self.decompose.layers.clone(),
            init: self.decompose.init,
            only_if_cheaper: self.decompose.only_if_cheaper,
            only: None,
        }
    }

    pub fn prune_options(&self) -> PruneOptions {
        PruneOptions {
            s: self.prune.s as f32,
            prune_1x1: self.prune.prune_1x1,
            prune_linear: self.prune.prune_linear,
            per_layer: Default::default(),
            group_s: self.prune.group_s as f32,
        }
    }

    pub fn tucker_options(&self) -> TuckerOptions {
        let t = &self.tucker;
        TuckerOptions {
            rank_fraction: t.rank,
            per_layer: t
                .layers
                .iter()
                .map(|(n, [r_in, r_out])| {
                    (
                        n.clone(),
                        Ranks {
                            r_in: *r_in,
                            r_out: *r_out,
                        },
                    )
                })
                .collect(),
            only_if_cheaper: t.only_if_cheaper,
            only: None,
        }
    }

    /// One ADMM round of `epochs` epochs starting at epoch `start` of the ADMM schedule, pulled
    /// toward `targets` with strength `rho`.
    pub fn admm_round(&self, start: usize, epochs: usize, round: usize, proximal: ProximalTerm) -> PhaseTraining {
        let a = &self.admm;
        let drops = milestone_epochs(&a.milestones, a.epochs).iter().filter(|m| **m <= start).count();
        PhaseTraining {
            name: "admm".into(),
            epochs,
            lr: a.lr * a.gamma.powi(drops as i32),
            milestones: vec![],
            gamma: a.gamma,
            momentum: a.momentum,
            nesterov: a.nesterov,
            weight_decay: a.weight_decay,
            batch_size: a.batch_size,
            l1_coefficients: 0.0,
            group_l1_coefficients: 0.0,
            alternate_interval: None,
            freeze_zeros: false,
            seed: self.seed.wrapping_add(1000 + round as u64),
            proximal: Some(proximal),
            distill: None,
        }
    }

    /// The distillation every training phase adds, with `teacher` (the uncompressed input
    /// model), when `distill.weight > 0`.
    pub fn distill_term(&self, teacher: &Model) -> Option<DistillTerm> {
        (self.distill.weight > 0.0).then(|| DistillTerm {
            weight: self.distill.weight,
            temperature: self.distill.temperature,
            teacher: Arc::new(teacher.clone()),
        })
    }

    /// The budget mode's settings, when a budget is set.
    pub fn budget_options(&self) -> Option<BudgetOptions> {
        let b = &self.budget;
        let target = match (b.target_macs, b.target_latency_ms) {
            (Some(f), _) => Target::MacsFraction(f),
            (None, Some(ms)) => Target::LatencyMs {
                ms,
                batch: b.batch,
                threads: b.threads,
            },
            (None, None) => return None,
        };
        Some(BudgetOptions {
            target,
            d_choices: b.d_choices.clone(),
            s_choices: b.s_choices.clone(),
            tucker_ranks: b.tucker_ranks.clone(),
            coefficient_density: b.coefficient_density,
        })
    }

    /// The retraining phase: L1 on coefficients, alternating factors, nothing frozen.
    pub fn retrain_phase(&self) -> PhaseTraining {
        let r = &self.retrain;
        PhaseTraining {
            name: "retrain".into(),
            epochs: r.epochs,
            lr: r.lr,
            milestones: milestone_epochs(&r.milestones, r.epochs),
            gamma: r.gamma,
            momentum: r.momentum,
            nesterov: r.nesterov,
            weight_decay: r.weight_decay,
            batch_size: r.batch_size,
            l1_coefficients: r.lambda,
            group_l1_coefficients: r.group_lambda,
            alternate_interval: Some(r.alternate_interval),
            freeze_zeros: false,
            seed: self.seed,
            proximal: None,
            distill: None,
        }
    }

    /// Round `round` (0-based) of a gradual pruning's fine-tuning: its share of the fine-tuning
    /// epochs (the last round takes the remainder) on the fine-tuning schedule, continued
    /// across rounds. None past the last round.
    pub fn finetune_round(&self, round: usize) -> Option<PhaseTraining> {
        let (k, epochs) = (self.prune.steps.max(1), self.finetune.epochs);
        if round >= k {
            return None;
        }
        let per = epochs / k;
        let start = round * per;
        let len = if round + 1 == k { epochs - start } else { per };
        let all = self.finetune_phase();
        let drops = all.milestones.iter().filter(|m| **m <= start).count();
        Some(PhaseTraining {
            name: format!("finetune-{}", round + 1),
            epochs: len,
            lr: all.lr * all.gamma.powi(drops as i32),
            milestones: all
                .milestones
                .iter()
                .filter(|m| **m > start && **m < start + len)
                .map(|m| m - start)
                .collect(),
            seed: all.seed.wrapping_add(100 + round as u64),
            ..all
        })
    }

    /// The fine-tuning phase: no L1, joint training, pruned zeros held at zero.
    pub fn finetune_phase(&self) -> PhaseTraining {
        let f = &self.finetune;
        PhaseTraining {
            name: "finetune".into(),
            epochs: f.epochs,
            lr: f.lr,
            milestones: milestone_epochs(&f.milestones, f.epochs),
            gamma: f.gamma,
            momentum: f.momentum,
            nesterov: f.nesterov,
            weight_decay: f.weight_decay,
            batch_size: f.batch_size,
            l1_coefficients: 0.0,
            group_l1_coefficients: 0.0,
            alternate_interval: None,
            freeze_zeros: true,
            seed: self.seed.wrapping_add(1),
            proximal: None,
            distill: None,
        }
    }
}
