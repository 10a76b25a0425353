use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model graph: {0}")]
    Graph(String),
    #[error("shape error at node '{node}': {message}")]
    Shape { node: String, message: String },
    #[error("node '{node}': parameter '{param}': {message}")]
    Param { node: String, param: String, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: written by a newer penni (format version {found}, this build reads up to {supported}); upgrade penni")]
    NewerFormat { path: PathBuf, found: u32, supported: u32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, ModelError>;
