//! Loading well-formed files of every supported format, written by the tests.

mod common;

use common::*;
use penni_data::*;

#[test]
fn idx_round_trip_raw_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let (img, lab) = synthetic_idx(17, 5, 3, 4);
    let raw_i = write(dir.path(), "img.idx", &idx_bytes(8, &[17, 5, 3], &img));
    let raw_l = write(dir.path(), "lab.idx", &idx_bytes(8, &[17], &lab));
    // Deliberately misleading names: gzip must be detected by content.
    let gz_i = write(dir.path(), "img-gz.idx", &gz(&idx_bytes(8, &[17, 5, 3], &img)));
    let gz_l = write(dir.path(), "lab.plain.gz", &gz(&idx_bytes(8, &[17], &lab)));
    let plain_named_gz = write(dir.path(), "really-plain.gz", &idx_bytes(8, &[17], &lab));

    for (ip, lp) in [(&raw_i, &raw_l), (&gz_i, &gz_l), (&raw_i, &gz_l), (&gz_i, &plain_named_gz)] {
        let ds = load_idx(ip, lp).unwrap();
        assert_eq!(ds.len(), 17);
        assert!(!ds.is_empty());
        assert_eq!((ds.channels, ds.height, ds.width), (1, 5, 3));
        assert_eq!(ds.images, img);
        assert_eq!(ds.labels, lab.iter().map(|&l| l as u16).collect::<Vec<_>>());
        // Classes inferred from the labels (0..=3).
        assert_eq!(ds.num_classes, 4);
        assert_eq!(ds.class_names, vec!["0", "1", "2", "3"]);
        assert_eq!(ds.image(2), &img[2 * 15..3 * 15]);
        assert_eq!(ds.image_size(), 15);
    }
}

#[test]
fn fashion_mnist_dir_plain_and_gz() {
    for gzip in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_mnist_dir(dir.path(), 30, 12, gzip);
        let train = load_fashion_mnist(dir.path(), Split::Train).unwrap();
        let test = load_fashion_mnist(dir.path(), Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (30, 12));
        assert_eq!((train.height, train.width, train.channels), (28, 28, 1));
        assert_eq!(train.num_classes, 10);
        assert_eq!(train.class_names[0], "T-shirt/top");
        assert_eq!(train.class_names[9], "Ankle boot");
        assert_eq!(train.class_names.len(), 10);
        assert_eq!(train.class_counts(), vec![3; 10]);
        let (img, _) = synthetic_idx(12, 28, 28, 10);
        assert_eq!(test.images, img);

        let mnist = load_mnist(dir.path(), Split::Test).unwrap();
        assert_eq!(mnist.class_names[3], "3");
        assert_eq!(mnist.images, test.images);
    }
}

#[test]
fn resolve_explicit_dir() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(resolve_data_dir(Some(dir.path())).unwrap(), dir.path());
    let missing = dir.path().join("nope");
    let e = resolve_data_dir(Some(&missing)).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("scripts/fetch-data.sh"), "{msg}");
    assert!(msg.contains("apt-get install dataset-fashion-mnist"), "{msg}");
    assert!(msg.contains("--data-dir"), "{msg}");
}

fn cifar10_dir(n_per_file: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut names: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
    names.push("test_batch.bin".into());
    for (f, name) in names.iter().enumerate() {
        let mut bytes = Vec::new();
        for r in 0..n_per_file {
            let label = ((f * n_per_file + r) % 10) as u8;
            bytes.extend(cifar_record(&[label], (f * 16 + r) as u8));
        }
        write(dir.path(), name, &bytes);
    }
    dir
}

#[test]
fn cifar10_layout() {
    let dir = cifar10_dir(3);
    let train = load_cifar10(dir.path(), Split::Train).unwrap();
    let test = load_cifar10(dir.path(), Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (15, 3));
    assert_eq!((train.channels, train.height, train.width), (3, 32, 32));
    assert_eq!(train.num_classes, 10);
    assert_eq!(train.class_names[0], "airplane");
    assert_eq!(train.class_names[9], "truck");
    // Files are concatenated in batch order; record r of file f has label (3f+r)%10.
    let want: Vec<u16> = (0..15).map(|i| (i % 10) as u16).collect();
    assert_eq!(train.labels, want);
    // Record 1 of data_batch_2 is example 4; its pixel k is (16 + 1 + k) mod 256.
    let img = train.image(4);
    assert_eq!(img.len(), 3072);
    assert_eq!(img[0], 17);
    assert_eq!(img[1024], (17 + 1024) as u8); // first green pixel
    assert_eq!(img[3071], (17 + 3071) as u8);
    assert_eq!(test.labels, vec![5, 6, 7]);
    assert_eq!(test.image(0)[0], 80);
}

