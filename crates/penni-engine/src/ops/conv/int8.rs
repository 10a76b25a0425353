//! Integer convolution of quantized models on the channel-blocked layout: a dense convolution
//! whose input lies on a per-tensor activation grid (it is written by a quantize-dequantize)
//! and whose weights lie on a symmetric grid of at most 8 bits per output channel runs on the
//! integers themselves, with VNNI where the CPU has it (issue 13).
//!
//! The step first writes the input's codes as bytes, `u = k - qmin` (0..=255), in the same
//! geometry as the f32 map (one byte per float, the border included: a zero there is the code
//! of the zero point), then runs the tiles of the f32 kernel (`blocked`) with four channels per
//! instruction: each pixel's four input codes broadcast against OB vectors of 16 output
//! channels x 4 weight codes. The sum is exact in i32; sum (k - zp) q = sum u q + (qmin - zp)
//! sum q, so the zero point costs one constant per output channel. The epilogue converts once:
//! y = f32(sum) * (s_x s_w bn_scale) + bias, a multiply and an add (no fused multiply-add, so
//! every ISA rounds alike), then residuals and activation as the f32 kernels do. The result
//! equals [`reference`] exactly.

use std::array::from_fn;

use penni_model::Conv2d;
use penni_model::batchnorm::Affine;

use super::tiling::{Residuals, Seg, choose_tile, dispatch_tile, segments, store_tile};
use crate::arena::AVec;
use crate::epilogue::{Act, ActV, check_residuals, fold_bias};
use crate::error::EngineError;
use crate::layout::MapLay;
use crate::simd::{Dot8, IntIsa, L, dot8_dispatch};
use crate::step::{Ctx, StepOp, ValId};

/// The per-tensor grid an input lies on: value = (k - zero_point) * scale, k in qmin..=qmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct InputGrid {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl InputGrid {
    /// The grid of a quantize-dequantize activation, if its codes fit a byte and its scale is
    /// a normal float with a finite inverse (then x * (1 / scale) gives back every code).
    pub fn of(a: &penni_model::Activation) -> Option<InputGrid> {
        match *a {
            penni_model::Activation::QuantizeDequantize {
                scale,
                zero_point,
                qmin,
                qmax,
            } if (qmax as i64 - qmin as i64) <= 255 && scale.is_normal() && (1.0 / scale).is_normal() => Some(InputGrid {
                scale,
                zero_point,
                qmin,
                qmax,
            }),
            _ => None,
        }
    }
}

/// How an integer step writes its f32 input as byte codes u = clamp(round(x / s) + zp, qmin,
/// qmax) - qmin (the code of 0 is zp - qmin): the one formula both integer steps use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Codes {
    inv_scale: f32,
    /// zp - qmin: the code of 0.
    zero: f32,
    max: f32,
}

impl Codes {
    pub fn of(g: &InputGrid) -> Codes {
        Codes {
            inv_scale: 1.0 / g.scale,
            zero: (g.zero_point - g.qmin) as f32,
            max: (g.qmax - g.qmin) as f32,
        }
    }

    /// The code of 0.
    pub fn zero_code(&self) -> u8 {
        self.zero as u8
    }

    /// Stores the codes of the 16 floats `x` at `p`.
    #[inline(always)]
    pub unsafe fn store<D: Dot8>(&self, p: *mut u8, x: D::V) {
        unsafe {
            let k = D::add(D::round_even(D::mul(x, D::splat(self.inv_scale))), D::splat(self.zero));
            D::store_u8(p, D::min(D::max(k, D::zero()), D::splat(self.max)));
        }
    }
}

/// The name of an integer ISA in step descriptions.
pub(crate) fn isa_name(isa: IntIsa) -> &'static str {
    match isa {
        IntIsa::Vnni => "vnni",
        IntIsa::Fallback => "portable",
    }
}

/// The integer form of a convolution's weights: codes per output channel and their scales.
pub(crate) struct IntWeights {
    pub scales: Vec<f32>,
    /// N x C x kh x kw, as the IR orders the weight.
    pub codes: Vec<i8>,
}

