//! Tucker-2 decomposition of k x k convs (the second compressor beside PENNI). A conv weight W
//! (N x C x kh x kw) is approximated by truncated HOSVD of its mode-N and mode-C unfoldings,
//! W ~ Core x_N U_out x_C U_in, with U_out (N x R_out) and U_in (C x R_in) the leading left
//! singular vectors of the unfoldings and Core (R_out x R_in x kh x kw) = W x_N U_out^T x_C U_in^T.
//! In the IR the result is three ordinary convs, so that shape inference, counting, `.penni`,
//! ONNX export, shrinking and the engine all work on it unchanged:
//! 1. `NAME.tucker_in`: 1x1 conv C -> R_in, weight U_in^T;
//! 2. `NAME.tucker_core`: the original geometry (kernel, stride, padding, dilation), R_in -> R_out;
//! 3. `NAME`: 1x1 conv R_out -> N, weight U_out, with the original bias; it keeps the original
//!    node's name and output tensor, so nothing downstream changes.
//!
//! Projecting before padding is exact (the projection of a zero is zero), so at full ranks the
//! three convs compute what the original did.

use std::collections::BTreeMap;

use penni_model::{Conv2d, Model, Node, Op, Shape, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};
use crate::linalg::symmetric_eigen;

/// Ranks of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ranks {
    /// Channels after the input projection (R_in <= C).
    pub r_in: usize,
    /// Channels out of the core (R_out <= N).
    pub r_out: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TuckerOptions {
    /// Ranks as a fraction of each layer's channels (rounded up), for layers not in `per_layer`.
    pub rank_fraction: f64,
    /// Per-layer ranks by node name.
    pub per_layer: BTreeMap<String, Ranks>,
    /// Keep a conv dense when the three convs would cost at least as many MACs (layers named in
    /// `per_layer` are decomposed anyway).
    pub only_if_cheaper: bool,
    /// Decompose only these layers (`None`: every eligible one); the others stay as they are.
    pub only: Option<std::collections::BTreeSet<String>>,
}

