//! The integer PENNI layer (issue 13): a decomposed convolution whose input lies on an
//! activation grid, whose bases and coefficients lie on symmetric grids of at most 8 bits and
//! whose basis maps are quantized (`DecomposedConv2d::basis_quant`) runs both stages on the
//! integers, four 8-bit products per 32-bit lane and instruction (VNNI), on planar maps.
//!
//! - Codes: each input channel becomes a byte plane with its zero-padding border (the border
//!   holds the code of 0), `u = k - qmin`.
//! - Basis stage: the taps of a kernel row are taken four at a time. For 16 output pixels, one
//!   byte permute of a 128-byte window of the plane gives each lane the four input bytes of its
//!   taps `kx = 4q .. 4q+3` (the same permute serves every kernel row and every basis); one
//!   `vpdpbusd` per (basis, kernel row, quad) against the basis's four tap codes. A chunk whose
//!   pixels lie too far apart for one window (very wide rows of a stride-2 layer) is gathered
//!   lane by lane. Per basis j: `A = sum b u - u0 sum b` exactly (u0 the code of 0), then the
//!   basis-map code `clamp(round(f32(A) * s_x s_j / s_m) + zp_m, qmin_m, qmax_m)`.
//! - The codes of the C x d basis maps are packed four maps per 32-bit lane, maps i = c*d + j in
//!   order, so the combination stage reads four maps of 16 pixels in one load.
//! - Combination: per output channel, its non-zero quads of coefficients (four consecutive maps;
//!   a quad with any non-zero coefficient is kept whole), one `vpdpbusd` per quad and 16
//!   pixels. `S = sum a v - v0 sum a` exactly; the epilogue computes f32(S) * (s_m s_a bn) + bias
//!   (a multiply and an add, as the dense integer convolution), then residuals and activation.
//! - Tiles: four output vectors, taken in (image, vector) order across the batch, both stages
//!   per tile (its basis maps stay in L1).
//!
//! The result equals `penni_model::reference::int8_decomposed` exactly, on every ISA.

use penni_model::batchnorm::Affine;
use penni_model::{DecomposedConv2d, Node};

use crate::epilogue::{Act, ActV, MAX_RES, check_residuals, fold_bias};
use crate::error::EngineError;
use crate::layout::{PLay, prefix};
use crate::ops::conv::int8::{Codes, InputGrid, isa_name};
use crate::simd::{Dot8, IntIsa, L, dot8_dispatch};
use crate::step::{Ctx, StepOp, ValId};

/// Output vectors (of 16 pixels) per tile: the basis maps of a tile stay in L1 between stages.
const TILE: usize = 4;
/// Bytes a byte permute chooses from.
const WINDOW: usize = 128;
/// Bytes of slack after each code plane: a permute window reads WINDOW bytes.
const SLACK: usize = WINDOW;

/// The integer operands of a decomposed conv, when it has them (module docs): None otherwise.
pub(crate) struct IntPenni {
    pub xg: InputGrid,
    /// Grid of the basis maps.
    pub mg: InputGrid,
    pub base_scales: Vec<f32>,
    /// d x kh x kw codes.
    pub bases: Vec<i8>,
    pub coef_scales: Vec<f32>,
    /// (N * C/groups) x d codes, as the IR orders the coefficients.
    pub coefs: Vec<i8>,
}

impl IntPenni {
    pub fn of(node: &Node, c: &DecomposedConv2d, xg: InputGrid) -> Option<IntPenni> {
        let mg = InputGrid::of(c.basis_quant.as_ref()?)?;
        let conv = &c.conv;
        let (d, kk, cpg) = (c.num_bases, conv.kernel[0] * conv.kernel[1], conv.channels_per_group());
        // the sums of both stages must fit an i32 (products and zero-point corrections)
        let fits = |terms: usize| 2 * 255 * 127 * (terms as u64) < i32::MAX as u64;
        // (a basis accumulator per basis in registers: at most 16)
        if conv.dilation != [1, 1] || d > 16 || !fits(kk) || !fits(cpg * d) || conv.out_channels == 0 {
            return None;
        }
        let (base_scales, bases) = penni_model::grid::int8_channels(&node.params.get("bases")?.data, d)?;
        // |sum x factor| stays below 2^30, where every ISA converts a float to an i32 alike
        let largest_sum = 2.0 * 255.0 * 127.0 * kk as f64;
        if base_scales
            .iter()
            .any(|&s| largest_sum * penni_model::grid::basis_map_factor(xg.scale, s, mg.scale) as f64 >= (1u64 << 30) as f64)
        {
            return None;
        }
        let (coef_scales, coefs) = penni_model::grid::int8_channels(&node.params.get("coefficients")?.data, conv.out_channels)?;
        Some(IntPenni {
            xg,
            mg,
            base_scales,
            bases,
            coef_scales,
            coefs,
        })
    }
}

