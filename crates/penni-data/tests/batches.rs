//! Batching, shuffling, augmentation and normalisation.

use std::collections::HashSet;

use penni_data::*;

/// `n` grey h x w images; image i has every pixel = i (so the value identifies
/// the example) and label i.
fn indexed(n: usize, h: usize, w: usize) -> Dataset {
    let mut images = Vec::new();
    for i in 0..n {
        images.extend(std::iter::repeat_n(i as u8, h * w));
    }
    Dataset {
        images,
        labels: (0..n as u16).collect(),
        channels: 1,
        height: h,
        width: w,
        num_classes: n,
        class_names: (0..n).map(|i| i.to_string()).collect(),
    }
}

/// One image whose pixels are all distinct: (y, x) -> 1 + y * w + x.
fn ramp(c: usize, h: usize, w: usize) -> Dataset {
    let images = (0..c * h * w).map(|k| (1 + k % (h * w) + 100 * (k / (h * w))) as u8).collect();
    Dataset {
        images,
        labels: vec![0],
        channels: c,
        height: h,
        width: w,
        num_classes: 1,
        class_names: vec!["x".into()],
    }
}

fn plain() -> Transform {
    Transform::default()
}

fn epoch_labels(ds: &Dataset, t: &Transform, bs: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<i64> {
    BatchIter::new(ds, bs, t, true, shuffle, seed, epoch, false)
        .flat_map(|b| b.labels)
        .collect()
}

#[test]
fn shuffle_is_a_deterministic_permutation_that_changes_per_epoch() {
    let ds = indexed(200, 2, 2);
    let t = plain();
    let a = epoch_labels(&ds, &t, 32, true, 42, 0);
    let b = epoch_labels(&ds, &t, 32, true, 42, 0);
    let c = epoch_labels(&ds, &t, 32, true, 42, 1);
    let d = epoch_labels(&ds, &t, 32, true, 43, 0);
    assert_eq!(a, b, "same (seed, epoch) must give the same order");
    assert_ne!(a, c, "epochs must differ");
    assert_ne!(a, d, "seeds must differ");
    for order in [&a, &c, &d] {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..200).collect::<Vec<i64>>(), "every index exactly once");
    }
    // Not the identity (probability 1/200! of a false failure).
    assert_ne!(a, (0..200).collect::<Vec<i64>>());
    // The order does not depend on the batch size.
    assert_eq!(a, epoch_labels(&ds, &t, 7, true, 42, 0));
    // Images travel with their labels.
    for batch in BatchIter::new(&ds, 16, &t, false, true, 5, 3, false) {
        for (k, &l) in batch.labels.iter().enumerate() {
            let v = batch.images[k * 4];
            assert!((v - l as f32 / 255.0).abs() < 1e-6);
        }
    }
}

#[test]
fn order_reported_matches_batches() {
    let ds = indexed(50, 1, 1);
    let t = plain();
    let it = BatchIter::new(&ds, 8, &t, false, true, 9, 2, false);
    let order: Vec<i64> = it.order().iter().map(|&i| i as i64).collect();
    assert_eq!(order, it.flat_map(|b| b.labels).collect::<Vec<_>>());
}

#[test]
fn no_shuffle_is_sequential() {
    let ds = indexed(10, 1, 1);
    assert_eq!(epoch_labels(&ds, &plain(), 3, false, 1, 9), (0..10).collect::<Vec<i64>>());
}

#[test]
fn batch_counts_and_drop_last() {
    let ds = indexed(10, 3, 3);
    let t = plain();
    let keep = BatchIter::new(&ds, 4, &t, false, false, 0, 0, false);
    assert_eq!(keep.num_batches(), 3);
    assert_eq!(keep.len(), 3);
    let sizes: Vec<usize> = keep.map(|b| b.batch_size).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    let drop = BatchIter::new(&ds, 4, &t, false, false, 0, 0, true);
    assert_eq!(drop.num_batches(), 2);
    let batches: Vec<Batch> = drop.collect();
    assert_eq!(batches.len(), 2);
    for b in &batches {
        assert_eq!(b.images.len(), 4 * 9);
        assert_eq!(b.labels.len(), 4);
        assert_eq!((b.channels, b.height, b.width), (1, 3, 3));
    }
    let exact = BatchIter::new(&ds, 5, &t, false, false, 0, 0, true);
    assert_eq!(exact.count(), 2);
    let empty = indexed(0, 3, 3);
    assert_eq!(BatchIter::new(&empty, 4, &t, true, true, 0, 0, false).count(), 0);
}

