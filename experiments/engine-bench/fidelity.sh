#!/usr/bin/env bash
# Side-by-side benchmark of the validation-protocol models of experiments/fidelity only (PENNI
# budget mode and Tucker-2 against their dense baselines): onnxruntime and penni's engine, batch
# 1 and 64, 1 and 2 threads, one run (side_by_side.py). Run it on a quiet machine; results.md,
# results.json and run.log land in OUT (default: fidelity-<date> here).
#   REPS=20 (timed runs per configuration and pass), PASSES=3; SPECS="net:variant ..." picks the
#   models (default: every compressed model, experiments/fidelity/NET/VARIANT.penni)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${OUT:-$here/fidelity-$(date +%F)}"
mkdir -p "$out"
exec > >(tee "$out/run.log") 2>&1
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); git $(git -C "$here" rev-parse --short HEAD)"
cd "$root"
py="$(scripts/python-env.sh)"
cargo build --release --locked -p penni-cli --bin penni
models="$root/target/engine-bench-models"
mkdir -p "$models"
pairs=()
# every compressed model of experiments/fidelity by default
default_specs() {
  for f in "$root"/experiments/fidelity/*/penni*.penni; do
    [ -f "$f" ] && echo "$(basename "$(dirname "$f")"):$(basename "$f" .penni)"
  done
}
for spec in ${SPECS:-$(default_specs)}; do
  net="${spec%%:*}" variant="${spec#*:}"
  exp="$root/experiments/fidelity/$net"
  [ -f "$exp/$variant.penni" ] || continue
  [ -f "$models/$net-fidelity-dense.onnx" ] || target/release/penni convert "$exp/baseline.penni" "$models/$net-fidelity-dense.onnx" >/dev/null
  pairs+=("$net-$variant:$exp/baseline.penni:$models/$net-fidelity-dense.onnx:$exp/$variant.penni")
done
OUT="$out" "$py" "$here/side_by_side.py" "$root/target/release/penni" "${REPS:-20}" "${PASSES:-3}" "${pairs[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
