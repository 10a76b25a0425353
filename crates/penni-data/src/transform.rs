//! Turning u8 images into normalised, optionally augmented f32 batches.

use crate::Dataset;
use crate::rng::{SplitMix64, derive_seed, permutation};

/// Domain tags so the permutation stream and the augmentation streams of the
/// same (seed, epoch) never coincide.
const TAG_PERM: u64 = 0x7E57_0001;
const TAG_AUG: u64 = 0x7E57_0002;

/// Preprocessing applied to every example of a batch.
///
/// Geometry (`pad_to`, crop, flip) is applied to the u8 image and padding is
/// pixel value 0 *before* normalisation, matching the usual
/// Pad/RandomCrop -> ToTensor -> Normalize pipeline, so padded pixels become
/// `(0 - mean) / std`, i.e. "black", not 0.0.
#[derive(Clone, Debug, Default)]
pub struct Transform {
    /// Output size (H, W): the image is zero-padded centred (e.g. 28x28 -> 32x32
    /// so LeNet/ResNet-style nets built for 32x32 can be reused). If smaller than
    /// the image, the image is centre-cropped instead. Applied in train and eval.
    pub pad_to: Option<(usize, usize)>,
    /// Random crop after zero-padding by this many pixels on each side
    /// (0 = off). Training only.
    pub crop_padding: usize,
    /// Random horizontal flip with p = 0.5. Training only.
    pub hflip: bool,
    /// Per-channel mean of x/255. Empty = 0; one value = used for every channel.
    pub mean: Vec<f32>,
    /// Per-channel std of x/255. Empty = 1; one value = used for every channel.
    pub std: Vec<f32>,
}

impl Transform {
    /// Shape of the transformed image; crop and flip never change it.
    pub fn output_dims(&self, c: usize, h: usize, w: usize) -> (usize, usize, usize) {
        let (oh, ow) = self.pad_to.unwrap_or((h, w));
        (c, oh, ow)
    }

    /// Value of channel `ch`'s mean/std, honouring the "empty" and "broadcast" rules.
    fn per_channel(v: &[f32], ch: usize, default: f32) -> f32 {
        match v.len() {
            0 => default,
            1 => v[0],
            _ => v[ch],
        }
    }

    fn check_channels(&self, c: usize) {
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            assert!(
                v.len() <= 1 || v.len() == c,
                "Transform::{name} has {} values but the images have {c} channels",
                v.len()
            );
        }
    }

    /// A 256-entry table per channel, so normalising a pixel is one load
    /// instead of a subtract and a divide.
    fn lut(&self, c: usize) -> Vec<f32> {
        let mut lut = Vec::with_capacity(c * 256);
        for ch in 0..c {
            let m = Self::per_channel(&self.mean, ch, 0.0);
            let s = Self::per_channel(&self.std, ch, 1.0);
            lut.extend((0..256).map(|v| (v as f32 / 255.0 - m) / s));
        }
        lut
    }

    /// The deterministic (evaluation) transform of one C x H x W image, e.g. for
    /// an inference CLI that must preprocess exactly like evaluation does.
    ///
    /// # Panics
    /// If `image.len() != c * h * w` or mean/std do not fit `c` channels.
    pub fn apply(&self, image: &[u8], c: usize, h: usize, w: usize) -> Vec<f32> {
        assert_eq!(image.len(), c * h * w, "image length does not match {c}x{h}x{w}");
        self.check_channels(c);
        let (_, oh, ow) = self.output_dims(c, h, w);
        let geo = Geometry::new(h, w, oh, ow);
        let lut = self.lut(c);
        let mut out = vec![0f32; c * oh * ow];
        geo.render(image, c, &lut, Aug::NONE, &mut out);
        out
    }
}

