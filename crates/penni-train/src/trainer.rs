//! The training loop: SGD with (Nesterov) momentum and weight decay, learning-rate schedules,
//! PENNI's sparse retraining rules (L1 on coefficients, alternating factors, frozen zeros),
//! per-epoch atomic checkpoints and exact resume.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use penni_data::{BatchIter, Dataset, Transform};
use penni_model::{Extras, Model, io};
use serde::{Deserialize, Serialize};

use crate::device::TrainDevice;
use crate::error::{Result, TrainError};
use crate::net::{Net, ParamKind, to_tensor, to_vec};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum LrSchedule {
    Constant,
    /// Multiply by `gamma` at each milestone epoch.
    MultiStep {
        milestones: Vec<usize>,
        gamma: f64,
    },
    /// Cosine decay from the base rate to zero over the run.
    Cosine,
}

impl LrSchedule {
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::MultiStep { milestones, gamma } => base * gamma.powi(milestones.iter().filter(|m| epoch >= **m).count() as i32),
            LrSchedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos()),
        }
    }
}

/// Everything that determines the result of a run; a checkpoint records it so that `--resume`
/// refuses to continue a run with different settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Names the phase in logs and errors ("train", "retrain", "fine-tune").
    pub phase: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub schedule: LrSchedule,
    pub seed: u64,
    /// Adds `l1_coefficients * sum |coefficients|` over decomposed layers to the loss.
    pub l1_coefficients: f64,
    /// Adds `group_l1_coefficients * sum_c ||A[:, c, :]||_2` over decomposed layers: a group
    /// lasso on each input channel's coefficients (all outputs, all bases), so that whole input
    /// channels die and shrinking can remove them with their basis stage.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub group_l1_coefficients: f64,
    /// PENNI's alternation: epoch 0 trains the coefficients (bases frozen), the next
    /// `interval` epochs the bases (coefficients frozen), and so on. Other parameters always train.
    pub alternate_interval: Option<usize>,
    /// Entries of weights and coefficients that are exactly zero at the start stay exactly zero.
    pub freeze_zeros: bool,
    /// A proximal term `rho/2 * ||W - T||^2` per named weight (the ADMM step of a constrained
    /// training, e.g. toward Tucker form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proximal: Option<Proximal>,
    /// Quantization-aware training: the forward pass sees the weights quantized (symmetric, per
    /// output channel, per basis for bases) at these widths, the backward pass goes straight
    /// through to the f32 weights (straight-through estimator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fake_quant: Option<FakeQuantBits>,
    /// Knowledge distillation: the cross-entropy term becomes
    /// `(1 - weight) * CE + weight * T^2 * KL(softmax(t / T) || softmax(s / T))`, with t the
    /// teacher's logits (inference mode, same augmented batch) and s the student's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distill>,
}

/// The teacher and the weights of [`TrainOptions::distill`]. Checkpoints record a fingerprint
/// of the teacher, not the teacher, so a resume with another teacher is refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Distill {
    pub weight: f64,
    pub temperature: f64,
    #[serde(skip)]
    pub teacher: Option<Arc<Model>>,
    pub teacher_fingerprint: String,
}

impl Distill {
    pub fn new(weight: f64, temperature: f64, teacher: Arc<Model>) -> Self {
        let mut h = Fnv::default();
        for n in &teacher.nodes {
            h.eat(n.name.as_bytes());
            h.eat(&[0xff]);
            for (p, t) in &n.params {
                h.eat(p.as_bytes());
                h.eat(&[0xff]);
                for v in &t.data {
                    h.eat(&v.to_bits().to_le_bytes());
                }
            }
        }
        Self {
            weight,
            temperature,
            teacher: Some(teacher),
            teacher_fingerprint: h.hex(),
        }
    }
}

impl PartialEq for Distill {
    fn eq(&self, other: &Self) -> bool {
        self.weight == other.weight && self.temperature == other.temperature && self.teacher_fingerprint == other.teacher_fingerprint
    }
}

