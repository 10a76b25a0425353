//! The real Fashion-MNIST, where installed (Debian's dataset-fashion-mnist or
//! scripts/fetch-data.sh). Skips with a message when absent, and fails under CI=true.

use std::path::{Path, PathBuf};
use std::time::Instant;

use penni_data::*;

fn data_dir() -> Option<PathBuf> {
    penni_testkit::fashion_mnist(Path::new(DEBIAN_FASHION_MNIST_DIR))
}

#[test]
fn real_fashion_mnist_loads() {
    let Some(dir) = data_dir() else { return };
    let t0 = Instant::now();
    let train = load_fashion_mnist(&dir, Split::Train).unwrap();
    println!("loaded 60k training images in {:?}", t0.elapsed());
    let test = load_fashion_mnist(&dir, Split::Test).unwrap();
    assert_eq!(train.len(), 60000);
    assert_eq!(test.len(), 10000);
    for ds in [&train, &test] {
        assert_eq!((ds.channels, ds.height, ds.width), (1, 28, 28));
        assert_eq!(ds.images.len(), ds.len() * 784);
        assert!(ds.labels.iter().all(|&l| l < 10));
        assert_eq!(ds.num_classes, 10);
    }
    assert_eq!(train.class_counts(), vec![6000; 10]);
    assert_eq!(test.class_counts(), vec![1000; 10]);
    assert_eq!(train.class_names[9], "Ankle boot");

    // Well-known normalisation constants of the training set.
    let (m, s) = channel_stats(&train);
    assert!((m[0] - 0.2860).abs() < 1e-3, "mean {m:?}");
    assert!((s[0] - 0.3530).abs() < 1e-3, "std {s:?}");

    let t = Transform {
        pad_to: Some((32, 32)),
        crop_padding: 4,
        hflip: true,
        mean: m,
        std: s,
    };
    let t0 = Instant::now();
    let mut it = BatchIter::new(&train, 128, &t, true, true, 1, 0, true);
    assert_eq!(it.num_batches(), 468);
    let b = it.next().unwrap();
    println!("first batch of 128 in {:?}", t0.elapsed());
    assert_eq!(b.images.len(), 128 * 32 * 32);
    assert!(b.images.iter().all(|v| v.is_finite()));
}
