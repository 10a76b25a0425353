//! Pooling: max / average windows and global average pooling, on both layouts (blocked maps
//! vectorised over 16 channels, planar maps over 16 pixels or one output pixel at a time).

use penni_model::Pool2d;

use crate::epilogue::{Act, ActV};
use crate::error::EngineError;
use crate::layout::{MapLay, PLay, prefix};
use crate::simd::{L, Simd, isa_dispatch};
use crate::step::{Ctx, StepOp, ValId};

/// "maxpool 3x3 s2" / "avgpool 2x2 s2" (+ " +act" with an activation after it).
fn describe_pool(p: &Pool2d, max: bool, act: Act) -> String {
    format!(
        "{}pool {}x{} s{}{}",
        if max { "max" } else { "avg" },
        p.kernel[0],
        p.kernel[1],
        p.stride[0],
        if act == Act::NONE { "" } else { " +act" }
    )
}

/// Max or average pooling on the blocked layout, with padding, ceil mode and both divisor
/// conventions exactly as the reference defines them, then the activations after it (on the
/// pooled map: an activation moved after a max pool runs on a quarter of the values).
pub(crate) struct PoolStep {
    pub x: ValId,
    pub y: ValId,
    pub xl: MapLay,
    pub yl: MapLay,
    pub p: Pool2d,
    pub max: bool,
    pub act: Act,
    pub batch: usize,
}

isa_dispatch!(fn pool_block => pool_block_g(st: &PoolStep, ctx: &Ctx, t: usize));