/// FNV-1a: a fingerprint that is stable across runs and releases.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn eat(&mut self, bytes: &[u8]) {
        for x in bytes {
            self.0 = (self.0 ^ *x as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Bit widths of quantization-aware training per part; 0 leaves a part in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeQuantBits {
    pub bases: u8,
    pub coefficients: u8,
    /// Dense k x k conv weights.
    pub weights: u8,
    /// 1x1 conv and linear weights.
    pub pointwise: u8,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// `rho/2 * ||W - T||^2` added to the loss for every conv or linear weight named in `targets`
/// (node name -> T, the weight's shape, row-major). Applied as its gradient `rho * (W - T)`,
/// beside weight decay. Checkpoints record `rho` and a fingerprint of the targets, not the
/// targets, so a resume with other targets is refused without storing them twice.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proximal {
    pub rho: f64,
    #[serde(skip)]
    pub targets: BTreeMap<String, Vec<f32>>,
    pub targets_fingerprint: String,
}

impl Proximal {
    pub fn new(rho: f64, targets: BTreeMap<String, Vec<f32>>) -> Self {
        let mut h = Fnv::default();
        for (name, t) in &targets {
            h.eat(name.as_bytes());
            h.eat(&[0xff]);
            for v in t {
                h.eat(&v.to_bits().to_le_bytes());
            }
        }
        Self {
            rho,
            targets,
            targets_fingerprint: h.hex(),
        }
    }
}

impl PartialEq for Proximal {
    fn eq(&self, other: &Self) -> bool {
        self.rho == other.rho && self.targets_fingerprint == other.targets_fingerprint
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            phase: "train".into(),
            epochs: 10,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            schedule: LrSchedule::Cosine,
            seed: 0,
            l1_coefficients: 0.0,
            group_l1_coefficients: 0.0,
            alternate_interval: None,
            freeze_zeros: false,
            proximal: None,
            fake_quant: None,
            distill: None,
        }
    }
}

impl TrainOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate must be a positive number, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay must be >= 0, got {}", self.weight_decay));
        }
        if !(self.l1_coefficients.is_finite() && self.l1_coefficients >= 0.0) {
            return bad(format!("L1 strength must be >= 0, got {}", self.l1_coefficients));
        }
        if !(self.group_l1_coefficients.is_finite() && self.group_l1_coefficients >= 0.0) {
            return bad(format!("group L1 strength must be >= 0, got {}", self.group_l1_coefficients));
        }
        if self.alternate_interval == Some(0) {
            return bad("alternation interval must be at least 1 epoch".into());
        }
        if let Some(q) = &self.fake_quant
            && [q.bases, q.coefficients, q.weights, q.pointwise].iter().any(|b| *b == 1 || *b > 16)
        {
            return bad(format!("fake-quantization widths must be 0 (f32) or 2..=16 bits, got {q:?}"));
        }
        if let Some(p) = &self.proximal
            && !(p.rho.is_finite() && p.rho >= 0.0)
        {
            return bad(format!("proximal strength rho must be >= 0, got {}", p.rho));
        }
        if let Some(d) = &self.distill {
            if !(d.weight.is_finite() && (0.0..=1.0).contains(&d.weight)) {
                return bad(format!("distillation weight must be in [0, 1], got {}", d.weight));
            }
            if !(d.temperature.is_finite() && d.temperature > 0.0) {
                return bad(format!("distillation temperature must be > 0, got {}", d.temperature));
            }
            if d.teacher.is_none() {
                return bad("distillation needs a teacher model".into());
            }
        }
        if let LrSchedule::MultiStep { gamma, .. } = self.schedule
            && !(gamma.is_finite() && gamma > 0.0)
        {
            return bad(format!("learning-rate factor gamma must be positive, got {gamma}"));
        }
        Ok(())
    }

    /// Which factor of the decomposed convs trains in `epoch` under the alternation rule.
    pub fn frozen_kind(&self, epoch: usize) -> Option<ParamKind> {
        let interval = self.alternate_interval?;
        let trains_bases = epoch >= 1 && ((epoch - 1) / interval).is_multiple_of(2);
        Some(if trains_bases { ParamKind::Coefficients } else { ParamKind::Bases })
    }
}

/// Where a run keeps its files and how it reports.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Checkpoints (`checkpoint.penni`, `checkpoint.prev.penni`) go here, one per epoch.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint in `checkpoint_dir` if there is one.
    pub resume: bool,
    /// JSON-lines metrics, one line per epoch, appended.
    pub metrics_log: Option<PathBuf>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Stop (with `TrainError::Stopped`) after this many epochs in total: simulates an interruption.
    pub stop_after_epochs: Option<usize>,
    /// Where the steps run (evaluation always runs on penni-engine). On a GPU the per-phase
    /// times of `EpochRecord` are approximate: its ops return before they finish.
    pub device: TrainDevice,
}

/// The data a run reads; the transforms own augmentation and normalisation.
pub struct TrainData<'a> {
    pub train: &'a Dataset,
    /// Measured after every epoch: the validation split, or the test split when there is none.
    pub test: Option<&'a Dataset>,
    /// What `test` is, for the progress line and `EpochRecord::eval_split` ("validation" or "test").
    pub eval_name: &'static str,
    pub train_transform: Transform,
    pub test_transform: Transform,
}

/// One epoch's metrics. The `*_seconds` fields after `seconds` are its wall-time breakdown
/// (records written before they existed read back as 0). The flex backend runs every tensor op
/// eagerly on the calling thread (its kernels fork-join on rayon internally and return when the
/// result is ready; `sync` is a no-op), so the time of a phase is the wall time between the
/// instants around it, with no forced synchronisation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub phase: String,
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_top1: f64,
    /// Loss and top-1 on the split in `eval_split` (the names predate the validation split).
    pub test_loss: Option<f64>,
    pub test_top1: Option<f64>,
    /// "validation" or "test": where `test_loss`/`test_top1` were measured (absent in records
    /// written before the validation split existed, which were test figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_split: Option<String>,
    /// Wall time of the epoch: training steps, writing the weights back, evaluation (not the checkpoint).
    pub seconds: f64,
    pub trained: String,
    /// Batch preparation: reading, augmenting and normalising the images (the batch iterator),
    /// building the step's parameter leaves and copying the batch into tensors.
    #[serde(default)]
    pub data_seconds: f64,
    /// Forward pass, cross-entropy and the L1 term: building the loss.
    #[serde(default)]
    pub forward_seconds: f64,
    /// `loss.backward()`: the gradients of every trainable parameter.
    #[serde(default)]
    pub backward_seconds: f64,
    /// SGD: weight decay, momentum, the update and the masks, for every parameter.
    #[serde(default)]
    pub optimizer_seconds: f64,
    /// Evaluation on the test set (0 without one), of which `eval_data_seconds` prepared batches
    /// and `eval_forward_seconds` ran the forward pass and read the loss and predictions back.
    #[serde(default)]
    pub eval_seconds: f64,
    #[serde(default)]
    pub eval_data_seconds: f64,
    #[serde(default)]
    pub eval_forward_seconds: f64,
    /// The rest of `seconds`: reading the loss and the predictions back for the running metrics,
    /// the progress bar, writing the trained weights back into the IR.
    #[serde(default)]
    pub other_seconds: f64,
    /// Writing this epoch's checkpoint. Known only after the checkpoint (which holds the history)
    /// is written, so it is in the metrics log line and the progress line, and `None` in the
    /// history (returned and checkpointed), which therefore reads the same after a resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_seconds: Option<f64>,
}

