#!/usr/bin/env bash
# Side-by-side inference benchmark: onnxruntime (dense) vs penni's engine (dense and PENNI),
# ResNet-20 and ResNet-18 at 3x32x32, batch 1 and 64, 1 and 2 threads, in one run.
# Installs onnxruntime from PyPI into the project's venv (scripts/python-env.sh). Run it on a quiet
# machine: results.md and results.json here are overwritten.
#   REPS=30 (timed runs per configuration)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
py="$(scripts/python-env.sh)"
cargo build --release --locked -p penni-cli -p penni-compress --example synthetic_penni
models="$root/target/engine-bench-models"
mkdir -p "$models"
for net in resnet20 resnet18; do
  target/release/examples/synthetic_penni "$net" "$models" 0.97 | tee "$here/models-$net.txt"
  target/release/penni convert "$models/$net-dense.penni" "$models/$net-dense.onnx" >/dev/null
done
"$py" "$here/side_by_side.py" "$root/target/release/penni" "$models" "${REPS:-30}"
