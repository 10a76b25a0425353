//! Shared test helpers: PENNI-style models built from zoo models, and the comparison metric.
#![allow(dead_code)]

use std::collections::BTreeMap;

use penni_model::reference::{Activation, forward};
use penni_model::zoo::{InitRng, ZooOptions};
use penni_model::{DecomposedConv2d, Model, Op, Tensor};

/// max |engine - reference| / max |reference|: the relative error the engine is held to.
pub fn rel_err(engine: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(engine.len(), reference.len());
    let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = engine
        .iter()
        .zip(reference)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    if scale == 0.0 { diff } else { diff / scale }
}

pub fn zoo(name: &str, width: f32, hw: usize, seed: u64) -> Model {
    let opts = ZooOptions {
        width_multiplier: width,
        height: hw,
        width: hw,
        seed,
        ..Default::default()
    };
    penni_model::zoo::build(name, &opts).unwrap()
}

/// Gives every batchnorm non-trivial running statistics and affine parameters, so that folding
/// is really exercised.
pub fn randomize_bn(model: &mut Model, seed: u64) {
    let mut rng = InitRng::new(seed);
    for node in &mut model.nodes {
        if let Op::BatchNorm2d { channels, .. } = node.op {
            let mut u = |lo: f32, hi: f32| -> Tensor {
                Tensor::new(vec![channels], (0..channels).map(|_| lo + (hi - lo) * rng.uniform()).collect()).unwrap()
            };
            let (g, b, m, v) = (u(0.5, 1.5), u(-0.3, 0.3), u(-0.3, 0.3), u(0.5, 2.0));
            node.params.insert("weight".into(), g);
            node.params.insert("bias".into(), b);
            node.params.insert("running_mean".into(), m);
            node.params.insert("running_var".into(), v);
        }
    }
}

/// Replaces every k>1 convolution by a decomposed one with `d` random unit-norm bases and random
/// coefficients, a fraction `sparsity` of them exactly zero, scaled like Kaiming initialisation.
pub fn decompose(model: &mut Model, d: usize, sparsity: f32, seed: u64) {
    let mut rng = InitRng::new(seed);
    for node in &mut model.nodes {
        let Op::Conv2d(c) = &node.op else { continue };
        if c.kernel[0] * c.kernel[1] <= 1 {
            continue;
        }
        let kk = c.kernel[0] * c.kernel[1];
        let cg = c.in_channels / c.groups;
        let mut bases = Vec::with_capacity(d * kk);
        for _ in 0..d {
            let row: Vec<f32> = (0..kk).map(|_| rng.normal()).collect();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-3);
            bases.extend(row.iter().map(|v| v / norm));
        }
        let density = (1.0 - sparsity).max(1e-3);
        let std =
            (2.0 / (c.out_channels as f32 * density * d as f32 / kk as f32 * kk as f32)).sqrt() * (kk as f32).sqrt() / (kk as f32).sqrt();
        let coefs: Vec<f32> = (0..c.out_channels * cg * d)
            .map(|_| {
                let keep = rng.uniform() >= sparsity;
                let v = rng.normal() * std;
                if keep { v } else { 0.0 }
            })
            .collect();
        let spec = DecomposedConv2d::from_conv(c, d);
        let mut params = BTreeMap::new();
        params.insert("bases".into(), Tensor::new(vec![d, kk], bases).unwrap());
        params.insert("coefficients".into(), Tensor::new(vec![c.out_channels * cg, d], coefs).unwrap());
        if let Some(b) = node.params.get("bias") {
            params.insert("bias".into(), b.clone());
        }
        node.op = Op::DecomposedConv2d(spec);
        node.params = params;
    }
    model.validate().unwrap();
}