pub struct TrainOutcome {
    pub model: Model,
    pub history: Vec<EpochRecord>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Evaluation {
    pub top1: f64,
    pub loss: f64,
    pub examples: usize,
}

pub const CHECKPOINT: &str = "checkpoint.penni";
pub const PREVIOUS_CHECKPOINT: &str = "checkpoint.prev.penni";

/// The training device: burn's flex CPU backend.
pub fn device() -> Device {
    Device::flex()
}

fn check_data(model: &Model, ds: &Dataset, t: &Transform, what: &str) -> Result<()> {
    for (name, v) in [("mean", &t.mean), ("std", &t.std)] {
        if !(v.is_empty() || v.len() == 1 || v.len() == ds.channels) {
            return Err(TrainError::Config(format!(
                "{name} has {} values for {}-channel images",
                v.len(),
                ds.channels
            )));
        }
    }
    if t.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(TrainError::Config("std values must be positive".into()));
    }
    let (c, h, w) = t.output_dims(ds.channels, ds.height, ds.width);
    let i = &model.input;
    if (c, h, w) != (i.channels, i.height, i.width) {
        return Err(TrainError::Config(format!(
            "the {what} images are {c}x{h}x{w} after the transform, the model '{}' takes {}x{}x{} (use --pad-to or another model input size)",
            model.name, i.channels, i.height, i.width
        )));
    }
    let classes = match model.output_shape()? {
        penni_model::Shape::Vector(n) => n,
        s => {
            return Err(TrainError::Config(format!(
                "the model's output is a {s} map, a classifier must output a vector"
            )));
        }
    };
    if ds.num_classes > classes {
        return Err(TrainError::Config(format!(
            "the {what} data has {} classes, the model outputs {classes}",
            ds.num_classes
        )));
    }
    if ds.is_empty() {
        return Err(TrainError::Config(format!("the {what} dataset is empty")));
    }
    Ok(())
}

fn batch_tensors(b: &penni_data::Batch, classes: usize, device: &Device) -> (Tensor<4>, Vec<i64>, Tensor<2>) {
    let x = Tensor::from_data(
        TensorData::new(b.images.clone(), [b.batch_size, b.channels, b.height, b.width]),
        device,
    );
    let mut onehot = vec![0f32; b.batch_size * classes];
    for (i, l) in b.labels.iter().enumerate() {
        onehot[i * classes + *l as usize] = 1.0;
    }
    let y = Tensor::from_data(TensorData::new(onehot, [b.batch_size, classes]), device);
    (x, b.labels.clone(), y)
}

/// Correct predictions in a batch of logits.
fn correct(logits: &[f32], labels: &[i64], classes: usize) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            let row = &logits[i * classes..(i + 1) * classes];
            let best = row.iter().enumerate().fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
            best as i64 == **l
        })
        .count()
}

/// Top-1 accuracy and mean cross-entropy of a model in inference mode.
pub fn evaluate(model: &Model, ds: &Dataset, transform: &Transform, batch_size: usize) -> Result<Evaluation> {
    evaluate_timed(model, ds, transform, batch_size).map(|(e, _)| e)
}

/// Wall time of an evaluation: in all, preparing batches, and the forward pass with the reads
/// of the loss and the logits (which the flex backend has computed by the time they return).
#[derive(Clone, Copy, Debug, Default)]
struct EvalTiming {
    total: f64,
    data: f64,
    forward: f64,
}

fn evaluate_timed(model: &Model, ds: &Dataset, transform: &Transform, batch_size: usize) -> Result<(Evaluation, EvalTiming)> {
    let started = Instant::now();
    let mut timing = EvalTiming::default();
    check_data(model, ds, transform, "evaluation")?;
    let classes = model.output_shape()?.numel();
    let mut forward = EvalForward::new(model);
    let (mut hits, mut loss_sum) = (0usize, 0f64);
    let mut batches = BatchIter::new(ds, batch_size.max(1), transform, false, false, 0, 0, false);
    loop {
        let t = Instant::now();
        let Some(b) = batches.next() else { break };
        let t = lap(&mut timing.data, t);
        let log_probs = forward.log_probs(&b, classes)?;
        for (row, &label) in log_probs.chunks(classes).zip(&b.labels) {
            loss_sum -= row[label as usize] as f64;
        }
        hits += correct(&log_probs, &b.labels, classes);
        lap(&mut timing.forward, t);
    }
    timing.total = started.elapsed().as_secs_f64();
    Ok((
        Evaluation {
            top1: hits as f64 / ds.len() as f64,
            loss: loss_sum / ds.len() as f64,
            examples: ds.len(),
        },
        timing,
    ))
}

/// The inference forward pass of an evaluation: penni-engine, several times faster than a burn
/// forward pass, where it can plan the model (one plan per batch size); burn's otherwise.
struct EvalForward<'a> {
    model: &'a Model,
    plans: BTreeMap<usize, penni_engine::Plan>,
    /// Set once the engine has declined the model; burn runs from then on.
    burn: Option<(Net, Device)>,
    /// The model ends in a softmax (not log): the engine's output is probabilities.
    ends_in_softmax: bool,
}

