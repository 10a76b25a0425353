//! The pipeline with a fake trainer: phases, checkpoints, resume, and the contract checks on
//! what a trainer returns. Also the report outputs.

mod common;

use std::path::Path;

use common::*;
use penni_compress::pipeline::RunState;
use penni_compress::report::PhaseRecord;
use penni_compress::{CompressError, CompressionReport, Config, Phase, PhaseTraining, Trainer, compress};
use penni_model::{Model, Op};

/// Deterministic stand-in for penni-train: scales every non-zero weight, coefficient and basis
/// by 1.01 (so zeros stay zeros, as `freeze_zeros` asks) and can be told to fail in a phase.
#[derive(Default)]
struct FakeTrainer {
    trained: Vec<PhaseTraining>,
    evaluations: usize,
    fail_in: Option<&'static str>,
    change_graph: bool,
    accuracy: f32,
    /// `Some`: answers `test` with this accuracy and records each call.
    test_accuracy: Option<f32>,
    /// For each `test` call: the evaluations done before it, and the model tested.
    tested: Vec<(usize, Model)>,
    /// For each `train` call: the exact zeros among the coefficients of the model it got.
    zeros_in: Vec<usize>,
}

fn coefficient_zeros(m: &Model) -> usize {
    m.nodes
        .iter()
        .filter_map(|n| n.params.get("coefficients"))
        .map(|t| t.data.iter().filter(|v| **v == 0.0).count())
        .sum()
}

impl FakeTrainer {
    fn new() -> Self {
        Self {
            accuracy: 0.9,
            ..Default::default()
        }
    }
}

impl Trainer for FakeTrainer {
    fn train(&mut self, model: &Model, phase: &PhaseTraining, checkpoint_dir: &Path) -> penni_compress::Result<Model> {
        assert!(checkpoint_dir.is_dir(), "the pipeline creates the checkpoint directory");
        assert!(checkpoint_dir.ends_with(&phase.name));
        if self.fail_in == Some(phase.name.as_str()) {
            return Err(CompressError::Trainer(format!("interrupted in {}", phase.name)));
        }
        self.trained.push(phase.clone());
        self.zeros_in.push(coefficient_zeros(model));
        let mut m = model.clone();
        for node in &mut m.nodes {
            if matches!(node.op, Op::BatchNorm2d { .. }) {
                continue;
            }
            for t in node.params.values_mut() {
                t.data.iter_mut().for_each(|v| *v *= 1.01);
            }
        }
        if self.change_graph {
            m.nodes.pop();
        }
        Ok(m)
    }

    fn evaluate(&mut self, _model: &Model) -> penni_compress::Result<f32> {
        self.evaluations += 1;
        Ok(self.accuracy)
    }

    fn test(&mut self, model: &Model) -> penni_compress::Result<Option<f32>> {
        if self.test_accuracy.is_some() {
            self.tested.push((self.evaluations, model.clone()));
        }
        Ok(self.test_accuracy)
    }
}

/// Validation decides, the test set is looked at once: `test` runs only after the last phase
/// (every validation evaluation is done), on the baseline and the final model, its result is in
/// the report beside the validation figures, and a finished run does not test again.
#[test]
fn the_test_set_is_measured_once_after_the_last_phase() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let m = model();
    let mut t = FakeTrainer {
        test_accuracy: Some(0.75),
        ..FakeTrainer::new()
    };
    let out = compress(&m, &small_config(), &mut t, &run).unwrap();
    assert_eq!(t.tested.len(), 2);
    assert!(
        t.tested.iter().all(|(evals, _)| *evals == 6),
        "tested before the validation evaluations were done"
    );
    assert_eq!(t.tested[0].1, m, "first the baseline");
    assert_eq!(t.tested[1].1, out.model, "then the final model");
    let test = out.report.test.clone().expect("a test result in the report");
    assert_eq!((test.baseline_top1, test.final_top1), (0.75, 0.75));
    assert!(
        out.report.phases.iter().all(|p| p.top1 == Some(0.9)),
        "phase figures are validation figures"
    );
    assert!(
        out.report.to_table().contains("test top-1 (measured once"),
        "{}",
        out.report.to_table()
    );
    let mut t2 = FakeTrainer {
        test_accuracy: Some(0.5),
        ..FakeTrainer::new()
    };
    let again = compress(&m, &small_config(), &mut t2, &run).unwrap();
    assert!(t2.tested.is_empty(), "a finished run does not look at the test set again");
    assert_eq!(again.report.test, Some(test));
    // a trainer without a test set leaves it out
    let mut plain = FakeTrainer::new();
    let other = compress(&m, &small_config(), &mut plain, &dir.path().join("run2")).unwrap();
    assert_eq!(other.report.test, None);
}