impl Default for TuckerOptions {
    fn default() -> Self {
        Self {
            rank_fraction: 0.5,
            per_layer: BTreeMap::new(),
            only_if_cheaper: true,
            only: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuckerLayer {
    pub node: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub ranks: Ranks,
    /// ||W - W_tucker||_F / ||W||_F of the factors as stored.
    pub relative_error: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TuckerReport {
    pub layers: Vec<TuckerLayer>,
    /// Convs left dense, each with the reason.
    pub kept_dense: Vec<(String, String)>,
}

/// The factors of one weight, row-major: `u_in` C x R_in, `core` R_out x R_in x kh*kw, `u_out`
/// N x R_out.
#[derive(Clone, Debug)]
pub struct TuckerFactors {
    pub u_in: Vec<f32>,
    pub core: Vec<f32>,
    pub u_out: Vec<f32>,
    pub relative_error: f64,
}

/// Leading `r` eigenvectors (as columns of an `n x r` row-major matrix) of the Gram matrix of
/// the mode-`mode` unfolding of `w` (N x C x kk).
fn leading_vectors(w: &[f32], dims: [usize; 3], mode: usize, r: usize) -> Vec<f64> {
    let [n, c, kk] = dims;
    let size = dims[mode];
    let mut g = vec![0.0f64; size * size];
    match mode {
        0 => {
            for a in 0..n {
                for b in a..n {
                    let (ra, rb) = (&w[a * c * kk..(a + 1) * c * kk], &w[b * c * kk..(b + 1) * c * kk]);
                    let s: f64 = ra.iter().zip(rb).map(|(x, y)| *x as f64 * *y as f64).sum();
                    g[a * n + b] = s;
                    g[b * n + a] = s;
                }
            }
        }
        _ => {
            for o in 0..n {
                let block = &w[o * c * kk..(o + 1) * c * kk];
                for a in 0..c {
                    let ra = &block[a * kk..(a + 1) * kk];
                    for b in a..c {
                        let rb = &block[b * kk..(b + 1) * kk];
                        g[a * c + b] += ra.iter().zip(rb).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
                    }
                }
            }
            for a in 0..c {
                for b in 0..a {
                    g[a * c + b] = g[b * c + a];
                }
            }
        }
    }
    let eig = symmetric_eigen(&g, size);
    let mut u = vec![0.0f64; size * r];
    for (j, v) in eig.vectors.iter().take(r).enumerate() {
        for i in 0..size {
            u[i * r + j] = v[i];
        }
    }
    u
}

/// Truncated HOSVD of a conv weight `w` (N x C x kk, row-major) to ranks (r_in, r_out).
pub fn tucker_factors(w: &[f32], n: usize, c: usize, kk: usize, ranks: Ranks) -> Result<TuckerFactors> {
    if n.checked_mul(c).and_then(|x| x.checked_mul(kk)) != Some(w.len()) {
        return Err(CompressError::Invalid(format!(
            "tucker: {} values do not form a {n} x {c} x {kk} weight",
            w.len()
        )));
    }
    if !(1..=c).contains(&ranks.r_in) || !(1..=n).contains(&ranks.r_out) {
        return Err(CompressError::Invalid(format!(
            "tucker: ranks ({}, {}) must be in 1..={c} (input) and 1..={n} (output)",
            ranks.r_in, ranks.r_out
        )));
    }
    let (ri, ro) = (ranks.r_in, ranks.r_out);
    let u_out = leading_vectors(w, [n, c, kk], 0, ro);
    let u_in = leading_vectors(w, [n, c, kk], 1, ri);
    // t[o, s, k] = sum_c W[o, c, k] U_in[c, s], then core[r, s, k] = sum_o U_out[o, r] t[o, s, k]
    let mut t = vec![0.0f64; n * ri * kk];
    for o in 0..n {
        for ch in 0..c {
            let row = &w[(o * c + ch) * kk..(o * c + ch + 1) * kk];
            for s in 0..ri {
                let u = u_in[ch * ri + s];
                if u == 0.0 {
                    continue;
                }
                let dst = &mut t[(o * ri + s) * kk..(o * ri + s + 1) * kk];
                for (d, x) in dst.iter_mut().zip(row) {
                    *d += u * *x as f64;
                }
            }
        }
    }
    let mut core = vec![0.0f64; ro * ri * kk];
    for o in 0..n {
        for r in 0..ro {
            let u = u_out[o * ro + r];
            let src = &t[o * ri * kk..(o + 1) * ri * kk];
            let dst = &mut core[r * ri * kk..(r + 1) * ri * kk];
            for (d, x) in dst.iter_mut().zip(src) {
                *d += u * x;
            }
        }
    }
    let f = TuckerFactors {
        u_in: u_in.iter().map(|v| *v as f32).collect(),
        core: core.iter().map(|v| *v as f32).collect(),
        u_out: u_out.iter().map(|v| *v as f32).collect(),
        relative_error: 0.0,
    };
    let approx = reconstruct(&f, n, c, kk, ranks);
    let (mut err2, mut norm2) = (0.0f64, 0.0f64);
    for (a, b) in w.iter().zip(&approx) {
        err2 += (*a as f64 - *b).powi(2);
        norm2 += (*a as f64).powi(2);
    }
    Ok(TuckerFactors {
        relative_error: if norm2 > 0.0 { (err2 / norm2).sqrt() } else { 0.0 },
        ..f
    })
}

/// The nearest weight of Tucker ranks `ranks` to `w` (N x C x kk) by truncated HOSVD, and the
/// relative distance to it: ADMM's projection step.
pub fn project(w: &[f32], n: usize, c: usize, kk: usize, ranks: Ranks) -> Result<(Vec<f32>, f64)> {
    let f = tucker_factors(w, n, c, kk, ranks)?;
    Ok((
        reconstruct(&f, n, c, kk, ranks).iter().map(|v| *v as f32).collect(),
        f.relative_error,
    ))
}

/// W'[o, c, k] = sum_{r, s} U_out[o, r] U_in[c, s] core[r, s, k], in f64.
pub fn reconstruct(f: &TuckerFactors, n: usize, c: usize, kk: usize, ranks: Ranks) -> Vec<f64> {
    let (ri, ro) = (ranks.r_in, ranks.r_out);
    // t[o, s, k] = sum_r U_out[o, r] core[r, s, k]
    let mut t = vec![0.0f64; n * ri * kk];
    for o in 0..n {
        for r in 0..ro {
            let u = f.u_out[o * ro + r] as f64;
            for (d, x) in t[o * ri * kk..(o + 1) * ri * kk]
                .iter_mut()
                .zip(&f.core[r * ri * kk..(r + 1) * ri * kk])
            {
                *d += u * *x as f64;
            }
        }
    }
    let mut w = vec![0.0f64; n * c * kk];
    for o in 0..n {
        for ch in 0..c {
            for s in 0..ri {
                let u = f.u_in[ch * ri + s] as f64;
                let src = &t[(o * ri + s) * kk..(o * ri + s + 1) * kk];
                for (d, x) in w[(o * c + ch) * kk..(o * c + ch + 1) * kk].iter_mut().zip(src) {
                    *d += u * x;
                }
            }
        }
    }
    w
}

/// MACs per output pixel of the three convs against the dense conv's (strided convs: the input
/// projection runs on every input pixel, counted here at `in_pixels / out_pixels` per output).
fn cheaper(c: &Conv2d, r: Ranks, in_per_out_pixel: f64) -> bool {
    let kk = (c.kernel[0] * c.kernel[1]) as f64;
    let dense = c.out_channels as f64 * c.in_channels as f64 * kk;
    let tucker = in_per_out_pixel * (c.in_channels * r.r_in) as f64 + (r.r_in * r.r_out) as f64 * kk + (r.r_out * c.out_channels) as f64;
    tucker < dense
}

fn fresh_name(model: &Model, taken: &std::collections::HashSet<String>, base: String) -> String {
    let used = |s: &str| taken.contains(s) || model.node(s).is_some();
    if !used(&base) {
        return base;
    }
    (2..).map(|i| format!("{base}{i}")).find(|s| !used(s)).unwrap_or(base)
}

/// Replaces every ungrouped k x k conv (k*k > 1) by its Tucker-2 form (module docs). Grouped
/// convs stay dense (their weight has no full mode-C unfolding), and so do convs where the
/// three convs would cost more, unless named in `per_layer`.
pub fn tucker_decompose(model: &Model, opts: &TuckerOptions) -> Result<(Model, TuckerReport)> {
    let shapes = model.validate()?;
    if !(opts.rank_fraction.is_finite() && opts.rank_fraction > 0.0 && opts.rank_fraction <= 1.0) {
        return Err(CompressError::Invalid(format!(
            "tucker: the rank fraction must be in (0, 1], got {}",
            opts.rank_fraction
        )));
    }
    for name in opts.per_layer.keys() {
        match model.node(name).map(|n| &n.op) {
            Some(Op::Conv2d(c)) if c.kernel[0] * c.kernel[1] > 1 && c.groups == 1 => {}
            Some(op) => {
                return Err(CompressError::Invalid(format!(
                    "tucker: '{name}' is a {} that is not an ungrouped k x k conv; it cannot take ranks",
                    op.kind()
                )));
            }
            None => {
                return Err(CompressError::Invalid(format!(
                    "tucker: '{name}' is not a layer of model '{}'",
                    model.name
                )));
            }
        }
    }
    let mut report = TuckerReport::default();
    let mut nodes = Vec::with_capacity(model.nodes.len());
    let mut taken = std::collections::HashSet::new();
    for node in &model.nodes {
        let Op::Conv2d(c) = &node.op else {
            nodes.push(node.clone());
            continue;
        };
        let kk = c.kernel[0] * c.kernel[1];
        if kk <= 1 || opts.only.as_ref().is_some_and(|o| !o.contains(&node.name)) {
            nodes.push(node.clone());
            continue;
        }
        if c.groups != 1 {
            report
                .kept_dense
                .push((node.name.clone(), format!("grouped conv ({} groups)", c.groups)));
            nodes.push(node.clone());
            continue;
        }
        let named = opts.per_layer.get(&node.name).copied();
        let frac = |ch: usize| ((ch as f64 * opts.rank_fraction).ceil() as usize).clamp(1, ch);
        let ranks = named.unwrap_or(Ranks {
            r_in: frac(c.in_channels),
            r_out: frac(c.out_channels),
        });
        let pixels = |t: &str| match shapes.get(t) {
            Some(Shape::Map { h, w, .. }) => (h * w) as f64,
            _ => 1.0,
        };
        let ratio = pixels(&node.inputs[0]) / pixels(&node.output).max(1.0);
        if named.is_none() && opts.only_if_cheaper && !cheaper(c, ranks, ratio) {
            report.kept_dense.push((
                node.name.clone(),
                format!("ranks ({}, {}) would cost as many MACs as the dense conv", ranks.r_in, ranks.r_out),
            ));
            nodes.push(node.clone());
            continue;
        }
        let w = node.param("weight")?;
        let f = tucker_factors(&w.data, c.out_channels, c.in_channels, kk, ranks)?;
        let (ri, ro) = (ranks.r_in, ranks.r_out);
        let first = fresh_name(model, &taken, format!("{}.tucker_in", node.name));
        taken.insert(first.clone());
        let core = fresh_name(model, &taken, format!("{}.tucker_core", node.name));
        taken.insert(core.clone());
        let one_by_one = |i: usize, o: usize, bias: bool| Conv2d {
            in_channels: i,
            out_channels: o,
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 1,
            bias,
        };
        // U_in^T as an R_in x C x 1 x 1 weight
        let mut w_in = vec![0f32; ri * c.in_channels];
        for ch in 0..c.in_channels {
            for s in 0..ri {
                w_in[s * c.in_channels + ch] = f.u_in[ch * ri + s];
            }
        }
        nodes.push(Node {
            name: first.clone(),
            op: Op::Conv2d(one_by_one(c.in_channels, ri, false)),
            inputs: node.inputs.clone(),
            output: first.clone(),
            params: BTreeMap::from([(
                "weight".to_string(),
                Tensor {
                    shape: vec![ri, c.in_channels, 1, 1],
                    data: w_in,
                },
            )]),
        });
        nodes.push(Node {
            name: core.clone(),
            op: Op::Conv2d(Conv2d {
                in_channels: ri,
                out_channels: ro,
                bias: false,
                ..*c
            }),
            inputs: vec![first],
            output: core.clone(),
            params: BTreeMap::from([(
                "weight".to_string(),
                Tensor {
                    shape: vec![ro, ri, c.kernel[0], c.kernel[1]],
                    data: f.core,
                },
            )]),
        });
        let mut params = BTreeMap::from([(
            "weight".to_string(),
            Tensor {
                shape: vec![c.out_channels, ro, 1, 1],
                data: f.u_out,
            },
        )]);
        if let Some(b) = node.params.get("bias") {
            params.insert("bias".into(), b.clone());
        }
        nodes.push(Node {
            name: node.name.clone(),
            op: Op::Conv2d(one_by_one(ro, c.out_channels, c.bias)),
            inputs: vec![core],
            output: node.output.clone(),
            params,
        });
        report.layers.push(TuckerLayer {
            node: node.name.clone(),
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            kernel: c.kernel,
            ranks,
            relative_error: f.relative_error,
        });
    }
    let out = Model { nodes, ..model.clone() };
    out.validate()?;
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(n: usize, c: usize, kk: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n * c * kk)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn full_ranks_reproduce_the_weight() {
        let (n, c, kk) = (6, 5, 9);
        let w = weight(n, c, kk, 3);
        let f = tucker_factors(&w, n, c, kk, Ranks { r_in: c, r_out: n }).unwrap();
        assert!(f.relative_error < 1e-6, "{}", f.relative_error);
    }

    #[test]
    fn the_error_falls_as_the_ranks_grow() {
        let (n, c, kk) = (8, 8, 9);
        let w = weight(n, c, kk, 5);
        let e = |r: usize| tucker_factors(&w, n, c, kk, Ranks { r_in: r, r_out: r }).unwrap().relative_error;
        let errs: Vec<f64> = (1..=8).map(e).collect();
        assert!(errs.windows(2).all(|p| p[1] <= p[0] + 1e-9), "{errs:?}");
        assert!(errs[0] > 0.3 && errs[7] < 1e-6, "{errs:?}");
    }

    #[test]
    fn a_low_rank_weight_is_recovered_exactly_at_its_rank() {
        // W = core x U_out x U_in with ranks (2, 3): truncating there loses nothing
        let (n, c, kk) = (7, 6, 4);
        let (u_out, u_in, core) = (weight(n, 3, 1, 1), weight(c, 2, 1, 2), weight(3, 2, kk, 4));
        let f = TuckerFactors {
            u_in: u_in.clone(),
            core: core.clone(),
            u_out: u_out.clone(),
            relative_error: 0.0,
        };
        let w: Vec<f32> = reconstruct(&f, n, c, kk, Ranks { r_in: 2, r_out: 3 })
            .iter()
            .map(|v| *v as f32)
            .collect();
        let g = tucker_factors(&w, n, c, kk, Ranks { r_in: 2, r_out: 3 }).unwrap();
        assert!(g.relative_error < 1e-5, "{}", g.relative_error);
        let bad = tucker_factors(&w, n, c, kk, Ranks { r_in: 7, r_out: 3 });
        assert!(matches!(bad, Err(CompressError::Invalid(_))));
    }
}
