use std::collections::BTreeMap;

use penni_model::reference::{self, Activation};
use penni_model::zoo::{self, GraphBuilder, InitRng, ZooOptions};
use penni_model::{Input, Model, Op, Shape};
use penni_train::{Distill, LrSchedule, Proximal, RunOptions, TrainData, TrainError, TrainOptions, train};

mod common;
use common::{data, decompose_node, small_model, synthetic};

fn randomise_bn(m: &mut Model, seed: u64) {
    let mut rng = InitRng::new(seed);
    for node in &mut m.nodes {
        if let Op::BatchNorm2d { .. } = node.op {
            for (name, t) in node.params.iter_mut() {
                for v in t.data.iter_mut() {
                    *v = match name.as_str() {
                        "running_var" => 0.5 + rng.uniform(),
                        "weight" => 0.5 + rng.uniform(),
                        _ => rng.normal() * 0.3,
                    };
                }
            }
        }
    }
}

fn random_input(m: &Model, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = InitRng::new(seed);
    (0..n * m.input_shape().numel()).map(|_| rng.normal()).collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn burn_forward_matches_the_reference_forward() {
    let mut models = vec![small_model(1)];
    let mut r20 = zoo::build(
        "resnet20",
        &ZooOptions {
            width_multiplier: 0.5,
            height: 16,
            width: 16,
            ..Default::default()
        },
    )
    .unwrap();
    decompose_node(&mut r20, "layer2.0.1.conv", 5, 3);
    models.push(r20);
    for mut m in models {
        randomise_bn(&mut m, 5);
        let x = random_input(&m, 2, 9);
        let burn_out = penni_train::forward(&m, &x, 2).unwrap();
        let reference = reference::forward(
            &m,
            &Activation {
                n: 2,
                shape: m.input_shape(),
                data: x,
            },
        )
        .unwrap();
        let d = max_rel_diff(&burn_out, &reference.data);
        assert!(d < 1e-4, "{}: burn and reference differ by {d}", m.name);
    }
}

/// A PENNI layer with quantized basis maps computes its two stages with the quantizer between
/// them in the trainer as in the reference (up to a rounding edge of the coarse grid).
#[test]
fn burn_forward_quantizes_basis_maps_as_the_reference() {
    let mut m = small_model(4);
    randomise_bn(&mut m, 2);
    let x = random_input(&m, 2, 9);
    let batch = Activation {
        n: 2,
        shape: m.input_shape(),
        data: x.clone(),
    };
    let before = reference::forward(&m, &batch).unwrap();
    let all = reference::forward_all(&m, &batch).unwrap();
    let node = m.node("body.conv").unwrap().clone();
    let maps = reference::basis_maps(&node, &all[node.inputs[0].as_str()]).unwrap();
    let amax = maps.data.iter().fold(0f32, |a, v| a.max(v.abs()));
    // a coarse grid (15 levels a side, clipping the largest maps): its effect is visible
    let grid = penni_model::Activation::QuantizeDequantize {
        scale: amax / 30.0,
        zero_point: 0,
        qmin: -15,
        qmax: 15,
    };
    let Op::DecomposedConv2d(dc) = &mut m.node_mut("body.conv").unwrap().op else {
        panic!()
    };
    dc.basis_quant = Some(grid);
    let want = reference::forward(&m, &batch).unwrap();
    assert!(max_rel_diff(&want.data, &before.data) > 1e-3, "the quantizer changes nothing");
    let got = penni_train::forward(&m, &x, 2).unwrap();
    let d = max_rel_diff(&got, &want.data);
    assert!(d < 0.02, "burn and reference differ by {d}");
}

/// Cross-entropy of the reference forward pass, in f64, for finite differences.
fn reference_loss(m: &Model, x: &[f32], labels: &[i64]) -> f64 {
    let out = reference::forward(
        m,
        &Activation {
            n: labels.len(),
            shape: m.input_shape(),
            data: x.to_vec(),
        },
    )
    .unwrap();
    let k = out.shape.numel();
    let mut loss = 0.0;
    for (i, l) in labels.iter().enumerate() {
        let row: Vec<f64> = out.data[i * k..(i + 1) * k].iter().map(|v| *v as f64).collect();
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        loss += lse - row[*l as usize];
    }
    loss / labels.len() as f64
}

#[test]
fn gradients_of_a_decomposed_conv_reach_bases_and_coefficients_and_match_finite_differences() {
    let mut m = small_model(2);
    randomise_bn(&mut m, 3);
    // max-pool switches are kinks that finite differences cannot step over: average instead
    let pool = m.node_mut("pool").unwrap();
    let Op::MaxPool2d(p) = pool.op.clone() else { panic!() };
    pool.op = Op::AvgPool2d(p);
    let x = random_input(&m, 3, 4);
    let labels = vec![0i64, 2, 3];
    let grads = penni_train::gradients(&m, &x, &labels).unwrap();
    for param in ["bases", "coefficients"] {
        let key = format!("body.conv.{param}");
        let g = &grads[&key];
        assert!(g.iter().map(|v| v.abs()).sum::<f32>() > 1e-4, "{key} gets no gradient");
        // central differences on a few entries
        for idx in [0usize, 5, g.len() - 1] {
            let h = 2e-3f32;
            let mut plus = m.clone();
            plus.node_mut("body.conv").unwrap().params.get_mut(param).unwrap().data[idx] += h;
            let mut minus = m.clone();
            minus.node_mut("body.conv").unwrap().params.get_mut(param).unwrap().data[idx] -= h;
            let numeric = (reference_loss(&plus, &x, &labels) - reference_loss(&minus, &x, &labels)) / (2.0 * h as f64);
            let analytic = g[idx] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 0.05 * numeric.abs(),
                "{key}[{idx}]: analytic {analytic} vs numeric {numeric}"
            );
        }
    }
}