#[test]
fn cifar10_in_archive_subfolder() {
    let inner = cifar10_dir(1);
    let outer = tempfile::tempdir().unwrap();
    let sub = outer.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&sub).unwrap();
    for e in std::fs::read_dir(inner.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), sub.join(e.file_name())).unwrap();
    }
    assert_eq!(load_cifar10(outer.path(), Split::Test).unwrap().len(), 1);
}

#[test]
fn cifar100_uses_fine_labels() {
    let dir = tempfile::tempdir().unwrap();
    let mut train = Vec::new();
    for (coarse, fine) in [(19u8, 99u8), (0, 0), (7, 42)] {
        train.extend(cifar_record(&[coarse, fine], fine));
    }
    write(dir.path(), "train.bin", &train);
    write(dir.path(), "test.bin", &cifar_record(&[3, 5], 1));
    let ds = load_cifar100(dir.path(), Split::Train).unwrap();
    assert_eq!(ds.labels, vec![99, 0, 42]);
    assert_eq!(ds.num_classes, 100);
    assert_eq!(ds.class_names.len(), 100);
    assert_eq!(ds.class_names[0], "apple");
    assert_eq!(ds.class_names[99], "worm");
    assert_eq!(ds.image(2)[0], 42);
    assert_eq!(ds.image(2)[1], 43);
    let t = load_cifar100(dir.path(), Split::Test).unwrap();
    assert_eq!(t.labels, vec![5]);
}

#[test]
fn png_folder_grey() {
    let dir = tempfile::tempdir().unwrap();
    // "b_cat" sorts before "dog": class ids follow sorted names.
    write(dir.path(), "dog/1.png", &grey_png(3, 2, &[1, 2, 3, 4, 5, 6]));
    write(dir.path(), "dog/0.PNG", &grey_png(3, 2, &[9, 9, 9, 9, 9, 9]));
    write(dir.path(), "b_cat/x.png", &grey_png(3, 2, &[10, 20, 30, 40, 50, 60]));
    write(dir.path(), "b_cat/readme.txt", b"not an image");
    write(dir.path(), "LICENSE", b"top-level files are ignored");
    let ds = load_image_folder(dir.path()).unwrap();
    assert_eq!(ds.class_names, vec!["b_cat", "dog"]);
    assert_eq!(ds.num_classes, 2);
    assert_eq!((ds.channels, ds.height, ds.width), (1, 2, 3));
    assert_eq!(ds.labels, vec![0, 1, 1]);
    assert_eq!(ds.image(0), &[10, 20, 30, 40, 50, 60]);
    // Within a class files are sorted by name: 0.PNG before 1.png.
    assert_eq!(ds.image(1), &[9; 6]);
    assert_eq!(ds.image(2), &[1, 2, 3, 4, 5, 6]);
}

#[test]
fn png_folder_rgb_is_chw() {
    let dir = tempfile::tempdir().unwrap();
    // 2x2 RGB: pixel (y,x) = (r,g,b) = (10y+x, 100+10y+x, 200+10y+x), interleaved.
    let mut rgb = Vec::new();
    for y in 0..2u8 {
        for x in 0..2u8 {
            rgb.extend([10 * y + x, 100 + 10 * y + x, 200 + 10 * y + x]);
        }
    }
    write(
        dir.path(),
        "a/0.png",
        &png_bytes(2, 2, png::ColorType::Rgb, png::BitDepth::Eight, &rgb),
    );
    // RGBA: alpha must be dropped.
    let rgba: Vec<u8> = rgb.chunks(3).flat_map(|p| [p[0], p[1], p[2], 77]).collect();
    write(
        dir.path(),
        "b/0.png",
        &png_bytes(2, 2, png::ColorType::Rgba, png::BitDepth::Eight, &rgba),
    );
    let ds = load_image_folder(dir.path()).unwrap();
    assert_eq!((ds.channels, ds.height, ds.width), (3, 2, 2));
    let want = [0, 1, 10, 11, 100, 101, 110, 111, 200, 201, 210, 211];
    assert_eq!(ds.image(0), &want);
    assert_eq!(ds.image(1), &want);
}

