#!/usr/bin/env bash
# Quantization-aware fine-tuning at the setting fixed in advance: ResNet-20 budget-mode PENNI model
# of experiments/fidelity, coefficients at 4 bits, bases, k x k and 1x1/linear weights at 8 bits,
# 2 epochs at lr 0.001 (cosine). Resumable: rerun the same command. Log: qat.log here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../../.."
"$root/scripts/fetch-data.sh" >/dev/null
if [ -n "${PENNI:-}" ]; then penni="$PENNI"; else
  cargo build --release -q --locked -p penni-cli --manifest-path "$root/Cargo.toml"
  penni="$root/target/release/penni"
fi
nice -n 19 "$penni" quantize --model "$root/experiments/fidelity/resnet20/penni-budget.penni" --dataset fashion-mnist \
  --bases 8 --coefficients 4 --weights 8 --pointwise 8 --activations 0 --qat-epochs 2 --lr 0.001 \
  --out "$here/resnet20-budget-c4-qat.penni" --run-dir "$here/resnet20-budget-c4-qat.run" 2>&1 | tee -a "$here/qat.log"
