//! `penni compress`: the PENNI pipeline (penni-compress) with training by penni-train.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use penni_compress::{CompressError, Config, CostModel, Evaluation, PhaseTraining, Trainer};
use penni_data::{Dataset, Transform};
use penni_engine::{EngineOptions, Plan};
use penni_model::Model;
use penni_train::{LrSchedule, RunOptions, TrainData, TrainDevice, TrainOptions};

use crate::common::{self, DataArgs, LoadedData, Preprocess};

#[derive(Args, Debug)]
pub struct CompressArgs {
    /// The trained model to compress: a .penni file or an .onnx file.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// TOML file with the PENNI settings (see crates/penni-compress/examples/penni.toml);
    /// without it the paper's defaults apply (100 retraining + 30 fine-tuning epochs).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// penni (the default); tucker: Tucker-2 convs trained with ADMM (config [tucker], [admm]);
    /// auto: per layer PENNI, Tucker-2 or dense, chosen under the budget (--target-macs or
    /// --target-latency).
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// Override the config's retraining epochs.
    #[arg(long)]
    pub retrain_epochs: Option<usize>,
    /// Override the config's fine-tuning epochs.
    #[arg(long)]
    pub finetune_epochs: Option<usize>,
    /// Budget mode: MACs (paper-style) of the compressed model as a fraction of the input
    /// model's, e.g. 0.15; d and the pruning threshold are then chosen per layer, on the
    /// validation split, to meet it at the least loss of accuracy (config section [budget]).
    #[arg(long, conflicts_with = "target_latency")]
    pub target_macs: Option<f64>,
    /// Budget mode by latency: milliseconds per batch of --batch images on --threads threads,
    /// measured by penni's engine on this machine (run it where the model will run, on an idle
    /// machine: every candidate is timed).
    #[arg(long)]
    pub target_latency: Option<f64>,
    /// Batch size of the latency budget.
    #[arg(long, requires = "target_latency")]
    pub batch: Option<usize>,
    /// Threads of the latency budget (0 = all cores).
    #[arg(long, requires = "target_latency")]
    pub threads: Option<usize>,
    /// Where to write the compressed model (.penni, or .onnx to export it).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Run directory: per-phase checkpoints, epoch checkpoints, reports (default: <out>.run).
    /// Rerunning the same command resumes a stopped run where it stopped.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub crop_padding: usize,
    #[arg(long)]
    pub no_flip: bool,
    /// Where training runs: cpu, or wgpu / cuda in a penni built with that cargo feature.
    #[arg(long, default_value = "cpu")]
    pub device: TrainDevice,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum MethodArg {
    Penni,
    Tucker,
    Auto,
}

/// penni-train behind penni-compress's `Trainer`, on one dataset.
pub struct BurnTrainer<'a> {
    pub train: &'a Dataset,
    /// What every in-pipeline figure comes from: the validation split (or the test split when
    /// there is none, and then `test` is `None`).
    pub eval: &'a Dataset,
    /// "validation" or "test".
    pub eval_name: &'static str,
    /// Measured once at the end of a run.
    pub test: Option<&'a Dataset>,
    pub train_transform: Transform,
    pub eval_transform: Transform,
    pub device: TrainDevice,
}

impl BurnTrainer<'_> {
    fn top1(&self, model: &Model, ds: &Dataset) -> penni_compress::Result<f32> {
        self.measure(model, ds).map(|e| e.top1)
    }

    fn measure(&self, model: &Model, ds: &Dataset) -> penni_compress::Result<Evaluation> {
        penni_train::evaluate(model, ds, &self.eval_transform, 256)
            .map(|e| Evaluation {
                top1: e.top1 as f32,
                loss: Some(e.loss as f32),
            })
            .map_err(|e| CompressError::Trainer(e.to_string()))
    }
}

impl Trainer for BurnTrainer<'_> {
    fn train(&mut self, model: &Model, phase: &PhaseTraining, checkpoint_dir: &Path) -> penni_compress::Result<Model> {
        let opts = TrainOptions {
            phase: phase.name.clone(),
            epochs: phase.epochs,
            batch_size: phase.batch_size,
            lr: phase.lr,
            momentum: phase.momentum,
            nesterov: phase.nesterov,
            weight_decay: phase.weight_decay,
            schedule: LrSchedule::MultiStep {
                milestones: phase.milestones.clone(),
                gamma: phase.gamma,
            },
            seed: phase.seed,
            l1_coefficients: phase.l1_coefficients,
            group_l1_coefficients: phase.group_l1_coefficients,
            alternate_interval: phase.alternate_interval,
            freeze_zeros: phase.freeze_zeros,
            proximal: phase
                .proximal
                .as_ref()
                .map(|p| penni_train::Proximal::new(p.rho, p.targets.iter().map(|(n, t)| (n.clone(), t.data.clone())).collect())),
            fake_quant: None,
            distill: phase
                .distill
                .as_ref()
                .map(|d| penni_train::Distill::new(d.weight, d.temperature, d.teacher.clone())),
        };
        let run = RunOptions {
            checkpoint_dir: Some(checkpoint_dir.to_path_buf()),
            resume: true,
            metrics_log: Some(checkpoint_dir.join("metrics.jsonl")),
            progress: true,
            stop_after_epochs: None,
            device: self.device,
        };
        let data = TrainData {
            train: self.train,
            test: Some(self.eval),
            eval_name: self.eval_name,
            train_transform: self.train_transform.clone(),
            test_transform: self.eval_transform.clone(),
        };
        penni_train::train(model, &data, &opts, &run)
            .map(|o| o.model)
            .map_err(|e| CompressError::Trainer(e.to_string()))
    }

    fn evaluate(&mut self, model: &Model) -> penni_compress::Result<f32> {
        self.top1(model, self.eval)
    }

    fn evaluate_with_loss(&mut self, model: &Model) -> penni_compress::Result<Evaluation> {
        self.measure(model, self.eval)
    }

    fn test(&mut self, model: &Model) -> penni_compress::Result<Option<f32>> {
        self.test.map(|ds| self.top1(model, ds)).transpose()
    }
}

