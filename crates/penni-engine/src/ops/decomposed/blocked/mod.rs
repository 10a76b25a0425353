//! Decomposed (PENNI) convolution on the channel-blocked layout: w[n, c] = sum_j A[n, c, j] b_j,
//! evaluated without ever forming w (spec section 5). The kernels are in `kernels`.
//!
//! Basis-first: stage 1 convolves every live input channel with the d live bases,
//! Z[c, j] = X[c] * b_j, vectorised over 16 channels of the blocked layout with the basis
//! values broadcast; a 16x16 transpose turns each block of basis maps into pixel rows. Stage 2
//! is a sparse matrix (CSR, N x live (c, j) columns) times those rows, vectorised over 16 pixels;
//! another transpose turns 16 output rows back into 16-channel pixel vectors for the epilogue
//! (bias = folded batchnorm, residual adds, activation).
//! - `BasisFirst` computes Z for the whole layer, then the combination;
//! - `Fused` streams: stage 1 for one tile of pixels into a small buffer that stays in cache,
//!   then stage 2 for the same tile (ESCALATE's basis-first dataflow);
//! - `MixFirst` mixes first at input resolution, U[n, j] = sum_c A[n, c, j] X[c] (sparse, over
//!   pixel rows), then convolves each U[n, j] with b_j and sums over j (lanes = 16 output
//!   channels, basis values broadcast). Cheaper when N*d*k*k at the output resolution plus
//!   nnz at the input resolution beats C*d*k*k + nnz at the output resolution.

use std::array::from_fn;

use penni_model::batchnorm::Affine;
use penni_model::{DecomposedConv2d, Node};

use super::analysis::Coefs;
use super::cost::Choice;
use super::csr::Csr;
use crate::arena::AVec;
use crate::epilogue::{Act, check_residuals, fold_bias};
use crate::error::EngineError;
use crate::layout::MapLay;
use crate::ops::conv::tiling::{Seg, choose_tile, segments};
use crate::options::Strategy;
use crate::simd::L;
use crate::step::{Ctx, StepOp, ValId};

mod kernels;

/// Bytes of basis maps a fused tile may hold (sized for a 48 KiB L1 data cache).
const FUSED_TILE_BYTES: usize = 40 * 1024;

/// Pixel vectors per fused tile: as many as keep the tile's basis maps in L1.
fn fused_t(ncols: usize) -> usize {
    let per = ncols.max(1) * L * 4;
    if 4 * per <= FUSED_TILE_BYTES {
        4
    } else if 2 * per <= FUSED_TILE_BYTES {
        2
    } else {
        1
    }
}

pub(crate) struct DecompStep {
    x: ValId,
    y: ValId,
    res: Vec<ValId>,
    act: Act,
    xl: MapLay,
    yl: MapLay,
    rl: Vec<MapLay>,
    strategy: Strategy,
    kernel: [usize; 2],
    stride: [usize; 2],
    batch: usize,
    /// Output channel blocks.
    nbo: usize,
    dl: usize,
    bias: AVec,
    nnz: usize,
    macs: u64,
    // --- basis-first and fused
    /// Stage-1 tap offsets in the input storage.
    taps: Vec<isize>,
    /// Chunks of live bases: (first live index, count), and their values [tap][count].
    chunks: Vec<(usize, usize)>,
    chunk_bases: Vec<Vec<f32>>,
    live_cbs: Vec<usize>,
    /// (cb*16 + lane)*dl + jj -> column, or -1 for a dead column.
    colmap: Vec<i32>,
    ncols: usize,
    rows: Csr,
    /// Pixel vectors per stage-2 tile.
    t: usize,
    /// Combination vectorised over output channels (basis maps stay channel-blocked).
    blocked: bool,
    /// Pixels per basis-map plane in the blocked buffers (a fused tile, or the padded total).
    zplane: usize,
    /// Blocked combination: per output block, (offset of the column's scalar in the basis
    /// buffer at pixel 0, index of its 16-coefficient vector).
    bentries: Vec<Vec<(isize, u32)>>,
    bcoef: AVec,
    /// Output pixels (all images) and the padded count the basis-first buffer holds.
    ptot: usize,
    ppad: usize,
    row0: isize,
    col0: isize,
    // --- mix-first
    xcol: Vec<i32>,
    nci: usize,
    live_in_cbs: Vec<usize>,
    urows: Csr,
    live_js: Vec<Vec<usize>>,
    /// Per output block: (offset in U, basis value) for every live (basis, tap).
    mf_taps: Vec<Vec<(isize, f32)>>,
    ul: MapLay,
    mf_tile: (usize, usize, usize),
    mf_segs: Vec<Seg>,
    mf_chunks: usize,
    zeros: AVec,
    // --- scratch buffers (set by the planner)
    threads: usize,
    per_thread: usize,
    big_floats: usize,
    scratch: Option<ValId>,
    big: Option<ValId>,
}

