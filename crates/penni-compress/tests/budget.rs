//! Budget mode through the pipeline: the MAC budget is met, the prune stage predicts the MACs it
//! ends at exactly, the choices follow the measured sensitivities, and a budget that cannot be
//! met is said so in the report.

mod common;

use std::path::Path;

use common::*;
use std::collections::BTreeMap;

use penni_compress::{Config, CostModel, Evaluation, Form, PhaseTraining, Trainer, compress, compress_with_latency};
use penni_model::reference::{Activation, forward};
use penni_model::{Model, model_cost};

/// "Accuracy" that falls as a model's outputs move away from the baseline's on a fixed batch:
/// 1 / (1 + relative difference). Training leaves the values as they are.
struct FidelityTrainer {
    input: Activation,
    reference: Activation,
    evaluations: usize,
}

impl FidelityTrainer {
    fn new(baseline: &Model) -> Self {
        let input = random_input(baseline, 4, 7);
        let reference = forward(baseline, &input).unwrap();
        Self {
            input,
            reference,
            evaluations: 0,
        }
    }
}

impl Trainer for FidelityTrainer {
    fn train(&mut self, model: &Model, _phase: &PhaseTraining, _dir: &Path) -> penni_compress::Result<Model> {
        Ok(model.clone())
    }

    fn evaluate(&mut self, model: &Model) -> penni_compress::Result<f32> {
        self.evaluate_with_loss(model).map(|e| e.top1)
    }

    /// The "loss" is the relative difference itself.
    fn evaluate_with_loss(&mut self, model: &Model) -> penni_compress::Result<Evaluation> {
        self.evaluations += 1;
        let out = forward(model, &self.input).unwrap();
        let diff = relative_diff(&self.reference, &out);
        Ok(Evaluation {
            top1: (1.0 / (1.0 + diff)) as f32,
            loss: Some(diff as f32),
        })
    }
}

fn model() -> Model {
    let mut m = penni_model::zoo::build(
        "resnet20",
        &penni_model::zoo::ZooOptions {
            height: 8,
            width: 8,
            width_multiplier: 0.5,
            seed: 11,
            ..Default::default()
        },
    )
    .unwrap();
    randomize_batchnorm(&mut m, 12);
    m
}

fn config(target: f64) -> Config {
    let mut c = Config::default();
    c.retrain.epochs = 1;
    c.finetune.epochs = 1;
    c.budget.target_macs = Some(target);
    c.budget.d_choices = vec![1, 2, 3, 5];
    c.budget.s_choices = vec![0.5, 1.0, 2.0, 4.0];
    c
}

fn macs(m: &Model) -> u64 {
    model_cost(m).unwrap().totals.macs_paper
}

#[test]
fn a_mac_budget_is_met_and_the_pruning_prediction_is_exact() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let mut t = FidelityTrainer::new(&m);
    let out = compress(&m, &config(0.3), &mut t, &dir.path().join("run")).unwrap();
    let budget = out.report.budget.as_ref().expect("budget report");
    assert_eq!(budget.baseline_cost, macs(&m) as f64);
    assert_eq!(budget.budget, (macs(&m) as f64 * 0.3).floor());
    assert!(
        macs(&out.model) as f64 <= budget.budget,
        "{} > {}\n{}",
        macs(&out.model),
        budget.budget,
        out.report.to_table()
    );
    assert_eq!(budget.measured_final, Some(macs(&out.model) as f64));
    let prune = budget.prune.as_ref().unwrap();
    assert!(prune.met);
    assert_eq!(prune.predicted_cost, out.report.phase("prune").unwrap().cost.macs_paper as f64);
    // every decomposable layer got a d from the candidates, and the decomposition used it
    let bases = budget.bases.as_ref().unwrap();
    let decomposed = &out.report.decompose.as_ref().unwrap().layers;
    assert_eq!(bases.layers.len(), decomposed.len());
    for (choice, layer) in bases.layers.iter().zip(decomposed) {
        assert_eq!(choice.node, layer.node);
        assert_eq!(choice.choice().value as usize, layer.d);
        assert!([1, 2, 3, 5].contains(&layer.d));
    }
    // not every layer at the same d: the budget is spent where it buys the most
    let ds: std::collections::BTreeSet<usize> = decomposed.iter().map(|l| l.d).collect();
    assert!(ds.len() > 1, "{ds:?}");
    // the per-layer thresholds went to the prune pass
    let pruned = &out.report.prune.as_ref().unwrap().layers;
    for choice in &prune.layers {
        let layer = pruned.iter().find(|l| l.node == choice.node).unwrap();
        assert!(choice.choice().value == 0.0 || layer.zeros > 0, "{}", choice.node);
    }
    let table = out.report.to_table();
    assert!(table.contains("budget: MACs (paper) <= 30.0%"), "{table}");
    assert!(table.contains("predicted"), "{table}");
    assert!(out.report.notes.is_empty(), "{:?}", out.report.notes);
    // a tighter budget costs more accuracy and fewer MACs
    let mut t2 = FidelityTrainer::new(&m);
    let tight = compress(&m, &config(0.15), &mut t2, &dir.path().join("tight")).unwrap();
    assert!(macs(&tight.model) as f64 <= tight.report.budget.as_ref().unwrap().budget);
    assert!(macs(&tight.model) < macs(&out.model));
    let top1 = |r: &penni_compress::CompressionReport| r.phase("prune").unwrap().top1.unwrap();
    assert!(top1(&tight.report) <= top1(&out.report));
}

