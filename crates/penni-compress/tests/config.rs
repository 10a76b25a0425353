use penni_compress::config::milestone_epochs;
use penni_compress::{CompressError, Config, Init};

#[test]
fn defaults_are_the_papers_settings() {
    let c = Config::default();
    assert_eq!((c.decompose.d, c.decompose.init, c.decompose.only_if_cheaper), (5, Init::Svd, true));
    // a run directory's config fingerprint from before the key existed still matches
    assert!(!c.to_toml_string().unwrap().contains("only_if_cheaper"));
    let r = c.retrain_phase();
    assert_eq!(
        (r.epochs, r.lr, r.momentum, r.nesterov, r.weight_decay, r.batch_size),
        (100, 0.01, 0.9, true, 1e-4, 128)
    );
    assert_eq!((r.milestones.clone(), r.gamma), (vec![50, 75], 0.1));
    assert_eq!((r.l1_coefficients, r.alternate_interval, r.freeze_zeros), (1e-4, Some(2), false));
    let f = c.finetune_phase();
    assert_eq!((f.epochs, f.lr, f.milestones.clone()), (30, 0.01, vec![15, 22]));
    assert_eq!(
        (f.l1_coefficients, f.alternate_interval, f.freeze_zeros, f.seed),
        (0.0, None, true, 1)
    );
    assert_eq!((c.prune.s, c.prune.prune_1x1, c.prune.prune_linear), (1.0, true, false));
    assert_eq!(Config::from_toml_str("").unwrap(), c, "an empty file is the defaults");
}

#[test]
fn example_config_parses_to_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/penni.toml");
    assert_eq!(Config::load(&path).unwrap(), Config::default());
}

#[test]
fn values_and_per_layer_table_are_read() {
    let c = Config::from_toml_str(
        r#"
        seed = 7
        [decompose]
        init = "pca"
        only_if_cheaper = false
        [decompose.layers]
        "features.1.conv" = 9
        [retrain]
        epochs = 8
        lambda = 0.0
        [finetune]
        epochs = 4
        milestones = [0.5]
        "#,
    )
    .unwrap();
    assert_eq!(c.decompose.init, Init::Pca);
    assert!(!c.decompose_options().only_if_cheaper);
    assert_eq!(c.decompose.layers["features.1.conv"], 9);
    assert_eq!(c.decompose_options().per_layer["features.1.conv"], 9);
    assert_eq!(c.retrain_phase().milestones, vec![4, 6]);
    assert_eq!(c.finetune_phase().milestones, vec![2]);
    assert_eq!(c.finetune_phase().seed, 8);
    // the effective config round-trips through TOML
    assert_eq!(Config::from_toml_str(&c.to_toml_string().unwrap()).unwrap(), c);
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key() {
    for (text, needle) in [
        ("[retrain]\nlamda = 0.1\n", "lamda"),
        ("[prune]\ns = \"one\"\n", "s"),
        ("[decompose]\ninit = \"qr\"\n", "qr"),
        ("[shrinking]\n", "shrinking"),
        ("[retrain\n", "retrain"),
    ] {
        let err = Config::from_toml_str(text).unwrap_err();
        assert!(matches!(err, CompressError::ConfigParse { .. }), "{err}");
        assert!(err.to_string().contains(needle), "'{err}' names '{needle}'");
    }
}

#[test]
fn every_out_of_range_value_is_listed_at_once() {
    let err = Config::from_toml_str(
        r#"
        [decompose]
        d = 0
        [decompose.layers]
        "x" = 0
        [retrain]
        lr = -1.0
        lambda = -0.5
        alternate_interval = 0
        momentum = 1.5
        milestones = [0.75, 0.5]
        [prune]
        s = 0.0
        steps = 0
        [finetune]
        batch_size = 0
        weight_decay = -1.0
        gamma = 0.0
        milestones = [2.0]
        [distill]
        weight = 1.5
        temperature = -1.0
        "#,
    )
    .unwrap_err();
    let CompressError::ConfigInvalid { problems, .. } = &err else {
        panic!("{err}")
    };
    for key in [
        "decompose.d",
        "decompose.layers.\"x\"",
        "retrain.lr",
        "retrain.lambda",
        "retrain.alternate_interval",
        "retrain.momentum",
        "retrain.milestones",
        "prune.s",
        "prune.steps",
        "finetune.batch_size",
        "finetune.weight_decay",
        "finetune.gamma",
        "finetune.milestones",
        "distill.weight",
        "distill.temperature",
    ] {
        assert!(problems.iter().any(|p| p.starts_with(key)), "{key} missing from {problems:?}");
    }
    assert_eq!(problems.len(), 15, "{problems:?}");
    let e = Config::from_toml_str("[prune]\nsteps = 4\n[finetune]\nepochs = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("prune.steps = 4 needs at least as many fine-tuning epochs"), "{e}");
}

#[test]
fn milestones_are_floored_and_kept_inside_the_run() {
    assert_eq!(milestone_epochs(&[0.5, 0.75], 100), vec![50, 75]);
    assert_eq!(milestone_epochs(&[0.5, 0.75], 30), vec![15, 22]);
    assert_eq!(milestone_epochs(&[0.5, 0.75], 1), Vec::<usize>::new());
    assert_eq!(milestone_epochs(&[1.0], 10), Vec::<usize>::new());
}