impl DecompStep {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: &Node,
        c: &DecomposedConv2d,
        fold: &Affine,
        an: &Coefs,
        choice: Choice,
        x: ValId,
        xl: MapLay,
        y: ValId,
        yl: MapLay,
        res: Vec<ValId>,
        rl: Vec<MapLay>,
        act: Act,
        batch: usize,
        threads: usize,
    ) -> Result<DecompStep, EngineError> {
        let strategy = choice.strategy;
        check_residuals(&node.name, res.len())?;
        let bases = &node.param("bases")?.data;
        let b = node.params.get("bias").map(|t| t.data.as_slice());
        let (n_out, n_in) = (c.conv.out_channels, c.conv.in_channels);
        let (kk, cg, og) = (an.kk, an.cg, an.og);
        let dl = an.dl();
        let nbo = n_out.div_ceil(L);
        let mut bias = vec![0f32; nbo * L];
        for n in 0..n_out {
            bias[n] = fold_bias(fold, b, n);
        }
        let coef = |n: usize, ci: usize, j: usize| an.coef(n, ci, j);
        let ptot = batch * yl.h * yl.w;
        let mut step = DecompStep {
            x,
            y,
            res,
            act,
            xl,
            yl,
            rl,
            strategy,
            kernel: c.conv.kernel,
            stride: c.conv.stride,
            batch,
            nbo,
            dl,
            bias: AVec::from_slice(&bias),
            nnz: an.nnz,
            macs: 0,
            taps: vec![],
            chunks: vec![],
            chunk_bases: vec![],
            live_cbs: vec![],
            colmap: vec![],
            ncols: 0,
            rows: Csr::new(),
            t: 1,
            blocked: false,
            zplane: 0,
            bentries: vec![],
            bcoef: AVec::zeros(0),
            ptot,
            ppad: 0,
            row0: 0,
            col0: 0,
            xcol: vec![],
            nci: 0,
            live_in_cbs: vec![],
            urows: Csr::new(),
            live_js: vec![],
            mf_taps: vec![],
            ul: MapLay {
                c: 0,
                h: 0,
                w: 0,
                pad: [0; 4],
            },
            mf_tile: (1, 16, 1),
            mf_segs: vec![],
            mf_chunks: 1,
            zeros: AVec::zeros(L),
            threads,
            per_thread: 0,
            big_floats: 0,
            scratch: None,
            big: None,
        };
        let live_rows_nj: usize;
        match strategy {
            Strategy::MixFirst => {
                // compact live input channels: the rows of the transposed input tile
                let mut xcol = vec![-1i32; xl.cb() * L];
                let mut nci = 0;
                for ci in 0..n_in {
                    if an.live_c[ci] {
                        xcol[ci] = nci as i32;
                        nci += 1;
                    }
                }
                let live_in_cbs = (0..xl.cb()).filter(|&cb| (0..L).any(|l| xcol[cb * L + l] >= 0)).collect();
                // U rows (nb, jj, lane) -> n = nb*16 + lane, basis jl[jj]
                let mut urows = Csr::new();
                let mut live_js = vec![Vec::new(); nbo];
                let mut rows_live = 0;
                for nb in 0..nbo {
                    for (jj, &j) in an.jl.iter().enumerate() {
                        let start = urows.terms();
                        for lane in 0..L {
                            let n = nb * L + lane;
                            let before = urows.terms();
                            if n < n_out {
                                let g = n / og;
                                for ci in g * cg..(g + 1) * cg {
                                    let v = coef(n, ci, j);
                                    if v != 0.0 {
                                        urows.push(xcol[ci] as usize * L, v);
                                    }
                                }
                            }
                            if urows.terms() > before {
                                rows_live += 1;
                            }
                            urows.end_row();
                        }
                        if urows.terms() > start {
                            live_js[nb].push(jj);
                        }
                    }
                }
                live_rows_nj = rows_live;
                let ul = MapLay {
                    c: nbo * dl.max(1) * L,
                    h: xl.h,
                    w: xl.w,
                    pad: c.conv.padding,
                };
                let ws = ul.ws() as isize;
                let mut mf_taps = Vec::with_capacity(nbo);
                for js in &live_js {
                    let mut v = Vec::new();
                    for &jj in js {
                        for ky in 0..c.conv.kernel[0] {
                            for kx in 0..c.conv.kernel[1] {
                                let off = (jj * ul.plane()) as isize
                                    + ((ky * c.conv.dilation[0]) as isize * ws + (kx * c.conv.dilation[1]) as isize) * L as isize;
                                v.push((off, bases[an.jl[jj] * kk + ky * c.conv.kernel[1] + kx]));
                            }
                        }
                    }
                    mf_taps.push(v);
                }
                let steps = dl * kk;
                let (_, mut r, mut qc) = choose_tile(nbo, yl.h, yl.w, batch, c.conv.stride[1], steps, threads, 1);
                if ![(3, 8), (6, 4), (12, 2), (4, 4)].contains(&(r, qc)) {
                    (r, qc) = (16, 1);
                }
                step.mf_tile = (1, r, qc);
                step.mf_segs = segments(batch, yl.h, yl.w, qc, r);
                let tiles = step.mf_segs.len() / r;
                step.mf_chunks = (4 * threads).div_ceil(nbo).clamp(1, tiles.max(1));
                step.xcol = xcol;
                step.nci = nci;
                step.live_in_cbs = live_in_cbs;
                step.urows = urows;
                step.live_js = live_js;
                step.mf_taps = mf_taps;
                step.ul = ul;
                // scratch: the transposed input tile; U for the whole batch
                step.per_thread = nci * L;
                step.big_floats = batch.checked_mul(ul.img()).ok_or(EngineError::TooLarge(u128::MAX))?;
                let p_in = (batch * xl.h * xl.w) as u64;
                step.macs = an.nnz as u64 * p_in + ptot as u64 * live_rows_nj as u64 * kk as u64;
            }
            _ => {
                let ws = xl.ws() as isize;
                for ky in 0..c.conv.kernel[0] {
                    for kx in 0..c.conv.kernel[1] {
                        step.taps
                            .push(((ky * c.conv.dilation[0]) as isize * ws + (kx * c.conv.dilation[1]) as isize) * L as isize);
                    }
                }
                (step.chunks, step.chunk_bases) = an.basis_chunks(bases);
                let (colmap, ncols) = an.columns(xl.cb() * L * dl);
                step.live_cbs = (0..xl.cb())
                    .filter(|&cb| (cb * L..(cb + 1) * L).any(|ci| ci < n_in && an.live_c[ci]))
                    .collect();
                step.blocked = choice.blocked_combination;
                let fused = strategy == Strategy::Fused;
                let nlive = step.live_cbs.len();
                if step.blocked {
                    step.t = if fused {
                        (FUSED_TILE_BYTES / (nlive.max(1) * dl.max(1) * L * L * 4)).clamp(1, 4)
                    } else {
                        4
                    };
                } else {
                    step.t = if fused { fused_t(ncols) } else { 4 };
                }
                let tile_px = L * step.t;
                step.ppad = ptot.div_ceil(tile_px) * tile_px;
                step.zplane = if fused { tile_px } else { step.ppad };
                if step.blocked {
                    let mut cbi = vec![usize::MAX; xl.cb()];
                    for (i, &cb) in step.live_cbs.iter().enumerate() {
                        cbi[cb] = i;
                    }
                    let mut coefs: Vec<f32> = Vec::new();
                    for nb in 0..nbo {
                        let mut entries = Vec::new();
                        for ci in 0..n_in {
                            for (jj, &j) in an.jl.iter().enumerate() {
                                let v: [f32; L] = from_fn(|lane| if nb * L + lane < n_out { coef(nb * L + lane, ci, j) } else { 0.0 });
                                if v.iter().any(|x| *x != 0.0) {
                                    let off = ((cbi[ci / L] * dl + jj) * step.zplane * L + ci % L) as isize;
                                    entries.push((off, (coefs.len() / L) as u32));
                                    coefs.extend_from_slice(&v);
                                }
                            }
                        }
                        step.bentries.push(entries);
                    }
                    step.bcoef = AVec::from_slice(&coefs);
                    let plane = nlive * dl * L;
                    if fused {
                        step.per_thread = plane * tile_px;
                    } else {
                        step.per_thread = L;
                        step.big_floats = plane.checked_mul(step.ppad).ok_or(EngineError::TooLarge(u128::MAX))?;
                    }
                } else {
                    let zstride = step.zplane;
                    let mut rows = Csr::new();
                    for n in 0..nbo * L {
                        if n < n_out {
                            let g = n / og;
                            for ci in g * cg..(g + 1) * cg {
                                for (jj, &j) in an.jl.iter().enumerate() {
                                    let v = coef(n, ci, j);
                                    if v != 0.0 {
                                        rows.push(colmap[ci * dl + jj] as usize * zstride, v);
                                    }
                                }
                            }
                        }
                        rows.end_row();
                    }
                    step.rows = rows;
                    let zb = dl.max(1) * L * L;
                    if fused {
                        step.per_thread = ncols * tile_px + zb;
                    } else {
                        step.per_thread = zb;
                        step.big_floats = ncols.checked_mul(step.ppad).ok_or(EngineError::TooLarge(u128::MAX))?;
                    }
                }
                step.colmap = colmap;
                step.ncols = ncols;
                step.row0 = xl.pad[0] as isize - c.conv.padding[0] as isize;
                step.col0 = xl.pad[1] as isize - c.conv.padding[1] as isize;
                if step.row0 < 0 || step.col0 < 0 || xl.pad[2] < c.conv.padding[2] || xl.pad[3] < c.conv.padding[3] {
                    return Err(EngineError::Internal(format!(
                        "'{}': input storage has less padding than the convolution",
                        node.name
                    )));
                }
                let live_c = an.live_c.iter().filter(|&&l| l).count();
                step.macs = ptot as u64 * (live_c * dl * kk) as u64 + an.nnz as u64 * ptot as u64;
            }
        }
        Ok(step)
    }

    fn scratch_ptr(&self, ctx: &Ctx, tid: usize) -> *mut f32 {
        let base = self.scratch.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
        // SAFETY: the scratch buffer holds `threads` slices of `per_thread` floats (rounded).
        unsafe { base.add(tid * self.per_thread.div_ceil(L) * L) }
    }

    /// Image, row and column of output pixel `p` (over the whole batch).
    #[inline(always)]
    fn pix(&self, p: usize) -> (usize, usize, usize) {
        let p = p.min(self.ptot - 1);
        let (hw, w) = (self.yl.h * self.yl.w, self.yl.w);
        (p / hw, p % hw / w, p % w)
    }

    /// Offset of the receptive-field origin of output pixel (img, oy, ox) in the input.
    #[inline(always)]
    fn x_off(&self, (img, oy, ox): (usize, usize, usize)) -> isize {
        (img * self.xl.img()) as isize
            + ((oy * self.stride[0]) as isize + self.row0) * self.xl.ws() as isize * L as isize
            + ((ox * self.stride[1]) as isize + self.col0) * L as isize
    }
}

