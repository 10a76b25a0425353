//! Hostile and broken inputs: every case must yield the right error variant and
//! a message naming the offending file, and never panic or allocate wildly.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use penni_data::*;

/// One broken-input scenario: `setup` writes files into a fresh directory and
/// returns (path the message must name, result of the loader).
struct Case {
    name: &'static str,
    setup: fn(&Path) -> (PathBuf, Result<Dataset>),
    expect: fn(&DataError) -> bool,
}

fn good_labels(dir: &Path, n: u32) -> PathBuf {
    write(dir, "labels", &idx_bytes(8, &[n], &vec![1; n as usize]))
}

fn idx_images_case(dir: &Path, bytes: &[u8]) -> (PathBuf, Result<Dataset>) {
    let img = write(dir, "images", bytes);
    let lab = good_labels(dir, 2);
    let r = load_idx(&img, &lab);
    (img, r)
}

fn idx_labels_case(dir: &Path, bytes: &[u8]) -> (PathBuf, Result<Dataset>) {
    let img = write(dir, "images", &idx_bytes(8, &[2, 2, 2], &[0; 8]));
    let lab = write(dir, "labels", bytes);
    let r = load_idx(&img, &lab);
    (lab, r)
}

fn cifar10_test_case(dir: &Path, bytes: &[u8]) -> (PathBuf, Result<Dataset>) {
    let p = write(dir, "test_batch.bin", bytes);
    (p, load_cifar10(dir, Split::Test))
}

fn folder_case(dir: &Path, files: &[(&str, Vec<u8>)], culprit: &str) -> (PathBuf, Result<Dataset>) {
    for (name, bytes) in files {
        write(dir, name, bytes);
    }
    (dir.join(culprit), load_image_folder(dir))
}

