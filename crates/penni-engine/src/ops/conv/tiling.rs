//! Output tiling of the blocked backend's register-tiled kernels (the dense convolution and the
//! second half of a mix-first decomposed one): output rows cut into segments of QC pixels, R
//! segments per tile, and the choice of (OB, R, QC) per layer.

use crate::epilogue::{ActV, MAX_RES};
use crate::layout::MapLay;
use crate::simd::{L, Simd};

/// A run of QC output pixels in one row; the first `skip` are stored by another segment (the
/// last segment of a row is shifted left to stay inside the row). `skip == QC` stores nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seg {
    pub img: u32,
    pub oy: u32,
    pub ox: u32,
    pub skip: u32,
}

/// Cuts every output row of every image into segments of `qc` pixels and pads the list to a
/// multiple of `r` segments with segments that store nothing.
pub(crate) fn segments(batch: usize, h: usize, w: usize, qc: usize, r: usize) -> Vec<Seg> {
    let mut segs = Vec::new();
    for img in 0..batch {
        for oy in 0..h {
            let mut ox = 0;
            while ox < w {
                let start = ox.min(w - qc);
                segs.push(Seg {
                    img: img as u32,
                    oy: oy as u32,
                    ox: start as u32,
                    skip: (ox - start) as u32,
                });
                ox += qc;
            }
        }
    }
    let last = *segs.last().unwrap_or(&Seg {
        img: 0,
        oy: 0,
        ox: 0,
        skip: 0,
    });
    while segs.len() % r != 0 {
        segs.push(Seg { skip: qc as u32, ..last });
    }
    segs
}

/// Register tiles (output blocks OB, segments R, pixels per segment QC): R*QC*OB accumulators.
const VARIANTS: &[(usize, usize, usize)] = &[
    (1, 3, 8),
    (1, 6, 4),
    (1, 12, 2),
    (1, 16, 1),
    (1, 4, 4),
    (2, 3, 4),
    (2, 6, 2),
    (2, 12, 1),
    (2, 2, 4),
    (4, 1, 6),
    (4, 2, 3),
    (4, 3, 2),
    (4, 6, 1),
    (4, 1, 4),
];

/// Calls `$kernel::<$isa, OB, R, QC, SX>(args)` for the register tile `$key` = (OB, R, QC, SX):
/// every tile of [`VARIANTS`], with input column stride SX of 1 or 2 where QC > 1 (a test checks
/// the two lists agree). The caller wraps it in `unsafe` when the kernel is.
macro_rules! dispatch_tile {
    ($key:expr, $kernel:ident::<$isa:ty> $args:tt) => {
        $crate::ops::conv::tiling::dispatch_tile!(@arms $key, $kernel, $isa, $args;
            (1, 3, 8, 1), (1, 3, 8, 2), (1, 6, 4, 1), (1, 6, 4, 2), (1, 12, 2, 1), (1, 12, 2, 2),
            (1, 16, 1, 1), (1, 4, 4, 1), (1, 4, 4, 2), (2, 3, 4, 1), (2, 3, 4, 2), (2, 6, 2, 1),
            (2, 6, 2, 2), (2, 12, 1, 1), (2, 2, 4, 1), (2, 2, 4, 2), (4, 1, 6, 1), (4, 1, 6, 2),
            (4, 2, 3, 1), (4, 2, 3, 2), (4, 3, 2, 1), (4, 3, 2, 2), (4, 6, 1, 1), (4, 1, 4, 1),
            (4, 1, 4, 2))
    };
    (@arms $key:expr, $kernel:ident, $isa:ty, $args:tt;
     $(($ob:literal, $r:literal, $qc:literal, $sx:literal)),*) => {
        match $key {
            $(($ob, $r, $qc, $sx) => $kernel::<$isa, $ob, $r, $qc, $sx> $args,)*
            other => unreachable!("register tile {:?} is not compiled", other),
        }
    };
}
pub(crate) use dispatch_tile;

/// The residual maps a tile's epilogue adds: their base pointers and layouts.
pub(crate) struct Residuals<'a> {
    pub base: [*const f32; MAX_RES],
    pub lay: &'a [MapLay],
}