fn quick_opts(epochs: usize) -> TrainOptions {
    TrainOptions {
        phase: "test".into(),
        epochs,
        batch_size: 32,
        lr: 0.05,
        schedule: LrSchedule::Cosine,
        weight_decay: 1e-4,
        ..Default::default()
    }
}

/// Equal records, numbers to a relative 1e-12.
fn same_record(a: &penni_train::EpochRecord, b: &penni_train::EpochRecord) -> bool {
    fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        match (a, b) {
            (serde_json::Value::Number(x), serde_json::Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
            }
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
            }
            _ => a == b,
        }
    }
    close(&serde_json::to_value(a).unwrap(), &serde_json::to_value(b).unwrap())
}

#[test]
fn resume_after_a_stop_ends_with_the_same_weights_as_an_uninterrupted_run() {
    let ds = synthetic(256, 1);
    let m = small_model(3);
    let opts = quick_opts(3);
    let dir = tempfile::tempdir().unwrap();
    let whole = train(
        &m,
        &data(&ds),
        &opts,
        &RunOptions {
            checkpoint_dir: Some(dir.path().join("a")),
            ..Default::default()
        },
    )
    .unwrap();

    let run = RunOptions {
        checkpoint_dir: Some(dir.path().join("b")),
        stop_after_epochs: Some(1),
        ..Default::default()
    };
    assert!(matches!(train(&m, &data(&ds), &opts, &run), Err(TrainError::Stopped(1))));
    let run = RunOptions {
        checkpoint_dir: Some(dir.path().join("b")),
        resume: true,
        ..Default::default()
    };
    let resumed = train(&m, &data(&ds), &opts, &run).unwrap();
    assert_eq!(resumed.history.len(), 3);
    assert_eq!(resumed.model, whole.model, "resumed run differs from the uninterrupted one");

    // a checkpoint from other options is refused, not silently mixed
    let other = TrainOptions { lr: 0.01, ..opts.clone() };
    let err = train(&m, &data(&ds), &other, &run).err().unwrap().to_string();
    assert!(err.contains("different training options"), "{err}");

    // a corrupt latest checkpoint falls back to the previous one
    let ck = dir.path().join("b").join("checkpoint.penni");
    let mut bytes = std::fs::read(&ck).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&ck, bytes).unwrap();
    let log = dir.path().join("again.jsonl");
    let again = train(
        &m,
        &data(&ds),
        &opts,
        &RunOptions {
            metrics_log: Some(log.clone()),
            ..run
        },
    )
    .unwrap();
    // it resumed after epoch 2 (the previous checkpoint): one epoch trained, not three
    let trained: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(String::from).collect();
    assert_eq!(trained.len(), 1, "epochs trained after the fallback: {trained:?}");
    assert!(trained[0].contains("\"epoch\":2,"), "{}", trained[0]);
    // the first two records come from the previous checkpoint (a retrained epoch would have
    // other timings); JSON may round an f64's last bit on the way, so numbers match to 1e-12
    for (a, b) in again.history[..2].iter().zip(&resumed.history[..2]) {
        assert!(
            same_record(a, b),
            "the first two epochs come from the previous checkpoint:\n{a:?}\n{b:?}"
        );
    }
    assert_eq!(again.model, whole.model, "the fallback run differs from the uninterrupted one");
}

