//! The integer PENNI layer (issue 13): a decomposed convolution with quantized basis maps runs
//! both stages on the integers and equals the integer reference
//! (`penni_model::reference::int8_decomposed`) bit for bit, portably and with VNNI; layers it
//! cannot take run as their two stages and agree with the f32 reference.

mod common;

use std::collections::BTreeMap;

use common::{int8_runs, steps_with};

use penni_engine::EngineOptions;
use penni_engine::testing::{plan_backend, plan_int8_portable};
use penni_model::batchnorm::Affine;
use penni_model::grid::{canonical_scale, int8_channels};
use penni_model::reference::{self, Activation};
use penni_model::{Activation as Act, Conv2d, DecomposedConv2d, Input, Model, Node, Op, Tensor};
use proptest::prelude::*;

/// `values` put on a symmetric 8-bit grid in `groups` equal runs, as `penni quantize` does.
fn on_grid(values: &mut [f32], groups: usize) {
    let per = values.len() / groups;
    for run in values.chunks_mut(per) {
        let s = canonical_scale(run.iter().fold(0f32, |m, v| m.max(v.abs())), 8);
        if s > 0.0 {
            run.iter_mut().for_each(|v| *v = (*v / s).round_ties_even() * s);
        }
    }
}

/// quantize(x) -> PENNI layer with bases, sparse coefficients and bias on grids; its basis maps'
/// grid spans what the reference's basis maps of `x` reach (`map_zp` its zero point).
#[allow(clippy::too_many_arguments)]
fn one_layer(c: &Conv2d, d: usize, (h, w): (usize, usize), grid: Act, map_zp: i32, x: &[f32], batch: usize, seed: u64) -> Model {
    let mut rng = penni_model::zoo::InitRng::new(seed);
    let kk = c.kernel[0] * c.kernel[1];
    let mut bases: Vec<f32> = (0..d * kk).map(|_| rng.normal()).collect();
    on_grid(&mut bases, d);
    let cpg = c.in_channels / c.groups;
    // about a third of the coefficients pruned, some whole kernels
    let mut coef: Vec<f32> = (0..c.out_channels * cpg * d)
        .map(|_| if rng.uniform() < 0.35 { 0.0 } else { rng.normal() * 0.3 })
        .collect();
    on_grid(&mut coef, c.out_channels);
    let mut params = BTreeMap::new();
    params.insert("bases".into(), Tensor::new(vec![d, kk], bases).unwrap());
    params.insert("coefficients".into(), Tensor::new(vec![c.out_channels * cpg, d], coef).unwrap());
    if c.bias {
        params.insert(
            "bias".into(),
            Tensor::new(vec![c.out_channels], (0..c.out_channels).map(|_| rng.normal()).collect()).unwrap(),
        );
    }
    let mut layer = Node {
        name: "penni".into(),
        op: Op::DecomposedConv2d(DecomposedConv2d::from_conv(c, d)),
        inputs: vec!["xq".into()],
        output: "y".into(),
        params,
    };
    let xa = Activation {
        n: batch,
        shape: penni_model::Shape::Map { c: c.in_channels, h, w },
        data: x.to_vec(),
    };
    let maps = reference::basis_maps(&layer, &xa).unwrap();
    let m = maps.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    // a grid that clips a little (the clamp is part of what is tested)
    let scale = 0.9 * m / 127.0;
    if let Op::DecomposedConv2d(dc) = &mut layer.op {
        dc.basis_quant = Some(Act::QuantizeDequantize {
            scale,
            zero_point: map_zp,
            qmin: -128,
            qmax: 127,
        });
    }
    let model = Model {
        name: "one-penni".into(),
        input: Input {
            name: "x".into(),
            channels: c.in_channels,
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
            layer,
        ],
        output: "y".into(),
    };
    model.validate().unwrap();
    model
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Every geometry: kernel sizes 1..5 (rows of 1 or 2 tap quads), strides 1..3, padding,
    /// groups, channel and basis counts off the quad size (quads of maps straddle channels),
    /// maps from 1 pixel to rows wide enough that a stride-2 vector is gathered lane by lane,
    /// signed and unsigned input grids with zero points, a map grid with a zero point: equal
    /// to the integer reference bit for bit.
    #[test]
    fn int8_penni_equals_the_integer_reference(
        ch in 1usize..20, n_out in 1usize..24, h in 1usize..10, w in 1usize..80, kh in 1usize..6, kw in 1usize..6,
        d in 1usize..8, stride in 1usize..4, pad in 0usize..3, groups in 1usize..3, signed in any::<bool>(),
        zp in -20i32..20, map_zp in -8i32..8, batch in 1usize..3, bias in any::<bool>(), seed in 0u64..1000,
    ) {
        let (ch, n_out) = (ch * groups, n_out * groups);
        let pad = pad.min(kh.min(kw) / 2 + 1);
        prop_assume!(h + 2 * pad >= kh && w + 2 * pad >= kw);
        prop_assume!(d <= kh * kw);
        let c = Conv2d {
            in_channels: ch,
            out_channels: n_out,
            kernel: [kh, kw],
            stride: [stride, stride],
            padding: [pad; 4],
            dilation: [1, 1],
            groups,
            bias,
        };
        let (qmin, qmax, zp) = if signed { (-128, 127, zp) } else { (0, 255, zp.abs()) };
        let scale = 0.037f32;
        let grid = Act::QuantizeDequantize { scale, zero_point: zp, qmin, qmax };
        let mut rng = penni_model::zoo::InitRng::new(seed ^ 0x5eed);
        let x: Vec<f32> = (0..batch * ch * h * w).map(|_| grid.apply((rng.uniform() * 300.0 - 150.0) * scale)).collect();
        let model = one_layer(&c, d, (h, w), grid, map_zp, &x, batch, seed);
        let layer = &model.nodes[1];
        let Op::DecomposedConv2d(dc) = &layer.op else { unreachable!() };
        let Some(Act::QuantizeDequantize { scale: ms, zero_point: mz, qmin: mmin, qmax: mmax }) = dc.basis_quant else { unreachable!() };
        let (bs, bc) = int8_channels(&layer.params["bases"].data, d).unwrap();
        let (cs, cc) = int8_channels(&layer.params["coefficients"].data, n_out).unwrap();
        let out = model.output_shape().unwrap();
        let want = reference::int8_decomposed(
            &Activation { n: batch, shape: model.input_shape(), data: x.clone() },
            out, dc, scale, &bc, &bs, (ms, mz, mmin, mmax), &cc, &cs,
            layer.params.get("bias").map(|b| b.data.as_slice()), &Affine::identity(n_out),
        );
        // the portable kernel everywhere, VNNI where the CPU has it
        for (kernel, steps, described, got) in int8_runs(&model, batch, &x, true) {
            prop_assert_eq!(steps, 1, "{:?}", described);
            prop_assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} {:?} vs {:?}", kernel, &got[..got.len().min(8)], &want[..want.len().min(8)]);
        }
    }
}

