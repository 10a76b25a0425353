//! The compression pipelines, with every phase's model checkpointed in a run directory so that
//! a stopped run resumes where it stopped:
//! - PENNI: decompose -> retrain -> prune -> fine-tune -> shrink;
//! - Tucker-2: ADMM (training toward Tucker form) -> project -> fine-tune -> shrink;
//! - auto: PENNI's phases, with each layer's form (PENNI, Tucker-2, dense) chosen by the budget
//!   mode in decompose.
//!
//! Run directory layout:
//! - `state.json`: completed phases, fingerprints of the config and input model, the report so far
//! - `config.toml`: the effective config of the run
//! - `1-decompose.penni` ... `5-shrink.penni` (Tucker: `1-admm.penni` ... `4-shrink.penni`): the
//!   model after each phase
//! - `retrain/`, `finetune/`, `admm/`: the trainer's own epoch checkpoints (it resumes from them)
//! - `report.txt`, `report.json`, `report.svg`: refreshed after every phase
//! - `progress.jsonl`: one JSON line per phase start/end
//!
//! Training lives in another crate; it is reached through the [`Trainer`] trait so that this
//! crate stays free of the deep-learning framework.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use penni_model::io::{load_with_extras, save_with_extras, write_atomic};
use penni_model::{Extras, Model, model_cost, passes};
use serde::{Deserialize, Serialize};

use crate::admm::admm;
use crate::budget::{BudgetReport, CostModel, MacCost, Target, choose_forms, choose_thresholds};
use crate::config::{Config, Method};
use crate::decompose::decompose;
use crate::error::{CompressError, Result};
use crate::prune::{gradual_zeros, prune, prune_groups, prune_to_zeros};
use crate::report::{CompressionReport, PhaseRecord, ReportFiles, TestResult};
use crate::shrink::shrink;
use crate::training::Trainer;
use crate::tucker::{TuckerOptions, tucker_decompose};

/// The phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Decompose,
    Retrain,
    Prune,
    Finetune,
    Shrink,
    Admm,
    Project,
}

impl Phase {
    /// PENNI's phases, in order.
    pub const ALL: [Phase; 5] = [Phase::Decompose, Phase::Retrain, Phase::Prune, Phase::Finetune, Phase::Shrink];
    /// Tucker-2's phases, in order.
    pub const TUCKER: [Phase; 4] = [Phase::Admm, Phase::Project, Phase::Finetune, Phase::Shrink];

    /// The phases of a method, in order.
    pub fn sequence(method: Method) -> &'static [Phase] {
        match method {
            Method::Penni => &Phase::ALL,
            Method::Tucker => &Phase::TUCKER,
            // decompose chooses each layer's form, the rest is PENNI's
            Method::Auto => &Phase::ALL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Decompose => "decompose",
            Phase::Retrain => "retrain",
            Phase::Prune => "prune",
            Phase::Finetune => "finetune",
            Phase::Shrink => "shrink",
            Phase::Admm => "admm",
            Phase::Project => "project",
        }
    }

    /// File of the model after this PENNI phase, inside the run directory.
    pub fn checkpoint_file(self) -> String {
        self.checkpoint_file_in(&Phase::ALL)
    }

    /// File of the model after this phase of `sequence`, numbered by its place there.
    pub fn checkpoint_file_in(self, sequence: &[Phase]) -> String {
        let i = sequence.iter().position(|p| *p == self).unwrap_or(0) + 1;
        format!("{i}-{}.penni", self.name())
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const STATE_FORMAT: &str = "penni-compress-run";
const STATE_VERSION: u32 = 1;

/// What `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub format: String,
    pub version: u32,
    pub config_fingerprint: String,
    pub model_fingerprint: String,
    /// Phases whose checkpoint is written, in order.
    pub completed: Vec<Phase>,
    pub report: CompressionReport,
}

/// What `compress` returns.
#[derive(Clone, Debug)]
pub struct CompressOutcome {
    pub model: Model,
    pub report: CompressionReport,
    /// The last phase that was already complete when this call started.
    pub resumed_after: Option<Phase>,
    /// Phases this call ran.
    pub phases_run: Vec<Phase>,
    pub report_files: ReportFiles,
    pub final_checkpoint: PathBuf,
}