pub fn run(args: CompressArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(m) = args.method {
        config.method = match m {
            MethodArg::Penni => penni_compress::Method::Penni,
            MethodArg::Tucker => penni_compress::Method::Tucker,
            MethodArg::Auto => penni_compress::Method::Auto,
        };
    }
    if let Some(e) = args.retrain_epochs {
        config.retrain.epochs = e;
    }
    if let Some(e) = args.finetune_epochs {
        config.finetune.epochs = e;
    }
    if let Some(t) = args.target_macs {
        config.budget.target_macs = Some(t);
        config.budget.target_latency_ms = None;
    }
    if let Some(t) = args.target_latency {
        config.budget.target_latency_ms = Some(t);
        config.budget.target_macs = None;
    }
    if let Some(b) = args.batch {
        config.budget.batch = b;
    }
    if let Some(t) = args.threads {
        config.budget.threads = t;
    }
    config.validate()?;
    // a GPU that cannot start fails here, before any data is read
    args.device.open()?;
    let loaded = common::load_model(&args.model)?;
    let data = args.data.load(config.seed, true)?;
    let preprocess = common::resolve_preprocess(
        loaded.preprocess,
        &args.data.norm,
        Some(&data.train),
        args.data.pad_to,
        &loaded.model,
    )?;
    let run_dir = args.run_dir.clone().unwrap_or_else(|| common::default_run_dir(&args.out));
    let outcome = compress_with(
        &loaded.model,
        &config,
        &data,
        &preprocess,
        args.crop_padding,
        !args.no_flip,
        args.device,
        &run_dir,
    )?;
    common::save_model(&outcome.model, Some(&preprocess), &args.out)?;
    println!("{}", outcome.report.to_table());
    println!(
        "compressed model written to {}; reports: {}",
        args.out.display(),
        run_dir.join("report.{txt,json,svg}").display()
    );
    Ok(())
}

pub fn compress_with(
    model: &Model,
    config: &Config,
    data: &LoadedData,
    pre: &Preprocess,
    crop_padding: usize,
    flip: bool,
    device: TrainDevice,
    run_dir: &Path,
) -> Result<penni_compress::CompressOutcome> {
    eprintln!(
        "compressing on {} training examples; phase figures on {} {} examples{}",
        data.train.len(),
        data.eval_set().len(),
        data.eval_name(),
        if data.val.is_some() {
            "; the test split is measured once, at the end"
        } else {
            ""
        }
    );
    let mut trainer = BurnTrainer {
        train: &data.train,
        eval: data.eval_set(),
        eval_name: data.eval_name(),
        test: data.val.as_ref().map(|_| &data.test),
        train_transform: Transform {
            crop_padding,
            hflip: flip,
            ..pre.eval_transform()
        },
        eval_transform: pre.eval_transform(),
        device,
    };
    let mut latency = EngineLatency {
        batch: config.budget.batch,
        threads: config.budget.threads,
        reps: 7,
    };
    penni_compress::compress_with_latency(model, config, &mut trainer, Some(&mut latency), run_dir)
        .with_context(|| format!("compressing (run directory {})", run_dir.display()))
}

/// The budget mode's latency measurer: penni's engine on this machine, per planned step (median
/// of `reps` runs); a step that computes several fused nodes is charged to the one with the
/// most MACs (the conv that a batchnorm, activation or add was fused into).
pub struct EngineLatency {
    pub batch: usize,
    pub threads: usize,
    pub reps: usize,
}

impl CostModel for EngineLatency {
    fn unit(&self) -> String {
        let on = if self.threads == 0 {
            "all cores".to_string()
        } else {
            format!("{} threads", self.threads)
        };
        format!("ms per batch of {} on {on}", self.batch)
    }

    fn costs(&mut self, model: &Model) -> penni_compress::Result<(BTreeMap<String, f64>, f64)> {
        let engine_err = |e: penni_engine::EngineError| CompressError::Trainer(format!("timing with the engine: {e}"));
        let mut plan = Plan::new(
            model,
            self.batch,
            &EngineOptions {
                threads: self.threads,
                ..Default::default()
            },
        )
        .map_err(engine_err)?;
        let input = penni_engine::pseudo_random_input(self.batch * model.input_shape().numel(), 1);
        plan.profile(&input, 1).map_err(engine_err)?; // warm-up
        let steps = plan.profile(&input, self.reps).map_err(engine_err)?;
        let macs: BTreeMap<String, u64> = penni_model::model_cost(model)?
            .layers
            .into_iter()
            .map(|l| (l.node, l.macs_paper))
            .collect();
        let mut layers = BTreeMap::new();
        let mut total = 0.0;
        for s in &steps {
            let ms = s.median_ns as f64 / 1e6;
            total += ms;
            let owner = s
                .name
                .split('+')
                .max_by_key(|n| macs.get(*n).copied().unwrap_or(0))
                .unwrap_or(&s.name);
            *layers.entry(owner.to_string()).or_insert(0.0) += ms;
        }
        Ok((layers, total))
    }
}