/// Per-channel mean and (population) std of x/255 over the whole dataset.
///
/// Computed from per-channel histograms, so it is exact, one pass, and cheap
/// even for 60k images. An empty dataset gives mean 0 and std 1 so that using
/// the result for normalisation is still harmless.
pub fn channel_stats(ds: &Dataset) -> (Vec<f32>, Vec<f32>) {
    let c = ds.channels;
    let plane = ds.height * ds.width;
    let mut hist = vec![[0u64; 256]; c];
    if plane > 0 {
        for img in ds.images.chunks_exact(c * plane) {
            for (ch, p) in img.chunks_exact(plane).enumerate() {
                let h = &mut hist[ch];
                for &v in p {
                    h[v as usize] += 1;
                }
            }
        }
    }
    let mut means = Vec::with_capacity(c);
    let mut stds = Vec::with_capacity(c);
    for h in &hist {
        let n: u64 = h.iter().sum();
        if n == 0 {
            means.push(0.0);
            stds.push(1.0);
            continue;
        }
        let (mut s, mut s2) = (0f64, 0f64);
        for (v, &k) in h.iter().enumerate() {
            let x = v as f64 / 255.0;
            s += k as f64 * x;
            s2 += k as f64 * x * x;
        }
        let mean = s / n as f64;
        let var = (s2 / n as f64 - mean * mean).max(0.0);
        means.push(mean as f32);
        stds.push(var.sqrt() as f32);
    }
    (means, stds)
}

/// One batch of transformed examples.
#[derive(Clone, Debug)]
pub struct Batch {
    /// B x C x H x W, normalised.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub batch_size: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// The random choices for one example.
#[derive(Clone, Copy, Debug)]
struct Aug {
    /// Crop offsets in 0..=2*pad.
    dy: isize,
    dx: isize,
    pad: isize,
    flip: bool,
}

impl Aug {
    const NONE: Aug = Aug {
        dy: 0,
        dx: 0,
        pad: 0,
        flip: false,
    };
}

/// Where the source image sits inside the output canvas (after `pad_to`).
#[derive(Clone, Copy, Debug)]
struct Geometry {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// Offset of the source image in the canvas; negative when centre-cropping.
    oy: isize,
    ox: isize,
}

fn centre_offset(outer: usize, inner: usize) -> isize {
    if outer >= inner {
        ((outer - inner) / 2) as isize
    } else {
        -(((inner - outer) / 2) as isize)
    }
}

impl Geometry {
    fn new(h: usize, w: usize, oh: usize, ow: usize) -> Self {
        Geometry {
            h,
            w,
            oh,
            ow,
            oy: centre_offset(oh, h),
            ox: centre_offset(ow, w),
        }
    }

    /// Writes one C x oh x ow example. Pad, crop and flip are fused into a single
    /// source-coordinate mapping, so each output pixel is written once (plus a
    /// fill of the padding value) with no intermediate images.
    fn render(&self, src: &[u8], c: usize, lut: &[f32], a: Aug, dst: &mut [f32]) {
        let (h, w, oh, ow) = (self.h, self.w, self.oh, self.ow);
        let plane_in = h * w;
        let plane_out = oh * ow;
        // Output (y, x) reads source (y + ry, xx + rx) where xx is x, or mirrored x.
        let ry = a.dy - a.pad - self.oy;
        let rx = a.dx - a.pad - self.ox;
        // Range of canvas columns xx whose source column is inside the image.
        let lo = (-rx).clamp(0, ow as isize) as usize;
        let hi = (w as isize - rx).clamp(lo as isize, ow as isize) as usize;
        for ch in 0..c {
            let table = &lut[ch * 256..(ch + 1) * 256];
            let zero = table[0];
            let sp = &src[ch * plane_in..(ch + 1) * plane_in];
            let dp = &mut dst[ch * plane_out..(ch + 1) * plane_out];
            for y in 0..oh {
                let drow = &mut dp[y * ow..(y + 1) * ow];
                let sy = y as isize + ry;
                drow.fill(zero);
                if sy < 0 || sy >= h as isize || lo >= hi {
                    continue;
                }
                let s0 = sy as usize * w;
                let srow = &sp[(s0 as isize + lo as isize + rx) as usize..][..hi - lo];
                if a.flip {
                    for (i, &v) in srow.iter().enumerate() {
                        drow[ow - 1 - (lo + i)] = table[v as usize];
                    }
                } else {
                    for (d, &v) in drow[lo..hi].iter_mut().zip(srow) {
                        *d = table[v as usize];
                    }
                }
            }
        }
    }
}

/// One epoch of batches over a borrowed dataset.
///
/// All randomness is a pure function of (seed, epoch) for the order and of
/// (seed, epoch, dataset index) for augmentation, so any epoch can be
/// regenerated on its own after a restart, and an example's augmentation does
/// not depend on the batch size or on its position in the epoch.
pub struct BatchIter<'a> {
    ds: &'a Dataset,
    transform: &'a Transform,
    train: bool,
    seed: u64,
    epoch: u64,
    batch_size: usize,
    drop_last: bool,
    order: Vec<usize>,
    pos: usize,
    lut: Vec<f32>,
    geo: Geometry,
}

