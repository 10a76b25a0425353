//! The Tucker method through the pipeline: ADMM rounds pull the weights to Tucker form (the
//! constraint gap falls), the projection makes three convs per layer, and a stopped run resumes.

mod common;

use std::path::Path;

use common::*;
use penni_compress::{Config, Method, Phase, PhaseTraining, Trainer, compress};
use penni_model::{Model, Op, model_cost};

/// Stands in for training: each phase solves min 1/2 ||W - W0||^2 + rho/2 ||W - T||^2 exactly
/// for the proximal weights (W0: the weights the phase started from, as if the data wanted
/// them), W = (W0 + rho T) / (1 + rho); without a proximal term it changes nothing.
#[derive(Default)]
struct ProximalTrainer {
    phases: Vec<(String, Option<f64>)>,
    fail_in_round: Option<usize>,
    admm_rounds: usize,
}

impl Trainer for ProximalTrainer {
    fn train(&mut self, model: &Model, phase: &PhaseTraining, _dir: &Path) -> penni_compress::Result<Model> {
        if phase.name == "admm" {
            if self.fail_in_round == Some(self.admm_rounds) {
                return Err(penni_compress::CompressError::Trainer("stopped".into()));
            }
            self.admm_rounds += 1;
        }
        self.phases.push((phase.name.clone(), phase.proximal.as_ref().map(|p| p.rho)));
        let mut m = model.clone();
        if let Some(p) = &phase.proximal {
            for (name, t) in &p.targets {
                let w = m.node_mut(name).unwrap().params.get_mut("weight").unwrap();
                for (v, target) in w.data.iter_mut().zip(&t.data) {
                    *v = (*v + p.rho as f32 * target) / (1.0 + p.rho as f32);
                }
            }
        }
        Ok(m)
    }

    fn evaluate(&mut self, _model: &Model) -> penni_compress::Result<f32> {
        Ok(0.9)
    }
}

fn model() -> Model {
    let mut m = zoo("resnet20", 8, 21);
    randomize_batchnorm(&mut m, 22);
    m
}

fn config() -> Config {
    let mut c = Config {
        method: Method::Tucker,
        ..Default::default()
    };
    c.admm.epochs = 5;
    c.admm.rho = 0.5;
    c.admm.rho_growth = 2.0;
    c.finetune.epochs = 1;
    c.tucker.rank = 0.5;
    c.tucker.only_if_cheaper = false;
    c
}

#[test]
fn admm_closes_the_constraint_gap_and_the_projection_makes_three_convs() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut t = ProximalTrainer::default();
    let out = compress(&m, &config(), &mut t, &run).unwrap();
    assert_eq!(out.phases_run, Phase::TUCKER);
    for (i, p) in Phase::TUCKER.iter().enumerate() {
        assert!(run.join(format!("{}-{}.penni", i + 1, p.name())).is_file(), "{p}");
    }
    // five ADMM rounds with growing rho, then the fine-tuning without a proximal term
    let rhos: Vec<f64> = t.phases.iter().filter(|(n, _)| n == "admm").map(|(_, r)| r.unwrap()).collect();
    assert_eq!(rhos, vec![0.5, 1.0, 2.0, 4.0, 8.0]);
    assert_eq!(t.phases.last().unwrap(), &("finetune".to_string(), None));
    // the gap falls from where it started to a small fraction of it (ADMM's primal residual
    // need not fall in every round, only in the end)
    let admm = out.report.admm.as_ref().unwrap();
    let gaps: Vec<f64> = admm.rounds.iter().map(|r| r.gap).collect();
    assert!(gaps[0] < admm.initial_gap, "{} -> {gaps:?}", admm.initial_gap);
    assert!(gaps[4] < 0.05 * admm.initial_gap, "{} -> {gaps:?}", admm.initial_gap);
    // so the projection loses little: its error is the last gap's size, not the first's
    let tucker = out.report.tucker.as_ref().unwrap();
    let worst = tucker.layers.iter().map(|l| l.relative_error).fold(0.0, f64::max);
    assert!(worst < 0.5 * admm.initial_gap, "{worst} vs {}", admm.initial_gap);
    // three convs per decomposed layer, fewer MACs, and the table says what happened
    let spatial = m
        .nodes
        .iter()
        .filter(|n| matches!(&n.op, Op::Conv2d(c) if c.kernel[0] * c.kernel[1] > 1))
        .count();
    assert_eq!(tucker.layers.len(), spatial);
    assert!(out.model.node(&format!("{}.tucker_core", tucker.layers[0].node)).is_some());
    assert!(model_cost(&out.model).unwrap().totals.macs_paper < model_cost(&m).unwrap().totals.macs_paper);
    let table = out.report.to_table();
    assert!(
        table.contains("ADMM toward Tucker form") && table.contains("Tucker-2 projection"),
        "{table}"
    );
}

#[test]
fn an_admm_run_stopped_in_a_round_resumes_there() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let whole = {
        let mut t = ProximalTrainer::default();
        compress(&m, &config(), &mut t, &dir.path().join("whole")).unwrap()
    };
    let run = dir.path().join("stopped");
    let mut t = ProximalTrainer {
        fail_in_round: Some(3),
        ..Default::default()
    };
    assert!(compress(&m, &config(), &mut t, &run).is_err());
    assert!(run.join("admm/round-2.penni").is_file() && !run.join("admm/round-3.penni").exists());
    let mut t2 = ProximalTrainer::default();
    let resumed = compress(&m, &config(), &mut t2, &run).unwrap();
    assert_eq!(t2.admm_rounds, 2, "rounds 3 and 4 only");
    assert_eq!(resumed.model, whole.model);
    let gaps = |r: &penni_compress::CompressionReport| -> Vec<f64> { r.admm.as_ref().unwrap().rounds.iter().map(|r| r.gap).collect() };
    let (a, b) = (gaps(&resumed.report), gaps(&whole.report));
    assert_eq!(a.len(), 5);
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-12 * y.abs().max(1e-12)),
        "{a:?} vs {b:?}"
    );
}

#[test]
fn tucker_settings_are_checked() {
    for (text, key) in [
        ("method = \"tucker\"\n[admm]\nrho = 0.0\n", "admm.rho"),
        ("[admm]\nrho_growth = 0.5\n", "admm.rho_growth"),
        ("[admm]\ninterval = 0\n", "admm.interval"),
        ("[tucker]\nrank = 1.5\n", "tucker.rank"),
        ("[tucker.layers]\n\"a\" = [0, 2]\n", "tucker.layers"),
        ("method = \"tucker\"\n[budget]\ntarget_macs = 0.2\n", "cannot be combined"),
        ("method = \"svd\"\n", "method"),
        ("[retrain]\ngroup_lambda = -1.0\n", "retrain.group_lambda"),
        ("[prune]\ngroup_s = -0.5\n", "prune.group_s"),
    ] {
        let err = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    let c = Config::from_toml_str("method = \"tucker\"\n[admm]\nepochs = 2\n").unwrap();
    assert_eq!(Config::from_toml_str(&c.to_toml_string().unwrap()).unwrap(), c);
}
