//! The planar backend, used for models whose convolutions are mostly decomposed.
//!
//! Maps are stored NCHW with a zero border (one plane per channel), and every kernel is
//! vectorised over 16 pixels. That is the natural orientation of PENNI inference: the basis
//! convolution Z[c, j] = X[c] * b_j reads shifted pixel vectors of one channel and broadcasts
//! basis values, and the combination Y[n] = sum A[n, c, j] Z[c, j] is a sparse matrix times
//! pixel rows. Nothing is transposed and no lane is spent on a missing channel, which matters
//! for the narrow layers a compressed model is made of.
//!
//! Planes are stored without borders. A convolution reads, for each output vector and kernel
//! tap, 16 input values with a lane mask that drops positions falling outside the map (AVX-512
//! masked loads never touch masked-off lanes). With stride 1 and equal input and output width
//! a vector covers 16 consecutive pixels, across rows, so even a 4x4 map fills a whole vector;
//! other convolutions go row by row (stride 2 with an even-lane permute, larger strides with a
//! gather).

use std::array::from_fn;

use penni_model::{Conv2d, Node, Pool2d};

use crate::arena::AVec;
use crate::conv::MAX_RES;
use crate::error::EngineError;
use crate::plan::{Act, ActV, Ctx, Strategy, ValId};
use crate::simd::{L, Simd, isa_dispatch};

/// Planar map storage: per image `c` planes of h*w floats (rounded up to 16 for alignment).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PLay {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl PLay {
    pub fn hw(&self) -> usize {
        self.h * self.w
    }
    pub fn plane(&self) -> usize {
        self.hw().div_ceil(L) * L
    }
    pub fn img(&self) -> usize {
        self.c * self.plane()
    }
    pub fn checked_img(&self) -> Option<usize> {
        self.h.checked_mul(self.w)?.div_ceil(L).checked_mul(L)?.checked_mul(self.c)
    }
}

fn prefix(n: usize) -> u16 {
    if n >= L { u16::MAX } else { (1u16 << n) - 1 }
}

/// How the output vectors of a convolution read its input: per output vector of one image,
/// its offset and store mask in an output plane, and per (vector, tap) the input offset and
/// lane mask (32 bits for the stride-2 double load) or, for other strides, 16 gathered indices.
struct Access {
    /// Vectors per image.
    nvec: usize,
    /// 1: one masked load, 2: two masked loads and the even lanes, 0: gather.
    kind: usize,
    ntaps: usize,
    taps: Vec<(isize, u32)>,
    gather: Vec<[i32; L]>,
    outs: Vec<(usize, u16)>,
}

impl Access {
    fn new(xl: &PLay, yl: &PLay, c: &Conv2d) -> Access {
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
        // convolution, with gathers for a strided one whose rows are too short to fill vectors
        let gather_flat = c.stride != [1, 1] && yl.w < L;
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
        let (mut taps, mut gather, mut outs) = (Vec::new(), Vec::new(), Vec::new());
        // (output row, first column, lanes) of each vector, or whole-plane runs when flat
        let mut vecs: Vec<(usize, usize, usize)> = Vec::new();
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

    /// How vectors are laid out, for describe(): "" (16 consecutive pixels, contiguous loads),
    /// " rows" (row by row) or " gather".
    fn mode(&self) -> &'static str {
        if self.kind == 0 {
            " gather"
        } else if self.outs.len() > 1 && self.outs[1].0 - self.outs[0].0 != L {
            " rows"
        } else {
            ""
        }
    }
}

/// load_in for the same vector and tap of two channel planes (one lookup).
#[inline(always)]
unsafe fn load_in2<S: Simd, const K: usize>(a: &Access, base: *const f32, base2: *const f32, vl: usize, t: usize) -> (S::V, S::V) {
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
unsafe fn load_in<S: Simd, const K: usize>(a: &Access, base: *const f32, vl: usize, t: usize) -> S::V {
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
/// the activation.
#[derive(Clone)]
struct Epi {
    y: ValId,
    yl: PLay,
    res: Vec<ValId>,
    act: Act,
}

/// Vectors per tile of the convolution kernels.
const TILE: usize = 4;

/// The vectors of one tile: image and index within the image of each (the last one repeated
/// past the end), and how many are real.
#[derive(Clone, Copy)]
struct Tile {
    img: [usize; TILE],
    vl: [usize; TILE],
    cnt: usize,
}

fn tile_of(nvec: usize, total: usize, tile: usize) -> Tile {
    let g: [usize; TILE] = from_fn(|t| (tile * TILE + t).min(total - 1));
    Tile {
        img: from_fn(|t| g[t] / nvec),
        vl: from_fn(|t| g[t] % nvec),
        cnt: (total - tile * TILE).min(TILE),
    }
}

/// Output and residual pointers of the vectors of one tile (channel 0), so that storing a
/// vector of channel n is the residual loads, the activation and one (masked) store.
struct TileOut<S: Simd> {
    y: [*mut f32; TILE],
    r: [[*const f32; TILE]; MAX_RES],
    nres: usize,
    plane: usize,
    store: [u16; TILE],
    act: ActV<S>,
}

impl Epi {
    #[inline(always)]
    unsafe fn tile<S: Simd>(&self, ctx: &Ctx, a: &Access, t: &Tile) -> TileOut<S> {
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
            }
        }
    }
}