#[test]
fn alternation_freezes_one_factor_per_epoch_and_frozen_zeros_stay_zero() {
    let ds = synthetic(128, 2);
    let mut m = small_model(4);
    // prune: a third of the coefficients and some stem weights are exactly zero
    let coef = &mut m.node_mut("body.conv").unwrap().params.get_mut("coefficients").unwrap().data;
    for (i, v) in coef.iter_mut().enumerate() {
        if i % 3 == 0 {
            *v = 0.0;
        }
    }
    let zeros: Vec<bool> = coef.iter().map(|v| *v == 0.0).collect();
    let opts = TrainOptions {
        alternate_interval: Some(2),
        freeze_zeros: true,
        l1_coefficients: 1e-3,
        ..quick_opts(3)
    };
    let dir = tempfile::tempdir().unwrap();
    let param = |m: &Model, p: &str| m.node("body.conv").unwrap().params[p].data.clone();
    let mut prev = m.clone();
    for epoch in 1..=3 {
        let run = RunOptions {
            checkpoint_dir: Some(dir.path().to_path_buf()),
            resume: true,
            stop_after_epochs: Some(epoch),
            ..Default::default()
        };
        let _ = train(&m, &data(&ds), &opts, &run);
        let (now, _) = penni_model::io::load_with_extras(&dir.path().join("checkpoint.penni")).unwrap();
        let (bases_same, coef_same) = (
            param(&now, "bases") == param(&prev, "bases"),
            param(&now, "coefficients") == param(&prev, "coefficients"),
        );
        // epoch index 0 trains coefficients, 1 and 2 train bases
        if epoch == 1 {
            assert!(bases_same && !coef_same, "epoch 0 must train only the coefficients");
        } else {
            assert!(!bases_same && coef_same, "epoch {} must train only the bases", epoch - 1);
        }
        // batchnorm and linear always train
        assert_ne!(now.node("fc").unwrap().params["weight"], prev.node("fc").unwrap().params["weight"]);
        for (v, z) in param(&now, "coefficients").iter().zip(&zeros) {
            assert!(!z || *v == 0.0, "a frozen zero changed");
        }
        prev = now;
    }
}

#[test]
fn a_short_run_lowers_the_loss_and_beats_chance() {
    let ds = synthetic(512, 3);
    let test = synthetic(256, 4);
    let m = small_model(5);
    let d = TrainData {
        test: Some(&test),
        ..data(&ds)
    };
    let before = penni_train::evaluate(&m, &test, &d.test_transform, 64).unwrap();
    let out = train(&m, &d, &quick_opts(3), &RunOptions::default()).unwrap();
    let after = penni_train::evaluate(&out.model, &test, &d.test_transform, 64).unwrap();
    assert!(out.history[2].train_loss < out.history[0].train_loss, "{:?}", out.history);
    assert!(after.loss < before.loss);
    assert!(after.top1 > 0.5, "top-1 {} is not above chance (0.25)", after.top1);
}

#[test]
fn divergence_stops_with_a_message_naming_phase_and_epoch() {
    let ds = synthetic(128, 5);
    let m = small_model(6);
    let opts = TrainOptions {
        lr: 1e12,
        momentum: 0.0,
        ..quick_opts(2)
    };
    let err = train(&m, &data(&ds), &opts, &RunOptions::default()).err().expect("must diverge");
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Diverged { .. }), "{msg}");
    assert!(msg.contains("phase 'test'") && msg.contains("epoch"), "{msg}");
}

