//! Ad-hoc latency table: dense and PENNI-compressed ResNet-20 / ResNet-18 (CIFAR 32x32),
//! batch 1 and 64, 1 and 2 threads.
//!
//!     cargo run --release -p penni-engine --example quick_bench [filter]
//!
//! "penni" = the model built at width 0.5 (half of every layer's channels removed, as the
//! compressor's shrink leaves it), every 3x3 conv decomposed with d=5 random bases and 95% of
//! the coefficients zero, random batchnorm statistics. "penni-rows" = full width, 95% sparse, and
//! half of the input and output channels of every decomposed layer dead (zero coefficient rows)
//! but not removed.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use penni_engine::{EngineOptions, Plan, Strategy};

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let strategy = match std::env::var("PENNI_STRATEGY").as_deref() {
        Ok("basis") => Strategy::BasisFirst,
        Ok("mix") => Strategy::MixFirst,
        Ok("fused") => Strategy::Fused,
        Ok("dense") => Strategy::Dense,
        _ => Strategy::Auto,
    };
    println!(
        "{:<10} {:<11} {:>5} {:>3} {:>10} {:>10} {:>8} {:>9} {:>10} {:>5}",
        "model", "form", "batch", "thr", "median ms", "min ms", "GMAC/s", "MMAC/img", "arena KiB", "micro"
    );
    let names: Vec<&str> = if filter.contains("vgg") {
        vec!["vgg16"]
    } else {
        vec!["resnet20", "resnet18"]
    };
    for name in names {
        for form in ["dense", "penni", "penni-rows"] {
            let mut m = match form {
                "penni" => common::zoo(name, 0.5, 32, 7),
                _ => common::zoo(name, 1.0, 32, 7),
            };
            common::randomize_bn(&mut m, 11);
            if form != "dense" {
                common::decompose(&mut m, 5, 0.95, 13);
            }
            if form == "penni-rows" {
                common::kill_channels(&mut m, 0.5, 17);
            }
            for batch in [1usize, 64] {
                for threads in [1usize, 2] {
                    let label = format!("{name} {form} b{batch} t{threads}");
                    if !label.contains(&filter) {
                        continue;
                    }
                    let opts = EngineOptions {
                        threads,
                        decomposed_strategy: strategy,
                        ..Default::default()
                    };
                    let micro: Option<usize> = std::env::var("PENNI_MICRO").ok().and_then(|v| v.parse().ok());
                    let mut plan = match std::env::var("PENNI_PLANAR").as_deref() {
                        _ if micro.is_some() => penni_engine::testing::plan_micro(&m, batch, &opts, micro.unwrap().min(batch)).unwrap(),
                        Ok("1") => penni_engine::testing::plan_backend(&m, batch, &opts, true, None).unwrap(),
                        Ok("0") => penni_engine::testing::plan_backend(&m, batch, &opts, false, None).unwrap(),
                        _ => Plan::new(&m, batch, &opts).unwrap(),
                    };
                    let x = common::input(&m, batch, 5);
                    plan.run(&x).unwrap();
                    let mut times = Vec::new();
                    let start = Instant::now();
                    while times.len() < 5 || (start.elapsed().as_secs_f64() < 2.0 && times.len() < 2000) {
                        let t = Instant::now();
                        plan.run(&x).unwrap();
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    times.sort_by(f64::total_cmp);
                    let med = times[times.len() / 2];
                    let macs = plan.macs();
                    println!(
                        "{:<10} {:<11} {:>5} {:>3} {:>10.3} {:>10.3} {:>8.1} {:>9.2} {:>10} {:>5}",
                        name,
                        form,
                        batch,
                        threads,
                        med,
                        times[0],
                        macs as f64 / med / 1e6,
                        macs as f64 / batch as f64 / 1e6,
                        plan.arena_peak_bytes() / 1024,
                        plan.micro_batch()
                    );
                    if std::env::var("PENNI_PROFILE").is_ok() {
                        for l in plan.profile(&x, 20).unwrap() {
                            println!(
                                "    {:>9.1} us {:>8.1} GMAC/s  {:<50} {}",
                                l.median_ns as f64 / 1e3,
                                l.macs as f64 / l.median_ns.max(1) as f64,
                                l.name,
                                l.kind
                            );
                        }
                    }
                }
            }
        }
    }
}