impl<S: Simd> TileOut<S> {
    /// Adds the residuals, applies the activation and stores vector `t` of output channel `n`.
    #[inline(always)]
    unsafe fn put(&self, n: usize, t: usize, mut x: S::V) {
        unsafe {
            let off = n * self.plane;
            for k in 0..self.nres {
                x = S::add(x, S::load(self.r[k][t].add(off)));
            }
            let x = self.act.apply(x);
            if self.store[t] == u16::MAX {
                S::store(self.y[t].add(off), x);
            } else {
                S::store_mask(self.y[t].add(off), self.store[t], x);
            }
        }
    }
}

/// CSR rows; `cols` are offsets (floats) of the column's pixel row in its buffer.
struct Csr {
    ptr: Vec<usize>,
    cols: Vec<usize>,
    vals: Vec<f32>,
}

impl Csr {
    fn new() -> Csr {
        Csr {
            ptr: vec![0],
            cols: vec![],
            vals: vec![],
        }
    }
    fn floats(&self) -> usize {
        self.ptr.len() * 2 + self.cols.len() * 2 + self.vals.len()
    }
}

/// One sparse row times T pixel vectors: bias + sum of coef * z[col + t*16], in four
/// independent chains whatever T is.
#[inline(always)]
unsafe fn spmm_row<S: Simd, const T: usize>(m: &Csr, row: usize, bias: f32, z: *const f32) -> [S::V; T] {
    unsafe {
        let (s, e) = (*m.ptr.get_unchecked(row), *m.ptr.get_unchecked(row + 1));
        let cols = m.cols.as_ptr();
        let vals = m.vals.as_ptr();
        const P: usize = 4;
        let mut a = [[S::zero(); T]; P];
        a[0] = [S::splat(bias); T];
        let mut k = s;
        let step = P.div_ceil(T).max(1);
        while k + step <= e {
            for u in 0..step {
                let c = S::splat(*vals.add(k + u));
                let zp = z.add(*cols.add(k + u));
                for t in 0..T {
                    a[u][t] = S::fma(c, S::load(zp.add(t * L)), a[u][t]);
                }
            }
            k += step;
        }
        while k < e {
            let c = S::splat(*vals.add(k));
            let zp = z.add(*cols.add(k));
            for t in 0..T {
                a[0][t] = S::fma(c, S::load(zp.add(t * L)), a[0][t]);
            }
            k += 1;
        }
        from_fn(|t| {
            let mut v = a[0][t];
            for u in 1..step {
                v = S::add(v, a[u][t]);
            }
            v
        })
    }
}

/// Estimated cycles per output vector of basis-first, mix-first and a rebuilt dense kernel.
pub(crate) fn costs(node: &Node, c: &Conv2d, xl_hw: (usize, usize), yl_hw: (usize, usize)) -> Result<(f64, f64, f64), EngineError> {
    let a = &node.param("coefficients")?.data;
    let d = a.len() / (c.out_channels * (c.in_channels / c.groups)).max(1);
    let kk = (c.kernel[0] * c.kernel[1]) as f64;
    let cg = c.in_channels / c.groups;
    let mut live_c = vec![false; c.in_channels];
    let mut live_j = vec![false; d];
    let mut live_nj = vec![false; c.out_channels * d];
    let mut nnz = 0usize;
    for (i, v) in a.iter().enumerate() {
        if *v != 0.0 {
            let (row, j) = (i / d, i % d);
            let (n, cl) = (row / cg, row % cg);
            live_c[n / (c.out_channels / c.groups) * cg + cl] = true;
            live_j[j] = true;
            live_nj[n * d + j] = true;
            nnz += 1;
        }
    }
    let lc = live_c.iter().filter(|&&l| l).count() as f64;
    let dl = live_j.iter().filter(|&&l| l).count() as f64;
    let nu = live_nj.iter().filter(|&&l| l).count() as f64;
    let rin = (xl_hw.0 * xl_hw.1) as f64 / (yl_hw.0 * yl_hw.1) as f64;
    let n = c.out_channels as f64;
    // weights fitted to measured kernel times (cycles per output vector on AVX-512)
    let bf = 0.8 * lc * dl * kk + 1.5 * nnz as f64 + 4.0 * n;
    let mf = 2.5 * (nu * kk + rin * (nnz as f64 + nu)) + 4.0 * n;
    let dense = 0.75 * n * cg as f64 * kk + 4.0 * n;
    Ok((bf, mf, dense))
}

/// A decomposed convolution on planar maps.
pub(crate) struct PDecomp {
    x: ValId,
    xl: PLay,
    epi: Epi,
    strategy: Strategy,
    kernel: [usize; 2],
    stride: [usize; 2],
    batch: usize,
    threads: usize,
    n_out: usize,
    dl: usize,
    nnz: usize,
    pub macs: u64,
    acc: Access,
    bias: Vec<f32>,
    // basis-first / fused
    chunks: Vec<(usize, usize)>,
    chunk_bases: Vec<Vec<f32>>,
    live_c: Vec<usize>,
    /// c*dl + jj -> column or -1.
    colmap: Vec<i32>,
    ncols: usize,
    rows: Csr,
    zstride: usize,
    // mix-first
    urows: Csr,
    /// Per output channel: (offset of its U row for a live basis, tap, basis value at the tap).
    mf_entries: Vec<Vec<(usize, u32, f32)>>,
    nu: usize,
    // scratch
    per_thread: usize,
    big_floats: usize,
    scratch: Option<ValId>,
    big: Option<ValId>,
}