#[test]
fn a_loose_budget_loses_nothing_it_does_not_have_to() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let mut t = FidelityTrainer::new(&m);
    let out = compress(&m, &config(1.0), &mut t, &dir.path().join("run")).unwrap();
    let budget = out.report.budget.as_ref().unwrap();
    // the most accurate candidate everywhere (usually not pruning at all)
    for l in &budget.prune.as_ref().unwrap().layers {
        assert_eq!(l.chosen, 0, "{}", l.node);
    }
    for l in &budget.bases.as_ref().unwrap().layers {
        assert_eq!(l.chosen, 0, "{}", l.node);
    }
}

#[test]
fn an_unreachable_budget_is_reported_not_hidden() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let mut t = FidelityTrainer::new(&m);
    let out = compress(&m, &config(0.001), &mut t, &dir.path().join("run")).unwrap();
    let budget = out.report.budget.as_ref().unwrap();
    assert!(!budget.prune.as_ref().unwrap().met);
    assert!(
        out.report.notes.iter().any(|n| n.contains("budget NOT met")),
        "{:?}",
        out.report.notes
    );
    assert!(out.report.to_table().contains("over the budget"));
}

/// A stand-in for an engine's timings: 1 ms per million MACs plus 0.1 us per layer.
struct FakeLatency {
    calls: usize,
}

impl CostModel for FakeLatency {
    fn unit(&self) -> String {
        "ms per batch of 1 on 1 threads".into()
    }

    fn costs(&mut self, model: &Model) -> penni_compress::Result<(BTreeMap<String, f64>, f64)> {
        self.calls += 1;
        let c = model_cost(model).unwrap();
        let layers: BTreeMap<String, f64> = c
            .layers
            .iter()
            .map(|l| (l.node.clone(), l.macs_paper as f64 / 1e6 + 1e-4))
            .collect();
        let total = layers.values().sum();
        Ok((layers, total))
    }
}

#[test]
fn a_latency_budget_is_met_in_the_measurer_s_unit() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(0.3);
    cfg.budget.target_macs = None;
    let mut lat = FakeLatency { calls: 0 };
    let baseline_ms = lat.costs(&m).unwrap().1;
    cfg.budget.target_latency_ms = Some(baseline_ms * 0.4);
    let mut t = FidelityTrainer::new(&m);
    let out = compress_with_latency(&m, &cfg, &mut t, Some(&mut lat), &dir.path().join("run")).unwrap();
    let budget = out.report.budget.as_ref().unwrap();
    assert_eq!(budget.unit, "ms per batch of 1 on 1 threads");
    assert_eq!(budget.budget, baseline_ms * 0.4);
    assert!(budget.prune.as_ref().unwrap().met);
    let measured = budget.measured_final.unwrap();
    assert!(measured <= budget.budget, "{measured} > {}", budget.budget);
    assert!((measured - FakeLatency { calls: 0 }.costs(&out.model).unwrap().1).abs() < 1e-9);
    assert!(lat.calls > 10, "every candidate is timed");
    assert!(out.report.to_table().contains("ms (pred.)"));
    // without a measurer a latency budget is an error, before anything is trained
    let mut t2 = FidelityTrainer::new(&m);
    let err = compress(&m, &cfg, &mut t2, &dir.path().join("none")).unwrap_err().to_string();
    assert!(err.contains("latency"), "{err}");
}

