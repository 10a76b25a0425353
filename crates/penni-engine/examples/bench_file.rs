//! Times a saved model: `cargo run --release -p penni-engine --example bench_file -- MODEL.penni [BATCH] [THREADS] [profile]`
use std::time::Instant;

use penni_engine::{EngineOptions, Plan};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = penni_model::io::load(std::path::Path::new(&args[1])).expect("a .penni model");
    let batch: usize = args.get(2).map_or(1, |v| v.parse().unwrap());
    let threads: usize = args.get(3).map_or(1, |v| v.parse().unwrap());
    // PENNI_STRATEGY=basis-first|mix-first|fused|dense forces the decomposed-conv dataflow
    let decomposed_strategy = match std::env::var("PENNI_STRATEGY").as_deref() {
        Ok("basis-first") => penni_engine::Strategy::BasisFirst,
        Ok("mix-first") => penni_engine::Strategy::MixFirst,
        Ok("fused") => penni_engine::Strategy::Fused,
        Ok("dense") => penni_engine::Strategy::Dense,
        _ => penni_engine::Strategy::Auto,
    };
    let opts = EngineOptions {
        threads,
        decomposed_strategy,
        ..Default::default()
    };
    // PENNI_MICRO=n forces the micro-batch (for experiments)
    let mut plan = match std::env::var("PENNI_MICRO").ok().and_then(|v| v.parse().ok()) {
        Some(m) => penni_engine::testing::plan_micro(&model, batch, &opts, m).unwrap(),
        None => Plan::new(&model, batch, &opts).unwrap(),
    };
    let x = penni_engine::pseudo_random_input(batch * model.input_shape().numel(), 1);
    plan.run(&x).unwrap();
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 5 || (start.elapsed().as_secs_f64() < 2.0 && t.len() < 2000) {
        let s = Instant::now();
        plan.run(&x).unwrap();
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    println!(
        "{} batch {batch} threads {threads}: median {:.3} ms, min {:.3} ms, {:.1} GMAC/s, micro-batch {}",
        args[1],
        t[t.len() / 2],
        t[0],
        plan.macs() as f64 / t[t.len() / 2] / 1e6,
        plan.micro_batch()
    );
    if args.get(4).is_some_and(|a| a == "profile") {
        for l in plan.profile(&x, 20).unwrap() {
            println!(
                "  {:>9.1} us {:>7.1} GMAC/s  {:<45} {}",
                l.median_ns as f64 / 1e3,
                l.macs as f64 / l.median_ns.max(1) as f64,
                l.name,
                l.kind
            );
        }
    }
}
