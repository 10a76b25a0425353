//! The `penni` program as a user runs it: real processes, real files, Fashion-MNIST from
//! scripts/fetch-data.sh (scripts/test.sh installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn penni() -> Command {
    Command::new(env!("CARGO_BIN_EXE_penni"))
}

fn run(args: &[&str]) -> Output {
    penni().args(args).output().expect("penni runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A user error: exit code 1, one `error:` line, no panic.
fn assert_clean_failure(o: &Output, expect: &str) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("error:") && t.contains(expect), "expected '{expect}' in: {t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn inspect_prints_the_resnet18_totals() {
    let o = run(&["inspect", "resnet18"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("11.17M parameters (11173962)"), "{t}");
    assert!(t.contains("556.") || t.contains("0.56G"), "{t}");
    assert!(t.contains("layer4.1.2.conv"), "{t}");
    let json = run(&["inspect", "resnet20", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["totals"]["params_all"], 272474);
}

#[test]
fn a_closed_output_pipe_ends_quietly() {
    // `penni inspect vgg16 | head -1`: the reader goes away after one line.
    let mut child = penni()
        .args(["inspect", "vgg16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn bad_inputs_are_one_clear_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.penni");
    std::fs::write(&garbage, b"this is not a model at all").unwrap();
    assert_clean_failure(&run(&["inspect", garbage.to_str().unwrap()]), "garbage.penni");
    assert_clean_failure(&run(&["eval", "--model", "/nonexistent/model.penni"]), "/nonexistent/model.penni");
    let out = dir.path().join("m.penni");
    assert_clean_failure(
        &run(&[
            "train",
            "--model",
            "resnet20",
            "--data-dir",
            "/nonexistent/data",
            "--out",
            out.to_str().unwrap(),
        ]),
        "/nonexistent/data",
    );
    assert!(!out.exists(), "no output file after a failure");
    assert_clean_failure(&run(&["inspect", "alexnet"]), "alexnet");
    assert_clean_failure(&run(&["inspect", "resnet20", "--input", "3x32"]), "3x32x32");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[retrain]\nepochs = -3\n").unwrap();
    let model = dir.path().join("z.penni");
    let o = run(&[
        "train",
        "--model",
        "resnet20",
        "--width",
        "0.25",
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_clean_failure(
        &run(&[
            "compress",
            "--model",
            model.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "x.penni",
        ]),
        "epochs",
    );
    assert_clean_failure(
        &run(&[
            "train",
            "--model",
            "resnet20",
            "--lr=-1",
            "--train-subset",
            "64",
            "--out",
            out.to_str().unwrap(),
        ]),
        "learning rate",
    );
}

#[test]
fn train_keep_zeros_continues_a_sparse_model_without_losing_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("a.penni");
    let small = [
        "--train-subset",
        "256",
        "--test-subset",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "64",
    ];
    let o = penni()
        .args(["train", "--model", "resnet20", "--width", "0.25", "--out", first.to_str().unwrap()])
        .args(small)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // zero every other weight of every conv, as pruning would
    let mut m = load(&first);
    for n in m.nodes.iter_mut().filter(|n| matches!(n.op, penni_model::Op::Conv2d(_))) {
        let w = n.params.get_mut("weight").unwrap();
        w.data.iter_mut().step_by(2).for_each(|v| *v = 0.0);
    }
    let sparse = dir.path().join("sparse.penni");
    penni_model::save(&m, &sparse).unwrap();
    let out = dir.path().join("b.penni");
    let o = penni()
        .args([
            "train",
            "--model",
            sparse.to_str().unwrap(),
            "--keep-zeros",
            "--out",
            out.to_str().unwrap(),
        ])
        .args(small)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (before, after) = (load(&sparse), load(&out));
    let mut changed = 0;
    assert_eq!(before.nodes.len(), after.nodes.len());
    for (a, b) in before.nodes.iter().zip(&after.nodes) {
        if let (Some(wa), Some(wb)) = (a.params.get("weight"), b.params.get("weight")) {
            assert_eq!(wa.shape, wb.shape, "{}", a.name);
            for (x, y) in wa.data.iter().zip(&wb.data) {
                assert!(*x != 0.0 || *y == 0.0, "{}: a zero weight became {y}", a.name);
                changed += usize::from(x != y);
            }
        }
    }
    assert!(changed > 1000, "training changed only {changed} weights");
}

fn load(p: &Path) -> penni_model::Model {
    penni_model::load(p).unwrap()
}

/// Starts `args`, waits until `ready` exists plus a moment, then kills the process with SIGKILL.
fn kill_when(args: &[String], ready: &Path, extra_wait: Duration) {
    let mut child = penni().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !ready.exists() {
        assert!(start.elapsed() < Duration::from_secs(600), "{} never appeared", ready.display());
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(extra_wait);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn train_killed_mid_epoch_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let base = |out: &PathBuf| {
        strings(&[
            "train",
            "--model",
            "resnet20",
            "--width",
            "0.25",
            "--train-subset",
            "1024",
            "--test-subset",
            "128",
            "--epochs",
            "3",
            "--batch-size",
            "64",
            "--seed",
            "3",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let whole = dir.path().join("whole.penni");
    let o = penni().args(base(&whole)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let killed = dir.path().join("killed.penni");
    let run_dir = PathBuf::from(format!("{}.run", killed.display()));
    // killed during the second epoch, after the first checkpoint was written
    kill_when(&base(&killed), &run_dir.join("checkpoint.penni"), Duration::from_millis(300));
    assert!(!killed.exists(), "the killed run must not leave an output model");
    let mut resume = base(&killed);
    resume.push("--resume".into());
    let o = penni().args(&resume).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(load(&killed), load(&whole), "resumed training differs from the uninterrupted run");
    let log = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert!(log.lines().count() >= 3, "{log}");
}

#[test]
fn compress_killed_mid_run_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("dense.penni");
    let o = run(&[
        "train",
        "--model",
        "resnet20",
        "--width",
        "0.25",
        "--train-subset",
        "512",
        "--test-subset",
        "128",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[retrain]\nepochs = 2\nbatch_size = 64\n[finetune]\nepochs = 2\nbatch_size = 64\n",
    )
    .unwrap();
    let args = |out: &PathBuf| {
        strings(&[
            "compress",
            "--model",
            model.to_str().unwrap(),
            "--train-subset",
            "512",
            "--test-subset",
            "128",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let whole = dir.path().join("whole.penni");
    let o = penni().args(args(&whole)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("shrink"), "{}", text(&o));

    let killed = dir.path().join("killed.penni");
    let run_dir = PathBuf::from(format!("{}.run", killed.display()));
    // killed inside the retraining phase, after its first epoch checkpoint
    kill_when(
        &args(&killed),
        &run_dir.join("retrain").join("checkpoint.penni"),
        Duration::from_millis(200),
    );
    assert!(!killed.exists());
    let o = penni().args(args(&killed)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        load(&killed),
        load(&whole),
        "resumed compression differs from the uninterrupted run"
    );
    for f in ["report.txt", "report.json", "report.svg"] {
        assert!(run_dir.join(f).exists(), "{f} missing");
    }
}

#[test]
fn convert_round_trips_through_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.penni");
    let o = run(&[
        "train",
        "--model",
        "resnet20",
        "--width",
        "0.25",
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let onnx = dir.path().join("m.onnx");
    assert!(run(&["convert", model.to_str().unwrap(), onnx.to_str().unwrap()]).status.success());
    let back = dir.path().join("back.penni");
    assert!(run(&["convert", onnx.to_str().unwrap(), back.to_str().unwrap()]).status.success());
    assert_eq!(load(&back), load(&model));
    let o = run(&["inspect", onnx.to_str().unwrap()]);
    assert!(o.status.success() && text(&o).contains("total:"), "{}", text(&o));
}

#[test]
fn infer_classifies_png_images_and_writes_scores() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.penni");
    let o = run(&[
        "train",
        "--model",
        "resnet20",
        "--width",
        "0.25",
        "--train-subset",
        "256",
        "--test-subset",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut images = vec![];
    for k in 0..2u8 {
        let path = dir.path().join(format!("img{k}.png"));
        let f = std::fs::File::create(&path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 28, 28);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let pixels: Vec<u8> = (0..28 * 28).map(|i| ((i as u8).wrapping_mul(13)).wrapping_add(k * 60)).collect();
        enc.write_header().unwrap().write_image_data(&pixels).unwrap();
        images.push(path);
    }
    let scores = dir.path().join("scores.npy");
    let mut args = vec![
        "infer".to_string(),
        "--model".into(),
        model.to_str().unwrap().into(),
        "--input".into(),
    ];
    args.extend(images.iter().map(|p| p.to_str().unwrap().to_string()));
    args.extend(["--output".into(), scores.to_str().unwrap().into(), "--top-k".into(), "2".into()]);
    let o = penni().args(&args).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // Fashion-MNIST class names come from the model file
    let names = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ];
    assert!(t.contains("img0.png:") && names.iter().any(|n| t.contains(n)), "{t}");
    let (shape, _) = penni_onnx::npy::read_f32(&std::fs::read(&scores).unwrap()).unwrap();
    assert_eq!(shape, vec![2, 10]);
    // a wrong-size image is a clear error
    let big = dir.path().join("big.png");
    let f = std::fs::File::create(&big).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 30, 30);
    enc.set_color(png::ColorType::Grayscale);
    enc.write_header().unwrap().write_image_data(&[0u8; 900]).unwrap();
    assert_clean_failure(
        &run(&["infer", "--model", model.to_str().unwrap(), "--input", big.to_str().unwrap()]),
        "big.png",
    );
}

fn train_tiny(dir: &Path) -> PathBuf {
    let model = dir.join("m.penni");
    let o = run(&[
        "train",
        "--model",
        "resnet20",
        "--width",
        "0.25",
        "--train-subset",
        "256",
        "--test-subset",
        "200",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    model
}

/// One normalisation rule for every command: an ONNX file (which stores no preprocessing) is
/// evaluated with the training split's statistics, as `penni compress` and `penni train` use,
/// so it scores what its `.penni` source scores; each command says which normalisation it used.
#[test]
fn eval_normalises_a_model_without_stored_preprocessing_like_training_did() {
    let dir = tempfile::tempdir().unwrap();
    let model = train_tiny(dir.path());
    let onnx = dir.path().join("m.onnx");
    assert!(run(&["convert", model.to_str().unwrap(), onnx.to_str().unwrap()]).status.success());
    let eval = |m: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            m.to_str().unwrap(),
            "--train-subset",
            "256",
            "--test-subset",
            "200",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v["top1"].as_f64().unwrap(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (penni_top1, penni_note) = eval(&model, &[]);
    let (onnx_top1, onnx_note) = eval(&onnx, &[]);
    assert!(
        penni_note.contains("normalisation:") && penni_note.contains("stored in the model"),
        "{penni_note}"
    );
    assert!(
        onnx_note.contains("normalisation:") && onnx_note.contains("training split"),
        "{onnx_note}"
    );
    assert_eq!(onnx_top1, penni_top1, "the ONNX copy must score what its source scores");
    // --mean/--std override, and say so
    let (_, note) = eval(&onnx, &["--mean", "0.5", "--std", "0.25"]);
    assert!(
        note.contains("--mean/--std") && note.contains("0.5") && note.contains("0.25"),
        "{note}"
    );
    // values that do not fit the model are a clear error
    let m = onnx.to_str().unwrap();
    assert_clean_failure(
        &run(&["eval", "--model", m, "--mean", "0.1,0.2", "--test-subset", "10"]),
        "1 input channels",
    );
    assert_clean_failure(&run(&["eval", "--model", m, "--std", "0", "--test-subset", "10"]), "positive");
}

/// `penni infer --output` keeps the model's output shape: a model that ends in a feature map
/// writes N x C x H x W, and prints no top classes for it.
#[test]
fn infer_writes_a_feature_map_output_in_its_own_shape() {
    let dir = tempfile::tempdir().unwrap();
    let model = train_tiny(dir.path());
    // cut the network after its stem: the output is the stem's 4 x 28 x 28 map
    let mut m = load(&model);
    let keep = m.nodes.iter().position(|n| n.name == "stem.relu").unwrap();
    m.nodes.truncate(keep + 1);
    m.output = m.nodes[keep].output.clone();
    let penni_model::Shape::Map { c, h, w } = m.output_shape().unwrap() else {
        panic!("a map")
    };
    let cut = dir.path().join("stem.penni");
    penni_model::save(&m, &cut).unwrap();
    let x = dir.path().join("x.npy");
    std::fs::write(&x, penni_onnx::npy::write_f32(&[2, 1, 28, 28], &vec![0.5; 2 * 28 * 28])).unwrap();
    let out = dir.path().join("y.npy");
    let o = run(&[
        "infer",
        "--model",
        cut.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("not class scores"), "{t}");
    let (shape, data) = penni_onnx::npy::read_f32(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(shape, vec![2, c, h, w]);
    assert_eq!(data.len(), 2 * c * h * w);
}

/// Training holds out a seeded validation split of the training data for its per-epoch
/// figures, and measures the test split once, at the end; a split that leaves no training data
/// is a clear error.
#[test]
fn train_reports_validation_per_epoch_and_the_test_split_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.penni");
    let args = |val: &str| {
        vec![
            "train".to_string(),
            "--model".into(),
            "resnet20".into(),
            "--width".into(),
            "0.25".into(),
            "--train-subset".into(),
            "300".into(),
            "--test-subset".into(),
            "50".into(),
            "--val-split".into(),
            val.into(),
            "--epochs".into(),
            "1".into(),
            "--batch-size".into(),
            "50".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let o = penni().args(args("100")).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("200 train / 100 validation examples per epoch"), "{t}");
    assert!(
        t.contains("final: validation top-1") && t.contains("test top-1") && t.contains("measured once"),
        "{t}"
    );
    let o = penni().args(args("300")).output().unwrap();
    assert_clean_failure(&o, "--val-split 300 leaves no training data");
}

/// A ResNet-20 of `width` trained for one epoch on the `data` subsets, in `dir`.
fn train_one_epoch(dir: &Path, width: &str, data: &[&str]) -> PathBuf {
    let model = dir.join("dense.penni");
    let mut args = strings(&[
        "train",
        "--model",
        "resnet20",
        "--width",
        width,
        "--epochs",
        "1",
        "--batch-size",
        "64",
    ]);
    args.extend(strings(data));
    args.extend(strings(&["--out", model.to_str().unwrap()]));
    let o = penni().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    model
}

/// Budget mode from the command line: `--target-macs` gives a model within the budget, and the
/// report shows the per-layer choices with predicted and measured MACs; `--target-latency`
/// chooses on times measured by the engine.
#[test]
fn compress_with_a_mac_or_latency_budget_meets_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = ["--train-subset", "384", "--test-subset", "64", "--val-split", "128"];
    let model = train_one_epoch(dir.path(), "0.5", &data);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[retrain]\nepochs = 1\nbatch_size = 64\n[finetune]\nepochs = 1\nbatch_size = 64\n[budget]\nd_choices = [1, 2, 4]\ns_choices = [0.5, 1.0, 2.0]\n",
    )
    .unwrap();
    let out = dir.path().join("budget.penni");
    let mut args = strings(&["compress", "--model", model.to_str().unwrap(), "--target-macs", "0.2"]);
    args.extend(strings(&data));
    args.extend(strings(&["--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    let o = penni().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let macs = |p: &Path| penni_model::model_cost(&load(p)).unwrap().totals.macs_paper;
    assert!(
        macs(&out) as f64 <= 0.2 * macs(&model) as f64,
        "{} MACs against {}\n{}",
        macs(&out),
        macs(&model),
        text(&o)
    );
    let report = text(&o);
    for s in [
        "budget: MACs (paper) <= 20.0%",
        "pruning thresholds, chosen after retraining",
        "measured after pruning",
    ] {
        assert!(report.contains(s), "'{s}' missing:\n{report}");
    }
    assert_clean_failure(
        &run(&[
            "compress",
            "--model",
            model.to_str().unwrap(),
            "--target-macs",
            "1.5",
            "--out",
            "y.penni",
        ]),
        "budget.target_macs",
    );
}

/// `penni compress --method tucker` on a real (tiny) training run: ADMM closes the gap between
/// the weights and their Tucker projection, and the result has three convs per layer.
#[test]
fn compress_with_tucker_admm_closes_the_constraint_gap() {
    let dir = tempfile::tempdir().unwrap();
    let data = ["--train-subset", "1280", "--test-subset", "64", "--val-split", "256"];
    let model = train_one_epoch(dir.path(), "0.25", &data);
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "[admm]\nepochs = 3\nbatch_size = 64\nrho = 3.0\n[finetune]\nepochs = 1\nbatch_size = 64\n[tucker]\nrank = 0.5\nonly_if_cheaper = false\n",
    )
    .unwrap();
    let out = dir.path().join("tucker.penni");
    let mut args = strings(&["compress", "--method", "tucker", "--model", model.to_str().unwrap()]);
    args.extend(strings(&data));
    args.extend(strings(&["--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    let o = penni().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tucker.penni.run/report.json")).unwrap()).unwrap();
    let initial = json["admm"]["initial_gap"].as_f64().unwrap();
    let rounds = json["admm"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    let last = rounds[2]["gap"].as_f64().unwrap();
    assert!(last < 0.3 * initial, "gap {initial} -> {last}\n{}", text(&o));
    let m = load(&out);
    assert!(m.nodes.iter().any(|n| n.name.ends_with(".tucker_core")));
    assert!(text(&o).contains("ADMM toward Tucker form"), "{}", text(&o));
}

/// `penni quantize`: weights on the grid of their bit width, zeros kept, the result measured on
/// validation (and on test unless --no-test); bad widths are one clear error, no output file.
#[test]
fn quantize_puts_weights_on_their_grid_and_reports_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let data = ["--train-subset", "384", "--test-subset", "64", "--val-split", "128"];
    let model = train_one_epoch(dir.path(), "0.25", &data);
    let out = dir.path().join("q.penni");
    let mut args = strings(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--weights",
        "4",
        "--pointwise",
        "3",
        "--json",
    ]);
    args.extend(strings(&data));
    args.extend(strings(&["--out", out.to_str().unwrap()]));
    let o = penni().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(r["eval_split"], "validation");
    assert!(r["test_top1_quantized"].as_f64().is_some());
    assert!(r["weight_bits_quantized"].as_u64().unwrap() < r["weight_bits_f32"].as_u64().unwrap() / 4);
    // batchnorms folded, and the activations that convs, linear layers and adds read quantized
    // at 8 bits (the default) with ranges from calibration
    assert!(r["batchnorms_folded"].as_u64().unwrap() > 0);
    let ranges = r["activation_ranges"].as_array().unwrap();
    assert!(!ranges.is_empty());
    let quantizers = load(&out)
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op,
                penni_model::Op::Activation(penni_model::Activation::QuantizeDequantize { qmax: 255, .. })
            )
        })
        .count();
    assert_eq!(quantizers, ranges.len());
    // every output channel of a 4-bit conv holds at most 15 distinct values
    let (a, b) = (load(&model), load(&out));
    let conv = a
        .nodes
        .iter()
        .find(|n| matches!(&n.op, penni_model::Op::Conv2d(c) if c.kernel == [3, 3]))
        .unwrap();
    let q = &b.node(&conv.name).unwrap().params["weight"];
    let per = q.data.len() / q.shape[0];
    for ch in q.data.chunks(per) {
        let mut levels: Vec<u32> = ch.iter().map(|v| v.to_bits()).collect();
        levels.sort_unstable();
        levels.dedup();
        assert!(levels.len() <= 15, "{} levels", levels.len());
    }
    // quantization-aware fine-tuning judges its epochs on the weights it will be quantized to:
    // its last validation figure is the quantized model's
    let qat = dir.path().join("qat.penni");
    let mut args = strings(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--weights",
        "2",
        "--qat-epochs",
        "1",
    ]);
    args.extend(strings(&["--batch-size", "64", "--lr", "0.01", "--json", "--no-test"]));
    args.extend(strings(&data));
    args.extend(strings(&["--out", qat.to_str().unwrap()]));
    let o = penni().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let metrics = std::fs::read_to_string(dir.path().join("qat.penni.run/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["test_top1"].as_f64(), r["eval_top1_quantized"].as_f64(), "{metrics}");
    assert_eq!(
        r["test_top1_quantized"],
        serde_json::Value::Null,
        "--no-test leaves the test split alone"
    );

    let mut args = strings(&["quantize", "--model", model.to_str().unwrap(), "--weights", "1", "--no-test"]);
    args.extend(strings(&data));
    let bad = dir.path().join("bad.penni");
    args.extend(strings(&["--out", bad.to_str().unwrap()]));
    assert_clean_failure(&penni().args(&args).output().unwrap(), "quantize.weights");
    assert!(!bad.exists());
    let mut args = strings(&["quantize", "--model", model.to_str().unwrap(), "--activations", "9", "--no-test"]);
    args.extend(strings(&data));
    args.extend(strings(&["--out", bad.to_str().unwrap()]));
    assert_clean_failure(&penni().args(&args).output().unwrap(), "quantize.activations");
    assert!(!bad.exists());
    let mut args = strings(&["quantize", "--model", model.to_str().unwrap(), "--basis-maps", "1", "--no-test"]);
    args.extend(strings(&data));
    args.extend(strings(&["--out", bad.to_str().unwrap()]));
    assert_clean_failure(&penni().args(&args).output().unwrap(), "quantize.basis_maps");
    assert!(!bad.exists());
}
