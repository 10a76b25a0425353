//! Kernel tests: single-layer models with random shapes (strides 1-3, asymmetric padding,
//! dilation, odd sizes, groups, kernels 1-5, 1-9 bases, any coefficient density) through the
//! engine, compared with the reference forward pass. Every case also picks a backend and, for
//! decomposed layers, a strategy at random, so each kernel variant meets odd shapes.
mod common;
use std::collections::BTreeMap;

use common::*;
use penni_engine::{EngineOptions, Strategy};
use penni_model::zoo::{GraphBuilder, InitRng};
use penni_model::{Conv2d, DecomposedConv2d, Input, Model, Op, Pool2d, Tensor};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

const TOL: f64 = 1e-4;

fn randn(rng: &mut InitRng, shape: Vec<usize>, std: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| rng.normal() * std).collect()).unwrap()
}

fn bn_params(rng: &mut InitRng, c: usize) -> BTreeMap<String, Tensor> {
    let mut u = |lo: f32, hi: f32| Tensor::new(vec![c], (0..c).map(|_| lo + (hi - lo) * rng.uniform()).collect()).unwrap();
    BTreeMap::from([
        ("weight".into(), u(0.5, 1.5)),
        ("bias".into(), u(-0.5, 0.5)),
        ("running_mean".into(), u(-0.5, 0.5)),
        ("running_var".into(), u(0.5, 2.0)),
    ])
}

#[derive(Debug, Clone)]
struct ConvCase {
    cg: usize,
    og: usize,
    groups: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: [usize; 4],
    h: usize,
    w: usize,
    batch: usize,
    bias: bool,
    /// 0 none, 1 batchnorm, 2 batchnorm + relu, 3 clip, 4 residual add of a twin conv + relu
    tail: usize,
    /// decomposed: number of bases and fraction of non-zero coefficients
    bases: usize,
    density: f64,
    planar: bool,
    strategy: usize,
    seed: u64,
}

fn conv_case() -> impl proptest::strategy::Strategy<Value = ConvCase> {
    (
        (1..6usize, 1..6usize, 1..4usize),
        (
            [1..6usize, 1..6usize],
            [1..4usize, 1..4usize],
            [1..3usize, 1..3usize],
            [0..3usize, 0..3usize, 0..3usize, 0..3usize],
        ),
        (1..10usize, 1..10usize, 1..4usize, any::<bool>(), 0..5usize),
        (1..10usize, 0.0..1.0f64, any::<bool>(), 0..5usize, any::<u64>()),
    )
        .prop_map(
            |(
                (cg, og, groups),
                (kernel, stride, dilation, padding),
                (h, w, batch, bias, tail),
                (bases, density, planar, strategy, seed),
            )| {
                // grow the map until the window fits
                let span = |k: usize, d: usize| (k - 1) * d + 1;
                let h = h.max(span(kernel[0], dilation[0]).saturating_sub(padding[0] + padding[2]).max(1));
                let w = w.max(span(kernel[1], dilation[1]).saturating_sub(padding[1] + padding[3]).max(1));
                // wide enough channel counts now and then, to cross 16-channel blocks
                let (cg, og) = if seed % 4 == 0 { (cg * 7, og * 5) } else { (cg, og) };
                // and rows of 23 to 31 pixels, so that strided outputs are 8 to 16 wide (row by
                // row or gathered, around the switch between the two)
                let w = if seed % 5 == 1 { w + 22 } else { w };
                ConvCase {
                    cg,
                    og,
                    groups,
                    kernel,
                    stride,
                    dilation,
                    padding,
                    h,
                    w,
                    batch,
                    bias,
                    tail,
                    bases,
                    density,
                    planar,
                    strategy,
                    seed,
                }
            },
        )
}

/// x -> conv (dense or decomposed) -> tail, as a model.
fn conv_model(cs: &ConvCase, decomposed: bool) -> Model {
    let (b, out) = conv_graph(cs, decomposed);
    b.finish(&out).unwrap()
}

