//! The one place where an inference-mode batchnorm becomes a per-channel affine map, and back.

use std::collections::BTreeMap;

use crate::error::{ModelError, Result};
use crate::graph::{Node, Op};
use crate::tensor::Tensor;

/// y = scale[c] * x + shift[c]: what a batchnorm with running statistics computes, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Affine {
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
}

impl Affine {
    pub fn identity(channels: usize) -> Self {
        Affine {
            scale: vec![1.0; channels],
            shift: vec![0.0; channels],
        }
    }

    /// The map of a `BatchNorm2d` node: scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
    pub fn of_batchnorm(node: &Node) -> Result<Self> {
        let Op::BatchNorm2d { eps, .. } = node.op else {
            return Err(ModelError::Graph(format!(
                "node '{}' is a {}, not a batchnorm",
                node.name,
                node.op.kind()
            )));
        };
        let g = &node.param("weight")?.data;
        let b = &node.param("bias")?.data;
        let m = &node.param("running_mean")?.data;
        let v = &node.param("running_var")?.data;
        let scale: Vec<f64> = g.iter().zip(v).map(|(&g, &v)| g as f64 / (v as f64 + eps as f64).sqrt()).collect();
        let shift = scale
            .iter()
            .zip(b.iter().zip(m))
            .map(|(s, (&b, &m))| b as f64 - m as f64 * s)
            .collect();
        Ok(Affine { scale, shift })
    }

    /// This map followed by `next` (both per channel of one tensor).
    pub fn then(&self, next: &Affine) -> Affine {
        let scale = self.scale.iter().zip(&next.scale).map(|(a, b)| a * b).collect();
        let shift = self
            .shift
            .iter()
            .zip(next.scale.iter().zip(&next.shift))
            .map(|(t, (s, u))| t * s + u)
            .collect();
        Affine { scale, shift }
    }

    /// Bias `b` (none is zero) of output channel `n` of a layer this map is folded into:
    /// scale * b + shift, in f64, rounded once.
    pub fn folded_bias(&self, b: Option<&[f32]>, n: usize) -> f32 {
        (b.map_or(0.0, |b| b[n] as f64) * self.scale[n] + self.shift[n]) as f32
    }

    pub fn apply(&self, channel: usize, x: f32) -> f32 {
        (x as f64 * self.scale[channel] + self.shift[channel]) as f32
    }

    /// The parameters of a `BatchNorm2d { channels, eps: 0 }` that computes exactly this map
    /// (zero mean, unit variance).
    pub fn to_batchnorm_params(&self) -> BTreeMap<String, Tensor> {
        let c = self.scale.len();
        let f32s = |v: &[f64]| Tensor {
            shape: vec![c],
            data: v.iter().map(|x| *x as f32).collect(),
        };
        BTreeMap::from([
            ("weight".to_string(), f32s(&self.scale)),
            ("bias".to_string(), f32s(&self.shift)),
            ("running_mean".to_string(), Tensor::zeros(vec![c])),
            ("running_var".to_string(), Tensor::full(vec![c], 1.0)),
        ])
    }
}
