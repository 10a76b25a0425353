//! How the planar backend's convolution kernels (dense and decomposed) read and write maps:
//! per output vector and kernel tap an input offset and lane mask ([`Access`], masked loads
//! instead of a padded border), tiles of output vectors ([`Tile`]) and the tile epilogue
//! (residuals, activation, masked store: [`Epi`], [`TileOut`]), and the sparse tap sum.

use std::array::from_fn;

use super::phases::Phases;
use crate::epilogue::{Act, ActV, MAX_RES};
use crate::layout::{PLay, prefix};
use crate::simd::{L, Simd};
use crate::step::{Ctx, ValId};
use penni_model::Conv2d;

/// How the output vectors of a convolution read its input: per output vector of one image,
/// its offset and store mask in an output plane, and per (vector, tap) the input offset and
/// lane mask (32 bits for the stride-2 double load) or, for other strides, 16 gathered indices.
pub(crate) struct Access {
    /// Vectors per image.
    pub nvec: usize,
    /// 1: one masked load, 2: two masked loads and the even lanes, 0: gather.
    pub kind: usize,
    pub ntaps: usize,
    taps: Vec<(isize, u32)>,
    gather: Vec<[i32; L]>,
    outs: Vec<(usize, u16)>,
}

impl Access {
    /// `pregathers`: the kernel gathers a tile's input vectors once and reuses them for every
    /// output channel (a dense convolution), which makes gathers worth more than to a kernel that
    /// uses each loaded vector only a few times (PENNI's basis stage: d times).
    pub fn new(xl: &PLay, yl: &PLay, c: &Conv2d, pregathers: bool) -> Access {
        let (h, w, oh, ow) = (xl.h as isize, xl.w as isize, yl.h, yl.w);
        let [sy, sx] = c.stride;
        let [dy, dx] = c.dilation;
        let (pt, pl) = (c.padding[0] as isize, c.padding[1] as isize);
        let mut taps_k = Vec::new();
        for ky in 0..c.kernel[0] as isize {
            for kx in 0..c.kernel[1] as isize {
                taps_k.push((ky * dy as isize - pt, kx * dx as isize - pl));
            }
        }
        // 16 consecutive output pixels per vector: with contiguous loads for a "same" stride-1
        // convolution, with gathers for a strided one whose rows are too short to fill vectors;
        // without pregathering only when rows fill under 3/4 of a vector, for a gather per
        // (vector, tap) costs more than going row by row (a stride-2 layer: two loads per tap;
        // ResNet-20's 28 -> 14 PENNI layer 1.7x faster, its dense shortcut 1.4x slower)
        let gather_flat = c.stride != [1, 1] && if pregathers { yl.w < L } else { 4 * yl.w < 3 * L };
        let flat = c.stride == [1, 1] && yl.w == xl.w || gather_flat;
        let kind = if gather_flat {
            0
        } else if flat || sx == 1 {
            1
        } else if sx == 2 {
            2
        } else {
            0
        };
        let (mut taps, mut gather) = (Vec::new(), Vec::new());
        let (vecs, outs) = output_vectors(oh, ow, flat);
        for &(oy, ox0, lanes) in &vecs {
            for &(dyk, dxk) in &taps_k {
                // input position of lane i
                let src = |i: usize| -> Option<isize> {
                    let (y, x) = if flat {
                        ((oy * ow + ox0 + i) / ow, (oy * ow + ox0 + i) % ow)
                    } else {
                        (oy, ox0 + i)
                    };
                    let iy = (y * sy) as isize + dyk;
                    let ix = (x * sx) as isize + dxk;
                    (i < lanes && (0..h).contains(&iy) && (0..w).contains(&ix)).then_some(iy * w + ix)
                };
                match kind {
                    1 => {
                        // lane i reads base + i, base = the position lane 0 would read
                        let base = if flat {
                            ((oy * ow + ox0) as isize) + dyk * w + dxk
                        } else {
                            (oy * sy) as isize * w + dyk * w + ox0 as isize + dxk
                        };
                        let mut m = 0u32;
                        for i in 0..L {
                            if src(i).is_some() {
                                m |= 1 << i;
                            }
                        }
                        taps.push((base, m));
                    }
                    2 => {
                        let base = (oy * sy) as isize * w + dyk * w + (2 * ox0) as isize + dxk;
                        let mut m = 0u32;
                        for i in 0..L {
                            if src(i).is_some() {
                                m |= 1 << (2 * i);
                            }
                        }
                        taps.push((base, m));
                    }
                    _ => {
                        let idx: [i32; L] = from_fn(|i| src(i).map_or(-1, |v| v as i32));
                        let m = (0..L).filter(|&i| idx[i] >= 0).fold(0u32, |m, i| m | 1 << i);
                        taps.push((0, m));
                        gather.push(idx.map(|i| i.max(0)));
                    }
                }
            }
        }
        Access {
            nvec: vecs.len(),
            kind,
            ntaps: taps_k.len(),
            taps,
            gather,
            outs,
        }
    }