fn as_dataset(r: Result<(usize, usize, usize, Vec<u8>)>) -> Result<Dataset> {
    r.map(|(c, h, w, images)| Dataset {
        images,
        labels: vec![],
        channels: c,
        height: h,
        width: w,
        num_classes: 0,
        class_names: vec![],
    })
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "images truncated (raw)",
            setup: |d| idx_images_case(d, &idx_bytes(8, &[2, 2, 2], &[0; 5])),
            expect: |e| matches!(e, DataError::Truncated { .. }),
        },
        Case {
            name: "labels truncated: header says 60000, file has 10",
            setup: |d| idx_labels_case(d, &idx_bytes(8, &[60000], &[0; 10])),
            expect: |e| matches!(e, DataError::CountMismatch { .. } | DataError::Truncated { .. }),
        },
        Case {
            name: "labels truncated with matching count",
            setup: |d| idx_labels_case(d, &idx_bytes(8, &[2], &[0])),
            expect: |e| matches!(e, DataError::Truncated { .. }),
        },
        Case {
            name: "empty images file",
            setup: |d| idx_images_case(d, &[]),
            expect: |e| matches!(e, DataError::Truncated { .. }),
        },
        Case {
            name: "header cut inside the dims",
            setup: |d| idx_images_case(d, &[0, 0, 8, 3, 0, 0, 0, 2, 0]),
            expect: |e| matches!(e, DataError::Truncated { .. }),
        },
        Case {
            name: "bad magic",
            setup: |d| idx_images_case(d, &[1, 2, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            expect: |e| matches!(e, DataError::BadMagic { .. }),
        },
        Case {
            name: "PNG given as IDX is bad magic",
            setup: |d| idx_images_case(d, &grey_png(2, 2, &[0; 4])),
            expect: |e| matches!(e, DataError::BadMagic { .. }),
        },
        Case {
            name: "IDX type code 0x0D (float) refused",
            setup: |d| idx_images_case(d, &idx_bytes(0x0D, &[2, 2, 2], &[0; 32])),
            expect: |e| matches!(e, DataError::BadType { code: 0x0D, .. }),
        },
        Case {
            name: "images with 2 dims",
            setup: |d| idx_images_case(d, &idx_bytes(8, &[2, 4], &[0; 8])),
            expect: |e| matches!(e, DataError::BadDims { .. }),
        },
        Case {
            name: "labels with 3 dims (files swapped)",
            setup: |d| idx_labels_case(d, &idx_bytes(8, &[2, 2, 2], &[0; 8])),
            expect: |e| matches!(e, DataError::BadDims { .. }),
        },
        Case {
            name: "zero-size dimension",
            setup: |d| idx_images_case(d, &idx_bytes(8, &[2, 0, 2], &[])),
            expect: |e| matches!(e, DataError::BadDims { .. }),
        },
        Case {
            name: "image count != label count",
            setup: |d| {
                let img = write(d, "images", &idx_bytes(8, &[3, 2, 2], &[0; 12]));
                let lab = good_labels(d, 2);
                let r = load_idx(&img, &lab);
                // The message must name both files; checked separately below too.
                (lab, r)
            },
            expect: |e| matches!(e, DataError::CountMismatch { images: 3, labels: 2, .. }),
        },
        Case {
            name: "huge dims header, tiny raw file",
            setup: |d| idx_images_case(d, &idx_bytes(8, &[60000, 28, 28], &[0; 50])),
            expect: |e| matches!(e, DataError::Truncated { .. }),
        },
        Case {
            name: "dims product beyond 2^31",
            setup: |d| idx_images_case(d, &idx_bytes(8, &[u32::MAX, u32::MAX, u32::MAX], &[0; 50])),
            expect: |e| matches!(e, DataError::TooLarge { .. }),
        },
        Case {
            name: "huge dims header, tiny gzip file",
            setup: |d| {
                let img = write(d, "images", &gz(&idx_bytes(8, &[60000, 28, 28], &[0; 50])));
                let lab = good_labels(d, 60000);
                let r = load_idx(&img, &lab);
                (img, r)
            },
            expect: |e| matches!(e, DataError::Truncated { .. }),
        },
        Case {
            name: "gzip magic followed by junk",
            setup: |d| idx_images_case(d, &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]),
            expect: |e| matches!(e, DataError::Gzip { .. }),
        },
        Case {
            name: "gzip stream cut in half",
            setup: |d| {
                let full = gz(&idx_bytes(
                    8,
                    &[2, 20, 20],
                    &(0..800).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>(),
                ));
                idx_images_case(d, &full[..full.len() / 2])
            },
            expect: |e| matches!(e, DataError::Gzip { .. }),
        },
        Case {
            name: "trailing garbage (raw)",
            setup: |d| idx_images_case(d, &idx_bytes(8, &[2, 2, 2], &[0; 9])),
            expect: |e| matches!(e, DataError::TrailingData { .. }),
        },
        Case {
            name: "trailing garbage inside gzip",
            setup: |d| idx_images_case(d, &gz(&idx_bytes(8, &[2, 2, 2], &[0; 12]))),
            expect: |e| matches!(e, DataError::TrailingData { .. }),
        },
        Case {
            name: "junk after the gzip member",
            setup: |d| {
                let mut b = gz(&idx_bytes(8, &[2, 2, 2], &[0; 8]));
                b.extend_from_slice(b"JUNKJUNKJUNK");
                idx_images_case(d, &b)
            },
            expect: |e| matches!(e, DataError::Gzip { .. }),
        },
        Case {
            name: "missing IDX file",
            setup: |d| {
                let img = d.join("does-not-exist");
                let lab = good_labels(d, 2);
                let r = load_idx(&img, &lab);
                (img, r)
            },
            expect: |e| matches!(e, DataError::NotFound { .. }),
        },
        Case {
            name: "Fashion-MNIST label 10 out of range",
            setup: |d| {
                write_mnist_dir(d, 3, 3, false);
                let lab = write(d, "t10k-labels-idx1-ubyte", &idx_bytes(8, &[3], &[0, 10, 1]));
                (lab, load_fashion_mnist(d, Split::Test))
            },
            expect: |e| {
                matches!(
                    e,
                    DataError::BadLabel {
                        index: 1,
                        label: 10,
                        num_classes: 10,
                        ..
                    }
                )
            },
        },
        Case {
            name: "Fashion-MNIST directory empty",
            setup: |d| (d.join("train-images-idx3-ubyte"), load_fashion_mnist(d, Split::Train)),
            expect: |e| matches!(e, DataError::NotFound { .. }),
        },
        Case {
            name: "CIFAR-10 length not a multiple of 3073",
            setup: |d| cifar10_test_case(d, &[0; 3073 * 2 + 5]),
            expect: |e| matches!(e, DataError::BadLength { record: 3073, .. }),
        },
        Case {
            name: "CIFAR-10 empty file",
            setup: |d| cifar10_test_case(d, &[]),
            expect: |e| matches!(e, DataError::BadLength { len: 0, .. }),
        },
        Case {
            name: "CIFAR-10 label 10",
            setup: |d| {
                let mut b = cifar_record(&[3], 0);
                b.extend(cifar_record(&[10], 0));
                cifar10_test_case(d, &b)
            },
            expect: |e| matches!(e, DataError::BadLabel { index: 1, label: 10, .. }),
        },
        Case {
            name: "CIFAR-100 fine label 100",
            setup: |d| {
                let p = write(d, "test.bin", &cifar_record(&[0, 100], 0));
                (p, load_cifar100(d, Split::Test))
            },
            expect: |e| {
                matches!(
                    e,
                    DataError::BadLabel {
                        label: 100,
                        num_classes: 100,
                        ..
                    }
                )
            },
        },
        Case {
            name: "CIFAR-100 record size is 3074",
            setup: |d| {
                let p = write(d, "train.bin", &cifar_record(&[0], 0));
                (p, load_cifar100(d, Split::Train))
            },
            expect: |e| matches!(e, DataError::BadLength { record: 3074, .. }),
        },
        Case {
            name: "CIFAR-10 train batch missing",
            setup: |d| {
                for i in 1..=4 {
                    write(d, &format!("data_batch_{i}.bin"), &cifar_record(&[0], 0));
                }
                (d.join("data_batch_5.bin"), load_cifar10(d, Split::Train))
            },
            expect: |e| matches!(e, DataError::NotFound { .. }),
        },
        Case {
            name: "image folder with no class folders",
            setup: |d| folder_case(d, &[("loose.png", grey_png(1, 1, &[0]))], ""),
            expect: |e| matches!(e, DataError::Empty { .. }),
        },
        Case {
            name: "class folder with no PNG",
            setup: |d| folder_case(d, &[("a/0.png", grey_png(1, 1, &[0])), ("b/notes.txt", b"hi".to_vec())], "b"),
            expect: |e| matches!(e, DataError::Empty { .. }),
        },
        Case {
            name: "corrupt .png in class folder",
            setup: |d| {
                folder_case(
                    d,
                    &[("a/0.png", grey_png(1, 1, &[0])), ("a/1.png", b"definitely not a png".to_vec())],
                    "a/1.png",
                )
            },
            expect: |e| matches!(e, DataError::Png { .. }),
        },
        Case {
            name: "truncated .png",
            setup: |d| {
                let full = grey_png(16, 16, &(0..=255).collect::<Vec<u8>>());
                folder_case(d, &[("a/0.png", full[..full.len() - 30].to_vec())], "a/0.png")
            },
            expect: |e| matches!(e, DataError::Png { .. }),
        },
        Case {
            name: "image size mismatch",
            setup: |d| {
                folder_case(
                    d,
                    &[("a/0.png", grey_png(2, 2, &[0; 4])), ("b/0.png", grey_png(2, 3, &[0; 6]))],
                    "b/0.png",
                )
            },
            expect: |e| {
                matches!(
                    e,
                    DataError::SizeMismatch {
                        want_h: 2,
                        want_w: 2,
                        got_h: 3,
                        got_w: 2,
                        ..
                    }
                )
            },
        },
        Case {
            name: "PNG beyond the side limit",
            setup: |d| {
                let p = write(d, "big.png", &png_header_only(20000, 20000));
                (p.clone(), as_dataset(load_png(&p)))
            },
            expect: |e| matches!(e, DataError::TooLarge { .. }),
        },
        Case {
            name: "PNG within the side limit but far too big for its file",
            setup: |d| {
                let p = write(d, "lying.png", &png_header_only(16000, 16000));
                (p.clone(), as_dataset(load_png(&p)))
            },
            expect: |e| matches!(e, DataError::Truncated { .. }),
        },
        Case {
            name: "missing PNG",
            setup: |d| {
                let p = d.join("nope.png");
                (p.clone(), as_dataset(load_png(&p)))
            },
            expect: |e| matches!(e, DataError::NotFound { .. }),
        },
        Case {
            name: "image folder does not exist",
            setup: |d| {
                let p = d.join("no-such-folder");
                (p.clone(), load_image_folder(&p))
            },
            expect: |e| matches!(e, DataError::NotFound { .. }),
        },
    ]
}