/// The graph of `conv_model` so far, and its last tensor.
fn conv_graph(cs: &ConvCase, decomposed: bool) -> (GraphBuilder, String) {
    let mut rng = InitRng::new(cs.seed);
    let (c, n) = (cs.cg * cs.groups, cs.og * cs.groups);
    let kk = cs.kernel[0] * cs.kernel[1];
    let mut b = GraphBuilder::new(
        "case",
        Input {
            name: "x".into(),
            channels: c,
            height: cs.h,
            width: cs.w,
        },
        cs.seed,
    );
    let conv = |b: &mut GraphBuilder, name: &str, rng: &mut InitRng| -> String {
        let mut params = BTreeMap::new();
        if cs.bias {
            params.insert("bias".into(), randn(rng, vec![n], 0.5));
        }
        let std = (1.0 / (cs.cg * kk) as f32).sqrt();
        let op = if decomposed {
            params.insert("bases".into(), randn(rng, vec![cs.bases, kk], 1.0));
            let coefs: Vec<f32> = (0..n * cs.cg * cs.bases)
                .map(|_| {
                    if (rng.uniform() as f64) < cs.density {
                        rng.normal() * std
                    } else {
                        0.0
                    }
                })
                .collect();
            params.insert("coefficients".into(), Tensor::new(vec![n * cs.cg, cs.bases], coefs).unwrap());
            Op::DecomposedConv2d(DecomposedConv2d {
                conv: Conv2d {
                    in_channels: c,
                    out_channels: n,
                    kernel: cs.kernel,
                    stride: cs.stride,
                    padding: cs.padding,
                    dilation: cs.dilation,
                    groups: cs.groups,
                    bias: cs.bias,
                },
                num_bases: cs.bases,
                basis_quant: None,
            })
        } else {
            params.insert("weight".into(), randn(rng, vec![n, cs.cg, cs.kernel[0], cs.kernel[1]], std));
            Op::Conv2d(Conv2d {
                in_channels: c,
                out_channels: n,
                kernel: cs.kernel,
                stride: cs.stride,
                padding: cs.padding,
                dilation: cs.dilation,
                groups: cs.groups,
                bias: cs.bias,
            })
        };
        b.push(name, op, &["x"], params)
    };
    let y = conv(&mut b, "conv", &mut rng);
    let out = match cs.tail {
        1 => b.push("bn", Op::BatchNorm2d { channels: n, eps: 1e-5 }, &[&y], bn_params(&mut rng, n)),
        2 => {
            let t = b.push("bn", Op::BatchNorm2d { channels: n, eps: 1e-5 }, &[&y], bn_params(&mut rng, n));
            b.push("relu", Op::Relu, &[&t], BTreeMap::new())
        }
        3 => b.push("clip", Op::Clip { min: -0.3, max: 0.4 }, &[&y], BTreeMap::new()),
        4 => {
            let z = conv(&mut b, "twin", &mut rng);
            let s = b.push("add", Op::Add, &[&z, &y], BTreeMap::new());
            b.push("relu", Op::Relu, &[&s], BTreeMap::new())
        }
        _ => y,
    };
    (b, out)
}

const STRATEGIES: [Strategy; 5] = [
    Strategy::Auto,
    Strategy::BasisFirst,
    Strategy::MixFirst,
    Strategy::Fused,
    Strategy::Dense,
];

fn run_case(model: &Model, batch: usize, planar: bool, strategy: Strategy, threads: usize) -> Result<(), TestCaseError> {
    check_plan(model, batch, strategy, threads, &|opts, portable| {
        if portable {
            penni_engine::testing::plan_backend_fallback(model, batch, opts, planar)
        } else {
            penni_engine::testing::plan_backend(model, batch, opts, planar, None)
        }
    })
}