/// Zeroes whole coefficient rows: a fraction `frac` of every decomposed layer's output channels
/// and of its input channels become dead (what pruning leaves before shrinking).
pub fn kill_channels(model: &mut Model, frac: f32, seed: u64) {
    let mut rng = InitRng::new(seed);
    for node in &mut model.nodes {
        let Op::DecomposedConv2d(c) = &node.op else { continue };
        let (n, cg, d) = (c.conv.out_channels, c.conv.in_channels / c.conv.groups, c.num_bases);
        let dead_out: Vec<bool> = (0..n).map(|_| rng.uniform() < frac).collect();
        let dead_in: Vec<bool> = (0..cg).map(|_| rng.uniform() < frac).collect();
        let a = &mut node.params.get_mut("coefficients").unwrap().data;
        for o in 0..n {
            for ci in 0..cg {
                if dead_out[o] || dead_in[ci] {
                    for j in 0..d {
                        a[(o * cg + ci) * d + j] = 0.0;
                    }
                }
            }
        }
    }
}

pub fn input(model: &Model, batch: usize, seed: u64) -> Vec<f32> {
    penni_engine::pseudo_random_input(batch * model.input_shape().numel(), seed)
}

pub fn reference(model: &Model, batch: usize, x: &[f32]) -> Vec<f32> {
    forward(
        model,
        &Activation {
            n: batch,
            shape: model.input_shape(),
            data: x.to_vec(),
        },
    )
    .unwrap()
    .data
}

/// An upper bound of the magnitude of the terms summed into any output: the model with every
/// parameter replaced by its absolute value (batchnorm means negated so they add), run on |x|.
/// Round-off of a float sum scales with this, not with the (possibly cancelled) result.
pub fn magnitude(model: &Model, batch: usize, x: &[f32]) -> f64 {
    let mut m = model.clone();
    for node in &mut m.nodes {
        let is_bn = matches!(node.op, Op::BatchNorm2d { .. });
        for (name, t) in node.params.iter_mut() {
            if is_bn && name == "running_var" {
                continue;
            }
            for v in t.data.iter_mut() {
                *v = if is_bn && name == "running_mean" { -v.abs() } else { v.abs() };
            }
        }
        if let Op::Clip { min, max } = &mut node.op {
            (*min, *max) = (min.abs().min(max.abs()), min.abs().max(max.abs()));
        }
    }
    let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    reference(&m, batch, &ax).iter().fold(0f64, |a, v| a.max(v.abs() as f64))
}

/// For criterion's `iter_custom` in the benches: the median time of the step named `conv...`
/// (the layer alone, not the input and output conversions) over `iters` runs, times `iters`.
pub fn conv_step_time(plan: &mut penni_engine::Plan, x: &[f32], iters: u64) -> std::time::Duration {
    let t = plan.profile(x, iters as usize).unwrap();
    let conv = t.iter().find(|l| l.name.starts_with("conv")).map_or(0, |l| l.median_ns);
    std::time::Duration::from_nanos(conv * iters)
}

/// Whether the CPU runs penni's VNNI integer kernels (AVX-512 with VNNI and VBMI).
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Steps of `plan` whose description contains `what`.
pub fn steps_with(plan: &penni_engine::Plan, what: &str) -> usize {
    plan.describe().iter().filter(|s| s.contains(what)).count()
}

/// A quantized model run on every integer kernel this CPU has (portable, and VNNI where the CPU
/// has it) on the planar or channel-blocked backend: per kernel, its name in step descriptions
/// ("int8 portable", "int8 vnni"), how many steps run on it, the plan's steps and the output.
pub fn int8_runs(model: &Model, batch: usize, x: &[f32], planar: bool) -> Vec<(&'static str, usize, Vec<String>, Vec<f32>)> {
    let opts = penni_engine::EngineOptions {
        threads: 2,
        ..Default::default()
    };
    let kernels: &[&'static str] = if has_vnni() {
        &["int8 vnni", "int8 portable"]
    } else {
        &["int8 portable"]
    };
    kernels
        .iter()
        .map(|&kernel| {
            let mut plan = if kernel == "int8 portable" {
                penni_engine::testing::plan_int8_portable(model, batch, &opts, planar).unwrap()
            } else {
                penni_engine::testing::plan_backend(model, batch, &opts, planar, None).unwrap()
            };
            let steps = steps_with(&plan, kernel);
            let out = plan.run(x).unwrap().to_vec();
            (kernel, steps, plan.describe(), out)
        })
        .collect()
}
