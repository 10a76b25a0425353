//! `penni`: compress convolutional networks with PENNI and run them fast on a CPU.

mod common;
mod compress_cmd;
mod decompose_cmd;
mod demo;
mod engine_cmd;
mod inspect;
mod quantize_cmd;
mod train_cmd;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "penni", version, about = "Compress CNNs with PENNI (pruned kernel sharing) and run them fast on a CPU", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a zoo model (or continue a .penni model) on a dataset, with checkpoints and --resume.
    Train(train_cmd::TrainArgs),
    /// Top-1 accuracy and loss of a .penni model on a dataset's test split.
    Eval(EvalArgs),
    /// Per-layer table of a model: type, shapes, parameters and multiply-accumulates, with totals.
    Inspect(inspect::InspectArgs),
    /// Compress a trained model with PENNI: decompose, sparse retraining, prune, fine-tune, shrink.
    Compress(compress_cmd::CompressArgs),
    /// Quantize a model: batchnorms folded, activations calibrated per tensor, weights with hybrid bit widths per part (bases, coefficients, ...).
    Quantize(quantize_cmd::QuantizeArgs),
    /// Decompose a model's convs (PENNI or Tucker-2) without training; prints per-layer errors.
    Decompose(decompose_cmd::DecomposeArgs),
    /// Run a model on .npy or PNG inputs with the inference engine; prints the top classes.
    Infer(engine_cmd::InferArgs),
    /// Latency (median, p90), throughput and memory of the inference engine on a model.
    Bench(engine_cmd::BenchArgs),
    /// Time per layer (planned step) of the inference engine on a model.
    Profile(engine_cmd::ProfileArgs),
    /// Convert a model between .penni and .onnx (by file extension).
    Convert(ConvertArgs),
    /// Set up and run the built-in example end to end on a Fashion-MNIST subset.
    Demo(demo::DemoArgs),
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The model to evaluate (.penni or .onnx).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: common::DataArgs,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// The model to read (.penni or .onnx).
    input: PathBuf,
    /// The file to write (.penni or .onnx).
    output: PathBuf,
}

fn convert(args: ConvertArgs) -> Result<()> {
    let loaded = common::load_model(&args.input)?;
    common::save_model(&loaded.model, loaded.preprocess.as_ref(), &args.output)?;
    let cost = penni_model::model_cost(&loaded.model)?.totals;
    println!(
        "{} -> {} ({} nodes, {} parameters)",
        args.input.display(),
        args.output.display(),
        loaded.model.nodes.len(),
        common::human(cost.params_all)
    );
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let loaded = common::load_model(&args.model)?;
    // the training split is needed only for the statistics of a model that stores no preprocessing
    let data = args.data.load(0, loaded.preprocess.is_none())?;
    let preprocess = common::resolve_preprocess(
        loaded.preprocess,
        &args.data.norm,
        Some(&data.train),
        args.data.pad_to,
        &loaded.model,
    )?;
    let transform = preprocess.eval_transform();
    let e = penni_train::evaluate(&loaded.model, &data.test, &transform, args.batch_size)?;
    if args.json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        println!(
            "{}: top-1 {:.2}% loss {:.4} on {} examples",
            args.model.display(),
            e.top1 * 100.0,
            e.loss,
            e.examples
        );
    }
    Ok(())
}

fn main() {
    // `penni inspect m | head` closes the pipe early: end quietly like other Unix tools instead of
    // panicking in println! (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train_cmd::run(a),
        Command::Eval(a) => eval(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Compress(a) => compress_cmd::run(a),
        Command::Decompose(a) => decompose_cmd::run(a),
        Command::Quantize(a) => quantize_cmd::run(a),
        Command::Convert(a) => convert(a),
        Command::Infer(a) => engine_cmd::infer(a),
        Command::Bench(a) => engine_cmd::bench(a),
        Command::Profile(a) => engine_cmd::profile(a),
        Command::Demo(a) => demo::run(a),
    };
    if let Err(e) = result {
        // One clear line (with its causes) and a non-zero exit; never a panic trace.
        let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", causes.join(": "));
        std::process::exit(1);
    }
}
