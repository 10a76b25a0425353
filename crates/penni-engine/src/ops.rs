//! The light steps: layout conversions, pools, element-wise steps (add, unfolded batchnorm,
//! activation) and linear layers.

use std::array::from_fn;

use penni_model::{Activation, Node, Pool2d};

use crate::arena::AVec;
use crate::error::EngineError;
use crate::plan::{Act, ActV, Ctx, Lay, MapLay, ValId};
use crate::simd::{L, Simd, isa_dispatch};

/// Zeroes the padding border of every channel block of every image of a blocked map.
pub(crate) fn zero_borders(ctx: &Ctx, v: ValId, batch: usize) {
    if let Lay::Map(m) = ctx.vals[v].lay {
        zero_borders_raw(ctx.ptr(v), &m, batch);
    }
}

pub(crate) fn zero_borders_raw(base: *mut f32, m: &MapLay, batch: usize) {
    if m.pad == [0; 4] || base.is_null() {
        return;
    }
    let row = m.ws() * L;
    for blk in 0..batch * m.cb() {
        // SAFETY: the buffer holds batch * cb planes of hs*ws*16 floats.
        unsafe {
            let p = base.add(blk * m.plane());
            std::ptr::write_bytes(p, 0, m.pad[0] * row);
            std::ptr::write_bytes(p.add((m.pad[0] + m.h) * row), 0, m.pad[2] * row);
            for y in m.pad[0]..m.pad[0] + m.h {
                let r = p.add(y * row);
                std::ptr::write_bytes(r, 0, m.pad[1] * L);
                std::ptr::write_bytes(r.add((m.pad[1] + m.w) * L), 0, m.pad[3] * L);
            }
        }
    }
}

/// The user's NCHW input into the blocked layout (padding lanes zero).
pub(crate) struct ToMap {
    pub dst: ValId,
    pub lay: MapLay,
    pub batch: usize,
}

impl ToMap {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        zero_borders(ctx, self.dst, self.batch);
        let m = self.lay;
        ctx.par(self.batch * m.cb(), &|t, _| to_map(ctx.isa, self, ctx, t))
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

impl CopyIn {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        // SAFETY: the input has `len` values; the destination was sized for them.
        unsafe { std::ptr::copy_nonoverlapping(ctx.input, ctx.ptr(self.dst), self.len) };
        Ok(())
    }
}

/// Inputs stacked along the channels (or features), for every layout: flat vectors and planar
/// maps copy whole runs; blocked maps move channel by channel, as a channel's lane in its
/// 16-channel block shifts with the offset.
pub(crate) struct ConcatStep {
    pub ins: Vec<(ValId, Lay)>,
    pub out: ValId,
    pub ol: Lay,
    pub batch: usize,
}

