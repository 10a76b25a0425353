//! Whole-model equivalence with the reference forward pass (`penni_model::reference::forward`),
//! for VGG-16, ResNet-20 and ResNet-18 topologies, dense, decomposed, and decomposed with dead
//! channels, batch 1 and 8, every decomposed-convolution strategy.
mod common;
use common::*;
use penni_engine::{EngineOptions, Plan, Strategy};
use penni_model::Model;

const TOL: f64 = 1e-4;

const STRATEGIES: [Strategy; 5] = [
    Strategy::Auto,
    Strategy::BasisFirst,
    Strategy::MixFirst,
    Strategy::Fused,
    Strategy::Dense,
];

/// Runs `model` on both backends with every decomposed strategy, and on the channel-blocked
/// backend with both combination orientations.
fn check_backends(model: &Model, batch: usize) {
    let x = input(model, batch, 1);
    let r = reference(model, batch, &x);
    for planar in [false, true] {
        for s in STRATEGIES {
            let orientations: &[Option<bool>] = if planar || !matches!(s, Strategy::BasisFirst | Strategy::Fused) {
                &[None]
            } else {
                &[Some(false), Some(true)]
            };
            for &o in orientations {
                let opts = EngineOptions {
                    threads: 2,
                    decomposed_strategy: s,
                    ..Default::default()
                };
                let mut plan = penni_engine::testing::plan_backend(model, batch, &opts, planar, o).unwrap();
                let e = rel_err(plan.run(&x).unwrap(), &r);
                assert!(
                    e < TOL,
                    "{} batch {batch} planar {planar} {s:?} blocked combination {o:?}: relative error {e:.2e}\n{plan:#?}",
                    model.name
                );
            }
        }
    }
}

/// Runs `model` with every strategy in `strategies` at each batch size; asserts the error bound.
fn check(model: &Model, batches: &[usize], strategies: &[Strategy], threads: usize) {
    for &batch in batches {
        let x = input(model, batch, 42 + batch as u64);
        let r = reference(model, batch, &x);
        for &s in strategies {
            let mut plan = Plan::new(
                model,
                batch,
                &EngineOptions {
                    threads,
                    decomposed_strategy: s,
                    ..Default::default()
                },
            )
            .unwrap();
            let y = plan.run(&x).unwrap();
            let e = rel_err(y, &r);
            assert!(e < TOL, "{} batch {batch} {s:?}: relative error {e:.2e}\n{:#?}", model.name, plan);
        }
    }
}

/// The three forms of a zoo model: dense, decomposed (d=5, ~90% zero coefficients), and
/// decomposed with dead channels. Batchnorm statistics are random so folding is exercised.
fn forms(name: &str, width: f32, hw: usize) -> [Model; 3] {
    let mut dense = zoo(name, width, hw, 3);
    randomize_bn(&mut dense, 5);
    let mut dec = dense.clone();
    decompose(&mut dec, 5, 0.9, 7);
    let mut dead = dec.clone();
    kill_channels(&mut dead, 0.4, 9);
    [dense, dec, dead]
}

#[test]
fn resnet20_all_forms() {
    let [dense, dec, dead] = forms("resnet20", 0.25, 16);
    check(&dense, &[1, 8], &[Strategy::Auto], 2);
    check(&dec, &[1, 8], &STRATEGIES, 2);
    check(&dead, &[1, 8], &STRATEGIES, 2);
    check_backends(&dec, 3);
    check_backends(&dead, 1);
}

#[test]
fn resnet18_all_forms() {
    let [dense, dec, dead] = forms("resnet18", 0.25, 16);
    check(&dense, &[1, 8], &[Strategy::Auto], 2);
    check(
        &dec,
        &[1, 8],
        &[Strategy::Auto, Strategy::BasisFirst, Strategy::MixFirst, Strategy::Fused],
        2,
    );
    check(&dead, &[1, 8], &[Strategy::Auto], 2);
}

#[test]
fn vgg16_all_forms() {
    let [dense, dec, dead] = forms("vgg16", 0.125, 32);
    check(&dense, &[1, 8], &[Strategy::Auto], 2);
    check(&dec, &[1, 8], &[Strategy::Auto, Strategy::MixFirst], 2);
    check(&dead, &[1, 8], &[Strategy::Auto], 2);
}

#[test]
fn resnet20_full_size_32x32() {
    let [dense, dec, _] = forms("resnet20", 1.0, 32);
    check(&dense, &[1], &[Strategy::Auto], 2);
    check(&dec, &[1], &[Strategy::Auto], 2);
    check_backends(&dec, 1);
}

