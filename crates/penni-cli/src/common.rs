//! What several commands share: choosing a dataset, loading or building a model, and the
//! preprocessing a model expects (kept in the model file so inference normalises the same way).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use penni_data::{Dataset, Split, Transform};
use penni_model::zoo::{self, ZooOptions};
use penni_model::{Extras, Model, io};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DatasetKind {
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
    /// A folder with `train/` and `test/`, each holding one sub-folder of PNGs per class.
    Folder,
}

#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Which dataset to use.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DatasetKind,
    /// Where the dataset lives. Default for Fashion-MNIST: $PENNI_DATA_DIR, else
    /// /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist; scripts/fetch-data.sh installs it).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use only this many training examples (a seeded random subset); 0 = all.
    #[arg(long, default_value_t = 0)]
    pub train_subset: usize,
    /// Use only this many test examples; 0 = all.
    #[arg(long, default_value_t = 0)]
    pub test_subset: usize,
    /// Examples held out of the training data (seeded) as a validation split: every figure and
    /// choice during training and compression uses it, and the test split is measured once, at
    /// the end. Default: 5000, or a twelfth of the training examples when there are fewer than
    /// 60,000 (Fashion-MNIST's 60,000 give 5,000). 0 = none: the per-epoch and per-phase
    /// figures are then test figures.
    #[arg(long)]
    pub val_split: Option<usize>,
    /// Zero-pad images (centred) to this size, e.g. 32 turns 28x28 Fashion-MNIST into 32x32.
    #[arg(long)]
    pub pad_to: Option<usize>,
    #[command(flatten)]
    pub norm: NormArgs,
}

/// The input normalisation options that every command reading images shares.
#[derive(Args, Clone, Debug, Default)]
pub struct NormArgs {
    /// Per-channel input mean of x/255, comma-separated (one value for every channel, or one
    /// per channel). Overrides the preprocessing stored in a .penni model.
    #[arg(long)]
    pub mean: Option<String>,
    /// Per-channel input std of x/255, comma-separated. Overrides the stored preprocessing.
    #[arg(long)]
    pub std: Option<String>,
}

pub struct LoadedData {
    pub train: Dataset,
    /// Held out of the training data (`--val-split`); `None` when it is 0 or no training data
    /// was asked for.
    pub val: Option<Dataset>,
    pub test: Dataset,
}

impl LoadedData {
    /// The set that per-epoch and per-phase figures come from: the validation split, or the
    /// test split when there is none.
    pub fn eval_set(&self) -> &Dataset {
        self.val.as_ref().unwrap_or(&self.test)
    }

    /// What `eval_set` is, for messages.
    pub fn eval_name(&self) -> &'static str {
        if self.val.is_some() { "validation" } else { "test" }
    }
}

fn load_split(args: &DataArgs, split: Split) -> Result<Dataset> {
    let explicit = args.data_dir.as_deref();
    let dir = || -> Result<PathBuf> {
        match explicit {
            Some(d) => Ok(d.to_path_buf()),
            None => bail!("--data-dir is required for this dataset"),
        }
    };
    Ok(match args.dataset {
        DatasetKind::FashionMnist => penni_data::load_fashion_mnist(&penni_data::resolve_data_dir(explicit)?, split)?,
        DatasetKind::Mnist => penni_data::load_mnist(&dir()?, split)?,
        DatasetKind::Cifar10 => penni_data::load_cifar10(&dir()?, split)?,
        DatasetKind::Cifar100 => penni_data::load_cifar100(&dir()?, split)?,
        DatasetKind::Folder => penni_data::load_image_folder_split(&dir()?, split)?,
    })
}

/// The validation split of a full-size dataset (Fashion-MNIST: 5,000 of 60,000).
const DEFAULT_VAL_SPLIT: usize = 5000;

impl DataArgs {
    pub fn load(&self, seed: u64, need_train: bool) -> Result<LoadedData> {
        let mut train = if need_train {
            load_split(self, Split::Train)?
        } else {
            load_split(self, Split::Test)?
        };
        let mut test = load_split(self, Split::Test)?;
        if self.train_subset > 0 && need_train {
            train = train.subset(self.train_subset.min(train.len()), seed);
        }
        if self.test_subset > 0 {
            test = test.subset(self.test_subset.min(test.len()), seed.wrapping_add(1));
        }
        let mut val = None;
        if need_train {
            let n = self.val_split.unwrap_or(DEFAULT_VAL_SPLIT.min(train.len() / 12));
            if n > 0 && n >= train.len() {
                bail!(
                    "--val-split {n} leaves no training data ({} training examples); give a smaller --val-split, or 0 for none",
                    train.len()
                );
            }
            if n > 0 {
                let (rest, held_out) = train.split_validation(n, seed.wrapping_add(2));
                train = rest;
                val = Some(held_out);
            }
        }
        Ok(LoadedData { train, val, test })
    }
}

/// The input preprocessing a trained model expects, stored in its `.penni` file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub pad_to: Option<(usize, usize)>,
    #[serde(default)]
    pub class_names: Vec<String>,
}