impl<'a> EvalForward<'a> {
    fn new(model: &'a Model) -> Self {
        let last = model.producer(&model.output);
        let ends_in_softmax = last.is_some_and(|i| matches!(model.nodes[i].op, penni_model::Op::Softmax { log: false }));
        Self {
            model,
            plans: BTreeMap::new(),
            burn: None,
            ends_in_softmax,
        }
    }

    /// Log-probabilities of every class, row by row.
    fn log_probs(&mut self, b: &penni_data::Batch, classes: usize) -> Result<Vec<f32>> {
        if self.burn.is_none() {
            if !self.plans.contains_key(&b.batch_size) {
                // rayon's pool size is the thread count the user chose for training
                let opts = penni_engine::EngineOptions {
                    threads: rayon::current_num_threads(),
                    ..Default::default()
                };
                match penni_engine::Plan::new(self.model, b.batch_size, &opts) {
                    Ok(plan) => {
                        self.plans.insert(b.batch_size, plan);
                    }
                    Err(_) => {
                        let dev = device();
                        self.burn = Some((Net::from_model(self.model, &dev), dev));
                    }
                }
            }
            if let Some(plan) = self.plans.get_mut(&b.batch_size) {
                let out = plan.run(&b.images).map_err(|e| TrainError::Model(format!("evaluation: {e}")))?;
                let mut rows = out.to_vec();
                for row in rows.chunks_mut(classes) {
                    if self.ends_in_softmax {
                        row.iter_mut().for_each(|p| *p = p.max(f32::MIN_POSITIVE).ln());
                    } else {
                        log_softmax_in_place(row);
                    }
                }
                return Ok(rows);
            }
        }
        let (net, dev) = self.burn.as_mut().expect("set when the engine declined");
        let (x, _, _) = batch_tensors(b, classes, dev);
        let logits = net.logits(self.model, x, false)?;
        Ok(to_vec(log_softmax(logits, 1)))
    }
}

/// softmax(log_probs / T) row by row: the teacher's distribution at temperature T (log
/// probabilities differ from logits by a constant per row, which the softmax ignores).
fn soft_targets(mut log_probs: Vec<f32>, classes: usize, temperature: f64) -> Vec<f32> {
    for row in log_probs.chunks_mut(classes) {
        row.iter_mut().for_each(|v| *v = (*v as f64 / temperature) as f32);
        log_softmax_in_place(row);
        row.iter_mut().for_each(|v| *v = v.exp());
    }
    log_probs
}

fn log_softmax_in_place(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let lse = max + row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln() as f32;
    row.iter_mut().for_each(|v| *v -= lse);
}

/// Adds the time since `since` to `bucket` and returns now, the start of the next lap.
fn lap(bucket: &mut f64, since: Instant) -> Instant {
    let now = Instant::now();
    *bucket += (now - since).as_secs_f64();
    now
}

/// Momentum buffers, one per parameter slot, kept across epochs and in checkpoints.
struct Sgd {
    momentum: Vec<Option<Tensor<1>>>,
}

struct Checkpoint {
    model: Model,
    epochs_done: usize,
    momentum: Vec<Option<Vec<f32>>>,
    masks: Vec<Option<Vec<f32>>>,
    history: Vec<EpochRecord>,
}

fn slot_key(net: &Net, model: &Model, i: usize) -> String {
    let s = &net.slots[i];
    format!("{}.{}", model.nodes[s.node].name, s.name)
}

fn save_checkpoint(
    dir: &Path,
    model: &Model,
    net: &Net,
    sgd: &Sgd,
    masks: &[Option<Tensor<1>>],
    opts: &TrainOptions,
    epochs_done: usize,
    history: &[EpochRecord],
) -> Result<()> {
    let mut extras = Extras::default();
    extras
        .metadata
        .insert("train.options".into(), serde_json::to_string(opts).expect("options serialise"));
    extras.metadata.insert("train.epochs_done".into(), epochs_done.to_string());
    extras
        .metadata
        .insert("train.history".into(), serde_json::to_string(history).expect("history serialises"));
    for i in 0..net.slots.len() {
        let key = slot_key(net, model, i);
        let shape = vec![net.slots[i].shape.iter().product()];
        if let Some(m) = &sgd.momentum[i] {
            extras.tensors.insert(
                format!("momentum/{key}"),
                penni_model::Tensor {
                    shape: shape.clone(),
                    data: to_vec(m.clone()),
                },
            );
        }
        if let Some(m) = &masks[i] {
            extras.tensors.insert(
                format!("mask/{key}"),
                penni_model::Tensor {
                    shape,
                    data: to_vec(m.clone()),
                },
            );
        }
    }
    let current = dir.join(CHECKPOINT);
    if current.exists() {
        std::fs::rename(&current, dir.join(PREVIOUS_CHECKPOINT)).map_err(|source| TrainError::Io {
            path: current.clone(),
            source,
        })?;
    }
    io::save_with_extras(&net.to_model(model), &extras, &current)?;
    Ok(())
}

