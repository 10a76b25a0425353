//! `bench`: latency and memory of a model on this machine, in a form the CLI prints or saves.

use std::time::Instant;

use penni_model::Model;
use serde::Serialize;

use crate::error::EngineError;
use crate::options::EngineOptions;
use crate::plan::Plan;

/// What [`bench`] measured. Latencies are per batch; throughput counts images.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub batch: usize,
    pub threads: usize,
    pub warmup: usize,
    pub reps: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    /// Images per second at the median latency.
    pub throughput_ips: f64,
    /// Multiply-accumulates per batch, as the planned kernels count them.
    pub macs: u64,
    /// Multiply-accumulates per second at the median latency, in billions.
    pub gmacs_per_s: f64,
    pub arena_peak_bytes: usize,
    pub weight_bytes: usize,
    /// Peak resident memory of the whole process so far (VmHWM); `None` where /proc is absent.
    pub peak_rss_bytes: Option<u64>,
}

/// Plans `model` for `batch` images with `opts` (`opts.threads`: 0 = all cores), runs it
/// `warmup` times, then times `reps` runs (at least one) on a fixed pseudo-random input.
pub fn bench(model: &Model, batch: usize, opts: &EngineOptions, warmup: usize, reps: usize) -> Result<BenchReport, EngineError> {
    let mut plan = Plan::new(model, batch, opts)?;
    let input = pseudo_random_input(batch * model.input_shape().numel(), 0x5eed);
    for _ in 0..warmup {
        plan.run(&input)?;
    }
    let reps = reps.max(1);
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        plan.run(&input)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mean_ms = ms.iter().sum::<f64>() / reps as f64;
    ms.sort_by(f64::total_cmp);
    let median_ms = ms[reps / 2];
    let p90_ms = ms[((reps as f64 * 0.9).ceil() as usize).clamp(1, reps) - 1];
    let macs = plan.macs();
    Ok(BenchReport {
        model: model.name.clone(),
        batch,
        threads: plan.threads(),
        warmup,
        reps,
        median_ms,
        p90_ms,
        min_ms: ms[0],
        mean_ms,
        throughput_ips: batch as f64 / (median_ms / 1e3),
        macs,
        gmacs_per_s: macs as f64 / (median_ms / 1e3) / 1e9,
        arena_peak_bytes: plan.arena_peak_bytes(),
        weight_bytes: plan.weight_bytes(),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Uniform values in [-1, 1) from a fixed seed (SplitMix64), the same on every machine.
pub fn pseudo_random_input(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
