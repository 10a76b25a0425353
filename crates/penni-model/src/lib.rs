//! The penni model IR: the one representation that the trainer, the compressor, the inference
//! engine and the ONNX code all read and write.

pub mod batchnorm;
pub mod cost;
pub mod error;
pub mod gaps;
pub mod graph;
pub mod grid;
pub mod io;
pub mod passes;
pub mod reference;
pub mod stages;
pub mod tensor;
pub mod zoo;

pub use cost::{LayerCost, ModelCost, Totals, model_cost};
pub use error::{ModelError, Result};
pub use graph::{Activation, Conv2d, DecomposedConv2d, Input, Model, Node, Op, Pool2d, Shape};
pub use io::{Extras, load, save};
pub use tensor::Tensor;