impl StepOp for PoolStep {
    fn describe(&self) -> String {
        describe_pool(&self.p, self.max, self.act)
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.zero_borders(self.y, self.batch);
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
        let act = ActV::<S>::new(st.act);
        // cells inside [0, size + pad_hi) of one axis, and the valid (inside the map) range
        for oy in 0..yl.h {
            let (y0, y1, cy) = window_axis(oy, p.kernel[0], p.stride[0], p.padding[0], p.padding[2], h);
            for ox in 0..yl.w {
                let (x0, x1, cx) = window_axis(ox, p.kernel[1], p.stride[1], p.padding[1], p.padding[3], w);
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
                S::store(yb.add(yl.at(oy, ox)), act.apply(v));
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

impl StepOp for GapStep {
    fn describe(&self) -> String {
        "global avgpool".into()
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.zero_borders(self.y, self.batch);
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

/// Global average pooling of planar maps into 1x1 planar maps.
pub(crate) struct PGap {
    pub x: ValId,
    pub xl: PLay,
    pub y: ValId,
    pub yl: PLay,
    pub batch: usize,
}

isa_dispatch!(fn p_gap => p_gap_g(st: &PGap, ctx: &Ctx, t: usize));

impl StepOp for PGap {
    fn describe(&self) -> String {
        "global avgpool".into()
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        ctx.par(self.batch * self.xl.c, &|t, _| p_gap(ctx.isa, self, ctx, t))
    }
}

#[inline(always)]
unsafe fn p_gap_g<S: Simd>(st: &PGap, ctx: &Ctx, t: usize) {
    unsafe {
        let (xl, yl) = (&st.xl, &st.yl);
        let xb = (ctx.ptr(st.x) as *const f32).add(t * xl.plane());
        let mut acc = [S::zero(); 2];
        let hw = xl.hw();
        for (i, p) in (0..hw).step_by(L).enumerate() {
            acc[i & 1] = S::add(acc[i & 1], S::load_mask(xb.add(p), prefix(hw - p)));
        }
        *ctx.ptr(st.y).add(t * yl.plane()) = S::hsum(S::add(acc[0], acc[1])) / hw as f32;
    }
}

/// Max or average pooling on planar maps, one output pixel at a time (as the reference does).
pub(crate) struct PPool {
    x: ValId,
    xl: PLay,
    y: ValId,
    yl: PLay,
    p: Pool2d,
    max: bool,
    act: Act,
    batch: usize,
    /// Set where the small-plane kernel applies (vectorised windows, narrow maps).
    small: Option<SmallPlanes>,
    /// The vector kernel's load mask per (vector of an output row, window column): lanes whose
    /// input column lies inside the row (bits 2i for stride 2).
    masks: Vec<u32>,
}

impl PPool {
    #[allow(clippy::too_many_arguments)]
    pub fn new(x: ValId, xl: PLay, y: ValId, yl: PLay, p: Pool2d, max: bool, act: Act, batch: usize) -> PPool {
        let mut st = PPool {
            x,
            xl,
            y,
            yl,
            p,
            max,
            act,
            batch,
            small: None,
            masks: Vec::new(),
        };
        if st.vectorised() {
            if st.p.padding == [0; 4] {
                st.small = SmallPlanes::new(&st.p, &st.xl, &st.yl);
            }
            let (p, w, s) = (&st.p, st.xl.w as isize, st.p.stride[1]);
            for ox0 in (0..st.yl.w).step_by(L) {
                let cnt = (st.yl.w - ox0).min(L);
                for kx in 0..p.kernel[1] {
                    let c0 = (s * ox0) as isize - p.padding[1] as isize + kx as isize;
                    let inside = |i: usize| (0..w).contains(&(c0 + (s * i) as isize));
                    st.masks.push((0..cnt).filter(|&i| inside(i)).fold(0u32, |m, i| m | 1 << (s * i)));
                }
            }
        }
        st
    }

    /// Every window lies inside the (padded) input and columns step by 1 or 2: the vector
    /// kernel's case (VGG's and LeNet's pools, and the padded average pool that MLCNN's
    /// reordering puts before a conv). Padding only for an average pool that counts it: its
    /// zeros are what masked loads read there, and every divisor is the window's size.
    fn vectorised(&self) -> bool {
        let (p, xl, yl) = (&self.p, &self.xl, &self.yl);
        let [pt, pl, pb, pr] = p.padding;
        (p.padding == [0; 4] || !self.max && p.count_include_pad)
            && matches!(p.stride[1], 1 | 2)
            && yl.h > 0
            && yl.w > 0
            && (yl.h - 1) * p.stride[0] + p.kernel[0] <= xl.h + pt + pb
            && (yl.w - 1) * p.stride[1] + p.kernel[1] <= xl.w + pl + pr
    }
}

/// Small planes: `rows` output rows per vector, their windows gathered from the input rows
/// they cover (at most 32 floats, two loads) with one two-source permute per tap. Narrow maps
/// (VGG's last pools: 8x8, 4x4, 2x2) would otherwise fill few lanes of a vector per row.
pub(crate) struct SmallPlanes {
    rows: usize,
    /// Per tap, the input float (relative to the first row the vector reads) of each lane.
    picks: Vec<[u32; L]>,
}

impl SmallPlanes {
    fn new(p: &Pool2d, xl: &PLay, yl: &PLay) -> Option<SmallPlanes> {
        let [sy, sx] = p.stride;
        let span = |g: usize| ((g - 1) * sy + p.kernel[0]) * xl.w;
        if yl.w > L || span(1) > 2 * L {
            return None;
        }
        let rows = (1..=yl.h).take_while(|&g| g * yl.w <= L && span(g) <= 2 * L).last()?;
        let mut picks = Vec::new();
        for ky in 0..p.kernel[0] {
            for kx in 0..p.kernel[1] {
                picks.push(std::array::from_fn(|j| {
                    if j < rows * yl.w {
                        let (g, ox) = (j / yl.w, j % yl.w);
                        ((g * sy + ky) * xl.w + ox * sx + kx) as u32
                    } else {
                        0
                    }
                }));
            }
        }
        Some(SmallPlanes { rows, picks })
    }
}

isa_dispatch!(fn pool_small => pool_small_g(st: &PPool, small: &SmallPlanes, x: *const f32, y: *mut f32));

#[inline(always)]
unsafe fn pool_small_g<S: Simd>(st: &PPool, small: &SmallPlanes, x: *const f32, y: *mut f32) {
    unsafe {
        let (p, xl, yl) = (&st.p, &st.xl, &st.yl);
        let inv = 1.0 / (p.kernel[0] * p.kernel[1]) as f32;
        let act = ActV::<S>::new(st.act);
        for oy0 in (0..yl.h).step_by(small.rows) {
            let rows = (yl.h - oy0).min(small.rows);
            // the input rows these output rows read, inside the plane
            let (first, len) = (oy0 * p.stride[0] * xl.w, ((rows - 1) * p.stride[0] + p.kernel[0]) * xl.w);
            let base = x.add(first);
            let lo = S::load_mask(base, prefix(len.min(L)));
            let hi = S::load_mask(base.add(L), prefix(len.saturating_sub(L)));
            let mut acc = if st.max { S::splat(f32::NEG_INFINITY) } else { S::zero() };
            for pick in &small.picks {
                let v = S::pick2(lo, hi, pick);
                acc = if st.max { S::max(acc, v) } else { S::add(acc, v) };
            }
            if !st.max {
                acc = S::mul(acc, S::splat(inv));
            }
            S::store_mask(y.add(oy0 * yl.w), prefix(rows * yl.w), act.apply(acc));
        }
    }
}

isa_dispatch!(fn pool_plane => pool_plane_g(st: &PPool, x: *const f32, y: *mut f32));

/// One plane of a pool whose windows lie inside the input, 16 output pixels of a row at a time.
#[inline(always)]
unsafe fn pool_plane_g<S: Simd>(st: &PPool, x: *const f32, y: *mut f32) {
    unsafe {
        let (p, xl, yl) = (&st.p, &st.xl, &st.yl);
        let inv = 1.0 / (p.kernel[0] * p.kernel[1]) as f32;
        let act = ActV::<S>::new(st.act);
        let (pt, pl) = (p.padding[0] as isize, p.padding[1] as isize);
        let h = xl.h as isize;
        for oy in 0..yl.h {
            for ox0 in (0..yl.w).step_by(L) {
                let cnt = (yl.w - ox0).min(L);
                let mut acc = if st.max { S::splat(f32::NEG_INFINITY) } else { S::zero() };
                for ky in 0..p.kernel[0] {
                    let iy = (oy * p.stride[0]) as isize - pt + ky as isize;
                    if !(0..h).contains(&iy) {
                        // a padding row: zeros, for the average pools that have padding
                        continue;
                    }
                    let row = x.add(iy as usize * xl.w);
                    for kx in 0..p.kernel[1] {
                        // lane i reads column c0 + i (stride 1) or c0 + 2i (stride 2), masked to
                        // the row: padding columns read as zeros, and are never touched
                        let c0 = (p.stride[1] * ox0) as isize - pl + kx as isize;
                        let m = *st.masks.get_unchecked(ox0 / L * p.kernel[1] + kx);
                        let base = row.wrapping_offset(c0);
                        let v = if p.stride[1] == 1 {
                            S::load_mask(base, m as u16)
                        } else {
                            // the even lanes of the 32 floats at `base`
                            S::even(S::load_mask(base, m as u16), S::load_mask(base.wrapping_add(L), (m >> 16) as u16))
                        };
                        acc = if st.max { S::max(acc, v) } else { S::add(acc, v) };
                    }
                }
                if !st.max {
                    acc = S::mul(acc, S::splat(inv));
                }
                S::store_mask(y.add(oy * yl.w + ox0), prefix(cnt), act.apply(acc));
            }
        }
    }
}

impl StepOp for PPool {
    fn describe(&self) -> String {
        let rows = self.small.as_ref().map_or(String::new(), |s| format!(" [{} rows/vector]", s.rows));
        format!("{}{rows}", describe_pool(&self.p, self.max, self.act))
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        if self.vectorised() {
            let planes = self.batch * self.xl.c;
            // runs of planes: a task per plane costs more than a small plane's work
            let per = planes.div_ceil(64).max(1);
            return ctx.par(planes.div_ceil(per), &|t, _| {
                for plane in t * per..((t + 1) * per).min(planes) {
                    // SAFETY: the kernel reads inside the input plane and writes the output plane
                    unsafe {
                        let xb = (ctx.ptr(self.x) as *const f32).add(plane * self.xl.plane());
                        let yb = ctx.ptr(self.y).add(plane * self.yl.plane());
                        match &self.small {
                            Some(sp) => pool_small(ctx.isa, self, sp, xb, yb),
                            None => pool_plane(ctx.isa, self, xb, yb),
                        }
                    }
                }
            });
        }
        ctx.par(self.batch * self.xl.c, &|t, _| {
            let (xl, yl, p) = (&self.xl, &self.yl, &self.p);
            // SAFETY: reads inside the input plane, writes inside the output plane.
            unsafe {
                let xb = (ctx.ptr(self.x) as *const f32).add(t * xl.plane());
                let yb = ctx.ptr(self.y).add(t * yl.plane());
                let (h, w) = (xl.h as isize, xl.w as isize);
                for oy in 0..yl.h {
                    let (y0, y1, cy) = window_axis(oy, p.kernel[0], p.stride[0], p.padding[0], p.padding[2], h);
                    for ox in 0..yl.w {
                        let (x0, x1, cx) = window_axis(ox, p.kernel[1], p.stride[1], p.padding[1], p.padding[3], w);
                        let mut m = f32::NEG_INFINITY;
                        let mut s = 0f32;
                        for iy in y0..y1 {
                            let row = xb.add(iy as usize * xl.w);
                            for ix in x0..x1 {
                                let v = *row.add(ix as usize);
                                m = if v > m { v } else { m };
                                s += v;
                            }
                        }
                        let v = if self.max {
                            m
                        } else {
                            let cnt = (y1 - y0).max(0) * (x1 - x0).max(0);
                            let div = if p.count_include_pad { cy * cx } else { cnt };
                            s / div.max(1) as f32
                        };
                        *yb.add(oy * yl.w + ox) = self.act.apply(v);
                    }
                }
            }
        })
    }
}

/// One axis of a pool window: output `o`, window `k`, stride `s`, padding `lo` before and `hi`
/// after an input of `size`: the input range [start, end) the window covers, and how many of
/// its positions count for an average that counts padding (inside the input or its padding).
#[inline(always)]
fn window_axis(o: usize, k: usize, s: usize, lo: usize, hi: usize, size: isize) -> (isize, isize, isize) {
    let a = (o * s) as isize - lo as isize;
    (a.max(0), (a + k as isize).min(size), (size + hi as isize - a).clamp(0, k as isize))
}
