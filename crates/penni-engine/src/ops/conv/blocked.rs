//! Dense convolution as an implicit GEMM on the channel-blocked layout (no im2col buffer).
//!
//! A task computes, for a group of OB output-channel blocks (16 channels each, one vector per
//! pixel), a tile of R row segments of QC consecutive output pixels: R*QC*OB accumulators that
//! stay in registers while the kernel walks input blocks, kernel taps and the 16 input channels of
//! a block, broadcasting one input value per pixel against OB packed weight vectors. Segments may
//! come from any row of any image, so small maps and batches fill the tile as well as large maps.
//! 1x1 convolutions are the same loop with one tap: a GEMM straight on the activations.
//! The sum over (input block, tap, channel) always runs in the same order, so the result of every
//! output does not depend on the variant or the thread that computed it.

use std::array::from_fn;

use penni_model::Conv2d;
use penni_model::batchnorm::Affine;

use super::tiling::{Residuals, Seg, choose_tile, dispatch_tile, segments, store_tile};
use crate::arena::AVec;
use crate::epilogue::{Act, ActV, check_residuals, fold_bias, fold_weight};
use crate::error::EngineError;
use crate::layout::MapLay;
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::{Ctx, StepOp, ValId};

/// How many taps ahead the weights are prefetched (a tap is 16 x OB cache lines).
const PREFETCH_TAPS: usize = 8;

/// Bytes of one group's weights a task keeps in L2 while it runs all its tiles over them
/// (larger groups are split along the input channels: K-blocking).
const KCHUNK_BYTES: usize = 256 * 1024;

struct ConvGroup {
    ob0: usize,
    /// Output blocks of this group that exist (the last group may be partial).
    nvalid: usize,
    /// Offsets (floats) of every (input block, ky, kx) from a pixel's receptive-field origin.
    taps: Vec<isize>,
    w_off: usize,
    /// Ranges of `taps` whose weights fit in L2 together (one range if the group is small).
    kchunks: Vec<(usize, usize)>,
}

pub(crate) struct ConvStep {
    x: ValId,
    y: ValId,
    res: Vec<ValId>,
    act: Act,
    xl: MapLay,
    yl: MapLay,
    rl: Vec<MapLay>,
    stride: [usize; 2],
    kernel: [usize; 2],
    icn: usize,
    /// Weights larger than L2: prefetch them a few taps ahead (one core's sequential stream
    /// from memory is otherwise latency-bound).
    prefetch: bool,
    ob: usize,
    r: usize,
    qc: usize,
    groups: Vec<ConvGroup>,
    weights: AVec,
    bias: AVec,
    segs: Vec<Seg>,
    tiles: usize,
    chunks: usize,
    row0: isize,
    col0: isize,
    batch: usize,
    macs: u64,
    /// Appended to the description (a rebuilt decomposed layer says so).
    note: String,
}

