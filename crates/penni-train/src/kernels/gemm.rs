//! The matrix product of the training kernels, single-threaded (the kernels parallelise over
//! images themselves): an AVX-512 register-tiled kernel where the CPU has it, else the `gemm`
//! crate (whose AVX-512 kernels need a nightly compiler; on stable it runs AVX2, about half the
//! rate here).

/// A read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Rows of `ld` elements.
    pub fn row_major(data: &'a [f32], ld: usize) -> Self {
        Self { data, rs: ld, cs: 1 }
    }
    /// Columns of `ld` elements (the transpose of a row-major matrix).
    pub fn col_major(data: &'a [f32], ld: usize) -> Self {
        Self { data, rs: 1, cs: ld }
    }
    /// A writable row-major destination with rows of `ld` elements.
    pub fn rows(data: &'a mut [f32], ld: usize) -> MatMut<'a> {
        MatMut { data, rs: ld }
    }
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// A writable row-major matrix view.
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rs: usize,
}

/// dst (m x n) = a (m x k) * b (k x n), or dst += a * b when `accumulate`. `b` must be row
/// major (`Mat::row_major`) for the AVX-512 kernel; any other `b` takes the portable path.
pub fn matmul(dst: MatMut<'_>, accumulate: bool, a: Mat<'_>, b: Mat<'_>, m: usize, n: usize, k: usize) {
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
    #[cfg(target_arch = "x86_64")]
    if b.cs == 1 && avx512::available() {
        // SAFETY: the CPU has AVX-512F (checked); the asserts above bound every index.
        unsafe { avx512::matmul(dst, accumulate, a, b, m, n, k) };
        return;
    }
    portable(dst, accumulate, a, b, m, n, k);
}

fn portable(dst: MatMut<'_>, accumulate: bool, a: Mat<'_>, b: Mat<'_>, m: usize, n: usize, k: usize) {
    // SAFETY: `matmul` checked that every index the product touches lies inside the three
    // slices; dst is borrowed mutably, so it cannot alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{Mat, MatMut};

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && std::env::var_os("PENNI_NO_AVX512").is_none())
    }

    /// Depth of a k block: a block of B (KC x 48 floats) stays in L1 while every row tile of
    /// A passes over it.
    const KC: usize = 192;

    /// Row tile by vector count: MR x NV accumulators (at most 24 of the 32 registers).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn matmul(dst: MatMut<'_>, accumulate: bool, a: Mat<'_>, b: Mat<'_>, m: usize, n: usize, k: usize) {
        let c = dst.data.as_mut_ptr();
        let (pa, pb) = (a.data.as_ptr(), b.data.as_ptr());
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let acc = accumulate || k0 > 0;
            let mut j0 = 0;
            while j0 < n {
                let left = n - j0;
                let nv = left.div_ceil(16).min(3);
                let width = (nv * 16).min(left);
                let tail = (width - (nv - 1) * 16) as u32;
                let mask: __mmask16 = if tail == 16 { 0xffff } else { (1u16 << tail) - 1 };
                let mr = [16, 12, 8][nv - 1];
                let mut i0 = 0;
                while i0 < m {
                    let rows = mr.min(m - i0);
                    // SAFETY (all arms): row i0 + r < m, column j0 + v * 16 + lane < n where
                    // the mask is set, depth k0 + p < k: inside the views checked by the caller.
                    unsafe {
                        let ap = pa.add(i0 * a.rs + k0 * a.cs);
                        let bp = pb.add(k0 * b.rs + j0);
                        let cp = c.add(i0 * dst.rs + j0);
                        match nv {
                            1 => tile::<1, 16>(rows, kc, ap, a.rs, a.cs, bp, b.rs, cp, dst.rs, mask, acc),
                            2 => tile::<2, 12>(rows, kc, ap, a.rs, a.cs, bp, b.rs, cp, dst.rs, mask, acc),
                            _ => tile::<3, 8>(rows, kc, ap, a.rs, a.cs, bp, b.rs, cp, dst.rs, mask, acc),
                        }
                    }
                    i0 += rows;
                }
                j0 += width;
            }
            k0 += kc;
        }
    }

    /// One register tile of `rows` (<= MR) rows by NV vectors, the last one masked.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const NV: usize, const MR: usize>(
        rows: usize,
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        brs: usize,
        c: *mut f32,
        crs: usize,
        mask: __mmask16,
        accumulate: bool,
    ) {
        let masks: [__mmask16; NV] = std::array::from_fn(|v| if v + 1 == NV { mask } else { 0xffff });
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        // SAFETY: the caller guarantees rows x (k, NV vectors under the masks) are in bounds.
        unsafe {
            for p in 0..k {
                let brow = b.add(p * brs);
                let bv: [__m512; NV] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], brow.add(v * 16)));
                let acol = a.add(p * acs);
                for r in 0..MR {
                    if r < rows {
                        let av = _mm512_set1_ps(*acol.add(r * ars));
                        for v in 0..NV {
                            acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                        }
                    }
                }
            }
            for r in 0..MR {
                if r < rows {
                    let crow = c.add(r * crs);
                    for v in 0..NV {
                        let mut val = acc[r][v];
                        if accumulate {
                            val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(masks[v], crow.add(v * 16)));
                        }
                        _mm512_mask_storeu_ps(crow.add(v * 16), masks[v], val);
                    }
                }
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

    /// The kernel against the definition, over shapes with every tail (rows, vectors, k blocks).
    #[test]
    fn matmul_matches_the_definition() {
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
            let b = values(k * n, 2);
            let c0 = values(m * n, 3);
            for (a_view, transposed) in [(Mat::row_major(&a, k), false), (Mat::col_major(&a, m), true)] {
                for accumulate in [false, true] {
                    let mut c = c0.clone();
                    matmul(Mat::rows(&mut c, n), accumulate, a_view, Mat::row_major(&b, n), m, n, k);
                    for i in 0..m {
                        for j in 0..n {
                            let aij = |p: usize| if transposed { a[p * m + i] } else { a[i * k + p] };
                            let want: f64 = (0..k).map(|p| aij(p) as f64 * b[p * n + j] as f64).sum::<f64>()
                                + if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                                "{m}x{n}x{k} ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
