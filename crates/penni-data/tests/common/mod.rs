//! Helpers shared by the integration tests: writers for the file formats, so
//! every test builds its own small, known data.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// An IDX file: magic `00 00 ty ndims`, big-endian dims, then `data`.
pub fn idx_bytes(ty: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `n` images of `h` x `w` where pixel (i, y, x) = (7i + 3y + x) mod 256, and
/// labels i mod classes.
pub fn synthetic_idx(n: usize, h: usize, w: usize, classes: usize) -> (Vec<u8>, Vec<u8>) {
    let mut img = Vec::with_capacity(n * h * w);
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                img.push(((7 * i + 3 * y + x) % 256) as u8);
            }
        }
    }
    let labels = (0..n).map(|i| (i % classes) as u8).collect();
    (img, labels)
}

/// Writes the four Fashion-MNIST files (optionally gzip'd) into `dir`.
pub fn write_mnist_dir(dir: &Path, n_train: usize, n_test: usize, gzip: bool) {
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let (img, lab) = synthetic_idx(n, 28, 28, 10);
        let ib = idx_bytes(8, &[n as u32, 28, 28], &img);
        let lb = idx_bytes(8, &[n as u32], &lab);
        let (ib, lb, ext) = if gzip { (gz(&ib), gz(&lb), ".gz") } else { (ib, lb, "") };
        write(dir, &format!("{prefix}-images-idx3-ubyte{ext}"), &ib);
        write(dir, &format!("{prefix}-labels-idx1-ubyte{ext}"), &lb);
    }
}

/// One CIFAR record: label bytes then 3072 pixels with pixel k = (seed + k) mod 256.
pub fn cifar_record(label_bytes: &[u8], seed: u8) -> Vec<u8> {
    let mut v = label_bytes.to_vec();
    v.extend((0..3072).map(|k| (seed as usize + k) as u8));
    v
}

/// Encodes a PNG. `data` is interleaved, in the given colour type and depth
/// (16-bit samples big-endian, as PNG stores them).
pub fn png_bytes(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
    png_bytes_with(w, h, color, depth, data, None)
}

pub fn png_bytes_with(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8], palette: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p.to_vec());
        }
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(data).unwrap();
    }
    out
}

pub fn grey_png(w: u32, h: u32, data: &[u8]) -> Vec<u8> {
    png_bytes(w, h, png::ColorType::Grayscale, png::BitDepth::Eight, data)
}

/// A syntactically valid PNG signature + IHDR chunk (correct CRC) claiming
/// `w` x `h` RGB, followed by a tiny IDAT and IEND. Used to test that absurd
/// dimensions are refused before anything big is allocated.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = vec![137, 80, 78, 71, 13, 10, 26, 10];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&[0u8; 64]).unwrap();
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}