/// The plan that `make` builds (options, portable kernels or not) against the reference.
fn check_plan(
    model: &Model,
    batch: usize,
    strategy: Strategy,
    threads: usize,
    make: &dyn Fn(&EngineOptions, bool) -> Result<penni_engine::Plan, penni_engine::EngineError>,
) -> Result<(), TestCaseError> {
    let x = input(model, batch, 7);
    let r = reference(model, batch, &x);
    let opts = EngineOptions {
        threads,
        decomposed_strategy: strategy,
        ..Default::default()
    };
    // now and then the portable kernels instead of the detected ISA's
    let portable = r.len().is_multiple_of(5);
    let mut plan = make(&opts, portable).unwrap();
    let y = plan.run(&x).unwrap();
    let e = rel_err(y, &r);
    // outputs that cancel to almost nothing: judge the error against the size of the summed
    // terms (f32 round-off scales with them), still far below any real bug
    let scale = r.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
    let diff = e * if scale == 0.0 { 1.0 } else { scale };
    let ok = e < TOL || diff < 1e-6 * magnitude(model, batch, &x);
    prop_assert!(ok, "relative error {e:.2e}, {strategy:?}\n{:#?}", plan);
    Ok(())
}

proptest! {
    // 64 cases by default; PROPTEST_CASES=5000 for a deeper run
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_global_rejects: 1 << 20,
        ..ProptestConfig::default()
    })]

    #[test]
    fn dense_conv_matches_reference(cs in conv_case()) {
        let m = conv_model(&cs, false);
        run_case(&m, cs.batch, cs.planar, Strategy::Auto, 1 + cs.seed as usize % 3)?;
    }

    #[test]
    fn decomposed_conv_matches_reference(cs in conv_case()) {
        let m = conv_model(&cs, true);
        run_case(&m, cs.batch, cs.planar, STRATEGIES[cs.strategy], 1 + cs.seed as usize % 3)?;
    }

    #[test]
    fn packed_combination_matches_reference(cs in conv_case()) {
        // basis-first or fused (the dataflows with a combination stage), rows in pairs
        let m = conv_model(&cs, true);
        let strategy = if cs.seed % 2 == 0 { Strategy::BasisFirst } else { Strategy::Fused };
        check_plan(&m, cs.batch, strategy, 1 + cs.seed as usize % 3, &|opts, portable| {
            let plan = penni_engine::testing::plan_packed(&m, cs.batch, opts, true, portable)?;
            assert!(plan.describe().iter().any(|d| d.contains(" packed2x")), "{:?}", plan.describe());
            Ok(plan)
        })?;
    }

    #[test]
    fn stride2_phase_split_matches_reference(cs in conv_case(), h in 2..24usize, w in 2..18usize) {
        // stride 2 on narrow maps (outputs under 12 wide, which would gather), basis-first or
        // fused on the planar backend: the layer reads its input's phase split, certainly when
        // its output is as wide as a phase (else where that takes no more vectors)
        let span = |k: usize, p: usize| k.saturating_sub(p).max(1);
        let cs = ConvCase {
            stride: [2, 2],
            dilation: [1, 1],
            h: h.max(span(cs.kernel[0], cs.padding[0] + cs.padding[2])),
            w: w.max(span(cs.kernel[1], cs.padding[1] + cs.padding[3])),
            ..cs
        };
        let m = conv_model(&cs, true);
        let ow = (cs.w + cs.padding[1] + cs.padding[3] - cs.kernel[1]) / 2 + 1;
        let strategy = if cs.seed.is_multiple_of(2) { Strategy::BasisFirst } else { Strategy::Fused };
        check_plan(&m, cs.batch, strategy, 1 + cs.seed as usize % 3, &|opts, portable| {
            let plan = if portable {
                penni_engine::testing::plan_backend_fallback(&m, cs.batch, opts, true)?
            } else {
                penni_engine::testing::plan_backend(&m, cs.batch, opts, true, None)?
            };
            if ow == cs.w.div_ceil(2) {
                assert!(plan.describe().iter().any(|d| d.contains(" phases")), "{:?}", plan.describe());
            }
            Ok(plan)
        })?;
    }

    #[test]
    fn max_pool_epilogue_matches_reference(cs in conv_case(), wide in 0..3usize, rows in 1..4usize, relu_after in any::<bool>()) {
        // a "same" convolution on a map 8, 16 or 32 wide (whole tiles of pool windows), its tail
        // (batchnorm, ReLU, clip or a residual add), then a 2x2 max pool and maybe a ReLU: on the
        // planar backend the pool runs in the convolution's epilogue, on every dataflow
        let k = if cs.kernel[0] % 2 == 1 { 3 } else { 1 };
        let w = 8 << wide;
        let cs = ConvCase {
            kernel: [k, k],
            stride: [1, 1],
            dilation: [1, 1],
            padding: [k / 2; 4],
            h: rows * 64 / w,
            w,
            ..cs
        };
        let decomposed = !cs.seed.is_multiple_of(3);
        let (mut b, t) = conv_graph(&cs, decomposed);
        let p = Pool2d { kernel: [2, 2], stride: [2, 2], padding: [0; 4], ceil_mode: false, count_include_pad: false };
        let mut t = b.push("pool", Op::MaxPool2d(p), &[&t], BTreeMap::new());
        if relu_after {
            t = b.push("post", Op::Relu, &[&t], BTreeMap::new());
        }
        let m = b.finish(&t).unwrap();
        let strategy = if decomposed { STRATEGIES[cs.strategy] } else { Strategy::Auto };
        check_plan(&m, cs.batch, strategy, 1 + cs.seed as usize % 3, &|opts, portable| {
            let plan = if portable {
                penni_engine::testing::plan_backend_fallback(&m, cs.batch, opts, true)?
            } else {
                penni_engine::testing::plan_backend(&m, cs.batch, opts, true, None)?
            };
            assert!(plan.describe().iter().any(|d| d.contains("+maxpool2x2")), "{:?}", plan.describe());
            Ok(plan)
        })?;
    }

    #[test]
    fn tucker_chain_matches_reference(cs in conv_case()) {
        let m = chain_model(&cs);
        let threads = 1 + cs.seed as usize % 3;
        run_case(&m, cs.batch, cs.planar, Strategy::Auto, threads)?;
        // the planar backend runs it as one step (else the case above tested three convs)
        let opts = EngineOptions { threads, ..EngineOptions::default() };
        let plan = penni_engine::testing::plan_backend(&m, cs.batch, &opts, true, None).unwrap();
        prop_assert!(plan.describe().iter().any(|d| d.contains("tucker chain")), "{:#?}", plan.describe());
    }

    #[test]
    fn pools_match_reference(
        c in 1..20usize, h in 1..12usize, w in 1..12usize, k in [1..5usize, 1..5usize], s in [1..4usize, 1..4usize],
        pad in [0..3usize, 0..3usize, 0..3usize, 0..3usize], ceil_mode in any::<bool>(), count_include_pad in any::<bool>(),
        max in any::<bool>(), batch in 1..3usize, planar in any::<bool>(),
    ) {
        // a third of the cases unpadded with column strides 1 and 2: the planar vector kernel's
        let plain = c % 3 == 0;
        let pad = if plain { [0; 4] } else { [pad[0].min(k[0]), pad[1].min(k[1]), pad[2].min(k[0]), pad[3].min(k[1])] };
        let s = if plain { [s[0], 1 + s[1] % 2] } else { s };
        // half of those on wide maps (a vector per row), half on narrow ones (several rows per
        // vector, VGG's last pools)
        let (h, w) = if plain && c % 2 == 0 { (h + 8, w + 16) } else { (h, w) };
        let (h, w) = (h.max(k[0]), w.max(k[1]));
        let p = Pool2d { kernel: k, stride: s, padding: pad, ceil_mode, count_include_pad };
        let mut b = GraphBuilder::new("pool", Input { name: "x".into(), channels: c, height: h, width: w }, 1);
        let op = if max { Op::MaxPool2d(p) } else { Op::AvgPool2d(p) };
        let y = b.push("pool", op, &["x"], BTreeMap::new());
        // a fully padded window makes -inf (max) that the relative metric cannot compare
        let Ok(m) = b.finish(&y) else { return Ok(()) };
        let x = input(&m, batch, 3);
        let r = reference(&m, batch, &x);
        prop_assume!(r.iter().all(|v| v.is_finite()));
        run_case(&m, batch, planar, Strategy::Auto, 2)?;
    }

    /// Activations before and after a pool: a monotone one before a max pool moves after it
    /// (MLCNN), ReLU/Clip after a pool run in its epilogue, the rest as steps of their own.
    #[test]
    fn activations_around_pools_match_reference(
        c in 1..20usize, hw in [2..20usize, 2..40usize], k in [1..4usize, 1..4usize], s in [1..3usize, 1..3usize],
        acts in prop::collection::vec((0..5usize, any::<bool>()), 1..4), max in any::<bool>(),
        batch in 1..3usize, planar in any::<bool>(),
    ) {
        use penni_model::Activation as A;
        let (h, w) = (hw[0].max(k[0]), hw[1].max(k[1]));
        let p = Pool2d { kernel: k, stride: s, padding: [0; 4], ceil_mode: false, count_include_pad: false };
        let mut b = GraphBuilder::new("pool", Input { name: "x".into(), channels: c, height: h, width: w }, 1);
        let act_op = |a: usize| match a {
            0 => Op::Relu,
            1 => Op::Clip { min: -0.25, max: 0.5 },
            2 => Op::Activation(A::Sigmoid),
            3 => Op::Activation(A::LeakyRelu { alpha: 0.2 }),
            _ => Op::Activation(A::HardSwish),
        };
        // (activation, before the pool?)
        let mut t = "x".to_string();
        for (j, &(a, before)) in acts.iter().enumerate() {
            if before {
                t = b.push(&format!("pre{j}"), act_op(a), &[&t], BTreeMap::new());
            }
        }
        let op = if max { Op::MaxPool2d(p) } else { Op::AvgPool2d(p) };
        t = b.push("pool", op, &[&t], BTreeMap::new());
        for (j, &(a, before)) in acts.iter().enumerate() {
            if !before {
                t = b.push(&format!("post{j}"), act_op(a), &[&t], BTreeMap::new());
            }
        }
        let m = b.finish(&t).unwrap();
        run_case(&m, batch, planar, Strategy::Auto, 2)?;
        // ReLU/Clip chains before a max pool end up in the pool's epilogue
        if max && acts.iter().any(|&(_, before)| before) && acts.iter().all(|&(a, before)| !before || a < 2) {
            let opts = EngineOptions::default();
            let plan = penni_engine::testing::plan_backend(&m, batch, &opts, planar, None).unwrap();
            let d = plan.describe();
            prop_assert!(d.iter().any(|s| s.contains("maxpool") && s.contains("+act")), "{:#?}", d);
        }
    }
}