impl PDecomp {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: &Node,
        c: &Conv2d,
        scale: &[f64],
        shift: &[f64],
        strategy: Strategy,
        x: ValId,
        xl: PLay,
        y: ValId,
        yl: PLay,
        res: Vec<ValId>,
        act: Act,
        batch: usize,
        threads: usize,
    ) -> Result<PDecomp, EngineError> {
        if res.len() > MAX_RES {
            return Err(EngineError::Unsupported {
                node: node.name.clone(),
                message: format!("more than {MAX_RES} residual inputs"),
            });
        }
        let a = &node.param("coefficients")?.data;
        let bases = &node.param("bases")?.data;
        let b = node.params.get("bias").map(|t| &t.data);
        let (n_out, n_in) = (c.out_channels, c.in_channels);
        let (cg, og) = (n_in / c.groups, n_out / c.groups);
        let kk = c.kernel[0] * c.kernel[1];
        let d = bases.len() / kk.max(1);
        let coef = |n: usize, ci: usize, j: usize| -> f32 {
            if ci / cg != n / og {
                return 0.0;
            }
            (a[(n * cg + ci % cg) * d + j] as f64 * scale[n]) as f32
        };
        let bias: Vec<f32> = (0..n_out)
            .map(|n| (b.map_or(0.0, |b| b[n] as f64) * scale[n] + shift[n]) as f32)
            .collect();
        let mut live_j = vec![false; d];
        let mut nnz = 0;
        for (i, v) in a.iter().enumerate() {
            if *v != 0.0 {
                live_j[i % d] = true;
                nnz += 1;
            }
        }
        let jl: Vec<usize> = (0..d).filter(|&j| live_j[j]).collect();
        let dl = jl.len();
        let acc = Access::new(&xl, &yl, c);
        let mut st = PDecomp {
            x,
            xl,
            epi: Epi { y, yl, res, act },
            strategy,
            kernel: c.kernel,
            stride: c.stride,
            batch,
            threads,
            n_out,
            dl,
            nnz,
            macs: 0,
            acc,
            bias,
            chunks: vec![],
            chunk_bases: vec![],
            live_c: vec![],
            colmap: vec![],
            ncols: 0,
            rows: Csr::new(),
            zstride: 0,
            urows: Csr::new(),
            mf_entries: vec![],
            nu: 0,
            per_thread: 0,
            big_floats: 0,
            scratch: None,
            big: None,
        };
        let p_out = (batch * yl.h * yl.w) as u64;
        let nvec = st.acc.nvec * batch;
        let nvpad = nvec.div_ceil(TILE) * TILE;
        if strategy == Strategy::MixFirst {
            // U rows: live (n, jj), computed over the input planes
            let mut urow_of = vec![usize::MAX; n_out * dl.max(1)];
            for n in 0..n_out {
                for (jj, &j) in jl.iter().enumerate() {
                    let start = st.urows.cols.len();
                    let g = n / og;
                    for ci in g * cg..(g + 1) * cg {
                        let v = coef(n, ci, j);
                        if v != 0.0 {
                            st.urows.cols.push(ci * xl.plane());
                            st.urows.vals.push(v);
                        }
                    }
                    if st.urows.cols.len() > start {
                        urow_of[n * dl + jj] = st.nu;
                        st.nu += 1;
                        st.urows.ptr.push(st.urows.cols.len());
                    }
                }
            }
            st.mf_entries = (0..n_out)
                .map(|n| {
                    let mut e = Vec::new();
                    for jj in 0..dl {
                        if urow_of[n * dl + jj] != usize::MAX {
                            for t in 0..kk {
                                e.push((urow_of[n * dl + jj] * xl.plane(), t as u32, bases[jl[jj] * kk + t]));
                            }
                        }
                    }
                    e
                })
                .collect();
            st.big_floats = batch
                .checked_mul(st.nu)
                .and_then(|v| v.checked_mul(xl.plane()))
                .ok_or(EngineError::TooLarge(u128::MAX))?;
            st.per_thread = L;
            let p_in = (batch * xl.h * xl.w) as u64;
            st.macs = nnz as u64 * p_in + st.nu as u64 * kk as u64 * p_out;
        } else {
            let nchunks = dl.div_ceil(8);
            let mut start = 0;
            for i in 0..nchunks {
                let cnt = (dl - start) / (nchunks - i);
                let mut vals = Vec::with_capacity(kk * cnt);
                for t in 0..kk {
                    for jj in start..start + cnt {
                        vals.push(bases[jl[jj] * kk + t]);
                    }
                }
                st.chunks.push((start, cnt));
                st.chunk_bases.push(vals);
                start += cnt;
            }
            let mut live_col = vec![false; n_in * dl];
            for n in 0..n_out {
                let g = n / og;
                for ci in g * cg..(g + 1) * cg {
                    for (jj, &j) in jl.iter().enumerate() {
                        if coef(n, ci, j) != 0.0 {
                            live_col[ci * dl + jj] = true;
                        }
                    }
                }
            }
            st.colmap = vec![-1; n_in * dl];
            for ci in 0..n_in {
                for jj in 0..dl {
                    if live_col[ci * dl + jj] {
                        st.colmap[ci * dl + jj] = st.ncols as i32;
                        st.ncols += 1;
                    }
                }
            }
            st.live_c = (0..n_in).filter(|&ci| (0..dl).any(|jj| live_col[ci * dl + jj])).collect();
            let fused = strategy == Strategy::Fused;
            st.zstride = if fused { TILE * L } else { nvpad * L };
            for n in 0..n_out {
                let g = n / og;
                for ci in g * cg..(g + 1) * cg {
                    for (jj, &j) in jl.iter().enumerate() {
                        let v = coef(n, ci, j);
                        if v != 0.0 {
                            st.rows.cols.push(st.colmap[ci * dl + jj] as usize * st.zstride);
                            st.rows.vals.push(v);
                        }
                    }
                }
                st.rows.ptr.push(st.rows.cols.len());
            }
            if fused {
                st.per_thread = st.ncols * TILE * L;
            } else {
                st.per_thread = L;
                st.big_floats = st.ncols.checked_mul(nvpad * L).ok_or(EngineError::TooLarge(u128::MAX))?;
            }
            st.macs = p_out * (st.live_c.len() * dl * kk) as u64 + nnz as u64 * p_out;
        }
        Ok(st)
    }

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
        let s = match self.strategy {
            Strategy::MixFirst => "mix-first",
            Strategy::Fused => "fused",
            _ => "basis-first",
        };
        format!(
            "penni {}x{} s{} {}->{} planar {s} d{} nnz{} cols{}{}",
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.xl.c,
            self.n_out,
            self.dl,
            self.nnz,
            self.ncols.max(self.nu),
            self.acc.mode()
        )
    }

    pub fn weight_floats(&self) -> usize {
        self.bias.len()
            + self.rows.floats()
            + self.urows.floats()
            + self.chunk_bases.iter().map(Vec::len).sum::<usize>()
            + self.mf_entries.iter().map(|e| e.len() * 4).sum::<usize>()
    }

    fn scratch_ptr(&self, ctx: &Ctx, tid: usize) -> *mut f32 {
        let base = self.scratch.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
        base.wrapping_add(tid * self.per_thread.div_ceil(L) * L)
    }

    fn total(&self) -> usize {
        self.acc.nvec * self.batch
    }

    fn tile(&self, tile: usize) -> Tile {
        tile_of(self.acc.nvec, self.total(), tile)
    }

    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let tiles = self.total().div_ceil(TILE);
        // split the output channels too when there are few tiles
        let ngroups = (4 * self.threads).div_ceil(tiles).clamp(1, self.n_out.max(1));
        let nper = self.n_out.div_ceil(ngroups);
        match self.strategy {
            Strategy::MixFirst => {
                let per_img = self.xl.plane() / L;
                let chunks = per_img.div_ceil(TILE);
                ctx.par(self.batch * chunks, &|t, _| {
                    p_mix(ctx.isa, self, ctx, t / chunks, (t % chunks) * TILE, per_img)
                })?;
                ctx.par(tiles * ngroups, &|t, _| {
                    p_mfconv(
                        ctx.isa,
                        self,
                        ctx,
                        t / ngroups,
                        (t % ngroups) * nper,
                        ((t % ngroups + 1) * nper).min(self.n_out),
                    )
                })
            }
            Strategy::Fused => ctx.par(tiles, &|t, tid| p_fused(ctx.isa, self, ctx, t, tid)),
            _ => {
                // few tiles (a small map): split the input channels of stage 1 as well
                let nc = self.live_c.len();
                let parts = (2 * self.threads).div_ceil(tiles).clamp(1, (nc / 8).max(1));
                let cper = nc.div_ceil(parts);
                ctx.par(tiles * parts, &|t, _| {
                    let z = self.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
                    let (tile, p) = (t / parts, t % parts);
                    p_stage1(
                        ctx.isa,
                        self,
                        ctx,
                        tile,
                        z,
                        self.zstride,
                        tile * TILE * L,
                        p * cper,
                        ((p + 1) * cper).min(nc),
                    );
                })?;
                ctx.par(tiles * ngroups, &|t, _| {
                    let z = self.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
                    let (tile, g) = (t / ngroups, t % ngroups);
                    p_stage2(
                        ctx.isa,
                        self,
                        ctx,
                        tile,
                        z.wrapping_add(tile * TILE * L),
                        g * nper,
                        ((g + 1) * nper).min(self.n_out),
                    );
                })
            }
        }
    }
}