impl ConcatStep {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.batch, &|img, _| {
            // SAFETY: each task writes one image of the output, sized for the output layout;
            // inputs are read within their own images.
            unsafe { self.image(ctx, img) }
        })
    }

    unsafe fn image(&self, ctx: &Ctx, img: usize) {
        unsafe {
            let y = ctx.ptr(self.out).add(img * img_floats(&self.ol));
            // borders and the unused lanes of a last block must hold zeros / finite values
            std::ptr::write_bytes(y, 0, img_floats(&self.ol));
            let mut off = 0; // channels (or features) written so far
            for (v, l) in &self.ins {
                let x = (ctx.ptr(*v) as *const f32).add(img * img_floats(l));
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
                                    *y.add(elem(&self.ol, 0, off + k, yy, xx)) = *x.add(elem(l, 0, k, yy, xx));
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

/// Offset of (channel k, pixel y, x) of image `img` in a buffer of layout `l`.
fn elem(l: &Lay, img: usize, k: usize, y: usize, x: usize) -> usize {
    match l {
        Lay::Map(m) => img * m.img() + (k / L) * m.plane() + m.at(y, x) + k % L,
        Lay::Planar(p) => img * p.img() + k * p.plane() + y * p.w + x,
        // vectors: one pixel per channel
        Lay::Flat { len } => img * len + k,
        Lay::Scratch => 0,
    }
}

fn img_floats(l: &Lay) -> usize {
    match l {
        Lay::Map(m) => m.img(),
        Lay::Planar(p) => p.img(),
        Lay::Flat { len } => *len,
        Lay::Scratch => 0,
    }
}

impl PointStep {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.batch, &|img, _| {
            let out = ctx.ptr(self.out);
            // SAFETY: each task writes one image of the output; offsets stay inside the images
            // of the buffers, sized for their layouts.
            unsafe {
                // borders, block tails and plane tails must hold zeros
                std::ptr::write_bytes(out.add(img * img_floats(&self.ol)), 0, img_floats(&self.ol));
                let read = |i: usize, k: usize, y: usize, x: usize| {
                    let (v, l, h, w) = &self.ins[i];
                    let (y, x) = if (*h, *w) == (1, 1) { (0, 0) } else { (y, x) };
                    *(ctx.ptr(*v) as *const f32).add(elem(l, img, k, y, x))
                };
                for k in 0..self.c {
                    for y in 0..self.h {
                        for x in 0..self.w {
                            let v = match self.op {
                                PointOp::Unary(a) => a.apply(read(0, k, y, x)),
                                PointOp::Mul => read(0, k, y, x) * read(1, k, y, x),
                            };
                            *out.add(elem(&self.ol, img, k, y, x)) = v;
                        }
                    }
                }
            }
        })
    }
}

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

impl SoftmaxStep {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
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

/// A blocked map into plain NCHW order (for flatten and for the model output).
pub(crate) struct ToFlat {
    pub src: ValId,
    pub dst: ValId,
    pub lay: MapLay,
    pub batch: usize,
}

impl ToFlat {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let m = self.lay;
        ctx.par(self.batch * m.cb(), &|t, _| to_flat(ctx.isa, self, ctx, t))
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

/// Max or average pooling on the blocked layout, with padding, ceil mode and both divisor
/// conventions exactly as the reference defines them.
pub(crate) struct PoolStep {
    pub x: ValId,
    pub y: ValId,
    pub xl: MapLay,
    pub yl: MapLay,
    pub p: Pool2d,
    pub max: bool,
    pub batch: usize,
}

isa_dispatch!(fn pool_block => pool_block_g(st: &PoolStep, ctx: &Ctx, t: usize));

impl PoolStep {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        zero_borders(ctx, self.y, self.batch);
        ctx.par(self.batch * self.xl.cb(), &|t, _| pool_block(ctx.isa, self, ctx, t))
    }
}

#[inline(always)]
unsafe fn pool_block_g<S: Simd>(st: &PoolStep, ctx: &Ctx, t: usize) {
    unsafe {
        let (xl, yl, p) = (&st.xl, &st.yl, &st.p);
        let (img, cb) = (t / xl.cb(), t % xl.cb());
        let xb = (ctx.ptr(st.x) as *const f32).add(img * xl.img() + cb * xl.plane());
        let yb = ctx.ptr(st.y).add(img * yl.img() + cb * yl.plane());
        let (h, w) = (xl.h as isize, xl.w as isize);
        // cells inside [0, size + pad_hi) of one axis, and the valid (inside the map) range
        let axis = |o: usize, k: usize, s: usize, lo: usize, hi: usize, size: isize| {
            let a = (o * s) as isize - lo as isize;
            let counted = (size + hi as isize - a).clamp(0, k as isize);
            (a.max(0), (a + k as isize).min(size), counted)
        };
        for oy in 0..yl.h {
            let (y0, y1, cy) = axis(oy, p.kernel[0], p.stride[0], p.padding[0], p.padding[2], h);
            for ox in 0..yl.w {
                let (x0, x1, cx) = axis(ox, p.kernel[1], p.stride[1], p.padding[1], p.padding[3], w);
                let mut v = if st.max { S::splat(f32::NEG_INFINITY) } else { S::zero() };
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let xv = S::load(xb.add(xl.at(iy as usize, ix as usize)));
                        v = if st.max { S::max(xv, v) } else { S::add(v, xv) };
                    }
                }
                if !st.max {
                    let cnt = (y1 - y0).max(0) * (x1 - x0).max(0);
                    let div = if p.count_include_pad { cy * cx } else { cnt };
                    v = S::mul(v, S::splat(1.0 / div.max(1) as f32));
                }
                S::store(yb.add(yl.at(oy, ox)), v);
            }
        }
    }
}

