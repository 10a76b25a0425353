//! CIFAR-10 / CIFAR-100, "binary version".
//!
//! Each record is the label byte(s) followed by 3072 pixel bytes that are already
//! planar (1024 R, 1024 G, 1024 B, row-major 32x32), i.e. exactly our CHW layout,
//! so images are copied straight from the file into the dataset buffer.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::idx::{MAX_ELEMENTS, open_file, read_full};
use crate::{DataError, Dataset, Result, Split};

const CIFAR_HINT: &str = "download the CIFAR \"binary version\" archive, unpack it, and pass \
its directory with --data-dir";

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100 fine labels, in label order (alphabetical, as shipped in
/// fine_label_names.txt). Kept here so a directory with only the .bin files works.
const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// How one CIFAR variant lays out its label bytes.
struct Layout {
    label_bytes: usize,
    /// Which of the label bytes is the class we train on (CIFAR-100: fine = 1).
    label_index: usize,
    classes: &'static [&'static str],
}

/// Appends all records of one file; the record count comes from the real file
/// length, never from anything inside the file.
fn read_file(path: &Path, layout: &Layout, images: &mut Vec<u8>, labels: &mut Vec<u16>) -> Result<()> {
    let file = open_file(path, CIFAR_HINT)?;
    let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let record = layout.label_bytes + PIXELS;
    if len == 0 || len % record as u64 != 0 {
        return Err(DataError::BadLength {
            path: path.to_path_buf(),
            len,
            record,
        });
    }
    let n = len / record as u64;
    let total = (images.len() as u64).saturating_add(n.saturating_mul(PIXELS as u64));
    if total > MAX_ELEMENTS {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            detail: format!("{n} records would exceed {MAX_ELEMENTS} pixel bytes in all"),
        });
    }
    let n = n as usize;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let start = images.len();
    images.resize(start + n * PIXELS, 0);
    labels.reserve(n);
    let mut label_buf = [0u8; 2];
    let short = |i: usize| DataError::Truncated {
        path: path.to_path_buf(),
        detail: format!("file shrank while reading: record {i} of {n} is incomplete"),
    };
    for i in 0..n {
        let lb = &mut label_buf[..layout.label_bytes];
        if read_full(&mut reader, lb).map_err(|e| DataError::io(path, e))? < lb.len() {
            return Err(short(i));
        }
        let label = lb[layout.label_index] as usize;
        if label >= layout.classes.len() {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                index: i,
                label: label as u32,
                num_classes: layout.classes.len(),
            });
        }
        labels.push(label as u16);
        let dst = &mut images[start + i * PIXELS..start + (i + 1) * PIXELS];
        if read_full(&mut reader, dst).map_err(|e| DataError::io(path, e))? < PIXELS {
            return Err(short(i));
        }
    }
    let mut extra = [0u8; 1];
    if read_full(&mut reader, &mut extra).map_err(|e| DataError::io(path, e))? != 0 {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            detail: "file grew while reading".into(),
        });
    }
    Ok(())
}

/// Accepts either the directory holding the .bin files or its parent (where the
/// official archive unpacks to `cifar-10-batches-bin/` / `cifar-100-binary/`).
fn locate(dir: &Path, first: &str, subdir: &str) -> PathBuf {
    if !dir.join(first).is_file() && dir.join(subdir).join(first).is_file() {
        dir.join(subdir)
    } else {
        dir.to_path_buf()
    }
}

fn load(dir: &Path, files: &[&str], layout: &Layout) -> Result<Dataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in files {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(DataError::NotFound {
                path,
                detail: "missing CIFAR batch file".into(),
                hint: CIFAR_HINT.into(),
            });
        }
        read_file(&path, layout, &mut images, &mut labels)?;
    }
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: SIDE,
        width: SIDE,
        num_classes: layout.classes.len(),
        class_names: layout.classes.iter().map(|s| s.to_string()).collect(),
    })
}

/// CIFAR-10 binary: `data_batch_1..5.bin` (train) or `test_batch.bin` (test).
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset> {
    let files: &[&str] = match split {
        Split::Train => &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ],
        Split::Test => &["test_batch.bin"],
    };
    let layout = Layout {
        label_bytes: 1,
        label_index: 0,
        classes: &CIFAR10_CLASSES,
    };
    let dir = locate(dir, files[0], "cifar-10-batches-bin");
    load(&dir, files, &layout)
}

/// CIFAR-100 binary: `train.bin` / `test.bin`, trained on the 100 fine labels
/// (the coarse label is ignored).
pub fn load_cifar100(dir: &Path, split: Split) -> Result<Dataset> {
    let files: &[&str] = match split {
        Split::Train => &["train.bin"],
        Split::Test => &["test.bin"],
    };
    let layout = Layout {
        label_bytes: 2,
        label_index: 1,
        classes: &CIFAR100_CLASSES,
    };
    let dir = locate(dir, files[0], "cifar-100-binary");
    load(&dir, files, &layout)
}
