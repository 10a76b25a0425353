use std::path::PathBuf;

/// Everything that can go wrong while reading a dataset.
///
/// Every variant carries the offending path and its message starts with it, because
/// the person reading the message usually has several data files and needs to know
/// which one to fix or re-download.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data directory or a data file does not exist. `hint` says how to get it.
    #[error("{}: not found ({detail}){}{hint}", path.display(), if hint.is_empty() { "" } else { "; " })]
    NotFound { path: PathBuf, detail: String, hint: String },

    /// An OS-level read error (permissions, I/O failure, ...).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file looked gzip'd but its compressed stream is corrupt.
    #[error("{}: bad gzip data: {source}", path.display())]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is shorter than its header (or record structure) says.
    #[error("{}: truncated: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },

    /// There are bytes after the last element the header accounts for.
    #[error("{}: trailing garbage: {detail}", path.display())]
    TrailingData { path: PathBuf, detail: String },

    /// Not an IDX file (magic must start with two zero bytes).
    #[error("{}: bad magic: {detail}", path.display())]
    BadMagic { path: PathBuf, detail: String },

    /// IDX element type other than 0x08 (unsigned byte).
    #[error(
        "{}: unsupported IDX type code 0x{code:02x}, expected 0x08 (unsigned byte)",
        path.display()
    )]
    BadType { path: PathBuf, code: u8 },

    /// Wrong number of dimensions, or a dimension of size zero.
    #[error("{}: bad dimensions: {detail}", path.display())]
    BadDims { path: PathBuf, detail: String },

    /// The splits of an image folder hold different classes (labels follow the class names).
    #[error("{}: {detail}", path.display())]
    ClassMismatch { path: PathBuf, detail: String },

    /// The header asks for more data than this crate is willing to hold.
    #[error("{}: too large: {detail}", path.display())]
    TooLarge { path: PathBuf, detail: String },

    /// The image file and the label file disagree on the number of examples.
    #[error(
        "{}: has {images} images but {} has {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        images_path: PathBuf,
        labels_path: PathBuf,
        images: usize,
        labels: usize,
    },

    /// A label outside `0..num_classes`.
    #[error(
        "{}: label {label} at example {index} is out of range (dataset has {num_classes} classes)",
        path.display()
    )]
    BadLabel {
        path: PathBuf,
        index: usize,
        label: u32,
        num_classes: usize,
    },

    /// A CIFAR file whose length is not a positive multiple of the record size.
    #[error(
        "{}: length {len} bytes is not a positive multiple of the {record}-byte record size",
        path.display()
    )]
    BadLength { path: PathBuf, len: u64, record: usize },

    /// A directory that should hold classes or images holds none.
    #[error("{}: empty: {detail}", path.display())]
    Empty { path: PathBuf, detail: String },

    /// A file ending in .png that the PNG decoder rejects.
    #[error("{}: bad PNG: {detail}", path.display())]
    Png { path: PathBuf, detail: String },

    /// An image whose size differs from the first image of the folder.
    #[error(
        "{}: image is {got_h}x{got_w} (HxW) but the folder's first image is {want_h}x{want_w}",
        path.display()
    )]
    SizeMismatch {
        path: PathBuf,
        want_h: usize,
        want_w: usize,
        got_h: usize,
        got_w: usize,
    },
}

impl DataError {
    /// The file or directory the error is about (the image file for `CountMismatch`).
    pub fn path(&self) -> &std::path::Path {
        match self {
            DataError::NotFound { path, .. }
            | DataError::Io { path, .. }
            | DataError::Gzip { path, .. }
            | DataError::Truncated { path, .. }
            | DataError::TrailingData { path, .. }
            | DataError::BadMagic { path, .. }
            | DataError::BadType { path, .. }
            | DataError::BadDims { path, .. }
            | DataError::TooLarge { path, .. }
            | DataError::ClassMismatch { path, .. }
            | DataError::BadLabel { path, .. }
            | DataError::BadLength { path, .. }
            | DataError::Empty { path, .. }
            | DataError::Png { path, .. }
            | DataError::SizeMismatch { path, .. } => path,
            DataError::CountMismatch { images_path, .. } => images_path,
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias used by every loader.
pub type Result<T> = std::result::Result<T, DataError>;
