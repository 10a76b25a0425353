//! Element-wise steps: an add / unfolded batchnorm / activation that could not be fused into a
//! producer ([`EltStep`] on blocked maps and vectors, [`PElt`] on planar maps), and the rare
//! element-wise activations and products in any layout ([`PointStep`]).

use std::array::from_fn;

use penni_model::Activation;
use penni_model::batchnorm::Affine;

use crate::arena::AVec;
use crate::epilogue::{Act, ActV};
use crate::error::EngineError;
use crate::layout::{Lay, PLay, prefix};
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::{Ctx, StepOp, ValId};

/// out = act(scale * in0 + shift + in1 + in2 + ...): a standalone add, batchnorm or activation.
pub(crate) struct EltStep {
    ins: Vec<ValId>,
    lays: Vec<Lay>,
    out: ValId,
    out_lay: Lay,
    /// Per channel (padded to whole blocks), for a batchnorm that could not be folded.
    affine: Option<(AVec, AVec)>,
    act: Act,
    batch: usize,
    /// "add x2", "batchnorm" or "activation".
    label: String,
}

impl EltStep {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ins: Vec<ValId>,
        lays: Vec<Lay>,
        out: ValId,
        out_lay: Lay,
        affine: Option<&Affine>,
        act: Act,
        batch: usize,
        label: String,
    ) -> EltStep {
        // padded to whole channel blocks with the identity
        let affine = affine.map(|f| {
            let n = f.scale.len().div_ceil(L) * L;
            let mut sv = vec![1f32; n];
            let mut bv = vec![0f32; n];
            for i in 0..f.scale.len() {
                sv[i] = f.scale[i] as f32;
                bv[i] = f.shift[i] as f32;
            }
            (AVec::from_slice(&sv), AVec::from_slice(&bv))
        });
        EltStep {
            ins,
            lays,
            out,
            out_lay,
            affine,
            act,
            batch,
            label,
        }
    }
}

impl StepOp for EltStep {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn weight_floats(&self) -> usize {
        self.affine.as_ref().map_or(0, |(a, b)| a.len() + b.len())
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.zero_borders(self.out, self.batch);
        let n = match self.out_lay {
            Lay::Map(m) => self.batch * m.cb(),
            _ => self.batch,
        };
        ctx.par(n, &|t, _| elt_task(ctx.isa, self, ctx, t))
    }
}

isa_dispatch!(fn elt_task => elt_task_g(st: &EltStep, ctx: &Ctx, t: usize));

#[inline(always)]
unsafe fn elt_task_g<S: Simd>(st: &EltStep, ctx: &Ctx, t: usize) {
    unsafe {
        let act = ActV::<S>::new(st.act);
        let n = st.ins.len();
        match st.out_lay {
            Lay::Map(om) => {
                let (img, cb) = (t / om.cb(), t % om.cb());
                let (sc, sh) = match &st.affine {
                    Some((a, b)) => (S::load(a.ptr().add(cb * L)), S::load(b.ptr().add(cb * L))),
                    None => (S::splat(1.0), S::zero()),
                };
                let yb = ctx.ptr(st.out).add(img * om.img() + cb * om.plane());
                // one pass per input (no per-run allocation for a variable number of inputs)
                for (k, (&v, l)) in st.ins.iter().zip(&st.lays).enumerate() {
                    let m = match l {
                        Lay::Map(m) => *m,
                        _ => om,
                    };
                    let xb = (ctx.ptr(v) as *const f32).add(img * m.img() + cb * m.plane());
                    let last = k + 1 == n;
                    for y in 0..om.h {
                        for x in 0..om.w {
                            let xv = S::load(xb.add(m.at(y, x)));
                            let yp = yb.add(om.at(y, x));
                            let mut r = if k == 0 {
                                if st.affine.is_some() { S::fma(xv, sc, sh) } else { xv }
                            } else {
                                S::add(S::load(yp), xv)
                            };
                            if last {
                                r = act.apply(r);
                            }
                            S::store(yp, r);
                        }
                    }
                }
            }
            _ => {
                let len = match st.out_lay {
                    Lay::Flat { len } => len,
                    _ => 0,
                };
                let dst = ctx.ptr(st.out).add(t * len);
                let mut i = 0;
                while i < len {
                    let cnt = (len - i).min(L);
                    let mut tmp = [0f32; L];
                    let mut v = S::zero();
                    for (k, &src) in st.ins.iter().enumerate() {
                        std::ptr::copy_nonoverlapping((ctx.ptr(src) as *const f32).add(t * len + i), tmp.as_mut_ptr(), cnt);
                        let x = S::load(tmp.as_ptr());
                        v = if k == 0 { x } else { S::add(v, x) };
                    }
                    S::store(tmp.as_mut_ptr(), act.apply(v));
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst.add(i), cnt);
                    i += cnt;
                }
            }
        }
    }
}

