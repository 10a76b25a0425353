//! Fuzz-style property tests: arbitrary or mutated bytes fed to every loader
//! must produce `Ok` or `Err`, never a panic or a huge allocation. Case counts
//! are kept small so the whole file runs in a few seconds in debug builds.

mod common;

use common::*;
use penni_data::*;
use proptest::prelude::*;

/// `PROPTEST_CASES` overrides the default count for a longer local fuzz run.
fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases),
        // Failure persistence would write files next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs every loader over `bytes`. Results are ignored: only panics fail.
fn feed_all(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "blob", bytes);
    let labels = write(dir.path(), "labels", &idx_bytes(8, &[2], &[0, 1]));
    let _ = load_idx(&f, &f);
    let _ = load_idx(&f, &labels);
    let images = write(dir.path(), "images", &idx_bytes(8, &[2, 1, 1], &[0, 1]));
    let _ = load_idx(&images, &f);
    let _ = load_png(&f);
    write(dir.path(), "test_batch.bin", bytes);
    let _ = load_cifar10(dir.path(), Split::Test);
    write(dir.path(), "test.bin", bytes);
    let _ = load_cifar100(dir.path(), Split::Test);
    write(dir.path(), "cls/a.png", bytes);
    let _ = load_image_folder(dir.path());
}

/// Applies byte overwrites and an optional truncation to a valid file.
fn mutate(mut v: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(pos, b) in edits {
        if !v.is_empty() {
            let i = pos % v.len();
            v[i] = b;
        }
    }
    if let Some(c) = cut {
        v.truncate(c % (v.len() + 1));
    }
    v
}

fn valid_files() -> Vec<Vec<u8>> {
    let (img, _) = synthetic_idx(3, 4, 4, 2);
    let idx = idx_bytes(8, &[3, 4, 4], &img);
    let mut rgb = Vec::new();
    for k in 0..(5 * 4 * 3) {
        rgb.push((k * 37 % 256) as u8);
    }
    vec![
        idx.clone(),
        gz(&idx),
        grey_png(4, 4, &img[..16]),
        png_bytes(5, 4, png::ColorType::Rgb, png::BitDepth::Eight, &rgb),
        cifar_record(&[3], 9),
    ]
}

proptest! {
    #![proptest_config(cfg(500))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        feed_all(&bytes);
    }

    #[test]
    fn idx_headers_with_arbitrary_dims_never_panic(
        ty in prop_oneof![Just(8u8), any::<u8>()],
        dims in prop::collection::vec(prop_oneof![0u32..40, any::<u32>()], 0..5),
        body in prop::collection::vec(any::<u8>(), 0..300),
        gzip in any::<bool>(),
    ) {
        let raw = idx_bytes(ty, &dims, &body);
        feed_all(&if gzip { gz(&raw) } else { raw });
    }

    #[test]
    fn mutated_valid_files_never_panic(
        which in 0usize..5,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<usize>()),
    ) {
        let v = valid_files().swap_remove(which);
        feed_all(&mutate(v, &edits, cut));
    }
}