    /// The access of stride-2 convolution `c` to the phase split `p` of its input: one masked
    /// load per tap (module `phases`), whatever the width.
    pub fn phased(p: &Phases, yl: &PLay, c: &Conv2d) -> Access {
        let (h, w) = (p.src_lay.h as isize, p.src_lay.w as isize);
        let (oh, ow) = (yl.h, yl.w);
        // an output row as wide as a phase row: consecutive outputs read consecutive phase
        // pixels across rows too, so vectors run over the whole plane
        let flat = ow == p.w2;
        let (vecs, outs) = output_vectors(oh, ow, flat);
        let mut taps = Vec::new();
        for &(oy, ox0, lanes) in &vecs {
            for ky in 0..c.kernel[0] {
                for kx in 0..c.kernel[1] {
                    let (dy, dx) = (ky as isize - c.padding[0] as isize, kx as isize - c.padding[1] as isize);
                    let mut m = 0u32;
                    for i in 0..lanes {
                        let (y, x) = if flat {
                            ((oy * ow + ox0 + i) / ow, (oy * ow + ox0 + i) % ow)
                        } else {
                            (oy, ox0 + i)
                        };
                        let (iy, ix) = (2 * y as isize + dy, 2 * x as isize + dx);
                        if (0..h).contains(&iy) && (0..w).contains(&ix) {
                            m |= 1 << i;
                        }
                    }
                    // lane i reads the lane-0 position + i (see `flat`)
                    taps.push((p.offset(oy, ox0, dy, dx), m));
                }
            }
        }
        Access {
            nvec: vecs.len(),
            kind: 1,
            ntaps: c.kernel[0] * c.kernel[1],
            taps,
            gather: Vec::new(),
            outs,
        }
    }

    /// The input plane offsets vector `v` reads over all its taps, as [lo, hi) (empty: (0, 0)).
    pub fn read_span(&self, v: usize) -> (usize, usize) {
        let (mut lo, mut hi) = (usize::MAX, 0);
        for t in 0..self.ntaps {
            let i = v * self.ntaps + t;
            let (base, m) = self.taps[i];
            let lanes: Vec<isize> = match self.kind {
                1 => (0..L).filter(|&l| m >> l & 1 == 1).map(|l| base + l as isize).collect(),
                2 => (0..2 * L).filter(|&l| m >> l & 1 == 1).map(|l| base + l as isize).collect(),
                _ => (0..L).filter(|&l| m >> l & 1 == 1).map(|l| self.gather[i][l] as isize).collect(),
            };
            for o in lanes {
                lo = lo.min(o as usize);
                hi = hi.max(o as usize + 1);
            }
        }
        if hi == 0 { (0, 0) } else { (lo, hi) }
    }

    /// How vectors are laid out, for describe(): "" (16 consecutive pixels, contiguous loads),
    /// " rows" (row by row) or " gather".
    pub fn mode(&self) -> &'static str {
        if self.kind == 0 {
            " gather"
        } else if self.outs.len() > 1 && self.outs[1].0 - self.outs[0].0 != L {
            " rows"
        } else {
            ""
        }
    }
}

/// (output row, first column, lanes) of an output vector.
type VecPos = (usize, usize, usize);

/// The output vectors of an oh x ow map: the position of each and its (plane offset, store
/// mask); whole-plane runs of 16 pixels when `flat`, else row by row.
fn output_vectors(oh: usize, ow: usize, flat: bool) -> (Vec<VecPos>, Vec<(usize, u16)>) {
    let (mut vecs, mut outs) = (Vec::new(), Vec::new());
    if flat {
        for p0 in (0..oh * ow).step_by(L) {
            vecs.push((p0 / ow, p0 % ow, (oh * ow - p0).min(L)));
            outs.push((p0, prefix(oh * ow - p0)));
        }
    } else {
        for oy in 0..oh {
            for ox0 in (0..ow).step_by(L) {
                vecs.push((oy, ox0, (ow - ox0).min(L)));
                outs.push((oy * ow + ox0, prefix(ow - ox0)));
            }
        }
    }
    (vecs, outs)
}

