//! PENNI step 1: kernel decomposition. Every k x k conv (k*k > 1) becomes a `DecomposedConv2d`:
//! its (N*C/groups) x (kh*kw) kernel matrix M is approximated by A B with d shared basis kernels
//! B (d x kh*kw) and coefficients A (N*C/groups x d).

use std::collections::{BTreeMap, BTreeSet};

use penni_model::{DecomposedConv2d, Model, Op, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CompressError, Result};
use crate::linalg::symmetric_eigen;

/// How the factors are initialised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Truncated SVD of M (best rank-d approximation, no centring): B = top-d right singular
    /// vectors, A = M B^T. With d = kh*kw the layer is reproduced exactly.
    #[default]
    Svd,
    /// The authors' way: mean-centred PCA of the rows of M, B = top-d principal directions,
    /// A = (M - mean) B^T; the mean is dropped (retraining recovers it).
    Pca,
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Init::Svd => "svd",
            Init::Pca => "pca",
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DecomposeOptions {
    /// Number of bases for every layer (clamped to kh*kw).
    pub d: usize,
    /// Per-layer override of `d`, by node name.
    pub per_layer: BTreeMap<String, usize>,
    pub init: Init,
    /// Leave a conv dense when its basis stage alone (C*d*k*k MACs per pixel) would cost as
    /// much as the whole dense conv (N*C/groups*k*k), i.e. d*groups >= N: depthwise convs and
    /// convs with fewer outputs than bases. Layers named in `per_layer` are decomposed anyway.
    pub only_if_cheaper: bool,
    /// Decompose only these layers (`None`: every eligible one); the others stay as they are.
    pub only: Option<BTreeSet<String>>,
}

impl Default for DecomposeOptions {
    fn default() -> Self {
        Self {
            d: 5,
            per_layer: BTreeMap::new(),
            init: Init::Svd,
            only_if_cheaper: true,
            only: None,
        }
    }
}

/// What decomposition did to one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecomposedLayer {
    pub node: String,
    /// Kernel rows N*C/groups.
    pub rows: usize,
    pub kernel: [usize; 2],
    /// Bases actually used (after clamping to kh*kw).
    pub d: usize,
    pub init: Init,
    /// ||M - A B||_F / ||M||_F of the factors as stored (for PCA: with the mean dropped).
    pub relative_error: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecomposeReport {
    pub layers: Vec<DecomposedLayer>,
    /// Convs left dense because decomposing them would not save work (see `only_if_cheaper`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_dense: Vec<String>,
}

/// Factors of one kernel matrix: `bases` (d x kk) and `coefficients` (rows x d), row-major.
#[derive(Clone, Debug)]
pub struct Factors {
    pub bases: Vec<f32>,
    pub coefficients: Vec<f32>,
    pub relative_error: f64,
}

/// Factorises a `rows x kk` kernel matrix (row-major) into d bases (d clamped to 1..=kk).
/// Public so the trainer or tools can re-decompose a single weight.
pub fn factorize(m: &[f32], rows: usize, kk: usize, d: usize, init: Init) -> Result<Factors> {
    if kk == 0 || rows.checked_mul(kk) != Some(m.len()) {
        return Err(CompressError::Invalid(format!(
            "factorize: {} values do not form a {rows} x {kk} matrix",
            m.len()
        )));
    }
    let d = d.clamp(1, kk);
    let mean: Vec<f64> = match init {
        Init::Svd => vec![0.0; kk],
        Init::Pca => (0..kk)
            .map(|t| (0..rows).map(|r| m[r * kk + t] as f64).sum::<f64>() / rows.max(1) as f64)
            .collect(),
    };
    // Gram (SVD) or scatter (PCA) matrix of the rows, in f64
    let mut g = vec![0.0f64; kk * kk];
    let mut row = vec![0.0f64; kk];
    for r in 0..rows {
        for t in 0..kk {
            row[t] = m[r * kk + t] as f64 - mean[t];
        }
        for i in 0..kk {
            for j in i..kk {
                g[i * kk + j] += row[i] * row[j];
            }
        }
    }
    for i in 0..kk {
        for j in 0..i {
            g[i * kk + j] = g[j * kk + i];
        }
    }
    let eig = symmetric_eigen(&g, kk);
    let bases64: Vec<f64> = eig.vectors[..d].iter().flatten().copied().collect();
    let bases: Vec<f32> = bases64.iter().map(|v| *v as f32).collect();
    let mut coefficients = vec![0f32; rows * d];
    let (mut err2, mut norm2) = (0.0f64, 0.0f64);
    for r in 0..rows {
        for t in 0..kk {
            row[t] = m[r * kk + t] as f64 - mean[t];
        }
        for j in 0..d {
            let a: f64 = (0..kk).map(|t| row[t] * bases[j * kk + t] as f64).sum();
            coefficients[r * d + j] = a as f32;
        }
        // error of the stored (f32) factors against the original row
        for t in 0..kk {
            let approx: f64 = (0..d).map(|j| coefficients[r * d + j] as f64 * bases[j * kk + t] as f64).sum();
            let orig = m[r * kk + t] as f64;
            err2 += (orig - approx).powi(2);
            norm2 += orig * orig;
        }
    }
    let relative_error = if norm2 > 0.0 { (err2 / norm2).sqrt() } else { 0.0 };
    Ok(Factors {
        bases,
        coefficients,
        relative_error,
    })
}

