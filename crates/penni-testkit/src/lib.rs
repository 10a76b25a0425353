//! What penni's integration tests share: how a test finds what lives outside the repository
//! (the Python with onnxruntime, the ONNX backend test data, Fashion-MNIST).
//!
//! Outside CI, a missing prerequisite skips the test with a line saying how to provide it, so
//! `cargo test` works on a bare checkout. Under `CI=true` (as `.ci/run` runs) it fails the
//! test instead: CI must never pass a test that checked nothing. `scripts/test.sh` sets
//! everything up, so it runs every test in full.

use std::path::{Path, PathBuf};

/// Whether tests run under CI, where every prerequisite must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `found`, or (when it is `None`) a skip message outside CI and a test failure under CI.
pub fn require<T>(found: Option<T>, what: &str, how: &str) -> Option<T> {
    if found.is_none() {
        if in_ci() {
            panic!("{what} is missing and CI=true: {how}");
        }
        eprintln!("skipped: {what} is missing: {how}");
    }
    found
}

/// The value of a non-empty environment variable that names an existing path.
pub fn env_path(var: &str, how: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    let found = path.filter(|p| p.exists());
    require(found, &format!("{var} (an existing path)"), how)
}

/// The Python of `scripts/python-env.sh` (with onnxruntime, onnx and numpy), from PENNI_PYTHON.
pub fn python() -> Option<PathBuf> {
    env_path("PENNI_PYTHON", "set PENNI_PYTHON=$(scripts/python-env.sh), or run scripts/test.sh")
}

/// The onnx==1.22.0 backend test data folder, from PENNI_ONNX_TESTDATA.
pub fn onnx_testdata() -> Option<PathBuf> {
    env_path(
        "PENNI_ONNX_TESTDATA",
        "set PENNI_ONNX_TESTDATA=$(crates/penni-onnx/conformance/run.sh --fetch-only), or run scripts/test.sh",
    )
}

/// A folder that holds the four Fashion-MNIST IDX files (gzip'd or not).
pub fn fashion_mnist(dir: &Path) -> Option<PathBuf> {
    let files = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    let present = files.iter().all(|f| dir.join(f).is_file() || dir.join(format!("{f}.gz")).is_file());
    require(
        present.then(|| dir.to_path_buf()),
        &format!("Fashion-MNIST in {}", dir.display()),
        "run scripts/fetch-data.sh (installs Debian's dataset-fashion-mnist)",
    )
}