fn small_config() -> Config {
    let mut c = Config::default();
    c.retrain.epochs = 4;
    c.finetune.epochs = 2;
    c
}

fn model() -> Model {
    let mut m = zoo("resnet20", 8, 31);
    randomize_batchnorm(&mut m, 32);
    m
}

fn started_phases(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("progress.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "phase_start")
        .map(|v| v["phase"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn full_run_checkpoints_every_phase_and_hands_the_trainer_the_right_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let m = model();
    let mut t = FakeTrainer::new();
    let out = compress(&m, &small_config(), &mut t, &run).unwrap();
    assert_eq!(out.phases_run, Phase::ALL);
    assert_eq!(out.resumed_after, None);
    for p in Phase::ALL {
        assert!(run.join(p.checkpoint_file()).is_file(), "{p}");
    }
    assert_eq!(penni_model::load(&out.final_checkpoint).unwrap(), out.model);
    // retrain: L1 + alternation; fine-tune: frozen zeros, no L1
    assert_eq!(t.trained.len(), 2);
    let (r, f) = (&t.trained[0], &t.trained[1]);
    assert_eq!(
        (r.name.as_str(), r.epochs, r.l1_coefficients, r.alternate_interval, r.freeze_zeros),
        ("retrain", 4, 1e-4, Some(2), false)
    );
    assert_eq!(r.milestones, vec![2, 3]);
    assert_eq!(
        (f.name.as_str(), f.epochs, f.l1_coefficients, f.alternate_interval, f.freeze_zeros),
        ("finetune", 2, 0.0, None, true)
    );
    assert_eq!(t.evaluations, 6, "baseline + one per phase");
    // the report: six records with accuracy, shrinking made it smaller than the decomposition
    let names: Vec<&str> = out.report.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(names, ["baseline", "decompose", "retrain", "prune", "finetune", "shrink"]);
    assert!(out.report.phases.iter().all(|p| p.top1 == Some(0.9)));
    let cost = |n: &str| out.report.phase(n).unwrap().cost.clone();
    assert!(cost("prune").params_paper < cost("decompose").params_paper);
    assert!(cost("shrink").params_all <= cost("finetune").params_all);
    assert!(out.report.decompose.is_some() && out.report.prune.is_some() && out.report.shrink.is_some());
    assert!(out.report.notes.is_empty(), "{:?}", out.report.notes);
    for f in [&out.report_files.table, &out.report_files.json, &out.report_files.svg] {
        assert!(f.is_file());
    }
    let state: RunState = serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state.completed, Phase::ALL);
    assert_eq!(Config::load(&run.join("config.toml")).unwrap(), small_config());
    // shrinking kept the fine-tuned function
    let finetuned = penni_model::load(&run.join(Phase::Finetune.checkpoint_file())).unwrap();
    assert_same_outputs(&finetuned, &out.model, 1e-5, "pipeline shrink");
    // running again finds everything done
    let mut t2 = FakeTrainer::new();
    let again = compress(&m, &small_config(), &mut t2, &run).unwrap();
    assert!(again.phases_run.is_empty());
    assert_eq!(again.model, out.model);
    assert!(t2.trained.is_empty());
}

#[test]
fn distillation_hands_every_training_phase_the_input_model_as_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    let mut t = FakeTrainer::new();
    compress(&m, &small_config(), &mut t, &dir.path().join("off")).unwrap();
    assert!(t.trained.iter().all(|p| p.distill.is_none()));
    let mut c = small_config();
    c.distill.weight = 0.7;
    c.distill.temperature = 3.0;
    let mut t = FakeTrainer::new();
    compress(&m, &c, &mut t, &dir.path().join("on")).unwrap();
    assert_eq!(t.trained.len(), 2);
    for p in &t.trained {
        let d = p.distill.as_ref().expect("both phases distil");
        assert_eq!((d.weight, d.temperature), (0.7, 3.0));
        assert_eq!(*d.teacher, m, "the teacher is the uncompressed input model");
    }
    assert!(Config::load(&dir.path().join("on/config.toml")).unwrap().distill.weight == 0.7);
}

/// `[mlcnn] reorder_avg_pools`: the pools of VGG-16 with average pools move before their
/// ReLUs and then before their convs, before the first phase; every phase trains the reordered
/// model, the report says what moved and what it cost, and the MACs drop. Off, nothing moves.
#[test]
fn mlcnn_reordering_moves_average_pools_before_the_convs_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let m = zoo("vgg16avg", 32, 7);
    let mut c = small_config();
    c.mlcnn.reorder_avg_pools = true;
    let mut t = FakeTrainer::new();
    let out = compress(&m, &c, &mut t, &dir.path().join("on")).unwrap();
    let pooled_convs = |m: &Model| {
        m.nodes
            .iter()
            .filter(|n| {
                matches!(&n.op, Op::AvgPool2d(p) if p.stride == [1, 1] && p.count_include_pad)
                    && m.consumers(&n.output)
                        .iter()
                        .all(|&r| matches!(m.nodes[r].op, Op::DecomposedConv2d(_) | Op::Conv2d(_)))
            })
            .count()
    };
    assert_eq!(pooled_convs(&out.model), 5, "every pool of VGG-16 before its conv");
    let note = out
        .report
        .notes
        .iter()
        .find(|n| n.starts_with("mlcnn"))
        .expect("a note on the reordering");
    assert!(
        note.contains("5 activation(s) moved") && note.contains("5 average pool(s) moved"),
        "{note}"
    );
    assert!(out.report.to_table().contains("mlcnn (approximate"), "{}", out.report.to_table());
    let macs = |m: &Model| penni_model::model_cost(m).unwrap().totals.macs_paper;
    let plain = compress(&m, &small_config(), &mut FakeTrainer::new(), &dir.path().join("off")).unwrap();
    assert_eq!(pooled_convs(&plain.model), 0);
    assert!(
        macs(&out.model) < macs(&plain.model),
        "{} vs {}",
        macs(&out.model),
        macs(&plain.model)
    );
    assert!(plain.report.notes.iter().all(|n| !n.starts_with("mlcnn")));
    // a resumed run keeps the reordered model and its note
    let again = compress(&m, &c, &mut FakeTrainer::new(), &dir.path().join("on")).unwrap();
    assert_eq!(again.model, out.model);
    assert!(again.report.notes.iter().any(|n| n.starts_with("mlcnn")));
}

