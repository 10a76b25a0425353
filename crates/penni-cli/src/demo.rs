//! The built-in example: a small run that shows what penni does, on data it can set up itself.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use penni_data::Transform;
use penni_train::{LrSchedule, RunOptions, TrainData, TrainDevice, TrainOptions};

use crate::common::{self, DataArgs, DatasetKind, Preprocess, human};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Fashion-MNIST directory (default: $PENNI_DATA_DIR, else Debian's /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the demo writes its models, logs and reports.
    #[arg(long, default_value = "demo-out")]
    pub out_dir: PathBuf,
    /// Training examples to use (a seeded subset of the 60k).
    #[arg(long, default_value_t = 6000)]
    pub train_subset: usize,
    #[arg(long, default_value_t = 1000)]
    pub test_subset: usize,
    /// Training epochs of the dense model.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Sparse retraining epochs of the PENNI pipeline (the paper uses 100).
    #[arg(long, default_value_t = 2)]
    pub retrain_epochs: usize,
    /// Fine-tuning epochs after pruning (the paper uses 30).
    #[arg(long, default_value_t = 1)]
    pub finetune_epochs: usize,
}

pub fn run(args: DemoArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out_dir).with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let data_args = DataArgs {
        dataset: DatasetKind::FashionMnist,
        data_dir: args.data_dir.clone(),
        train_subset: args.train_subset,
        test_subset: args.test_subset,
        pad_to: None,
        norm: Default::default(),
        val_split: None,
    };
    let data = data_args.load(0, true)?;
    let (mean, std) = penni_data::channel_stats(&data.train);
    let pre = Preprocess {
        mean,
        std,
        pad_to: None,
        class_names: data.train.class_names.clone(),
    };
    let model = common::build_zoo("resnet20", 1, 28, 28, 10, 0.5, 0)?;
    let cost = penni_model::model_cost(&model)?.totals;
    println!(
        "demo: ResNet-20 (width 0.5, {} parameters, {} MACs per image) on {} Fashion-MNIST training images, {} epochs",
        human(cost.params_all),
        human(cost.macs_all),
        data.train.len(),
        args.epochs
    );
    let opts = TrainOptions {
        phase: "train".into(),
        epochs: args.epochs,
        batch_size: 64,
        lr: 0.1,
        schedule: LrSchedule::Cosine,
        ..Default::default()
    };
    let run_dir = args.out_dir.join("train.run");
    let run = RunOptions {
        checkpoint_dir: Some(run_dir.clone()),
        resume: false,
        metrics_log: Some(run_dir.join("metrics.jsonl")),
        progress: true,
        stop_after_epochs: None,
        device: TrainDevice::Cpu,
    };
    // A fresh demo each time: old checkpoints would be resumed otherwise.
    let _ = std::fs::remove_dir_all(&run_dir);
    let train_transform = Transform {
        crop_padding: 2,
        hflip: true,
        ..pre.eval_transform()
    };
    let td = TrainData {
        train: &data.train,
        test: Some(data.eval_set()),
        eval_name: data.eval_name(),
        train_transform,
        test_transform: pre.eval_transform(),
    };
    let out = penni_train::train(&model, &td, &opts, &run)?;
    let path = args.out_dir.join("resnet20-demo.penni");
    common::save_model(&out.model, Some(&pre), &path)?;
    let dense_top1 = out.history.last().context("no epoch ran")?.test_top1.unwrap_or(0.0);
    println!(
        "demo: dense model {} top-1 {:.2}%, written to {}",
        data.eval_name(),
        dense_top1 * 100.0,
        path.display()
    );

    // PENNI with a short schedule: decompose (d=5), retrain with L1 + alternation, prune, fine-tune, shrink.
    let mut config = penni_compress::Config::default();
    config.retrain.epochs = args.retrain_epochs;
    config.retrain.batch_size = 64;
    config.finetune.epochs = args.finetune_epochs;
    config.finetune.batch_size = 64;
    let run_dir = args.out_dir.join("compress.run");
    let _ = std::fs::remove_dir_all(&run_dir);
    let outcome = crate::compress_cmd::compress_with(&out.model, &config, &data, &pre, 2, true, TrainDevice::Cpu, &run_dir)?;
    let compressed_path = args.out_dir.join("resnet20-demo-penni.penni");
    common::save_model(&outcome.model, Some(&pre), &compressed_path)?;
    println!("{}", outcome.report.to_table());
    let before = penni_model::model_cost(&out.model)?.totals;
    let after = penni_model::model_cost(&outcome.model)?.totals;
    let acc_after = outcome.report.phases.last().and_then(|p| p.top1).unwrap_or(0.0) as f64;
    let bytes = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "demo: before -> after PENNI ({} train images, {} {} images, {} test images)",
        data.train.len(),
        data.eval_set().len(),
        data.eval_name(),
        data.test.len()
    );
    println!(
        "  {} top-1 {:>8.2}% -> {:.2}%",
        data.eval_name(),
        dense_top1 * 100.0,
        acc_after * 100.0
    );
    if let Some(t) = &outcome.report.test {
        println!(
            "  test top-1       {:>8.2}% -> {:.2}%  (measured once, at the end)",
            t.baseline_top1 * 100.0,
            t.final_top1 * 100.0
        );
    }
    println!(
        "  parameters      {:>9} -> {}  ({:.1}% removed; paper-style {} -> {})",
        human(before.params_all),
        human(after.params_all),
        100.0 * (1.0 - after.params_all as f64 / before.params_all as f64),
        human(before.params_paper),
        human(after.params_paper)
    );
    println!(
        "  MACs per image  {:>9} -> {}  ({:.1}% removed; paper-style {} -> {})",
        human(before.macs_all),
        human(after.macs_all),
        100.0 * (1.0 - after.macs_all as f64 / before.macs_all as f64),
        human(before.macs_paper),
        human(after.macs_paper)
    );
    println!("  file size       {:>9} -> {} bytes", bytes(&path), bytes(&compressed_path));
    println!(
        "demo: compressed model {}; report {}",
        compressed_path.display(),
        run_dir.join("report.svg").display()
    );
    Ok(())
}