fn read_checkpoint(path: &Path, model: &Model, opts: &TrainOptions) -> Result<Checkpoint> {
    let (ck_model, extras) = io::load_with_extras(path)?;
    let recorded: TrainOptions = extras
        .metadata
        .get("train.options")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| TrainError::Checkpoint(format!("{}: not a training checkpoint", path.display())))?;
    if &recorded != opts {
        return Err(TrainError::Checkpoint(format!(
            "{}: the checkpoint was made with different training options ({recorded:?}); start a new run or use the same options",
            path.display()
        )));
    }
    let same_graph = ck_model.nodes.len() == model.nodes.len()
        && ck_model
            .nodes
            .iter()
            .zip(&model.nodes)
            .all(|(a, b)| a.name == b.name && a.op == b.op && a.inputs == b.inputs);
    if !same_graph || ck_model.input != model.input {
        return Err(TrainError::Checkpoint(format!(
            "{}: the checkpoint holds a different model",
            path.display()
        )));
    }
    let epochs_done = extras.metadata.get("train.epochs_done").and_then(|s| s.parse().ok()).unwrap_or(0);
    let history = extras
        .metadata
        .get("train.history")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let net = Net::from_model(&ck_model, &Device::flex());
    let fetch = |prefix: &str| -> Vec<Option<Vec<f32>>> {
        (0..net.slots.len())
            .map(|i| {
                extras
                    .tensors
                    .get(&format!("{prefix}/{}", slot_key(&net, &ck_model, i)))
                    .map(|t| t.data.clone())
            })
            .collect()
    };
    Ok(Checkpoint {
        momentum: fetch("momentum"),
        masks: fetch("mask"),
        model: ck_model,
        epochs_done,
        history,
    })
}

/// Loads the newest readable checkpoint: a corrupt latest one falls back to the previous.
fn load_resume_point(dir: &Path, model: &Model, opts: &TrainOptions) -> Result<Option<Checkpoint>> {
    let latest = dir.join(CHECKPOINT);
    let prev = dir.join(PREVIOUS_CHECKPOINT);
    if !latest.exists() && !prev.exists() {
        return Ok(None);
    }
    match read_checkpoint(&latest, model, opts) {
        Ok(c) => Ok(Some(c)),
        Err(e @ TrainError::Checkpoint(_)) => Err(e),
        Err(e) if prev.exists() => {
            eprintln!("warning: {e}; resuming from the previous checkpoint {}", prev.display());
            read_checkpoint(&prev, model, opts).map(Some)
        }
        Err(e) => Err(e),
    }
}

fn append_log(path: &Path, rec: &EpochRecord) -> Result<()> {
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    writeln!(f, "{}", serde_json::to_string(rec).expect("record serialises")).map_err(io)
}

/// The first parameter holding NaN/Inf, to name the layer in a divergence error.
fn first_non_finite(net: &Net, model: &Model) -> Option<String> {
    (0..net.slots.len())
        .find(|&i| to_vec(net.values[i].clone().inner()).iter().any(|v| !v.is_finite()))
        .map(|i| slot_key(net, model, i))
}

/// Per slot, the proximal target of its weight (`None` for other slots), with rho; checks that
/// every target names a conv or linear weight of the right size.
#[allow(clippy::type_complexity)]
fn proximal_targets(net: &Net, model: &Model, opts: &TrainOptions, dev: &Device) -> Result<Option<(f64, Vec<Option<Tensor<1>>>)>> {
    let Some(p) = &opts.proximal else { return Ok(None) };
    let mut out: Vec<Option<Tensor<1>>> = vec![None; net.slots.len()];
    for (name, target) in &p.targets {
        let slot = net
            .slots
            .iter()
            .position(|s| s.kind == ParamKind::Weight && model.nodes[s.node].name == *name)
            .ok_or_else(|| TrainError::Config(format!("proximal target '{name}' is not a conv or linear weight of the model")))?;
        let want = model.nodes[net.slots[slot].node].params[&net.slots[slot].name].data.len();
        if target.len() != want {
            return Err(TrainError::Config(format!(
                "proximal target '{name}' has {} values, the weight {want}",
                target.len()
            )));
        }
        out[slot] = Some(to_tensor(target, dev));
    }
    Ok(Some((p.rho, out)))
}

/// Per slot, (groups, bits) of its fake quantization, `None` for slots not quantized.
fn fake_quant_plan(net: &Net, model: &Model, opts: &TrainOptions) -> Vec<Option<(usize, u8)>> {
    let Some(q) = opts.fake_quant else {
        return vec![None; net.slots.len()];
    };
    net.slots
        .iter()
        .map(|slot| {
            let node = &model.nodes[slot.node];
            let (groups, bits) = match (&node.op, slot.kind) {
                (penni_model::Op::Conv2d(c), ParamKind::Weight) if c.kernel[0] * c.kernel[1] == 1 => (c.out_channels, q.pointwise),
                (penni_model::Op::Conv2d(c), ParamKind::Weight) => (c.out_channels, q.weights),
                (penni_model::Op::Linear { out_features, .. }, ParamKind::Weight) => (*out_features, q.pointwise),
                (penni_model::Op::DecomposedConv2d(c), ParamKind::Bases) => (c.num_bases, q.bases),
                (penni_model::Op::DecomposedConv2d(c), ParamKind::Coefficients) => (c.conv.out_channels, q.coefficients),
                _ => return None,
            };
            (bits > 0 && groups > 0).then_some((groups, bits))
        })
        .collect()
}