isa_dispatch!(fn p_stage1 => p_stage1_g(st: &PDecomp, ctx: &Ctx, tile: usize, z: *mut f32, zstride: usize, zoff: usize, c0: usize, c1: usize));
isa_dispatch!(fn p_stage2 => p_stage2_g(st: &PDecomp, ctx: &Ctx, tile: usize, z: *const f32, n0: usize, n1: usize));
isa_dispatch!(fn p_fused => p_fused_g(st: &PDecomp, ctx: &Ctx, tile: usize, tid: usize));
isa_dispatch!(fn p_mix => p_mix_g(st: &PDecomp, ctx: &Ctx, img: usize, v0: usize, per_img: usize));
isa_dispatch!(fn p_mfconv => p_mfconv_g(st: &PDecomp, ctx: &Ctx, tile: usize, n0: usize, n1: usize));

/// Stage 1 of one channel for TV vectors and D bases, stored to Z columns `cols` (-1: dead).
#[inline(always)]
unsafe fn basis_tv<S: Simd, const D: usize, const TV: usize, const K: usize>(
    a: &Access,
    xs: &[*const f32],
    vl: &[usize],
    b: *const f32,
    cols: &[isize; 8],
    z: *mut f32,
) {
    unsafe {
        let mut acc = [[S::zero(); D]; TV];
        let xp: [*const f32; TV] = from_fn(|v| xs[v]);
        let vv: [usize; TV] = from_fn(|v| vl[v]);
        for t in 0..a.ntaps {
            let bv: [S::V; D] = from_fn(|j| S::splat(*b.add(t * D + j)));
            for v in 0..TV {
                let x = load_in::<S, K>(a, xp[v], vv[v], t);
                for j in 0..D {
                    acc[v][j] = S::fma(x, bv[j], acc[v][j]);
                }
            }
        }
        for j in 0..D {
            if cols[j] >= 0 {
                for v in 0..TV {
                    S::store(z.offset(cols[j] + (v * L) as isize), acc[v][j]);
                }
            }
        }
    }
}

