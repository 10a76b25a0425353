#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    ModelFile(#[from] penni_model::ModelError),
    #[error(transparent)]
    Data(#[from] penni_data::DataError),
    #[error("{0}")]
    Model(String),
    #[error("invalid training option: {0}")]
    Config(String),
    #[error("{0}")]
    Checkpoint(String),
    #[error(
        "training diverged in phase '{phase}', epoch {epoch}, step {step}: {what}; the last good checkpoint is kept{}",
        checkpoint.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default()
    )]
    Diverged {
        phase: String,
        epoch: usize,
        step: usize,
        what: String,
        checkpoint: Option<std::path::PathBuf>,
    },
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// The run was asked to stop early (used to simulate interruptions in tests).
    #[error("stopped after epoch {0} as requested")]
    Stopped(usize),
}

pub type Result<T> = std::result::Result<T, TrainError>;
