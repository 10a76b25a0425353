//! The conv-pool rewrite (`passes::pool_before_conv`): on random convolutions (dense and
//! decomposed, kernels, paddings, dilations, groups) followed by batchnorms and an average pool,
//! the rewritten model computes what the original did, with fewer multiply-accumulates; where
//! something between the convolution and the pool is not linear, or another node reads the
//! convolution's output, nothing changes. And the batchnorm fold (`passes::fold_batchnorms`)
//! on the same models: every batchnorm that alone reads a convolution disappears into it.

use std::collections::BTreeMap;

use penni_model::reference::{Activation, forward};
use penni_model::zoo::{GraphBuilder, InitRng};
use penni_model::{Conv2d, DecomposedConv2d, Input, Model, Op, Pool2d, Tensor, model_cost, passes};
use proptest::prelude::*;

fn randn(rng: &mut InitRng, shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| rng.normal()).collect()).unwrap()
}

fn bn(rng: &mut InitRng, c: usize) -> BTreeMap<String, Tensor> {
    let mut u = |lo: f32, hi: f32| Tensor::new(vec![c], (0..c).map(|_| lo + (hi - lo) * rng.uniform()).collect()).unwrap();
    BTreeMap::from([
        ("weight".into(), u(0.5, 1.5)),
        ("bias".into(), u(-0.5, 0.5)),
        ("running_mean".into(), u(-0.5, 0.5)),
        ("running_var".into(), u(0.5, 2.0)),
    ])
}

#[derive(Debug, Clone)]
struct Case {
    c: usize,
    n: usize,
    groups: usize,
    k: [usize; 2],
    dilation: usize,
    padding: [usize; 4],
    window: [usize; 2],
    stride: [usize; 2],
    hw: [usize; 2],
    decomposed: bool,
    bns: usize,
    /// 0: the pool reads the chain; 1: a ReLU between (not linear); 2: a second reader
    middle: usize,
    seed: u64,
}

/// x -> conv -> bns -> [relu] -> avgpool -> (a second reader of the conv output) -> output
fn model(cs: &Case) -> Option<Model> {
    let mut rng = InitRng::new(cs.seed);
    let (c, n) = (cs.c * cs.groups, cs.n * cs.groups);
    let mut b = GraphBuilder::new(
        "pool",
        Input {
            name: "x".into(),
            channels: c,
            height: cs.hw[0],
            width: cs.hw[1],
        },
        cs.seed,
    );
    let spec = Conv2d {
        in_channels: c,
        out_channels: n,
        kernel: cs.k,
        stride: [1, 1],
        padding: cs.padding,
        dilation: [cs.dilation; 2],
        groups: cs.groups,
        bias: true,
    };
    let mut params = BTreeMap::from([("bias".to_string(), randn(&mut rng, vec![n]))]);
    let kk = cs.k[0] * cs.k[1];
    let op = if cs.decomposed {
        let d = 1 + cs.seed as usize % kk;
        params.insert("bases".into(), randn(&mut rng, vec![d, kk]));
        params.insert("coefficients".into(), randn(&mut rng, vec![n * cs.c, d]));
        Op::DecomposedConv2d(DecomposedConv2d {
            conv: spec,
            num_bases: d,
            basis_quant: None,
        })
    } else {
        params.insert("weight".into(), randn(&mut rng, vec![n, cs.c, cs.k[0], cs.k[1]]));
        Op::Conv2d(spec)
    };
    let mut t = b.push("conv", op, &["x"], params);
    let conv_out = t.clone();
    for j in 0..cs.bns {
        t = b.push(
            &format!("bn{j}"),
            Op::BatchNorm2d { channels: n, eps: 1e-5 },
            &[&t],
            bn(&mut rng, n),
        );
    }
    if cs.middle == 1 {
        t = b.push("relu", Op::Relu, &[&t], BTreeMap::new());
    }
    let pool = Pool2d {
        kernel: cs.window,
        stride: cs.stride,
        padding: [0; 4],
        ceil_mode: false,
        count_include_pad: false,
    };
    t = b.push("pool", Op::AvgPool2d(pool), &[&t], BTreeMap::new());
    if cs.middle == 2 {
        // a global pool of the conv output as well, added to the pooled map's global pool
        let g1 = b.push("gap1", Op::GlobalAvgPool, &[&t], BTreeMap::new());
        let g2 = b.push("gap2", Op::GlobalAvgPool, &[&conv_out], BTreeMap::new());
        t = b.push("sum", Op::Add, &[&g1, &g2], BTreeMap::new());
    }
    b.finish(&t).ok()
}

fn run(m: &Model, x: &[f32], batch: usize) -> Vec<f32> {
    forward(
        m,
        &Activation {
            n: batch,
            shape: m.input_shape(),
            data: x.to_vec(),
        },
    )
    .unwrap()
    .data
}

