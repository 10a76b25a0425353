//! One convolution layer, timed: `cargo run --release --example layer_bench -- C N HW K STRIDE BATCH THREADS`
use std::collections::BTreeMap;
use std::time::Instant;

use penni_engine::{EngineOptions, Plan};
use penni_model::zoo::GraphBuilder;
use penni_model::{Conv2d, Input, Op, Tensor};

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|v| v.parse().unwrap()).collect();
    let (c, n, hw, k, s, batch, threads) = (a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    let mut b = GraphBuilder::new(
        "l",
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
        bias: true,
    };
    let w = Tensor::new(vec![n, c, k, k], penni_engine::pseudo_random_input(n * c * k * k, 3)).unwrap();
    let bias = Tensor::new(vec![n], vec![0.1; n]).unwrap();
    let y = b.push(
        "conv",
        Op::Conv2d(spec),
        &["x"],
        BTreeMap::from([("weight".into(), w), ("bias".into(), bias)]),
    );
    let m = b.finish(&y).unwrap();
    let mut plan = Plan::new(
        &m,
        batch,
        &EngineOptions {
            threads,
            ..Default::default()
        },
    )
    .unwrap();
    let x = penni_engine::pseudo_random_input(batch * c * hw * hw, 5);
    plan.run(&x).unwrap();
    let mut t = Vec::new();
    for _ in 0..50 {
        let s = Instant::now();
        plan.run(&x).unwrap();
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(f64::total_cmp);
    println!(
        "{} median {:.1} us, {:.1} GMAC/s",
        plan.describe().join(" | "),
        t[25],
        plan.macs() as f64 / t[25] / 1e3
    );
}