impl IntWeights {
    /// The weights' grid, when every output channel lies on a symmetric grid of at most 8 bits
    /// and the sums of the layer cannot overflow an i32.
    pub fn of(c: &Conv2d, w: &[f32]) -> Option<IntWeights> {
        let terms = (c.in_channels / c.groups.max(1)) * c.kernel[0] * c.kernel[1];
        // |sum| <= 2 * 255 * 127 * terms (the products and the zero-point correction)
        if c.groups != 1 || terms == 0 || 2 * 255 * 127 * terms as u64 > i32::MAX as u64 {
            return None;
        }
        let (scales, codes) = penni_model::grid::int8_channels(w, c.out_channels)?;
        Some(IntWeights { scales, codes })
    }
}

struct QGroup {
    ob0: usize,
    nvalid: usize,
    /// Offsets (elements) of every (input block, ky, kx) from a pixel's receptive-field origin.
    taps: Vec<isize>,
    /// Offset of the group's packed codes in `weights`.
    w_off: usize,
}

pub(crate) struct QConvStep {
    x: ValId,
    y: ValId,
    res: Vec<ValId>,
    act: Act,
    xl: MapLay,
    yl: MapLay,
    rl: Vec<MapLay>,
    stride: [usize; 2],
    kernel: [usize; 2],
    /// Groups of four input channels per input block (4; fewer for a stem of < 16 channels).
    ngrp: usize,
    ob: usize,
    r: usize,
    qc: usize,
    groups: Vec<QGroup>,
    /// Per group, tap, channel quad, output block: 16 lanes x 4 codes.
    weights: Vec<i8>,
    /// Per output channel (padded to whole groups): (qmin - zp) * sum of its weight codes.
    corr: Vec<i32>,
    factor: AVec,
    bias: AVec,
    segs: Vec<Seg>,
    tiles: usize,
    chunks: usize,
    row0: isize,
    col0: isize,
    batch: usize,
    macs: u64,
    codes_of: Codes,
    isa: IntIsa,
    codes: Option<ValId>,
}

