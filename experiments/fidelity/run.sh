#!/usr/bin/env bash
# PENNI under the validation protocol (issue 12): every number inside the pipeline is measured on
# a seeded validation split held out of the training data (penni's default --val-split: 5,000 of
# Fashion-MNIST's 60,000); the test set is measured once, at the end of each job.
#
#   1. dense baseline: `penni train`, BASE_EPOCHS epochs (cosine from lr 0.1)
#   2. PENNI: `penni compress` of the baseline with config-MODEL.toml (R retraining + F fine-tuning)
#   3. fair baseline: the same baseline trained R + F more epochs, dense, with the schedule of the
#      compression (lr 0.01, x0.1 after the retraining epochs): "the same number of extra epochs
#      as its compressed model"
# The comparison is test top-1 of (3) against test top-1 of (2).
#
# Usage: experiments/fidelity/run.sh [MODEL [VARIANT]]   (resumable: rerun after an interruption)
#   MODEL: resnet20, vgg16, vgg16avg, resnet18 or resnet18w50 (width 0.5); VARIANT (optional): config-MODEL-VARIANT.toml, outputs penni-VARIANT.*
#   (e.g. `run.sh resnet20 budget`: budget mode); variants that train as many epochs as the plain
#   config share its fair baseline, a longer schedule gets its own (baseline-extra-EPOCHS.*).
# Runs at low priority; logs and reports land in experiments/fidelity/MODEL/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
model="${1:-resnet20}"
variant="${2:-}"
config="$here/config-$model${variant:+-$variant}.toml"
name="penni${variant:+-$variant}"
[ -f "$config" ] || { echo "no such config: $config" >&2; exit 2; }
BASE_EPOCHS="${BASE_EPOCHS:-10}"
"$root/scripts/fetch-data.sh" >/dev/null
# PENNI=/path/to/penni runs a binary built earlier (a long queue of runs is then immune to
# edits of the working tree); by default the tree is built first
if [ -n "${PENNI:-}" ]; then
  penni="$PENNI"
else
  penni="$root/target/release/penni"
  cargo build --release -q --locked -p penni-cli --manifest-path "$root/Cargo.toml"
fi
out="$here/$model"
mkdir -p "$out"
run() { nice -n 19 "$penni" "$@"; }
resume_flag() { [ -f "$1/checkpoint.penni" ] && echo --resume || true; }

case "$model" in
  resnet20) train_args=(--model resnet20) ;;
  # VGG-16 needs 32x32 inputs (five 2x2 pools; the padding is stored in the model, so the
  # compression pads too); width 0.25 (16..128 channels) to fit these 2-core machines
  vgg16) train_args=(--model vgg16 --width 0.25 --pad-to 32) ;;
  # VGG-16 with 2x2 average pools (the conv-pool co-optimization experiment of issue 14): as vgg16
  vgg16avg) train_args=(--model vgg16avg --width 0.25 --pad-to 32) ;;
  # ResNet-18 (CIFAR stem) at width 0.25 (16..128 channels), 1x28x28
  resnet18) train_args=(--model resnet18 --width 0.25) ;;
  # the widest ResNet-18 these machines train within a few sessions of background runs: width
  # 0.5 (32..256 channels), 1x28x28; full width (64..512) costs about 4x more per epoch
  resnet18w50) train_args=(--model resnet18 --width 0.5) ;;
  *) echo "unknown model: $model" >&2; exit 2 ;;
esac

if [ ! -f "$out/baseline.penni" ]; then
  run train "${train_args[@]}" --dataset fashion-mnist --epochs "$BASE_EPOCHS" --batch-size 128 \
    --lr 0.1 --schedule cosine --momentum 0.9 --weight-decay 5e-4 --crop-padding 2 --seed 0 \
    --out "$out/baseline.penni" --run-dir "$out/baseline.run" $(resume_flag "$out/baseline.run") \
    2>&1 | tee -a "$out/baseline.log"
fi
# a fresh checkout has the models but not the run directories: keep the committed copies
copy() { [ -f "$1" ] && cp "$1" "$2" || true; }
copy "$out/baseline.run/metrics.jsonl" "$out/baseline-metrics.jsonl"

epochs() { awk -v s="[$2]" '$0==s{f=1} f&&/^epochs/{print $3; exit}' "$1"; }
# training epochs in all: PENNI retrains, Tucker trains with ADMM, both fine-tune
total() {
  local r a f
  r=$(epochs "$1" retrain); a=$(epochs "$1" admm); f=$(epochs "$1" finetune)
  echo $(( ${r:-0} + ${a:-0} + ${f:-0} ))
}
# the fair baseline trains as many extra epochs as the compression: one per schedule length,
# baseline-extra.* for the plain config's, baseline-extra-E.* for a variant that trains E epochs
extra=$(total "$config")
fair="baseline-extra"
[ "$extra" = "$(total "$here/config-$model.toml")" ] || fair="baseline-extra-$extra"
if [ ! -f "$out/$name.penni" ]; then
  run compress --model "$out/baseline.penni" --dataset fashion-mnist --config "$config" \
    --out "$out/$name.penni" --run-dir "$out/$name.run" 2>&1 | tee -a "$out/compress${variant:+-$variant}.log"
fi
for f in "$out/$name.run"/report.*; do copy "$f" "$out/report${variant:+-$variant}.${f##*.}"; done

# one fair baseline per schedule length: a second run.sh waits here for the first to finish it
(
  flock 9
  if [ ! -f "$out/$fair.penni" ]; then
    run train --model "$out/baseline.penni" --dataset fashion-mnist --epochs "$extra" \
      --batch-size 128 --lr 0.01 --schedule step --milestones "$((extra - $(epochs "$config" finetune)))" --gamma 0.1 --momentum 0.9 \
      --weight-decay 1e-4 --crop-padding 2 --seed 1 --out "$out/$fair.penni" \
      --run-dir "$out/$fair.run" $(resume_flag "$out/$fair.run") 2>&1 | tee -a "$out/$fair.log"
  fi
) 9>"$out/.$fair.lock"
copy "$out/$fair.run/metrics.jsonl" "$out/$fair-metrics.jsonl"
"$penni" inspect "$out/baseline.penni" --json > "$out/baseline-cost.json"
"$penni" inspect "$out/$name.penni" --json > "$out/$name-cost.json"
echo "done: $out"
