//! Decomposed (PENNI) convolution: w[n, c] = sum_j A[n, c, j] b_j, evaluated without ever
//! forming w (spec section 5).
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

use penni_model::{DecomposedConv2d, Node, Shape};

use crate::arena::AVec;
use crate::conv::{MAX_RES, Seg, choose_tile, segments};
use crate::error::EngineError;
use crate::plan::{Act, ActV, Ctx, MapLay, Strategy, ValId};
use crate::simd::{L, Simd, isa_dispatch};

/// Largest number of bases one stage-1 kernel call handles (more are done in chunks).
const MAX_D: usize = 8;

/// Bytes of basis maps a fused tile may hold (sized for a 48 KiB L1 data cache).
const FUSED_TILE_BYTES: usize = 40 * 1024;

/// Coefficient analysis shared by strategy choice and packing.
struct Analysis {
    d: usize,
    kk: usize,
    cg: usize,
    og: usize,
    /// Live bases (used by some non-zero coefficient).
    jl: Vec<usize>,
    /// Live input channels.
    live_c: Vec<bool>,
    /// Live (input channel, live basis) columns.
    live_col: Vec<bool>,
    nnz: usize,
}

fn analyse(node: &Node, c: &DecomposedConv2d) -> Result<Analysis, EngineError> {
    let a = &node.param("coefficients")?.data;
    let d = c.num_bases;
    let (cg, og) = (c.conv.in_channels / c.conv.groups, c.conv.out_channels / c.conv.groups);
    let mut basis_live = vec![false; d];
    let mut nnz = 0;
    for (i, v) in a.iter().enumerate() {
        if *v != 0.0 {
            basis_live[i % d] = true;
            nnz += 1;
        }
    }
    let jl: Vec<usize> = (0..d).filter(|&j| basis_live[j]).collect();
    let mut live_c = vec![false; c.conv.in_channels];
    let mut live_col = vec![false; c.conv.in_channels * jl.len()];
    for n in 0..c.conv.out_channels {
        let g = n / og;
        for cl in 0..cg {
            let ci = g * cg + cl;
            for (jj, &j) in jl.iter().enumerate() {
                if a[(n * cg + cl) * d + j] != 0.0 {
                    live_c[ci] = true;
                    live_col[ci * jl.len() + jj] = true;
                }
            }
        }
    }
    Ok(Analysis {
        d,
        kk: c.conv.kernel[0] * c.conv.kernel[1],
        cg,
        og,
        jl,
        live_c,
        live_col,
        nnz,
    })
}

fn map_dims(s: Shape) -> (usize, usize, usize) {
    match s {
        Shape::Map { c, h, w } => (c, h, w),
        Shape::Vector(n) => (n, 1, 1),
    }
}

/// Estimated cycles per output pixel of each way to run a layer (FMAs at two per cycle where
/// loads keep up, one per cycle in the load-bound sparse kernels, a 16x16 transpose costing
/// 64 shuffles on one port).
struct Costs {
    /// Basis-first with the combination vectorised over pixels (transposes in between).
    bf_pixel: f64,
    /// Basis-first with the combination vectorised over 16 output channels, skipping
    /// all-zero 16-row blocks of a column (no transposes).
    bf_blocked: f64,
    mix_first: f64,
    dense: f64,
}

fn costs(c: &DecomposedConv2d, an: &Analysis, coef: &[f32], input: Shape, output: Shape) -> Costs {
    let (_, h, w) = map_dims(input);
    let (_, oh, ow) = map_dims(output);
    let rin = (h * w) as f64 / (oh * ow) as f64;
    let dl = an.jl.len() as f64;
    let kk = an.kk as f64;
    let nbo = c.conv.out_channels.div_ceil(L);
    let live_cbs = (0..c.conv.in_channels.div_ceil(L))
        .filter(|cb| an.live_c[cb * L..((cb + 1) * L).min(c.conv.in_channels)].iter().any(|&l| l))
        .count() as f64;
    let stage1 = live_cbs * dl * kk / 2.0;
    let nnz = an.nnz as f64;
    let bf_pixel = stage1 + live_cbs * dl * 4.0 + nnz / 16.0 + nbo as f64 * 5.0;
    let bf_blocked = stage1 + block_columns(c, an, coef) as f64 + nbo as f64;
    let mix_first = rin * (live_cbs * 4.0 + nnz / 16.0 + nbo as f64 * dl * 4.0) + nbo as f64 * dl * kk / 2.0 + nbo as f64;
    let dense = if c.conv.groups == 1 {
        let icn = if c.conv.in_channels < L {
            c.conv.in_channels
        } else {
            c.conv.in_channels.div_ceil(L) * L
        };
        nbo as f64 * icn as f64 * kk / 2.0 + nbo as f64
    } else {
        f64::INFINITY
    };
    Costs {
        bf_pixel,
        bf_blocked,
        mix_first,
        dense,
    }
}