#[test]
fn gradual_pruning_adds_the_zeros_in_equal_steps_between_fine_tuning_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    let mut c = small_config();
    c.prune.steps = 3;
    c.finetune.epochs = 4;
    let mut t = FakeTrainer::new();
    let out = compress(&m, &c, &mut t, &dir.path().join("run")).unwrap();
    let names: Vec<&str> = t.trained.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["retrain", "finetune-1", "finetune-2", "finetune-3"]);
    let epochs: Vec<usize> = t.trained.iter().map(|p| p.epochs).collect();
    assert_eq!(epochs, [4, 1, 1, 2], "the last round takes the remainder");
    // the fine-tuning schedule (milestones at epochs 2 and 3 of 4) runs on across the rounds
    let f = c.finetune_phase();
    assert_eq!(f.milestones, vec![2, 3]);
    let lrs: Vec<f64> = t.trained[1..].iter().map(|p| p.lr).collect();
    assert_eq!(lrs, [0.01, 0.01, 0.01 * 0.1]);
    assert_eq!(t.trained[3].milestones, vec![1], "round 3 starts at epoch 2, drops again at 3");
    assert!(t.trained[1..].iter().all(|p| p.freeze_zeros && p.l1_coefficients == 0.0));
    // zeros: a third, two thirds, all of the final pruning's
    let r = out.report.prune.as_ref().unwrap();
    let before: usize = r.layers.iter().filter(|l| l.param == "coefficients").map(|l| l.zeros_before).sum();
    let after: usize = r.layers.iter().filter(|l| l.param == "coefficients").map(|l| l.zeros).sum();
    assert!(after > before + 30, "{before} -> {after}");
    let z = &t.zeros_in[1..];
    assert!(z[0] < z[1] && z[1] < z[2] && z[2] == after, "{z:?}, final {after}");
    let third = (after - before) as f64 / 3.0;
    assert!((z[0] as f64 - before as f64 - third).abs() <= r.layers.len() as f64, "{z:?}");
    assert_eq!(
        coefficient_zeros(&penni_model::load(&dir.path().join("run").join(Phase::Finetune.checkpoint_file())).unwrap()),
        after
    );
    assert!(
        out.report.notes.iter().any(|n| n.contains("gradual pruning in 3 steps")),
        "{:?}",
        out.report.notes
    );
    // an interrupted round resumes: rerunning finds the phase done
    let mut t2 = FakeTrainer::new();
    assert!(compress(&m, &c, &mut t2, &dir.path().join("run")).unwrap().phases_run.is_empty());
    // a stop in round 2 resumes there: round 1 is asked again (and returns at once in a real
    // trainer), the pruning steps recomputed give the same zeros
    let mut t3 = FakeTrainer {
        fail_in: Some("finetune-2"),
        ..FakeTrainer::new()
    };
    assert!(compress(&m, &c, &mut t3, &dir.path().join("again")).is_err());
    let mut t4 = FakeTrainer::new();
    let again = compress(&m, &c, &mut t4, &dir.path().join("again")).unwrap();
    assert_eq!(t4.zeros_in, z.to_vec());
    assert_eq!(coefficient_zeros(&again.model), coefficient_zeros(&out.model));
}