/// 256 cases, or PROPTEST_CASES.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1..4usize, 1..4usize, 1..3usize, [1..4usize, 1..4usize], 1..3usize),
        (
            [0..2usize, 0..2usize, 0..3usize, 0..2usize],
            [2..4usize, 1..4usize],
            [1..4usize, 1..4usize],
        ),
        ([4..12usize, 4..12usize], any::<bool>(), 0..3usize, 0..3usize, any::<u64>()),
    )
        .prop_map(
            |((c, n, groups, k, dilation), (padding, window, stride), (hw, decomposed, bns, middle, seed))| Case {
                c,
                n,
                groups,
                k,
                dilation,
                padding,
                window,
                stride,
                hw,
                decomposed,
                bns,
                middle,
                seed,
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn pooling_before_the_conv_computes_the_same(cs in case()) {
        let Some(m) = model(&cs) else { return Ok(()) };
        let mut r = m.clone();
        let moved = passes::pool_before_conv(&mut r);
        r.validate().unwrap();
        let linear = cs.middle == 0;
        // a stride-1 pool saves nothing and is left alone; a conv padding as wide as the window
        // would make windows of padding only, which no pool may have
        let p = cs.padding;
        let fits = p[0].max(p[2]) < cs.window[0] && p[1].max(p[3]) < cs.window[1];
        let expected = usize::from(linear && cs.stride != [1, 1] && fits);
        prop_assert_eq!(moved, expected, "{:?}", cs);
        let batch = 2;
        let x: Vec<f32> = {
            let mut rng = InitRng::new(cs.seed ^ 1);
            (0..batch * m.input_shape().numel()).map(|_| rng.normal()).collect()
        };
        let (want, got) = (run(&m, &x, batch), run(&r, &x, batch));
        let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
        let err = want.iter().zip(&got).fold(0f32, |a, (w, g)| a.max((w - g).abs()));
        prop_assert!(err <= 1e-5 * scale * 10.0, "error {} {:?}", err, cs);
        if moved == 1 {
            let macs = |m: &Model| model_cost(m).unwrap().totals.macs_paper;
            prop_assert!(macs(&r) < macs(&m), "{} -> {}", macs(&m), macs(&r));
        }
    }

    #[test]
    fn folding_batchnorms_into_convs_computes_the_same(cs in case()) {
        let Some(m) = model(&cs) else { return Ok(()) };
        let mut r = m.clone();
        let folded = passes::fold_batchnorms(&mut r);
        r.validate().unwrap();
        // a second reader of the conv's output (middle 2) keeps its batchnorms apart
        let expected = if cs.middle == 2 { 0 } else { cs.bns };
        prop_assert_eq!(folded, expected, "{:?}", cs);
        prop_assert_eq!(r.nodes.len(), m.nodes.len() - folded);
        let batch = 2;
        let x: Vec<f32> = {
            let mut rng = InitRng::new(cs.seed ^ 2);
            (0..batch * m.input_shape().numel()).map(|_| rng.normal()).collect()
        };
        let (want, got) = (run(&m, &x, batch), run(&r, &x, batch));
        let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
        let err = want.iter().zip(&got).fold(0f32, |a, (w, g)| a.max((w - g).abs()));
        prop_assert!(err <= 1e-4 * scale, "error {} {:?}", err, cs);
    }
}

/// The activations the swap tests draw: (op, non-decreasing and not a quantizer).
fn activation(k: usize) -> (Op, bool) {
    use penni_model::Activation as A;
    match k {
        0 => (Op::Relu, true),
        1 => (Op::Clip { min: -0.5, max: 0.75 }, true),
        2 => (Op::Activation(A::Sigmoid), true),
        3 => (Op::Activation(A::LeakyRelu { alpha: 0.1 }), true),
        4 => (Op::Activation(A::HardSigmoid { alpha: 0.2, beta: 0.5 }), true),
        5 => (Op::Activation(A::LeakyRelu { alpha: -0.5 }), false),
        6 => (Op::Activation(A::HardSwish), false),
        _ => (
            Op::Activation(A::QuantizeDequantize {
                scale: 0.05,
                zero_point: 3,
                qmin: 0,
                qmax: 255,
            }),
            false,
        ),
    }
}

#[derive(Debug, Clone)]
struct SwapCase {
    c: usize,
    hw: [usize; 2],
    /// the activations between the conv and the pool, in order
    acts: Vec<usize>,
    window: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 4],
    ceil_mode: bool,
    max: bool,
    /// the activation's output is also the model's (a second reader: nothing moves)
    second_reader: bool,
    seed: u64,
}

