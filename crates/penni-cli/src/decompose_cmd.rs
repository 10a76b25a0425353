//! `penni decompose`: a model's convs decomposed (PENNI or Tucker-2) without any training, so
//! that a user can look at the per-layer errors and costs before spending epochs.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use penni_compress::{Config, decompose, tucker_decompose};
use penni_model::model_cost;

use crate::common::{self, human};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Method {
    /// PENNI: shared basis kernels and per-kernel coefficients ([decompose] of the config).
    Penni,
    /// Tucker-2: 1x1 -> k x k core -> 1x1 by truncated HOSVD ([tucker] of the config).
    Tucker,
}

#[derive(Args, Debug)]
pub struct DecomposeArgs {
    #[arg(long, value_enum)]
    pub method: Method,
    /// The model to decompose: a .penni file or an .onnx file.
    #[arg(long)]
    pub model: PathBuf,
    /// TOML config (the same file as `penni compress`): [decompose] for PENNI, [tucker] for
    /// Tucker; without it the defaults apply.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the decomposed model (.penni, or .onnx to export it).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Also write the per-layer report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn run(args: DecomposeArgs) -> Result<()> {
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let loaded = common::load_model(&args.model)?;
    let before = model_cost(&loaded.model)?;
    let macs_of = |cost: &penni_model::ModelCost, names: &[String]| -> u64 {
        cost.layers.iter().filter(|l| names.contains(&l.node)).map(|l| l.macs_paper).sum()
    };
    let (model, rows, json) = match args.method {
        Method::Penni => {
            let (m, r) = decompose(&loaded.model, &config.decompose_options())?;
            let after = model_cost(&m)?;
            let rows: Vec<[String; 5]> = r
                .layers
                .iter()
                .map(|l| {
                    let n = std::slice::from_ref(&l.node);
                    [
                        l.node.clone(),
                        format!("d = {}", l.d),
                        format!("{:.4}", l.relative_error),
                        human(macs_of(&before, n)),
                        human(macs_of(&after, n)),
                    ]
                })
                .collect();
            (m, rows, serde_json::to_value(&r)?)
        }
        Method::Tucker => {
            let (m, r) = tucker_decompose(&loaded.model, &config.tucker_options())?;
            let after = model_cost(&m)?;
            let rows: Vec<[String; 5]> = r
                .layers
                .iter()
                .map(|l| {
                    let three = [format!("{}.tucker_in", l.node), format!("{}.tucker_core", l.node), l.node.clone()];
                    [
                        l.node.clone(),
                        format!(
                            "ranks {} -> {} of {} -> {}",
                            l.ranks.r_in, l.ranks.r_out, l.in_channels, l.out_channels
                        ),
                        format!("{:.4}", l.relative_error),
                        human(macs_of(&before, std::slice::from_ref(&l.node))),
                        human(macs_of(&after, &three)),
                    ]
                })
                .collect();
            for (name, why) in &r.kept_dense {
                eprintln!("kept dense: {name}: {why}");
            }
            (m, rows, serde_json::to_value(&r)?)
        }
    };
    let header = ["layer", "decomposition", "rel. error", "MACs before", "MACs after"];
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<0$}", w[i])
                } else {
                    format!("{c:>0$}", w[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(&header.map(String::from)));
    println!("{}", line(&w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>()));
    for r in &rows {
        println!("{}", line(r));
    }
    let after = model_cost(&model)?.totals;
    println!(
        "total: parameters (paper) {} -> {}, MACs (paper) {} -> {} ({:.1}% removed); no training yet",
        human(before.totals.params_paper),
        human(after.params_paper),
        human(before.totals.macs_paper),
        human(after.macs_paper),
        100.0 * (1.0 - after.macs_paper as f64 / before.totals.macs_paper.max(1) as f64)
    );
    common::save_model(&model, loaded.preprocess.as_ref(), &args.out)?;
    if let Some(p) = &args.report {
        penni_model::io::write_atomic(p, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    println!("decomposed model written to {}", args.out.display());
    Ok(())
}