/// Where the 16 lanes of an output vector read their taps: a window start (byte offset of tap
/// (0, 0) of lane 0 in the padded code plane) and, per lane, the offset from it; `permute`
/// when every lane's four bytes lie within the 128-byte window.
struct Chunk {
    start: usize,
    offsets: [u32; 16],
    idx: [i32; 16],
    permute: bool,
    lanes: usize,
}

pub(crate) struct QDecompStep {
    x: ValId,
    y: ValId,
    res: Vec<ValId>,
    act: Act,
    xl: PLay,
    yl: PLay,
    d: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    /// Quads of taps per kernel row.
    nkq: usize,
    /// Padded code plane: rows of `pw` bytes, `pstride` bytes per channel.
    pad: [usize; 4],
    pw: usize,
    pstride: usize,
    chunks: Vec<Chunk>,
    /// Per (basis, kernel row, quad): four tap codes as an i32.
    taps: Vec<i32>,
    /// Per basis: -u0 * sum of its codes; and s_x s_j / s_m.
    corr1: Vec<i32>,
    f1: Vec<f32>,
    /// Basis-map codes: clamp(round(.) + off_m, 0, max_m) (k - qmin_m).
    off_m: i32,
    max_m: i32,
    /// Quads of basis maps.
    nq: usize,
    /// CSR over output channels of (quad, four coefficient codes).
    row_start: Vec<u32>,
    terms: Vec<(u32, i32)>,
    corr2: Vec<i32>,
    f2: Vec<f32>,
    bias: Vec<f32>,
    codes_of: Codes,
    batch: usize,
    threads: usize,
    macs: u64,
    isa: IntIsa,
    codes: Option<ValId>,
    maps: Option<ValId>,
}