impl StepOp for DecompStep {
    /// Slot 0: per-thread working memory; slot 1 (if any): a whole-layer buffer.
    fn scratch_floats(&self) -> Vec<usize> {
        let mut v = vec![self.per_thread.div_ceil(L) * L * self.threads];
        if self.big_floats > 0 {
            v.push(self.big_floats);
        }
        v
    }

    fn set_scratch(&mut self, slot: usize, v: ValId) {
        if slot == 0 {
            self.scratch = Some(v);
        } else {
            self.big = Some(v);
        }
    }

    fn macs(&self) -> u64 {
        self.macs
    }

    fn describe(&self) -> String {
        let s = match (self.strategy, self.blocked) {
            (Strategy::MixFirst, _) => "mix-first",
            (Strategy::Fused, false) => "fused",
            (Strategy::Fused, true) => "fused/blocked",
            (_, false) => "basis-first",
            (_, true) => "basis-first/blocked",
        };
        format!(
            "penni {}x{} s{} {}->{} {s} d{} nnz{} cols{}",
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.xl.c,
            self.yl.c,
            self.dl,
            self.nnz,
            self.ncols.max(self.nci)
        )
    }

    fn weight_floats(&self) -> usize {
        self.bias.len()
            + self.rows.floats()
            + self.urows.floats()
            + self.chunk_bases.iter().map(Vec::len).sum::<usize>()
            + self.mf_taps.iter().map(|v| v.len() * 3).sum::<usize>()
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        self.run(ctx)
    }
}
