//! The little linear algebra PENNI needs: the eigen-decomposition of a small symmetric matrix
//! (the k*k x k*k Gram or covariance matrix of a layer's kernels, 9x9 for 3x3 kernels). A cyclic
//! Jacobi solver is exact to machine precision at this size and keeps the crate free of a heavy
//! linear-algebra dependency.

/// Eigenvalues (descending) and the matching unit eigenvectors (`vectors[i]` belongs to
/// `values[i]`) of a symmetric `n x n` matrix given row-major. Each eigenvector's sign is fixed
/// (largest-magnitude component positive) so results do not depend on rounding noise.
#[derive(Clone, Debug)]
pub struct SymmetricEigen {
    pub values: Vec<f64>,
    pub vectors: Vec<Vec<f64>>,
}

/// Cyclic Jacobi eigen-solver. `matrix` must be `n*n` values and symmetric (only symmetric
/// inputs are built by this crate; the upper triangle is what is read after symmetrising).
pub fn symmetric_eigen(matrix: &[f64], n: usize) -> SymmetricEigen {
    assert_eq!(matrix.len(), n * n, "symmetric_eigen: matrix is not n x n");
    let mut a: Vec<f64> = matrix.to_vec();
    // symmetrise, so that tiny asymmetries from accumulation order do not matter
    for i in 0..n {
        for j in i + 1..n {
            let m = 0.5 * (a[i * n + j] + a[j * n + i]);
            a[i * n + j] = m;
            a[j * n + i] = m;
        }
    }
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off <= total * 1e-30 || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                // rotation angle that annihilates a[p][q] (Golub & Van Loan, sym.schur2)
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]).then(i.cmp(&j)));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let vectors = order
        .iter()
        .map(|&i| {
            let mut col: Vec<f64> = (0..n).map(|k| v[k * n + i]).collect();
            let big = col.iter().copied().fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
            if big < 0.0 {
                col.iter_mut().for_each(|x| *x = -*x);
            }
            col
        })
        .collect();
    SymmetricEigen { values, vectors }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises_a_random_symmetric_matrix() {
        let n = 9;
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let m: Vec<f64> = (0..n * 20).map(|_| rnd()).collect(); // 20 x 9
        let mut g = vec![0.0; n * n];
        for r in 0..20 {
            for i in 0..n {
                for j in 0..n {
                    g[i * n + j] += m[r * n + i] * m[r * n + j];
                }
            }
        }
        let e = symmetric_eigen(&g, n);
        for w in e.values.windows(2) {
            assert!(w[0] >= w[1], "eigenvalues descending");
        }
        for (lambda, vec) in e.values.iter().zip(&e.vectors) {
            for i in 0..n {
                let gv: f64 = (0..n).map(|j| g[i * n + j] * vec[j]).sum();
                assert!((gv - lambda * vec[i]).abs() < 1e-10, "G v = lambda v");
            }
        }
        for a in 0..n {
            for b in 0..n {
                let dot: f64 = (0..n).map(|k| e.vectors[a][k] * e.vectors[b][k]).sum();
                assert!((dot - if a == b { 1.0 } else { 0.0 }).abs() < 1e-12, "orthonormal");
            }
        }
    }

    #[test]
    fn jacobi_handles_zero_and_diagonal_matrices() {
        let e = symmetric_eigen(&[0.0; 4], 2);
        assert_eq!(e.values, vec![0.0, 0.0]);
        let e = symmetric_eigen(&[1.0, 0.0, 0.0, 3.0], 2);
        assert_eq!(e.values, vec![3.0, 1.0]);
        assert_eq!(e.vectors[0], vec![0.0, 1.0]);
    }
}