/// `w` quantized symmetrically in `groups` equal runs at `bits` in the forward pass, identity in
/// the backward pass: w + (q(w) - w).detach().
fn fake_quantize(w: Tensor<1>, groups: usize, bits: u8) -> Tensor<1> {
    let n = w.dims()[0];
    if !n.is_multiple_of(groups) {
        return w;
    }
    let qmax = ((1u32 << (bits - 1)) - 1) as f64;
    let g = w.clone().detach().reshape([groups, n / groups]);
    let scale = g.clone().abs().max_dim(1).div_scalar(qmax).clamp_min(1e-12);
    let q = (g / scale.clone()).round().clamp(-qmax, qmax) * scale;
    w.clone() + (q.reshape([n]) - w.detach())
}

/// Trains `model` and returns it with the trained weights written back.
pub fn train(model: &Model, data: &TrainData, opts: &TrainOptions, run: &RunOptions) -> Result<TrainOutcome> {
    opts.validate()?;
    model.validate()?;
    check_data(model, data.train, &data.train_transform, "training")?;
    if let Some(test) = data.test {
        check_data(model, test, &data.test_transform, "test")?;
    }
    let classes = model.output_shape()?.numel();
    // the teacher runs on penni-engine, in inference mode, on each training batch
    let mut teacher = match &opts.distill {
        Some(d) => {
            let t = d.teacher.as_deref().expect("validate checked the teacher");
            t.validate()?;
            check_data(t, data.train, &data.train_transform, "training (teacher)")?;
            let tc = t.output_shape()?.numel();
            if tc != classes {
                return Err(TrainError::Config(format!(
                    "the teacher '{}' outputs {tc} classes, the model being trained {classes}",
                    t.name
                )));
            }
            Some((d.weight, d.temperature, EvalForward::new(t)))
        }
        None => None,
    };
    let dev = run.device.open()?;
    let ad = dev.clone().autodiff();

    let mut start_epoch = 0;
    let mut history = vec![];
    let mut current = model.clone();
    let mut resumed: Option<Checkpoint> = None;
    if let Some(dir) = &run.checkpoint_dir {
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
        if run.resume {
            resumed = load_resume_point(dir, model, opts)?;
        }
    }
    if let Some(ck) = &resumed {
        start_epoch = ck.epochs_done;
        history = ck.history.clone();
        current = ck.model.clone();
    }
    let mut net = Net::from_model(&current, &dev);
    let n_slots = net.slots.len();
    let mut sgd = Sgd {
        momentum: vec![None; n_slots],
    };
    // Masks: 1 where a parameter may change, 0 where it was zero at the start of the run.
    let mut masks: Vec<Option<Tensor<1>>> = vec![None; n_slots];
    match &resumed {
        Some(ck) => {
            for i in 0..n_slots {
                sgd.momentum[i] = ck.momentum[i].as_ref().map(|v| to_tensor(v, &dev));
                masks[i] = ck.masks[i].as_ref().map(|v| to_tensor(v, &dev));
            }
        }
        None if opts.freeze_zeros => {
            for (i, slot) in net.slots.iter().enumerate() {
                if matches!(slot.kind, ParamKind::Weight | ParamKind::Coefficients) {
                    let v = &current.nodes[slot.node].params[&slot.name].data;
                    if v.contains(&0.0) {
                        masks[i] = Some(to_tensor(
                            &v.iter().map(|x| if *x == 0.0 { 0.0 } else { 1.0 }).collect::<Vec<_>>(),
                            &dev,
                        ));
                    }
                }
            }
        }
        None => {}
    }

    let coef_slots: Vec<usize> = (0..n_slots).filter(|&i| net.slots[i].kind == ParamKind::Coefficients).collect();
    // [N, C/groups, d] of each coefficient slot, for the group penalty
    let coef_groups: Vec<[usize; 3]> = coef_slots
        .iter()
        .map(|&i| match &current.nodes[net.slots[i].node].op {
            penni_model::Op::DecomposedConv2d(c) => [c.conv.out_channels, c.conv.channels_per_group(), c.num_bases],
            _ => [1, 1, 1],
        })
        .collect();
    let proximal = proximal_targets(&net, &current, opts, &dev)?;
    let fake_quant = fake_quant_plan(&net, &current, opts);
    for epoch in start_epoch..opts.epochs {
        if run.stop_after_epochs.is_some_and(|s| epoch >= s) {
            return Err(TrainError::Stopped(epoch));
        }
        let started = Instant::now();
        let lr = opts.schedule.lr(opts.lr, epoch, opts.epochs);
        let frozen = opts.frozen_kind(epoch);
        let trains = |k: ParamKind| Some(k) != frozen;
        let iter = BatchIter::new(
            data.train,
            opts.batch_size,
            &data.train_transform,
            true,
            true,
            opts.seed,
            epoch as u64,
            true,
        );
        let steps = iter.num_batches();
        if steps == 0 {
            return Err(TrainError::Config(format!(
                "the training set ({} examples) is smaller than one batch ({})",
                data.train.len(),
                opts.batch_size
            )));
        }
        let bar = progress_bar(
            run.progress,
            steps as u64,
            &format!("{} epoch {}/{}", opts.phase, epoch + 1, opts.epochs),
        );
        let (mut loss_sum, mut hits, mut seen) = (0f64, 0usize, 0usize);
        // Wall-time buckets of the epoch: data, forward, backward, optimizer.
        let (mut t_data, mut t_fwd, mut t_bwd, mut t_opt) = (0f64, 0f64, 0f64, 0f64);
        let mut batches = iter.enumerate();
        loop {
            let t = Instant::now();
            let Some((step, b)) = batches.next() else { break };
            // Leaves for this step: trainable parameters track gradients, frozen ones are constants.
            let leaves: Vec<Tensor<1>> = (0..n_slots)
                .map(|i| {
                    let v = net.values[i].clone().inner().autodiff();
                    if trains(net.slots[i].kind) { v.require_grad() } else { v }
                })
                .collect();
            // the forward pass sees the fake-quantized weights; gradients reach the leaves
            net.values = leaves
                .iter()
                .zip(&fake_quant)
                .map(|(v, q)| match q {
                    Some((groups, bits)) => fake_quantize(v.clone(), *groups, *bits),
                    None => v.clone(),
                })
                .collect();
            let (x, labels, onehot) = batch_tensors(&b, classes, &ad);
            let t = lap(&mut t_data, t);
            let logits = net.logits(&current, x, true)?;
            let ce = -(log_softmax(logits.clone(), 1) * onehot).sum() / b.batch_size as f64;
            let mut loss = match teacher.as_mut() {
                Some((weight, temperature, forward)) => {
                    let soft = Tensor::from_data(
                        TensorData::new(
                            soft_targets(forward.log_probs(&b, classes)?, classes, *temperature),
                            [b.batch_size, classes],
                        ),
                        &ad,
                    );
                    // cross-entropy to the soft targets: KL(teacher || student) up to the teacher's
                    // entropy, a constant; T^2 keeps its gradient's scale independent of T
                    let kd = -(log_softmax(logits.clone().div_scalar(*temperature), 1) * soft).sum() / b.batch_size as f64;
                    ce.clone() * (1.0 - *weight) + kd * (*weight * *temperature * *temperature)
                }
                None => ce.clone(),
            };
            if opts.l1_coefficients > 0.0 {
                for &i in &coef_slots {
                    loss = loss + net.values[i].clone().abs().sum() * opts.l1_coefficients;
                }
            }
            if opts.group_l1_coefficients > 0.0 {
                for (&i, &dims) in coef_slots.iter().zip(&coef_groups) {
                    // rows are n * C/groups + c: [N, C/groups, d], one group per input channel
                    let a = net.values[i].clone().reshape(dims);
                    let norms = (a.clone() * a).sum_dim(2).sum_dim(0).add_scalar(1e-12).sqrt();
                    loss = loss + norms.sum() * opts.group_l1_coefficients;
                }
            }
            let t = lap(&mut t_fwd, t);
            let grads = loss.backward();
            net.values = leaves;
            lap(&mut t_bwd, t);
            let ce_value = ce.into_scalar::<f32>() as f64;
            if !ce_value.is_finite() {
                let what = first_non_finite(&net, &current).map_or_else(
                    || format!("the loss became {ce_value}"),
                    |p| format!("the loss became {ce_value}; first non-finite parameter: {p}"),
                );
                return Err(TrainError::Diverged {
                    phase: opts.phase.clone(),
                    epoch,
                    step,
                    what,
                    checkpoint: run.checkpoint_dir.as_ref().map(|d| d.join(CHECKPOINT)).filter(|p| p.exists()),
                });
            }
            loss_sum += ce_value * b.batch_size as f64;
            hits += correct(&to_vec(logits.inner()), &labels, classes);
            seen += b.batch_size;
            let t = Instant::now();
            for i in 0..n_slots {
                let p = net.values[i].clone().inner();
                let Some(mut g) = net.values[i].grad(&grads) else {
                    net.values[i] = p;
                    continue;
                };
                if opts.weight_decay > 0.0 {
                    g = g + p.clone() * opts.weight_decay;
                }
                if let (Some((rho, _)), Some(t)) = (&proximal, proximal.as_ref().and_then(|(_, t)| t[i].as_ref())) {
                    g = g + (p.clone() - t.clone()) * *rho;
                }
                let update = if opts.momentum > 0.0 {
                    let buf = match sgd.momentum[i].take() {
                        Some(buf) => buf * opts.momentum + g.clone(),
                        None => g.clone(),
                    };
                    sgd.momentum[i] = Some(buf.clone());
                    if opts.nesterov { g + buf * opts.momentum } else { buf }
                } else {
                    g
                };
                let mut next = p - update * lr;
                if let Some(m) = &masks[i] {
                    next = next * m.clone();
                }
                net.values[i] = next;
            }
            lap(&mut t_opt, t);
            bar.inc(1);
        }
        bar.finish_and_clear();
        for v in net.values.iter_mut() {
            *v = v.clone().inner();
        }
        let trained_model = net.to_model(&current);
        // quantization-aware training is judged on the quantized weights it trains for
        let quantized_model;
        let judged = if opts.fake_quant.is_some() {
            let f32_values = net.values.clone();
            net.values = f32_values
                .iter()
                .zip(&fake_quant)
                .map(|(v, q)| q.map_or_else(|| v.clone(), |(groups, bits)| fake_quantize(v.clone(), groups, bits)))
                .collect();
            quantized_model = net.to_model(&current);
            net.values = f32_values;
            &quantized_model
        } else {
            &trained_model
        };
        let (test_loss, test_top1, eval_timing) = match data.test {
            Some(test) => {
                let (e, timing) = evaluate_timed(judged, test, &data.test_transform, 256)?;
                (Some(e.loss), Some(e.top1), timing)
            }
            None => (None, None, EvalTiming::default()),
        };
        let seconds = started.elapsed().as_secs_f64();
        let rec = EpochRecord {
            phase: opts.phase.clone(),
            epoch,
            lr,
            train_loss: loss_sum / seen as f64,
            train_top1: hits as f64 / seen as f64,
            test_loss,
            test_top1,
            eval_split: data.test.map(|_| data.eval_name.to_string()),
            seconds,
            trained: match frozen {
                Some(ParamKind::Bases) => "coefficients".into(),
                Some(_) => "bases".into(),
                None => "all".into(),
            },
            data_seconds: t_data,
            forward_seconds: t_fwd,
            backward_seconds: t_bwd,
            optimizer_seconds: t_opt,
            eval_seconds: eval_timing.total,
            eval_data_seconds: eval_timing.data,
            eval_forward_seconds: eval_timing.forward,
            other_seconds: (seconds - t_data - t_fwd - t_bwd - t_opt - eval_timing.total).max(0.0),
            checkpoint_seconds: None,
        };
        if !rec.train_loss.is_finite() {
            return Err(TrainError::Diverged {
                phase: opts.phase.clone(),
                epoch,
                step: steps,
                what: "the epoch's mean loss is not finite".into(),
                checkpoint: None,
            });
        }
        history.push(rec.clone());
        current = trained_model;
        // The checkpoint comes before the metrics line so that the line can carry its write time.
        let mut rec = rec;
        if let Some(dir) = &run.checkpoint_dir {
            let t = Instant::now();
            save_checkpoint(dir, &current, &net, &sgd, &masks, opts, epoch + 1, &history)?;
            rec.checkpoint_seconds = Some(t.elapsed().as_secs_f64());
        }
        if let Some(log) = &run.metrics_log {
            append_log(log, &rec)?;
        }
        if run.progress {
            eprintln!(
                "{} epoch {}/{}: lr {:.4} loss {:.4} train top-1 {:.2}%{} ({:.0}s: {})",
                opts.phase,
                epoch + 1,
                opts.epochs,
                lr,
                rec.train_loss,
                rec.train_top1 * 100.0,
                rec.test_top1
                    .map(|t| format!(" {} top-1 {:.2}%", data.eval_name, t * 100.0))
                    .unwrap_or_default(),
                rec.seconds,
                breakdown(&rec)
            );
        }
    }
    Ok(TrainOutcome {
        model: net.to_model(&current),
        history,
    })
}