/// Stores a tile's R x QC x OB output vectors (`acc`, in that order) to its segments' pixels:
/// with `finish`, through the activation with the residual maps added (the f32 kernels'
/// epilogue order); without, as the partial sums of a K-chunk. `ob0`: the group's first output
/// block; `nvalid`: how many of its OB blocks exist.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_tile<S: Simd, const OB: usize, const R: usize, const QC: usize>(
    acc: *const S::V,
    segs: &[Seg],
    yp: &[*mut f32; R],
    y_plane: usize,
    ob0: usize,
    nvalid: usize,
    finish: Option<(&ActV<S>, &Residuals)>,
) {
    unsafe {
        let nres = finish.map_or(0, |(_, res)| res.lay.len());
        for (r, s) in segs.iter().enumerate() {
            if s.skip as usize >= QC {
                continue;
            }
            let (img, oy, ox) = (s.img as usize, s.oy as usize, s.ox as usize);
            let rp: [*const f32; MAX_RES] = std::array::from_fn(|k| match finish {
                Some((_, res)) if k < nres => {
                    let l = &res.lay[k];
                    res.base[k].add(img * l.img() + ob0 * l.plane() + l.at(oy, ox))
                }
                _ => std::ptr::null(),
            });
            for q in s.skip as usize..QC {
                for o in 0..nvalid {
                    let mut v = *acc.add((r * QC + q) * OB + o);
                    if let Some((act, res)) = finish {
                        v = act.pre(v);
                        for k in 0..nres {
                            v = S::add(v, S::load(rp[k].add(q * L + o * res.lay[k].plane())));
                        }
                        v = act.apply(v);
                    }
                    S::store(yp[r].add(q * L + o * y_plane), v);
                }
            }
        }
    }
}

/// Picks the register tile with the least estimated time: wasted pixels (segments shifted or
/// padded), the load/FMA balance of the tile, the weight traffic from L2 and how evenly the
/// tasks spread over the threads.
pub(crate) fn choose_tile(
    nb: usize,
    h: usize,
    w: usize,
    batch: usize,
    sx: usize,
    steps: usize,
    threads: usize,
    max_ob: usize,
) -> (usize, usize, usize) {
    // weights that do not fit in L2 stream from L3 (about 10 bytes per cycle and core) on the
    // first tile of every K-chunk; the other tiles of the task re-read them from L2
    let from_l3 = nb * L * steps * 4 > 1536 * 1024;
    let mut best = (f64::INFINITY, (1, 16, 1));
    for &(ob, r, qc) in VARIANTS {
        if ob > max_ob || (qc > 1 && (sx > 2 || qc > w)) {
            continue;
        }
        let segs = batch * h * w.div_ceil(qc);
        let tiles = segs.div_ceil(r);
        let groups = nb.div_ceil(ob);
        let p = r * qc;
        let spill = if r > 10 { r / 2 } else { 0 };
        let per_step = f64::max((ob * p) as f64 / 2.0, (ob + p + spill) as f64 / 2.5).max((ob * 64) as f64 / 32.0);
        let chunks = (4 * threads).div_ceil(groups).clamp(1, tiles.max(1));
        let per_task = tiles.div_ceil(chunks) as f64;
        let first = if from_l3 { (128.0 / p as f64 / 10.0).max(1.0) } else { 1.0 };
        let task = per_step * steps as f64 * (per_task - 1.0 + first);
        let rounds = (groups * chunks).div_ceil(threads.max(1)) as f64;
        let t = rounds * task * (1.0 + 0.02 * ob as f64).recip();
        if t < best.0 {
            best = (t, (ob, r, qc));
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe fn tile_key<I: Sized, const OB: usize, const R: usize, const QC: usize, const SX: usize>() -> (usize, usize, usize, usize) {
        let _isa = std::marker::PhantomData::<I>;
        (OB, R, QC, SX)
    }

    #[test]
    fn every_chosen_tile_is_compiled() {
        for &(ob, r, qc) in VARIANTS {
            for sx in if qc > 1 { vec![1, 2] } else { vec![1] } {
                let key = (ob, r, qc, sx);
                assert_eq!(unsafe { dispatch_tile!(key, tile_key::<()>()) }, key);
            }
        }
    }

    #[test]
    fn segments_cover_every_pixel_once() {
        for (b, h, w, qc, r) in [(2, 3, 7, 4, 3), (1, 4, 4, 8, 2), (1, 1, 1, 1, 16), (3, 5, 9, 2, 6)] {
            let qc = qc.min(w);
            let segs = segments(b, h, w, qc, r);
            assert_eq!(segs.len() % r, 0);
            let mut hit = vec![0; b * h * w];
            for s in &segs {
                for q in s.skip as usize..qc {
                    hit[(s.img as usize * h + s.oy as usize) * w + s.ox as usize + q] += 1;
                }
            }
            assert!(hit.iter().all(|&c| c == 1), "{b} {h} {w} {qc} {r}");
        }
    }
}
