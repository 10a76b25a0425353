//! Stride-2 convolutions on planar maps without gathers. A stride-2 tap reads every other
//! input pixel, so a vector of 16 outputs either gathers (narrow maps) or loads 32 pixels and
//! keeps the even lanes. Split once into its four phases (even/odd rows x even/odd columns),
//! the input holds every pixel a tap reads side by side: output pixel (y, x) reads phase
//! (dy mod 2, dx mod 2) at (y + floor(dy/2), x + floor(dx/2)), so a tap is one masked load, as
//! in a stride-1 layer. Each channel's plane holds its four phases stacked, each
//! ceil(h/2) x ceil(w/2): the split is itself a planar map (c, 4 ceil(h/2), ceil(w/2)).
//! The planar PENNI layers use it where they would gather (`decomposed::planar`); a dense
//! planar layer gathers each tile once for all its outputs, and measured no faster split.

use penni_model::Conv2d;

use crate::error::EngineError;
use crate::layout::PLay;
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::{Ctx, ValId};

/// The phase split of a stride-2 convolution's input.
#[derive(Clone, Debug)]
pub(crate) struct Phases {
    /// The input map and its layout.
    src: ValId,
    pub src_lay: PLay,
    /// The split map: per channel, phases (0,0), (0,1), (1,0), (1,1) of `h2` x `w2` each.
    pub lay: PLay,
    h2: usize,
    pub w2: usize,
    /// Per vector of a split plane: the input plane offset of each lane, and the lanes to
    /// fill (those of the phases some tap reads: a 1x1 shortcut reads only (0,0)); one gather
    /// per 16 values, whatever the width (row by row, a narrow map costs more per value).
    idx: Vec<[i32; L]>,
    masks: Vec<u16>,
    batch: usize,
}

impl Phases {
    /// The split for convolution `c` reading `xl`, when it has stride 2 and no dilation.
    pub fn for_conv(src: ValId, xl: &PLay, c: &Conv2d, batch: usize) -> Option<Phases> {
        if c.stride != [2, 2] || c.dilation != [1, 1] {
            return None;
        }
        let (h2, w2) = (xl.h.div_ceil(2), xl.w.div_ceil(2));
        let mut needed = [false; 4];
        for ky in 0..c.kernel[0] {
            for kx in 0..c.kernel[1] {
                let (py, px) = (tap_phase(ky, c.padding[0]), tap_phase(kx, c.padding[1]));
                needed[py * 2 + px] = true;
            }
        }
        let lay = PLay { c: xl.c, h: 4 * h2, w: w2 };
        let (mut idx, mut masks) = (Vec::new(), Vec::new());
        for v in 0..lay.plane() / L {
            let mut m = 0u16;
            let lanes: [i32; L] = std::array::from_fn(|i| {
                let o = v * L + i;
                let (phase, y, x) = (o / (h2 * w2), o % (h2 * w2) / w2, o % w2);
                let (iy, ix) = (2 * y + phase / 2, 2 * x + phase % 2);
                if phase < 4 && needed[phase] && iy < xl.h && ix < xl.w {
                    m |= 1 << i;
                    (iy * xl.w + ix) as i32
                } else {
                    0
                }
            });
            idx.push(lanes);
            masks.push(m);
        }
        Some(Phases {
            src,
            src_lay: *xl,
            lay,
            h2,
            w2,
            idx,
            masks,
            batch,
        })
    }

    /// Floats of the split map for the whole batch.
    pub fn floats(&self) -> usize {
        self.batch * self.lay.img()
    }

    /// Offset, in a channel's split plane, of the pixel a tap at (dy, dx) from output (y, x)
    /// reads (dy, dx: the tap's offset from the output's top-left input pixel, padding included).
    pub fn offset(&self, y: usize, x: usize, dy: isize, dx: isize) -> isize {
        let (py, px) = (dy.rem_euclid(2), dx.rem_euclid(2));
        let phase = (py * 2 + px) as usize * self.h2 * self.w2;
        phase as isize + (y as isize + dy.div_euclid(2)) * self.w2 as isize + x as isize + dx.div_euclid(2)
    }

    /// Writes the split of every image into `dst`, in a few runs of planes per thread (a task
    /// per plane costs more than splitting a small one).
    pub fn run(&self, ctx: &Ctx, dst: ValId) -> Result<(), EngineError> {
        let planes = self.batch * self.src_lay.c;
        let tasks = (4 * ctx.pool.threads()).min(planes).max(1);
        let per = planes.div_ceil(tasks);
        ctx.par(planes.div_ceil(per), &|t, _| {
            split_planes(ctx.isa, self, ctx, dst, t * per, ((t + 1) * per).min(planes))
        })
    }
}

/// The phase (0 or 1) that kernel tap `k` reads along an axis padded by `pad` before.
fn tap_phase(k: usize, pad: usize) -> usize {
    (k as isize - pad as isize).rem_euclid(2) as usize
}

isa_dispatch!(fn split_planes => split_planes_g(p: &Phases, ctx: &Ctx, dst: ValId, p0: usize, p1: usize));

/// Splits planes p0..p1 (image * channels + channel), a gather per vector of the split.
#[inline(always)]
unsafe fn split_planes_g<S: Simd>(p: &Phases, ctx: &Ctx, dst: ValId, p0: usize, p1: usize) {
    unsafe {
        let (sl, dl) = (&p.src_lay, &p.lay);
        for plane in p0..p1 {
            let (img, ch) = (plane / sl.c, plane % sl.c);
            let src = (ctx.ptr(p.src) as *const f32).add(img * sl.img() + ch * sl.plane());
            let out = ctx.ptr(dst).add(img * dl.img() + ch * dl.plane());
            for (v, (idx, &m)) in p.idx.iter().zip(&p.masks).enumerate() {
                if m != 0 {
                    S::store(out.add(v * L), S::gather(src, idx, m));
                }
            }
        }
    }
}