/// Global average pooling: one 1x1 map per channel block.
pub(crate) struct GapStep {
    pub x: ValId,
    pub y: ValId,
    pub xl: MapLay,
    pub yl: MapLay,
    pub batch: usize,
}

isa_dispatch!(fn gap_block => gap_block_g(st: &GapStep, ctx: &Ctx, t: usize));

impl GapStep {
    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        zero_borders(ctx, self.y, self.batch);
        ctx.par(self.batch * self.xl.cb(), &|t, _| gap_block(ctx.isa, self, ctx, t))
    }
}

#[inline(always)]
unsafe fn gap_block_g<S: Simd>(st: &GapStep, ctx: &Ctx, t: usize) {
    unsafe {
        let (xl, yl) = (&st.xl, &st.yl);
        let (img, cb) = (t / xl.cb(), t % xl.cb());
        let xb = (ctx.ptr(st.x) as *const f32).add(img * xl.img() + cb * xl.plane());
        let mut acc = [S::zero(); 4];
        let mut i = 0;
        for y in 0..xl.h {
            let row = xb.add(xl.at(y, 0));
            for x in 0..xl.w {
                acc[i & 3] = S::add(acc[i & 3], S::load(row.add(x * L)));
                i += 1;
            }
        }
        let s = S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3]));
        let v = S::mul(s, S::splat(1.0 / (xl.h * xl.w) as f32));
        S::store(ctx.ptr(st.y).add(img * yl.img() + cb * yl.plane() + yl.at(0, 0)), v);
    }
}

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
}

impl EltStep {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ins: Vec<ValId>,
        lays: Vec<Lay>,
        out: ValId,
        out_lay: Lay,
        scale: Option<Vec<f64>>,
        shift: Option<Vec<f64>>,
        act: Act,
        batch: usize,
    ) -> EltStep {
        let affine = match (scale, shift) {
            (Some(s), Some(b)) => {
                let n = s.len().div_ceil(L) * L;
                let mut sv = vec![1f32; n];
                let mut bv = vec![0f32; n];
                for i in 0..s.len() {
                    sv[i] = s[i] as f32;
                    bv[i] = b[i] as f32;
                }
                Some((AVec::from_slice(&sv), AVec::from_slice(&bv)))
            }
            _ => None,
        };
        EltStep {
            ins,
            lays,
            out,
            out_lay,
            affine,
            act,
            batch,
        }
    }

    pub fn weight_floats(&self) -> usize {
        self.affine.as_ref().map_or(0, |(a, b)| a.len() + b.len())
    }

    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        zero_borders(ctx, self.out, self.batch);
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

/// y = act(W x + b) for every image; tasks split the output features.
pub(crate) struct LinearStep {
    x: ValId,
    y: ValId,
    pub inf: usize,
    pub outf: usize,
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

    pub fn macs(&self) -> u64 {
        (self.inf * self.outf * self.batch) as u64
    }

    pub fn weight_floats(&self) -> usize {
        self.w.len() + self.b.len()
    }

    pub fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
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
        let clip = match st.act {
            Act::None => None,
            Act::Clip { lo, hi } => Some((lo, hi)),
        };
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
                let mut v = s + *st.b.ptr().add(o);
                if let Some((lo, hi)) = clip {
                    v = v.max(lo).min(hi);
                }
                *y.add(img * st.outf + o) = v;
            }
        }
    }
}
