//! Dense convolution on planar maps (a 1x1 shortcut, a stem, or a rebuilt decomposed layer of
//! a mostly-PENNI model): register tiles of RN output channels by TILE pixel vectors, or a
//! sparse tap sum for a mostly-zero (pruned) kernel.

use std::array::from_fn;

use penni_model::Conv2d;
use penni_model::batchnorm::Affine;

use super::planar_access::{Access, Epi, PoolEpi, TILE, load_in, tap_sum, tile_of};
use crate::arena::AVec;
use crate::epilogue::{Act, check_residuals, fold_bias, fold_weight};
use crate::error::EngineError;
use crate::layout::PLay;
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::{Ctx, StepOp, ValId};

/// A dense convolution on planar maps (a 1x1 shortcut, a stem, or a rebuilt decomposed
/// layer): register tiles of RN output channels by TILE pixel vectors; a task takes a run of
/// tiles and every output channel, so its input stays in cache.
pub(crate) struct PConv {
    x: ValId,
    xl: PLay,
    epi: Epi,
    spec: Conv2d,
    batch: usize,
    threads: usize,
    acc: Access,
    /// Per group of RN output channels: input channel planes read, packed weights [c][tap][RN].
    groups: Vec<(Vec<usize>, usize)>,
    weights: AVec,
    bias: Vec<f32>,
    /// Mostly-zero weights (a pruned layer): per output channel, its non-zero weights as
    /// (input plane offset, tap, value), computed like the second half of mix-first.
    sparse: Option<Vec<Vec<(usize, u32, f32)>>>,
    macs: u64,
    /// Appended to the description (a rebuilt decomposed layer says so).
    note: String,
    /// Gathered reads (a strided layer on a narrow map): a tile's input vectors are gathered
    /// once into per-thread scratch, [channel][tap][TILE], not once per group of RN outputs.
    pregather: bool,
    scratch: Option<ValId>,
}

const RN: usize = 4;

/// Below this fraction of non-zero weights a planar dense convolution skips the zeros.
const SPARSE_DENSITY: f64 = 0.2;

impl PConv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        c: &Conv2d,
        w: &[f32],
        b: Option<&[f32]>,
        fold: &Affine,
        x: ValId,
        xl: PLay,
        y: ValId,
        yl: PLay,
        res: Vec<ValId>,
        act: Act,
        batch: usize,
        threads: usize,
    ) -> Result<PConv, EngineError> {
        check_residuals(name, res.len())?;
        let (n_out, n_in) = (c.out_channels, c.in_channels);
        let (cg, og) = (n_in / c.groups, n_out / c.groups);
        let kk = c.kernel[0] * c.kernel[1];
        let mut groups = Vec::new();
        let mut packed = Vec::new();
        for n0 in (0..n_out).step_by(RN) {
            let rows: Vec<usize> = (n0..(n0 + RN).min(n_out)).collect();
            let mut chans: Vec<usize> = rows.iter().flat_map(|&n| (n / og) * cg..(n / og + 1) * cg).collect();
            chans.sort_unstable();
            chans.dedup();
            let off = packed.len();
            for &ci in &chans {
                for t in 0..kk {
                    for r in 0..RN {
                        let n = n0 + r;
                        let v = if n < n_out && ci / cg == n / og {
                            fold_weight(fold, n, w[(n * cg + ci % cg) * kk + t])
                        } else {
                            0.0
                        };
                        packed.push(v);
                    }
                }
            }
            groups.push((chans.iter().map(|&ci| ci * xl.plane()).collect(), off));
        }
        let bias = (0..n_out.div_ceil(RN) * RN)
            .map(|n| if n < n_out { fold_bias(fold, b, n) } else { 0.0 })
            .collect();
        let nnz = w.iter().filter(|v| **v != 0.0).count();
        let sparse = ((nnz as f64) < SPARSE_DENSITY * w.len() as f64).then(|| {
            (0..n_out)
                .map(|n| {
                    let g = n / og;
                    let mut e = Vec::new();
                    for ci in g * cg..(g + 1) * cg {
                        for t in 0..kk {
                            let v = w[(n * cg + ci % cg) * kk + t];
                            if v != 0.0 {
                                e.push((ci * xl.plane(), t as u32, fold_weight(fold, n, v)));
                            }
                        }
                    }
                    e
                })
                .collect()
        });
        let macs = if sparse.is_some() {
            nnz * yl.h * yl.w * batch
        } else {
            n_out * cg * kk * yl.h * yl.w * batch
        } as u64;
        let dense = sparse.is_none() && c.groups == 1;
        let acc = Access::new(&xl, &yl, c, dense);
        let pregather = acc.kind == 0 && dense;
        Ok(PConv {
            x,
            xl,
            epi: Epi {
                y,
                yl,
                res,
                act,
                pool: None,
            },
            spec: *c,
            batch,
            threads,
            acc,
            groups,
            weights: if sparse.is_some() {
                AVec::zeros(0)
            } else {
                AVec::from_slice(&packed)
            },
            bias,
            sparse,
            macs,
            note: String::new(),
            pregather,
            scratch: None,
        })
    }

    pub fn with_note(mut self, note: String) -> Self {
        self.note = note;
        self
    }

    /// The step with a max pool in its epilogue (`PoolEpi`).
    pub fn with_pool(mut self, pool: Option<PoolEpi>) -> Self {
        self.epi.pool = pool;
        self
    }

    /// Floats of one thread's gathered tile.
    fn per_thread(&self) -> usize {
        if self.pregather { self.xl.c * self.acc.ntaps * TILE * L } else { 0 }
    }
}

