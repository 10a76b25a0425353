//! The blocked decomposed convolution's kernels: stage 1 (basis maps), the two combination
//! orientations, their epilogue, and mix-first's two halves.

use std::array::from_fn;

use super::DecompStep;
use crate::epilogue::{ActV, MAX_RES};
use crate::error::EngineError;
use crate::layout::zero_borders_raw;
use crate::ops::decomposed::csr::Csr;
use crate::options::Strategy;
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::Ctx;

impl DecompStep {
    /// Runs the step (its `StepOp::exec`): the task split of each dataflow.
    pub(super) fn run(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.zero_borders(self.y, self.batch);
        match self.strategy {
            Strategy::MixFirst => {
                let ub = self.big.map_or(std::ptr::null_mut(), |v| ctx.ptr(v));
                zero_borders_raw(ub, &self.ul, self.batch);
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
            let mut v = act.pre(out[i / L][i % L]);
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
                    let mut v = act.pre(*bp.add(r * QC + q));
                    for k in 0..nres {
                        v = S::add(v, S::load(rp[k].add(q * L)));
                    }
                    S::store(yp.add(q * L), act.apply(v));
                }
            }
        }
    }
}
