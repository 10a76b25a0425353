use std::path::PathBuf;

use penni_model::ModelError;

/// Everything that can go wrong in the compressor. User input (configs, models, run
/// directories, a trainer's results) never panics; it ends up here with a message that names
/// the offending key, layer or file.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The config file could not be parsed (syntax, unknown key, wrong type).
    #[error("{}config: {message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    ConfigParse { path: Option<PathBuf>, message: String },
    /// The config parsed but some values are out of range; every problem is listed.
    #[error("{}invalid config: {}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default(), problems.join("; "))]
    ConfigInvalid { path: Option<PathBuf>, problems: Vec<String> },
    /// A pass was asked for something the model does not allow (unknown layer name, ...).
    #[error("{0}")]
    Invalid(String),
    /// The trainer (implemented outside this crate) failed or returned something unusable.
    #[error("trainer: {0}")]
    Trainer(String),
    /// A run directory's state does not fit this run (other config, other model, corrupt file).
    #[error("run state {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, CompressError>;