/// SqueezeNet- and Inception-style concatenations: branches of 20 and 13 channels stacked at
/// offsets that are not multiples of the 16-channel blocks, a concat read by a padded conv, a
/// concat of a block with its own input (DenseNet), and a concat of vectors.
fn concat_model() -> Model {
    use penni_model::Input;
    use penni_model::zoo::GraphBuilder;
    let input = Input {
        name: "x".into(),
        channels: 3,
        height: 12,
        width: 12,
    };
    let mut b = GraphBuilder::new("concat", input, 31);
    let s = b.conv_bn("stem.", "x", 16, 3, 1, true);
    let sq = b.conv("fire.squeeze", &s, 8, 1, 1, 0, true);
    let sq = b.relu("fire.squeeze.relu", &sq);
    let e1 = b.conv("fire.e1", &sq, 20, 1, 1, 0, true);
    let e3 = b.conv_bn("fire.e3.", &sq, 13, 3, 1, true);
    let fire = b.concat("fire.concat", &[&e1, &e3]);
    let fire = b.relu("fire.relu", &fire);
    let c = b.conv_bn("dense.", &fire, 9, 3, 1, true);
    let dense = b.concat("dense.concat", &[&fire, &c, &s]);
    let p = b.max_pool("pool", &dense, 2, 2);
    let g = b.global_avg_pool("gap", &p);
    let f = b.flatten("flatten", &g);
    let l1 = b.linear("fc.a", &f, 6);
    let l2 = b.linear("fc.b", &f, 5);
    let v = b.concat("fc.concat", &[&l1, &l2]);
    let v = b.relu("fc.relu", &v);
    let y = b.linear("fc", &v, 4);
    b.finish(&y).unwrap()
}

#[test]
fn concat_all_forms() {
    let mut dense = concat_model();
    randomize_bn(&mut dense, 32);
    let mut dec = dense.clone();
    decompose(&mut dec, 5, 0.8, 33);
    check(&dense, &[1, 5], &[Strategy::Auto], 2);
    check(&dec, &[1, 5], &STRATEGIES, 2);
    check_backends(&dense, 2);
    check_backends(&dec, 3);
}

/// MobileNet-v3 / EfficientNet pieces: HardSwish, SiLU (x * sigmoid(x)), a squeeze-and-
/// excitation block (global pool, 1x1 convs, hard sigmoid, channel-wise scale), leaky ReLU.
fn mobile_model() -> Model {
    use penni_model::zoo::GraphBuilder;
    use penni_model::{Activation, Input};
    let input = Input {
        name: "x".into(),
        channels: 3,
        height: 10,
        width: 10,
    };
    let mut b = GraphBuilder::new("mobile", input, 41);
    let s = b.conv_bn("stem.", "x", 20, 3, 1, false);
    let s = b.activation("stem.hswish", &s, Activation::HardSwish);
    let c = b.conv_bn("b.", &s, 20, 3, 1, false);
    let g = b.activation("b.sigmoid", &c, Activation::Sigmoid);
    let silu = b.mul("b.silu", &c, &g);
    let p = b.global_avg_pool("se.pool", &silu);
    let r = b.conv("se.reduce", &p, 6, 1, 1, 0, true);
    let r = b.relu("se.relu", &r);
    let e = b.conv("se.expand", &r, 20, 1, 1, 0, true);
    let gate = b.activation(
        "se.gate",
        &e,
        Activation::HardSigmoid {
            alpha: 1.0 / 6.0,
            beta: 0.5,
        },
    );
    let scaled = b.mul("se.scale", &gate, &silu);
    let l = b.activation("leaky", &scaled, Activation::LeakyRelu { alpha: 0.1 });
    let gp = b.global_avg_pool("pool", &l);
    let f = b.flatten("flatten", &gp);
    let y = b.linear("fc", &f, 4);
    b.finish(&y).unwrap()
}

#[test]
fn activations_and_squeeze_excitation_all_forms() {
    let mut dense = mobile_model();
    randomize_bn(&mut dense, 42);
    let mut dec = dense.clone();
    decompose(&mut dec, 5, 0.8, 43);
    check(&dense, &[1, 3], &[Strategy::Auto], 2);
    check(&dec, &[1, 3], &STRATEGIES, 2);
    check_backends(&dense, 2);
    check_backends(&dec, 2);
}
