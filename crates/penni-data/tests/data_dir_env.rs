//! `resolve_data_dir`'s fallbacks. In its own test binary, and in one test,
//! because it changes a process-wide environment variable.

use penni_data::*;

#[test]
fn env_var_then_debian_default() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    // SAFETY: this binary has a single test, so no other thread reads the
    // environment while it is modified.
    unsafe { std::env::set_var(DATA_DIR_ENV, dir.path()) };
    assert_eq!(resolve_data_dir(None).unwrap(), dir.path());
    // An explicit directory wins over the variable.
    assert_eq!(resolve_data_dir(Some(other.path())).unwrap(), other.path());

    let missing = dir.path().join("missing");
    unsafe { std::env::set_var(DATA_DIR_ENV, &missing) };
    let e = resolve_data_dir(None).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::NotFound { .. }));
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("PENNI_DATA_DIR"),
        "{msg}"
    );

    unsafe { std::env::remove_var(DATA_DIR_ENV) };
    match resolve_data_dir(None) {
        Ok(p) => assert_eq!(p, std::path::Path::new(DEBIAN_FASHION_MNIST_DIR)),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(DEBIAN_FASHION_MNIST_DIR), "{msg}");
            assert!(msg.contains("scripts/fetch-data.sh"), "{msg}");
            assert!(msg.contains("apt-get install dataset-fashion-mnist"), "{msg}");
        }
    }
}
