//! Fully connected layers: y = act(W x + b), vectorised over the input features.

use penni_model::Node;

use crate::arena::AVec;
use crate::epilogue::Act;
use crate::error::EngineError;
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::{Ctx, StepOp, ValId};

/// y = act(W x + b) for every image; tasks split the output features.
pub(crate) struct LinearStep {
    x: ValId,
    y: ValId,
    inf: usize,
    outf: usize,
    w: AVec,
    b: AVec,
    act: Act,
    batch: usize,
    chunk: usize,
}

impl LinearStep {
    pub fn new(node: &Node, x: ValId, y: ValId, act: Act, batch: usize) -> Result<LinearStep, EngineError> {
        let penni_model::Op::Linear {
            in_features, out_features, ..
        } = node.op
        else {
            return Err(EngineError::Internal("not a linear layer".into()));
        };
        let w = AVec::from_slice(&node.param("weight")?.data);
        let b = match node.params.get("bias") {
            Some(t) => AVec::from_slice(&t.data),
            None => AVec::zeros(out_features),
        };
        let chunk = out_features.div_ceil(64).max(1);
        Ok(LinearStep {
            x,
            y,
            inf: in_features,
            outf: out_features,
            w,
            b,
            act,
            batch,
            chunk,
        })
    }
}

impl StepOp for LinearStep {
    fn describe(&self) -> String {
        format!("linear {}x{}", self.inf, self.outf)
    }

    fn macs(&self) -> u64 {
        (self.inf * self.outf * self.batch) as u64
    }

    fn weight_floats(&self) -> usize {
        self.w.len() + self.b.len()
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.outf.div_ceil(self.chunk), &|t, _| linear_task(ctx.isa, self, ctx, t))
    }
}

isa_dispatch!(fn linear_task => linear_task_g(st: &LinearStep, ctx: &Ctx, t: usize));

#[inline(always)]
unsafe fn linear_task_g<S: Simd>(st: &LinearStep, ctx: &Ctx, t: usize) {
    unsafe {
        let x = ctx.ptr(st.x) as *const f32;
        let y = ctx.ptr(st.y);
        let k = st.inf;
        let full = k / L * L;
        let (lo, hi) = (t * st.chunk, ((t + 1) * st.chunk).min(st.outf));
        for o in lo..hi {
            let wr = st.w.ptr().add(o * k);
            for img in 0..st.batch {
                let xr = x.add(img * k);
                let mut acc = [S::zero(); 4];
                let mut i = 0;
                while i + 4 * L <= full {
                    for u in 0..4 {
                        acc[u] = S::fma(S::load(wr.add(i + u * L)), S::load(xr.add(i + u * L)), acc[u]);
                    }
                    i += 4 * L;
                }
                while i < full {
                    acc[0] = S::fma(S::load(wr.add(i)), S::load(xr.add(i)), acc[0]);
                    i += L;
                }
                let mut s = S::hsum(S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3])));
                for j in full..k {
                    s += *wr.add(j) * *xr.add(j);
                }
                *y.add(img * st.outf + o) = st.act.apply(s + *st.b.ptr().add(o));
            }
        }
    }
}
