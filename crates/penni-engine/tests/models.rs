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