impl StepOp for PConv {
    fn describe(&self) -> String {
        let c = &self.spec;
        format!(
            "conv {}x{} s{} {}->{} planar{}{}{}{}",
            c.kernel[0],
            c.kernel[1],
            c.stride[0],
            c.in_channels,
            c.out_channels,
            if self.sparse.is_some() { " sparse" } else { "" },
            self.acc.mode(),
            self.note,
            if self.epi.pool.is_some() { " +maxpool2x2" } else { "" }
        )
    }

    fn macs(&self) -> u64 {
        self.macs
    }

    fn weight_floats(&self) -> usize {
        self.weights.len() + self.bias.len() + self.sparse.as_ref().map_or(0, |s| s.iter().map(|e| e.len() * 4).sum())
    }

    fn scratch_floats(&self) -> Vec<usize> {
        if self.pregather {
            vec![self.per_thread() * self.threads]
        } else {
            vec![]
        }
    }

    fn set_scratch(&mut self, _slot: usize, v: ValId) {
        self.scratch = Some(v);
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let scratch = match (self.pregather, self.scratch) {
            (true, None) => return Err(EngineError::Internal("a gathering convolution ran without its scratch".into())),
            (_, s) => s,
        };
        let tiles = (self.acc.nvec * self.batch).div_ceil(TILE);
        let tasks = (4 * self.threads).min(tiles).max(1);
        let (per, ng) = (tiles.div_ceil(tasks), self.groups.len());
        let chunks = tiles.div_ceil(per);
        // few tiles (a small map at batch 1): split the output channels as well
        let split = if chunks < 2 * self.threads { (2 * self.threads).min(ng) } else { 1 };
        let gper = ng.div_ceil(split);
        ctx.par(chunks * split, &|t, tid| {
            let (ch, s) = (t / split, t % split);
            let buf = scratch.map_or(std::ptr::null_mut(), |v| ctx.ptr(v).wrapping_add(tid * self.per_thread()));
            for tile in ch * per..((ch + 1) * per).min(tiles) {
                p_conv(ctx.isa, self, ctx, tile, s * gper, ((s + 1) * gper).min(ng), buf);
            }
        })
    }
}

isa_dispatch!(fn p_conv => p_conv_g(st: &PConv, ctx: &Ctx, tile: usize, g0: usize, g1: usize, buf: *mut f32));

#[inline(always)]
unsafe fn p_conv_g<S: Simd>(st: &PConv, ctx: &Ctx, tile: usize, g0: usize, g1: usize, buf: *mut f32) {
    unsafe {
        match (st.acc.kind, st.pregather) {
            (1, _) => conv_k::<S, 1>(st, ctx, tile, g0, g1),
            (2, _) => conv_k::<S, 2>(st, ctx, tile, g0, g1),
            (_, true) => conv_gathered::<S>(st, ctx, tile, g0, g1, buf),
            _ => conv_k::<S, 0>(st, ctx, tile, g0, g1),
        }
    }
}

