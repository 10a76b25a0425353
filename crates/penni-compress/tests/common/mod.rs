#![allow(dead_code)]
//! Helpers shared by the integration tests: random inputs, random batchnorm statistics, output
//! comparison against the reference forward pass.

use penni_model::reference::{Activation, forward};
use penni_model::zoo::{InitRng, ZooOptions};
use penni_model::{Model, Op, Shape};

pub fn zoo(name: &str, hw: usize, seed: u64) -> Model {
    penni_model::zoo::build(
        name,
        &ZooOptions {
            height: hw,
            width: hw,
            width_multiplier: 0.25,
            seed,
            ..Default::default()
        },
    )
    .unwrap()
}

pub fn random_input(model: &Model, n: usize, seed: u64) -> Activation {
    let mut rng = InitRng::new(seed);
    let shape = model.input_shape();
    let data = (0..n * shape.numel()).map(|_| rng.normal()).collect();
    Activation { n, shape, data }
}

/// Non-trivial batchnorm: gamma in [0.5, 1.5], beta in [-1, 1], mean in [-0.5, 0.5], var in
/// [0.5, 1.5], so a dead channel emits a non-zero constant of either sign.
pub fn randomize_batchnorm(model: &mut Model, seed: u64) {
    let mut rng = InitRng::new(seed);
    for node in &mut model.nodes {
        if let Op::BatchNorm2d { .. } = node.op {
            for (p, lo, hi) in [
                ("weight", 0.5, 1.5),
                ("bias", -1.0, 1.0),
                ("running_mean", -0.5, 0.5),
                ("running_var", 0.5, 1.5),
            ] {
                for v in &mut node.params.get_mut(p).unwrap().data {
                    *v = lo + (hi - lo) * rng.uniform();
                }
            }
        }
    }
}

/// max |a - b| / max |a|: difference relative to the output scale.
pub fn relative_diff(a: &Activation, b: &Activation) -> f64 {
    assert_eq!(a.shape, b.shape);
    assert_eq!(a.data.len(), b.data.len());
    let scale = a.data.iter().map(|v| v.abs() as f64).fold(1e-12, f64::max);
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Asserts that two models compute the same function on random inputs.
pub fn assert_same_outputs(a: &Model, b: &Model, tol: f64, what: &str) {
    for seed in [11, 12] {
        let x = random_input(a, 2, seed);
        let (ya, yb) = (forward(a, &x).unwrap(), forward(b, &x).unwrap());
        let d = relative_diff(&ya, &yb);
        assert!(d <= tol, "{what}: outputs differ by {d:e} (relative), tolerance {tol:e}");
    }
}

pub fn channels(model: &Model, tensor: &str) -> usize {
    match model.infer_shapes().unwrap()[tensor] {
        Shape::Map { c, .. } => c,
        Shape::Vector(n) => n,
    }
}

/// Sets a conv's (or decomposed conv's) [n][c] slice to zero: `n = None` means all outputs.
pub fn zero_slice(model: &mut Model, node: &str, out: Option<usize>, inp: Option<usize>) {
    let node = model.node_mut(node).unwrap();
    let (n, c, l, p) = match &node.op {
        Op::Conv2d(c) => (c.out_channels, c.in_channels / c.groups, c.kernel[0] * c.kernel[1], "weight"),
        Op::DecomposedConv2d(c) => (c.conv.out_channels, c.conv.in_channels / c.conv.groups, c.num_bases, "coefficients"),
        Op::Linear {
            in_features, out_features, ..
        } => (*out_features, *in_features, 1, "weight"),
        _ => panic!("not a mixing layer"),
    };
    let t = node.params.get_mut(p).unwrap();
    for o in 0..n {
        for k in 0..c {
            if out.is_none_or(|x| x == o) && inp.is_none_or(|x| x == k) {
                t.data[(o * c + k) * l..(o * c + k + 1) * l].fill(0.0);
            }
        }
    }
}

pub fn set_bn(model: &mut Model, node: &str, channel: usize, gamma: f32, beta: f32, mean: f32, var: f32) {
    let n = model.node_mut(node).unwrap();
    for (p, v) in [("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)] {
        n.params.get_mut(p).unwrap().data[channel] = v;
    }
}
