//! Datasets for training and evaluating the CNN classifiers that PENNI compresses.
//!
//! Images are kept once, as u8 in N x C x H x W order, and converted to f32 only
//! batch by batch: a float copy of a dataset is four times larger and buys nothing,
//! since augmentation has to be re-applied every epoch anyway.
//!
//! All loaders treat their input as hostile: sizes from headers are checked
//! (with checked arithmetic) against the real file before anything is allocated,
//! and every error names the file it is about.

mod cifar;
mod error;
mod folder;
mod idx;
mod rng;
mod transform;

use std::path::{Path, PathBuf};

pub use cifar::{load_cifar10, load_cifar100};
pub use error::{DataError, Result};
pub use folder::{MAX_PNG_SIDE, load_image_folder, load_image_folder_split, load_png};
pub use idx::{load_fashion_mnist, load_idx, load_mnist};
pub use transform::{Batch, BatchIter, Transform, channel_stats};

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Environment variable naming the data directory when none is given explicitly.
pub const DATA_DIR_ENV: &str = "PENNI_DATA_DIR";

/// Appended to "not found" errors: the person hitting them usually just needs
/// to know how to get the data.
pub(crate) const DATA_HINT: &str = "get the data with scripts/fetch-data.sh, or \
`apt-get install dataset-fashion-mnist` (installs to /usr/share/datasets/fashion-mnist), \
or pass --data-dir / set PENNI_DATA_DIR to a directory holding it";

/// Which half of a dataset to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

/// Images stored once as u8, N x C x H x W, row-major; labels 0..num_classes.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    pub class_names: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image (C x H x W).
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `i` as C x H x W bytes. Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.images[i * s..(i + 1) * s]
    }

    /// The first `n` examples (all of them if `n >= len()`) after a shuffle seeded
    /// by `seed`. Meant for quick experiments and calibration sets, where a
    /// reproducible random sample matters more than exact class balance.
    pub fn subset(&self, n: usize, seed: u64) -> Dataset {
        let perm = rng::permutation(self.len(), rng::derive_seed(&[seed, 0x5B5E7]));
        self.select(&perm[..n.min(self.len())])
    }

    /// Holds out `n` examples (all if `n >= len()`), chosen by a shuffle seeded by `seed`, as
    /// a validation set: returns (the rest, in their original order; the validation set). The
    /// two are disjoint and together are this dataset.
    pub fn split_validation(&self, n: usize, seed: u64) -> (Dataset, Dataset) {
        let perm = rng::permutation(self.len(), rng::derive_seed(&[seed, 0x7A11D]));
        let n = n.min(self.len());
        let mut rest = perm[n..].to_vec();
        rest.sort_unstable();
        (self.select(&rest), self.select(&perm[..n]))
    }

    /// The examples at `indices`, in that order.
    fn select(&self, indices: &[usize]) -> Dataset {
        let s = self.image_size();
        let mut images = Vec::with_capacity(indices.len() * s);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
        }
    }

    /// Number of examples per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

fn check_dir(path: &Path, how: &str) -> Result<PathBuf> {
    if path.is_dir() {
        Ok(path.to_path_buf())
    } else {
        let what = if path.exists() { "not a directory" } else { "no such directory" };
        Err(DataError::NotFound {
            path: path.to_path_buf(),
            detail: format!("{what}; {how}"),
            hint: DATA_HINT.into(),
        })
    }
}

/// Picks the data directory: `explicit` (a --data-dir flag), else
/// `$PENNI_DATA_DIR`, else Debian's Fashion-MNIST path.
///
/// An explicit choice that does not exist is an error rather than a reason to
/// fall back, so a typo never silently trains on some other data.
pub fn resolve_data_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return check_dir(p, "given explicitly (--data-dir)");
    }
    if let Some(v) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
        return check_dir(Path::new(&v), &format!("taken from ${DATA_DIR_ENV}"));
    }
    check_dir(
        Path::new(DEBIAN_FASHION_MNIST_DIR),
        &format!("no --data-dir given and ${DATA_DIR_ENV} is not set, so looked at the default"),
    )
}
