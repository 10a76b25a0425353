//! Training of penni IR models with burn 0.22 on the flex CPU backend. The IR stays the model:
//! a burn-side copy of the parameters is built from it, trained, and written back into it.

pub mod device;
pub mod error;
pub mod kernels;
pub mod net;
pub mod ops;
pub mod trainer;

pub use device::TrainDevice;
pub use error::{Result, TrainError};
pub use trainer::{
    Distill, EpochRecord, Evaluation, FakeQuantBits, LrSchedule, Proximal, RunOptions, TrainData, TrainOptions, TrainOutcome, evaluate,
    forward, gradients, train,
};
