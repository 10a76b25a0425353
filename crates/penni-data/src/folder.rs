//! PNG decoding and "one sub-folder per class" image folders.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::idx::{DEFLATE_MAX_RATIO, MAX_ELEMENTS, open_file};
use crate::{DataError, Dataset, Result};

/// Largest accepted PNG side. Far above any classifier input, and it keeps a
/// hostile header from asking for gigabytes.
pub const MAX_PNG_SIDE: u32 = 16384;

/// Budget for the PNG decoder's own allocations (chunk buffers, metadata); the
/// output image buffer is ours and is bounded separately.
const PNG_DECODER_LIMIT: usize = 64 << 20;

fn png_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Png {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Decodes one PNG into `(channels, height, width, CHW u8 data)`.
///
/// Everything is normalised to what a classifier wants: 8-bit (16-bit keeps its
/// high byte), palette expanded to RGB, alpha dropped (classifiers are trained
/// on opaque images), so `channels` is 1 (grey) or 3 (colour).
pub fn load_png(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let file = open_file(path, "")?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut decoder = png::Decoder::new_with_limits(BufReader::new(file), png::Limits { bytes: PNG_DECODER_LIMIT });
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let (w, h, bits) = {
        let info = decoder.read_header_info().map_err(|e| png_err(path, e))?;
        (info.width, info.height, info.bits_per_pixel() as u64)
    };
    if w > MAX_PNG_SIDE || h > MAX_PNG_SIDE {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            detail: format!("PNG is {w}x{h}, limit is {MAX_PNG_SIDE}x{MAX_PNG_SIDE}"),
        });
    }
    // Filtered scanlines (one filter byte each) are what the zlib stream must
    // expand to; if that cannot fit in the file even at deflate's best ratio,
    // the header lies and we stop before allocating the output buffer.
    let raw = h as u64 * (1 + (w as u64 * bits).div_ceil(8));
    if raw > file_len.saturating_mul(DEFLATE_MAX_RATIO) + 1024 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            detail: format!("PNG header says {w}x{h} ({raw} bytes of scanlines), which {file_len} bytes cannot hold"),
        });
    }
    let mut reader = decoder.read_info().map_err(|e| png_err(path, e))?;
    let size = reader.output_buffer_size().ok_or_else(|| DataError::TooLarge {
        path: path.to_path_buf(),
        detail: format!("PNG of {w}x{h} does not fit in memory"),
    })?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(|e| png_err(path, e))?;
    if out.bit_depth != png::BitDepth::Eight {
        return Err(png_err(path, format!("unexpected decoded bit depth {:?}", out.bit_depth)));
    }
    let (samples, channels) = match out.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => {
            return Err(png_err(path, "palette image was not expanded"));
        }
    };
    let (oh, ow) = (out.height as usize, out.width as usize);
    let plane = oh * ow;
    let mut chw = vec![0u8; channels * plane];
    for y in 0..oh {
        let row = &buf[y * out.line_size..][..ow * samples];
        for (x, px) in row.chunks_exact(samples).enumerate() {
            for c in 0..channels {
                chw[c * plane + y * ow + x] = px[c];
            }
        }
    }
    Ok((channels, oh, ow, chw))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: dir.to_path_buf(),
                detail: "no such directory".into(),
                hint: "pass a directory with one sub-folder of PNG files per class".into(),
            }
        } else {
            DataError::io(dir, e)
        }
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        // Hidden entries (.DS_Store, .git, ...) are never data.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(entry.path());
    }
    // Sorted so that class ids and example order do not depend on the file system.
    out.sort();
    Ok(out)
}

fn is_png_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// Grey images become RGB by copying the plane; used when a folder mixes both so
/// that every example has the same channel count.
fn grey_to_rgb(grey: &[u8], plane: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(grey.len() * 3);
    for img in grey.chunks_exact(plane) {
        for _ in 0..3 {
            out.extend_from_slice(img);
        }
    }
    out
}

