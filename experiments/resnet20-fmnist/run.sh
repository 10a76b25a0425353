#!/usr/bin/env bash
# ResNet-20 (full width, 1x28x28 input) on full Fashion-MNIST: the baseline that PENNI compresses.
# Resumable: rerun this script after an interruption and it continues from the last epoch's checkpoint.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
"$root/scripts/fetch-data.sh" >/dev/null
cargo build --release -q -p penni-cli --manifest-path "$root/Cargo.toml"
resume=()
[ -f "$here/run/checkpoint.penni" ] && resume=(--resume)
"$root/target/release/penni" train --model resnet20 --dataset fashion-mnist \
  --epochs 10 --batch-size 128 --lr 0.1 --schedule cosine --momentum 0.9 --weight-decay 5e-4 \
  --crop-padding 2 --seed 0 \
  --out "$here/resnet20-fmnist.penni" --run-dir "$here/run" "${resume[@]}" 2>&1 | tee -a "$here/train.log"
cp "$here/run/metrics.jsonl" "$here/metrics.jsonl"
