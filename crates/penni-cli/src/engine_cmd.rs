//! `penni infer`, `penni bench`, `penni profile`: the inference engine from the command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use penni_engine::{EngineOptions, Plan};
use penni_model::Model;

use crate::common::{self, LoadedModel, human};

/// A model argument of the engine commands: a .penni/.onnx file or a zoo name (built at 3x32x32
/// with 10 classes, random weights: enough to measure speed).
fn model_arg(spec: &str) -> Result<LoadedModel> {
    if common::is_zoo_name(spec) {
        return Ok(LoadedModel {
            model: common::build_zoo(spec, 3, 32, 32, 10, 1.0, 0)?,
            preprocess: None,
        });
    }
    common::load_model(Path::new(spec))
}

#[derive(Args, Debug)]
pub struct InferArgs {
    /// The model: a .penni or .onnx file.
    #[arg(long)]
    pub model: PathBuf,
    /// Input: a .npy array (N x C x H x W float32, already preprocessed), or one or more PNG images
    /// (preprocessed as the model's training data was).
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Where to write the outputs as a .npy array: N x classes, or N x C x H x W for a model whose
    /// output is a feature map.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// How many top classes to print per image.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub norm: common::NormArgs,
}

/// Reads the inputs into one N x C x H x W batch that matches the model's input.
fn read_inputs(args: &InferArgs, loaded: &LoadedModel) -> Result<(usize, Vec<f32>)> {
    let i = &loaded.model.input;
    let per = i.channels * i.height * i.width;
    let first = &args.input[0];
    if first.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        if args.input.len() != 1 {
            bail!("give one .npy file holding the whole batch");
        }
        let bytes = std::fs::read(first).with_context(|| format!("cannot read {}", first.display()))?;
        let (shape, data) = penni_onnx::npy::read_f32(&bytes).with_context(|| format!("{}: not a float32 .npy array", first.display()))?;
        let ok = match shape.as_slice() {
            [n, c, h, w] => (*c, *h, *w) == (i.channels, i.height, i.width) && *n > 0,
            [c, h, w] => (*c, *h, *w) == (i.channels, i.height, i.width),
            _ => false,
        };
        if !ok || data.len() % per != 0 {
            bail!(
                "{}: array of shape {shape:?}, the model takes N x {}x{}x{}",
                first.display(),
                i.channels,
                i.height,
                i.width
            );
        }
        if args.norm.mean.is_some() || args.norm.std.is_some() {
            bail!("--mean/--std apply to PNG inputs; a .npy input is used as it is (already preprocessed)");
        }
        if data.iter().any(|v| !v.is_finite()) {
            bail!("{}: the input holds NaN or infinite values", first.display());
        }
        return Ok((data.len() / per, data));
    }
    let transform = common::resolve_preprocess(loaded.preprocess.clone(), &args.norm, None, None, &loaded.model)?.eval_transform();
    let mut batch = Vec::with_capacity(args.input.len() * per);
    for path in &args.input {
        let (c, h, w, pixels) = penni_data::load_png(path)?;
        let (oc, oh, ow) = transform.output_dims(c, h, w);
        if (oc, oh, ow) != (i.channels, i.height, i.width) {
            bail!(
                "{}: a {c}x{h}x{w} image becomes {oc}x{oh}x{ow}, the model takes {}x{}x{}",
                path.display(),
                i.channels,
                i.height,
                i.width
            );
        }
        batch.extend(transform.apply(&pixels, c, h, w));
    }
    Ok((args.input.len(), batch))
}