/// Columns (input channel, live basis) summed over output blocks of 16 rows that hold a
/// non-zero in that column: the work of the channel-vectorised combination.
fn block_columns(c: &DecomposedConv2d, an: &Analysis, coef: &[f32]) -> usize {
    let (d, cg, og) = (an.d, an.cg, an.og);
    let mut total = 0;
    let mut seen = vec![false; c.conv.in_channels * an.jl.len()];
    for nb in 0..c.conv.out_channels.div_ceil(L) {
        seen.iter_mut().for_each(|v| *v = false);
        for n in nb * L..((nb + 1) * L).min(c.conv.out_channels) {
            let g = n / og;
            for cl in 0..cg {
                for (jj, &j) in an.jl.iter().enumerate() {
                    if coef[(n * cg + cl) * d + j] != 0.0 && !seen[(g * cg + cl) * an.jl.len() + jj] {
                        seen[(g * cg + cl) * an.jl.len() + jj] = true;
                        total += 1;
                    }
                }
            }
        }
    }
    total
}

/// Resolves `Auto` for one layer: the cheapest of basis-first, mix-first and a rebuilt dense
/// kernel by the cost model above; basis-first runs fused unless the layer has too few tiles
/// to keep every thread busy.
pub(crate) fn choose_strategy(
    node: &Node,
    input: Shape,
    output: Shape,
    batch: usize,
    threads: usize,
    requested: Strategy,
) -> Result<Strategy, EngineError> {
    if requested != Strategy::Auto {
        return Ok(requested);
    }
    let penni_model::Op::DecomposedConv2d(c) = &node.op else {
        return Err(EngineError::Internal("not a decomposed convolution".into()));
    };
    let an = analyse(node, c)?;
    let k = costs(c, &an, &node.param("coefficients")?.data, input, output);
    let bf = k.bf_pixel.min(k.bf_blocked);
    if k.dense < 0.8 * bf.min(k.mix_first) {
        return Ok(Strategy::Dense);
    }
    if k.mix_first < 0.8 * bf {
        return Ok(Strategy::MixFirst);
    }
    let (_, oh, ow) = map_dims(output);
    let tiles = (batch * oh * ow).div_ceil(L * 4);
    Ok(if tiles >= 2 * threads {
        Strategy::Fused
    } else {
        Strategy::BasisFirst
    })
}

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

/// CSR rows of a sparse matrix whose columns are pixel rows of a buffer: `cols` are offsets
/// (floats) of the column's row in that buffer.
struct Csr {
    ptr: Vec<usize>,
    cols: Vec<usize>,
    vals: Vec<f32>,
}