/// load_in for the same vector and tap of two channel planes (one lookup).
#[inline(always)]
pub(crate) unsafe fn load_in2<S: Simd, const K: usize>(
    a: &Access,
    base: *const f32,
    base2: *const f32,
    vl: usize,
    t: usize,
) -> (S::V, S::V) {
    unsafe {
        let i = vl * a.ntaps + t;
        let (off, m) = *a.taps.get_unchecked(i);
        match K {
            1 => (
                S::load_mask(base.wrapping_offset(off), m as u16),
                S::load_mask(base2.wrapping_offset(off), m as u16),
            ),
            2 => {
                let (p, q) = (base.wrapping_offset(off), base2.wrapping_offset(off));
                let (lo, hi) = (m as u16, (m >> 16) as u16);
                (
                    S::even(S::load_mask(p, lo), S::load_mask(p.wrapping_add(L), hi)),
                    S::even(S::load_mask(q, lo), S::load_mask(q.wrapping_add(L), hi)),
                )
            }
            _ => {
                let g = a.gather.get_unchecked(i);
                (S::gather(base, g, m as u16), S::gather(base2, g, m as u16))
            }
        }
    }
}

/// 16 input values of vector `vl`'s tap `t` from the channel plane at `base`.
#[inline(always)]
pub(crate) unsafe fn load_in<S: Simd, const K: usize>(a: &Access, base: *const f32, vl: usize, t: usize) -> S::V {
    unsafe {
        let i = vl * a.ntaps + t;
        let (off, m) = *a.taps.get_unchecked(i);
        match K {
            1 => S::load_mask(base.wrapping_offset(off), m as u16),
            2 => {
                let p = base.wrapping_offset(off);
                S::even(S::load_mask(p, m as u16), S::load_mask(p.wrapping_add(L), (m >> 16) as u16))
            }
            _ => S::gather(base, a.gather.get_unchecked(i), m as u16),
        }
    }
}

/// Where a step's output goes: the output map, residual maps added before the activation,
/// the activation, and a max pool after it.
#[derive(Clone)]
pub(crate) struct Epi {
    pub y: ValId,
    /// The convolution's output layout (also the residuals'); `y` has it unless pooled.
    pub yl: PLay,
    pub res: Vec<ValId>,
    pub act: Act,
    pub pool: Option<PoolEpi>,
}

/// A 2x2 stride-2 max pool computed in the epilogue, so the convolution's full-resolution
/// output is never written (issue 14, MLCNN's conv-pool fusion). The plan fuses one only where
/// the convolution's map is 8, 16 or 32 wide and its tiles of 4 vectors (64 pixels) are whole
/// rows of windows (`plan::fuse`): 2 rows of 32, 4 of 16 or 8 of 8, pooled into one vector, 16
/// consecutive pixels of the pooled map. The activation (monotone) runs before the max.
#[derive(Clone, Copy)]
pub(crate) struct PoolEpi {
    /// The pooled map.
    pub lay: PLay,
}

/// Odd lanes of two vectors (the even ones are `Simd::even`).
const ODD: [u32; L] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];
/// The first and the second halves of two vectors: on a map 8 wide a vector holds two rows.
const TOP_ROWS: [u32; L] = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
const BOTTOM_ROWS: [u32; L] = [8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31];

/// Vectors per tile of the convolution kernels.
pub(crate) const TILE: usize = 4;

/// The vectors of one tile: image and index within the image of each (the last one repeated
/// past the end), and how many are real.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub img: [usize; TILE],
    pub vl: [usize; TILE],
    pub cnt: usize,
}

pub(crate) fn tile_of(nvec: usize, total: usize, tile: usize) -> Tile {
    let g: [usize; TILE] = from_fn(|t| (tile * TILE + t).min(total - 1));
    Tile {
        img: from_fn(|t| g[t] / nvec),
        vl: from_fn(|t| g[t] % nvec),
        cnt: (total - tile * TILE).min(TILE),
    }
}

/// Output and residual pointers of the vectors of one tile (channel 0), so that storing a
/// vector of channel n is the residual loads, the activation and one (masked) store.
pub(crate) struct TileOut<S: Simd> {
    y: [*mut f32; TILE],
    r: [[*const f32; TILE]; MAX_RES],
    nres: usize,
    plane: usize,
    store: [u16; TILE],
    act: ActV<S>,
    pool: Option<TilePool>,
    /// With a pool, the tile's activated vectors of the channel being stored.
    buf: std::cell::UnsafeCell<[S::V; TILE]>,
}

/// Where one tile's pooled vector goes.
#[derive(Clone, Copy)]
struct TilePool {
    /// The vector pairs that hold vertically adjacent rows of the windows, or (a map 8 wide)
    /// None: each vector holds both rows of a window row.
    pairs: Option<[(usize, usize); 2]>,
    /// The tile's pooled vector of channel 0, and the pooled plane.
    y: *mut f32,
    plane: usize,
}

