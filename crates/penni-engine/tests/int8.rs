//! The integer convolution of quantized models (issue 13): exact against the integer reference
//! (`penni_model::reference::int8_conv2d`), the same integers with VNNI and portably, and the
//! f32 reference within the quantization error on whole quantized networks.

mod common;

use std::collections::BTreeMap;

use common::{has_vnni, input, int8_runs, randomize_bn, steps_with, zoo};
use penni_engine::EngineOptions;
use penni_engine::testing::{plan_backend, plan_int8_portable};
use penni_model::batchnorm::Affine;
use penni_model::grid::{canonical_scale, int8_channels};
use penni_model::reference::{self, Activation};
use penni_model::{Activation as Act, Conv2d, Input, Model, Node, Op, Tensor};
use proptest::prelude::*;

/// A per-tensor quantizer: unsigned 8 bits from 0 for values >= 0, signed 8 bits otherwise.
fn quantizer(lo: f32, hi: f32) -> Act {
    if lo >= 0.0 {
        Act::QuantizeDequantize {
            scale: (hi / 255.0).max(1e-6),
            zero_point: 0,
            qmin: 0,
            qmax: 255,
        }
    } else {
        Act::QuantizeDequantize {
            scale: (hi.max(-lo) / 127.0).max(1e-6),
            zero_point: 0,
            qmin: -128,
            qmax: 127,
        }
    }
}

/// `model` quantized the way `penni quantize` leaves it: every conv's weights on a symmetric
/// 8-bit grid per output channel, a quantize-dequantize (range from a reference pass on `x`) on
/// every conv input.
fn quantize(model: &Model, batch: usize, x: &[f32]) -> Model {
    let all = reference::forward_all(
        model,
        &Activation {
            n: batch,
            shape: model.input_shape(),
            data: x.to_vec(),
        },
    )
    .unwrap();
    let mut nodes = Vec::new();
    let mut done: BTreeMap<String, String> = BTreeMap::new();
    for n in &model.nodes {
        let mut n = n.clone();
        if let Op::Conv2d(c) = &n.op {
            let w = n.params.get_mut("weight").unwrap();
            let per = w.data.len() / c.out_channels;
            for ch in w.data.chunks_mut(per) {
                let s = canonical_scale(ch.iter().fold(0f32, |m, v| m.max(v.abs())), 8);
                if s > 0.0 {
                    ch.iter_mut().for_each(|v| *v = (*v / s).round_ties_even().clamp(-127.0, 127.0) * s);
                }
            }
            let t = n.inputs[0].clone();
            let q = done.entry(t.clone()).or_insert_with(|| {
                let d = &all[&t].data;
                let (lo, hi) = d.iter().fold((0f32, 0f32), |(a, b), v| (a.min(*v), b.max(*v)));
                nodes.push(Node {
                    name: format!("{t}_quant"),
                    op: Op::Activation(quantizer(lo, hi)),
                    inputs: vec![t.clone()],
                    output: format!("{t}_q"),
                    params: BTreeMap::new(),
                });
                format!("{t}_q")
            });
            n.inputs[0] = q.clone();
        }
        nodes.push(n);
    }
    let m = Model { nodes, ..model.clone() };
    m.validate().unwrap();
    m
}

