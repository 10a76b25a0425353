//! The planar decomposed convolution's kernels: stage 1 (one or two channels at a time),
//! the CSR combination, and mix-first's two halves.

use std::array::from_fn;

use super::PDecomp;
use crate::error::EngineError;
use crate::ops::conv::planar_access::{Access, TILE, TileOut, load_in, load_in2, tap_sum};
use crate::ops::decomposed::csr::Csr;
use crate::ops::decomposed::packed::{NO_ROW, PACK_ROWS, RowBlocks};
use crate::options::Strategy;
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::Ctx;

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

/// One block of R rows times T pixel vectors: per union column, T loads shared by R rows
/// (R x T independent chains).
#[inline(always)]
unsafe fn block_rows<S: Simd, const R: usize, const T: usize>(m: &RowBlocks, blk: usize, bias: &[f32; R], z: *const f32) -> [[S::V; T]; R] {
    unsafe {
        let (s, e) = (*m.ptr.get_unchecked(blk), *m.ptr.get_unchecked(blk + 1));
        let cols = m.cols.as_ptr();
        let vals = m.vals.as_ptr();
        let mut a: [[S::V; T]; R] = from_fn(|k| [S::splat(bias[k]); T]);
        for k in s..e {
            let zp = z.add(*cols.add(k));
            let x: [S::V; T] = from_fn(|t| S::load(zp.add(t * L)));
            for (r, ar) in a.iter_mut().enumerate() {
                let c = S::splat(*vals.add(k * R + r));
                for t in 0..T {
                    ar[t] = S::fma(c, x[t], ar[t]);
                }
            }
        }
        a
    }
}

impl PDecomp {
    /// Runs the step (its `StepOp::exec`): the task split of each dataflow.
    pub(super) fn run(&self, ctx: &Ctx) -> Result<(), EngineError> {
        if let Some(p) = &self.split {
            let buf = self
                .split_buf
                .ok_or_else(|| EngineError::Internal("a stride-2 PENNI layer ran without its phase buffer".into()))?;
            p.run(ctx, buf)?;
        }
        let tiles = self.total().div_ceil(TILE);
        // split the output channels too when there are few tiles
        let ngroups = (4 * self.threads).div_ceil(tiles).clamp(1, self.n_out.max(1));
        let nper = self.n_out.div_ceil(ngroups);
        let units = self.combination_units();
        let ugroups = ngroups.min(units.max(1));
        let uper = units.div_ceil(ugroups);
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
                ctx.par(tiles * ugroups, &|t, _| {
                    let z = self.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
                    let (tile, g) = (t / ugroups, t % ugroups);
                    p_stage2(
                        ctx.isa,
                        self,
                        ctx,
                        tile,
                        z.wrapping_add(tile * TILE * L),
                        g * uper,
                        ((g + 1) * uper).min(units),
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
        let xb = st.input(ctx);
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
                // vectors per pass: 2 x TV x D accumulators must leave registers for the bases,
                // the loads and the masks (d = 3 at 4 vectors, 24 accumulators, spilled: 2 vectors
                // ran its layers 18% faster on ResNet-20)
                match n {
                    1 => basis2_n::<S, 1, 4, K>(a, cnt, &xs, &xs2, vl, b, &c1s, &c2s, z),
                    2 => basis2_n::<S, 2, 4, K>(a, cnt, &xs, &xs2, vl, b, &c1s, &c2s, z),
                    3 => basis2_n::<S, 3, 2, K>(a, cnt, &xs, &xs2, vl, b, &c1s, &c2s, z),
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

/// Stage 2 for combination units u0..u1 (output channels, or row blocks when packed) of one
/// tile, from Z at `z` (the tile's first pixel).
#[inline(always)]
unsafe fn p_stage2_g<S: Simd>(st: &PDecomp, ctx: &Ctx, tile: usize, z: *const f32, u0: usize, u1: usize) {
    unsafe {
        let tl = st.tile(tile);
        let out = st.epi.tile::<S>(ctx, &st.acc, &tl);
        if let Some(p) = &st.packed {
            stage2_blocks::<S, PACK_ROWS>(st, p, &out, tl.cnt, z, u0, u1);
            return;
        }
        for n in u0..u1 {
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

/// Stage 2 over row blocks b0..b1 of `p` (R rows each) for the `cnt` vectors of a tile.
#[inline(always)]
unsafe fn stage2_blocks<S: Simd, const R: usize>(
    st: &PDecomp,
    p: &RowBlocks,
    out: &TileOut<S>,
    cnt: usize,
    z: *const f32,
    b0: usize,
    b1: usize,
) {
    unsafe {
        for b in b0..b1 {
            let rows: [u32; R] = from_fn(|k| p.members[b * R + k]);
            let bias: [f32; R] = from_fn(|k| if rows[k] == NO_ROW { 0.0 } else { st.bias[rows[k] as usize] });
            match cnt {
                4 | 3 => put_block::<S, R, 4>(out, &rows, &block_rows::<S, R, 4>(p, b, &bias, z), cnt),
                2 => put_block::<S, R, 2>(out, &rows, &block_rows::<S, R, 2>(p, b, &bias, z), 2),
                _ => put_block::<S, R, 1>(out, &rows, &block_rows::<S, R, 1>(p, b, &bias, z), 1),
            }
        }
    }
}

/// Stores the first `cnt` of T vectors of each row of a block through the epilogue.
#[inline(always)]
unsafe fn put_block<S: Simd, const R: usize, const T: usize>(out: &TileOut<S>, rows: &[u32; R], acc: &[[S::V; T]; R], cnt: usize) {
    unsafe {
        for k in 0..R {
            if rows[k] != NO_ROW {
                for t in 0..cnt {
                    out.put(rows[k] as usize, t, acc[k][t]);
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
        p_stage2_g::<S>(st, ctx, tile, z, 0, st.combination_units());
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
                let r = tap_sum::<S, 4, K>(&st.acc, &us, &tl.vl, e, st.bias[n]);
                for t in 0..tl.cnt {
                    out.put(n, t, r[t]);
                }
            } else {
                for t in 0..tl.cnt {
                    let r = tap_sum::<S, 1, K>(&st.acc, &us[t..], &tl.vl[t..], e, st.bias[n]);
                    out.put(n, t, r[0]);
                }
            }
        }
    }
}