impl Csr {
    fn floats(&self) -> usize {
        self.ptr.len() * 2 + self.cols.len() * 2 + self.vals.len()
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
    pub macs: u64,
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
        scale: &[f64],
        shift: &[f64],
        strategy: Strategy,
        x: ValId,
        xl: MapLay,
        y: ValId,
        yl: MapLay,
        res: Vec<ValId>,
        rl: Vec<MapLay>,
        act: Act,
        batch: usize,
        threads: usize,
        force_blocked: Option<bool>,
    ) -> Result<DecompStep, EngineError> {
        if res.len() > MAX_RES {
            return Err(EngineError::Unsupported {
                node: node.name.clone(),
                message: format!("more than {MAX_RES} residual inputs"),
            });
        }
        let an = analyse(node, c)?;
        let a = &node.param("coefficients")?.data;
        let bases = &node.param("bases")?.data;
        let b = node.params.get("bias").map(|t| &t.data);
        let (n_out, n_in) = (c.conv.out_channels, c.conv.in_channels);
        let (d, kk, cg, og) = (an.d, an.kk, an.cg, an.og);
        let dl = an.jl.len();
        let nbo = n_out.div_ceil(L);
        let mut bias = vec![0f32; nbo * L];
        for n in 0..n_out {
            bias[n] = (b.map_or(0.0, |b| b[n] as f64) * scale[n] + shift[n]) as f32;
        }
        // folded coefficient of output n, global input channel ci, basis j (0 outside the group)
        let coef = |n: usize, ci: usize, j: usize| -> f32 {
            if ci / cg != n / og {
                return 0.0;
            }
            (a[(n * cg + ci % cg) * d + j] as f64 * scale[n]) as f32
        };
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
            rows: Csr {
                ptr: vec![0],
                cols: vec![],
                vals: vec![],
            },
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
            urows: Csr {
                ptr: vec![0],
                cols: vec![],
                vals: vec![],
            },
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
                let mut urows = Csr {
                    ptr: vec![0],
                    cols: vec![],
                    vals: vec![],
                };
                let mut live_js = vec![Vec::new(); nbo];
                let mut rows_live = 0;
                for nb in 0..nbo {
                    for (jj, &j) in an.jl.iter().enumerate() {
                        let start = urows.cols.len();
                        for lane in 0..L {
                            let n = nb * L + lane;
                            let before = urows.cols.len();
                            if n < n_out {
                                let g = n / og;
                                for ci in g * cg..(g + 1) * cg {
                                    let v = coef(n, ci, j);
                                    if v != 0.0 {
                                        urows.cols.push(xcol[ci] as usize * L);
                                        urows.vals.push(v);
                                    }
                                }
                            }
                            if urows.cols.len() > before {
                                rows_live += 1;
                            }
                            urows.ptr.push(urows.cols.len());
                        }
                        if urows.cols.len() > start {
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
                // chunks of at most MAX_D live bases, as even as possible
                let nchunks = dl.div_ceil(MAX_D);
                let mut start = 0;
                for i in 0..nchunks {
                    let cnt = (dl - start) / (nchunks - i);
                    let mut vals = Vec::with_capacity(kk * cnt);
                    for t in 0..kk {
                        for jj in start..start + cnt {
                            vals.push(bases[an.jl[jj] * kk + t]);
                        }
                    }
                    step.chunks.push((start, cnt));
                    step.chunk_bases.push(vals);
                    start += cnt;
                }
                let mut colmap = vec![-1i32; xl.cb() * L * dl];
                let mut ncols = 0;
                for ci in 0..n_in {
                    for jj in 0..dl {
                        if an.live_col[ci * dl + jj] {
                            colmap[ci * dl + jj] = ncols as i32;
                            ncols += 1;
                        }
                    }
                }
                step.live_cbs = (0..xl.cb())
                    .filter(|&cb| (cb * L..(cb + 1) * L).any(|ci| ci < n_in && an.live_c[ci]))
                    .collect();
                let k = costs(
                    c,
                    &an,
                    a,
                    Shape::Map { c: n_in, h: xl.h, w: xl.w },
                    Shape::Map {
                        c: n_out,
                        h: yl.h,
                        w: yl.w,
                    },
                );
                step.blocked = force_blocked.unwrap_or(k.bf_blocked < k.bf_pixel);
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
                    let mut rows = Csr {
                        ptr: vec![0],
                        cols: vec![],
                        vals: vec![],
                    };
                    for n in 0..nbo * L {
                        if n < n_out {
                            let g = n / og;
                            for ci in g * cg..(g + 1) * cg {
                                for (jj, &j) in an.jl.iter().enumerate() {
                                    let v = coef(n, ci, j);
                                    if v != 0.0 {
                                        rows.cols.push(colmap[ci * dl + jj] as usize * zstride);
                                        rows.vals.push(v);
                                    }
                                }
                            }
                        }
                        rows.ptr.push(rows.cols.len());
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

    /// Scratch the step needs: slot 0 per-thread working memory, slot 1 a whole-layer buffer.
    pub fn scratch_needs(&self) -> Vec<(usize, usize)> {
        let mut v = vec![(0, self.per_thread.div_ceil(L) * L * self.threads)];
        if self.big_floats > 0 {
            v.push((1, self.big_floats));
        }
        v
    }

    pub fn set_scratch(&mut self, slot: usize, v: ValId) {
        if slot == 0 {
            self.scratch = Some(v);
        } else {
            self.big = Some(v);
        }
    }

    pub fn describe(&self) -> String {
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

    pub fn weight_floats(&self) -> usize {
        self.bias.len()
            + self.rows.floats()
            + self.urows.floats()
            + self.chunk_bases.iter().map(Vec::len).sum::<usize>()
            + self.mf_taps.iter().map(|v| v.len() * 3).sum::<usize>()
    }

    fn scratch_ptr(&self, ctx: &Ctx, tid: usize) -> *mut f32 {
        let base = self.scratch.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
        // SAFETY: the scratch buffer holds `threads` slices of `per_thread` floats (rounded).
        unsafe { base.add(tid * self.per_thread.div_ceil(L) * L) }
    }

    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        crate::ops::zero_borders(ctx, self.y, self.batch);
        match self.strategy {
            Strategy::MixFirst => {
                let ub = self.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
                crate::ops::zero_borders_raw(ub, &self.ul, self.batch);
                let tiles_in = (self.batch * self.xl.h * self.xl.w).div_ceil(L);
                ctx.par(tiles_in, &|t, tid| mf_mix(ctx.isa, self, ctx, t, tid))?;
                let (_, r, _) = self.mf_tile;
                let tiles = self.mf_segs.len() / r;
                let ch = self.mf_chunks;
                ctx.par(self.nbo * ch, &|t, _| {
                    let (nb, c) = (t / ch, t % ch);
                    mf_conv(ctx.isa, self, ctx, nb, c * tiles / ch, (c + 1) * tiles / ch);
                })
            }
            Strategy::Fused => {
                let tiles = self.ptot.div_ceil(L * self.t);
                ctx.par(tiles, &|t, tid| fused_tile(ctx.isa, self, ctx, t, tid))
            }
            _ => {
                let sub = self.ppad / L;
                let per_task = 4;
                ctx.par(sub.div_ceil(per_task), &|t, tid| {
                    for s in t * per_task..((t + 1) * per_task).min(sub) {
                        bf_stage1(ctx.isa, self, ctx, s, tid);
                    }
                })?;
                let tiles = self.ppad / (L * self.t);
                let nbg = self.nbo.div_ceil(4);
                ctx.par(tiles * nbg, &|t, _| {
                    bf_stage2(ctx.isa, self, ctx, t / nbg, (t % nbg) * 4, ((t % nbg) * 4 + 4).min(self.nbo))
                })
            }
        }
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

isa_dispatch!(fn fused_tile => fused_tile_g(st: &DecompStep, ctx: &Ctx, tile: usize, tid: usize));
isa_dispatch!(fn bf_stage1 => bf_stage1_g(st: &DecompStep, ctx: &Ctx, sub: usize, tid: usize));
isa_dispatch!(fn bf_stage2 => bf_stage2_g(st: &DecompStep, ctx: &Ctx, tile: usize, nb0: usize, nb1: usize));
isa_dispatch!(fn mf_mix => mf_mix_g(st: &DecompStep, ctx: &Ctx, tile: usize, tid: usize));
isa_dispatch!(fn mf_conv => mf_conv_g(st: &DecompStep, ctx: &Ctx, nb: usize, t0: usize, t1: usize));

/// Stage 1 for 16 pixels in groups of PP and D bases: acc[p][j] = sum_t b[t][j] * x[p + tap t],
/// written to zb[(j * jstride + p) * 16].
#[inline(always)]
unsafe fn basis_kernel<S: Simd, const D: usize, const PP: usize>(
    xs: &[*const f32; L],
    taps: &[isize],
    b: *const f32,
    zb: *mut f32,
    jstride: usize,
) {
    unsafe {
        let mut p0 = 0;
        while p0 < L {
            let mut acc = [[S::zero(); D]; PP];
            let xp: [*const f32; PP] = from_fn(|p| xs[p0 + p]);
            for (ti, &t) in taps.iter().enumerate() {
                let bv: [S::V; D] = from_fn(|j| S::splat(*b.add(ti * D + j)));
                for p in 0..PP {
                    let x = S::load(xp[p].offset(t));
                    for j in 0..D {
                        acc[p][j] = S::fma(x, bv[j], acc[p][j]);
                    }
                }
            }
            for p in 0..PP {
                for j in 0..D {
                    S::store(zb.add((j * jstride + p0 + p) * L), acc[p][j]);
                }
            }
            p0 += PP;
        }
    }
}

/// The live bases' maps of one channel block for 16 pixels, channel-blocked:
/// zb[(jj * jstride + p) * 16 + lane].
#[inline(always)]
unsafe fn basis_maps<S: Simd>(st: &DecompStep, xs: &[*const f32; L], zb: *mut f32, jstride: usize) {
    unsafe {
        for (ci, &(start, cnt)) in st.chunks.iter().enumerate() {
            let b = st.chunk_bases[ci].as_ptr();
            let zc = zb.add(start * jstride * L);
            match cnt {
                1 => basis_kernel::<S, 1, 8>(xs, &st.taps, b, zc, jstride),
                2 => basis_kernel::<S, 2, 8>(xs, &st.taps, b, zc, jstride),
                3 => basis_kernel::<S, 3, 4>(xs, &st.taps, b, zc, jstride),
                4 => basis_kernel::<S, 4, 4>(xs, &st.taps, b, zc, jstride),
                5 => basis_kernel::<S, 5, 4>(xs, &st.taps, b, zc, jstride),
                6 => basis_kernel::<S, 6, 2>(xs, &st.taps, b, zc, jstride),
                7 => basis_kernel::<S, 7, 2>(xs, &st.taps, b, zc, jstride),
                _ => basis_kernel::<S, 8, 2>(xs, &st.taps, b, zc, jstride),
            }
        }
    }
}

/// Stage 1 of one channel block for 16 pixels: the live bases' maps, transposed into pixel rows
/// of `z` (column `col` at z + col*zstride + zoff).
#[inline(always)]
unsafe fn stage1_block<S: Simd>(st: &DecompStep, xs: &[*const f32; L], cb: usize, zb: *mut f32, z: *mut f32, zstride: usize, zoff: usize) {
    unsafe {
        basis_maps::<S>(st, xs, zb, L);
        let dl = st.dl;
        for jj in 0..dl {
            let mut v: [S::V; L] = from_fn(|p| S::load(zb.add((jj * L + p) * L)));
            S::transpose16(&mut v);
            for (lane, vec) in v.iter().enumerate() {
                let col = *st.colmap.get_unchecked((cb * L + lane) * dl + jj);
                if col >= 0 {
                    S::store(z.add(col as usize * zstride + zoff), *vec);
                }
            }
        }
    }
}

/// 16 sparse rows (starting at `row0`) times pixel rows of `z`: out[t][r] = bias[r] + sum of
/// the row's terms over pixel vector t, then transposed so out[t][p] is pixel p's 16 channels.
#[inline(always)]
unsafe fn spmm16<S: Simd, const T: usize, const PA: usize>(
    m: &Csr,
    row0: usize,
    bias: *const f32,
    z: *const f32,
    out: &mut [[S::V; L]; T],
) {
    unsafe {
        let ptr = m.ptr.as_ptr();
        let cols = m.cols.as_ptr();
        let vals = m.vals.as_ptr();
        for r in 0..L {
            let (s, e) = (*ptr.add(row0 + r), *ptr.add(row0 + r + 1));
            let mut a = [[S::zero(); T]; PA];
            a[0] = [S::splat(*bias.add(r)); T];
            let mut k = s;
            while k + PA <= e {
                for u in 0..PA {
                    let c = S::splat(*vals.add(k + u));
                    let zp = z.add(*cols.add(k + u));
                    for t in 0..T {
                        a[u][t] = S::fma(c, S::load(zp.add(t * L)), a[u][t]);
                    }
                }
                k += PA;
            }
            while k < e {
                let c = S::splat(*vals.add(k));
                let zp = z.add(*cols.add(k));
                for t in 0..T {
                    a[0][t] = S::fma(c, S::load(zp.add(t * L)), a[0][t]);
                }
                k += 1;
            }
            for t in 0..T {
                let mut v = a[0][t];
                for u in 1..PA {
                    v = S::add(v, a[u][t]);
                }
                out[t][r] = v;
            }
        }
        for o in out.iter_mut() {
            S::transpose16(o);
        }
    }
}

/// Channel-vectorised combination for 16 consecutive pixels of a blocked basis buffer:
/// out[p] = bias + sum over the block's columns of coef * z[col, p] (broadcast).
#[inline(always)]
unsafe fn spmm_blocked16<S: Simd>(entries: &[(isize, u32)], coef: *const f32, bias: S::V, z: *const f32, out: &mut [[S::V; L]; 1]) {
    unsafe {
        let mut acc = [bias; L];
        for &(off, wi) in entries {
            let w = S::load(coef.add(wi as usize * L));
            let zp = z.offset(off);
            for p in 0..L {
                acc[p] = S::fma(S::splat(*zp.add(p * L)), w, acc[p]);
            }
        }
        out[0] = acc;
    }
}

/// Blocked combination of output blocks nb0..nb1 for `subs` sub-tiles of 16 pixels whose basis
/// maps start at `z` (pixel p0 of the plane), then the epilogue.
#[inline(always)]
unsafe fn combine_blocked<S: Simd>(st: &DecompStep, ctx: &Ctx, z: *const f32, p0: usize, subs: usize, nb0: usize, nb1: usize) {
    unsafe {
        let mut out = [[S::zero(); L]; 1];
        for nb in nb0..nb1 {
            let bias = S::load(st.bias.ptr().add(nb * L));
            for sub in 0..subs {
                if p0 + sub * L >= st.ptot {
                    break;
                }
                spmm_blocked16::<S>(&st.bentries[nb], st.bcoef.ptr(), bias, z.add(sub * L * L), &mut out);
                epilogue::<S, 1>(st, ctx, &out, nb, p0 + sub * L);
            }
        }
    }
}

/// Residuals, activation and store of 16-channel pixel vectors of output block `nb`, for the
/// valid pixels p0.. of a tile.
#[inline(always)]
unsafe fn epilogue<S: Simd, const T: usize>(st: &DecompStep, ctx: &Ctx, out: &[[S::V; L]; T], nb: usize, p0: usize) {
    unsafe {
        let act = ActV::<S>::new(st.act);
        let yb = ctx.ptr(st.y);
        let nres = st.res.len();
        let rb: [*const f32; MAX_RES] = from_fn(|k| {
            if k < nres {
                ctx.ptr(st.res[k]) as *const f32
            } else {
                std::ptr::null()
            }
        });
        let valid = st.ptot.saturating_sub(p0).min(T * L);
        let (mut img, mut oy, mut ox) = st.pix(p0);
        for i in 0..valid {
            let mut v = out[i / L][i % L];
            for k in 0..nres {
                let l = &st.rl[k];
                v = S::add(v, S::load(rb[k].add(img * l.img() + nb * l.plane() + l.at(oy, ox))));
            }
            S::store(yb.add(img * st.yl.img() + nb * st.yl.plane() + st.yl.at(oy, ox)), act.apply(v));
            ox += 1;
            if ox == st.yl.w {
                ox = 0;
                oy += 1;
                if oy == st.yl.h {
                    oy = 0;
                    img += 1;
                }
            }
        }
    }
}

/// Input offsets (channel block 0) of the receptive fields of the 16 output pixels from p0.
#[inline(always)]
unsafe fn pixel_offsets(st: &DecompStep, p0: usize) -> [isize; L] {
    let (mut img, mut oy, mut ox) = st.pix(p0);
    let last = st.ptot - 1;
    let mut offs = [0isize; L];
    for (i, o) in offs.iter_mut().enumerate() {
        if p0 + i > last {
            *o = st.x_off(st.pix(last));
            continue;
        }
        *o = st.x_off((img, oy, ox));
        ox += 1;
        if ox == st.yl.w {
            ox = 0;
            oy += 1;
            if oy == st.yl.h {
                oy = 0;
                img += 1;
            }
        }
    }
    offs
}

#[inline(always)]
unsafe fn fused_tile_g<S: Simd>(st: &DecompStep, ctx: &Ctx, tile: usize, tid: usize) {
    unsafe {
        if st.blocked {
            // stage 1 into the thread's tile buffer [live cb][basis][tile pixels][16], then combine
            let xb = ctx.ptr(st.x) as *const f32;
            let z = st.scratch_ptr(ctx, tid);
            let p0 = tile * st.t * L;
            let plane = st.xl.plane() as isize;
            for sub in 0..st.t {
                if p0 + sub * L >= st.ptot {
                    break;
                }
                let offs = pixel_offsets(st, p0 + sub * L);
                for (i, &cb) in st.live_cbs.iter().enumerate() {
                    let xs: [*const f32; L] = from_fn(|p| xb.offset(offs[p] + cb as isize * plane));
                    basis_maps::<S>(st, &xs, z.add((i * st.dl * st.zplane + sub * L) * L), st.zplane);
                }
            }
            combine_blocked::<S>(st, ctx, z, p0, st.t, 0, st.nbo);
            return;
        }
        match st.t {
            4 => fused_tile_t::<S, 4, 1>(st, ctx, tile, tid),
            2 => fused_tile_t::<S, 2, 2>(st, ctx, tile, tid),
            _ => fused_tile_t::<S, 1, 4>(st, ctx, tile, tid),
        }
    }
}

#[inline(always)]
unsafe fn fused_tile_t<S: Simd, const T: usize, const PA: usize>(st: &DecompStep, ctx: &Ctx, tile: usize, tid: usize) {
    unsafe {
        let xb = ctx.ptr(st.x) as *const f32;
        let z = st.scratch_ptr(ctx, tid);
        let zb = z.add(st.ncols * T * L);
        let p0 = tile * T * L;
        let plane = st.xl.plane() as isize;
        for sub in 0..T {
            let offs = pixel_offsets(st, p0 + sub * L);
            for &cb in &st.live_cbs {
                let xs: [*const f32; L] = from_fn(|p| xb.offset(offs[p] + cb as isize * plane));
                stage1_block::<S>(st, &xs, cb, zb, z, T * L, sub * L);
            }
        }
        let mut out = [[S::zero(); L]; T];
        for nb in 0..st.nbo {
            spmm16::<S, T, PA>(&st.rows, nb * L, st.bias.ptr().add(nb * L), z, &mut out);
            epilogue::<S, T>(st, ctx, &out, nb, p0);
        }
    }
}

#[inline(always)]
unsafe fn bf_stage1_g<S: Simd>(st: &DecompStep, ctx: &Ctx, sub: usize, tid: usize) {
    unsafe {
        let xb = ctx.ptr(st.x) as *const f32;
        let z = st.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
        if st.blocked {
            let plane = st.xl.plane() as isize;
            let offs = pixel_offsets(st, sub * L);
            for (i, &cb) in st.live_cbs.iter().enumerate() {
                let xs: [*const f32; L] = from_fn(|p| xb.offset(offs[p] + cb as isize * plane));
                basis_maps::<S>(st, &xs, z.add((i * st.dl * st.zplane + sub * L) * L), st.zplane);
            }
            return;
        }
        let zb = st.scratch_ptr(ctx, tid);
        let plane = st.xl.plane() as isize;
        let offs = pixel_offsets(st, sub * L);
        for &cb in &st.live_cbs {
            let xs: [*const f32; L] = from_fn(|p| xb.offset(offs[p] + cb as isize * plane));
            stage1_block::<S>(st, &xs, cb, zb, z, st.ppad, sub * L);
        }
    }
}

#[inline(always)]
unsafe fn bf_stage2_g<S: Simd>(st: &DecompStep, ctx: &Ctx, tile: usize, nb0: usize, nb1: usize) {
    unsafe {
        let z = st.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v)) as *const f32;
        let p0 = tile * 4 * L;
        if st.blocked {
            combine_blocked::<S>(st, ctx, z.add(p0 * L), p0, 4, nb0, nb1);
            return;
        }
        let mut out = [[S::zero(); L]; 4];
        for nb in nb0..nb1 {
            spmm16::<S, 4, 1>(&st.rows, nb * L, st.bias.ptr().add(nb * L), z.add(p0), &mut out);
            epilogue::<S, 4>(st, ctx, &out, nb, p0);
        }
    }
}

#[inline(always)]
unsafe fn mf_mix_g<S: Simd>(st: &DecompStep, ctx: &Ctx, tile: usize, tid: usize) {
    unsafe {
        let xb = ctx.ptr(st.x) as *const f32;
        let ub = st.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
        let xp = st.scratch_ptr(ctx, tid);
        let (xl, ul) = (&st.xl, &st.ul);
        let pin = st.batch * xl.h * xl.w;
        let p0 = tile * L;
        let valid = (pin - p0).min(L);
        let coords: [(usize, usize, usize); L] = from_fn(|i| {
            let p = (p0 + i).min(pin - 1);
            (p / (xl.h * xl.w), p % (xl.h * xl.w) / xl.w, p % xl.w)
        });
        // transpose the tile's input pixels into channel rows of xp
        for &cb in &st.live_in_cbs {
            let mut v: [S::V; L] = from_fn(|i| {
                let (img, y, x) = coords[i];
                S::load(xb.add(img * xl.img() + cb * xl.plane() + xl.at(y, x)))
            });
            S::transpose16(&mut v);
            for (lane, vec) in v.iter().enumerate() {
                let r = *st.xcol.get_unchecked(cb * L + lane);
                if r >= 0 {
                    S::store(xp.add(r as usize * L), *vec);
                }
            }
        }
        let mut out = [[S::zero(); L]; 1];
        let dl = st.dl.max(1);
        for nb in 0..st.nbo {
            for &jj in &st.live_js[nb] {
                spmm16::<S, 1, 4>(&st.urows, (nb * dl + jj) * L, st.zeros.ptr(), xp, &mut out);
                let blk = ub.add((nb * dl + jj) * ul.plane());
                for (i, &(img, y, x)) in coords.iter().enumerate().take(valid) {
                    S::store(blk.add(img * ul.img() + ul.at(y, x)), out[0][i]);
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn mf_conv_g<S: Simd>(st: &DecompStep, ctx: &Ctx, nb: usize, t0: usize, t1: usize) {
    let sx = if st.mf_tile.2 > 1 { st.stride[1] } else { 1 };
    unsafe {
        match (st.mf_tile.1, st.mf_tile.2, sx) {
            (3, 8, 1) => mf_conv_t::<S, 3, 8, 1>(st, ctx, nb, t0, t1),
            (3, 8, 2) => mf_conv_t::<S, 3, 8, 2>(st, ctx, nb, t0, t1),
            (6, 4, 1) => mf_conv_t::<S, 6, 4, 1>(st, ctx, nb, t0, t1),
            (6, 4, 2) => mf_conv_t::<S, 6, 4, 2>(st, ctx, nb, t0, t1),
            (12, 2, 1) => mf_conv_t::<S, 12, 2, 1>(st, ctx, nb, t0, t1),
            (12, 2, 2) => mf_conv_t::<S, 12, 2, 2>(st, ctx, nb, t0, t1),
            (4, 4, 1) => mf_conv_t::<S, 4, 4, 1>(st, ctx, nb, t0, t1),
            (4, 4, 2) => mf_conv_t::<S, 4, 4, 2>(st, ctx, nb, t0, t1),
            _ => mf_conv_t::<S, 16, 1, 1>(st, ctx, nb, t0, t1),
        }
    }
}

/// Mix-first second half: y[nb] = bias + sum over live (j, tap) of b_j[tap] * U[nb, j] shifted.
#[inline(always)]
unsafe fn mf_conv_t<S: Simd, const R: usize, const QC: usize, const SX: usize>(
    st: &DecompStep,
    ctx: &Ctx,
    nb: usize,
    t0: usize,
    t1: usize,
) {
    unsafe {
        let ub = st.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v)) as *const f32;
        let yb = ctx.ptr(st.y);
        let (ul, yl) = (&st.ul, &st.yl);
        let dl = st.dl.max(1);
        let (u_img, ws) = (ul.img(), ul.ws() as isize);
        let (sy, sx) = (st.stride[0] as isize, st.stride[1] as isize);
        let act = ActV::<S>::new(st.act);
        let nres = st.res.len();
        let rb: [*const f32; MAX_RES] = from_fn(|k| {
            if k < nres {
                ctx.ptr(st.res[k]) as *const f32
            } else {
                std::ptr::null()
            }
        });
        let bias = S::load(st.bias.ptr().add(nb * L));
        let taps = &st.mf_taps[nb][..];
        let blk = ub.add(nb * dl * ul.plane());
        for tile in t0..t1 {
            let segs = &st.mf_segs[tile * R..tile * R + R];
            let xs: [*const f32; R] = from_fn(|r| {
                let s = segs[r];
                blk.offset((s.img as usize * u_img) as isize + (s.oy as isize * sy * ws + s.ox as isize * sx) * L as isize)
            });
            let mut acc = [[bias; QC]; R];
            for &(off, bval) in taps {
                let bv = S::splat(bval);
                for r in 0..R {
                    for q in 0..QC {
                        acc[r][q] = S::fma(S::load(xs[r].offset(off).add(q * SX * L)), bv, acc[r][q]);
                    }
                }
            }
            let mut buf = std::mem::MaybeUninit::<[[S::V; QC]; R]>::uninit();
            let bp = buf.as_mut_ptr() as *mut S::V;
            for r in 0..R {
                for q in 0..QC {
                    bp.add(r * QC + q).write(acc[r][q]);
                }
            }
            for (r, s) in segs.iter().enumerate() {
                if s.skip as usize >= QC {
                    continue;
                }
                let (img, oy, ox) = (s.img as usize, s.oy as usize, s.ox as usize);
                let yp = yb.add(img * yl.img() + nb * yl.plane() + yl.at(oy, ox));
                let rp: [*const f32; MAX_RES] = from_fn(|k| {
                    if k < nres {
                        let l = &st.rl[k];
                        rb[k].add(img * l.img() + nb * l.plane() + l.at(oy, ox))
                    } else {
                        std::ptr::null()
                    }
                });
                for q in s.skip as usize..QC {
                    let mut v = *bp.add(r * QC + q);
                    for k in 0..nres {
                        v = S::add(v, S::load(rp[k].add(q * L)));
                    }
                    S::store(yp.add(q * L), act.apply(v));
                }
            }
        }
    }
}