impl QConvStep {
    /// The integer step of dense convolution `c` with integer weights `iw`, input grid `xg`,
    /// bias `b` and folded batchnorm `fold`, for input layout `xl` and output layout `yl`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        c: &Conv2d,
        iw: &IntWeights,
        xg: InputGrid,
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
        isa: IntIsa,
    ) -> Result<QConvStep, EngineError> {
        check_residuals(name, res.len())?;
        for k in 0..4 {
            if xl.pad[k] < c.padding[k] {
                return Err(EngineError::Internal(format!(
                    "'{name}': input storage has less padding than the convolution"
                )));
            }
        }
        let (n_out, n_in) = (c.out_channels, c.in_channels);
        let (kh, kw) = (c.kernel[0], c.kernel[1]);
        let nb = n_out.div_ceil(L);
        let nib = n_in.div_ceil(L);
        let ngrp = if n_in < L { n_in.div_ceil(4) } else { L / 4 };
        let (ob, r, qc) = choose_tile(nb, yl.h, yl.w, batch, c.stride[1], nib * kh * kw * ngrp, threads, 4);
        let ws = xl.ws() as isize;
        let mut groups = Vec::new();
        let mut packed: Vec<i8> = Vec::new();
        let mut ob0 = 0;
        while ob0 < nb {
            let nvalid = ob.min(nb - ob0);
            let w_off = packed.len();
            let mut taps = Vec::new();
            for ib in 0..nib {
                for ky in 0..kh {
                    for kx in 0..kw {
                        taps.push(
                            (ib * xl.plane()) as isize + ((ky * c.dilation[0]) as isize * ws + (kx * c.dilation[1]) as isize) * L as isize,
                        );
                        for g in 0..ngrp {
                            for o in 0..ob {
                                for lane in 0..L {
                                    for k in 0..4 {
                                        let oc = (ob0 + o) * L + lane;
                                        let ci = ib * L + 4 * g + k;
                                        let q = if o < nvalid && oc < n_out && ci < n_in {
                                            iw.codes[((oc * n_in + ci) * kh + ky) * kw + kx]
                                        } else {
                                            0
                                        };
                                        packed.push(q);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            groups.push(QGroup { ob0, nvalid, taps, w_off });
            ob0 += ob;
        }
        let padded = groups.len() * ob * L;
        let (mut corr, mut factor, mut bias) = (vec![0i32; padded], vec![0f32; padded], vec![0f32; padded]);
        let per_out = n_in * kh * kw;
        for n in 0..n_out {
            let sum: i64 = iw.codes[n * per_out..(n + 1) * per_out].iter().map(|&q| q as i64).sum();
            corr[n] = ((xg.qmin - xg.zero_point) as i64 * sum) as i32;
            factor[n] = penni_model::grid::int_output_factor(xg.scale, iw.scales[n], fold.scale[n]);
            bias[n] = fold_bias(fold, b, n);
        }
        let segs = segments(batch, yl.h, yl.w, qc, r);
        let tiles = segs.len() / r;
        let chunks = (4 * threads).div_ceil(groups.len()).clamp(1, tiles.max(1));
        Ok(QConvStep {
            x,
            y,
            res,
            act,
            xl,
            yl,
            rl,
            stride: c.stride,
            kernel: c.kernel,
            ngrp,
            ob,
            r,
            qc,
            groups,
            weights: packed,
            corr,
            factor: AVec::from_slice(&factor),
            bias: AVec::from_slice(&bias),
            segs,
            tiles,
            chunks,
            row0: xl.pad[0] as isize - c.padding[0] as isize,
            col0: xl.pad[1] as isize - c.padding[1] as isize,
            batch,
            macs: (n_out * n_in * kh * kw * yl.h * yl.w * batch) as u64,
            codes_of: Codes::of(&xg),
            isa,
            codes: None,
        })
    }

    /// Floats of the input-code buffer: one byte per input float, and a vector of slack.
    fn code_floats(&self) -> usize {
        (self.batch * self.xl.img()).div_ceil(4) + L
    }
}

/// Input floats a task of the code pass converts.
const CODE_CHUNK: usize = 16 * 1024;

impl StepOp for QConvStep {
    fn describe(&self) -> String {
        format!(
            "conv {}x{} s{} {}->{} int8 {} [ob{} {}x{}]",
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.xl.c,
            self.yl.c,
            isa_name(self.isa),
            self.ob,
            self.r,
            self.qc
        )
    }

    fn macs(&self) -> u64 {
        self.macs
    }

    fn f32_equivalent_macs(&self) -> u64 {
        // VNNI does four products per lane and instruction where an f32 kernel does one
        match self.isa {
            IntIsa::Vnni => self.macs / 4,
            IntIsa::Fallback => self.macs,
        }
    }

    fn weight_floats(&self) -> usize {
        self.weights.len().div_ceil(4) + self.corr.len() + self.factor.len() + self.bias.len()
    }

    fn scratch_floats(&self) -> Vec<usize> {
        vec![self.code_floats()]
    }

    fn set_scratch(&mut self, _slot: usize, v: ValId) {
        self.codes = Some(v);
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let codes = self
            .codes
            .ok_or_else(|| EngineError::Internal("int8 conv without its code buffer".into()))?;
        let total = self.batch * self.xl.img();
        ctx.par(total.div_ceil(CODE_CHUNK), &|t, _| {
            input_codes(self.isa, self, ctx, codes, t * CODE_CHUNK, ((t + 1) * CODE_CHUNK).min(total));
        })?;
        ctx.zero_borders(self.y, self.batch);
        let n = self.groups.len() * self.chunks;
        ctx.par(n, &|t, _| {
            let (g, c) = (t / self.chunks, t % self.chunks);
            let (t0, t1) = (c * self.tiles / self.chunks, (c + 1) * self.tiles / self.chunks);
            run_tiles(self.isa, self, ctx, codes, g, t0, t1);
        })
    }
}

dot8_dispatch!(fn input_codes => input_codes_g(st: &QConvStep, ctx: &Ctx, codes: ValId, i0: usize, i1: usize));
dot8_dispatch!(fn run_tiles => tiles_dyn(st: &QConvStep, ctx: &Ctx, codes: ValId, g: usize, t0: usize, t1: usize));

/// Codes of input floats i0..i1 (a multiple of 16 each: maps are whole 16-float vectors).
#[inline(always)]
unsafe fn input_codes_g<D: Dot8>(st: &QConvStep, ctx: &Ctx, codes: ValId, i0: usize, i1: usize) {
    unsafe {
        let x = ctx.ptr(st.x) as *const f32;
        let u = ctx.ptr(codes) as *mut u8;
        let mut i = i0;
        while i < i1 {
            st.codes_of.store::<D>(u.add(i), D::load(x.add(i)));
            i += L;
        }
    }
}

#[inline(always)]
unsafe fn tiles_dyn<D: Dot8>(st: &QConvStep, ctx: &Ctx, codes: ValId, g: usize, t0: usize, t1: usize) {
    let sx = if st.qc > 1 { st.stride[1] } else { 1 };
    unsafe { dispatch_tile!((st.ob, st.r, st.qc, sx), tiles::<D>(st, ctx, codes, g, t0, t1)) }
}

#[inline(always)]
unsafe fn tiles<D: Dot8, const OB: usize, const R: usize, const QC: usize, const SX: usize>(
    st: &QConvStep,
    ctx: &Ctx,
    codes: ValId,
    g: usize,
    t0: usize,
    t1: usize,
) {
    unsafe {
        let grp = &st.groups[g];
        let xb = ctx.ptr(codes) as *const u8;
        let yb = ctx.ptr(st.y);
        let (xl, yl) = (&st.xl, &st.yl);
        let (x_img, ws) = (xl.img() as isize, xl.ws() as isize);
        let (sy, sx) = (st.stride[0] as isize, st.stride[1] as isize);
        let w0 = st.weights.as_ptr().add(grp.w_off);
        let c0 = grp.ob0 * L;
        let act = ActV::<D>::new(st.act);
        let res = Residuals {
            base: from_fn(|k| st.res.get(k).map_or(std::ptr::null(), |&v| ctx.ptr(v) as *const f32)),
            lay: &st.rl,
        };
        let fv: [D::V; OB] = from_fn(|o| D::load(st.factor.ptr().add(c0 + o * L)));
        let bv: [D::V; OB] = from_fn(|o| D::load(st.bias.ptr().add(c0 + o * L)));
        let step = st.ngrp * OB * 4 * L;
        for tile in t0..t1 {
            let segs = &st.segs[tile * R..tile * R + R];
            let xs: [*const u8; R] = from_fn(|r| {
                let s = segs[r];
                xb.offset(s.img as isize * x_img + ((s.oy as isize * sy + st.row0) * ws + s.ox as isize * sx + st.col0) * L as isize)
            });
            let yp: [*mut f32; R] = from_fn(|r| {
                let s = segs[r];
                yb.add(s.img as usize * yl.img() + grp.ob0 * yl.plane() + yl.at(s.oy as usize, s.ox as usize))
            });
            let mut acc = [[[D::izero(); OB]; QC]; R];
            let mut wp = w0;
            for &t in &grp.taps {
                let xt: [*const u8; R] = from_fn(|r| xs[r].offset(t));
                for gi in 0..st.ngrp {
                    let wv: [D::I; OB] = from_fn(|o| D::iload(wp.add((gi * OB + o) * 4 * L)));
                    for r in 0..R {
                        for q in 0..QC {
                            let a = xt[r].add(q * SX * L + 4 * gi);
                            for o in 0..OB {
                                acc[r][q][o] = D::dot4(acc[r][q][o], a, wv[o]);
                            }
                        }
                    }
                }
                wp = wp.add(step);
            }
            // to f32 once, with constant indices (see `blocked`): f32(sum + corr) * factor + bias
            let mut buf = std::mem::MaybeUninit::<[[[D::V; OB]; QC]; R]>::uninit();
            let bp = buf.as_mut_ptr() as *mut D::V;
            for r in 0..R {
                for q in 0..QC {
                    for o in 0..OB {
                        let s = D::to_f32(D::iadd_load(acc[r][q][o], st.corr.as_ptr().add(c0 + o * L)));
                        bp.add((r * QC + q) * OB + o).write(D::add(D::mul(s, fv[o]), bv[o]));
                    }
                }
            }
            store_tile::<D, OB, R, QC>(bp, segs, &yp, yl.plane(), grp.ob0, grp.nvalid, Some((&act, &res)));
        }
    }
}