impl Epi {
    #[inline(always)]
    pub unsafe fn tile<S: Simd>(&self, ctx: &Ctx, a: &Access, t: &Tile) -> TileOut<S> {
        unsafe {
            let yl = &self.yl;
            let nres = self.res.len();
            let yb = ctx.ptr(self.y);
            TileOut {
                y: from_fn(|v| yb.add(t.img[v] * yl.img() + a.outs[t.vl[v]].0)),
                r: from_fn(|k| {
                    let rb = if k < nres {
                        ctx.ptr(self.res[k]) as *const f32
                    } else {
                        std::ptr::null()
                    };
                    from_fn(|v| rb.wrapping_add(t.img[v] * yl.img() + a.outs[t.vl[v]].0))
                }),
                nres,
                plane: yl.plane(),
                store: from_fn(|v| a.outs[t.vl[v]].1),
                act: ActV::new(self.act),
                // a tile is 2 rows of 32 (vectors 0, 1 above 2, 3), 4 rows of 16 (0 above 1, 2
                // above 3) or 8 of 8 (two per vector); its windows pool into pooled pixels
                // [outs / 4, outs / 4 + 16)
                pool: self.pool.map(|p| TilePool {
                    pairs: match yl.w {
                        32 => Some([(0, 2), (1, 3)]),
                        16 => Some([(0, 1), (2, 3)]),
                        _ => None,
                    },
                    y: yb.add(t.img[0] * p.lay.img() + a.outs[t.vl[0]].0 / 4),
                    plane: p.lay.plane(),
                }),
                buf: std::cell::UnsafeCell::new([S::zero(); TILE]),
            }
        }
    }
}

impl<S: Simd> TileOut<S> {
    /// Adds the residuals, applies the activation and stores vector `t` of output channel `n`.
    #[inline(always)]
    pub unsafe fn put(&self, n: usize, t: usize, mut x: S::V) {
        unsafe {
            let off = n * self.plane;
            x = self.act.pre(x);
            for k in 0..self.nres {
                x = S::add(x, S::load(self.r[k][t].add(off)));
            }
            let x = self.act.apply(x);
            if let Some(p) = self.pool {
                // every tile is whole (plan::fuse): vectors 0..TILE come in order, per channel
                let buf = &mut *self.buf.get();
                buf[t] = x;
                if t == TILE - 1 {
                    // the vertical maxima, as two vectors of window rows (each 2 x 8 or 1 x 16)
                    let (a, b) = match p.pairs {
                        Some([(i, j), (k, l)]) => (S::max(buf[i], buf[j]), S::max(buf[k], buf[l])),
                        None => {
                            let rows = |u: S::V, v: S::V| S::max(S::pick2(u, v, &TOP_ROWS), S::pick2(u, v, &BOTTOM_ROWS));
                            (rows(buf[0], buf[1]), rows(buf[2], buf[3]))
                        }
                    };
                    S::store(p.y.add(n * p.plane), S::max(S::even(a, b), S::pick2(a, b, &ODD)));
                }
                return;
            }
            if self.store[t] == u16::MAX {
                S::store(self.y[t].add(off), x);
            } else {
                S::store_mask(self.y[t].add(off), self.store[t], x);
            }
        }
    }
}

/// bias + the sum over (input offset, tap, value) entries of value * the tap's input vector, for
/// TV vectors, in two interleaved partial sums: a sparse convolution (the second half of
/// mix-first, and a pruned dense convolution).
#[inline(always)]
pub(crate) unsafe fn tap_sum<S: Simd, const TV: usize, const K: usize>(
    a: &Access,
    us: &[*const f32],
    vl: &[usize],
    entries: &[(usize, u32, f32)],
    bias: f32,
) -> [S::V; TV] {
    unsafe {
        let up: [*const f32; TV] = from_fn(|v| us[v]);
        let vv: [usize; TV] = from_fn(|v| vl[v]);
        let mut a0 = [S::splat(bias); TV];
        let mut a1 = [S::zero(); TV];
        let mut k = 0;
        while k + 2 <= entries.len() {
            let (o0, t0, b0) = *entries.get_unchecked(k);
            let (o1, t1, b1) = *entries.get_unchecked(k + 1);
            let (b0, b1) = (S::splat(b0), S::splat(b1));
            for v in 0..TV {
                a0[v] = S::fma(load_in::<S, K>(a, up[v].add(o0), vv[v], t0 as usize), b0, a0[v]);
                a1[v] = S::fma(load_in::<S, K>(a, up[v].add(o1), vv[v], t1 as usize), b1, a1[v]);
            }
            k += 2;
        }
        if k < entries.len() {
            let (o0, t0, b0) = *entries.get_unchecked(k);
            let b0 = S::splat(b0);
            for v in 0..TV {
                a0[v] = S::fma(load_in::<S, K>(a, up[v].add(o0), vv[v], t0 as usize), b0, a0[v]);
            }
        }
        from_fn(|v| S::add(a0[v], a1[v]))
    }
}