impl QDecompStep {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: &Node,
        c: &DecomposedConv2d,
        ip: &IntPenni,
        b: Option<&[f32]>,
        fold: &Affine,
        x: ValId,
        xl: PLay,
        y: ValId,
        yl: PLay,
        res: Vec<ValId>,
        act: Act,
        batch: usize,
        threads: usize,
        isa: IntIsa,
    ) -> Result<QDecompStep, EngineError> {
        check_residuals(&node.name, res.len())?;
        let conv = &c.conv;
        let (d, [kh, kw], [sy, sx]) = (c.num_bases, conv.kernel, conv.stride);
        let nkq = kw.div_ceil(4);
        let pad = conv.padding;
        let (ph, pw) = (xl.h + pad[0] + pad[2], xl.w + pad[1] + pad[3] + 4 * nkq);
        let pstride = ph * pw + SLACK;
        let hw = yl.hw();
        let mut chunks = Vec::with_capacity(hw.div_ceil(L));
        for q in 0..hw.div_ceil(L) {
            let lanes = L.min(hw - q * L);
            let at = |l: usize| {
                let p = q * L + l.min(lanes - 1);
                (p / yl.w) * sy * pw + (p % yl.w) * sx
            };
            let start = at(0);
            let offsets: [u32; 16] = std::array::from_fn(|l| (at(l) - start) as u32);
            let permute = offsets.iter().all(|&o| o as usize + 4 <= WINDOW);
            let idx = std::array::from_fn(|l| {
                i32::from_le_bytes(std::array::from_fn(|k| if permute { (offsets[l] as usize + k) as u8 } else { 0 }))
            });
            chunks.push(Chunk {
                start,
                offsets,
                idx,
                permute,
                lanes,
            });
        }
        let u0 = ip.xg.zero_point - ip.xg.qmin;
        let mut taps = Vec::with_capacity(d * kh * nkq);
        let (mut corr1, mut f1) = (Vec::new(), Vec::new());
        for j in 0..d {
            let bj = &ip.bases[j * kh * kw..(j + 1) * kh * kw];
            for ky in 0..kh {
                for kq in 0..nkq {
                    let quad: [u8; 4] = std::array::from_fn(|k| {
                        let kx = 4 * kq + k;
                        if kx < kw { bj[ky * kw + kx] as u8 } else { 0 }
                    });
                    taps.push(i32::from_le_bytes(quad));
                }
            }
            let sum: i32 = bj.iter().map(|&v| v as i32).sum();
            corr1.push(-u0 * sum);
            f1.push(penni_model::grid::basis_map_factor(ip.xg.scale, ip.base_scales[j], ip.mg.scale));
        }
        let (n_out, cpg) = (conv.out_channels, conv.channels_per_group());
        let og = n_out / conv.groups.max(1);
        let nq = (xl.c * d).div_ceil(4);
        let v0 = ip.mg.zero_point - ip.mg.qmin;
        let (mut row_start, mut terms) = (vec![0u32], Vec::new());
        let (mut corr2, mut f2, mut bias) = (Vec::new(), Vec::new(), Vec::new());
        for o in 0..n_out {
            // maps of this output's group: input channels g*cpg.., map i = c*d + j
            let first = (o / og) * cpg * d;
            let code = |i: usize| -> i8 {
                if i < first || i >= first + cpg * d {
                    0
                } else {
                    ip.coefs[o * cpg * d + (i - first)]
                }
            };
            for g in first / 4..(first + cpg * d).div_ceil(4) {
                let quad: [i8; 4] = std::array::from_fn(|k| code(4 * g + k));
                if quad != [0; 4] {
                    terms.push((g as u32, i32::from_le_bytes(quad.map(|v| v as u8))));
                }
            }
            row_start.push(terms.len() as u32);
            let sum: i32 = ip.coefs[o * cpg * d..(o + 1) * cpg * d].iter().map(|&v| v as i32).sum();
            corr2.push(-v0 * sum);
            f2.push(penni_model::grid::int_output_factor(ip.mg.scale, ip.coef_scales[o], fold.scale[o]));
            bias.push(fold_bias(fold, b, o));
        }
        let nnz = ip.coefs.iter().filter(|&&v| v != 0).count();
        let macs = (hw * batch) as u64 * (xl.c * d * kh * kw + nnz) as u64;
        Ok(QDecompStep {
            x,
            y,
            res,
            act,
            xl,
            yl,
            d,
            kernel: conv.kernel,
            stride: conv.stride,
            nkq,
            pad,
            pw,
            pstride,
            chunks,
            taps,
            corr1,
            f1,
            off_m: v0,
            max_m: ip.mg.qmax - ip.mg.qmin,
            nq,
            row_start,
            terms,
            corr2,
            f2,
            bias,
            codes_of: Codes::of(&ip.xg),
            batch,
            threads,
            macs,
            isa,
            codes: None,
            maps: None,
        })
    }

    /// Tiles of TILE output vectors, taken in (image, vector) order across the batch, so that
    /// small maps fill them too.
    fn tiles(&self) -> usize {
        (self.batch * self.chunks.len()).div_ceil(TILE)
    }

    /// Bytes of one worker's basis maps of a tile.
    fn worker_bytes(&self) -> usize {
        self.nq * TILE * 64
    }
}

impl StepOp for QDecompStep {
    fn describe(&self) -> String {
        let isa = isa_name(self.isa);
        let gathered = self.chunks.iter().filter(|c| !c.permute).count();
        format!(
            "penni {}x{} s{} {}->{} d{} int8 {isa} [{} map quads, {} coefficient quads{}]",
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.xl.c,
            self.yl.c,
            self.d,
            self.nq,
            self.terms.len(),
            if gathered > 0 {
                format!(", {gathered} gathered vectors")
            } else {
                String::new()
            }
        )
    }

    fn macs(&self) -> u64 {
        self.macs
    }

    fn f32_equivalent_macs(&self) -> u64 {
        match self.isa {
            IntIsa::Vnni => self.macs / 4,
            IntIsa::Fallback => self.macs,
        }
    }

    fn weight_floats(&self) -> usize {
        self.taps.len() + self.corr1.len() + self.f1.len() + self.row_start.len() + 2 * self.terms.len() + 3 * self.f2.len()
    }

    fn scratch_floats(&self) -> Vec<usize> {
        vec![
            (self.batch * self.xl.c * self.pstride).div_ceil(4) + L,
            (self.threads.max(1) * self.worker_bytes()).div_ceil(4) + L,
        ]
    }

    fn set_scratch(&mut self, slot: usize, v: ValId) {
        if slot == 0 {
            self.codes = Some(v);
        } else {
            self.maps = Some(v);
        }
    }

    fn exec(&self, ctx: &Ctx) -> Result<(), EngineError> {
        let (Some(codes), Some(maps)) = (self.codes, self.maps) else {
            return Err(EngineError::Internal("integer PENNI step without its scratch".into()));
        };
        ctx.par(self.batch * self.xl.c, &|t, _| {
            input_codes(self.isa, self, ctx, codes, t);
        })?;
        ctx.par(self.tiles(), &|t, w| {
            run_tile(self.isa, self, ctx, codes, maps, t, w);
        })
    }
}

