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
        Op::DecomposedConv2d(DecomposedConv2d { conv: spec, num_bases: d })
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
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

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