/// basis_tv for `cnt` vectors in groups of TV, 2 and 1.
#[inline(always)]
unsafe fn basis_n<S: Simd, const D: usize, const TV: usize, const K: usize>(
    a: &Access,
    cnt: usize,
    xs: &[*const f32; TILE],
    vl: &[usize; TILE],
    b: *const f32,
    cols: &[isize; 8],
    z: *mut f32,
) {
    unsafe {
        let mut v0 = 0;
        while v0 < cnt {
            let rem = cnt - v0;
            if rem >= TV {
                basis_tv::<S, D, TV, K>(a, &xs[v0..], &vl[v0..], b, cols, z.add(v0 * L));
                v0 += TV;
            } else if rem >= 2 && TV > 2 {
                basis_tv::<S, D, 2, K>(a, &xs[v0..], &vl[v0..], b, cols, z.add(v0 * L));
                v0 += 2;
            } else {
                basis_tv::<S, D, 1, K>(a, &xs[v0..], &vl[v0..], b, cols, z.add(v0 * L));
                v0 += 1;
            }
        }
    }
}

/// Basis maps of live channels c0..c1 (indices into the live list) for the vectors of `tile`,
/// into z (column stride `zstride`, pixel offset `zoff`).
#[inline(always)]
unsafe fn p_stage1_g<S: Simd>(st: &PDecomp, ctx: &Ctx, tile: usize, z: *mut f32, zstride: usize, zoff: usize, c0: usize, c1: usize) {
    unsafe {
        match st.acc.kind {
            1 => stage1_k::<S, 1>(st, ctx, tile, z, zstride, zoff, c0, c1),
            2 => stage1_k::<S, 2>(st, ctx, tile, z, zstride, zoff, c0, c1),
            _ => stage1_k::<S, 0>(st, ctx, tile, z, zstride, zoff, c0, c1),
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn stage1_k<S: Simd, const K: usize>(
    st: &PDecomp,
    ctx: &Ctx,
    tile: usize,
    z: *mut f32,
    zstride: usize,
    zoff: usize,
    c0: usize,
    c1: usize,
) {
    unsafe {
        let tl = st.tile(tile);
        let xb = ctx.ptr(st.x) as *const f32;
        let (xl, dl, a) = (&st.xl, st.dl, &st.acc);
        let z = z.add(zoff);
        let cols_of = |ci: usize, start: usize, n: usize| -> [isize; 8] {
            from_fn(|j| {
                if j < n {
                    let col = st.colmap[ci * dl + start + j];
                    if col >= 0 { col as isize * zstride as isize } else { -1 }
                } else {
                    -1
                }
            })
        };
        let live = &st.live_c[c0..c1];
        let (cnt, vl) = (tl.cnt, &tl.vl);
        let mut i = 0;
        while i < live.len() {
            let ci = live[i];
            let xs: [*const f32; TILE] = from_fn(|t| xb.add(tl.img[t] * xl.img() + ci * xl.plane()));
            // two channels at a time share every (vector, tap) offset and mask lookup
            if i + 1 < live.len() && st.chunks.len() == 1 && st.chunks[0].1 <= 5 {
                let cj = live[i + 1];
                let xs2: [*const f32; TILE] = from_fn(|t| xb.add(tl.img[t] * xl.img() + cj * xl.plane()));
                let (start, n) = st.chunks[0];
                let b = st.chunk_bases[0].as_ptr();
                let (c1s, c2s) = (cols_of(ci, start, n), cols_of(cj, start, n));
                match n {
                    1 => basis2_n::<S, 1, 4, K>(a, cnt, &xs, &xs2, vl, b, &c1s, &c2s, z),
                    2 => basis2_n::<S, 2, 4, K>(a, cnt, &xs, &xs2, vl, b, &c1s, &c2s, z),
                    3 => basis2_n::<S, 3, 4, K>(a, cnt, &xs, &xs2, vl, b, &c1s, &c2s, z),
                    4 => basis2_n::<S, 4, 2, K>(a, cnt, &xs, &xs2, vl, b, &c1s, &c2s, z),
                    _ => basis2_n::<S, 5, 2, K>(a, cnt, &xs, &xs2, vl, b, &c1s, &c2s, z),
                }
                i += 2;
                continue;
            }
            for (k, &(start, n)) in st.chunks.iter().enumerate() {
                let b = st.chunk_bases[k].as_ptr();
                let cols = cols_of(ci, start, n);
                match n {
                    1 => basis_n::<S, 1, 4, K>(a, cnt, &xs, vl, b, &cols, z),
                    2 => basis_n::<S, 2, 4, K>(a, cnt, &xs, vl, b, &cols, z),
                    3 => basis_n::<S, 3, 4, K>(a, cnt, &xs, vl, b, &cols, z),
                    4 => basis_n::<S, 4, 4, K>(a, cnt, &xs, vl, b, &cols, z),
                    5 => basis_n::<S, 5, 4, K>(a, cnt, &xs, vl, b, &cols, z),
                    6 => basis_n::<S, 6, 4, K>(a, cnt, &xs, vl, b, &cols, z),
                    7 => basis_n::<S, 7, 2, K>(a, cnt, &xs, vl, b, &cols, z),
                    _ => basis_n::<S, 8, 2, K>(a, cnt, &xs, vl, b, &cols, z),
                }
            }
            i += 1;
        }
    }
}

/// basis_tv for two channels at once (shared offsets and masks), TV vectors and D bases.
#[inline(always)]
unsafe fn basis2_tv<S: Simd, const D: usize, const TV: usize, const K: usize>(
    a: &Access,
    xs: &[*const f32],
    xs2: &[*const f32],
    vl: &[usize],
    b: *const f32,
    cols: &[isize; 8],
    cols2: &[isize; 8],
    z: *mut f32,
) {
    unsafe {
        let mut acc = [[[S::zero(); D]; TV]; 2];
        let xp: [*const f32; TV] = from_fn(|v| xs[v]);
        let xp2: [*const f32; TV] = from_fn(|v| xs2[v]);
        let vv: [usize; TV] = from_fn(|v| vl[v]);
        for t in 0..a.ntaps {
            let bv: [S::V; D] = from_fn(|j| S::splat(*b.add(t * D + j)));
            for v in 0..TV {
                let (x, x2) = load_in2::<S, K>(a, xp[v], xp2[v], vv[v], t);
                for j in 0..D {
                    acc[0][v][j] = S::fma(x, bv[j], acc[0][v][j]);
                    acc[1][v][j] = S::fma(x2, bv[j], acc[1][v][j]);
                }
            }
        }
        for j in 0..D {
            for v in 0..TV {
                if cols[j] >= 0 {
                    S::store(z.offset(cols[j] + (v * L) as isize), acc[0][v][j]);
                }
                if cols2[j] >= 0 {
                    S::store(z.offset(cols2[j] + (v * L) as isize), acc[1][v][j]);
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn basis2_n<S: Simd, const D: usize, const TV: usize, const K: usize>(
    a: &Access,
    cnt: usize,
    xs: &[*const f32; TILE],
    xs2: &[*const f32; TILE],
    vl: &[usize; TILE],
    b: *const f32,
    cols: &[isize; 8],
    cols2: &[isize; 8],
    z: *mut f32,
) {
    unsafe {
        let mut v0 = 0;
        while v0 < cnt {
            let rem = cnt - v0;
            if rem >= TV {
                basis2_tv::<S, D, TV, K>(a, &xs[v0..], &xs2[v0..], &vl[v0..], b, cols, cols2, z.add(v0 * L));
                v0 += TV;
            } else if rem >= 2 && TV > 2 {
                basis2_tv::<S, D, 2, K>(a, &xs[v0..], &xs2[v0..], &vl[v0..], b, cols, cols2, z.add(v0 * L));
                v0 += 2;
            } else {
                basis2_tv::<S, D, 1, K>(a, &xs[v0..], &xs2[v0..], &vl[v0..], b, cols, cols2, z.add(v0 * L));
                v0 += 1;
            }
        }
    }
}

/// Stage 2 for output channels n0..n1 of one tile, from Z at `z` (the tile's first pixel).
#[inline(always)]
unsafe fn p_stage2_g<S: Simd>(st: &PDecomp, ctx: &Ctx, tile: usize, z: *const f32, n0: usize, n1: usize) {
    unsafe {
        let tl = st.tile(tile);
        let out = st.epi.tile::<S>(ctx, &st.acc, &tl);
        for n in n0..n1 {
            match tl.cnt {
                4 | 3 => {
                    let r = spmm_row::<S, 4>(&st.rows, n, st.bias[n], z);
                    for t in 0..tl.cnt {
                        out.put(n, t, r[t]);
                    }
                }
                2 => {
                    let r = spmm_row::<S, 2>(&st.rows, n, st.bias[n], z);
                    out.put(n, 0, r[0]);
                    out.put(n, 1, r[1]);
                }
                _ => {
                    let r = spmm_row::<S, 1>(&st.rows, n, st.bias[n], z);
                    out.put(n, 0, r[0]);
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn p_fused_g<S: Simd>(st: &PDecomp, ctx: &Ctx, tile: usize, tid: usize) {
    unsafe {
        let z = st.scratch_ptr(ctx, tid);
        p_stage1_g::<S>(st, ctx, tile, z, st.zstride, 0, 0, st.live_c.len());
        p_stage2_g::<S>(st, ctx, tile, z, 0, st.n_out);
    }
}

/// Mix-first, first half: U rows for TILE vectors of image `img`'s input planes.
#[inline(always)]
unsafe fn p_mix_g<S: Simd>(st: &PDecomp, ctx: &Ctx, img: usize, v0: usize, per_img: usize) {
    unsafe {
        let xl = &st.xl;
        let x = (ctx.ptr(st.x) as *const f32).add(img * xl.img() + v0 * L);
        let u = st
            .big
            .map_or(std::ptr::null_mut(), |v| ctx.ptr(v))
            .add(img * st.nu * xl.plane() + v0 * L);
        let cnt = (per_img - v0).min(TILE);
        for r in 0..st.nu {
            let out = spmm_row::<S, TILE>(&st.urows, r, 0.0, x);
            for (t, o) in out.iter().enumerate().take(cnt) {
                S::store(u.add(r * xl.plane() + t * L), *o);
            }
        }
    }
}

/// Mix-first, second half: y[n] = bias + sum over live bases of b_j convolved with U[n, j].
#[inline(always)]
unsafe fn p_mfconv_g<S: Simd>(st: &PDecomp, ctx: &Ctx, tile: usize, n0: usize, n1: usize) {
    unsafe {
        match st.acc.kind {
            1 => mfconv_k::<S, 1>(st, ctx, tile, n0, n1),
            2 => mfconv_k::<S, 2>(st, ctx, tile, n0, n1),
            _ => mfconv_k::<S, 0>(st, ctx, tile, n0, n1),
        }
    }
}

/// Sum over (U offset, tap, basis value) entries for TV vectors, two interleaved partial sums.
#[inline(always)]
unsafe fn mf_tv<S: Simd, const TV: usize, const K: usize>(
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

#[inline(always)]
unsafe fn mfconv_k<S: Simd, const K: usize>(st: &PDecomp, ctx: &Ctx, tile: usize, n0: usize, n1: usize) {
    unsafe {
        let tl = st.tile(tile);
        let out = st.epi.tile::<S>(ctx, &st.acc, &tl);
        let xl = &st.xl;
        let u = st.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v)) as *const f32;
        let us: [*const f32; TILE] = from_fn(|t| u.add(tl.img[t] * st.nu * xl.plane()));
        for n in n0..n1 {
            let e = &st.mf_entries[n][..];
            if tl.cnt >= 3 {
                let r = mf_tv::<S, 4, K>(&st.acc, &us, &tl.vl, e, st.bias[n]);
                for t in 0..tl.cnt {
                    out.put(n, t, r[t]);
                }
            } else {
                for t in 0..tl.cnt {
                    let r = mf_tv::<S, 1, K>(&st.acc, &us[t..], &tl.vl[t..], e, st.bias[n]);
                    out.put(n, t, r[0]);
                }
            }
        }
    }
}

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
    pub macs: u64,
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
        scale: &[f64],
        shift: &[f64],
        x: ValId,
        xl: PLay,
        y: ValId,
        yl: PLay,
        res: Vec<ValId>,
        act: Act,
        batch: usize,
        threads: usize,
    ) -> Result<PConv, EngineError> {
        if res.len() > MAX_RES {
            return Err(EngineError::Unsupported {
                node: name.to_string(),
                message: format!("more than {MAX_RES} residual inputs"),
            });
        }
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
                            (w[(n * cg + ci % cg) * kk + t] as f64 * scale[n]) as f32
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
            .map(|n| {
                if n < n_out {
                    (b.map_or(0.0, |b| b[n] as f64) * scale[n] + shift[n]) as f32
                } else {
                    0.0
                }
            })
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
                                e.push((ci * xl.plane(), t as u32, (v as f64 * scale[n]) as f32));
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
        Ok(PConv {
            x,
            xl,
            epi: Epi { y, yl, res, act },
            spec: *c,
            batch,
            threads,
            acc: Access::new(&xl, &yl, c),
            groups,
            weights: if sparse.is_some() {
                AVec::zeros(0)
            } else {
                AVec::from_slice(&packed)
            },
            bias,
            sparse,
            macs,
        })
    }

    pub fn describe(&self) -> String {
        let c = &self.spec;
        format!(
            "conv {}x{} s{} {}->{} planar{}{}",
            c.kernel[0],
            c.kernel[1],
            c.stride[0],
            c.in_channels,
            c.out_channels,
            if self.sparse.is_some() { " sparse" } else { "" },
            self.acc.mode()
        )
    }

    pub fn weight_floats(&self) -> usize {
        self.weights.len() + self.bias.len() + self.sparse.as_ref().map_or(0, |s| s.iter().map(|e| e.len() * 4).sum())
    }

    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let tiles = (self.acc.nvec * self.batch).div_ceil(TILE);
        let tasks = (4 * self.threads).min(tiles).max(1);
        let (per, ng) = (tiles.div_ceil(tasks), self.groups.len());
        let chunks = tiles.div_ceil(per);
        // few tiles (a small map at batch 1): split the output channels as well
        let split = if chunks < 2 * self.threads { (2 * self.threads).min(ng) } else { 1 };
        let gper = ng.div_ceil(split);
        ctx.par(chunks * split, &|t, _| {
            let (ch, s) = (t / split, t % split);
            for tile in ch * per..((ch + 1) * per).min(tiles) {
                p_conv(ctx.isa, self, ctx, tile, s * gper, ((s + 1) * gper).min(ng));
            }
        })
    }
}

isa_dispatch!(fn p_conv => p_conv_g(st: &PConv, ctx: &Ctx, tile: usize, g0: usize, g1: usize));

#[inline(always)]
unsafe fn p_conv_g<S: Simd>(st: &PConv, ctx: &Ctx, tile: usize, g0: usize, g1: usize) {
    unsafe {
        match st.acc.kind {
            1 => conv_k::<S, 1>(st, ctx, tile, g0, g1),
            2 => conv_k::<S, 2>(st, ctx, tile, g0, g1),
            _ => conv_k::<S, 0>(st, ctx, tile, g0, g1),
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
                    let r = mf_tv::<S, 4, K>(a, &xs, &tl.vl, &rows[n], st.bias[n]);
                    for t in 0..tl.cnt {
                        out.put(n, t, r[t]);
                    }
                } else {
                    for t in 0..tl.cnt {
                        let r = mf_tv::<S, 1, K>(a, &xs[t..], &tl.vl[t..], &rows[n], st.bias[n]);
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

/// out = act(scale * in0 + shift + in1 + ...) on planar maps.
pub(crate) struct PElt {
    pub ins: Vec<ValId>,
    pub out: ValId,
    pub ol: PLay,
    pub affine: Option<(Vec<f32>, Vec<f32>)>,
    pub act: Act,
    pub batch: usize,
}

isa_dispatch!(fn p_elt => p_elt_g(st: &PElt, ctx: &Ctx, t: usize));

impl PElt {
    pub fn weight_floats(&self) -> usize {
        self.affine.as_ref().map_or(0, |(a, b)| a.len() + b.len())
    }

    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.batch * self.ol.c, &|t, _| p_elt(ctx.isa, self, ctx, t))
    }
}

#[inline(always)]
unsafe fn p_elt_g<S: Simd>(st: &PElt, ctx: &Ctx, t: usize) {
    unsafe {
        let ol = &st.ol;
        let c = t % ol.c;
        let act = ActV::<S>::new(st.act);
        let (sc, sh) = match &st.affine {
            Some((a, b)) => (S::splat(a[c]), S::splat(b[c])),
            None => (S::splat(1.0), S::zero()),
        };
        let off = t * ol.plane();
        let yb = ctx.ptr(st.out).add(off);
        let ins: [*const f32; 4] = from_fn(|k| {
            if k < st.ins.len() {
                (ctx.ptr(st.ins[k]) as *const f32).add(off)
            } else {
                std::ptr::null()
            }
        });
        let hw = ol.hw();
        for p in (0..hw).step_by(L) {
            let m = prefix(hw - p);
            let mut v = S::load_mask(ins[0].add(p), m);
            if st.affine.is_some() {
                v = S::fma(v, sc, sh);
            }
            for k in 1..st.ins.len() {
                let x = if k < 4 {
                    ins[k]
                } else {
                    (ctx.ptr(st.ins[k]) as *const f32).add(off)
                };
                v = S::add(v, S::load_mask(x.add(p), m));
            }
            S::store_mask(yb.add(p), m, act.apply(v));
        }
    }
}

/// Global average pooling of planar maps into 1x1 planar maps.
pub(crate) struct PGap {
    pub x: ValId,
    pub xl: PLay,
    pub y: ValId,
    pub yl: PLay,
    pub batch: usize,
}

isa_dispatch!(fn p_gap => p_gap_g(st: &PGap, ctx: &Ctx, t: usize));

impl PGap {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.batch * self.xl.c, &|t, _| p_gap(ctx.isa, self, ctx, t))
    }
}

#[inline(always)]
unsafe fn p_gap_g<S: Simd>(st: &PGap, ctx: &Ctx, t: usize) {
    unsafe {
        let (xl, yl) = (&st.xl, &st.yl);
        let xb = (ctx.ptr(st.x) as *const f32).add(t * xl.plane());
        let mut acc = [S::zero(); 2];
        let hw = xl.hw();
        for (i, p) in (0..hw).step_by(L).enumerate() {
            acc[i & 1] = S::add(acc[i & 1], S::load_mask(xb.add(p), prefix(hw - p)));
        }
        *ctx.ptr(st.y).add(t * yl.plane()) = S::hsum(S::add(acc[0], acc[1])) / hw as f32;
    }
}

/// Max or average pooling on planar maps, one output pixel at a time (as the reference does).
pub(crate) struct PPool {
    pub x: ValId,
    pub xl: PLay,
    pub y: ValId,
    pub yl: PLay,
    pub p: Pool2d,
    pub max: bool,
    pub batch: usize,
}

impl PPool {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.batch * self.xl.c, &|t, _| {
            let (xl, yl, p) = (&self.xl, &self.yl, &self.p);
            // SAFETY: reads inside the input plane, writes inside the output plane.
            unsafe {
                let xb = (ctx.ptr(self.x) as *const f32).add(t * xl.plane());
                let yb = ctx.ptr(self.y).add(t * yl.plane());
                let (h, w) = (xl.h as isize, xl.w as isize);
                let axis = |o: usize, k: usize, s: usize, lo: usize, hi: usize, size: isize| {
                    let a = (o * s) as isize - lo as isize;
                    (a.max(0), (a + k as isize).min(size), (size + hi as isize - a).clamp(0, k as isize))
                };
                for oy in 0..yl.h {
                    let (y0, y1, cy) = axis(oy, p.kernel[0], p.stride[0], p.padding[0], p.padding[2], h);
                    for ox in 0..yl.w {
                        let (x0, x1, cx) = axis(ox, p.kernel[1], p.stride[1], p.padding[1], p.padding[3], w);
                        let mut m = f32::NEG_INFINITY;
                        let mut s = 0f32;
                        for iy in y0..y1 {
                            let row = xb.add(iy as usize * xl.w);
                            for ix in x0..x1 {
                                let v = *row.add(ix as usize);
                                m = if v > m { v } else { m };
                                s += v;
                            }
                        }
                        let v = if self.max {
                            m
                        } else {
                            let cnt = (y1 - y0).max(0) * (x1 - x0).max(0);
                            let div = if p.count_include_pad { cy * cx } else { cnt };
                            s / div.max(1) as f32
                        };
                        *yb.add(oy * yl.w + ox) = v;
                    }
                }
            }
        })
    }
}

/// The user's NCHW input into planes.
pub(crate) struct ToPlanar {
    pub dst: ValId,
    pub lay: PLay,
    pub batch: usize,
}

impl ToPlanar {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let l = self.lay;
        ctx.par(self.batch * l.c, &|t, _| {
            // SAFETY: the input holds batch*C*H*W values; each plane holds H*W.
            unsafe { std::ptr::copy_nonoverlapping(ctx.input.add(t * l.hw()), ctx.ptr(self.dst).add(t * l.plane()), l.hw()) }
        })
    }
}

/// Planar maps into plain NCHW (flatten and the model output).
pub(crate) struct PToFlat {
    pub src: ValId,
    pub lay: PLay,
    pub dst: ValId,
    pub batch: usize,
}

impl PToFlat {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let l = self.lay;
        ctx.par(self.batch * l.c, &|t, _| {
            // SAFETY: each plane's H*W values into the flat destination.
            unsafe { std::ptr::copy_nonoverlapping(ctx.ptr(self.src).add(t * l.plane()), ctx.ptr(self.dst).add(t * l.hw()), l.hw()) }
        })
    }
}
