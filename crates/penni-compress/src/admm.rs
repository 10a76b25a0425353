//! ADMM training toward Tucker form: instead of cutting a conv to Tucker ranks and fine-tuning
//! what is left, the network is trained so that its weights converge to Tucker form first.
//!
//! For every decomposed conv weight W: minimise loss(W) + rho/2 ||W - Z + U||^2 over W (the
//! trainer, `interval` epochs per round, the proximal target Z - U), then
//! Z = Tucker projection of W + U (truncated HOSVD at the layer's ranks), U = U + W - Z
//! (the scaled dual), and rho *= rho_growth. The constraint gap ||W - Z|| / ||W|| is recorded
//! per round; it falls as the weights take Tucker form. The phase after this one projects W
//! onto Tucker form for good (crate::tucker) and fine-tunes the factors.
//!
//! Each round is checkpointed (`round-K.penni` with Z and U as extra tensors) and the trainer
//! checkpoints inside a round (`round-K/`), so a stopped run resumes where it stopped.

use std::collections::BTreeMap;
use std::path::Path;

use penni_model::io::{load_with_extras, save_with_extras};
use penni_model::{Extras, Model, Op, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{CompressError, Result};
use crate::training::{DistillTerm, ProximalTerm, Trainer};
use crate::tucker::{Ranks, project, tucker_decompose};

/// One ADMM round: after its training and its Z and U updates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdmmRound {
    pub round: usize,
    /// Epochs of ADMM training done after this round.
    pub epochs_done: usize,
    /// The rho this round trained with.
    pub rho: f64,
    /// ||W - Z||_F / ||W||_F over all constrained layers after the round.
    pub gap: f64,
    pub layer_gaps: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdmmReport {
    /// The constrained layers and their ranks.
    pub layers: BTreeMap<String, Ranks>,
    /// ||W - Z|| / ||W|| before training (Z the projection of the input weights).
    pub initial_gap: f64,
    pub rounds: Vec<AdmmRound>,
}

const REPORT_KEY: &str = "penni_compress.admm";

fn conv_dims(model: &Model, name: &str) -> Result<(usize, usize, usize)> {
    match model.node(name).map(|n| &n.op) {
        Some(Op::Conv2d(c)) => Ok((c.out_channels, c.in_channels, c.kernel[0] * c.kernel[1])),
        _ => Err(CompressError::Invalid(format!("admm: '{name}' is not a conv of the model"))),
    }
}

fn weight<'a>(model: &'a Model, name: &str) -> Result<&'a Tensor> {
    model
        .node(name)
        .ok_or_else(|| CompressError::Invalid(format!("admm: no layer '{name}'")))?
        .param("weight")
        .map_err(Into::into)
}

/// Z = projection of `w_plus_u` per layer, and the per-layer relative gap ||W - Z|| / ||W||.
fn project_all(model: &Model, layers: &BTreeMap<String, Ranks>, u: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let mut z = BTreeMap::new();
    for (name, ranks) in layers {
        let (n, c, kk) = conv_dims(model, name)?;
        let w = weight(model, name)?;
        let shifted: Vec<f32> = match u.get(name) {
            Some(u) => w.data.iter().zip(&u.data).map(|(a, b)| a + b).collect(),
            None => w.data.clone(),
        };
        let (p, _) = project(&shifted, n, c, kk, *ranks)?;
        z.insert(
            name.clone(),
            Tensor {
                shape: w.shape.clone(),
                data: p,
            },
        );
    }
    Ok(z)
}

fn gaps(model: &Model, z: &BTreeMap<String, Tensor>) -> Result<(f64, BTreeMap<String, f64>)> {
    let (mut all_d, mut all_n) = (0.0f64, 0.0f64);
    let mut per = BTreeMap::new();
    for (name, zt) in z {
        let w = weight(model, name)?;
        let d: f64 = w.data.iter().zip(&zt.data).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let n: f64 = w.data.iter().map(|a| (*a as f64).powi(2)).sum();
        per.insert(name.clone(), if n > 0.0 { (d / n).sqrt() } else { 0.0 });
        all_d += d;
        all_n += n;
    }
    Ok((if all_n > 0.0 { (all_d / all_n).sqrt() } else { 0.0 }, per))
}

fn round_file(dir: &Path, k: usize) -> std::path::PathBuf {
    dir.join(format!("round-{k}.penni"))
}