/// out = act(scale * in0 + shift + in1 + ...) on planar maps.
pub(crate) struct PElt {
    ins: Vec<ValId>,
    out: ValId,
    ol: PLay,
    affine: Option<(Vec<f32>, Vec<f32>)>,
    act: Act,
    batch: usize,
    /// "add x2", "batchnorm" or "activation".
    label: String,
}

isa_dispatch!(fn p_elt => p_elt_g(st: &PElt, ctx: &Ctx, t: usize));

impl PElt {
    pub fn new(ins: Vec<ValId>, out: ValId, ol: PLay, affine: Option<&Affine>, act: Act, batch: usize, label: String) -> PElt {
        let affine = affine.map(|f| {
            (
                f.scale.iter().map(|v| *v as f32).collect(),
                f.shift.iter().map(|v| *v as f32).collect(),
            )
        });
        PElt {
            ins,
            out,
            ol,
            affine,
            act,
            batch,
            label,
        }
    }
}

impl StepOp for PElt {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn weight_floats(&self) -> usize {
        self.affine.as_ref().map_or(0, |(a, b)| a.len() + b.len())
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.batch * self.ol.c, &|t, _| p_elt(ctx.isa, self, ctx, t))
    }
}

#[inline(always)]
unsafe fn p_elt_g<S: Simd>(st: &PElt, ctx: &Ctx, t: usize) {
    unsafe {
        let ol = &st.ol;
        let c = t % ol.c;
        let act = ActV::<S>::new(st.act);
        let (sc, sh) = match &st.affine {
            Some((a, b)) => (S::splat(a[c]), S::splat(b[c])),
            None => (S::splat(1.0), S::zero()),
        };
        let off = t * ol.plane();
        let yb = ctx.ptr(st.out).add(off);
        let ins: [*const f32; 4] = from_fn(|k| {
            if k < st.ins.len() {
                (ctx.ptr(st.ins[k]) as *const f32).add(off)
            } else {
                std::ptr::null()
            }
        });
        let hw = ol.hw();
        for p in (0..hw).step_by(L) {
            let m = prefix(hw - p);
            let mut v = S::load_mask(ins[0].add(p), m);
            if st.affine.is_some() {
                v = S::fma(v, sc, sh);
            }
            for k in 1..st.ins.len() {
                let x = if k < 4 {
                    ins[k]
                } else {
                    (ctx.ptr(st.ins[k]) as *const f32).add(off)
                };
                v = S::add(v, S::load_mask(x.add(p), m));
            }
            S::store_mask(yb.add(p), m, act.apply(v));
        }
    }
}

/// What a [`PointStep`] computes per element.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PointOp {
    Unary(Activation),
    /// Product of two inputs; an input of 1 x 1 pixels is broadcast over the other's pixels.
    Mul,
}

/// Element-wise activations and products (squeeze-and-excitation, SiLU) in any layout. They
/// are rare next to convolutions and cost little, so they are plain scalar loops.
pub(crate) struct PointStep {
    pub op: PointOp,
    /// Inputs with their layouts and pixel counts (h, w); a 1 x 1 input is broadcast.
    pub ins: Vec<(ValId, Lay, usize, usize)>,
    pub out: ValId,
    pub ol: Lay,
    /// Output channels and pixels.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub batch: usize,
}

impl StepOp for PointStep {
    fn describe(&self) -> String {
        match self.op {
            PointOp::Unary(a) => a.name().to_lowercase(),
            PointOp::Mul => "mul".into(),
        }
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.batch, &|img, _| {
            let out = ctx.ptr(self.out);
            // SAFETY: each task writes one image of the output; offsets stay inside the images
            // of the buffers, sized for their layouts.
            unsafe {
                // borders, block tails and plane tails must hold zeros
                std::ptr::write_bytes(out.add(img * self.ol.img_floats()), 0, self.ol.img_floats());
                let read = |i: usize, k: usize, y: usize, x: usize| {
                    let (v, l, h, w) = &self.ins[i];
                    let (y, x) = if (*h, *w) == (1, 1) { (0, 0) } else { (y, x) };
                    *(ctx.ptr(*v) as *const f32).add(l.elem(img, k, y, x))
                };
                for k in 0..self.c {
                    for y in 0..self.h {
                        for x in 0..self.w {
                            let v = match self.op {
                                PointOp::Unary(a) => a.apply(read(0, k, y, x)),
                                PointOp::Mul => read(0, k, y, x) * read(1, k, y, x),
                            };
                            *out.add(self.ol.elem(img, k, y, x)) = v;
                        }
                    }
                }
            }
        })
    }
}
