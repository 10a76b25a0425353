#!/usr/bin/env bash
# Side-by-side inference benchmark: onnxruntime and penni's engine, each on the dense model and
# on the compressed one, ResNet-20 and ResNet-18 at 3x32x32 (synthetic PENNI models, stand-ins)
# and the real compressed models of experiments/penni-fmnist and experiments/fidelity (PENNI,
# budget mode, Tucker-2) when they exist; batch 1 and 64, 1 and 2 threads, in one run.
# Installs onnxruntime from PyPI into the project's venv (scripts/python-env.sh). Run it on a quiet
# machine: results.md, results.json and run.log (the console output of this run) in OUT (default
# here) are overwritten.
#   REPS=30 (timed runs per configuration and pass), PASSES=3 (interleaved passes per cell),
#   FIDELITY=0 (skip the experiments/fidelity models)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# everything below is also written to run.log, so the log always belongs to the results beside it
out="${OUT:-$here}"
mkdir -p "$out"
exec > >(tee "$out/run.log") 2>&1
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); git $(git -C "$here" rev-parse --short HEAD)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
py="$(scripts/python-env.sh)"
cargo build --release --locked -p penni-cli --bin penni
cargo build --release --locked -p penni-compress --example synthetic_penni
models="$root/target/engine-bench-models"
mkdir -p "$models"
pairs=()
for net in resnet20 resnet18; do
  target/release/examples/synthetic_penni "$net" "$models" 0.97 | tee "$out/models-$net.txt"
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
# the validation-protocol models of experiments/fidelity, against their own baselines (FIDELITY=0
# leaves them to fidelity.sh, whose dated runs the fidelity results table reads)
for net in $([ "${FIDELITY:-1}" = 0 ] || echo resnet20 vgg16 resnet18); do
  exp="$root/experiments/fidelity/$net"
  [ -f "$exp/baseline.penni" ] || continue
  for comp in "$exp"/penni*.penni; do
    [ -f "$comp" ] || continue
    [ -f "$models/$net-fidelity-dense.onnx" ] || target/release/penni convert "$exp/baseline.penni" "$models/$net-fidelity-dense.onnx" >/dev/null
    variant="$(basename "$comp" .penni)"
    pairs+=("$net-$variant:$exp/baseline.penni:$models/$net-fidelity-dense.onnx:$comp")
  done
done
OUT="$out" "$py" "$here/side_by_side.py" "$root/target/release/penni" "${REPS:-30}" "${PASSES:-3}" "${pairs[@]}"