/// x -> conv 3x3 -> acts -> pool -> [+ global pool of the last activation] -> output
fn swap_model(cs: &SwapCase) -> Option<Model> {
    let mut rng = InitRng::new(cs.seed);
    let c = cs.c;
    let mut b = GraphBuilder::new(
        "swap",
        Input {
            name: "x".into(),
            channels: c,
            height: cs.hw[0],
            width: cs.hw[1],
        },
        cs.seed,
    );
    let spec = Conv2d {
        in_channels: c,
        out_channels: c,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 1,
        bias: true,
    };
    let params = BTreeMap::from([
        ("weight".to_string(), randn(&mut rng, vec![c, c, 3, 3])),
        ("bias".to_string(), randn(&mut rng, vec![c])),
    ]);
    let mut t = b.push("conv", Op::Conv2d(spec), &["x"], params);
    for (j, &k) in cs.acts.iter().enumerate() {
        t = b.push(&format!("act{j}"), activation(k).0, &[&t], BTreeMap::new());
    }
    let last_act = t.clone();
    let pool = Pool2d {
        kernel: cs.window,
        stride: cs.stride,
        padding: cs.padding,
        ceil_mode: cs.ceil_mode,
        count_include_pad: false,
    };
    let op = if cs.max { Op::MaxPool2d(pool) } else { Op::AvgPool2d(pool) };
    t = b.push("pool", op, &[&t], BTreeMap::new());
    if cs.second_reader {
        let g1 = b.push("gap1", Op::GlobalAvgPool, &[&t], BTreeMap::new());
        let g2 = b.push("gap2", Op::GlobalAvgPool, &[&last_act], BTreeMap::new());
        t = b.push("sum", Op::Add, &[&g1, &g2], BTreeMap::new());
    }
    b.finish(&t).ok()
}

fn swap_case() -> impl Strategy<Value = SwapCase> {
    (
        (1..4usize, [3..10usize, 3..10usize], prop::collection::vec(0..8usize, 1..3)),
        (
            [1..4usize, 1..4usize],
            [1..3usize, 1..3usize],
            [0..2usize, 0..2usize, 0..2usize, 0..2usize],
        ),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |((c, hw, acts), (window, stride, padding), (ceil_mode, max, second_reader, seed))| SwapCase {
                c,
                hw,
                acts,
                window,
                stride,
                // a pool's padding is narrower than its window
                padding: std::array::from_fn(|k| padding[k].min(window[k % 2] - 1)),
                ceil_mode,
                max,
                second_reader,
                seed,
            },
        )
}

proptest! {
    #![proptest_config(config())]

    /// A monotone activation moves after a max pool and the model computes exactly the same;
    /// anything else (average pools, HardSwish, a falling LeakyReLU, a quantizer, a second
    /// reader) stays where it is. The moved activations are the run of movable ones just
    /// before the pool.
    #[test]
    fn monotone_activations_move_after_max_pools_exactly(cs in swap_case()) {
        let Some(m) = swap_model(&cs) else { return Ok(()) };
        let mut r = m.clone();
        let moved = passes::activation_after_max_pool(&mut r);
        r.validate().unwrap();
        let movable_run = cs.acts.iter().rev().take_while(|&&k| activation(k).1).count();
        let expected = if cs.max && !cs.second_reader { movable_run } else { 0 };
        prop_assert_eq!(moved, expected, "{:?}", cs);
        if moved > 0 {
            let pool_at = r.nodes.iter().position(|n| matches!(n.op, Op::MaxPool2d(_))).unwrap();
            prop_assert_eq!(pool_at, 1 + cs.acts.len() - moved, "{:?}", cs);
        }
        let batch = 2;
        let x: Vec<f32> = {
            let mut rng = InitRng::new(cs.seed ^ 3);
            (0..batch * m.input_shape().numel()).map(|_| rng.normal()).collect()
        };
        prop_assert_eq!(run(&m, &x, batch), run(&r, &x, batch), "{:?}", cs);
    }

    /// The approximate reordering moves every element-wise activation but a quantizer before an
    /// average pool (and nothing before a max pool); the model stays valid, with the same
    /// output shape, and a conv -> ReLU -> average pool chain can then pool before the conv.
    #[test]
    fn activations_move_after_average_pools_approximately(cs in swap_case()) {
        let Some(m) = swap_model(&cs) else { return Ok(()) };
        let mut r = m.clone();
        let moved = passes::pool_before_activation(&mut r);
        r.validate().unwrap();
        let movable_run = cs.acts.iter().rev().take_while(|&&k| k != 7).count();
        let expected = if !cs.max && !cs.second_reader { movable_run } else { 0 };
        prop_assert_eq!(moved, expected, "{:?}", cs);
        let out = |m: &Model| m.infer_shapes().unwrap()[&m.output];
        prop_assert_eq!(out(&m), out(&r));
        // the conv pads by 1: the pool can move before it when its window is wider than that
        let fits = cs.window[0] > 1 && cs.window[1] > 1;
        if moved == cs.acts.len() && cs.padding == [0; 4] && cs.stride != [1, 1] && !cs.ceil_mode && fits {
            let pooled = passes::pool_before_conv(&mut r);
            r.validate().unwrap();
            prop_assert_eq!(pooled, 1, "{:?}", cs);
            let macs = |m: &Model| model_cost(m).unwrap().totals.macs_paper;
            prop_assert!(macs(&r) < macs(&m));
        }
    }
}