#[test]
fn bad_options_and_mismatched_data_are_clear_errors() {
    let ds = synthetic(64, 6);
    let m = small_model(7);
    let e = train(&m, &data(&ds), &TrainOptions { lr: -1.0, ..quick_opts(1) }, &RunOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("learning rate"), "{e}");
    let wrong = zoo::build(
        "resnet20",
        &ZooOptions {
            in_channels: 3,
            height: 8,
            width: 8,
            num_classes: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let e = train(&wrong, &data(&ds), &quick_opts(1), &RunOptions::default()).err().unwrap();
    assert!(e.to_string().contains("takes 3x8x8"), "{e}");
    assert_eq!(m.output_shape().unwrap(), Shape::Vector(4));
}

/// Appends a softmax (or log-softmax) node that becomes the model output.
fn with_softmax(mut m: Model, log: bool) -> Model {
    let input = m.output.clone();
    m.nodes.push(penni_model::Node {
        name: "prob".into(),
        op: Op::Softmax { log },
        inputs: vec![input],
        output: "prob".into(),
        params: BTreeMap::new(),
    });
    m.output = "prob".into();
    m.validate().unwrap();
    m
}

/// A classifier exported with its softmax (or log-softmax) trains like the same network
/// without it: the cross-entropy takes the scores before a final softmax, and burn's forward
/// pass computes the softmax like the reference.
#[test]
fn a_final_softmax_is_part_of_the_model_but_not_of_the_loss() {
    let mut m = small_model(3);
    randomise_bn(&mut m, 4);
    let x = random_input(&m, 3, 5);
    let labels = [0i64, 3, 1];
    let plain = penni_train::gradients(&m, &x, &labels).unwrap();
    for log in [false, true] {
        let s = with_softmax(m.clone(), log);
        let burn_out = penni_train::forward(&s, &x, 3).unwrap();
        let reference = reference::forward(
            &s,
            &Activation {
                n: 3,
                shape: s.input_shape(),
                data: x.clone(),
            },
        )
        .unwrap();
        assert!(max_rel_diff(&burn_out, &reference.data) < 1e-5, "log {log}");
        let grads = penni_train::gradients(&s, &x, &labels).unwrap();
        assert_eq!(grads.len(), plain.len());
        for (k, g) in &plain {
            assert!(max_rel_diff(&grads[k], g) < 1e-4, "log {log}: gradient of {k} differs");
        }
    }
}

/// Concat (SqueezeNet/Inception-style branches, and vectors) runs through burn like the
/// reference, and gradients reach both branches.
#[test]
fn concat_branches_train_like_the_reference() {
    let mut b = GraphBuilder::new(
        "fire",
        Input {
            name: "input".into(),
            channels: 1,
            height: 8,
            width: 8,
        },
        6,
    );
    let x = b.input();
    let s = b.conv_bn("stem.", &x, 4, 3, 1, true);
    let e1 = b.conv_bn("e1.", &s, 3, 1, 1, true);
    let e3 = b.conv_bn("e3.", &s, 5, 3, 1, true);
    let c = b.concat("concat", &[&e1, &e3]);
    let p = b.global_avg_pool("pool", &c);
    let f = b.flatten("flat", &p);
    let a = b.linear("fc.a", &f, 3);
    let v = b.concat("fc.concat", &[&a, &f]);
    let o = b.linear("fc", &v, 4);
    let mut m = b.finish(&o).unwrap();
    randomise_bn(&mut m, 7);
    let x = random_input(&m, 2, 8);
    let burn_out = penni_train::forward(&m, &x, 2).unwrap();
    let reference = reference::forward(
        &m,
        &Activation {
            n: 2,
            shape: m.input_shape(),
            data: x.clone(),
        },
    )
    .unwrap();
    assert!(max_rel_diff(&burn_out, &reference.data) < 1e-5);
    let grads = penni_train::gradients(&m, &x, &[1, 2]).unwrap();
    for k in ["e1.conv.weight", "e3.conv.weight", "fc.a.weight"] {
        let g = grads
            .iter()
            .find(|(name, _)| name.contains(k))
            .unwrap_or_else(|| panic!("no gradient for {k}: {:?}", grads.keys()));
        assert!(g.1.iter().any(|v| *v != 0.0), "{k}");
    }
}

/// HardSwish, SiLU (x * sigmoid(x)), leaky ReLU and a squeeze-and-excitation scale (a C x 1 x 1
/// factor broadcast over the pixels) run through burn like the reference, and train.
#[test]
fn activations_and_squeeze_excitation_train_like_the_reference() {
    use penni_model::Activation;
    let mut b = GraphBuilder::new(
        "se",
        Input {
            name: "input".into(),
            channels: 1,
            height: 8,
            width: 8,
        },
        9,
    );
    let x = b.input();
    let s = b.conv_bn("stem.", &x, 6, 3, 1, false);
    let s = b.activation("hswish", &s, Activation::HardSwish);
    let g = b.activation("sigmoid", &s, Activation::Sigmoid);
    let s = b.mul("silu", &s, &g);
    let p = b.global_avg_pool("se.pool", &s);
    let e = b.conv("se.conv", &p, 6, 1, 1, 0, true);
    let e = b.activation("se.gate", &e, Activation::HardSigmoid { alpha: 0.2, beta: 0.5 });
    let s = b.mul("se.scale", &s, &e);
    let s = b.activation("leaky", &s, Activation::LeakyRelu { alpha: 0.1 });
    let p = b.global_avg_pool("pool", &s);
    let f = b.flatten("flat", &p);
    let o = b.linear("fc", &f, 4);
    let mut m = b.finish(&o).unwrap();
    randomise_bn(&mut m, 10);
    let x = random_input(&m, 2, 11);
    let burn_out = penni_train::forward(&m, &x, 2).unwrap();
    let reference = reference::forward(
        &m,
        &reference::Activation {
            n: 2,
            shape: m.input_shape(),
            data: x.clone(),
        },
    )
    .unwrap();
    assert!(max_rel_diff(&burn_out, &reference.data) < 1e-5);
    let grads = penni_train::gradients(&m, &x, &[0, 3]).unwrap();
    for k in ["stem.conv.weight", "se.conv.weight"] {
        assert!(grads[k].iter().any(|v| *v != 0.0), "no gradient reaches {k}");
    }
}

/// The L1 term of sparse retraining pulls the coefficients toward zero: the same run with and
/// without it, from the same start, ends with a much smaller sum of |coefficients| and more
/// near-zero entries with it.
#[test]
fn the_l1_term_drives_coefficients_toward_zero() {
    let ds = synthetic(256, 7);
    let m = small_model(8);
    let coef = |m: &Model| m.node("body.conv").unwrap().params["coefficients"].data.clone();
    let run = |l1: f64| {
        let opts = TrainOptions {
            l1_coefficients: l1,
            weight_decay: 0.0,
            ..quick_opts(3)
        };
        coef(&train(&m, &data(&ds), &opts, &RunOptions::default()).unwrap().model)
    };
    let (plain, sparse) = (run(0.0), run(0.05));
    let l1 = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
    let small = |v: &[f32]| v.iter().filter(|x| x.abs() < 1e-2).count();
    let start = coef(&m);
    assert_eq!(plain.len(), start.len());
    assert_eq!(sparse.len(), start.len());
    assert!(
        l1(&sparse) < 0.5 * l1(&plain),
        "sum |a|: {} with L1, {} without (start {})",
        l1(&sparse),
        l1(&plain),
        l1(&start)
    );
    assert!(
        small(&sparse) > small(&plain),
        "near-zero coefficients: {} with L1, {} without",
        small(&sparse),
        small(&plain)
    );
}

/// The proximal term rho/2 ||W - T||^2 pulls a weight toward its target: with a strong rho the
/// stem conv ends near T, without it far from it; a resume with other targets is refused, and a
/// target that names no weight is an error.
#[test]
fn a_proximal_term_pulls_a_weight_to_its_target() {
    let ds = synthetic(256, 5);
    let m = small_model(6);
    let w = m.node("stem.conv").unwrap().params["weight"].data.clone();
    let target: Vec<f32> = w.iter().map(|v| 0.5 * v).collect();
    let dist = |model: &Model| -> f64 {
        let got = &model.node("stem.conv").unwrap().params["weight"].data;
        got.iter().zip(&target).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt()
    };
    let with = |rho: f64| TrainOptions {
        proximal: Some(Proximal::new(rho, [("stem.conv".to_string(), target.clone())].into())),
        ..quick_opts(2)
    };
    let free = train(&m, &data(&ds), &quick_opts(2), &RunOptions::default()).unwrap();
    let pulled = train(&m, &data(&ds), &with(20.0), &RunOptions::default()).unwrap();
    assert!(
        dist(&pulled.model) < 0.2 * dist(&free.model),
        "{} vs {}",
        dist(&pulled.model),
        dist(&free.model)
    );
    // only the named weight is pulled: the other conv trains as without the term
    assert_ne!(
        pulled.model.node("body.conv").unwrap().params["coefficients"],
        m.node("body.conv").unwrap().params["coefficients"]
    );

    let dir = tempfile::tempdir().unwrap();
    let run = RunOptions {
        checkpoint_dir: Some(dir.path().to_path_buf()),
        stop_after_epochs: Some(1),
        ..Default::default()
    };
    assert!(matches!(train(&m, &data(&ds), &with(20.0), &run), Err(TrainError::Stopped(1))));
    let resume = RunOptions {
        checkpoint_dir: Some(dir.path().to_path_buf()),
        resume: true,
        ..Default::default()
    };
    let other = TrainOptions {
        proximal: Some(Proximal::new(20.0, [("stem.conv".to_string(), w.clone())].into())),
        ..quick_opts(2)
    };
    let err = train(&m, &data(&ds), &other, &resume).err().unwrap().to_string();
    assert!(err.contains("different training options"), "{err}");
    assert_eq!(
        train(&m, &data(&ds), &with(20.0), &resume).unwrap().model,
        pulled.model,
        "resumed run differs"
    );

    let bad = TrainOptions {
        proximal: Some(Proximal::new(1.0, [("fc".to_string(), vec![0.0; 3])].into())),
        ..quick_opts(1)
    };
    let err = train(&m, &data(&ds), &bad, &RunOptions::default()).err().unwrap().to_string();
    assert!(err.contains("has 3 values"), "{err}");
    let bad = TrainOptions {
        proximal: Some(Proximal::new(1.0, [("nope".to_string(), vec![0.0; 3])].into())),
        ..quick_opts(1)
    };
    let err = train(&m, &data(&ds), &bad, &RunOptions::default()).err().unwrap().to_string();
    assert!(err.contains("'nope'"), "{err}");
}

/// The group penalty on each input channel's coefficients makes whole input channels fade: with
/// it the weakest channel's norm, relative to the mean, ends far below where plain training
/// leaves it.
#[test]
fn the_group_penalty_makes_whole_input_channels_fade() {
    let ds = synthetic(256, 7);
    let m = small_model(8);
    let weakest = |model: &Model| -> f64 {
        let node = model.node("body.conv").unwrap();
        let Op::DecomposedConv2d(c) = &node.op else { panic!() };
        let (n, cg, d) = (c.conv.out_channels, c.conv.channels_per_group(), c.num_bases);
        let a = &node.params["coefficients"].data;
        let norms: Vec<f64> = (0..cg)
            .map(|ch| {
                (0..n)
                    .flat_map(|o| (0..d).map(move |j| (o * cg + ch) * d + j))
                    .map(|i| (a[i] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        norms.iter().copied().fold(f64::INFINITY, f64::min) / (norms.iter().sum::<f64>() / cg as f64)
    };
    let opts = |g: f64| TrainOptions {
        group_l1_coefficients: g,
        ..quick_opts(3)
    };
    let plain = train(&m, &data(&ds), &opts(0.0), &RunOptions::default()).unwrap();
    let grouped = train(&m, &data(&ds), &opts(0.3), &RunOptions::default()).unwrap();
    assert!(
        weakest(&grouped.model) < 0.5 * weakest(&plain.model),
        "{} vs {}",
        weakest(&grouped.model),
        weakest(&plain.model)
    );
    let bad = TrainOptions {
        group_l1_coefficients: -1.0,
        ..quick_opts(1)
    };
    assert!(train(&m, &data(&ds), &bad, &RunOptions::default()).is_err());
}

#[test]
fn distillation_at_full_weight_learns_from_the_teacher_not_the_labels() {
    let ds = synthetic(512, 21);
    let test = synthetic(256, 22);
    let d = TrainData { test: None, ..data(&ds) };
    let teacher = train(&small_model(23), &d, &quick_opts(3), &RunOptions::default()).unwrap().model;
    let teacher_top1 = penni_train::evaluate(&teacher, &test, &d.test_transform, 64).unwrap().top1;
    assert!(teacher_top1 > 0.8, "the teacher must have learnt the task: {teacher_top1}");

    // the same images with labels that carry nothing: a shifted copy of the true ones
    let mut scrambled = ds.clone();
    for (i, l) in scrambled.labels.iter_mut().enumerate() {
        *l = ((*l as usize + 1 + i % 3) % 4) as u16;
    }
    let distilled = |train_set: &penni_data::Dataset, weight: f64| {
        let opts = TrainOptions {
            distill: Some(Distill::new(weight, 2.0, std::sync::Arc::new(teacher.clone()))),
            ..quick_opts(3)
        };
        let d = TrainData {
            test: None,
            ..data(train_set)
        };
        train(&small_model(24), &d, &opts, &RunOptions::default()).unwrap().model
    };
    let a = distilled(&ds, 1.0);
    let b = distilled(&scrambled, 1.0);
    assert_eq!(a, b, "at weight 1 the labels must not matter");
    let top1 = penni_train::evaluate(&b, &test, &d.test_transform, 64).unwrap().top1;
    assert!(
        top1 > 0.7,
        "trained on useless labels, the distilled student must still learn the task: {top1}"
    );
    // at weight 0 the scrambled labels are all it has
    let c = distilled(&scrambled, 0.0);
    let top1 = penni_train::evaluate(&c, &test, &d.test_transform, 64).unwrap().top1;
    assert!(top1 < 0.5, "without the teacher the scrambled labels cannot teach the task: {top1}");
}

#[test]
fn distillation_settings_are_checked_and_a_resume_with_another_teacher_is_refused() {
    let ds = synthetic(128, 25);
    let m = small_model(26);
    let teacher = std::sync::Arc::new(small_model(27));
    let bad = |distill: Distill| {
        let opts = TrainOptions {
            distill: Some(distill),
            ..quick_opts(1)
        };
        train(&m, &data(&ds), &opts, &RunOptions::default()).err().unwrap().to_string()
    };
    assert!(bad(Distill::new(1.5, 4.0, teacher.clone())).contains("distillation weight"));
    assert!(bad(Distill::new(0.5, 0.0, teacher.clone())).contains("temperature"));
    let mut five = (*teacher).clone();
    let fc = five.node_mut("fc").unwrap();
    let Op::Linear {
        in_features, out_features, ..
    } = &mut fc.op
    else {
        panic!("fc is linear")
    };
    *out_features = 5;
    let inf = *in_features;
    fc.params
        .insert("weight".into(), penni_model::Tensor::new(vec![5, inf], vec![0.1; 5 * inf]).unwrap());
    fc.params
        .insert("bias".into(), penni_model::Tensor::new(vec![5], vec![0.0; 5]).unwrap());
    let e = bad(Distill::new(0.5, 4.0, std::sync::Arc::new(five)));
    assert!(e.contains("teacher") && e.contains("5 classes"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let with = |t: &std::sync::Arc<Model>| TrainOptions {
        distill: Some(Distill::new(0.5, 4.0, t.clone())),
        ..quick_opts(2)
    };
    let run = RunOptions {
        checkpoint_dir: Some(dir.path().to_path_buf()),
        stop_after_epochs: Some(1),
        ..Default::default()
    };
    assert!(matches!(train(&m, &data(&ds), &with(&teacher), &run), Err(TrainError::Stopped(1))));
    let run = RunOptions {
        stop_after_epochs: None,
        resume: true,
        ..run
    };
    let other = std::sync::Arc::new(small_model(28));
    let err = train(&m, &data(&ds), &with(&other), &run).err().unwrap().to_string();
    assert!(err.contains("different training options"), "{err}");
    assert_eq!(train(&m, &data(&ds), &with(&teacher), &run).unwrap().history.len(), 2);
}
