//! PENNI ("Pruned Kernel Sharing for Efficient CNN Inference") as pure passes on the penni IR,
//! plus the pipeline that strings them together with training.
//!
//! Layers of the API, low to high:
//! - [`linalg`]: the small symmetric eigen-solver the decomposition needs;
//! - [`groups::DependencyGraph`]: which tensors share channels (residual groups);
//! - passes: [`decompose()`], [`prune()`], [`shrink()`], each `&Model -> (Model, report)`;
//! - [`tucker`]: the second compressor, Tucker-2 (HOSVD) of k x k convs into three convs;
//! - [`admm`]: ADMM training toward Tucker form (the Tucker method's first phase);
//! - [`compress`]: decompose -> retrain -> prune -> fine-tune -> shrink with checkpoints and
//!   resume, training reached through the [`Trainer`] trait; [`Config`] holds every setting;
//! - [`budget`]: the budget mode's per-layer choice of d and pruning threshold under a MAC budget;
//! - [`quantize`]: weight quantization with hybrid bit widths per part (bases, coefficients, ...);
//! - [`calibrate`]: static activation quantization, ranges from calibration images;
//! - [`report`]: per-phase records as a table, JSON and SVG.

pub mod admm;
pub mod budget;
pub mod calibrate;
pub mod config;
pub mod decompose;
pub mod error;
pub mod groups;
pub mod linalg;
pub mod pipeline;
pub mod prune;
pub mod quantize;
pub mod report;
pub mod shrink;
pub mod training;
pub mod tucker;

pub use budget::{BudgetOptions, BudgetReport, CostModel, Form, MacCost, Target};
pub use calibrate::{ActivationRange, Calibration, CalibrationOptions, calibrate_activations};
pub use config::{Config, Method};
pub use decompose::{DecomposeOptions, DecomposeReport, Init, decompose};
pub use error::{CompressError, Result};
pub use groups::{ChannelGroup, DependencyGraph};
pub use pipeline::{CompressOutcome, Phase, compress, compress_with_latency};
pub use prune::{PruneOptions, PruneReport, gradual_zeros, prune, prune_to_zeros};
pub use quantize::{QuantBits, QuantReport, quantize_weights};
pub use report::{CompressionReport, PhaseRecord, TestResult};
pub use shrink::{ShrinkReport, shrink};
pub use training::{DistillTerm, Evaluation, PhaseTraining, ProximalTerm, Trainer};
pub use tucker::{Ranks, TuckerOptions, TuckerReport, tucker_decompose};
