#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs every test of the workspace:
#   - Fashion-MNIST (Debian package dataset-fashion-mnist) for the data and CLI tests,
#   - a Python venv with onnxruntime/onnx/numpy (pinned, from PyPI) for the ONNX cross-checks,
#   - the ONNX backend test data from the onnx==1.22.0 wheel for the conformance manifest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/fetch-data.sh
PENNI_PYTHON="$(scripts/python-env.sh)"
export PENNI_PYTHON
PENNI_ONNX_TESTDATA="$(crates/penni-onnx/conformance/run.sh --fetch-only)"
export PENNI_ONNX_TESTDATA
# Fuzz-style property tests run their short form here; raise PROPTEST_CASES for a longer run.
export PROPTEST_CASES="${PROPTEST_CASES:-256}"
cargo test --workspace --locked "$@"