/// x -> 1x1 (C -> R1) -> k x k core (R1 -> R2) -> 1x1 (R2 -> N) -> tail: a Tucker-2 convolution,
/// which the planar backend runs as one chain step. The core takes the case's kernel, stride,
/// padding and dilation; `cs.bases` is R1, `cs.cg` is C, `cs.og` is R2 and N = R2 + bases.
fn chain_model(cs: &ConvCase) -> Model {
    let mut rng = InitRng::new(cs.seed);
    let (c, r1, r2) = (cs.cg, cs.bases, cs.og);
    let n = r2 + cs.bases;
    let mut b = GraphBuilder::new(
        "chain",
        Input {
            name: "x".into(),
            channels: c,
            height: cs.h,
            width: cs.w,
        },
        cs.seed,
    );
    let conv = |b: &mut GraphBuilder, rng: &mut InitRng, name: &str, x: &str, (ci, co): (usize, usize), core: bool, bias: bool| {
        let (kernel, stride, padding, dilation) = if core {
            (cs.kernel, cs.stride, cs.padding, cs.dilation)
        } else {
            ([1, 1], [1, 1], [0; 4], [1, 1])
        };
        let mut params = BTreeMap::new();
        let std = (1.0 / (ci * kernel[0] * kernel[1]) as f32).sqrt();
        params.insert("weight".into(), randn(rng, vec![co, ci, kernel[0], kernel[1]], std));
        if bias {
            params.insert("bias".into(), randn(rng, vec![co], 0.5));
        }
        let spec = Conv2d {
            in_channels: ci,
            out_channels: co,
            kernel,
            stride,
            padding,
            dilation,
            groups: 1,
            bias,
        };
        b.push(name, Op::Conv2d(spec), &[x], params)
    };
    // biases on each factor now and then (penni's own Tucker factors have one on the last only)
    let t1 = conv(
        &mut b,
        &mut rng,
        "conv.tucker_in",
        "x",
        (c, r1),
        false,
        cs.bias && cs.seed.is_multiple_of(3),
    );
    let t2 = conv(
        &mut b,
        &mut rng,
        "conv.tucker_core",
        &t1,
        (r1, r2),
        true,
        cs.bias && cs.seed % 3 == 1,
    );
    let y = conv(&mut b, &mut rng, "conv", &t2, (r2, n), false, cs.bias);
    let out = match cs.tail {
        1 => b.push("bn", Op::BatchNorm2d { channels: n, eps: 1e-5 }, &[&y], bn_params(&mut rng, n)),
        2 => {
            let t = b.push("bn", Op::BatchNorm2d { channels: n, eps: 1e-5 }, &[&y], bn_params(&mut rng, n));
            b.push("relu", Op::Relu, &[&t], BTreeMap::new())
        }
        3 => b.push("clip", Op::Clip { min: -0.3, max: 0.4 }, &[&y], BTreeMap::new()),
        4 => {
            let z = conv(&mut b, &mut rng, "twin", "x", (c, n), true, true);
            let s = b.push("add", Op::Add, &[&z, &y], BTreeMap::new());
            b.push("relu", Op::Relu, &[&s], BTreeMap::new())
        }
        _ => y,
    };
    b.finish(&out).unwrap()
}