impl ConvStep {
    /// Packs `weight` (N x C/groups x kh x kw), scaled per output channel by the folded
    /// batchnorm, and the bias `scale*b + shift`, for input layout `xl` and output layout `yl`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        c: &Conv2d,
        w: &[f32],
        b: Option<&[f32]>,
        fold: &Affine,
        x: ValId,
        xl: MapLay,
        y: ValId,
        yl: MapLay,
        res: Vec<ValId>,
        rl: Vec<MapLay>,
        act: Act,
        batch: usize,
        threads: usize,
    ) -> Result<ConvStep, EngineError> {
        check_residuals(name, res.len())?;
        for k in 0..4 {
            if xl.pad[k] < c.padding[k] {
                return Err(EngineError::Internal(format!(
                    "'{name}': input storage has less padding than the convolution"
                )));
            }
        }
        let (n_out, n_in, g) = (c.out_channels, c.in_channels, c.groups);
        let (cg, og) = (n_in / g, n_out / g);
        let (kh, kw) = (c.kernel[0], c.kernel[1]);
        let nb = n_out.div_ceil(L);
        let nib = n_in.div_ceil(L);
        // a single narrow input block (an RGB stem): loop over its real channels only
        let icn = if n_in < L { n_in } else { L };
        let ntaps_avg = if g == 1 {
            nib * kh * kw
        } else {
            (cg.div_ceil(L) + 1).min(nib) * kh * kw
        };
        let (ob, r, qc) = choose_tile(nb, yl.h, yl.w, batch, c.stride[1], ntaps_avg * icn, threads, 4);
        let ws = xl.ws() as isize;

        let mut groups = Vec::new();
        let mut packed: Vec<f32> = Vec::new();
        let mut ob0 = 0;
        while ob0 < nb {
            let nvalid = ob.min(nb - ob0);
            // input blocks that any output channel of the group reads
            let (mut lo, mut hi) = (usize::MAX, 0usize);
            for oc in ob0 * L..((ob0 + nvalid) * L).min(n_out) {
                let gi = oc / og;
                lo = lo.min(gi * cg / L);
                hi = hi.max(((gi + 1) * cg).div_ceil(L));
            }
            let w_off = packed.len();
            let mut taps = Vec::new();
            for ib in lo..hi {
                for ky in 0..kh {
                    for kx in 0..kw {
                        taps.push(
                            (ib * xl.plane()) as isize + ((ky * c.dilation[0]) as isize * ws + (kx * c.dilation[1]) as isize) * L as isize,
                        );
                        for ic in 0..icn {
                            for o in 0..ob {
                                for lane in 0..L {
                                    let oc = (ob0 + o) * L + lane;
                                    let ci = ib * L + ic;
                                    let v = if o < nvalid && oc < n_out && ci < n_in && ci / cg == oc / og {
                                        let idx = ((oc * cg + ci % cg) * kh + ky) * kw + kx;
                                        fold_weight(fold, oc, w[idx])
                                    } else {
                                        0.0
                                    };
                                    packed.push(v);
                                }
                            }
                        }
                    }
                }
            }
            let per = (KCHUNK_BYTES / (icn * ob * L * 4)).max(1);
            let kchunks = (0..taps.len()).step_by(per).map(|k| (k, (k + per).min(taps.len()))).collect();
            groups.push(ConvGroup {
                ob0,
                nvalid,
                taps,
                w_off,
                kchunks,
            });
            ob0 += ob;
        }
        let mut bias = vec![0f32; groups.len() * ob * L];
        for oc in 0..n_out {
            bias[oc] = fold_bias(fold, b, oc);
        }
        let segs = segments(batch, yl.h, yl.w, qc, r);
        let tiles = segs.len() / r;
        let chunks = (4 * threads).div_ceil(groups.len()).clamp(1, tiles.max(1));
        let macs = (n_out * cg * kh * kw * yl.h * yl.w * batch) as u64;
        Ok(ConvStep {
            x,
            y,
            res,
            act,
            xl,
            yl,
            rl,
            stride: c.stride,
            kernel: c.kernel,
            icn,
            prefetch: packed.len() * 4 > 1536 * 1024 && tiles <= 16,
            ob,
            r,
            qc,
            groups,
            weights: AVec::from_slice(&packed),
            bias: AVec::from_slice(&bias),
            segs,
            tiles,
            chunks,
            row0: xl.pad[0] as isize - c.padding[0] as isize,
            col0: xl.pad[1] as isize - c.padding[1] as isize,
            batch,
            macs,
            note: String::new(),
        })
    }

    pub fn with_note(mut self, note: String) -> Self {
        self.note = note;
        self
    }
}

impl StepOp for ConvStep {
    fn describe(&self) -> String {
        format!(
            "conv {}x{} s{} {}->{} [ob{} {}x{}]{}",
            self.kernel[0], self.kernel[1], self.stride[0], self.xl.c, self.yl.c, self.ob, self.r, self.qc, self.note
        )
    }

    fn macs(&self) -> u64 {
        self.macs
    }

    fn weight_floats(&self) -> usize {
        self.weights.len() + self.bias.len()
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.zero_borders(self.y, self.batch);
        let n = self.groups.len() * self.chunks;
        ctx.par(n, &|t, _| {
            let (g, c) = (t / self.chunks, t % self.chunks);
            let (t0, t1) = (c * self.tiles / self.chunks, (c + 1) * self.tiles / self.chunks);
            run_tiles(ctx.isa, self, ctx, g, t0, t1);
        })
    }
}

isa_dispatch!(fn run_tiles => tiles_dyn(st: &ConvStep, ctx: &Ctx, g: usize, t0: usize, t1: usize));

#[inline(always)]
unsafe fn tiles_dyn<S: Simd>(st: &ConvStep, ctx: &Ctx, g: usize, t0: usize, t1: usize) {
    let sx = if st.qc > 1 { st.stride[1] } else { 1 };
    unsafe { dispatch_tile!((st.ob, st.r, st.qc, sx), tiles::<S>(st, ctx, g, t0, t1)) }
}