#[test]
fn a_run_stopped_in_phase_2_resumes_there_without_redoing_phase_1() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let m = model();
    let mut t = FakeTrainer {
        fail_in: Some("retrain"),
        ..FakeTrainer::new()
    };
    let err = compress(&m, &small_config(), &mut t, &run).unwrap_err();
    assert!(matches!(err, CompressError::Trainer(_)), "{err}");
    let state: RunState = serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state.completed, [Phase::Decompose]);
    let decomposed = std::fs::read(run.join(Phase::Decompose.checkpoint_file())).unwrap();

    let mut t2 = FakeTrainer::new();
    let out = compress(&m, &small_config(), &mut t2, &run).unwrap();
    assert_eq!(out.resumed_after, Some(Phase::Decompose));
    assert_eq!(out.phases_run, [Phase::Retrain, Phase::Prune, Phase::Finetune, Phase::Shrink]);
    assert_eq!(
        started_phases(&run),
        ["decompose", "retrain", "retrain", "prune", "finetune", "shrink"],
        "decompose ran once"
    );
    assert_eq!(
        std::fs::read(run.join(Phase::Decompose.checkpoint_file())).unwrap(),
        decomposed,
        "phase 1 checkpoint untouched"
    );
    assert_eq!(t2.evaluations, 4, "no new baseline evaluation");
    let names: Vec<&str> = out.report.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(names, ["baseline", "decompose", "retrain", "prune", "finetune", "shrink"]);

    // the same result as a run that was never interrupted
    let run2 = dir.path().join("run2");
    let straight = compress(&m, &small_config(), &mut FakeTrainer::new(), &run2).unwrap();
    assert_eq!(straight.model, out.model);
}

#[test]
fn a_run_stopped_in_finetune_resumes_with_the_pruned_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let m = model();
    let mut t = FakeTrainer {
        fail_in: Some("finetune"),
        ..FakeTrainer::new()
    };
    assert!(compress(&m, &small_config(), &mut t, &run).is_err());
    let mut t2 = FakeTrainer::new();
    let out = compress(&m, &small_config(), &mut t2, &run).unwrap();
    assert_eq!(out.resumed_after, Some(Phase::Prune));
    assert_eq!(t2.trained.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["finetune"]);
}

#[test]
fn resuming_with_another_config_or_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let m = model();
    let mut t = FakeTrainer {
        fail_in: Some("retrain"),
        ..FakeTrainer::new()
    };
    let _ = compress(&m, &small_config(), &mut t, &run);
    let mut other = small_config();
    other.prune.s = 0.5;
    let err = compress(&m, &other, &mut FakeTrainer::new(), &run).unwrap_err();
    assert!(
        matches!(err, CompressError::State { .. }) && err.to_string().contains("different config"),
        "{err}"
    );
    let err = compress(&zoo("resnet20", 8, 99), &small_config(), &mut FakeTrainer::new(), &run).unwrap_err();
    assert!(err.to_string().contains("different model"), "{err}");
    std::fs::write(run.join("state.json"), "{ not json").unwrap();
    let err = compress(&m, &small_config(), &mut FakeTrainer::new(), &run).unwrap_err();
    assert!(matches!(err, CompressError::State { .. }), "{err}");
}