impl<'a> BatchIter<'a> {
    /// # Panics
    /// If `batch_size == 0`, or `transform.mean`/`std` have neither 0, 1 nor
    /// `ds.channels` values: both are programming errors, not data errors.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ds: &'a Dataset,
        batch_size: usize,
        transform: &'a Transform,
        train: bool,
        shuffle: bool,
        seed: u64,
        epoch: u64,
        drop_last: bool,
    ) -> Self {
        assert!(batch_size > 0, "batch_size must be positive");
        transform.check_channels(ds.channels);
        let order = if shuffle {
            permutation(ds.len(), derive_seed(&[seed, epoch, TAG_PERM]))
        } else {
            (0..ds.len()).collect()
        };
        let (_, oh, ow) = transform.output_dims(ds.channels, ds.height, ds.width);
        BatchIter {
            ds,
            transform,
            train,
            seed,
            epoch,
            batch_size,
            drop_last,
            order,
            pos: 0,
            lut: transform.lut(ds.channels),
            geo: Geometry::new(ds.height, ds.width, oh, ow),
        }
    }

    /// Batches in the whole epoch (not just those remaining).
    pub fn num_batches(&self) -> usize {
        let n = self.ds.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The dataset indices of the epoch, in the order they are served.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    fn remaining_batches(&self) -> usize {
        let left = self.ds.len() - self.pos;
        if self.drop_last {
            left / self.batch_size
        } else {
            left.div_ceil(self.batch_size)
        }
    }

    fn aug_for(&self, index: usize) -> Aug {
        let t = self.transform;
        if !self.train || (t.crop_padding == 0 && !t.hflip) {
            return Aug::NONE;
        }
        let mut r = SplitMix64::new(derive_seed(&[self.seed, self.epoch, index as u64, TAG_AUG]));
        // Always draw in the same order so each choice's stream is fixed
        // whether or not the other augmentations are enabled.
        // Padding beyond any image size only adds black; the cap keeps the
        // signed offset arithmetic far from overflow for absurd settings.
        let pad = t.crop_padding.min(1 << 20);
        let span = 2 * pad as u64 + 1;
        let dy = r.below(span) as isize;
        let dx = r.below(span) as isize;
        let flip = r.coin();
        Aug {
            dy,
            dx,
            pad: pad as isize,
            flip: t.hflip && flip,
        }
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let left = self.ds.len() - self.pos;
        let take = left.min(self.batch_size);
        if take == 0 || (self.drop_last && take < self.batch_size) {
            return None;
        }
        let c = self.ds.channels;
        let per = c * self.geo.oh * self.geo.ow;
        let mut images = vec![0f32; take * per];
        let mut labels = Vec::with_capacity(take);
        for k in 0..take {
            let idx = self.order[self.pos + k];
            let aug = self.aug_for(idx);
            let dst = &mut images[k * per..(k + 1) * per];
            self.geo.render(self.ds.image(idx), c, &self.lut, aug, dst);
            labels.push(self.ds.labels[idx] as i64);
        }
        self.pos += take;
        Some(Batch {
            images,
            labels,
            batch_size: take,
            channels: c,
            height: self.geo.oh,
            width: self.geo.ow,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining_batches();
        (n, Some(n))
    }
}

impl ExactSizeIterator for BatchIter<'_> {}
