//! 2-D convolution forward and backward on NCHW f32 slices: one GEMM per image and group, on
//! the input as an im2col matrix (virtual at stride 1, see `Lowering`).
//!
//! Work is split by image. The weight gradient sums over images, so it is accumulated into a
//! fixed number of partial sums (each over a fixed run of images, in order) that are then added
//! in order: the result does not depend on the thread count or on scheduling, which the
//! trainer's exact-resume guarantee needs.

use rayon::prelude::*;

use super::gemm::{Mat, matmul};

/// The geometry of one convolution. Padding may be asymmetric: only the leading pads enter the
/// index arithmetic, the trailing ones are implied by the output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub batch: usize,
    pub in_channels: usize,
    pub in_hw: [usize; 2],
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Top and left padding.
    pub pad_begin: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub out_hw: [usize; 2],
}

impl ConvGeom {
    fn cin_g(&self) -> usize {
        self.in_channels / self.groups
    }
    fn cout_g(&self) -> usize {
        self.out_channels / self.groups
    }
    /// Rows of the im2col matrix of one group: input channels x taps.
    fn col_rows(&self) -> usize {
        self.cin_g() * self.kernel[0] * self.kernel[1]
    }
    fn out_pixels(&self) -> usize {
        self.out_hw[0] * self.out_hw[1]
    }
    fn in_pixels(&self) -> usize {
        self.in_hw[0] * self.in_hw[1]
    }
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.col_rows()
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_pixels()
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_pixels()
    }
    /// A 1x1, stride-1, unpadded convolution reads its input as the im2col matrix itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.pad_begin == [0, 0] && self.out_hw == self.in_hw
    }

    /// For output coordinate range 0..out along one axis, tap `k`: the first and one-past-last
    /// output index whose input index `o * stride + k * dilation - pad` lies inside 0..len.
    fn valid(out: usize, len: usize, stride: usize, off: isize) -> (usize, usize) {
        // input = o * stride + off, need 0 <= input < len
        let lo = if off >= 0 { 0 } else { (-off as usize).div_ceil(stride) };
        let hi = if (len as isize) <= off {
            0
        } else {
            ((len as isize - off) as usize).div_ceil(stride)
        };
        (lo.min(out), hi.min(out).max(lo.min(out)))
    }

    fn tap_offsets(&self, ky: usize, kx: usize) -> (isize, isize) {
        (
            (ky * self.dilation[0]) as isize - self.pad_begin[0] as isize,
            (kx * self.dilation[1]) as isize - self.pad_begin[1] as isize,
        )
    }
}

/// How a convolution reads its input, per image and group. The input planes are copied into
/// a zero-bordered buffer (its borders stay zero from one image to the next). At stride 1 the
/// im2col matrix is never built: its row for input channel ci and tap (ky, kx) is the padded
/// plane shifted by that tap, read through an offset table, and the output comes out in rows
/// of the padded width (the columns past the output width are dropped when it is copied out).
/// At other strides the im2col matrix is gathered from the padded planes.
struct Lowering {
    g: ConvGeom,
    /// Padded plane height and width: the rows and columns that some output reads.
    hp: usize,
    wp: usize,
    /// Stride 1: offsets of the virtual im2col rows in the padded planes.
    direct: Option<Vec<usize>>,
}

/// Per-task buffers of a [`Lowering`].
struct Scratch {
    padded: Vec<f32>,
    col: Vec<f32>,
    out: Vec<f32>,
}

impl Lowering {
    fn new(g: &ConvGeom) -> Self {
        let hp = (g.out_hw[0] - 1) * g.stride[0] + (g.kernel[0] - 1) * g.dilation[0] + 1;
        let wp = (g.out_hw[1] - 1) * g.stride[1] + (g.kernel[1] - 1) * g.dilation[1] + 1;
        let direct = (g.stride == [1, 1] && !g.is_pointwise()).then(|| {
            let mut offsets = Vec::with_capacity(g.col_rows());
            for ci in 0..g.cin_g() {
                for ky in 0..g.kernel[0] {
                    for kx in 0..g.kernel[1] {
                        offsets.push(ci * hp * wp + ky * g.dilation[0] * wp + kx * g.dilation[1]);
                    }
                }
            }
            offsets
        });
        Self { g: *g, hp, wp, direct }
    }