const PREPROCESS_KEY: &str = "preprocess";

impl Preprocess {
    pub fn eval_transform(&self) -> Transform {
        Transform {
            pad_to: self.pad_to,
            crop_padding: 0,
            hflip: false,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }
}

/// The preprocessing a command applies to a model's inputs, by one rule for every command:
/// `--mean`/`--std` where given; otherwise what the model file stores; otherwise (ONNX files,
/// models trained elsewhere) the per-channel statistics of the training split, when the command
/// has a dataset, else none. Prints one line that says which was used.
pub fn resolve_preprocess(
    stored: Option<Preprocess>,
    norm: &NormArgs,
    train: Option<&Dataset>,
    pad_to: Option<usize>,
    model: &Model,
) -> Result<Preprocess> {
    let parse = |v: &Option<String>, what: &str| v.as_deref().map(|s| parse_list::<f32>(s, what)).transpose();
    let (mean, std) = (parse(&norm.mean, "--mean")?, parse(&norm.std, "--std")?);
    let from_args = mean.is_some() || std.is_some();
    let (base, source) = match (stored, train) {
        (Some(p), _) => (p, "stored in the model"),
        (None, Some(ds)) => {
            let (mean, std) = penni_data::channel_stats(ds);
            let p = Preprocess {
                mean,
                std,
                pad_to: pad_to.map(|p| (p, p)),
                class_names: ds.class_names.clone(),
            };
            (p, "the training split's per-channel statistics (the model stores none)")
        }
        (None, None) => (
            Preprocess {
                pad_to: pad_to.map(|p| (p, p)),
                ..Default::default()
            },
            "none (the model stores no preprocessing and no dataset was given)",
        ),
    };
    let pre = Preprocess {
        mean: mean.unwrap_or(base.mean),
        std: std.unwrap_or(base.std),
        ..base
    };
    let source = if from_args { "--mean/--std" } else { source };
    let c = model.input.channels;
    for (name, v) in [("mean", &pre.mean), ("std", &pre.std)] {
        if v.len() > 1 && v.len() != c {
            bail!(
                "normalisation {name} ({source}): {} values for a model with {c} input channels (give 1 or {c})",
                v.len()
            );
        }
        if v.iter().any(|x| !x.is_finite()) {
            bail!("normalisation {name} ({source}): values must be finite, got {v:?}");
        }
    }
    if pre.std.iter().any(|s| *s <= 0.0) {
        bail!("normalisation std ({source}): values must be positive, got {:?}", pre.std);
    }
    eprintln!("normalisation: mean {:?}, std {:?}: {source}", pre.mean, pre.std);
    Ok(pre)
}

pub struct LoadedModel {
    pub model: Model,
    pub preprocess: Option<Preprocess>,
}

fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Loads a `.penni` or an `.onnx` model (by extension; an ONNX file carries no preprocessing).
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    if is_onnx(path) {
        return Ok(LoadedModel {
            model: penni_onnx::import_file(path)?,
            preprocess: None,
        });
    }
    let (model, extras) = io::load_with_extras(path)?;
    let preprocess = match extras.metadata.get(PREPROCESS_KEY) {
        Some(s) => Some(serde_json::from_str(s).with_context(|| format!("{}: unreadable preprocessing record", path.display()))?),
        None => None,
    };
    Ok(LoadedModel { model, preprocess })
}

/// Saves as `.penni`, or as ONNX when the path ends in `.onnx`.
pub fn save_model(model: &Model, preprocess: Option<&Preprocess>, path: &Path) -> Result<()> {
    if is_onnx(path) {
        penni_onnx::export_file(model, path)?;
        return Ok(());
    }
    let mut extras = Extras::default();
    if let Some(p) = preprocess {
        extras.metadata.insert(PREPROCESS_KEY.into(), serde_json::to_string(p)?);
    }
    io::save_with_extras(model, &extras, path)?;
    Ok(())
}

/// `<out>.run`: where a command that writes `out` keeps its checkpoints, logs and reports.
pub fn default_run_dir(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".run");
    PathBuf::from(p)
}

/// A model argument is a `.penni` file or the name of a zoo model.
pub fn is_zoo_name(spec: &str) -> bool {
    zoo::ZOO_NAMES.contains(&spec)
}

pub fn build_zoo(
    name: &str,
    channels: usize,
    height: usize,
    width: usize,
    classes: usize,
    width_multiplier: f32,
    seed: u64,
) -> Result<Model> {
    let opts = ZooOptions {
        in_channels: channels,
        height,
        width,
        num_classes: classes,
        width_multiplier,
        seed,
    };
    Ok(zoo::build(name, &opts)?)
}

pub fn parse_list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse::<T>()
                .map_err(|_| anyhow::anyhow!("{what}: '{p}' is not a valid value"))
        })
        .collect()
}

/// Human-readable large counts: 11.17M, 556.4M, 1.2k.
pub fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