/// The same layer, and the f32 kernels' two-stage fallback (integer kernels off), agree with
/// the f32 reference to within a step of the basis maps' grid per term; so does the ONNX
/// round trip's reading of the layer (covered in penni-onnx's tests).
#[test]
fn int8_penni_and_its_f32_fallback_agree_with_the_reference() {
    let c = Conv2d {
        in_channels: 12,
        out_channels: 20,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 1,
        bias: true,
    };
    let grid = Act::QuantizeDequantize {
        scale: 0.02,
        zero_point: 0,
        qmin: 0,
        qmax: 255,
    };
    let mut rng = penni_model::zoo::InitRng::new(9);
    let (batch, h, w) = (2, 9, 17);
    let x: Vec<f32> = (0..batch * 12 * h * w).map(|_| grid.apply(rng.uniform() * 5.0)).collect();
    let model = one_layer(&c, 3, (h, w), grid, 0, &x, batch, 4);
    let want = common::reference(&model, batch, &x);
    let opts = EngineOptions {
        threads: 2,
        ..Default::default()
    };
    let mut int = plan_int8_portable(&model, batch, &opts, true).unwrap();
    assert_eq!(steps_with(&int, "int8 portable"), 1, "{:?}", int.describe());
    let a = int.run(&x).unwrap().to_vec();
    let f32_opts = EngineOptions {
        f32_kernels_only: true,
        ..opts
    };
    let mut f = plan_backend(&model, batch, &f32_opts, true, None).unwrap();
    assert_eq!(steps_with(&f, "int8"), 0, "{:?}", f.describe());
    let b = f.run(&x).unwrap().to_vec();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (label, got) in [("integer step", &a), ("f32 stages", &b)] {
        let diff = want.iter().zip(got.iter()).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
        assert!(diff <= 0.01 * scale, "{label}: {diff} of {scale}");
    }
}
