//! Per-kernel throughput on the real 3x3 / 1x1 convolution shapes of ResNet-20 and ResNet-18
//! (CIFAR, 32x32 input): dense versus PENNI (d = 5, 95% of the coefficients zero, a quarter of
//! the input and output channels dead), batch 1 and 8, reported in MAC/s (criterion's
//! `Throughput::Elements` = the layer's dense multiply-accumulates, so dense and PENNI rates
//! compare directly: a PENNI rate above the dense one is the speed-up).
//!
//! Only the layer's own step is timed (`Plan::profile`), not the conversion of the NCHW test
//! input and output. One thread by default (set PENNI_BENCH_THREADS, 0 = all cores).
//!
//!     cargo bench -p penni-engine --bench kernels -- --quick
//!     cargo bench -p penni-engine --bench kernels -- resnet18/l4     (a filter)
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use penni_engine::{EngineOptions, Plan, Strategy};
use penni_model::zoo::{GraphBuilder, InitRng};
use penni_model::{Conv2d, Input, Model, Op, Tensor};

/// (name, in channels, out channels, input size, kernel, stride) of every distinct layer.
const LAYERS: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("resnet20/l1", 16, 16, 32, 3, 1),
    ("resnet20/l2.down", 16, 32, 32, 3, 2),
    ("resnet20/l2", 32, 32, 16, 3, 1),
    ("resnet20/l3.down", 32, 64, 16, 3, 2),
    ("resnet20/l3", 64, 64, 8, 3, 1),
    ("resnet20/l3.short", 32, 64, 16, 1, 2),
    ("resnet18/l1", 64, 64, 32, 3, 1),
    ("resnet18/l2.down", 64, 128, 32, 3, 2),
    ("resnet18/l2", 128, 128, 16, 3, 1),
    ("resnet18/l3", 256, 256, 8, 3, 1),
    ("resnet18/l4.down", 256, 512, 8, 3, 2),
    ("resnet18/l4", 512, 512, 4, 3, 1),
    ("resnet18/l4.short", 256, 512, 8, 1, 2),
];

/// conv -> batchnorm -> relu with the given shape (the engine folds and fuses the tail).
fn layer(c: usize, n: usize, hw: usize, k: usize, s: usize) -> Model {
    let mut rng = InitRng::new(1);
    let mut b = GraphBuilder::new(
        "layer",
        Input {
            name: "x".into(),
            channels: c,
            height: hw,
            width: hw,
        },
        1,
    );
    let spec = Conv2d {
        in_channels: c,
        out_channels: n,
        kernel: [k, k],
        stride: [s, s],
        padding: [k / 2; 4],
        dilation: [1, 1],
        groups: 1,
        bias: false,
    };
    let w = Tensor::new(
        vec![n, c, k, k],
        (0..n * c * k * k)
            .map(|_| rng.normal() * (2.0 / (c * k * k) as f32).sqrt())
            .collect(),
    )
    .unwrap();
    let y = b.push("conv", Op::Conv2d(spec), &["x"], BTreeMap::from([("weight".into(), w)]));
    let y = b.batch_norm("bn", &y);
    let y = b.relu("relu", &y);
    let mut m = b.finish(&y).unwrap();
    common::randomize_bn(&mut m, 2);
    m
}

fn bench_layers(c: &mut Criterion) {
    for &(name, cin, cout, hw, k, s) in LAYERS {
        let dense = layer(cin, cout, hw, k, s);
        let mut penni = dense.clone();
        if k > 1 {
            common::decompose(&mut penni, 5, 0.95, 3);
            common::kill_channels(&mut penni, 0.25, 4);
        }
        let mut group = c.benchmark_group(name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500));
        let threads = std::env::var("PENNI_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        for batch in [1usize, 8] {
            let x = common::input(&dense, batch, 5);
            let ho = hw.div_ceil(s);
            let macs = (batch * cin * cout * k * k * ho * ho) as u64;
            group.throughput(Throughput::Elements(macs));
            let mut forms: Vec<(String, &Model, Strategy)> = vec![("dense".into(), &dense, Strategy::Auto)];
            if k > 1 {
                forms.push(("penni".into(), &penni, Strategy::Auto));
                if batch == 1 {
                    for (label, st) in [
                        ("penni-basis-first", Strategy::BasisFirst),
                        ("penni-mix-first", Strategy::MixFirst),
                        ("penni-fused", Strategy::Fused),
                    ] {
                        forms.push((label.into(), &penni, st));
                    }
                }
            }
            for (label, model, strategy) in forms {
                let mut plan = Plan::new(
                    model,
                    batch,
                    &EngineOptions {
                        threads,
                        decomposed_strategy: strategy,
                        ..Default::default()
                    },
                )
                .unwrap();
                group.bench_with_input(BenchmarkId::new(label, format!("b{batch}")), &x, |bch, x| {
                    bch.iter_custom(|iters| common::conv_step_time(&mut plan, x, iters))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_layers);
criterion_main!(benches);