#[test]
fn bad_files_table() {
    let cases = cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for case in &cases {
        let dir = tempfile::tempdir().unwrap();
        let (path, result) = (case.setup)(dir.path());
        let path = path.to_string_lossy().trim_end_matches('/').to_string();
        match result {
            Ok(_) => failures.push(format!("{}: loaded without error", case.name)),
            Err(e) => {
                let msg = e.to_string();
                println!("{:<55} {msg}", case.name);
                if !(case.expect)(&e) {
                    failures.push(format!("{}: wrong variant: {e:?}", case.name));
                }
                if !msg.contains(&path) {
                    failures.push(format!("{}: message does not name {path}: {msg}", case.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn count_mismatch_names_both_files() {
    let d = tempfile::tempdir().unwrap();
    let img = write(d.path(), "imgs", &idx_bytes(8, &[3, 2, 2], &[0; 12]));
    let lab = good_labels(d.path(), 2);
    let msg = load_idx(&img, &lab).unwrap_err().to_string();
    assert!(msg.contains(&img.display().to_string()), "{msg}");
    assert!(msg.contains(&lab.display().to_string()), "{msg}");
    assert!(msg.contains('3') && msg.contains('2'), "{msg}");
}

#[test]
fn truncation_message_gives_the_numbers() {
    let d = tempfile::tempdir().unwrap();
    let img = write(d.path(), "train-images-idx3-ubyte", &idx_bytes(8, &[60000, 28, 28], &[0; 40]));
    let lab = write(d.path(), "train-labels-idx1-ubyte", &idx_bytes(8, &[60000], &[0; 1234]));
    let msg = load_idx(&img, &lab).unwrap_err().to_string();
    assert!(msg.contains("60000") && msg.contains("40"), "{msg}");
    let img = write(d.path(), "ok-images", &idx_bytes(8, &[60000, 1, 1], &[0; 60000]));
    let msg = load_idx(&img, &lab).unwrap_err().to_string();
    assert!(msg.contains(&lab.display().to_string()), "{msg}");
    assert!(msg.contains("header says 60000 labels") && msg.contains("1234"), "{msg}");
}

#[test]
fn not_found_says_how_to_get_the_data() {
    let d = tempfile::tempdir().unwrap();
    let msg = load_fashion_mnist(d.path(), Split::Test).unwrap_err().to_string();
    assert!(msg.contains("t10k-images-idx3-ubyte.gz"), "{msg}");
    assert!(msg.contains("scripts/fetch-data.sh"), "{msg}");
}
