//! IDX files (the MNIST family's format), plain or gzip'd.
//!
//! Layout: `00 00 <type> <ndims>`, then `ndims` big-endian u32 sizes, then the
//! elements. Only type 0x08 (unsigned byte) is accepted: it is the only one the
//! image datasets use, and accepting others would mean guessing at semantics.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::{DATA_HINT, DataError, Dataset, Result, Split};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const IDX_UBYTE: u8 = 0x08;
/// Refuse headers describing more elements than this: no real dataset file comes
/// close, and it bounds what a hostile header can make us allocate.
pub(crate) const MAX_ELEMENTS: u64 = 1 << 31;
/// Deflate cannot expand data by more than ~1032:1, so a gzip file of n bytes
/// can never legitimately decompress to more than this many times n. Used to
/// cap up-front allocations before the real size is known.
pub(crate) const DEFLATE_MAX_RATIO: u64 = 1032;

pub(crate) const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Maps an open error to `NotFound` when that is what it is, so callers get the
/// "how to get the data" hint instead of a bare OS message.
pub(crate) fn open_file(path: &Path, hint: &str) -> Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
                detail: "no such file".into(),
                hint: hint.into(),
            }
        } else {
            DataError::io(path, e)
        }
    })
}

/// Reads until `buf` is full or EOF; returns how many bytes were read. Unlike
/// `read_exact`, a short read is not an error here, so the caller can report it
/// as truncation with the actual numbers.
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An IDX file whose header has been read and validated but whose body has not.
struct IdxHeader {
    path: PathBuf,
    reader: Box<dyn Read>,
    gzip: bool,
    file_len: u64,
    header_len: u64,
    dims: Vec<usize>,
    body_len: u64,
}

impl IdxHeader {
    fn stream_err(&self, e: std::io::Error) -> DataError {
        stream_err(&self.path, self.gzip, e)
    }
}

fn stream_err(path: &Path, gzip: bool, e: std::io::Error) -> DataError {
    if gzip && e.kind() != std::io::ErrorKind::PermissionDenied {
        DataError::Gzip {
            path: path.to_path_buf(),
            source: e,
        }
    } else {
        DataError::io(path, e)
    }
}

fn describe(dims: &[usize], what: &str) -> String {
    match dims {
        [n] => format!("{n} {what}"),
        [n, rest @ ..] => {
            let shape: Vec<String> = rest.iter().map(|d| d.to_string()).collect();
            format!("{n} {what} of {}", shape.join("x"))
        }
        [] => format!("0 {what}"),
    }
}

/// Opens `path`, sniffs gzip by magic bytes (file names lie), and validates the
/// IDX header against `want_dims` and the size limits.
fn read_header(path: &Path, want_dims: usize, what: &str) -> Result<IdxHeader> {
    let mut file = open_file(path, DATA_HINT)?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut sniff = [0u8; 2];
    let got = read_full(&mut file, &mut sniff).map_err(|e| DataError::io(path, e))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| DataError::io(path, e))?;
    let gzip = got == 2 && sniff == GZIP_MAGIC;
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, file))
    };
    let after = if gzip { " (after gunzip)" } else { "" };

    let mut magic = [0u8; 4];
    let got = read_full(&mut reader, &mut magic).map_err(|e| stream_err(path, gzip, e))?;
    if got < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            detail: format!("{got} bytes{after}, too short for the 4-byte IDX magic"),
        });
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            detail: format!(
                "expected IDX magic 00 00 08 {want_dims:02x}, found {:02x} {:02x} {:02x} {:02x}{after}",
                magic[0], magic[1], magic[2], magic[3]
            ),
        });
    }
    if magic[2] != IDX_UBYTE {
        return Err(DataError::BadType {
            path: path.to_path_buf(),
            code: magic[2],
        });
    }
    let ndims = magic[3] as usize;
    if ndims != want_dims {
        return Err(DataError::BadDims {
            path: path.to_path_buf(),
            detail: format!("expected {want_dims} dimension(s) for {what}, header has {ndims}"),
        });
    }

    let mut raw_dims = vec![0u8; 4 * ndims];
    let got = read_full(&mut reader, &mut raw_dims).map_err(|e| stream_err(path, gzip, e))?;
    if got < raw_dims.len() {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "header announces {ndims} dimensions but the file ends after {} of their {} bytes{after}",
                got,
                raw_dims.len()
            ),
        });
    }
    let dims_u32: Vec<u32> = raw_dims
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = dims_u32.iter().position(|&d| d == 0) {
        return Err(DataError::BadDims {
            path: path.to_path_buf(),
            detail: format!("dimension {i} is zero (header dims {dims_u32:?})"),
        });
    }
    let mut body_len: u64 = 1;
    for &d in &dims_u32 {
        body_len = match body_len.checked_mul(d as u64) {
            Some(v) if v <= MAX_ELEMENTS => v,
            _ => {
                return Err(DataError::TooLarge {
                    path: path.to_path_buf(),
                    detail: format!("header dims {dims_u32:?} describe more than {MAX_ELEMENTS} elements"),
                });
            }
        };
    }
    let header_len = 4 + 4 * ndims as u64;
    let dims: Vec<usize> = dims_u32.iter().map(|&d| d as usize).collect();

    // For a plain file the length is known now: check it before allocating.
    if !gzip {
        let have = file_len.saturating_sub(header_len);
        if have < body_len {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                detail: format!(
                    "header says {} ({body_len} bytes after the {header_len}-byte header), file has {have}",
                    describe(&dims, what)
                ),
            });
        }
        if have > body_len {
            return Err(DataError::TrailingData {
                path: path.to_path_buf(),
                detail: format!(
                    "header says {} ({body_len} bytes after the {header_len}-byte header), file has {have}",
                    describe(&dims, what)
                ),
            });
        }
    }

    Ok(IdxHeader {
        path: path.to_path_buf(),
        reader,
        gzip,
        file_len,
        header_len,
        dims,
        body_len,
    })
}

