//! Layout conversions: the user's NCHW input into the working layout (blocked or planar), maps
//! back into plain NCHW order (flatten, softmax input, the model output), and the copy of a
//! model whose output is its input.

use std::array::from_fn;

use crate::error::EngineError;
use crate::layout::{MapLay, PLay};
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::{Ctx, StepOp, ValId};

/// The user's NCHW input into the blocked layout (padding lanes zero).
pub(crate) struct ToMap {
    pub dst: ValId,
    pub lay: MapLay,
    pub batch: usize,
}

impl StepOp for ToMap {
    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.zero_borders(self.dst, self.batch);
        let m = self.lay;
        ctx.par(self.batch * m.cb(), &|t, _| to_map(ctx.isa, self, ctx, t))
    }

    fn describe(&self) -> String {
        "input".into()
    }
}

isa_dispatch!(fn to_map => to_map_g(st: &ToMap, ctx: &Ctx, t: usize));

/// 16 pixels of up to 16 channel rows, transposed into 16 pixel vectors.
#[inline(always)]
unsafe fn to_map_g<S: Simd>(st: &ToMap, ctx: &Ctx, t: usize) {
    unsafe {
        let m = &st.lay;
        let (img, cb) = (t / m.cb(), t % m.cb());
        let (c, hw) = (m.c, m.h * m.w);
        let nc = (c - cb * L).min(L);
        let src = ctx.input.add((img * c + cb * L) * hw);
        let dst = ctx.ptr(st.dst).add(img * m.img() + cb * m.plane());
        for y in 0..m.h {
            let mut x = 0;
            while x + L <= m.w {
                let mut v: [S::V; L] = [S::zero(); L];
                for (ch, e) in v.iter_mut().enumerate().take(nc) {
                    *e = S::load(src.add(ch * hw + y * m.w + x));
                }
                S::transpose16(&mut v);
                for (p, e) in v.iter().enumerate() {
                    S::store(dst.add(m.at(y, x + p)), *e);
                }
                x += L;
            }
            for x in x..m.w {
                let mut v = [0f32; L];
                for (ch, e) in v.iter_mut().enumerate().take(nc) {
                    *e = *src.add(ch * hw + y * m.w + x);
                }
                S::store(dst.add(m.at(y, x)), S::load(v.as_ptr()));
            }
        }
    }
}

/// Copies the user's input (a model whose output is its input).
pub(crate) struct CopyIn {
    pub dst: ValId,
    pub len: usize,
}

impl StepOp for CopyIn {
    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        // SAFETY: the input has `len` values; the destination was sized for them.
        unsafe { std::ptr::copy_nonoverlapping(ctx.input, ctx.ptr(self.dst), self.len) };
        Ok(())
    }

    fn describe(&self) -> String {
        "copy input".into()
    }
}

/// A blocked map into plain NCHW order; `label` says why (flatten, softmax input, output).
pub(crate) struct ToFlat {
    pub src: ValId,
    pub dst: ValId,
    pub lay: MapLay,
    pub batch: usize,
    pub label: &'static str,
}

impl StepOp for ToFlat {
    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let m = self.lay;
        ctx.par(self.batch * m.cb(), &|t, _| to_flat(ctx.isa, self, ctx, t))
    }

    fn describe(&self) -> String {
        self.label.into()
    }
}

isa_dispatch!(fn to_flat => to_flat_g(st: &ToFlat, ctx: &Ctx, t: usize));

/// 16 pixel vectors transposed into 16-pixel runs of up to 16 channel rows.
#[inline(always)]
unsafe fn to_flat_g<S: Simd>(st: &ToFlat, ctx: &Ctx, t: usize) {
    unsafe {
        let m = &st.lay;
        let (img, cb) = (t / m.cb(), t % m.cb());
        let (c, hw) = (m.c, m.h * m.w);
        let nc = (c - cb * L).min(L);
        let src = (ctx.ptr(st.src) as *const f32).add(img * m.img() + cb * m.plane());
        let dst = ctx.ptr(st.dst).add((img * c + cb * L) * hw);
        for y in 0..m.h {
            let mut x = 0;
            while x + L <= m.w {
                let mut v: [S::V; L] = from_fn(|p| S::load(src.add(m.at(y, x + p))));
                S::transpose16(&mut v);
                for (ch, e) in v.iter().enumerate().take(nc) {
                    S::store(dst.add(ch * hw + y * m.w + x), *e);
                }
                x += L;
            }
            for x in x..m.w {
                let v = (src.add(m.at(y, x)) as *const [f32; L]).read_unaligned();
                for (ch, e) in v.iter().enumerate().take(nc) {
                    *dst.add(ch * hw + y * m.w + x) = *e;
                }
            }
        }
    }
}

/// The user's NCHW input into planes.
pub(crate) struct ToPlanar {
    pub dst: ValId,
    pub lay: PLay,
    pub batch: usize,
}

impl StepOp for ToPlanar {
    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let l = self.lay;
        ctx.par(self.batch * l.c, &|t, _| {
            // SAFETY: the input holds batch*C*H*W values; each plane holds H*W.
            unsafe { std::ptr::copy_nonoverlapping(ctx.input.add(t * l.hw()), ctx.ptr(self.dst).add(t * l.plane()), l.hw()) }
        })
    }

    fn describe(&self) -> String {
        "input".into()
    }
}

/// Planar maps into plain NCHW; `label` says why (flatten, softmax input, output).
pub(crate) struct PToFlat {
    pub src: ValId,
    pub lay: PLay,
    pub dst: ValId,
    pub batch: usize,
    pub label: &'static str,
}

impl StepOp for PToFlat {
    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let l = self.lay;
        let planes = self.batch * l.c;
        // runs of planes: after the last pool a plane is a few values, less than a task's cost
        let per = planes.div_ceil(64).max(1);
        ctx.par(planes.div_ceil(per), &|t, _| {
            let (src, dst) = (ctx.ptr(self.src) as *const f32, ctx.ptr(self.dst));
            for plane in t * per..((t + 1) * per).min(planes) {
                // SAFETY: each plane's H*W values into the flat destination.
                unsafe {
                    let (s, d) = (src.add(plane * l.plane()), dst.add(plane * l.hw()));
                    if l.hw() == 1 {
                        *d = *s;
                    } else {
                        std::ptr::copy_nonoverlapping(s, d, l.hw())
                    }
                }
            }
        })
    }

    fn describe(&self) -> String {
        self.label.into()
    }
}
