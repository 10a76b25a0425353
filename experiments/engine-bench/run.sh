#!/usr/bin/env bash
# Side-by-side inference benchmark: onnxruntime (dense) vs penni's engine (dense and PENNI),
# ResNet-20 and ResNet-18 at 3x32x32 (synthetic PENNI models) and the real PENNI models of
# experiments/penni-fmnist when they exist; batch 1 and 64, 1 and 2 threads, in one run.
# Installs onnxruntime from PyPI into the project's venv (scripts/python-env.sh). Run it on a quiet
# machine: results.md, results.json and run.log (the console output of this run) here are overwritten.
#   REPS=30 (timed runs per configuration)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# everything below is also written to run.log, so the log always belongs to the results beside it
exec > >(tee "$here/run.log") 2>&1
root="$(cd "$here/../.." && pwd)"
cd "$root"
py="$(scripts/python-env.sh)"
cargo build --release --locked -p penni-cli --bin penni
cargo build --release --locked -p penni-compress --example synthetic_penni
models="$root/target/engine-bench-models"
mkdir -p "$models"
pairs=()
for net in resnet20 resnet18; do
  target/release/examples/synthetic_penni "$net" "$models" 0.97 | tee "$here/models-$net.txt"
  target/release/penni convert "$models/$net-dense.penni" "$models/$net-dense.onnx" >/dev/null
  pairs+=("$net-synthetic:$models/$net-dense.penni:$models/$net-dense.onnx:$models/$net-penni.penni")
done
# the real PENNI models of experiments/penni-fmnist (1x28x28 or 1x32x32 Fashion-MNIST), when they exist
for net in resnet20 vgg16 resnet18; do
  exp="$root/experiments/penni-fmnist/$net"
  dense="$exp/baseline.penni"
  [ "$net" = resnet20 ] && dense="$root/experiments/resnet20-fmnist/resnet20-fmnist.penni"
  if [ -f "$dense" ] && [ -f "$exp/$net-penni.penni" ]; then
    target/release/penni convert "$dense" "$models/$net-fmnist-dense.onnx" >/dev/null
    pairs+=("$net-fmnist:$dense:$models/$net-fmnist-dense.onnx:$exp/$net-penni.penni")
  fi
done
"$py" "$here/side_by_side.py" "$root/target/release/penni" "${REPS:-30}" "${pairs[@]}"