/// The time breakdown of an epoch for the progress line, in seconds.
fn breakdown(r: &EpochRecord) -> String {
    let mut s = format!(
        "data {:.1} forward {:.1} backward {:.1} optimizer {:.1} eval {:.1} other {:.1}",
        r.data_seconds, r.forward_seconds, r.backward_seconds, r.optimizer_seconds, r.eval_seconds, r.other_seconds
    );
    if let Some(c) = r.checkpoint_seconds {
        s.push_str(&format!(" checkpoint {c:.1}"));
    }
    s
}

fn progress_bar(enabled: bool, len: u64, msg: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}<{eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(msg.to_string());
    bar
}

/// Per-parameter gradients of the cross-entropy loss on one batch, for tests and diagnostics.
pub fn gradients(model: &Model, x: &[f32], labels: &[i64]) -> Result<BTreeMap<String, Vec<f32>>> {
    let ad = device().autodiff();
    let mut net = Net::from_model(model, &ad);
    net.values = net.values.into_iter().map(|v| v.require_grad()).collect();
    let i = &model.input;
    let n = labels.len();
    let xt = Tensor::from_data(TensorData::new(x.to_vec(), [n, i.channels, i.height, i.width]), &ad);
    let classes = model.output_shape()?.numel();
    let mut onehot = vec![0f32; n * classes];
    for (k, l) in labels.iter().enumerate() {
        onehot[k * classes + *l as usize] = 1.0;
    }
    let y = Tensor::from_data(TensorData::new(onehot, [n, classes]), &ad);
    let logits = net.logits(model, xt, false)?;
    let loss = -(log_softmax(logits, 1) * y).sum() / n as f64;
    let grads = loss.backward();
    Ok((0..net.slots.len())
        .filter_map(|k| net.values[k].grad(&grads).map(|g| (slot_key(&net, model, k), to_vec(g))))
        .collect())
}