#[test]
fn png_folder_mixing_grey_and_colour_becomes_rgb() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a/0.png", &grey_png(2, 1, &[5, 6]));
    write(
        dir.path(),
        "b/0.png",
        &png_bytes(2, 1, png::ColorType::Rgb, png::BitDepth::Eight, &[1, 2, 3, 4, 5, 6]),
    );
    write(dir.path(), "c/0.png", &grey_png(2, 1, &[7, 8]));
    let ds = load_image_folder(dir.path()).unwrap();
    assert_eq!(ds.channels, 3);
    assert_eq!(ds.image(0), &[5, 6, 5, 6, 5, 6]);
    assert_eq!(ds.image(1), &[1, 4, 2, 5, 3, 6]);
    assert_eq!(ds.image(2), &[7, 8, 7, 8, 7, 8]);
}

#[test]
fn load_png_depths_and_types() {
    let dir = tempfile::tempdir().unwrap();
    // 16-bit grey: keeps the high byte.
    let p16 = write(
        dir.path(),
        "g16.png",
        &png_bytes(2, 1, png::ColorType::Grayscale, png::BitDepth::Sixteen, &[0x12, 0x34, 0xFF, 0x01]),
    );
    assert_eq!(load_png(&p16).unwrap(), (1, 1, 2, vec![0x12, 0xFF]));
    // Grey + alpha: stays 1 channel.
    let pga = write(
        dir.path(),
        "ga.png",
        &png_bytes(2, 1, png::ColorType::GrayscaleAlpha, png::BitDepth::Eight, &[40, 0, 50, 255]),
    );
    assert_eq!(load_png(&pga).unwrap(), (1, 1, 2, vec![40, 50]));
    // 16-bit RGBA.
    let p = write(
        dir.path(),
        "rgba16.png",
        &png_bytes(1, 1, png::ColorType::Rgba, png::BitDepth::Sixteen, &[1, 0, 2, 0, 3, 0, 4, 0]),
    );
    assert_eq!(load_png(&p).unwrap(), (3, 1, 1, vec![1, 2, 3]));
    // 1-bit grey is scaled to 0/255.
    let p1 = write(
        dir.path(),
        "g1.png",
        &png_bytes(8, 1, png::ColorType::Grayscale, png::BitDepth::One, &[0b1010_0000]),
    );
    assert_eq!(load_png(&p1).unwrap().3, vec![255, 0, 255, 0, 0, 0, 0, 0]);
    // Palette: expanded to RGB.
    let pal = write(
        dir.path(),
        "pal.png",
        &png_bytes_with(
            2,
            1,
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            &[1, 0],
            Some(&[9, 8, 7, 1, 2, 3]),
        ),
    );
    assert_eq!(load_png(&pal).unwrap(), (3, 1, 2, vec![1, 9, 2, 8, 3, 7]));
}

/// The splits of a folder dataset share the class ids of train/: a test/ that lacks a class
/// (or has another) is refused with the names, instead of shifting every label after it.
#[test]
fn png_folder_splits_must_hold_the_same_classes() {
    let dir = tempfile::tempdir().unwrap();
    let img = grey_png(2, 2, &[1, 2, 3, 4]);
    for class in ["ant", "bee", "cat"] {
        write(dir.path(), &format!("train/{class}/0.png"), &img);
    }
    for class in ["ant", "cat"] {
        write(dir.path(), &format!("test/{class}/0.png"), &img);
    }
    let train = load_image_folder_split(dir.path(), Split::Train).unwrap();
    assert_eq!(train.labels, vec![0, 1, 2]);
    let err = load_image_folder_split(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::ClassMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("\"bee\"") && msg.contains("test"), "{msg}");

    write(dir.path(), "test/bee/0.png", &img);
    let test = load_image_folder_split(dir.path(), Split::Test).unwrap();
    assert_eq!(test.labels, train.labels);
    assert_eq!(test.class_names, train.class_names);
}