dot8_dispatch!(fn input_codes => input_codes_g(st: &QDecompStep, ctx: &Ctx, codes: ValId, plane: usize));
dot8_dispatch!(fn run_tile => tile_g(st: &QDecompStep, ctx: &Ctx, codes: ValId, maps: ValId, tile: usize, worker: usize));

/// The padded code plane of input plane `plane` (image * C + channel): the code of 0
/// everywhere, then the interior u = clamp(round(x / s) + zp, qmin, qmax) - qmin row by row (a
/// row's last vector runs into the border or the next row with the code of 0, which masked
/// lanes load as, and the next row is written after).
#[inline(always)]
unsafe fn input_codes_g<D: Dot8>(st: &QDecompStep, ctx: &Ctx, codes: ValId, plane: usize) {
    unsafe {
        let x = (ctx.ptr(st.x) as *const f32).add(plane * st.xl.plane());
        let dst = (ctx.ptr(codes) as *mut u8).add(plane * st.pstride);
        std::ptr::write_bytes(dst, st.codes_of.zero_code(), st.pstride);
        let (w, pw) = (st.xl.w, st.pw);
        for r in 0..st.xl.h {
            let row = dst.add((r + st.pad[0]) * pw + st.pad[1]);
            let mut c0 = 0;
            while c0 < w {
                st.codes_of.store::<D>(row.add(c0), D::load_mask(x.add(r * w + c0), prefix(w - c0)));
                c0 += L;
            }
        }
    }
}