    /// Columns of the input matrix: output pixels, in rows of the padded width when direct.
    fn cols(&self) -> usize {
        let [ho, wo] = self.g.out_hw;
        if self.direct.is_some() { (ho - 1) * self.wp + wo } else { ho * wo }
    }

    fn scratch(&self) -> Scratch {
        let g = &self.g;
        let pointwise = g.is_pointwise();
        let direct = self.direct.is_some();
        Scratch {
            padded: vec![0.0; if pointwise { 0 } else { g.cin_g() * self.hp * self.wp }],
            col: vec![0.0; if pointwise || direct { 0 } else { g.col_rows() * g.out_pixels() }],
            out: vec![0.0; if direct { g.cout_g() * self.cols() } else { 0 }],
        }
    }

    /// The input matrix [cin_g * kh * kw] x [cols] of one group's planes `x`.
    fn input<'a>(&'a self, x: &'a [f32], padded: &'a mut [f32], col: &'a mut [f32]) -> Mat<'a> {
        let g = &self.g;
        if g.is_pointwise() {
            return Mat::row_major(x, g.out_pixels());
        }
        let [h, w] = g.in_hw;
        let (hp, wp) = (self.hp, self.wp);
        let [pt, pl] = g.pad_begin;
        // the input rows and columns that land inside the padded plane
        let rows = h.min(hp.saturating_sub(pt));
        let cols = w.min(wp.saturating_sub(pl));
        for ci in 0..g.cin_g() {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            let dst = &mut padded[ci * hp * wp..(ci + 1) * hp * wp];
            for iy in 0..rows {
                dst[(iy + pt) * wp + pl..][..cols].copy_from_slice(&plane[iy * w..][..cols]);
            }
        }
        if let Some(offsets) = &self.direct {
            return Mat::indirect(padded, offsets);
        }
        let [ho, wo] = g.out_hw;
        let p = ho * wo;
        let mut row = 0;
        for ci in 0..g.cin_g() {
            let plane = &padded[ci * hp * wp..(ci + 1) * hp * wp];
            for ky in 0..g.kernel[0] {
                for kx in 0..g.kernel[1] {
                    let dst = &mut col[row * p..(row + 1) * p];
                    for oy in 0..ho {
                        let src = &plane[(oy * g.stride[0] + ky * g.dilation[0]) * wp + kx * g.dilation[1]..];
                        for (ox, v) in dst[oy * wo..(oy + 1) * wo].iter_mut().enumerate() {
                            *v = src[ox * g.stride[1]];
                        }
                    }
                    row += 1;
                }
            }
        }
        Mat::row_major(col, p)
    }

    /// y (one image) = conv(x (one image), w).
    fn forward_image(&self, w: &[f32], x: &[f32], y: &mut [f32], s: &mut Scratch) {
        let g = &self.g;
        let (kg, p, cog) = (g.col_rows(), g.out_pixels(), g.cout_g());
        let [ho, wo] = g.out_hw;
        let cols = self.cols();
        let plane_in = g.cin_g() * g.in_pixels();
        for grp in 0..g.groups {
            let xg = &x[grp * plane_in..(grp + 1) * plane_in];
            let wg = Mat::row_major(&w[grp * cog * kg..(grp + 1) * cog * kg], kg);
            let yg = &mut y[grp * cog * p..(grp + 1) * cog * p];
            let b = self.input(xg, &mut s.padded, &mut s.col);
            if cols == p {
                matmul(Mat::rows(yg, p), false, wg, b, cog, p, kg);
            } else {
                matmul(Mat::rows(&mut s.out, cols), false, wg, b, cog, cols, kg);
                for co in 0..cog {
                    for oy in 0..ho {
                        yg[co * p + oy * wo..][..wo].copy_from_slice(&s.out[co * cols + oy * self.wp..][..wo]);
                    }
                }
            }
        }
    }

