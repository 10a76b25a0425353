use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use penni_data::Transform;
use penni_train::{LrSchedule, RunOptions, TrainData, TrainDevice, TrainOptions};

use crate::common::{self, DataArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScheduleKind {
    Cosine,
    /// Multiply the rate by --gamma at each of --milestones.
    Step,
    Constant,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A zoo model to train from scratch (vgg16, vgg16avg, resnet18, resnet20, resnet56) or a .penni file to continue training.
    #[arg(long)]
    pub model: String,
    /// Width multiplier for zoo models (0.5 halves every layer's channels).
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the trained model.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Directory for per-epoch checkpoints and the JSON-lines metrics log (default: <out>.run).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue a stopped run from the last checkpoint in the run directory.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleKind,
    /// Epochs at which the step schedule multiplies the rate by --gamma, e.g. 50,75.
    #[arg(long, default_value = "")]
    pub milestones: String,
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Use plain (heavy-ball) momentum instead of Nesterov momentum.
    #[arg(long)]
    pub no_nesterov: bool,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Keep every weight and coefficient that is exactly zero at the start at zero: continues
    /// fine-tuning a compressed (pruned, shrunk) model without losing its sparsity.
    #[arg(long)]
    pub keep_zeros: bool,
    /// Random-crop padding for augmentation (0 disables).
    #[arg(long, default_value_t = 2)]
    pub crop_padding: usize,
    /// Where training runs: cpu, or wgpu / cuda in a penni built with that cargo feature.
    #[arg(long, default_value = "cpu")]
    pub device: TrainDevice,
    /// Disable random horizontal flips.
    #[arg(long)]
    pub no_flip: bool,
    /// Seed for weight initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many epochs in total, keeping the checkpoint (resume later with --resume).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    // a GPU that cannot start fails here, before any data is read
    args.device.open()?;
    let data = args.data.load(args.seed, true)?;
    let (model, stored) = if common::is_zoo_name(&args.model) {
        let pad_to = args.data.pad_to.map(|p| (p, p));
        let (c, h, w) = Transform {
            pad_to,
            ..Default::default()
        }
        .output_dims(data.train.channels, data.train.height, data.train.width);
        let model = common::build_zoo(&args.model, c, h, w, data.train.num_classes, args.width, args.seed)?;
        (model, None)
    } else {
        let loaded = common::load_model(args.model.as_ref())?;
        (loaded.model, loaded.preprocess)
    };
    let preprocess = common::resolve_preprocess(stored, &args.data.norm, Some(&data.train), args.data.pad_to, &model)?;
    let train_transform = Transform {
        pad_to: preprocess.pad_to,
        crop_padding: args.crop_padding,
        hflip: !args.no_flip,
        mean: preprocess.mean.clone(),
        std: preprocess.std.clone(),
    };
    let schedule = match args.schedule {
        ScheduleKind::Cosine => LrSchedule::Cosine,
        ScheduleKind::Constant => LrSchedule::Constant,
        ScheduleKind::Step => {
            let milestones = common::parse_list(&args.milestones, "--milestones")?;
            if milestones.is_empty() {
                bail!("--schedule step needs --milestones, e.g. --milestones 50,75");
            }
            LrSchedule::MultiStep {
                milestones,
                gamma: args.gamma,
            }
        }
    };
    let opts = TrainOptions {
        phase: "train".into(),
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        momentum: args.momentum,
        nesterov: !args.no_nesterov,
        weight_decay: args.weight_decay,
        schedule,
        seed: args.seed,
        l1_coefficients: 0.0,
        group_l1_coefficients: 0.0,
        alternate_interval: None,
        freeze_zeros: args.keep_zeros,
        proximal: None,
        fake_quant: None,
        distill: None,
    };
    let run_dir = args.run_dir.clone().unwrap_or_else(|| common::default_run_dir(&args.out));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let run = RunOptions {
        checkpoint_dir: Some(run_dir.clone()),
        resume: args.resume,
        metrics_log: Some(run_dir.join("metrics.jsonl")),
        progress: true,
        stop_after_epochs: args.stop_after,
        device: args.device,
    };
    eprintln!(
        "training {} ({} train / {} {} examples per epoch, {}x{} input) for {} epochs; checkpoints in {}",
        model.name,
        data.train.len(),
        data.eval_set().len(),
        data.eval_name(),
        model.input.height,
        model.input.width,
        args.epochs,
        run_dir.display()
    );
    let td = TrainData {
        train: &data.train,
        test: Some(data.eval_set()),
        eval_name: data.eval_name(),
        train_transform,
        test_transform: preprocess.eval_transform(),
    };
    let outcome = penni_train::train(&model, &td, &opts, &run)?;
    common::save_model(&outcome.model, Some(&preprocess), &args.out)?;
    if let Some(last) = outcome.history.last() {
        // the per-epoch figures are validation figures; the test split gets its one look here
        let test = match &data.val {
            Some(_) => Some(penni_train::evaluate(
                &outcome.model,
                &data.test,
                &preprocess.eval_transform(),
                args.batch_size,
            )?),
            None => None,
        };
        println!(
            "final: {} top-1 {:.2}%{}, train loss {:.4}; model written to {}",
            data.eval_name(),
            last.test_top1.unwrap_or(0.0) * 100.0,
            test.map_or(String::new(), |t| format!(
                ", test top-1 {:.2}% (measured once, now)",
                t.top1 * 100.0
            )),
            last.train_loss,
            args.out.display()
        );
    }
    Ok(())
}
