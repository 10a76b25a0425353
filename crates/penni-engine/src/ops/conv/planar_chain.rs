//! A Tucker-2 chain on planar maps as one step: a 1x1 convolution (C -> R1), a k x k core
//! (R1 -> R2) and a 1x1 convolution (R2 -> N) with the last one's epilogue (batchnorm folded,
//! residuals, activation). A task takes a run of tiles of output vectors (a tile may span
//! images, so that small maps fill it): per image it touches, it computes the first 1x1 only on
//! the input pixels the run reads, into per-thread scratch, then per tile the core into a small
//! buffer and the last 1x1 straight from it, so the R1 and R2 maps never reach the arena.

use std::array::from_fn;

use penni_model::Conv2d;
use penni_model::batchnorm::Affine;

use super::planar_access::{Access, Epi, TILE, Tile, load_in, tile_of};
use crate::arena::AVec;
use crate::epilogue::{Act, check_residuals, fold_bias, fold_weight};
use crate::error::EngineError;
use crate::layout::PLay;
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::{Ctx, StepOp, ValId};

/// Output channels per register tile, in all three stages.
const RN: usize = 4;

/// One convolution of the chain: its weights and biases packed per group of RN output
/// channels as [group][input][tap][RN] (zero rows past the last channel).
struct Packed {
    n_out: usize,
    n_in: usize,
    taps: usize,
    w: AVec,
    b: Vec<f32>,
}

impl Packed {
    /// `w` is N x C x taps; `fold` (the last convolution's batchnorms) scales rows and biases.
    fn new(c: &Conv2d, w: &[f32], b: Option<&[f32]>, fold: &Affine) -> Packed {
        let (n_out, n_in, taps) = (c.out_channels, c.in_channels, c.kernel[0] * c.kernel[1]);
        let groups = n_out.div_ceil(RN);
        let mut p = Vec::with_capacity(groups * n_in * taps * RN);
        for g in 0..groups {
            for ci in 0..n_in {
                for t in 0..taps {
                    for r in 0..RN {
                        let n = g * RN + r;
                        p.push(if n < n_out {
                            fold_weight(fold, n, w[(n * n_in + ci) * taps + t])
                        } else {
                            0.0
                        });
                    }
                }
            }
        }
        let b = (0..groups * RN)
            .map(|n| if n < n_out { fold_bias(fold, b, n) } else { 0.0 })
            .collect();
        Packed {
            n_out,
            n_in,
            taps,
            w: AVec::from_slice(&p),
            b,
        }
    }

    fn groups(&self) -> usize {
        self.n_out.div_ceil(RN)
    }

    /// Packed weights of output group `g`.
    unsafe fn group(&self, g: usize) -> *const f32 {
        unsafe { self.w.ptr().add(g * self.n_in * self.taps * RN) }
    }

    fn floats(&self) -> usize {
        self.w.len() + self.b.len()
    }
}

