//! `penni quantize`: batchnorms folded, activations calibrated on training images
//! (penni-compress's `calibrate_activations`), optionally quantization-aware fine-tuning, then
//! the weights quantized with hybrid bit widths per part (`quantize_weights`); measured on the
//! validation split, then once on the test split.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use penni_compress::{Calibration, CalibrationOptions, Config, QuantBits, calibrate_activations, quantize_weights};
use penni_data::{BatchIter, Transform};
use penni_model::passes;
use penni_model::reference::Activation as Batch;
use penni_train::{FakeQuantBits, LrSchedule, RunOptions, TrainData, TrainOptions};

use crate::common::{self, DataArgs, human};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The model to quantize: a .penni file or an .onnx file, dense or PENNI.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// TOML config; its [quantize] section holds the bit widths (the flags below override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Bits of PENNI's basis kernels (0 = f32).
    #[arg(long)]
    pub bases: Option<u8>,
    /// Bits of PENNI's coefficients (0 = f32).
    #[arg(long)]
    pub coefficients: Option<u8>,
    /// Bits of dense k x k conv weights (0 = f32).
    #[arg(long)]
    pub weights: Option<u8>,
    /// Bits of 1x1 conv and linear weights (0 = f32).
    #[arg(long)]
    pub pointwise: Option<u8>,
    /// Bits of the activations that convs, linear layers and adds read (0 = f32, 2..=8).
    #[arg(long)]
    pub activations: Option<u8>,
    /// Bits of the basis maps between a PENNI layer's two stages (0 = f32, 2..=8): with them
    /// (and quantized activations) the layer runs on integer kernels.
    #[arg(long)]
    pub basis_maps: Option<u8>,
    /// How activation ranges are chosen: min_max, percentile or mse.
    #[arg(long)]
    pub calibration: Option<Calibration>,
    /// Upper percentile kept by --calibration percentile (e.g. 99.99).
    #[arg(long)]
    pub percentile: Option<f64>,
    /// Training images (never validation or test ones) that calibration runs.
    #[arg(long)]
    pub calibration_images: Option<usize>,
    /// Where to write the quantized model (.penni, or .onnx to export it).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Leave the test split alone (a sweep over bit widths chooses on validation; measure the
    /// chosen setting on the test split once, afterwards).
    #[arg(long)]
    pub no_test: bool,
    /// Quantization-aware fine-tuning first: epochs of training with the weights fake-quantized
    /// at these widths in the forward pass (straight-through gradients), pruned zeros held at
    /// zero; resumable from the run directory.
    #[arg(long, default_value_t = 0)]
    pub qat_epochs: usize,
    /// Learning rate of the fine-tuning (cosine to zero).
    #[arg(long, default_value_t = 0.001)]
    pub lr: f64,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Run directory of the fine-tuning (default: <out>.run); rerunning the command resumes.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Where the fine-tuning runs: cpu, or wgpu / cuda in a penni built with that feature.
    #[arg(long, default_value = "cpu")]
    pub device: penni_train::TrainDevice,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let q = &mut config.quantize;
    for (slot, flag) in [
        (&mut q.bases, args.bases),
        (&mut q.coefficients, args.coefficients),
        (&mut q.weights, args.weights),
        (&mut q.pointwise, args.pointwise),
    ] {
        if let Some(b) = flag {
            *slot = b;
        }
    }
    if let Some(b) = args.activations {
        q.activations = b;
    }
    if let Some(b) = args.basis_maps {
        q.basis_maps = b;
    }
    if let Some(c) = args.calibration {
        q.calibration = c;
    }
    if let Some(p) = args.percentile {
        q.percentile = p;
    }
    if let Some(n) = args.calibration_images {
        q.calibration_images = n;
    }
    config.validate()?;
    let bits: QuantBits = config.quantize;
    let loaded = common::load_model(&args.model)?;
    // the training data for its validation split, on which the result is judged
    let data = args.data.load(config.seed, true)?;
    let preprocess = common::resolve_preprocess(
        loaded.preprocess,
        &args.data.norm,
        Some(&data.train),
        args.data.pad_to,
        &loaded.model,
    )?;
    let transform = preprocess.eval_transform();
    // folded first: the weights put on a grid and the ranges measured are those that run
    let mut folded = loaded.model.clone();
    let batchnorms_folded = passes::fold_batchnorms(&mut folded);
    let (calibrated, ranges) = if bits.activations > 0 || bits.basis_maps > 0 {
        let images = data.train.subset(bits.calibration_images, config.seed);
        let shape = folded.input_shape();
        let batches: Vec<Batch> = BatchIter::new(&images, 64, &transform, false, false, 0, 0, false)
            .map(|b| Batch {
                n: b.batch_size,
                shape,
                data: b.images,
            })
            .collect();
        let opts = CalibrationOptions {
            bits: bits.activations,
            method: bits.calibration,
            percentile: bits.percentile,
            basis_bits: bits.basis_maps,
        };
        calibrate_activations(&folded, &batches, &opts)?
    } else {
        (folded, vec![])
    };
    let tuned = if args.qat_epochs > 0 {
        let run_dir = args.run_dir.clone().unwrap_or_else(|| common::default_run_dir(&args.out));
        std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        let opts = TrainOptions {
            phase: "qat".into(),
            epochs: args.qat_epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            schedule: LrSchedule::Cosine,
            seed: config.seed,
            freeze_zeros: true,
            fake_quant: Some(FakeQuantBits {
                bases: bits.bases,
                coefficients: bits.coefficients,
                weights: bits.weights,
                pointwise: bits.pointwise,
            }),
            ..Default::default()
        };
        let run = RunOptions {
            checkpoint_dir: Some(run_dir.clone()),
            resume: true,
            metrics_log: Some(run_dir.join("metrics.jsonl")),
            progress: !args.json,
            stop_after_epochs: None,
            device: args.device,
        };
        let td = TrainData {
            train: &data.train,
            test: Some(data.eval_set()),
            eval_name: data.eval_name(),
            train_transform: Transform {
                crop_padding: 2,
                hflip: true,
                ..transform.clone()
            },
            test_transform: transform.clone(),
        };
        penni_train::train(&calibrated, &td, &opts, &run)?.model
    } else {
        calibrated
    };
    let (quantized, report) = quantize_weights(&tuned, &bits)?;
    let top1 =
        |m: &penni_model::Model, ds: &penni_data::Dataset| -> Result<f64> { Ok(penni_train::evaluate(m, ds, &transform, 256)?.top1) };
    let eval_f32 = top1(&loaded.model, data.eval_set())?;
    let eval_q = top1(&quantized, data.eval_set())?;
    // the test split once, after the choice is made, when validation was what chose
    let test = match &data.val {
        Some(_) if !args.no_test => Some((top1(&loaded.model, &data.test)?, top1(&quantized, &data.test)?)),
        _ => None,
    };
    common::save_model(&quantized, Some(&preprocess), &args.out)?;
    let most_clipped = ranges.iter().map(|r| r.clipped).fold(0.0, f64::max);
    let max_err = |part: &str| {
        report
            .tensors
            .iter()
            .filter(|t| t.param == part)
            .map(|t| t.relative_error)
            .fold(0.0, f64::max)
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bits": bits, "qat_epochs": args.qat_epochs, "eval_split": data.eval_name(), "eval_top1_f32": eval_f32, "eval_top1_quantized": eval_q,
                "test_top1_f32": test.map(|t| t.0), "test_top1_quantized": test.map(|t| t.1),
                "weight_bits_quantized": report.quantized_bits, "weight_bits_f32": report.f32_bits,
                "max_relative_error": {"bases": max_err("bases"), "coefficients": max_err("coefficients"), "weights": max_err("weight")},
                "batchnorms_folded": batchnorms_folded, "activation_ranges": ranges,
            })
        );
    } else {
        println!(
            "bits: bases {}, coefficients {}, k x k weights {}, 1x1/linear {} (0 = f32); weights per output channel (per basis), symmetric",
            bits.bases, bits.coefficients, bits.weights, bits.pointwise
        );
        println!(
            "largest relative error: bases {:.4}, coefficients {:.4}, weights {:.4}",
            max_err("bases"),
            max_err("coefficients"),
            max_err("weight")
        );
        println!("batchnorms folded into their convs: {batchnorms_folded}");
        let basis_layers = ranges.iter().filter(|r| r.tensor.ends_with(".basis_maps")).count();
        if bits.activations > 0 {
            println!(
                "activations: {} tensors at {} bits (unsigned, per tensor), ranges by {:?} on {} training images; at most {:.3}% of a tensor's calibration values clipped",
                ranges.len() - basis_layers,
                bits.activations,
                bits.calibration,
                bits.calibration_images.min(data.train.len()),
                most_clipped * 100.0
            );
        }
        if basis_layers > 0 {
            println!(
                "basis maps of {basis_layers} PENNI layers at {} bits (signed, symmetric, per tensor)",
                bits.basis_maps
            );
        }
        println!(
            "weight storage (non-zeros and per-channel scales, sparse indices not counted): {} -> {} bits ({:.1}%)",
            human(report.f32_bits),
            human(report.quantized_bits),
            100.0 * report.quantized_bits as f64 / report.f32_bits.max(1) as f64
        );
        if args.qat_epochs > 0 {
            println!(
                "quantization-aware fine-tuning: {} epochs, lr {} (cosine)",
                args.qat_epochs, args.lr
            );
        }
        println!(
            "{} top-1: f32 {:.2}%, quantized {:.2}% ({:+.2} points)",
            data.eval_name(),
            eval_f32 * 100.0,
            eval_q * 100.0,
            (eval_q - eval_f32) * 100.0
        );
        if let Some((a, b)) = test {
            println!(
                "test top-1 (measured once): f32 {:.2}%, quantized {:.2}% ({:+.2} points)",
                a * 100.0,
                b * 100.0,
                (b - a) * 100.0
            );
        }
        println!("quantized model written to {}", args.out.display());
    }
    Ok(())
}