#[inline(always)]
unsafe fn tiles<S: Simd, const OB: usize, const R: usize, const QC: usize, const SX: usize>(
    st: &ConvStep,
    ctx: &Ctx,
    g: usize,
    t0: usize,
    t1: usize,
) {
    unsafe {
        let grp = &st.groups[g];
        let xb = ctx.ptr(st.x) as *const f32;
        let yb = ctx.ptr(st.y);
        let (xl, yl) = (&st.xl, &st.yl);
        let (x_img, ws) = (xl.img() as isize, xl.ws() as isize);
        let (sy, sx) = (st.stride[0] as isize, st.stride[1] as isize);
        let w0 = st.weights.ptr().add(grp.w_off);
        let bias = st.bias.ptr().add(grp.ob0 * L);
        let act = ActV::<S>::new(st.act);
        let res = Residuals {
            base: from_fn(|k| st.res.get(k).map_or(std::ptr::null(), |&v| ctx.ptr(v) as *const f32)),
            lay: &st.rl,
        };
        let bv: [S::V; OB] = from_fn(|o| S::load(bias.add(o * L)));
        let nk = grp.kchunks.len();
        let step_floats = st.icn * OB * L;
        // K-blocking: every tile of the task runs over one chunk of the weights (which then
        // stays in L2) before the next chunk; partial sums wait in the output buffer
        for (ki, &(k0, k1)) in grp.kchunks.iter().enumerate() {
            let (first, last) = (ki == 0, ki + 1 == nk);
            let taps = &grp.taps[k0..k1];
            let wk = w0.add(k0 * step_floats);
            for tile in t0..t1 {
                let segs = &st.segs[tile * R..tile * R + R];
                let xs: [*const f32; R] = from_fn(|r| {
                    let s = segs[r];
                    xb.offset(s.img as isize * x_img + ((s.oy as isize * sy + st.row0) * ws + s.ox as isize * sx + st.col0) * L as isize)
                });
                let yp: [*mut f32; R] = from_fn(|r| {
                    let s = segs[r];
                    yb.add(s.img as usize * yl.img() + grp.ob0 * yl.plane() + yl.at(s.oy as usize, s.ox as usize))
                });
                let mut acc = [[bv; QC]; R];
                if !first {
                    for r in 0..R {
                        for q in 0..QC {
                            for o in 0..OB {
                                if o < grp.nvalid {
                                    acc[r][q][o] = S::load(yp[r].add(q * L + o * yl.plane()));
                                }
                            }
                        }
                    }
                }
                let mut wp = wk;
                let wend = w0.add(grp.taps.len() * step_floats);
                for &t in taps {
                    if st.prefetch {
                        let pf = wp.wrapping_add(PREFETCH_TAPS * step_floats);
                        if pf < wend {
                            for l in 0..st.icn * OB {
                                S::prefetch(pf.add(l * L));
                            }
                        }
                    }
                    let xt: [*const f32; R] = from_fn(|r| xs[r].offset(t));
                    for ic in 0..st.icn {
                        let wv: [S::V; OB] = from_fn(|o| S::load(wp.add((ic * OB + o) * L)));
                        for r in 0..R {
                            for q in 0..QC {
                                let xv = S::splat(*xt[r].add(q * SX * L + ic));
                                for o in 0..OB {
                                    acc[r][q][o] = S::fma(xv, wv[o], acc[r][q][o]);
                                }
                            }
                        }
                    }
                    wp = wp.add(step_floats);
                }
                // Spill the accumulators once with constant indices (the epilogue's data-dependent
                // loops would otherwise make the compiler keep `acc` in memory inside the hot loop).
                let mut buf = std::mem::MaybeUninit::<[[[S::V; OB]; QC]; R]>::uninit();
                let bp = buf.as_mut_ptr() as *mut S::V;
                for r in 0..R {
                    for q in 0..QC {
                        for o in 0..OB {
                            bp.add((r * QC + q) * OB + o).write(acc[r][q][o]);
                        }
                    }
                }
                // epilogue: residuals, activation, store (or the partial sums of a chunk)
                let finish = last.then_some((&act, &res));
                store_tile::<S, OB, R, QC>(bp, segs, &yp, yl.plane(), grp.ob0, grp.nvalid, finish);
            }
        }
    }
}
