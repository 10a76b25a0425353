//! Batch normalisation with batch statistics, forward and backward, on NCHW f32 slices, in two
//! passes over the data each way (burn composes it from about ten full-size tensor ops).
//! Each channel's sums run in a fixed order, so results do not depend on the thread count.

use rayon::prelude::*;

/// Sums of 16 lanes over a slice, combined in f64: vectorises, and keeps the error of a
/// channel's sum over a large batch small.
fn lane_sum(v: &[f32], f: impl Fn(usize, f32) -> f32) -> f64 {
    let mut acc = [0.0f32; 16];
    let chunks = v.len() / 16;
    for c in 0..chunks {
        for l in 0..16 {
            let i = c * 16 + l;
            acc[l] += f(i, v[i]);
        }
    }
    let mut s: f64 = acc.iter().map(|&a| a as f64).sum();
    for i in chunks * 16..v.len() {
        s += f(i, v[i]) as f64;
    }
    s
}

/// The output of [`forward`]: normalised, scaled and shifted values, and the batch mean and
/// biased variance per channel.
pub struct BnForward {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// `x` is [n, c, hw]; statistics over n and hw per channel.
pub fn forward(x: &[f32], n: usize, c: usize, gamma: &[f32], beta: &[f32], eps: f64) -> BnForward {
    let hw = plane_len(x.len(), n, c);
    let count = (n * hw).max(1) as f64;
    let stats: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = (0..n).map(|b| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw]);
            let mean = planes.clone().map(|p| lane_sum(p, |_, v| v)).sum::<f64>() / count;
            let m = mean as f32;
            let var = planes.map(|p| lane_sum(p, |_, v| (v - m) * (v - m))).sum::<f64>() / count;
            (m, var as f32)
        })
        .collect();
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(hw.max(1)).enumerate().for_each(|(i, out)| {
        let ch = i % c;
        let (m, v) = stats[ch];
        let scale = gamma[ch] / ((v as f64 + eps).sqrt() as f32);
        // (x - mean) first: with a tiny variance, x * scale - mean * scale would cancel badly.
        for (o, &xv) in out.iter_mut().zip(&x[i * hw..(i + 1) * hw]) {
            *o = (xv - m) * scale + beta[ch];
        }
    });
    BnForward {
        y,
        mean: stats.iter().map(|s| s.0).collect(),
        var: stats.iter().map(|s| s.1).collect(),
    }
}

pub struct BnGrads {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// Gradients of [`forward`] given the statistics it returned.
pub fn backward(x: &[f32], n: usize, c: usize, gamma: &[f32], mean: &[f32], var: &[f32], eps: f64, dy: &[f32]) -> BnGrads {
    let hw = plane_len(x.len(), n, c);
    assert_eq!(dy.len(), x.len(), "batchnorm output-gradient length");
    let count = (n * hw).max(1) as f64;
    // Per channel: sum of dy (= dbeta) and sum of dy * (x - mean).
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let m = mean[ch];
            let mut sd = 0.0;
            let mut sdx = 0.0;
            for b in 0..n {
                let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                let (xp, dp) = (&x[r.clone()], &dy[r]);
                sd += lane_sum(dp, |_, v| v);
                sdx += lane_sum(dp, |i, v| v * (xp[i] - m));
            }
            (sd, sdx)
        })
        .collect();
    let inv_std: Vec<f64> = var.iter().map(|&v| 1.0 / (v as f64 + eps).sqrt()).collect();
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(i, out)| {
        let ch = i % c;
        let (sd, sdx) = sums[ch];
        let is = inv_std[ch];
        // dx = gamma * is * (dy - sd / M - xhat * (sdx * is) / M), xhat = (x - mean) * is
        let k = (gamma[ch] as f64 * is) as f32;
        let mean_dy = (sd / count) as f32;
        let proj = (sdx * is * is / count) as f32;
        let m = mean[ch];
        let r = i * hw..(i + 1) * hw;
        for ((o, &d), &xv) in out.iter_mut().zip(&dy[r.clone()]).zip(&x[r]) {
            *o = k * (d - mean_dy - (xv - m) * proj);
        }
    });
    BnGrads {
        dx,
        dgamma: sums.iter().zip(&inv_std).map(|(s, is)| (s.1 * is) as f32).collect(),
        dbeta: sums.iter().map(|s| s.0 as f32).collect(),
    }
}

fn plane_len(len: usize, n: usize, c: usize) -> usize {
    assert!(
        n * c > 0 && len.is_multiple_of(n * c),
        "batchnorm input of {len} values is not [{n}, {c}, ...]"
    );
    len / (n * c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) % 2001) as f32 / 500.0 - 2.0
            })
            .collect()
    }

    /// The loss <dy, bn(x)> by the textbook formula, in f64.
    fn loss(x: &[f32], n: usize, c: usize, gamma: &[f32], beta: &[f32], dy: &[f32]) -> f64 {
        let hw = x.len() / (n * c);
        let mut l = 0.0;
        for ch in 0..c {
            let idx: Vec<usize> = (0..n).flat_map(|b| ((b * c + ch) * hw)..((b * c + ch + 1) * hw)).collect();
            let m = idx.iter().map(|&i| x[i] as f64).sum::<f64>() / idx.len() as f64;
            let v = idx.iter().map(|&i| (x[i] as f64 - m).powi(2)).sum::<f64>() / idx.len() as f64;
            for &i in &idx {
                l += dy[i] as f64 * ((x[i] as f64 - m) / (v + 1e-5).sqrt() * gamma[ch] as f64 + beta[ch] as f64);
            }
        }
        l
    }

    #[test]
    fn forward_normalises_and_backward_matches_finite_differences() {
        let (n, c, hw) = (3, 4, 21);
        let x = values(n * c * hw, 1);
        let gamma = values(c, 2);
        let beta = values(c, 3);
        let dy = values(x.len(), 4);
        let f = forward(&x, n, c, &gamma, &beta, 1e-5);
        for ch in 0..c {
            let vals: Vec<f32> = (0..n)
                .flat_map(|b| f.y[(b * c + ch) * hw..(b * c + ch + 1) * hw].to_vec())
                .collect();
            let m = vals.iter().sum::<f32>() / vals.len() as f32;
            assert!((m - beta[ch]).abs() < 1e-4, "channel {ch} mean {m}");
        }
        let g = backward(&x, n, c, &gamma, &f.mean, &f.var, 1e-5, &dy);
        let h = 1e-3;
        for i in (0..x.len()).step_by(5) {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h as f32;
            xm[i] -= h as f32;
            let want = (loss(&xp, n, c, &gamma, &beta, &dy) - loss(&xm, n, c, &gamma, &beta, &dy)) / (2.0 * h);
            assert!(
                (g.dx[i] as f64 - want).abs() < 2e-2 * want.abs().max(1.0),
                "dx[{i}] {} vs {want}",
                g.dx[i]
            );
        }
        for ch in 0..c {
            let (mut gp, mut gm) = (gamma.clone(), gamma.clone());
            gp[ch] += h as f32;
            gm[ch] -= h as f32;
            let want = (loss(&x, n, c, &gp, &beta, &dy) - loss(&x, n, c, &gm, &beta, &dy)) / (2.0 * h);
            assert!((g.dgamma[ch] as f64 - want).abs() < 1e-2 * want.abs().max(1.0));
            let want_b: f64 = (0..n)
                .flat_map(|b| dy[(b * c + ch) * hw..(b * c + ch + 1) * hw].to_vec())
                .map(|v| v as f64)
                .sum();
            assert!((g.dbeta[ch] as f64 - want_b).abs() < 1e-3);
        }
    }
}
