//! The matrix product of the training kernels: a register-tiled kernel written once over
//! penni-simd's 16-lane vectors (AVX-512 where the CPU has it, a portable fallback elsewhere),
//! single-threaded (the kernels parallelise over images themselves).
//!
//! Rows of either operand may be given by a table of offsets instead of a stride. That is what
//! lets a stride-1 convolution read its input straight from a zero-bordered copy of the image
//! (each row of the virtual im2col matrix is the padded plane shifted by one tap) instead of
//! building the im2col matrix.

use std::sync::OnceLock;

use penni_simd::{Isa, Simd, isa_dispatch};

/// Where each row of a matrix view starts.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// Row i starts at i * stride.
    Stride(usize),
    /// Row i starts at offsets[i].
    Offsets(&'a [usize]),
}

impl Rows<'_> {
    fn offsets(&self, n: usize) -> Vec<usize> {
        match self {
            Rows::Stride(s) => (0..n).map(|i| i * s).collect(),
            Rows::Offsets(o) => o[..n].to_vec(),
        }
    }
    fn last(&self, n: usize) -> usize {
        match self {
            Rows::Stride(s) => (n - 1) * s,
            Rows::Offsets(o) => o[..n].iter().copied().max().unwrap_or(0),
        }
    }
}

/// A read-only matrix view: element (i, j) is `data[row(i) + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: Rows<'a>,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Rows of `ld` elements.
    pub fn row_major(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rows: Rows::Stride(ld),
            cs: 1,
        }
    }
    /// Columns of `ld` elements (the transpose of a row-major matrix).
    pub fn col_major(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rows: Rows::Stride(1),
            cs: ld,
        }
    }
    /// Row i is the contiguous run starting at `offsets[i]`.
    pub fn indirect(data: &'a [f32], offsets: &'a [usize]) -> Self {
        Self {
            data,
            rows: Rows::Offsets(offsets),
            cs: 1,
        }
    }
    /// A writable row-major destination with rows of `ld` elements.
    pub fn rows(data: &'a mut [f32], ld: usize) -> MatMut<'a> {
        MatMut { data, rs: ld }
    }
    fn fits(&self, rows: usize, cols: usize) -> bool {
        if let Rows::Offsets(o) = self.rows
            && o.len() < rows
        {
            return false;
        }
        rows == 0 || cols == 0 || self.rows.last(rows) + (cols - 1) * self.cs < self.data.len()
    }
}

/// A writable row-major matrix view.
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rs: usize,
}

/// The ISA the kernels run with (detected once).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// dst (m x n) = a (m x k) * b (k x n), or dst += a * b when `accumulate`. `b`'s rows must be
/// contiguous (row-major or indirect).
pub fn matmul(dst: MatMut<'_>, accumulate: bool, a: Mat<'_>, b: Mat<'_>, m: usize, n: usize, k: usize) {
    matmul_with(isa(), dst, accumulate, a, b, m, n, k)
}

/// [`matmul`] with the given ISA (tests reach both kernels through it).
pub fn matmul_with(isa: Isa, dst: MatMut<'_>, accumulate: bool, a: Mat<'_>, b: Mat<'_>, m: usize, n: usize, k: usize) {
    assert!(b.cs == 1, "matmul: the right operand's rows must be contiguous");
    assert!(a.fits(m, k) && b.fits(k, n), "matmul operand out of bounds");
    assert!(
        m == 0 || n == 0 || (m - 1) * dst.rs + n <= dst.data.len(),
        "matmul destination out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst.data[i * dst.rs..i * dst.rs + n].fill(0.0);
            }
        }
        return;
    }
    let job = Job {
        c: dst.data.as_mut_ptr(),
        crs: dst.rs,
        accumulate,
        a: a.data.as_ptr(),
        a_rows: a.rows.offsets(m),
        acs: a.cs,
        b: b.data.as_ptr(),
        b_rows: b.rows.offsets(k),
        m,
        n,
        k,
    };
    // SAFETY: the asserts above keep every index the product touches inside the three slices;
    // dst is borrowed mutably, so it cannot alias a or b.
    run(isa, &job);
}

struct Job {
    c: *mut f32,
    crs: usize,
    accumulate: bool,
    a: *const f32,
    a_rows: Vec<usize>,
    acs: usize,
    b: *const f32,
    b_rows: Vec<usize>,
    m: usize,
    n: usize,
    k: usize,
}

isa_dispatch!(fn run => kernel(job: &Job));

/// Depth of a k block: a block of B (KC x 48 floats) stays in L1 while every row tile of A
/// passes over it.
const KC: usize = 192;