    /// The transposed output gradient of one group, [cols] x [cog], with zero rows for the
    /// columns past the output width (so that they add nothing to the weight gradient).
    fn output_grad_t(&self, dy: &[f32], dy_t: &mut [f32]) {
        let g = &self.g;
        let (cog, p) = (g.cout_g(), g.out_pixels());
        let cols = self.cols();
        if cols == p {
            transpose(dy, cog, p, dy_t);
            return;
        }
        let [ho, wo] = g.out_hw;
        dy_t.fill(0.0);
        for oy in 0..ho {
            for ox in 0..wo {
                let j = oy * self.wp + ox;
                for co in 0..cog {
                    dy_t[j * cog + co] = dy[co * p + oy * wo + ox];
                }
            }
        }
    }
}

/// Adds `col` back into the `cin_g` planes of `dx` (the adjoint of building the im2col matrix).
fn col2im(g: &ConvGeom, col: &[f32], dx: &mut [f32]) {
    let [ho, wo] = g.out_hw;
    let [h, w] = g.in_hw;
    let p = ho * wo;
    let mut row = 0;
    for ci in 0..g.cin_g() {
        let plane = &mut dx[ci * h * w..(ci + 1) * h * w];
        for ky in 0..g.kernel[0] {
            for kx in 0..g.kernel[1] {
                let src = &col[row * p..(row + 1) * p];
                let (oy_off, ox_off) = g.tap_offsets(ky, kx);
                let (y0, y1) = ConvGeom::valid(ho, h, g.stride[0], oy_off);
                let (x0, x1) = ConvGeom::valid(wo, w, g.stride[1], ox_off);
                for oy in y0..y1 {
                    let iy = ((oy * g.stride[0]) as isize + oy_off) as usize;
                    let d = &mut plane[iy * w..(iy + 1) * w];
                    let s = &src[oy * wo..(oy + 1) * wo];
                    for ox in x0..x1 {
                        d[((ox * g.stride[1]) as isize + ox_off) as usize] += s[ox];
                    }
                }
                row += 1;
            }
        }
    }
}

/// The input gradient of a stride-1 convolution is a stride-1 convolution of the output
/// gradient with the flipped, transposed kernel: its geometry and weights, where the padding
/// allows it (each leading pad at most the kernel's reach).
fn transposed(g: &ConvGeom, w: &[f32]) -> Option<(ConvGeom, Vec<f32>)> {
    let reach = [(g.kernel[0] - 1) * g.dilation[0], (g.kernel[1] - 1) * g.dilation[1]];
    if g.stride != [1, 1] || g.pad_begin[0] > reach[0] || g.pad_begin[1] > reach[1] || g.is_pointwise() {
        return None;
    }
    let t = ConvGeom {
        in_channels: g.out_channels,
        in_hw: g.out_hw,
        out_channels: g.in_channels,
        pad_begin: [reach[0] - g.pad_begin[0], reach[1] - g.pad_begin[1]],
        out_hw: g.in_hw,
        ..*g
    };
    let (cig, cog, [kh, kw]) = (g.cin_g(), g.cout_g(), g.kernel);
    let mut wt = vec![0.0f32; w.len()];
    for grp in 0..g.groups {
        for co in 0..cog {
            for ci in 0..cig {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let src = (((grp * cog + co) * cig + ci) * kh + ky) * kw + kx;
                        let dst = (((grp * cig + ci) * cog + co) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx);
                        wt[dst] = w[src];
                    }
                }
            }
        }
    }
    Some((t, wt))
}