/// Both stages for the output vectors of tile `tile` of image `img`, compiled for the common
/// numbers of tap quads per kernel (KQ = kernel rows x quads per row; 0: any, slower).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_g<D: Dot8>(st: &QDecompStep, ctx: &Ctx, codes: ValId, maps: ValId, tile: usize, worker: usize) {
    unsafe {
        let first = tile * TILE;
        let real = TILE.min(st.batch * st.chunks.len() - first);
        if real == TILE {
            tile_kq::<D, TILE>(st, ctx, codes, maps, first, worker);
        } else {
            // a last, partial tile: its vectors one at a time (at batch 1 a small map is one
            // vector, which a full tile would compute four times over)
            for v in first..first + real {
                tile_kq::<D, 1>(st, ctx, codes, maps, v, worker);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_kq<D: Dot8, const T: usize>(st: &QDecompStep, ctx: &Ctx, codes: ValId, maps: ValId, first: usize, worker: usize) {
    unsafe {
        match st.kernel[0] * st.nkq {
            1 => tile_k::<D, 1, T>(st, ctx, codes, maps, first, worker),
            2 => tile_k::<D, 2, T>(st, ctx, codes, maps, first, worker),
            3 => tile_k::<D, 3, T>(st, ctx, codes, maps, first, worker),
            4 => tile_k::<D, 4, T>(st, ctx, codes, maps, first, worker),
            5 => tile_k::<D, 5, T>(st, ctx, codes, maps, first, worker),
            10 => tile_k::<D, 10, T>(st, ctx, codes, maps, first, worker),
            _ => tile_k::<D, 0, T>(st, ctx, codes, maps, first, worker),
        }
    }
}

/// The four input bytes of every lane's taps 4q..4q+3 of one kernel row, from `window` (`idx`:
/// the chunk's permute indices, loaded once per tile).
#[inline(always)]
unsafe fn tap_quad<D: Dot8>(window: *const u8, ch: &Chunk, idx: D::I) -> D::I {
    unsafe {
        if ch.permute {
            D::permute_bytes(window, idx)
        } else {
            let mut lanes = [0i32; 16];
            for (lane, &o) in lanes.iter_mut().zip(&ch.offsets) {
                *lane = (window.add(o as usize) as *const i32).read_unaligned();
            }
            D::iload(lanes.as_ptr() as *const i8)
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_k<D: Dot8, const KQ: usize, const T: usize>(
    st: &QDecompStep,
    ctx: &Ctx,
    codes: ValId,
    maps: ValId,
    first: usize,
    worker: usize,
) {
    unsafe {
        // the tile's vectors first..first + T, each (image, vector of the map)
        let nchunk = st.chunks.len();
        let mut chunks = [&st.chunks[0]; T];
        let mut img = [0usize; T];
        let mut vec_at = [0usize; T];
        for t in 0..T {
            (img[t], vec_at[t]) = ((first + t) / nchunk, (first + t) % nchunk);
            chunks[t] = &st.chunks[vec_at[t]];
        }
        let m = (ctx.ptr(maps) as *mut u8).add(worker * st.worker_bytes());
        let (d, nkq, pw) = (st.d, st.nkq, st.pw);
        let kq = st.kernel[0] * nkq;
        let quad_at = |q: usize| (q / nkq) * pw + 4 * (q % nkq); // (plain arithmetic: no intrinsics)
        let codes = ctx.ptr(codes) as *const u8;
        let mut src = [codes; T];
        for t in 0..T {
            src[t] = codes.add(img[t] * st.xl.c * st.pstride + chunks[t].start);
        }
        let (off, max_m) = (D::isplat(st.off_m), D::isplat(st.max_m));
        // (8-bit maps: the packing saturates at 255 already)
        let clamp_high = st.max_m < 255;
        // the basis stage, channel by channel: the tap quads of the tile's vectors once, then
        // every basis on all of them (four independent sums); map i = c * d + j goes to byte
        // i % 4 of quad i / 4, stored once its four maps are there
        let nmaps = st.xl.c * d;
        let mut quad = [[D::izero(); 4]; T];
        let mut idx = [D::izero(); T];
        for (v, ch) in idx.iter_mut().zip(chunks) {
            *v = D::iload(ch.idx.as_ptr() as *const i8);
        }
        for c in 0..st.xl.c {
            let plane = c * st.pstride;
            let mut x = [[D::izero(); KQ]; T];
            if KQ > 0 {
                for t in 0..T {
                    for (q, x) in x[t].iter_mut().enumerate() {
                        *x = tap_quad::<D>(src[t].add(plane + quad_at(q)), chunks[t], idx[t]);
                    }
                }
            }
            for j in 0..d {
                let taps = &st.taps[j * kq..(j + 1) * kq];
                let mut acc = [D::isplat(st.corr1[j]); T];
                if KQ > 0 {
                    for q in 0..KQ {
                        for t in 0..T {
                            acc[t] = D::dot4_lanes(acc[t], x[t][q], taps[q]);
                        }
                    }
                } else {
                    for (q, &w) in taps.iter().enumerate() {
                        for t in 0..T {
                            acc[t] = D::dot4_lanes(acc[t], tap_quad::<D>(src[t].add(plane + quad_at(q)), chunks[t], idx[t]), w);
                        }
                    }
                }
                let (i, f) = (c * d + j, D::splat(st.f1[j]));
                for t in 0..T {
                    let k = D::iadd(D::round_to_i32(D::mul(D::to_f32(acc[t]), f)), off);
                    quad[t][i % 4] = if clamp_high { D::imin(k, max_m) } else { k };
                }
                if i % 4 == 3 || i + 1 == nmaps {
                    // (a last quad's unused maps hold stale codes: they have no coefficients)
                    for (t, q) in quad.iter().enumerate() {
                        D::istore(m.add(((i / 4) * T + t) * 64), D::pack_quads(q[0], q[1], q[2], q[3]));
                    }
                }
            }
        }
        // the combination, output channel by output channel
        let act = ActV::<D>::new(st.act);
        let (yb, plane) = (ctx.ptr(st.y), st.yl.plane());
        let mut out = [0usize; T];
        for t in 0..T {
            out[t] = img[t] * st.yl.img() + vec_at[t] * L;
        }
        let mut res = [std::ptr::null::<f32>(); MAX_RES];
        for (r, &v) in res.iter_mut().zip(&st.res) {
            *r = ctx.ptr(v) as *const f32;
        }
        let res = &res[..st.res.len()];
        for o in 0..st.yl.c {
            let mut acc = [D::isplat(st.corr2[o]); T];
            for &(g, w) in &st.terms[st.row_start[o] as usize..st.row_start[o + 1] as usize] {
                let mg = m.add(g as usize * T * 64);
                for (t, acc) in acc.iter_mut().enumerate() {
                    *acc = D::dot4_lanes(*acc, D::iload(mg.add(t * 64) as *const i8), w);
                }
            }
            let (f, b) = (D::splat(st.f2[o]), D::splat(st.bias[o]));
            for (t, ch) in chunks.iter().enumerate() {
                let at = out[t] + o * plane;
                let mut v = act.pre(D::add(D::mul(D::to_f32(acc[t]), f), b));
                for r in res {
                    v = D::add(v, D::load(r.add(at)));
                }
                D::store_mask(yb.add(at), prefix(ch.lanes), act.apply(v));
            }
        }
    }
}
