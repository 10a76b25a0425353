//! The contract between the pipeline and whoever trains: what a training phase asks for, and
//! the [`Trainer`] that does it. Kept apart so that the config and the pipeline both read it
//! without reading each other.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use penni_model::{Model, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// How one training phase must train. Semantics the trainer implements:
/// - loss = cross-entropy + `l1_coefficients` * sum |coefficients| over decomposed layers
///   + `group_l1_coefficients` * sum over input channels c of ||A[:, c, :]||_2;
/// - `alternate_interval = Some(k)`: epoch 0 trains coefficients with bases frozen, the next k
///   epochs bases with coefficients frozen, the next k coefficients, ...; `None`: both together.
///   Batchnorm and linear layers always train;
/// - `freeze_zeros`: entries of conv/linear weights and coefficients that are exactly zero at the
///   start stay exactly zero (gradient and update masked);
/// - SGD with `momentum`/`nesterov`/`weight_decay`; the lr of epoch e is
///   `lr * gamma^(number of milestones <= e)` (milestones are epoch indices);
/// - `proximal`: `rho/2 * ||W - T||^2` added to the loss for each named weight;
/// - `distill`: the cross-entropy becomes `(1 - weight) * CE + weight * T^2 * KL(teacher_T ||
///   student_T)` (softmax at temperature T; the teacher in inference mode on the same augmented
///   batch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseTraining {
    pub name: String,
    pub epochs: usize,
    pub lr: f64,
    pub milestones: Vec<usize>,
    pub gamma: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub l1_coefficients: f64,
    /// Weight of the group lasso sum_c ||A[:, c, :]||_2 over each decomposed layer's input
    /// channels (beyond the paper: it makes whole input channels die).
    #[serde(default)]
    pub group_l1_coefficients: f64,
    pub alternate_interval: Option<usize>,
    pub freeze_zeros: bool,
    pub seed: u64,
    /// ADMM's proximal term, when the phase trains toward a constraint set.
    #[serde(skip)]
    pub proximal: Option<ProximalTerm>,
    /// Knowledge distillation from a teacher model, when the config asks for it.
    #[serde(skip)]
    pub distill: Option<DistillTerm>,
}

/// Distillation from `teacher` (the uncompressed input model), see [`PhaseTraining`].
#[derive(Clone, Debug, PartialEq)]
pub struct DistillTerm {
    pub weight: f64,
    pub temperature: f64,
    pub teacher: Arc<Model>,
}

/// `rho/2 * ||W - T||^2` added to the loss for every weight named in `targets` (node name -> T,
/// the shape of the conv's or linear layer's weight).
#[derive(Clone, Debug, PartialEq)]
pub struct ProximalTerm {
    pub rho: f64,
    pub targets: BTreeMap<String, Tensor>,
}

/// A validation measurement: top-1 and, where the trainer computes it, the mean cross-entropy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub top1: f32,
    pub loss: Option<f32>,
}

/// Training and evaluation, supplied by the caller (penni-train implements it).
pub trait Trainer {
    /// Trains a copy of `model` and returns it with the same graph and new values. Epoch
    /// checkpoints go to `checkpoint_dir` (created by the pipeline), so a rerun resumes there.
    fn train(&mut self, model: &Model, phase: &PhaseTraining, checkpoint_dir: &Path) -> Result<Model>;
    /// Top-1 accuracy, as a fraction in [0, 1], on the set every in-pipeline number and
    /// choice uses: a validation split held out of the training data.
    fn evaluate(&mut self, model: &Model) -> Result<f32>;
    /// Top-1 and mean cross-entropy loss on the validation split. The budget mode ranks its
    /// candidates by the loss, which resolves changes too small to move top-1 on a few thousand
    /// examples; without a loss it falls back to top-1.
    fn evaluate_with_loss(&mut self, model: &Model) -> Result<Evaluation> {
        Ok(Evaluation {
            top1: self.evaluate(model)?,
            loss: None,
        })
    }
    /// Top-1 accuracy on the test set, measured once at the end of a run (baseline and final
    /// model) and reported beside validation, never used to choose. `None` when the caller has
    /// no test set apart from the set `evaluate` uses.
    fn test(&mut self, _model: &Model) -> Result<Option<f32>> {
        Ok(None)
    }
}