/// y = conv(x, w) + bias. `w` is [out_channels, cin_g, kh, kw].
pub fn conv2d_forward(g: &ConvGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(x.len(), g.input_len(), "conv input length");
    assert_eq!(w.len(), g.weight_len(), "conv weight length");
    let mut y = vec![0.0f32; g.output_len()];
    if g.output_len() == 0 {
        return y;
    }
    let lowering = Lowering::new(g);
    let p = g.out_pixels();
    let img_in = g.in_channels * g.in_pixels();
    y.par_chunks_mut(g.out_channels * p).enumerate().for_each_init(
        || lowering.scratch(),
        |s, (b, yb)| {
            lowering.forward_image(w, &x[b * img_in..(b + 1) * img_in], yb, s);
            if let Some(bias) = bias {
                for (co, plane) in yb.chunks_mut(p).enumerate() {
                    plane.iter_mut().for_each(|v| *v += bias[co]);
                }
            }
        },
    );
    y
}

/// Gradients of [`conv2d_forward`]: (dx if `want_dx`, dw, dbias if `want_bias`).
pub fn conv2d_backward(g: &ConvGeom, x: &[f32], w: &[f32], dy: &[f32], want_dx: bool, want_bias: bool) -> ConvGrads {
    assert_eq!(x.len(), g.input_len(), "conv input length");
    assert_eq!(w.len(), g.weight_len(), "conv weight length");
    assert_eq!(dy.len(), g.output_len(), "conv output-gradient length");
    if g.output_len() == 0 || g.input_len() == 0 {
        return ConvGrads {
            dx: want_dx.then(|| vec![0.0; g.input_len()]),
            dw: vec![0.0; g.weight_len()],
            dbias: want_bias.then(|| vec![0.0; g.out_channels]),
        };
    }
    let (kg, p, cog) = (g.col_rows(), g.out_pixels(), g.cout_g());
    let img_in = g.in_channels * g.in_pixels();
    let img_out = g.out_channels * p;
    let lowering = Lowering::new(g);
    let cols = lowering.cols();
    // The input gradient as a convolution of dY where it can be, else im2col's adjoint.
    let by_conv = if want_dx { transposed(g, w) } else { None };
    let lowering_t = by_conv.as_ref().map(|(t, wt)| (Lowering::new(t), wt));
    let per_part = g.batch.div_ceil(g.batch.clamp(1, WEIGHT_GRAD_PARTS)).max(1);
    let parts = g.batch.div_ceil(per_part).max(1);
    let mut dx = if want_dx { vec![0.0f32; g.input_len()] } else { vec![] };
    // Each part: its images' input gradients and one partial weight gradient (transposed).
    let mut dw_parts = vec![0.0f32; parts * g.weight_len()];
    let dx_chunks: Vec<&mut [f32]> = if want_dx {
        dx.chunks_mut(per_part * img_in).collect()
    } else {
        (0..parts).map(|_| <&mut [f32]>::default()).collect()
    };
    dw_parts
        .par_chunks_mut(g.weight_len())
        .zip(dx_chunks)
        .enumerate()
        .for_each(|(part, (dw_t, dx_part))| {
            let mut s = lowering.scratch();
            let mut s_t = lowering_t.as_ref().map(|(l, _)| l.scratch());
            let col2im_path = want_dx && lowering_t.is_none();
            let mut dcol = vec![0.0f32; if col2im_path && !g.is_pointwise() { kg * p } else { 0 }];
            let mut dy_t = vec![0.0f32; cols * cog];
            let first = part * per_part;
            for b in first..(first + per_part).min(g.batch) {
                let xb = &x[b * img_in..(b + 1) * img_in];
                let dyb = &dy[b * img_out..(b + 1) * img_out];
                let dxb = if want_dx {
                    &mut dx_part[(b - first) * img_in..(b - first + 1) * img_in]
                } else {
                    &mut [][..]
                };
                for grp in 0..g.groups {
                    let xs = grp * g.cin_g() * g.in_pixels()..(grp + 1) * g.cin_g() * g.in_pixels();
                    let dyg = &dyb[grp * cog * p..(grp + 1) * cog * p];
                    lowering.output_grad_t(dyg, &mut dy_t);
                    let a = lowering.input(&xb[xs.clone()], &mut s.padded, &mut s.col);
                    // dW_g^T [kg x cog] += input matrix [kg x cols] * dY_g^T [cols x cog]
                    let wr = grp * cog * kg..(grp + 1) * cog * kg;
                    matmul(
                        Mat::rows(&mut dw_t[wr.clone()], cog),
                        true,
                        a,
                        Mat::row_major(&dy_t, cog),
                        kg,
                        cog,
                        cols,
                    );
                    if col2im_path {
                        // dcol [kg x p] = W_g^T [kg x cog] * dY_g [cog x p]
                        let wt = Mat::col_major(&w[wr], kg);
                        if g.is_pointwise() {
                            matmul(Mat::rows(&mut dxb[xs], p), false, wt, Mat::row_major(dyg, p), kg, p, cog);
                        } else {
                            matmul(Mat::rows(&mut dcol, p), false, wt, Mat::row_major(dyg, p), kg, p, cog);
                            col2im(g, &dcol, &mut dxb[xs]);
                        }
                    }
                }
                if let (Some((lt, wt)), Some(st)) = (&lowering_t, &mut s_t) {
                    lt.forward_image(wt, dyb, dxb, st);
                }
            }
        });
    // Sum the parts in order, and transpose each group's [kg x cog] back to [cog x kg].
    let mut dw = vec![0.0f32; g.weight_len()];
    let mut sum_t = vec![0.0f32; g.weight_len()];
    for part in dw_parts.chunks(g.weight_len()) {
        sum_t.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    for grp in 0..g.groups {
        let r = grp * cog * kg..(grp + 1) * cog * kg;
        transpose(&sum_t[r.clone()], kg, cog, &mut dw[r]);
    }
    let dbias = want_bias.then(|| {
        let mut db = vec![0.0f64; g.out_channels];
        for b in 0..g.batch {
            for co in 0..g.out_channels {
                let s = (b * g.out_channels + co) * p;
                db[co] += dy[s..s + p].iter().map(|&v| v as f64).sum::<f64>();
            }
        }
        db.into_iter().map(|v| v as f32).collect()
    });
    ConvGrads {
        dx: want_dx.then_some(dx),
        dw,
        dbias,
    }
}

/// `dst` [cols x rows] = `src` [rows x cols]^T.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// How many partial weight gradients a backward pass keeps (more parts, more parallelism; each
/// costs one weight-sized buffer).
const WEIGHT_GRAD_PARTS: usize = 8;

pub struct ConvGrads {
    pub dx: Option<Vec<f32>>,
    pub dw: Vec<f32>,
    pub dbias: Option<Vec<f32>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition of the convolution, for checking.
    fn naive(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0f32; g.output_len()];
        let (cig, cog) = (g.cin_g(), g.cout_g());
        for b in 0..g.batch {
            for co in 0..g.out_channels {
                let grp = co / cog;
                for oy in 0..g.out_hw[0] {
                    for ox in 0..g.out_hw[1] {
                        let mut s = 0.0f64;
                        for ci in 0..cig {
                            for ky in 0..g.kernel[0] {
                                for kx in 0..g.kernel[1] {
                                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad_begin[0] as isize;
                                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pad_begin[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.in_hw[0] as isize || ix >= g.in_hw[1] as isize {
                                        continue;
                                    }
                                    let xv =
                                        x[((b * g.in_channels + grp * cig + ci) * g.in_hw[0] + iy as usize) * g.in_hw[1] + ix as usize];
                                    let wv = w[((co * cig + ci) * g.kernel[0] + ky) * g.kernel[1] + kx];
                                    s += (xv * wv) as f64;
                                }
                            }
                        }
                        y[((b * g.out_channels + co) * g.out_hw[0] + oy) * g.out_hw[1] + ox] = s as f32;
                    }
                }
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn geoms() -> Vec<ConvGeom> {
        let mk = |batch, cin, hw: [usize; 2], cout, k: [usize; 2], stride: [usize; 2], pad: [usize; 4], dil: [usize; 2], groups| {
            let out = |i: usize| (hw[i] + pad[i] + pad[i + 2] - dil[i] * (k[i] - 1) - 1) / stride[i] + 1;
            ConvGeom {
                batch,
                in_channels: cin,
                in_hw: hw,
                out_channels: cout,
                kernel: k,
                stride,
                pad_begin: [pad[0], pad[1]],
                dilation: dil,
                groups,
                out_hw: [out(0), out(1)],
            }
        };
        vec![
            mk(3, 4, [7, 6], 5, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1),
            mk(2, 4, [8, 9], 6, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 2),
            mk(9, 3, [5, 5], 4, [1, 1], [1, 1], [0, 0, 0, 0], [1, 1], 1),
            mk(2, 6, [9, 7], 6, [3, 2], [2, 1], [0, 2, 1, 0], [2, 1], 3),
            mk(1, 2, [4, 4], 3, [1, 1], [2, 2], [0, 0, 0, 0], [1, 1], 1),
            mk(2, 2, [3, 3], 2, [5, 5], [1, 1], [2, 2, 2, 2], [1, 1], 1),
            // padding beyond the kernel's reach: the input gradient by im2col's adjoint
            mk(2, 3, [4, 4], 2, [1, 1], [1, 1], [1, 1, 1, 1], [1, 1], 1),
            mk(1, 2, [3, 3], 2, [3, 3], [1, 1], [3, 0, 1, 3], [1, 1], 1),
        ]
    }

    #[test]
    fn forward_matches_the_definition() {
        for g in geoms() {
            let x = values(g.input_len(), 1);
            let w = values(g.weight_len(), 2);
            let y = conv2d_forward(&g, &x, &w, None);
            let r = naive(&g, &x, &w);
            for (a, b) in y.iter().zip(&r) {
                assert!((a - b).abs() < 1e-4, "{g:?}: {a} vs {b}");
            }
        }
    }

    /// <dy, conv(x, w)> is linear in x and in w, so its gradients are the backward pass's:
    /// check them against finite differences of the definition.
    #[test]
    fn backward_is_the_adjoint_of_forward() {
        for g in geoms() {
            let x = values(g.input_len(), 3);
            let w = values(g.weight_len(), 4);
            let dy = values(g.output_len(), 5);
            let grads = conv2d_backward(&g, &x, &w, &dy, true, true);
            let dot = |y: &[f32]| y.iter().zip(&dy).map(|(a, b)| (a * b) as f64).sum::<f64>();
            let dx = grads.dx.expect("asked for dx");
            for i in (0..x.len()).step_by(7) {
                let mut xp = x.clone();
                xp[i] += 1.0;
                let want = dot(&naive(&g, &xp, &w)) - dot(&naive(&g, &x, &w));
                assert!((dx[i] as f64 - want).abs() < 1e-3, "{g:?} dx[{i}]: {} vs {want}", dx[i]);
            }
            for i in 0..w.len() {
                let mut wp = w.clone();
                wp[i] += 1.0;
                let want = dot(&naive(&g, &x, &wp)) - dot(&naive(&g, &x, &w));
                assert!((grads.dw[i] as f64 - want).abs() < 1e-3, "{g:?} dw[{i}]: {} vs {want}", grads.dw[i]);
            }
            let db = grads.dbias.expect("asked for the bias");
            for co in 0..g.out_channels {
                let p = g.out_pixels();
                let want: f64 = (0..g.batch)
                    .flat_map(|b| dy[(b * g.out_channels + co) * p..][..p].to_vec())
                    .map(|v| v as f64)
                    .sum();
                assert!((db[co] as f64 - want).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = geoms()[0];
        let x = values(g.input_len(), 6);
        let w = values(g.weight_len(), 7);
        let dy = values(g.output_len(), 8);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
                .install(|| conv2d_backward(&g, &x, &w, &dy, true, false))
        };
        let (a, b) = (run(1), run(3));
        assert_eq!(a.dw, b.dw);
        assert_eq!(a.dx, b.dx);
    }
}