/// Register tiles: NV vectors of 16 columns by MR rows (MR x NV accumulators, at most 24 of the
/// 32 vector registers).
#[inline(always)]
unsafe fn kernel<S: Simd>(job: &Job) {
    let mut k0 = 0;
    while k0 < job.k {
        let kc = KC.min(job.k - k0);
        let accumulate = job.accumulate || k0 > 0;
        let mut j0 = 0;
        while j0 < job.n {
            let left = job.n - j0;
            let nv = left.div_ceil(16).min(3);
            let width = (nv * 16).min(left);
            let tail = width - (nv - 1) * 16;
            let mask: u16 = if tail == 16 { 0xffff } else { (1u16 << tail) - 1 };
            let mr = [16, 12, 8][nv - 1];
            let mut i0 = 0;
            while i0 < job.m {
                let rows = mr.min(job.m - i0);
                let t = Tile {
                    i0,
                    rows,
                    j0,
                    k0,
                    kc,
                    mask,
                    accumulate,
                };
                // SAFETY: the tile lies inside the m x n x k product that `matmul_with` checked.
                unsafe {
                    match nv {
                        1 => tile::<S, 1, 16>(job, &t),
                        2 => tile::<S, 2, 12>(job, &t),
                        _ => tile::<S, 3, 8>(job, &t),
                    }
                }
                i0 += rows;
            }
            j0 += width;
        }
        k0 += kc;
    }
}

struct Tile {
    i0: usize,
    rows: usize,
    j0: usize,
    k0: usize,
    kc: usize,
    /// Lanes of the last vector inside the matrix.
    mask: u16,
    accumulate: bool,
}

#[inline(always)]
unsafe fn tile<S: Simd, const NV: usize, const MR: usize>(job: &Job, t: &Tile) {
    let masks: [u16; NV] = std::array::from_fn(|v| if v + 1 == NV { t.mask } else { 0xffff });
    // SAFETY: rows i0..i0+rows, depths k0..k0+kc and the masked columns from j0 lie inside the
    // operands (checked by `matmul_with`); rows past `rows` repeat the last valid row's pointer
    // and are never stored.
    unsafe {
        let a_row: [*const f32; MR] = std::array::from_fn(|r| job.a.add(job.a_rows[t.i0 + r.min(t.rows - 1)] + t.k0 * job.acs));
        let mut acc = [[S::zero(); NV]; MR];
        for p in 0..t.kc {
            let brow = job.b.add(job.b_rows[t.k0 + p] + t.j0);
            let bv: [S::V; NV] = std::array::from_fn(|v| S::load_mask(brow.add(v * 16), masks[v]));
            for r in 0..MR {
                let av = S::splat(*a_row[r].add(p * job.acs));
                for v in 0..NV {
                    acc[r][v] = S::fma(av, bv[v], acc[r][v]);
                }
            }
        }
        for r in 0..t.rows.min(MR) {
            let crow = job.c.add((t.i0 + r) * job.crs + t.j0);
            for v in 0..NV {
                let mut val = acc[r][v];
                if t.accumulate {
                    val = S::add(val, S::load_mask(crow.add(v * 16), masks[v]));
                }
                S::store_mask(crow.add(v * 16), masks[v], val);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// Both kernels against the definition, over shapes with every tail (rows, vectors, k
    /// blocks), for strided, transposed and indirect operands.
    #[test]
    fn matmul_matches_the_definition() {
        let isas = [Isa::detect(), Isa::Fallback];
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 17, 3),
            (16, 784, 144),
            (13, 49, 200),
            (20, 33, 400),
            (9, 48, 7),
            (17, 100, 193),
        ] {
            let a = values(m * k, 1);
            // B rows taken from a larger buffer through an offset table (reversed, with gaps)
            let big = values((k + 1) * (n + 3), 2);
            let offsets: Vec<usize> = (0..k).map(|p| (k - p) * (n + 3) + 1).collect();
            let b = |p: usize, j: usize| big[offsets[p] + j];
            let c0 = values(m * n, 3);
            for (a_view, transposed) in [(Mat::row_major(&a, k), false), (Mat::col_major(&a, m), true)] {
                for accumulate in [false, true] {
                    for isa in isas {
                        let mut c = c0.clone();
                        matmul_with(
                            isa,
                            Mat::rows(&mut c, n),
                            accumulate,
                            a_view,
                            Mat::indirect(&big, &offsets),
                            m,
                            n,
                            k,
                        );
                        for i in 0..m {
                            for j in 0..n {
                                let aij = |p: usize| if transposed { a[p * m + i] } else { a[i * k + p] };
                                let want: f64 = (0..k).map(|p| aij(p) as f64 * b(p, j) as f64).sum::<f64>()
                                    + if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                                let got = c[i * n + j] as f64;
                                assert!(
                                    (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                                    "{isa:?} {m}x{n}x{k} ({i},{j}): {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
