//! Decomposed (PENNI) convolution on planar maps, every kernel vectorised over 16 pixels: the
//! basis stage reads shifted pixel vectors of one channel (masked, no padding) and broadcasts
//! basis values; the combination is a CSR matrix times pixel rows; mix-first mixes at input
//! resolution, then sums taps of the mixed maps. The kernels are in `kernels`.

use penni_model::batchnorm::Affine;
use penni_model::{Conv2d, Node};

use super::analysis::Coefs;
use super::cost::packing_pays;
use super::csr::Csr;
use super::packed::{PACK_ROWS, RowBlocks};
use crate::epilogue::{Act, check_residuals, fold_bias};
use crate::error::EngineError;
use crate::layout::PLay;
use crate::ops::conv::phases::Phases;
use crate::ops::conv::planar_access::{Access, Epi, PoolEpi, TILE, Tile, tile_of};
use crate::options::Strategy;
use crate::simd::L;
use crate::step::{Ctx, StepOp, ValId};

mod kernels;

/// A decomposed convolution on planar maps.
pub(crate) struct PDecomp {
    x: ValId,
    /// The layout the kernels read: the input's, or its phase split's.
    xl: PLay,
    /// A stride-2 layer's input split into phases first (`phases`; not for mix-first, which
    /// reads the input at full resolution), and where to.
    split: Option<Phases>,
    split_buf: Option<ValId>,
    epi: Epi,
    strategy: Strategy,
    kernel: [usize; 2],
    stride: [usize; 2],
    batch: usize,
    threads: usize,
    n_out: usize,
    dl: usize,
    nnz: usize,
    macs: u64,
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
    /// The rows packed in blocks, when the plan chose that over the CSR.
    packed: Option<RowBlocks>,
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
        fold: &Affine,
        an: &Coefs,
        strategy: Strategy,
        packed: Option<bool>,
        x: ValId,
        xl: PLay,
        y: ValId,
        yl: PLay,
        res: Vec<ValId>,
        act: Act,
        batch: usize,
        threads: usize,
    ) -> Result<PDecomp, EngineError> {
        check_residuals(&node.name, res.len())?;
        let bases = &node.param("bases")?.data;
        let b = node.params.get("bias").map(|t| t.data.as_slice());
        let (n_out, n_in) = (c.out_channels, c.in_channels);
        let (cg, og, kk) = (an.cg, an.og, an.kk);
        let coef = |n: usize, ci: usize, j: usize| an.coef(n, ci, j);
        let bias: Vec<f32> = (0..n_out).map(|n| fold_bias(fold, b, n)).collect();
        let (jl, dl, nnz) = (&an.jl, an.dl(), an.nnz);
        // a stride-2 layer whose reads would gather (a narrow map) reads its input's phase
        // split instead, unless that takes more vectors (rows too narrow to fill one, which the
        // gathers pack across rows: VGG-16-avg's reordered 9 -> 4 layer 2.7x slower): ResNet-18
        // w0.25's 14 -> 7 and 7 -> 4 PENNI layers 0.64x and 0.75x the time at batch 64 (split
        // included; experiments/engine-bench/phases-2026-12-07); a wider layer's two loads per
        // tap (28 -> 14) ran 1.3x faster than loads from a split
        let mut acc = Access::new(&xl, &yl, c, false);
        let mut split = None;
        if strategy != Strategy::MixFirst
            && acc.kind == 0
            && let Some(p) = Phases::for_conv(x, &xl, c, batch)
        {
            let phased = Access::phased(&p, &yl, c);
            if phased.nvec <= acc.nvec {
                (acc, split) = (phased, Some(p));
            }
        }
        let xl = split.as_ref().map_or(xl, |p| p.lay);
        let mut st = PDecomp {
            x,
            xl,
            split,
            split_buf: None,
            epi: Epi {
                y,
                yl,
                res,
                act,
                pool: None,
            },
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
            packed: None,
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
                    let start = st.urows.terms();
                    let g = n / og;
                    for ci in g * cg..(g + 1) * cg {
                        let v = coef(n, ci, j);
                        if v != 0.0 {
                            st.urows.push(ci * xl.plane(), v);
                        }
                    }
                    if st.urows.terms() > start {
                        urow_of[n * dl + jj] = st.nu;
                        st.nu += 1;
                        st.urows.end_row();
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
            (st.chunks, st.chunk_bases) = an.basis_chunks(bases);
            (st.colmap, st.ncols) = an.columns(n_in * dl);
            st.live_c = (0..n_in).filter(|&ci| an.live_c[ci]).collect();
            let fused = strategy == Strategy::Fused;
            st.zstride = if fused { TILE * L } else { nvpad * L };
            for n in 0..n_out {
                let g = n / og;
                for ci in g * cg..(g + 1) * cg {
                    for (jj, &j) in jl.iter().enumerate() {
                        let v = coef(n, ci, j);
                        if v != 0.0 {
                            st.rows.push(st.colmap[ci * dl + jj] as usize * st.zstride, v);
                        }
                    }
                }
                st.rows.end_row();
            }
            if packed != Some(false) {
                let p = RowBlocks::pack(&st.rows, PACK_ROWS);
                if packed == Some(true) || packing_pays(nnz, p.slots()) {
                    st.packed = Some(p);
                    st.rows = Csr::new();
                }
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

    /// The step with a max pool in its epilogue (`PoolEpi`).
    pub fn with_pool(mut self, pool: Option<PoolEpi>) -> Self {
        self.epi.pool = pool;
        self
    }

    /// The map the kernels read: the input, or its phase split.
    fn input(&self, ctx: &Ctx) -> *const f32 {
        ctx.ptr(self.split_buf.unwrap_or(self.x))
    }

    fn scratch_ptr(&self, ctx: &Ctx, tid: usize) -> *mut f32 {
        let base = self.scratch.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
        base.wrapping_add(tid * self.per_thread.div_ceil(L) * L)
    }

    /// What the combination stage iterates over: output channels, or row blocks when packed.
    fn combination_units(&self) -> usize {
        self.packed.as_ref().map_or(self.n_out, RowBlocks::blocks)
    }

    fn total(&self) -> usize {
        self.acc.nvec * self.batch
    }

    fn tile(&self, tile: usize) -> Tile {
        tile_of(self.acc.nvec, self.total(), tile)
    }
}

impl StepOp for PDecomp {
    /// Slot 0: per-thread working memory; then, if any, a whole-layer buffer and the phase split.
    fn scratch_floats(&self) -> Vec<usize> {
        let mut v = vec![self.per_thread.div_ceil(L) * L * self.threads];
        if self.big_floats > 0 {
            v.push(self.big_floats);
        }
        if let Some(p) = &self.split {
            v.push(p.floats());
        }
        v
    }

    fn macs(&self) -> u64 {
        self.macs
    }

    fn set_scratch(&mut self, slot: usize, v: ValId) {
        match slot {
            0 => self.scratch = Some(v),
            1 if self.big_floats > 0 => self.big = Some(v),
            _ => self.split_buf = Some(v),
        }
    }

    fn describe(&self) -> String {
        let s = match self.strategy {
            Strategy::MixFirst => "mix-first",
            Strategy::Fused => "fused",
            _ => "basis-first",
        };
        format!(
            "penni {}x{} s{} {}->{} planar {s} d{} nnz{} cols{}{}{}{}{}",
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.xl.c,
            self.n_out,
            self.dl,
            self.nnz,
            self.ncols.max(self.nu),
            self.packed
                .as_ref()
                .map_or(String::new(), |p| format!(" packed{}x{}", p.r, p.slots())),
            self.acc.mode(),
            if self.split.is_some() { " phases" } else { "" },
            if self.epi.pool.is_some() { " +maxpool2x2" } else { "" }
        )
    }

    fn weight_floats(&self) -> usize {
        self.bias.len()
            + self.rows.floats()
            + self.packed.as_ref().map_or(0, RowBlocks::floats)
            + self.urows.floats()
            + self.chunk_bases.iter().map(Vec::len).sum::<usize>()
            + self.mf_entries.iter().map(|e| e.len() * 4).sum::<usize>()
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        self.run(ctx)
    }
}