/// A gathering tile: every input vector gathered once into `buf`, then the groups' register
/// tiles read it with plain loads.
#[inline(always)]
unsafe fn conv_gathered<S: Simd>(st: &PConv, ctx: &Ctx, tile: usize, g0: usize, g1: usize, buf: *mut f32) {
    unsafe {
        let tl = tile_of(st.acc.nvec, st.acc.nvec * st.batch, tile);
        let (xl, a) = (&st.xl, &st.acc);
        let xb = ctx.ptr(st.x) as *const f32;
        let xs: [*const f32; TILE] = from_fn(|t| xb.add(tl.img[t] * xl.img()));
        // groups = 1: every group reads every channel, in order
        let chans = &st.groups[0].0;
        let mut bp = buf;
        for &coff in chans {
            for t in 0..a.ntaps {
                for v in 0..TILE {
                    S::store(bp.add(v * L), load_in::<S, 0>(a, xs[v].add(coff), tl.vl[v], t));
                }
                bp = bp.add(TILE * L);
            }
        }
        let out = st.epi.tile::<S>(ctx, a, &tl);
        for g in g0..g1 {
            let n0 = g * RN;
            let mut acc: [[S::V; TILE]; RN] = from_fn(|r| [S::splat(st.bias[n0 + r]); TILE]);
            let mut wp = st.weights.ptr().add(st.groups[g].1);
            let mut bp = buf as *const f32;
            for _ in 0..chans.len() * a.ntaps {
                let xv: [S::V; TILE] = from_fn(|v| S::load(bp.add(v * L)));
                for r in 0..RN {
                    let w = S::splat(*wp.add(r));
                    for v in 0..TILE {
                        acc[r][v] = S::fma(w, xv[v], acc[r][v]);
                    }
                }
                wp = wp.add(RN);
                bp = bp.add(TILE * L);
            }
            for r in 0..RN.min(st.spec.out_channels - n0) {
                for t in 0..tl.cnt {
                    out.put(n0 + r, t, acc[r][t]);
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn conv_k<S: Simd, const K: usize>(st: &PConv, ctx: &Ctx, tile: usize, g0: usize, g1: usize) {
    unsafe {
        let tl = tile_of(st.acc.nvec, st.acc.nvec * st.batch, tile);
        let xl = &st.xl;
        let xb = ctx.ptr(st.x) as *const f32;
        let xs: [*const f32; TILE] = from_fn(|t| xb.add(tl.img[t] * xl.img()));
        let out = st.epi.tile::<S>(ctx, &st.acc, &tl);
        let a = &st.acc;
        if let Some(rows) = &st.sparse {
            for n in g0 * RN..(g1 * RN).min(st.spec.out_channels) {
                if tl.cnt >= 3 {
                    let r = tap_sum::<S, 4, K>(a, &xs, &tl.vl, &rows[n], st.bias[n]);
                    for t in 0..tl.cnt {
                        out.put(n, t, r[t]);
                    }
                } else {
                    for t in 0..tl.cnt {
                        let r = tap_sum::<S, 1, K>(a, &xs[t..], &tl.vl[t..], &rows[n], st.bias[n]);
                        out.put(n, t, r[0]);
                    }
                }
            }
            return;
        }
        for g in g0..g1 {
            let (chans, woff) = &st.groups[g];
            let n0 = g * RN;
            let mut acc: [[S::V; TILE]; RN] = from_fn(|r| [S::splat(st.bias[n0 + r]); TILE]);
            let mut wp = st.weights.ptr().add(*woff);
            for &coff in chans {
                for t in 0..a.ntaps {
                    let xv: [S::V; TILE] = from_fn(|v| load_in::<S, K>(a, xs[v].add(coff), tl.vl[v], t));
                    for r in 0..RN {
                        let w = S::splat(*wp.add(r));
                        for v in 0..TILE {
                            acc[r][v] = S::fma(w, xv[v], acc[r][v]);
                        }
                    }
                    wp = wp.add(RN);
                }
            }
            let mut buf = std::mem::MaybeUninit::<[[S::V; TILE]; RN]>::uninit();
            let bp = buf.as_mut_ptr() as *mut S::V;
            for r in 0..RN {
                for v in 0..TILE {
                    bp.add(r * TILE + v).write(acc[r][v]);
                }
            }
            for r in 0..RN.min(st.spec.out_channels - n0) {
                for t in 0..tl.cnt {
                    out.put(n0 + r, t, *bp.add(r * TILE + t));
                }
            }
        }
    }
}
