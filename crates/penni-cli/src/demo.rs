//! The built-in example: a small run that shows what penni does, on data it can set up itself.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use penni_data::Transform;
use penni_train::{LrSchedule, RunOptions, TrainData, TrainOptions};

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
    #[arg(long, default_value_t = 8000)]
    pub train_subset: usize,
    #[arg(long, default_value_t = 2000)]
    pub test_subset: usize,
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
}

pub fn run(args: DemoArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out_dir).with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let data_args = DataArgs {
        dataset: DatasetKind::FashionMnist,
        data_dir: args.data_dir.clone(),
        train_subset: args.train_subset,
        test_subset: args.test_subset,
        pad_to: None,
    };
    let data = data_args.load(0, true)?;
    let (mean, std) = penni_data::channel_stats(&data.train);
    let pre = Preprocess { mean, std, pad_to: None, class_names: data.train.class_names.clone() };
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
    let run = RunOptions { checkpoint_dir: Some(run_dir.clone()), resume: false, metrics_log: Some(run_dir.join("metrics.jsonl")), progress: true, stop_after_epochs: None };
    // A fresh demo each time: old checkpoints would be resumed otherwise.
    let _ = std::fs::remove_dir_all(&run_dir);
    let train_transform = Transform { crop_padding: 2, hflip: true, ..pre.eval_transform() };
    let td = TrainData { train: &data.train, test: Some(&data.test), train_transform, test_transform: pre.eval_transform() };
    let out = penni_train::train(&model, &td, &opts, &run)?;
    let path = args.out_dir.join("resnet20-demo.penni");
    common::save_model(&out.model, Some(&pre), &path)?;
    let last = out.history.last().context("no epoch ran")?;
    println!(
        "demo: test top-1 {:.2}% on {} held-out images (chance is 10%); model written to {}",
        last.test_top1.unwrap_or(0.0) * 100.0,
        data.test.len(),
        path.display()
    );
    Ok(())
}
