//! The one error type of the engine.

use penni_model::ModelError;

/// Everything that can go wrong when planning or running a model. Bad user input (a model the
/// engine cannot run, an input of the wrong length) is always one of these, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("node '{node}': {message}")]
    Unsupported { node: String, message: String },
    #[error("invalid engine option: {0}")]
    Options(String),
    #[error("input has {got} values, the plan expects {expected} (batch {batch} x {shape})")]
    InputLength {
        got: usize,
        expected: usize,
        batch: usize,
        shape: String,
    },
    #[error("the model needs {0} bytes of activation memory, more than this engine allocates")]
    TooLarge(u128),
    #[error("could not start worker threads: {0}")]
    Threads(String),
    #[error("internal engine error: {0}")]
    Internal(String),
}