#[test]
fn normalisation_by_hand() {
    // One 1x1x3 grey image, values 0, 51, 255.
    let ds = Dataset {
        images: vec![0, 51, 255],
        labels: vec![0],
        channels: 1,
        height: 1,
        width: 3,
        num_classes: 1,
        class_names: vec!["a".into()],
    };
    let t = Transform {
        mean: vec![0.5],
        std: vec![0.25],
        ..plain()
    };
    let b = BatchIter::new(&ds, 1, &t, false, false, 0, 0, false).next().unwrap();
    // (0 - .5)/.25 = -2 ; (0.2 - .5)/.25 = -1.2 ; (1 - .5)/.25 = 2
    let want = [-2.0f32, -1.2, 2.0];
    assert_eq!(b.images.len(), want.len());
    for (g, w) in b.images.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{:?} vs {want:?}", b.images);
    }
    // Per-channel values with three channels.
    let rgb = Dataset {
        images: vec![255, 0, 102],
        labels: vec![0],
        channels: 3,
        height: 1,
        width: 1,
        num_classes: 1,
        class_names: vec!["a".into()],
    };
    let t = Transform {
        mean: vec![0.5, 0.1, 0.4],
        std: vec![0.5, 0.2, 0.1],
        ..plain()
    };
    let b = BatchIter::new(&rgb, 1, &t, false, false, 0, 0, false).next().unwrap();
    let want = [1.0f32, -0.5, 0.0];
    assert_eq!(b.images.len(), want.len());
    for (g, w) in b.images.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{:?}", b.images);
    }
    // No mean/std: plain x/255.
    let b = BatchIter::new(&rgb, 1, &plain(), false, false, 0, 0, false).next().unwrap();
    assert_eq!(b.images, vec![1.0, 0.0, 0.4]);
}

#[test]
fn channel_stats_by_hand() {
    // Two 1-channel 1x2 images: values 0, 255, 255, 255 -> x/255 = 0,1,1,1.
    let ds = Dataset {
        images: vec![0, 255, 255, 255],
        labels: vec![0, 0],
        channels: 1,
        height: 1,
        width: 2,
        num_classes: 1,
        class_names: vec!["a".into()],
    };
    let (m, s) = channel_stats(&ds);
    assert!((m[0] - 0.75).abs() < 1e-6);
    assert!((s[0] - (0.75f32 * 0.25).sqrt()).abs() < 1e-6);
    // Two RGB 1x1 images: R = {0, 255}, G = {51, 51}, B = {255, 255}.
    let ds = Dataset {
        images: vec![0, 51, 255, 255, 51, 255],
        labels: vec![0, 0],
        channels: 3,
        height: 1,
        width: 1,
        num_classes: 1,
        class_names: vec!["a".into()],
    };
    let (m, s) = channel_stats(&ds);
    let (wm, ws) = ([0.5f32, 0.2, 1.0], [0.5f32, 0.0, 0.0]);
    for c in 0..3 {
        assert!((m[c] - wm[c]).abs() < 1e-6, "{m:?}");
        assert!((s[c] - ws[c]).abs() < 1e-6, "{s:?}");
    }
}

#[test]
fn pad_to_centres_the_image() {
    let ds = ramp(1, 28, 28);
    let t = Transform {
        pad_to: Some((32, 32)),
        ..plain()
    };
    assert_eq!(t.output_dims(1, 28, 28), (1, 32, 32));
    // Train mode without crop/flip must equal eval mode.
    for train in [false, true] {
        let b = BatchIter::new(&ds, 1, &t, train, false, 0, 0, false).next().unwrap();
        assert_eq!((b.height, b.width), (32, 32));
        for y in 0..32 {
            for x in 0..32 {
                let got = b.images[y * 32 + x];
                let want = if (2..30).contains(&y) && (2..30).contains(&x) {
                    ds.images[(y - 2) * 28 + (x - 2)] as f32 / 255.0
                } else {
                    0.0
                };
                assert_eq!(got, want, "at ({y}, {x})");
            }
        }
        assert_eq!(b.images, t.apply(ds.image(0), 1, 28, 28));
    }
    // Padding is pixel value 0 *before* normalisation.
    let t = Transform {
        pad_to: Some((32, 32)),
        mean: vec![0.5],
        std: vec![0.5],
        ..plain()
    };
    let out = t.apply(ds.image(0), 1, 28, 28);
    assert_eq!(out[0], -1.0);
    // Smaller target centre-crops.
    let t = Transform {
        pad_to: Some((24, 24)),
        ..plain()
    };
    let out = t.apply(ds.image(0), 1, 28, 28);
    assert_eq!(out.len(), 24 * 24);
    assert_eq!(out[0], ds.images[2 * 28 + 2] as f32 / 255.0);
}

/// Finds the (dy, dx, flip) with dy, dx in -p..=p that explains `out` as a
/// shifted (and maybe mirrored) copy of the h x w `img` with zero fill.
fn explain(out: &[f32], img: &[u8], h: usize, w: usize, p: isize) -> Option<(isize, isize, bool)> {
    for flip in [false, true] {
        for dy in -p..=p {
            for dx in -p..=p {
                let ok = (0..h).all(|y| {
                    (0..w).all(|x| {
                        let cx = if flip { w - 1 - x } else { x };
                        let sy = y as isize + dy;
                        let sx = cx as isize + dx;
                        let want = if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                            img[sy as usize * w + sx as usize] as f32 / 255.0
                        } else {
                            0.0
                        };
                        out[y * w + x] == want
                    })
                });
                if ok {
                    return Some((dy, dx, flip));
                }
            }
        }
    }
    None
}