/// conv -> global pool -> flatten -> linear -> relu, and a standalone batchnorm, activation
/// and three-way add: the steps that are not convolutions.
#[test]
fn other_ops_match_reference() {
    let mut rng = InitRng::new(5);
    let mut b = GraphBuilder::new(
        "ops",
        Input {
            name: "x".into(),
            channels: 5,
            height: 7,
            width: 6,
        },
        1,
    );
    let bn = b.push("bn", Op::BatchNorm2d { channels: 5, eps: 1e-3 }, &["x"], bn_params(&mut rng, 5));
    let cl = b.push("clip", Op::Clip { min: -0.5, max: 0.7 }, &[&bn], BTreeMap::new());
    let relu = b.push("relu", Op::Relu, &["x"], BTreeMap::new());
    let add = b.push("add", Op::Add, &[&cl, &relu, "x"], BTreeMap::new());
    let pool = b.push("gap", Op::GlobalAvgPool, &[&add], BTreeMap::new());
    let f = b.push("flat", Op::Flatten, &[&pool], BTreeMap::new());
    let lin = b.push(
        "fc",
        Op::Linear {
            in_features: 5,
            out_features: 3,
            bias: true,
        },
        &[&f],
        BTreeMap::from([
            ("weight".into(), randn(&mut rng, vec![3, 5], 1.0)),
            ("bias".into(), randn(&mut rng, vec![3], 1.0)),
        ]),
    );
    let out = b.push("out", Op::Relu, &[&lin], BTreeMap::new());
    let m = b.finish(&out).unwrap();
    for planar in [false, true] {
        for batch in [1, 3] {
            run_case(&m, batch, planar, Strategy::Auto, 2).unwrap();
        }
    }
    // a map as the model output, and flatten of a map straight into a linear layer
    let mut b = GraphBuilder::new(
        "ops2",
        Input {
            name: "x".into(),
            channels: 3,
            height: 5,
            width: 4,
        },
        1,
    );
    let f = b.push("flat", Op::Flatten, &["x"], BTreeMap::new());
    let lin = b.push(
        "fc",
        Op::Linear {
            in_features: 60,
            out_features: 7,
            bias: false,
        },
        &[&f],
        BTreeMap::from([("weight".into(), randn(&mut rng, vec![7, 60], 1.0))]),
    );
    let f2 = b.push("flat2", Op::Flatten, &[&lin], BTreeMap::new());
    let m = b.finish(&f2).unwrap();
    run_case(&m, 2, false, Strategy::Auto, 2).unwrap();
    let mut b = GraphBuilder::new(
        "ops3",
        Input {
            name: "x".into(),
            channels: 3,
            height: 5,
            width: 4,
        },
        1,
    );
    let r = b.push("relu", Op::Relu, &["x"], BTreeMap::new());
    let m = b.finish(&r).unwrap();
    for planar in [false, true] {
        run_case(&m, 2, planar, Strategy::Auto, 2).unwrap();
    }
}

