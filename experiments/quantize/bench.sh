#!/usr/bin/env bash
# Latency of penni's 8-bit PENNI models (activations.sh keeps them in models/; the integer ones,
# with 8-bit basis maps, basis-maps.sh) and of penni's
# 8-bit dense baselines (made here once, into models/) beside onnxruntime f32 and int8 on the
# dense baselines (bench.py); run on a quiet machine.
#   REPS=20 PASSES=3; writes bench.md, bench.json and bench.log here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
exec > >(tee "$here/bench.log") 2>&1
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); git $(git -C "$here" rev-parse --short HEAD)"
cd "$root"
py="$(scripts/python-env.sh)"
cargo build --release -q --locked -p penni-cli --bin penni
f="$root/experiments/fidelity"
specs=()
for m in resnet20:penni-budget vgg16:penni resnet18:penni; do
  net="${m%%:*}" v="${m#*:}"
  q="$here/models/$net-$v-a8w8.penni"
  [ -f "$q" ] || continue
  qd="$here/models/$net-dense-a8w8.penni"
  # the dense baseline as activations.sh quantizes the PENNI models: 8-bit weights, 8-bit
  # activations by min/max on 512 training images
  [ -f "$qd" ] || "$root/target/release/penni" quantize --model "$f/$net/baseline.penni" --dataset fashion-mnist \
    --weights 8 --pointwise 8 --activations 8 --calibration min_max --no-test --out "$qd" >/dev/null
  # the integer PENNI model (8-bit basis maps too) that basis-maps.sh keeps
  qi="$here/models/$net-$v-a8w8m8.penni"
  [ -f "$qi" ] || continue
  specs+=("$net:$f/$net/baseline.penni:$f/$net/$v.penni:$q:$qd:$qi")
done
"$py" "$here/bench.py" "$root/target/release/penni" "${REPS:-20}" "${PASSES:-3}" "${specs[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
