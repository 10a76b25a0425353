//! The steps and arena of one micro-batch, and the loop that runs them.

use std::time::Instant;

use crate::arena::AVec;
use crate::error::EngineError;
use crate::simd::Isa;
use crate::step::{Ctx, Step, Val, ValId};
use crate::thread_pool::Pool;

/// The steps and arena of one micro-batch.
pub(super) struct Core {
    pub batch: usize,
    pub out_val: ValId,
    pub out_len: usize,
    pub steps: Vec<Step>,
    pub vals: Vec<Val>,
    pub arena: AVec,
}

impl Core {
    fn ctx<'a>(&'a mut self, pool: &'a Pool, isa: Isa, input: &[f32]) -> Ctx<'a> {
        Ctx {
            base: self.arena.mut_ptr(),
            vals: &self.vals,
            pool,
            isa,
            input: input.as_ptr(),
            serial: false,
        }
    }

    pub fn output(&self) -> &[f32] {
        let off = self.vals[self.out_val].off;
        &self.arena.as_slice()[off..off + self.batch * self.out_len]
    }

    /// Runs every step; with `timing`, calls `timed(step, ns)` after each.
    pub fn run<F: FnMut(usize, u64)>(
        &mut self,
        pool: &Pool,
        isa: Isa,
        input: &[f32],
        timing: bool,
        timed: &mut F,
    ) -> Result<(), EngineError> {
        let steps = std::mem::take(&mut self.steps);
        let result = (|| {
            let mut ctx = self.ctx(pool, isa, input);
            for (i, s) in steps.iter().enumerate() {
                ctx.serial = s.serial;
                if timing {
                    let t = Instant::now();
                    s.op.exec(&ctx)?;
                    timed(i, t.elapsed().as_nanos() as u64);
                } else {
                    s.op.exec(&ctx)?;
                }
            }
            Ok(())
        })();
        self.steps = steps;
        result
    }

    /// Largest number of bytes one step touches per image (its inputs, outputs and scratch).
    pub fn bytes_per_image(&self) -> usize {
        self.steps
            .iter()
            .map(|s| s.reads.iter().chain(&s.writes).map(|&v| self.vals[v].size * 4).sum::<usize>() / self.batch)
            .max()
            .unwrap_or(0)
    }
}