/// The auto method: each layer becomes PENNI, Tucker-2 or stays dense, whichever the budget
/// buys most cheaply, and the decomposition does exactly what was chosen.
#[test]
fn the_auto_method_mixes_forms_under_the_budget() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(0.35);
    cfg.method = penni_compress::Method::Auto;
    let mut t = FidelityTrainer::new(&m);
    let out = compress(&m, &cfg, &mut t, &dir.path().join("run")).unwrap();
    let budget = out.report.budget.as_ref().unwrap();
    assert!(macs(&out.model) as f64 <= budget.budget, "{}", out.report.to_table());
    let stage = budget.bases.as_ref().unwrap();
    assert_eq!(stage.parameter, "form");
    let mut seen = std::collections::BTreeSet::new();
    for l in &stage.layers {
        let form = l.choice().form.expect("auto candidates name their form");
        // every layer had all three kinds to choose from
        let kinds: std::collections::BTreeSet<&str> = l
            .candidates
            .iter()
            .map(|c| match c.form.unwrap() {
                Form::Penni { .. } => "penni",
                Form::Tucker { .. } => "tucker",
                Form::Dense => "dense",
            })
            .collect();
        assert_eq!(kinds.len(), 3, "{}", l.node);
        let node = |n: &str| out.model.node(n).map(|x| x.op.kind());
        match form {
            Form::Penni { .. } => {
                seen.insert("penni");
                assert_eq!(node(&l.node), Some("DecomposedConv2d"), "{}", l.node);
            }
            Form::Tucker { .. } => {
                seen.insert("tucker");
                assert!(out.model.node(&format!("{}.tucker_core", l.node)).is_some(), "{}", l.node);
            }
            Form::Dense => {
                seen.insert("dense");
                assert_eq!(node(&l.node), Some("Conv2d"), "{}", l.node);
                assert!(out.model.node(&format!("{}.tucker_core", l.node)).is_none());
            }
        }
    }
    assert!(
        seen.len() >= 2,
        "a budget this size mixes forms: {seen:?}\n{}",
        out.report.to_table()
    );
    assert!(out.report.to_table().contains("forms (PENNI, Tucker-2 or dense)"));
    // auto needs a budget
    let mut no_budget = Config {
        method: penni_compress::Method::Auto,
        ..Default::default()
    };
    no_budget.budget.target_macs = None;
    assert!(no_budget.validate().unwrap_err().to_string().contains("auto"));
}

#[test]
fn budget_values_are_checked() {
    for (text, key) in [
        ("[budget]\ntarget_macs = 0.0\n", "budget.target_macs"),
        ("[budget]\ntarget_macs = 1.5\n", "budget.target_macs"),
        ("[budget]\nd_choices = []\n", "budget.d_choices"),
        ("[budget]\nd_choices = [0, 2]\n", "budget.d_choices"),
        ("[budget]\ns_choices = [-1.0]\n", "budget.s_choices"),
        ("[budget]\ncoefficient_density = 0.0\n", "budget.coefficient_density"),
        (
            "[budget]\ntarget_macs = 0.2\n[decompose.layers]\n\"a\" = 2\n",
            "decompose.layers cannot be combined",
        ),
        ("[budget]\ntarget = 0.2\n", "target"),
        ("[budget]\ntarget_latency_ms = -1.0\n", "budget.target_latency_ms"),
        ("[budget]\ntarget_macs = 0.2\ntarget_latency_ms = 3.0\n", "not both"),
        ("[budget]\nbatch = 0\n", "budget.batch"),
        ("[budget]\ntucker_ranks = [0.0]\n", "budget.tucker_ranks"),
    ] {
        let err = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    let c = Config::from_toml_str("[budget]\ntarget_macs = 0.15\n").unwrap();
    assert_eq!(c.budget.target_macs, Some(0.15));
    assert_eq!(Config::from_toml_str(&c.to_toml_string().unwrap()).unwrap(), c);
    // off by default, and then absent from the written config (old run directories resume)
    assert!(!Config::default().to_toml_string().unwrap().contains("budget"));
}