#[test]
fn trainer_results_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    let err = compress(
        &m,
        &small_config(),
        &mut FakeTrainer {
            change_graph: true,
            ..FakeTrainer::new()
        },
        &dir.path().join("a"),
    )
    .unwrap_err();
    assert!(matches!(err, CompressError::Trainer(_)), "{err}");
    let err = compress(
        &m,
        &small_config(),
        &mut FakeTrainer {
            accuracy: 93.4,
            ..FakeTrainer::new()
        },
        &dir.path().join("b"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("fraction"), "{err}");
    let mut bad = small_config();
    bad.retrain.lr = 0.0;
    assert!(matches!(
        compress(&m, &bad, &mut FakeTrainer::new(), &dir.path().join("c")),
        Err(CompressError::ConfigInvalid { .. })
    ));
}

#[test]
fn zero_epoch_phases_skip_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = small_config();
    c.retrain.epochs = 0;
    c.finetune.epochs = 0;
    let mut t = FakeTrainer::new();
    let out = compress(&model(), &c, &mut t, &dir.path().join("run")).unwrap();
    assert!(t.trained.is_empty());
    assert_eq!(out.phases_run.len(), 5);
}

#[test]
fn report_renders_as_table_json_and_svg() {
    let m = model();
    // width 0.25: the 4-channel first stage stays dense by default (5 bases would cost more)
    let (_, kept) = penni_compress::decompose(&m, &Default::default()).unwrap();
    assert!(kept.kept_dense.contains(&"stem.conv".to_string()), "{:?}", kept.kept_dense);
    let all = penni_compress::DecomposeOptions {
        only_if_cheaper: false,
        ..Default::default()
    };
    let (d, dr) = penni_compress::decompose(&m, &all).unwrap();
    let (p, pr) = penni_compress::prune(&d, &Default::default()).unwrap();
    let (s, sr) = penni_compress::shrink(&p).unwrap();
    let mut r = CompressionReport::new("resnet20 <test>");
    r.phases.push(PhaseRecord::measure("baseline", &m, Some(0.9125)).unwrap());
    r.phases.push(PhaseRecord::measure("decompose", &d, None).unwrap());
    r.phases.push(PhaseRecord::measure("prune", &p, Some(0.5)).unwrap());
    r.phases.push(PhaseRecord::measure("shrink", &s, Some(0.5)).unwrap());
    r.decompose = Some(dr);
    r.prune = Some(pr.clone());
    r.shrink = Some(sr);
    let pr_rec = r.phase("prune").unwrap();
    assert!((pr_rec.coefficient_sparsity.unwrap() - pr.coefficient_sparsity).abs() < 1e-12);
    assert_eq!(r.phase("baseline").unwrap().coefficient_sparsity, None);
    let stem = r.phase("decompose").unwrap().layers.iter().find(|l| l.node == "stem.conv").unwrap();
    assert_eq!((stem.in_channels, stem.out_channels, stem.bases), (3, 4, Some(5)));

    let mut with_kept = r.clone();
    with_kept.decompose = Some(kept);
    assert!(
        with_kept
            .to_table()
            .contains("kept dense (the basis stage alone would cost as much as the conv")
    );
    let table = r.to_table();
    assert!(!table.contains("kept dense"));
    for needle in [
        "params (paper)",
        "params (all)",
        "MACs (paper)",
        "MACs (all)",
        "91.25%",
        "stem.conv",
        "paper: non-zero",
        "all: paper +",
        "channel group",
    ] {
        assert!(table.contains(needle), "table lacks '{needle}':\n{table}");
    }
    let json = r.to_json().unwrap();
    let back: CompressionReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let svg = r.to_svg();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("resnet20 &lt;test&gt;"), "labels are escaped");
    assert!(svg.matches("<rect").count() > 4 * 2 + 20);
    let dir = tempfile::tempdir().unwrap();
    let files = r.write(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&files.table).unwrap(), table);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "no temporary files left");
}