/// Inference-mode forward pass through burn, for comparing against other implementations.
pub fn forward(model: &Model, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let dev = device();
    let mut net = Net::from_model(model, &dev);
    let i = &model.input;
    let xt = Tensor::from_data(TensorData::new(x.to_vec(), [n, i.channels, i.height, i.width]), &dev);
    Ok(to_vec(net.forward(model, xt, false)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_the_time_breakdown_still_load() {
        let old = r#"{"phase":"train","epoch":0,"lr":0.1,"train_loss":1.5,"train_top1":0.4,"test_loss":null,"test_top1":null,"seconds":9.5,"trained":"all"}"#;
        let r: EpochRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.data_seconds, r.forward_seconds, r.eval_seconds), (0.0, 0.0, 0.0));
        assert_eq!(r.checkpoint_seconds, None);
        assert_eq!(r.eval_split, None, "old records say nothing about their split");
        // the history kept in checkpoints has no checkpoint time and writes no such key
        assert!(!serde_json::to_string(&r).unwrap().contains("checkpoint_seconds"));
        let logged = EpochRecord {
            checkpoint_seconds: Some(0.25),
            ..r
        };
        let line = serde_json::to_string(&logged).unwrap();
        assert!(line.contains("\"checkpoint_seconds\":0.25"), "{line}");
        assert!(breakdown(&logged).ends_with("checkpoint 0.2"), "{}", breakdown(&logged));
    }
}