/// The three convolutions of a chain, as the planner found them: (spec, weights, bias) each.
pub(crate) struct ChainConvs<'a> {
    pub first: (&'a Conv2d, &'a [f32], Option<&'a [f32]>),
    pub core: (&'a Conv2d, &'a [f32], Option<&'a [f32]>),
    pub last: (&'a Conv2d, &'a [f32], Option<&'a [f32]>),
}

/// Whether `first -> core -> last` can run as one chain step: plain 1x1 convolutions around a
/// core, no groups anywhere, channel counts that line up.
pub(crate) fn chainable(first: &Conv2d, core: &Conv2d, last: &Conv2d) -> bool {
    let pointwise = |c: &Conv2d| c.kernel == [1, 1] && c.stride == [1, 1] && c.padding == [0; 4] && c.dilation == [1, 1] && c.groups == 1;
    pointwise(first)
        && pointwise(last)
        && core.groups == 1
        && first.out_channels == core.in_channels
        && core.out_channels == last.in_channels
}

pub(crate) struct PChain {
    x: ValId,
    xl: PLay,
    /// The first 1x1's output (R1 planes of the input's size), in per-thread scratch.
    tl: PLay,
    epi: Epi,
    core_spec: Conv2d,
    /// How the core reads the first 1x1's output.
    acc: Access,
    first: Packed,
    core: Packed,
    last: Packed,
    /// Per output vector of one image: the vectors of the R1 planes it reads, [lo, hi).
    spans: Vec<(usize, usize)>,
    /// Images whose R1 planes a thread holds at once: a tile's images, plus one.
    slots: usize,
    batch: usize,
    threads: usize,
    scratch: Option<ValId>,
    macs: u64,
}

impl PChain {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        convs: ChainConvs,
        fold: &Affine,
        x: ValId,
        xl: PLay,
        y: ValId,
        yl: PLay,
        res: Vec<ValId>,
        act: Act,
        batch: usize,
        threads: usize,
    ) -> Result<PChain, EngineError> {
        let (f, c, l) = (convs.first, convs.core, convs.last);
        if !chainable(f.0, c.0, l.0) || f.0.in_channels != xl.c || l.0.out_channels != yl.c {
            return Err(EngineError::Internal(format!("'{name}' is not a 1x1 -> k x k -> 1x1 chain")));
        }
        check_residuals(name, res.len())?;
        let id = Affine::identity(f.0.out_channels.max(c.0.out_channels));
        let tl = PLay {
            c: f.0.out_channels,
            h: xl.h,
            w: xl.w,
        };
        let acc = Access::new(&tl, &yl, c.0, false);
        let spans = (0..acc.nvec)
            .map(|v| {
                let (lo, hi) = acc.read_span(v);
                (lo / L, hi.div_ceil(L))
            })
            .collect();
        let (hw_in, hw_out) = ((xl.h * xl.w) as u64, (yl.h * yl.w) as u64);
        let macs = batch as u64
            * ((f.0.in_channels * f.0.out_channels) as u64 * hw_in
                + (c.0.in_channels * c.0.out_channels * c.0.kernel[0] * c.0.kernel[1]) as u64 * hw_out
                + (l.0.in_channels * l.0.out_channels) as u64 * hw_out);
        let slots = TILE.div_ceil(acc.nvec) + 1;
        Ok(PChain {
            x,
            xl,
            tl,
            epi: Epi {
                y,
                yl,
                res,
                act,
                pool: None,
            },
            core_spec: *c.0,
            acc,
            first: Packed::new(f.0, f.1, f.2, &id),
            core: Packed::new(c.0, c.1, c.2, &id),
            last: Packed::new(l.0, l.1, l.2, fold),
            spans,
            slots,
            batch,
            threads,
            scratch: None,
            macs,
        })
    }

    /// Per-thread floats: the R1 planes of `slots` images, then the core's output for one tile
    /// (R2 x TILE vectors).
    fn per_thread(&self) -> usize {
        self.slots * self.tl.img() + self.core.groups() * RN * TILE * L
    }
}

impl StepOp for PChain {
    fn describe(&self) -> String {
        let c = &self.core_spec;
        format!(
            "tucker chain {}->{}->{}x{} s{}->{}->{} planar{}",
            self.xl.c,
            self.first.n_out,
            c.kernel[0],
            c.kernel[1],
            c.stride[0],
            self.core.n_out,
            self.last.n_out,
            self.acc.mode()
        )
    }

    fn macs(&self) -> u64 {
        self.macs
    }

    fn weight_floats(&self) -> usize {
        self.first.floats() + self.core.floats() + self.last.floats()
    }

    fn scratch_floats(&self) -> Vec<usize> {
        vec![self.per_thread() * self.threads]
    }

    fn set_scratch(&mut self, _slot: usize, v: ValId) {
        self.scratch = Some(v);
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let scratch = self
            .scratch
            .ok_or_else(|| EngineError::Internal("a Tucker chain ran without its scratch".into()))?;
        let tiles = (self.acc.nvec * self.batch).div_ceil(TILE);
        // runs of tiles: each run recomputes the first 1x1 on the input rows its neighbours share
        let tasks = (4 * self.threads).min(tiles).max(1);
        let per = tiles.div_ceil(tasks);
        ctx.par(tiles.div_ceil(per), &|task, tid| {
            // SAFETY: each thread uses its own slice of the scratch slot
            let s = unsafe { ctx.ptr(scratch).add(tid * self.per_thread()) };
            chain(ctx.isa, self, ctx, task * per, ((task + 1) * per).min(tiles), s);
        })
    }
}

isa_dispatch!(fn chain => chain_g(st: &PChain, ctx: &Ctx, tile0: usize, tile1: usize, s: *mut f32));

/// Tiles [tile0, tile1) of the chain's output vectors (all images in a row).
#[inline(always)]
unsafe fn chain_g<S: Simd>(st: &PChain, ctx: &Ctx, tile0: usize, tile1: usize, s: *mut f32) {
    unsafe {
        let (nvec, total) = (st.acc.nvec, st.acc.nvec * st.batch);
        let (g0, g1) = (tile0 * TILE, (tile1 * TILE).min(total));
        let x = ctx.ptr(st.x) as *const f32;
        let t2 = s.add(st.slots * st.tl.img());
        // R1 planes of image i live in slot i % slots; `done` is the last image computed
        let mut done: Option<usize> = None;
        for tile in tile0..tile1 {
            let tl = tile_of(nvec, total, tile);
            let last_img = tl.img[tl.cnt - 1];
            let first_img = done.map_or(tl.img[0], |d| d + 1);
            for i in first_img..=last_img {
                // the run's output vectors of image i, and the input vectors they read
                let (v0, v1) = (g0.max(i * nvec) - i * nvec, g1.min((i + 1) * nvec) - i * nvec);
                let (mut j0, mut j1) = (usize::MAX, 0);
                for &(lo, hi) in &st.spans[v0..v1] {
                    if hi > lo {
                        j0 = j0.min(lo);
                        j1 = j1.max(hi);
                    }
                }
                if j1 > j0 {
                    let dst = s.add(i % st.slots * st.tl.img());
                    pointwise::<S>(&st.first, x.add(i * st.xl.img()), st.xl.plane(), dst, st.tl.plane(), j0, j1);
                }
                done = Some(i);
            }
            let t1: [*const f32; TILE] = from_fn(|v| s.add(tl.img[v] % st.slots * st.tl.img()) as *const f32);
            match st.acc.kind {
                1 => core_tile::<S, 1>(st, &t1, &tl, t2),
                2 => core_tile::<S, 2>(st, &t1, &tl, t2),
                _ => core_tile::<S, 0>(st, &t1, &tl, t2),
            }
            let out = st.epi.tile::<S>(ctx, &st.acc, &tl);
            let last = &st.last;
            for g in 0..last.groups() {
                let n0 = g * RN;
                let a = tile_sums::<S>(last, g, |ci, _| from_fn(|t| S::load(t2.add((ci * TILE + t) * L))));
                for r in 0..RN.min(last.n_out - n0) {
                    for t in 0..tl.cnt {
                        out.put(n0 + r, t, a[r][t]);
                    }
                }
            }
        }
    }
}

/// One register tile of output group `g` of `p`: bias + the sum over (input, tap) of the packed
/// weight times the TILE vectors `load(input, tap)` gives (the inner loop of all three stages).
#[inline(always)]
unsafe fn tile_sums<S: Simd>(p: &Packed, g: usize, mut load: impl FnMut(usize, usize) -> [S::V; TILE]) -> [[S::V; TILE]; RN] {
    unsafe {
        let n0 = g * RN;
        let mut acc: [[S::V; TILE]; RN] = from_fn(|r| [S::splat(p.b[n0 + r]); TILE]);
        let mut wp = p.group(g);
        for ci in 0..p.n_in {
            for t in 0..p.taps {
                let xv = load(ci, t);
                for r in 0..RN {
                    let w = S::splat(*wp.add(r));
                    for v in 0..TILE {
                        acc[r][v] = S::fma(w, xv[v], acc[r][v]);
                    }
                }
                wp = wp.add(RN);
            }
        }
        acc
    }
}

/// A 1x1 convolution on the pixel vectors [j0, j1) of one image's planes: `src` planes of
/// `sp` floats to `dst` planes of `dp` floats.
#[inline(always)]
unsafe fn pointwise<S: Simd>(p: &Packed, src: *const f32, sp: usize, dst: *mut f32, dp: usize, j0: usize, j1: usize) {
    unsafe {
        let mut j = j0;
        while j < j1 {
            let cnt = (j1 - j).min(TILE);
            let js: [usize; TILE] = from_fn(|t| (j + t).min(j1 - 1) * L);
            for g in 0..p.groups() {
                let n0 = g * RN;
                let a = tile_sums::<S>(p, g, |ci, _| from_fn(|t| S::load(src.add(ci * sp + js[t]))));
                for r in 0..RN.min(p.n_out - n0) {
                    for t in 0..cnt {
                        S::store(dst.add((n0 + r) * dp + js[t]), a[r][t]);
                    }
                }
            }
            j += TILE;
        }
    }
}

/// The core convolution of one tile of output vectors, reading vector v's R1 planes at
/// `t1[v]` through the masked access table, into `t2` as [R2][TILE] vectors.
#[inline(always)]
unsafe fn core_tile<S: Simd, const K: usize>(st: &PChain, t1: &[*const f32; TILE], tile: &Tile, t2: *mut f32) {
    unsafe {
        let (core, a, plane) = (&st.core, &st.acc, st.tl.plane());
        for g in 0..core.groups() {
            let n0 = g * RN;
            let acc = tile_sums::<S>(core, g, |ci, t| {
                from_fn(|v| load_in::<S, K>(a, t1[v].add(ci * plane), tile.vl[v], t))
            });
            for r in 0..RN {
                for v in 0..TILE {
                    S::store(t2.add(((n0 + r) * TILE + v) * L), acc[r][v]);
                }
            }
        }
    }
}
