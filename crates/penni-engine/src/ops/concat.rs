//! Concatenation along channels (or features), for every layout.

use crate::error::EngineError;
use crate::layout::Lay;
use crate::step::{Ctx, StepOp, ValId};

/// Inputs stacked along the channels (or features), for every layout: flat vectors and planar
/// maps copy whole runs; blocked maps move channel by channel, as a channel's lane in its
/// 16-channel block shifts with the offset.
pub(crate) struct ConcatStep {
    pub ins: Vec<(ValId, Lay)>,
    pub out: ValId,
    pub ol: Lay,
    pub batch: usize,
}

impl StepOp for ConcatStep {
    fn describe(&self) -> String {
        format!("concat x{}", self.ins.len())
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.batch, &|img, _| {
            // SAFETY: each task writes one image of the output, sized for the output layout;
            // inputs are read within their own images.
            unsafe { self.image(ctx, img) }
        })
    }
}

impl ConcatStep {
    /// # Safety
    /// `img` is an image of the plan's batch and the buffers have the layouts recorded.
    unsafe fn image(&self, ctx: &Ctx, img: usize) {
        unsafe {
            let y = ctx.ptr(self.out).add(img * self.ol.img_floats());
            // borders and the unused lanes of a last block must hold zeros / finite values
            std::ptr::write_bytes(y, 0, self.ol.img_floats());
            let mut off = 0; // channels (or features) written so far
            for (v, l) in &self.ins {
                let x = (ctx.ptr(*v) as *const f32).add(img * l.img_floats());
                match (l, &self.ol) {
                    (Lay::Flat { len }, Lay::Flat { .. }) => {
                        std::ptr::copy_nonoverlapping(x, y.add(off), *len);
                        off += len;
                    }
                    (Lay::Planar(p), Lay::Planar(o)) => {
                        std::ptr::copy_nonoverlapping(x, y.add(off * o.plane()), p.img());
                        off += p.c;
                    }
                    (Lay::Map(m), Lay::Map(_)) => {
                        for k in 0..m.c {
                            for yy in 0..m.h {
                                for xx in 0..m.w {
                                    *y.add(self.ol.elem(0, off + k, yy, xx)) = *x.add(l.elem(0, k, yy, xx));
                                }
                            }
                        }
                        off += m.c;
                    }
                    _ => unreachable!("layouts checked when planning"),
                }
            }
        }
    }
}