/// The latest completed round in `dir`: its model, Z, U and the report so far.
#[allow(clippy::type_complexity)]
fn resume_point(dir: &Path, rounds: usize) -> Result<Option<(Model, BTreeMap<String, Tensor>, BTreeMap<String, Tensor>, AdmmReport)>> {
    for k in (0..rounds).rev() {
        let path = round_file(dir, k);
        if !path.exists() {
            continue;
        }
        let (m, extras) = load_with_extras(&path)?;
        let report: AdmmReport = extras
            .metadata
            .get(REPORT_KEY)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| CompressError::State {
                path: path.clone(),
                message: "not an ADMM round checkpoint; delete the run directory to start over".into(),
            })?;
        let (mut z, mut u) = (BTreeMap::new(), BTreeMap::new());
        for (key, t) in extras.tensors {
            if let Some(name) = key.strip_prefix("z/") {
                z.insert(name.to_string(), t);
            } else if let Some(name) = key.strip_prefix("u/") {
                u.insert(name.to_string(), t);
            }
        }
        return Ok(Some((m, z, u, report)));
    }
    Ok(None)
}

/// Runs (or resumes) ADMM on `model` for the convs that `config.tucker` decomposes, with
/// round checkpoints in `dir`. Returns the trained (still dense) model and the gaps per round.
pub fn admm(
    model: &Model,
    config: &Config,
    distill: Option<&DistillTerm>,
    trainer: &mut dyn Trainer,
    dir: &Path,
) -> Result<(Model, AdmmReport)> {
    let (_, plan) = tucker_decompose(model, &config.tucker_options())?;
    let layers: BTreeMap<String, Ranks> = plan.layers.iter().map(|l| (l.node.clone(), l.ranks)).collect();
    let a = &config.admm;
    let rounds = a.epochs.div_ceil(a.interval);
    std::fs::create_dir_all(dir).map_err(|source| CompressError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (mut current, mut z, mut u, mut report) = match resume_point(dir, rounds)? {
        Some(r) => r,
        None => {
            let u = BTreeMap::new();
            let z = project_all(model, &layers, &u)?;
            let (initial_gap, _) = gaps(model, &z)?;
            let report = AdmmReport {
                layers: layers.clone(),
                initial_gap,
                rounds: vec![],
            };
            (model.clone(), z, u, report)
        }
    };
    for k in report.rounds.len()..rounds {
        let start = k * a.interval;
        let epochs = a.interval.min(a.epochs - start);
        let rho = a.rho * a.rho_growth.powi(k as i32);
        // target Z - U
        let targets = z
            .iter()
            .map(|(name, zt)| {
                let data = match u.get(name) {
                    Some(ut) => zt.data.iter().zip(&ut.data).map(|(p, q)| p - q).collect(),
                    None => zt.data.clone(),
                };
                (
                    name.clone(),
                    Tensor {
                        shape: zt.shape.clone(),
                        data,
                    },
                )
            })
            .collect();
        let mut spec = config.admm_round(start, epochs, k, ProximalTerm { rho, targets });
        spec.distill = distill.cloned();
        let round_dir = dir.join(format!("round-{k}"));
        std::fs::create_dir_all(&round_dir).map_err(|source| CompressError::Io {
            path: round_dir.clone(),
            source,
        })?;
        current = trainer.train(&current, &spec, &round_dir)?;
        // U is the running sum of the gaps W - Z (scaled dual), Z the projection of W + U
        let mut next_u = BTreeMap::new();
        let mut shifted_u = BTreeMap::new();
        for name in layers.keys() {
            let w = weight(&current, name)?;
            let prev: Vec<f32> = u.get(name).map_or_else(|| vec![0.0; w.data.len()], |t: &Tensor| t.data.clone());
            shifted_u.insert(
                name.clone(),
                Tensor {
                    shape: w.shape.clone(),
                    data: prev,
                },
            );
        }
        z = project_all(&current, &layers, &shifted_u)?;
        for name in layers.keys() {
            let w = weight(&current, name)?;
            let data = w
                .data
                .iter()
                .zip(&shifted_u[name].data)
                .zip(&z[name].data)
                .map(|((wv, uv), zv)| uv + wv - zv)
                .collect();
            next_u.insert(
                name.clone(),
                Tensor {
                    shape: w.shape.clone(),
                    data,
                },
            );
        }
        u = next_u;
        let (gap, layer_gaps) = gaps(&current, &z)?;
        report.rounds.push(AdmmRound {
            round: k,
            epochs_done: start + epochs,
            rho,
            gap,
            layer_gaps,
        });
        let mut extras = Extras::default();
        extras.metadata.insert(
            REPORT_KEY.into(),
            serde_json::to_string(&report).map_err(|e| CompressError::Invalid(format!("admm report: {e}")))?,
        );
        for (name, t) in &z {
            extras.tensors.insert(format!("z/{name}"), t.clone());
        }
        for (name, t) in &u {
            extras.tensors.insert(format!("u/{name}"), t.clone());
        }
        save_with_extras(&current, &extras, &round_file(dir, k))?;
    }
    Ok((current, report))
}