#[test]
fn augmentation_is_random_crop_and_flip_reproducible_per_seed_and_epoch() {
    // Many copies of one image with distinct pixels; labels differ so examples differ.
    let base = ramp(1, 6, 6);
    let n = 300;
    let ds = Dataset {
        images: base.images.repeat(n),
        labels: vec![0; n],
        ..base.clone()
    };
    let t = Transform {
        crop_padding: 2,
        hflip: true,
        ..plain()
    };
    let run = |seed, epoch, bs| -> Vec<f32> {
        BatchIter::new(&ds, bs, &t, true, false, seed, epoch, false)
            .flat_map(|b| b.images)
            .collect()
    };
    let a = run(1, 0, 64);
    assert_eq!(a, run(1, 0, 64), "same (seed, epoch) -> same augmentation");
    assert_eq!(a, run(1, 0, 7), "augmentation does not depend on batch size");
    assert_ne!(a, run(1, 1, 64), "a new epoch re-draws augmentation");
    assert_ne!(a, run(2, 0, 64), "a new seed re-draws augmentation");

    let mut shifts = HashSet::new();
    let mut flips = 0;
    for i in 0..n {
        let (dy, dx, flip) = explain(&a[i * 36..(i + 1) * 36], &base.images, 6, 6, 2)
            .unwrap_or_else(|| panic!("example {i} is not a crop/flip of the image"));
        shifts.insert((dy, dx));
        flips += flip as usize;
    }
    assert_eq!(shifts.len(), 25, "all 5x5 crop offsets should occur in 300 draws");
    assert!((100..200).contains(&flips), "flip rate looks wrong: {flips}/{n}");

    // Evaluation never augments.
    let e: Vec<f32> = BatchIter::new(&ds, 64, &t, false, false, 1, 0, false)
        .flat_map(|b| b.images)
        .collect();
    assert_eq!(&e[..36], &t.apply(&base.images, 1, 6, 6)[..]);
    assert!(e.chunks(36).all(|c| c == &e[..36]));
}

#[test]
fn augmentation_follows_the_example_not_the_position() {
    // Shuffled epoch: example i must get the same augmentation as in an
    // unshuffled epoch with the same (seed, epoch).
    let base = ramp(3, 5, 5);
    let n = 40;
    let ds = Dataset {
        images: base.images.repeat(n),
        labels: (0..n as u16).collect(),
        num_classes: n,
        ..base.clone()
    };
    let t = Transform {
        crop_padding: 1,
        hflip: true,
        pad_to: Some((7, 7)),
        ..plain()
    };
    let per = 3 * 7 * 7;
    let seq: Vec<f32> = BatchIter::new(&ds, 6, &t, true, false, 11, 4, false)
        .flat_map(|b| b.images)
        .collect();
    for b in BatchIter::new(&ds, 6, &t, true, true, 11, 4, false) {
        for (k, &l) in b.labels.iter().enumerate() {
            let l = l as usize;
            assert_eq!(&b.images[k * per..(k + 1) * per], &seq[l * per..(l + 1) * per]);
        }
    }
}

#[test]
fn subset_is_deterministic_and_distinct() {
    let ds = indexed(100, 2, 2);
    let a = ds.subset(10, 7);
    assert_eq!(a.len(), 10);
    assert_eq!(a.labels, ds.subset(10, 7).labels);
    assert_ne!(a.labels, ds.subset(10, 8).labels);
    let uniq: HashSet<u16> = a.labels.iter().copied().collect();
    assert_eq!(uniq.len(), 10);
    for i in 0..10 {
        assert_eq!(a.image(i), ds.image(a.labels[i] as usize));
    }
    assert_eq!(ds.subset(1000, 1).len(), 100);
    assert_eq!(a.num_classes, 100);
}

#[test]
fn validation_split_is_seeded_disjoint_and_complete() {
    let ds = indexed(100, 2, 2);
    let (rest, val) = ds.split_validation(12, 3);
    assert_eq!((rest.len(), val.len()), (88, 12));
    let (r2, v2) = ds.split_validation(12, 3);
    assert_eq!(
        (rest.labels.clone(), val.labels.clone()),
        (r2.labels, v2.labels),
        "same seed, same split"
    );
    assert_ne!(val.labels, ds.split_validation(12, 4).1.labels, "another seed, another split");
    // every example lands in exactly one part, with its own image; the rest keeps its order
    let mut all: Vec<u16> = rest.labels.iter().chain(&val.labels).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<u16>>());
    assert!(rest.labels.windows(2).all(|w| w[0] < w[1]));
    for (part, k) in [(&rest, 5), (&val, 7)] {
        assert_eq!(part.image(k), ds.image(part.labels[k] as usize));
    }
    assert_eq!(ds.split_validation(500, 1).1.len(), 100);
}