/// Reads the body announced by the header, refusing to read (or allocate) more
/// than the header implies, and reporting short or long bodies.
fn read_body(mut h: IdxHeader, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let cap = if h.gzip {
        h.body_len.min(h.file_len.saturating_mul(DEFLATE_MAX_RATIO))
    } else {
        h.body_len
    };
    let mut data = Vec::with_capacity(cap as usize);
    // +1 so that one extra byte reveals trailing data without reading it all.
    let limit = h.body_len + 1;
    let res = (&mut h.reader).take(limit).read_to_end(&mut data);
    if let Err(e) = res {
        return Err(h.stream_err(e));
    }
    let got = data.len() as u64;
    let after = if h.gzip { " (after gunzip)" } else { "" };
    if got < h.body_len {
        return Err(DataError::Truncated {
            path: h.path,
            detail: format!(
                "header says {} ({} bytes after the {}-byte header), file has {got}{after}",
                describe(&h.dims, what),
                h.body_len,
                h.header_len
            ),
        });
    }
    if got > h.body_len {
        return Err(DataError::TrailingData {
            path: h.path,
            detail: format!(
                "header says {} ({} bytes after the {}-byte header), file has more{after}",
                describe(&h.dims, what),
                h.body_len,
                h.header_len
            ),
        });
    }
    Ok((h.dims, data))
}

/// Shared by `load_idx` and the named datasets; `classes` is `None` when the
/// number of classes must be inferred from the labels.
pub(crate) fn load_idx_pair(images: &Path, labels: &Path, classes: Option<&[&str]>) -> Result<Dataset> {
    // Both headers first: a count mismatch is then reported without
    // decompressing tens of megabytes.
    let ih = read_header(images, 3, "images")?;
    let lh = read_header(labels, 1, "labels")?;
    if ih.dims[0] != lh.dims[0] {
        return Err(DataError::CountMismatch {
            images_path: images.to_path_buf(),
            labels_path: labels.to_path_buf(),
            images: ih.dims[0],
            labels: lh.dims[0],
        });
    }
    let (_, label_bytes) = read_body(lh, "labels")?;
    if let Some(names) = classes
        && let Some(i) = label_bytes.iter().position(|&l| l as usize >= names.len())
    {
        return Err(DataError::BadLabel {
            path: labels.to_path_buf(),
            index: i,
            label: label_bytes[i] as u32,
            num_classes: names.len(),
        });
    }
    let (dims, image_bytes) = read_body(ih, "images")?;

    let labels_u16: Vec<u16> = label_bytes.iter().map(|&l| l as u16).collect();
    let (num_classes, class_names) = match classes {
        Some(names) => (names.len(), names.iter().map(|s| s.to_string()).collect()),
        None => {
            let k = label_bytes.iter().copied().max().map_or(0, |m| m as usize + 1);
            (k, (0..k).map(|i| i.to_string()).collect())
        }
    };
    Ok(Dataset {
        images: image_bytes,
        labels: labels_u16,
        channels: 1,
        height: dims[1],
        width: dims[2],
        num_classes,
        class_names,
    })
}

/// Loads an IDX image file (N x H x W, u8) and an IDX label file (N, u8).
///
/// Gzip is detected by the magic bytes rather than the extension because
/// downloads are routinely renamed or transparently decompressed. The number of
/// classes is inferred as `max label + 1` since IDX has no place to store it.
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    load_idx_pair(images, labels, None)
}

/// Finds `name` or `name.gz` in `dir`; the plain file wins when both exist
/// because it loads faster.
fn find_idx_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::NotFound {
        path: plain.clone(),
        detail: format!("looked for {} and {}", plain.display(), gz.display()),
        hint: DATA_HINT.into(),
    })
}

fn load_mnist_like(dir: &Path, split: Split, classes: &[&str]) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images = find_idx_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels = find_idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    load_idx_pair(&images, &labels, Some(classes))
}

/// Fashion-MNIST in the original IDX layout (`train-*` / `t10k-*`, optionally .gz).
pub fn load_fashion_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    load_mnist_like(dir, split, &FASHION_CLASSES)
}

/// MNIST digits in the original IDX layout; class names are "0".."9".
pub fn load_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    load_mnist_like(dir, split, &DIGITS)
}
