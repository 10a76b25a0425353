//! Softmax and log-softmax over channels, on plain NCHW data (the planner converts first).

use crate::error::EngineError;
use crate::step::{Ctx, StepOp, ValId};

/// Softmax (or log-softmax) over the channels of plain NCHW data: `c` values `hw` apart, for
/// each of the `hw` pixels of each image (a vector is c = its length, hw = 1).
pub(crate) struct SoftmaxStep {
    pub src: ValId,
    pub dst: ValId,
    pub c: usize,
    pub hw: usize,
    pub log: bool,
    pub batch: usize,
}

impl StepOp for SoftmaxStep {
    fn describe(&self) -> String {
        if self.log { "log-softmax" } else { "softmax" }.into()
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let (c, hw) = (self.c, self.hw);
        ctx.par(self.batch, &|img, _| {
            // SAFETY: both buffers hold batch images of c*hw values; each task owns one image.
            let (x, y) = unsafe {
                (
                    std::slice::from_raw_parts((ctx.ptr(self.src) as *const f32).add(img * c * hw), c * hw),
                    std::slice::from_raw_parts_mut(ctx.ptr(self.dst).add(img * c * hw), c * hw),
                )
            };
            for p in 0..hw {
                let max = (0..c).map(|k| x[k * hw + p]).fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = (0..c).map(|k| (x[k * hw + p] - max).exp()).sum();
                for k in 0..c {
                    let z = x[k * hw + p] - max;
                    y[k * hw + p] = if self.log { z - sum.ln() } else { z.exp() / sum };
                }
            }
        })
    }
}