/// Loads split `train/` or `test/` of a folder dataset (`root/<split>/<class>/*.png`). Class
/// ids follow the sorted class names of `train/`, so both splits must hold the same classes:
/// a test split that lacks one (or has one more) would shift every label after it, and is
/// refused with the names that differ.
pub fn load_image_folder_split(root: &Path, split: crate::Split) -> Result<Dataset> {
    let sub = |s: &str| root.join(s);
    let ds = load_image_folder(&sub(if split == crate::Split::Train { "train" } else { "test" }))?;
    if split == crate::Split::Train {
        return Ok(ds);
    }
    let train = sub("train");
    let train_classes: Vec<String> = list_dir(&train)?.iter().filter(|p| p.is_dir()).map(|p| file_name(p)).collect();
    if ds.class_names != train_classes {
        let missing: Vec<&String> = train_classes.iter().filter(|c| !ds.class_names.contains(c)).collect();
        let extra: Vec<&String> = ds.class_names.iter().filter(|c| !train_classes.contains(c)).collect();
        return Err(DataError::ClassMismatch {
            path: sub("test"),
            detail: format!(
                "its classes differ from train/'s (missing {missing:?}, not in train/ {extra:?}); labels follow the class \
                 folder names, so both splits need the same class folders (a class may hold few images, not none)"
            ),
        });
    }
    Ok(ds)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Loads `dir/<class>/*.png`; class ids follow the sorted sub-folder names.
///
/// Non-PNG files are skipped (folders often carry notes or thumbnails) but a
/// `.png` that fails to decode is an error: silently dropping examples would
/// change the dataset without anyone noticing.
pub fn load_image_folder(dir: &Path) -> Result<Dataset> {
    let classes: Vec<PathBuf> = list_dir(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
            detail: "no class sub-folders".into(),
        });
    }
    if classes.len() > u16::MAX as usize + 1 {
        return Err(DataError::TooLarge {
            path: dir.to_path_buf(),
            detail: format!("{} classes, at most {} supported", classes.len(), u16::MAX as usize + 1),
        });
    }

    let mut images: Vec<u8> = Vec::new();
    let mut labels: Vec<u16> = Vec::new();
    let mut shape: Option<(usize, usize, usize)> = None; // (channels, h, w)
    for (ci, cdir) in classes.iter().enumerate() {
        let files: Vec<PathBuf> = list_dir(cdir)?.into_iter().filter(|p| is_png_name(p) && p.is_file()).collect();
        if files.is_empty() {
            return Err(DataError::Empty {
                path: cdir.clone(),
                detail: "class folder holds no .png files".into(),
            });
        }
        for f in &files {
            let (c, h, w, data) = load_png(f)?;
            let (cur_c, want_h, want_w) = *shape.get_or_insert((c, h, w));
            if (h, w) != (want_h, want_w) {
                return Err(DataError::SizeMismatch {
                    path: f.clone(),
                    want_h,
                    want_w,
                    got_h: h,
                    got_w: w,
                });
            }
            let plane = h * w;
            if (images.len() + 3 * plane) as u64 > MAX_ELEMENTS {
                return Err(DataError::TooLarge {
                    path: dir.to_path_buf(),
                    detail: format!("more than {MAX_ELEMENTS} pixel bytes in all"),
                });
            }
            match (cur_c, c) {
                (1, 3) => {
                    images = grey_to_rgb(&images, plane);
                    images.extend_from_slice(&data);
                    shape = Some((3, h, w));
                }
                (3, 1) => images.extend_from_slice(&grey_to_rgb(&data, plane)),
                _ => images.extend_from_slice(&data),
            }
            labels.push(ci as u16);
        }
    }
    let (channels, height, width) = shape.unwrap_or((1, 0, 0));
    Ok(Dataset {
        images,
        labels,
        channels,
        height,
        width,
        num_classes: classes.len(),
        class_names: classes.iter().map(|p| file_name(p)).collect(),
    })
}
