//! The contract between the pipeline and whoever trains: what a training phase asks for, and
//! the [`Trainer`] that does it. Kept apart so that the config and the pipeline both read it
//! without reading each other.

use std::path::Path;

use penni_model::Model;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// How one training phase must train. Semantics the trainer implements:
/// - loss = cross-entropy + `l1_coefficients` * sum |coefficients| over decomposed layers;
/// - `alternate_interval = Some(k)`: epoch 0 trains coefficients with bases frozen, the next k
///   epochs bases with coefficients frozen, the next k coefficients, ...; `None`: both together.
///   Batchnorm and linear layers always train;
/// - `freeze_zeros`: entries of conv/linear weights and coefficients that are exactly zero at the
///   start stay exactly zero (gradient and update masked);
/// - SGD with `momentum`/`nesterov`/`weight_decay`; the lr of epoch e is
///   `lr * gamma^(number of milestones <= e)` (milestones are epoch indices).
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
    pub alternate_interval: Option<usize>,
    pub freeze_zeros: bool,
    pub seed: u64,
}

/// Training and evaluation, supplied by the caller (penni-train implements it).
pub trait Trainer {
    /// Trains a copy of `model` and returns it with the same graph and new values. Epoch
    /// checkpoints go to `checkpoint_dir` (created by the pipeline), so a rerun resumes there.
    fn train(&mut self, model: &Model, phase: &PhaseTraining, checkpoint_dir: &Path) -> Result<Model>;
    /// Top-1 accuracy, as a fraction in [0, 1], on the set every in-pipeline number and
    /// choice uses: a validation split held out of the training data.
    fn evaluate(&mut self, model: &Model) -> Result<f32>;
    /// Top-1 accuracy on the test set, measured once at the end of a run (baseline and final
    /// model) and reported beside validation, never used to choose. `None` when the caller has
    /// no test set apart from the set `evaluate` uses.
    fn test(&mut self, _model: &Model) -> Result<Option<f32>> {
        Ok(None)
    }
}