/// One quantize -> conv model on input C x H x W.
fn one_conv(c: &Conv2d, (ch, h, w): (usize, usize, usize), grid: Act, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Model {
    let mut params = BTreeMap::new();
    params.insert(
        "weight".into(),
        Tensor::new(vec![c.out_channels, ch, c.kernel[0], c.kernel[1]], weight).unwrap(),
    );
    if let Some(b) = bias {
        params.insert("bias".into(), Tensor::new(vec![c.out_channels], b).unwrap());
    }
    let m = Model {
        name: "one-conv".into(),
        input: Input {
            name: "x".into(),
            channels: ch,
            height: h,
            width: w,
        },
        nodes: vec![
            Node {
                name: "q".into(),
                op: Op::Activation(grid),
                inputs: vec!["x".into()],
                output: "xq".into(),
                params: BTreeMap::new(),
            },
            Node {
                name: "conv".into(),
                op: Op::Conv2d(*c),
                inputs: vec!["xq".into()],
                output: "y".into(),
                params,
            },
        ],
        output: "y".into(),
    };
    m.validate().unwrap();
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every geometry of the blocked kernel (stems of < 16 channels, channel counts off the
    /// lane width, strides, padding, 1x1, signed and unsigned grids with a zero point): the
    /// engine's output equals the integer reference bit for bit, portably and (where the CPU
    /// has it) on VNNI.
    #[test]
    fn int8_conv_equals_the_integer_reference(
        ch in 1usize..40, n_out in 1usize..40, hw in 3usize..12, k in prop::sample::select(vec![1usize, 3, 5]),
        stride in 1usize..3, pad in 0usize..3, signed in any::<bool>(), zp in -20i32..20, batch in 1usize..4,
        bias in any::<bool>(), seed in 0u64..1000,
    ) {
        let pad = pad.min(k / 2 + 1);
        prop_assume!(hw + 2 * pad >= k);
        let c = Conv2d {
            in_channels: ch,
            out_channels: n_out,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad; 4],
            dilation: [1, 1],
            groups: 1,
            bias,
        };
        let (qmin, qmax, zp) = if signed { (-128, 127, zp) } else { (0, 255, zp.abs()) };
        let scale = 0.037f32;
        let grid = Act::QuantizeDequantize { scale, zero_point: zp, qmin, qmax };
        let mut rng = penni_model::zoo::InitRng::new(seed);
        // weights on a canonical per-channel grid, as `penni quantize` writes them
        let per = ch * k * k;
        let mut weight: Vec<f32> = (0..n_out * per).map(|_| rng.normal() * 0.1).collect();
        for row in weight.chunks_mut(per) {
            let s = canonical_scale(row.iter().fold(0f32, |m, v| m.max(v.abs())), 8);
            row.iter_mut().for_each(|v| *v = (*v / s).round_ties_even() * s);
        }
        let b: Option<Vec<f32>> = bias.then(|| (0..n_out).map(|_| rng.normal()).collect());
        let model = one_conv(&c, (ch, hw, hw), grid, weight.clone(), b.clone());
        // values on the whole grid, its ends included (off-grid inputs would test the input
        // quantizer, whose x / s and x * (1/s) may round apart at a rounding edge)
        let xq: Vec<f32> = (0..batch * ch * hw * hw).map(|_| grid.apply((rng.uniform() * 300.0 - 150.0) * scale)).collect();
        let x = xq.clone();
        let out = model.output_shape().unwrap();
        // the weight grid the engine finds (the same scales, or an equal canonical one)
        let (ws, wc) = int8_channels(&weight, n_out).unwrap();
        let want = reference::int8_conv2d(
            &Activation { n: batch, shape: model.input_shape(), data: xq },
            out, &c, scale, &wc, &ws, b.as_deref(), &Affine::identity(n_out),
        );
        // the portable kernel everywhere, VNNI where the CPU has it
        for (kernel, steps, described, got) in int8_runs(&model, batch, &x, false) {
            prop_assert_eq!(steps, 1, "{:?}", described);
            prop_assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} {:?} vs {:?}", kernel, &got[..got.len().min(8)], &want[..want.len().min(8)]);
        }
    }
}

/// Whole quantized networks (residual adds, batchnorm folded into the integer factor, a
/// quantizer on every conv input) run every conv on the integer kernels (portably, and with
/// VNNI in a plain plan where the CPU has it) and agree with the f32 kernels and the f32
/// reference to within the quantization error; `f32_kernels_only` turns them off.
#[test]
fn quantized_networks_run_on_the_integer_kernels() {
    for (name, width, hw) in [("resnet20", 0.5, 16), ("vgg16", 0.125, 32)] {
        let mut m = zoo(name, width, hw, 3);
        randomize_bn(&mut m, 4);
        let x = input(&m, 2, 5);
        let q = quantize(&m, 2, &x);
        let want = common::reference(&q, 2, &x);
        let opts = EngineOptions {
            threads: 2,
            ..Default::default()
        };
        let convs = q.nodes.iter().filter(|n| matches!(n.op, Op::Conv2d(_))).count();
        let mut portable = plan_int8_portable(&q, 2, &opts, false).unwrap();
        assert_eq!(steps_with(&portable, "int8 portable"), convs, "{name}: {:#?}", portable.describe());
        let a = portable.run(&x).unwrap().to_vec();
        // a plain plan: VNNI where the CPU has it, the f32 kernels elsewhere (faster than the
        // portable integer ones)
        let mut plain = plan_backend(&q, 2, &opts, false, None).unwrap();
        assert_eq!(steps_with(&plain, "int8 vnni"), if has_vnni() { convs } else { 0 });
        assert_eq!(steps_with(&plain, "int8 portable"), 0);
        let b = plain.run(&x).unwrap().to_vec();
        let f32_opts = EngineOptions {
            f32_kernels_only: true,
            ..opts.clone()
        };
        let mut f = plan_backend(&q, 2, &f32_opts, false, None).unwrap();
        assert_eq!(steps_with(&f, "int8"), 0);
        let c = f.run(&x).unwrap().to_vec();
        // the sums differ from the f32 ones by round-off only; a value within it of a rounding
        // edge of a later quantizer lands one step over, so the outputs agree to a few steps
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (label, got) in [
            ("portable vs plain plan", &b),
            ("int8 vs f32 kernels", &c),
            ("int8 vs reference", &want),
        ] {
            let diff = a.iter().zip(got.iter()).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
            assert!(diff <= 0.02 * scale, "{name}: {label}: {diff} of {scale}");
        }
    }
}