/// conv -> batchnorm -> 2x2 average pool (a DenseNet transition, a LeNet stage without its
/// activation): the plan averages the input windows once and runs the conv at stride 2 (a
/// quarter of the work), on both backends, dense and decomposed, and matches the reference.
#[test]
fn conv_then_average_pool_runs_at_the_pooled_resolution() {
    for (kernel, padding) in [([3, 3], [1; 4]), ([1, 1], [0; 4])] {
        for decomposed in [false, true] {
            let cs = ConvCase {
                cg: 6,
                og: 8,
                groups: 1,
                kernel,
                stride: [1, 1],
                dilation: [1, 1],
                padding,
                h: 12,
                w: 14,
                batch: 1,
                bias: true,
                tail: 1,
                bases: 1,
                density: 0.6,
                planar: false,
                strategy: 0,
                seed: 11,
            };
            let conv = conv_model(&cs, decomposed && kernel == [3, 3]);
            // append the pool and an activation to the conv's tail
            let mut m = conv.clone();
            let pool = Pool2d {
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0; 4],
                ceil_mode: false,
                count_include_pad: false,
            };
            let last = m.output.clone();
            m.nodes.push(penni_model::Node {
                name: "pool".into(),
                op: Op::AvgPool2d(pool),
                inputs: vec![last],
                output: "pooled".into(),
                params: BTreeMap::new(),
            });
            m.nodes.push(penni_model::Node {
                name: "relu".into(),
                op: Op::Relu,
                inputs: vec!["pooled".into()],
                output: "out".into(),
                params: BTreeMap::new(),
            });
            m.output = "out".into();
            m.validate().unwrap();
            for planar in [false, true] {
                for batch in [1, 3] {
                    run_case(&m, batch, planar, Strategy::Auto, 2).unwrap();
                    let opts = EngineOptions::default();
                    let plan = penni_engine::testing::plan_backend(&m, batch, &opts, planar, None).unwrap();
                    let d = plan.describe();
                    assert!(d.iter().any(|s| s.starts_with("pool :") && s.contains("avgpool 2x2 s1")), "{d:#?}");
                    assert!(d.iter().any(|s| s.starts_with("conv") && s.contains(" s2")), "{d:#?}");
                }
            }
        }
    }
}