/// Decomposes every Conv2d with kh*kw > 1 (first layer, biased and grouped convs included),
/// except, with `only_if_cheaper`, those that PENNI would make slower (depthwise convs).
/// 1x1 convs, linear layers and already-decomposed convs are left as they are. Node and tensor
/// names are kept, so per-layer settings and reports keep referring to the same layers.
pub fn decompose(model: &Model, opts: &DecomposeOptions) -> Result<(Model, DecomposeReport)> {
    model.validate()?;
    if opts.d == 0 {
        return Err(CompressError::Invalid("decompose: d must be at least 1".into()));
    }
    let mut problems = Vec::new();
    for (name, d) in &opts.per_layer {
        match model.node(name).map(|n| &n.op) {
            None => problems.push(format!("'{name}' is not a layer of model '{}'", model.name)),
            Some(Op::Conv2d(c)) if c.kernel[0] * c.kernel[1] > 1 => {
                if *d == 0 {
                    problems.push(format!("'{name}': d must be at least 1"));
                }
            }
            Some(op) => problems.push(format!(
                "'{name}' is a {} with a 1x1 kernel or no kernel, it is not decomposed",
                op.kind()
            )),
        }
    }
    if !problems.is_empty() {
        return Err(CompressError::Invalid(format!("decompose: per-layer d: {}", problems.join("; "))));
    }
    let mut out = model.clone();
    let mut report = DecomposeReport::default();
    for node in &mut out.nodes {
        let Op::Conv2d(c) = &node.op else { continue };
        let kk = c.kernel[0] * c.kernel[1];
        if kk <= 1 || opts.only.as_ref().is_some_and(|o| !o.contains(&node.name)) {
            continue;
        }
        let d = opts.per_layer.get(&node.name).copied().unwrap_or(opts.d).clamp(1, kk);
        if opts.only_if_cheaper && !opts.per_layer.contains_key(&node.name) && d * c.groups >= c.out_channels {
            report.kept_dense.push(node.name.clone());
            continue;
        }
        let w = node.param("weight")?;
        let rows = w.shape[0] * w.shape[1];
        let f = factorize(&w.data, rows, kk, d, opts.init)?;
        let spec = DecomposedConv2d::from_conv(c, d);
        report.layers.push(DecomposedLayer {
            node: node.name.clone(),
            rows,
            kernel: c.kernel,
            d,
            init: opts.init,
            relative_error: f.relative_error,
        });
        node.params.remove("weight");
        node.params.insert(
            "bases".into(),
            Tensor {
                shape: vec![d, kk],
                data: f.bases,
            },
        );
        node.params.insert(
            "coefficients".into(),
            Tensor {
                shape: vec![rows, d],
                data: f.coefficients,
            },
        );
        node.op = Op::DecomposedConv2d(spec);
    }
    out.validate()?;
    Ok((out, report))
}