pub fn infer(args: InferArgs) -> Result<()> {
    let loaded = common::load_model(&args.model)?;
    let (n, input) = read_inputs(&args, &loaded)?;
    let mut plan = Plan::new(
        &loaded.model,
        n,
        &EngineOptions {
            threads: args.threads,
            ..Default::default()
        },
    )?;
    let out = plan.run(&input)?.to_vec();
    // the scores keep the model's own output shape: N x classes, or N x C x H x W for a map
    let dims: Vec<usize> = match loaded.model.output_shape()? {
        penni_model::Shape::Vector(k) => vec![n, k],
        penni_model::Shape::Map { c, h, w } => vec![n, c, h, w],
    };
    let shown = dims[1..].iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" x ");
    if let Some(path) = &args.output {
        penni_model::io::write_atomic(path, &penni_onnx::npy::write_f32(&dims, &out))?;
        println!("outputs ({n} x {shown}) written to {}", path.display());
    }
    if dims.len() != 2 {
        println!("the model's output is a {shown} map per input, not class scores: no top classes to print");
        return Ok(());
    }
    let classes = dims[1];
    let names = loaded.preprocess.as_ref().map(|p| p.class_names.clone()).unwrap_or_default();
    for (k, row) in out.chunks(classes).enumerate() {
        let mut idx: Vec<usize> = (0..classes).collect();
        idx.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
        let label = if args.input.len() == n {
            args.input[k].display().to_string()
        } else {
            format!("#{k}")
        };
        let top: Vec<String> = idx
            .iter()
            .take(args.top_k.max(1))
            .map(|&c| format!("{} ({:.3})", names.get(c).cloned().unwrap_or_else(|| c.to_string()), row[c]))
            .collect();
        println!("{label}: {}", top.join(", "));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A .penni/.onnx file, or a zoo name (random weights at 3x32x32).
    #[arg(long)]
    pub model: String,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,64")]
    pub batch: String,
    /// Thread counts, comma-separated (0 = all cores).
    #[arg(long, default_value = "1,2")]
    pub threads: String,
    /// Timed runs per configuration (the median and p90 are reported).
    #[arg(long, default_value_t = 30)]
    pub reps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run a quantized model's convolutions on the f32 kernels, not the integer ones (to
    /// compare the two on one model).
    #[arg(long)]
    pub f32_kernels: bool,
}

/// Resident memory now (VmRSS), to separate a model's memory from the program's own.
fn rss_now() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let baseline_rss = rss_now();
    let loaded = model_arg(&args.model)?;
    let batches: Vec<usize> = common::parse_list(&args.batch, "--batch")?;
    let threads: Vec<usize> = common::parse_list(&args.threads, "--threads")?;
    if batches.is_empty() || batches.contains(&0) || threads.is_empty() {
        bail!("--batch needs positive sizes and --threads at least one count");
    }
    if !args.json {
        println!(
            "{:<14} {:>5} {:>7} {:>10} {:>10} {:>11} {:>9} {:>11} {:>10}",
            "model", "batch", "threads", "median ms", "p90 ms", "images/s", "GMAC/s", "arena", "peak RSS"
        );
    }
    for &b in &batches {
        for &t in &threads {
            let opts = EngineOptions {
                threads: t,
                f32_kernels_only: args.f32_kernels,
                ..Default::default()
            };
            let r = penni_engine::bench(&loaded.model, b, &opts, args.warmup, args.reps)?;
            if args.json {
                let mut v = serde_json::to_value(&r)?;
                v["baseline_rss_bytes"] = serde_json::json!(baseline_rss);
                println!("{v}");
            } else {
                println!(
                    "{:<14} {:>5} {:>7} {:>10.3} {:>10.3} {:>11.1} {:>9.2} {:>11} {:>10}",
                    r.model,
                    r.batch,
                    r.threads,
                    r.median_ms,
                    r.p90_ms,
                    r.throughput_ips,
                    r.gmacs_per_s,
                    format!("{}B", human(r.arena_peak_bytes as u64)),
                    r.peak_rss_bytes.map_or("-".into(), |b| format!("{}B", human(b)))
                );
            }
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// A .penni/.onnx file, or a zoo name (random weights at 3x32x32).
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
}

pub fn profile(args: ProfileArgs) -> Result<()> {
    let loaded = model_arg(&args.model)?;
    let model: &Model = &loaded.model;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut plan = Plan::new(
        model,
        args.batch,
        &EngineOptions {
            threads: args.threads,
            ..Default::default()
        },
    )?;
    let input = penni_engine::pseudo_random_input(args.batch * model.input_shape().numel(), 1);
    let rows = plan.profile(&input, args.reps)?;
    let total: u64 = rows.iter().map(|r| r.median_ns).sum();
    println!(
        "{:<40} {:<36} {:>10} {:>6} {:>10} {:>8}",
        "step (fused IR nodes)", "kernel", "median us", "share", "MACs", "GMAC/s"
    );
    for r in &rows {
        println!(
            "{:<40} {:<36} {:>10.1} {:>5.1}% {:>10} {:>8.2}",
            r.name,
            r.kind,
            r.median_ns as f64 / 1e3,
            100.0 * r.median_ns as f64 / total.max(1) as f64,
            human(r.macs),
            r.macs as f64 / r.median_ns.max(1) as f64
        );
    }
    println!(
        "total {:.3} ms per batch of {} on {} threads (sum of per-step medians)",
        total as f64 / 1e6,
        args.batch,
        plan.threads()
    );
    Ok(())
}