/// 64-bit FNV-1a: a stable fingerprint (std's hasher is not stable across releases).
struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 = (self.0 ^ *x as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // separator, so that ("ab","c") and ("a","bc") differ
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Fingerprint of a model's graph and values.
pub fn model_fingerprint(model: &Model) -> String {
    let mut h = Fnv::new();
    h.bytes(model.name.as_bytes());
    h.bytes(format!("{:?}", model.input).as_bytes());
    h.bytes(model.output.as_bytes());
    for n in &model.nodes {
        h.bytes(n.name.as_bytes());
        h.bytes(format!("{:?}|{:?}|{}", n.op, n.inputs, n.output).as_bytes());
        for (p, t) in &n.params {
            h.bytes(p.as_bytes());
            h.bytes(format!("{:?}", t.shape).as_bytes());
            let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            h.bytes(&bytes);
        }
    }
    h.hex()
}

fn config_fingerprint(config: &Config) -> Result<String> {
    let json = serde_json::to_string(config).map_err(|e| CompressError::Invalid(format!("config does not serialise: {e}")))?;
    let mut h = Fnv::new();
    h.bytes(json.as_bytes());
    Ok(h.hex())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CompressError + '_ {
    move |source| CompressError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn state_err(path: &Path, message: impl Into<String>) -> CompressError {
    CompressError::State {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn write_state(path: &Path, state: &RunState) -> Result<()> {
    let json = serde_json::to_string_pretty(state).map_err(|e| state_err(path, format!("does not serialise: {e}")))?;
    write_atomic(path, json.as_bytes())?;
    Ok(())
}

fn read_state(path: &Path) -> Result<RunState> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let state: RunState =
        serde_json::from_str(&text).map_err(|e| state_err(path, format!("unreadable ({e}); delete the run directory to start over")))?;
    if state.format != STATE_FORMAT {
        return Err(state_err(path, format!("not a penni compression run (format '{}')", state.format)));
    }
    if state.version > STATE_VERSION {
        return Err(state_err(
            path,
            format!(
                "written by a newer penni (version {}, this build reads up to {STATE_VERSION})",
                state.version
            ),
        ));
    }
    Ok(state)
}

/// Appends one line to the progress log; a log failure never stops a run.
fn log_progress(run_dir: &Path, event: serde_json::Value) {
    let path = run_dir.join("progress.jsonl");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{event}");
    }
}

fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A trained model must have the graph it was given: training only changes values.
fn check_same_graph(before: &Model, after: &Model, phase: &str) -> Result<()> {
    after
        .validate()
        .map_err(|e| CompressError::Trainer(format!("{phase}: returned an invalid model: {e}")))?;
    if before.nodes.len() != after.nodes.len() || before.input != after.input || before.output != after.output {
        return Err(CompressError::Trainer(format!("{phase}: returned a model with another graph")));
    }
    for (a, b) in before.nodes.iter().zip(&after.nodes) {
        if a.name != b.name || a.op != b.op || a.inputs != b.inputs || a.output != b.output {
            return Err(CompressError::Trainer(format!(
                "{phase}: node '{}' changed its structure during training",
                a.name
            )));
        }
    }
    Ok(())
}

/// Zeros of `before` (conv/linear weights, coefficients) that are no longer zero in `after`.
fn revived_zeros(before: &Model, after: &Model) -> usize {
    let mut n = 0;
    for (a, b) in before.nodes.iter().zip(&after.nodes) {
        for p in ["weight", "coefficients"] {
            if matches!(a.op, penni_model::Op::BatchNorm2d { .. }) {
                continue;
            }
            if let (Some(x), Some(y)) = (a.params.get(p), b.params.get(p)) {
                n += x.data.iter().zip(&y.data).filter(|(x, y)| **x == 0.0 && **y != 0.0).count();
            }
        }
    }
    n
}

fn evaluate(trainer: &mut dyn Trainer, model: &Model, phase: &str) -> Result<f32> {
    let a = trainer.evaluate(model)?;
    if !(a.is_finite() && (0.0..=1.0).contains(&a)) {
        return Err(CompressError::Trainer(format!(
            "{phase}: evaluate returned {a}, expected a top-1 fraction in [0, 1]"
        )));
    }
    Ok(a)
}

/// MLCNN's reordering (`[mlcnn] reorder_avg_pools`, see `MlcnnConfig`): average pools before
/// the activations in front of them (approximate), then before the linear convs in front of
/// them (exact). The report notes what moved and the validation accuracy before fine-tuning.
fn reorder_pools(model: &Model, trainer: &mut dyn Trainer, report: &mut CompressionReport) -> Result<Model> {
    let mut m = model.clone();
    let moved = passes::pool_before_activation(&mut m);
    let pooled = passes::pool_before_conv(&mut m);
    m.validate()?;
    let macs = |m: &Model| -> Result<u64> { Ok(model_cost(m)?.totals.macs_paper) };
    let top1 = evaluate(trainer, &m, "mlcnn reorder")?;
    report.notes.push(format!(
        "mlcnn (approximate, beyond the paper): {moved} activation(s) moved after their average pool, changing what the model computes, then {pooled} average pool(s) moved before their convolution (exact); MACs (paper) {} -> {}; validation top-1 {:.2}% before any fine-tuning (every training phase that follows trains the reordered model)",
        macs(model)?,
        macs(&m)?,
        100.0 * top1
    ));
    Ok(m)
}

/// Runs (or resumes) the whole pipeline on `model` in `run_dir`.
///
/// A run directory belongs to one model and one config: resuming with a different one is an
/// error (start a new directory), because the checkpoints would not match the request.
pub fn compress(model: &Model, config: &Config, trainer: &mut dyn Trainer, run_dir: &Path) -> Result<CompressOutcome> {
    compress_with_latency(model, config, trainer, None, run_dir)
}

/// [`compress`] with a latency measurer for a latency budget (`budget.target_latency_ms`):
/// penni-cli passes one that times models with penni's engine.
pub fn compress_with_latency(
    model: &Model,
    config: &Config,
    trainer: &mut dyn Trainer,
    latency: Option<&mut dyn CostModel>,
    run_dir: &Path,
) -> Result<CompressOutcome> {
    config.validate()?;
    model.validate()?;
    let budget_opts = config.budget_options();
    let mut macs = MacCost;
    let cost: &mut dyn CostModel = match (budget_opts.as_ref().map(|b| b.target), latency) {
        (Some(Target::LatencyMs { .. }), Some(l)) => l,
        (Some(Target::LatencyMs { .. }), None) => {
            return Err(CompressError::Invalid(
                "a latency budget needs a latency measurer (penni compress times models with its engine)".into(),
            ));
        }
        _ => &mut macs,
    };
    std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
    let state_path = run_dir.join("state.json");
    let cfg_fp = config_fingerprint(config)?;
    let model_fp = model_fingerprint(model);
    let mut state = if state_path.exists() {
        let s = read_state(&state_path)?;
        if s.config_fingerprint != cfg_fp {
            return Err(state_err(
                &state_path,
                "this run was started with a different config (see config.toml there); use a new run directory or the same config",
            ));
        }
        if s.model_fingerprint != model_fp {
            return Err(state_err(
                &state_path,
                "this run was started from a different model; use a new run directory",
            ));
        }
        s
    } else {
        write_atomic(&run_dir.join("config.toml"), config.to_toml_string()?.as_bytes())?;
        let top1 = evaluate(trainer, model, "baseline")?;
        let mut report = CompressionReport::new(&model.name);
        report.phases.push(PhaseRecord::measure("baseline", model, Some(top1))?);
        let s = RunState {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            config_fingerprint: cfg_fp.clone(),
            model_fingerprint: model_fp,
            completed: vec![],
            report,
        };
        write_state(&state_path, &s)?;
        s
    };
    // set on resume too: runs started before the report named its method
    state.report.method = match config.method {
        Method::Penni => "penni",
        Method::Tucker => "tucker",
        Method::Auto => "auto",
    }
    .into();
    let sequence = Phase::sequence(config.method);
    if !sequence.starts_with(&state.completed) {
        return Err(state_err(
            &state_path,
            format!("completed phases {:?} are not a prefix of the pipeline", state.completed),
        ));
    }
    let resumed_after = state.completed.last().copied();
    let mut current = match resumed_after {
        None if config.mlcnn.reorder_avg_pools => reorder_pools(model, trainer, &mut state.report)?,
        None => model.clone(),
        Some(p) => {
            let path = run_dir.join(p.checkpoint_file_in(sequence));
            let (m, extras) =
                load_with_extras(&path).map_err(|e| state_err(&state_path, format!("cannot load the {p} checkpoint: {e}")))?;
            if extras.metadata.get("penni_compress.phase").map(String::as_str) != Some(p.name()) {
                return Err(state_err(&path, format!("is not the checkpoint of phase {p}")));
            }
            m
        }
    };
    let distill = config.distill_term(model);
    let mut phases_run = Vec::new();
    for &phase in sequence.iter().skip(state.completed.len()) {
        log_progress(
            run_dir,
            serde_json::json!({"event": "phase_start", "phase": phase.name(), "time": unix_time()}),
        );
        let next = match phase {
            Phase::Decompose => {
                let mut opts = config.decompose_options();
                let mut input = current.clone();
                if let Some(b) = &budget_opts {
                    let mut budget = BudgetReport::new(model, b, cost)?;
                    let mut eval = |m: &Model| trainer.evaluate_with_loss(m);
                    let topts = config.tucker_options();
                    let tucker = (config.method == Method::Auto).then_some((&topts, b.tucker_ranks.as_slice()));
                    let (forms, stage) = choose_forms(&current, &opts, tucker, b, budget.budget, cost, &mut eval)?;
                    if !stage.met {
                        state.report.notes.push(format!(
                            "budget: even at the cheapest forms the predicted cost ({:.4} {}) exceeds the budget ({:.4}); pruning has to remove the rest",
                            stage.predicted_cost, budget.unit, budget.budget
                        ));
                    }
                    // Tucker layers first, then PENNI on exactly its own layers (a Tucker core is
                    // a k x k conv that PENNI must leave alone)
                    if !forms.tucker.is_empty() {
                        let o = TuckerOptions {
                            only: Some(forms.tucker.keys().cloned().collect()),
                            per_layer: forms.tucker.clone(),
                            only_if_cheaper: false,
                            ..topts.clone()
                        };
                        let (m, r) = tucker_decompose(&input, &o)?;
                        state.report.tucker = Some(r);
                        input = m;
                    }
                    opts.only = Some(forms.penni.keys().cloned().collect());
                    opts.per_layer = forms.penni;
                    budget.bases = Some(stage);
                    state.report.budget = Some(budget);
                }
                let (m, r) = decompose(&input, &opts)?;
                state.report.decompose = Some(r);
                if let Some(stage) = state.report.budget.as_mut().and_then(|b| b.bases.as_mut()) {
                    stage.measured_cost = Some(cost.costs(&m)?.1);
                }
                m
            }
            Phase::Prune => {
                let mut opts = config.prune_options();
                if let (Some(b), Some(budget)) = (&budget_opts, state.report.budget.as_mut()) {
                    let mut eval = |m: &Model| trainer.evaluate_with_loss(m);
                    // the thresholds act after the group pruning: measure them there
                    let grouped = if opts.group_s > 0.0 {
                        prune_groups(&current, opts.group_s)?
                    } else {
                        current.clone()
                    };
                    let (per_layer, stage) =
                        choose_thresholds(&grouped, opts.prune_1x1, opts.prune_linear, b, budget.budget, cost, &mut eval)?;
                    if !stage.met {
                        state.report.notes.push(format!(
                            "budget NOT met: the cheapest thresholds leave {:.4} {} against a budget of {:.4}; the model is the cheapest the candidates allow (larger budget.s_choices or fewer budget.d_choices go further)",
                            stage.predicted_cost, budget.unit, budget.budget
                        ));
                    }
                    opts.per_layer = per_layer;
                    budget.prune = Some(stage);
                }
                let (m, r) = prune(&current, &opts)?;
                if let Some(stage) = state.report.budget.as_mut().and_then(|b| b.prune.as_mut()) {
                    stage.measured_cost = Some(cost.costs(&m)?.1);
                }
                let steps = config.prune.steps;
                let m = if steps > 1 {
                    // gradual: the first of `steps` equal parts of the zeros now, by magnitude
                    let grouped = if opts.group_s > 0.0 {
                        prune_groups(&current, opts.group_s)?
                    } else {
                        current.clone()
                    };
                    state.report.notes.push(format!(
                        "gradual pruning in {steps} steps: the prune phase applies the first part of the zeros, each fine-tuning round but the last ends with the next part; the costs above are of the final pruning"
                    ));
                    prune_to_zeros(&grouped, &gradual_zeros(&r, 1, steps), opts.prune_1x1, opts.prune_linear)?
                } else {
                    m
                };
                state.report.prune = Some(r);
                m
            }
            Phase::Admm => {
                let dir = run_dir.join(phase.name());
                let (m, r) = admm(&current, config, distill.as_ref(), trainer, &dir)?;
                check_same_graph(&current, &m, phase.name())?;
                state.report.admm = Some(r);
                m
            }
            Phase::Project => {
                let (m, r) = tucker_decompose(&current, &config.tucker_options())?;
                state.report.tucker = Some(r);
                m
            }
            Phase::Shrink => {
                let (m, r) = shrink(&current)?;
                state.report.shrink = Some(r);
                if let Some(budget) = state.report.budget.as_mut() {
                    budget.measured_final = Some(cost.costs(&m)?.1);
                }
                m
            }
            Phase::Finetune if config.prune.steps > 1 => {
                let report = state
                    .report
                    .prune
                    .clone()
                    .ok_or_else(|| state_err(&state_path, "gradual pruning: the prune phase left no report"))?;
                let (steps, opts) = (config.prune.steps, config.prune_options());
                let dir = run_dir.join(phase.name());
                let mut m = current.clone();
                let mut round = 0;
                while let Some(mut spec) = config.finetune_round(round) {
                    spec.distill = distill.clone();
                    let rdir = dir.join(&spec.name);
                    std::fs::create_dir_all(&rdir).map_err(io_err(&rdir))?;
                    let before = m.clone();
                    m = trainer.train(&before, &spec, &rdir)?;
                    check_same_graph(&before, &m, &spec.name)?;
                    let revived = revived_zeros(&before, &m);
                    if revived > 0 {
                        state.report.notes.push(format!(
                            "{}: the trainer made {revived} pruned entries non-zero (freeze_zeros was asked for)",
                            spec.name
                        ));
                    }
                    round += 1;
                    if round < steps {
                        m = prune_to_zeros(&m, &gradual_zeros(&report, round + 1, steps), opts.prune_1x1, opts.prune_linear)?;
                    }
                }
                m
            }
            Phase::Retrain | Phase::Finetune => {
                let mut spec = if phase == Phase::Retrain {
                    config.retrain_phase()
                } else {
                    config.finetune_phase()
                };
                spec.distill = distill.clone();
                if spec.epochs == 0 {
                    current.clone()
                } else {
                    let dir = run_dir.join(phase.name());
                    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                    let m = trainer.train(&current, &spec, &dir)?;
                    check_same_graph(&current, &m, phase.name())?;
                    if spec.freeze_zeros {
                        let revived = revived_zeros(&current, &m);
                        if revived > 0 {
                            state.report.notes.push(format!(
                                "{phase}: the trainer made {revived} pruned entries non-zero (freeze_zeros was asked for)"
                            ));
                        }
                    }
                    m
                }
            }
        };
        let top1 = evaluate(trainer, &next, phase.name())?;
        let record = PhaseRecord::measure(phase.name(), &next, Some(top1))?;
        let extras = Extras {
            metadata: BTreeMap::from([
                ("penni_compress.phase".to_string(), phase.name().to_string()),
                ("penni_compress.config".to_string(), cfg_fp.clone()),
            ]),
            tensors: BTreeMap::new(),
        };
        // checkpoint first, then the state that points at it: a crash in between redoes the phase
        save_with_extras(&next, &extras, &run_dir.join(phase.checkpoint_file_in(sequence)))?;
        state.report.phases.retain(|p| p.phase != phase.name());
        state.report.phases.push(record.clone());
        state.completed.push(phase);
        write_state(&state_path, &state)?;
        state.report.write(run_dir)?;
        log_progress(
            run_dir,
            serde_json::json!({"event": "phase_done", "phase": phase.name(), "time": unix_time(), "top1": top1,
                "params_paper": record.cost.params_paper, "params_all": record.cost.params_all,
                "macs_paper": record.cost.macs_paper, "macs_all": record.cost.macs_all}),
        );
        phases_run.push(phase);
        current = next;
    }
    // the test set's one look: after every phase is done, never before a choice
    if state.report.test.is_none() {
        let baseline = trainer.test(model)?;
        let last = trainer.test(&current)?;
        if let (Some(baseline_top1), Some(final_top1)) = (baseline, last) {
            state.report.test = Some(TestResult { baseline_top1, final_top1 });
            write_state(&state_path, &state)?;
        }
    }
    let report_files = state.report.write(run_dir)?;
    Ok(CompressOutcome {
        model: current,
        report: state.report,
        resumed_after,
        phases_run,
        report_files,
        final_checkpoint: run_dir.join(Phase::Shrink.checkpoint_file_in(sequence)),
    })
}
