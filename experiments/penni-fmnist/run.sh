#!/usr/bin/env bash
# PENNI on full Fashion-MNIST for one model: train the dense baseline (unless it exists), then compress it.
# Usage: experiments/penni-fmnist/run.sh resnet20|vgg16|resnet18 [VARIANT]
# VARIANT compresses the same baseline with config-VARIANT.toml into MODEL-VARIANT/ (default:
# config.toml into MODEL/).
# Resumable: rerun the same command after an interruption; training and every compression phase
# continue from their last checkpoint.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
model="${1:?usage: run.sh resnet20|vgg16|resnet18 [VARIANT]}"
variant="${2:-}"
name="$model${variant:+-$variant}"
config="$here/config${variant:+-$variant}.toml"
[ -f "$config" ] || { echo "no such config: $config" >&2; exit 2; }
penni="$root/target/release/penni"
"$root/scripts/fetch-data.sh" >/dev/null
cargo build --release -q -p penni-cli --manifest-path "$root/Cargo.toml"
out="$here/$name"
base_dir="$here/$model"
mkdir -p "$out" "$base_dir"

# Dense baselines. ResNet-20 reuses the foundation experiment's model (full width, 10 epochs).
case "$model" in
  resnet20)
    baseline="$root/experiments/resnet20-fmnist/resnet20-fmnist.penni" ;;
  vgg16)
    # VGG-16 needs 32x32 inputs (five 2x2 pools); width 0.25 (16..128 channels) to fit the machine.
    baseline="$base_dir/baseline.penni"
    train_args=(--model vgg16 --width 0.25 --pad-to 32) ;;
  resnet18)
    # ResNet-18 (CIFAR stem) at width 0.25 (16..128 channels), 1x28x28 input.
    baseline="$base_dir/baseline.penni"
    train_args=(--model resnet18 --width 0.25) ;;
  *) echo "unknown model: $model" >&2; exit 2 ;;
esac
if [ ! -f "$baseline" ]; then
  resume=()
  [ -f "$base_dir/baseline.run/checkpoint.penni" ] && resume=(--resume)
  "$penni" train "${train_args[@]}" --dataset fashion-mnist \
    --epochs 6 --batch-size 128 --lr 0.1 --schedule cosine --momentum 0.9 --weight-decay 5e-4 \
    --crop-padding 2 --seed 0 --out "$baseline" --run-dir "$base_dir/baseline.run" "${resume[@]}" \
    2>&1 | tee -a "$base_dir/baseline.log"
fi

if [ ! -f "$out/$name-penni.penni" ]; then
  "$penni" compress --model "$baseline" --dataset fashion-mnist --config "$config" \
    --out "$out/$name-penni.penni" --run-dir "$out/penni.run" 2>&1 | tee -a "$out/compress.log"
fi
cp "$out/penni.run"/report.* "$out/"

# More fine-tuning of the compressed (shrunk) model, zeros held at zero: the pipeline's 3
# fine-tuning epochs do not recover the accuracy that pruning 93% of the coefficients costs.
ft="$out/$name-penni-ft.penni"
if [ ! -f "$ft" ]; then
  resume=()
  [ -f "$out/finetune.run/checkpoint.penni" ] && resume=(--resume)
  "$penni" train --model "$out/$name-penni.penni" --keep-zeros --dataset fashion-mnist \
    --epochs "${FT_EPOCHS:-4}" --batch-size 128 --lr 0.01 --schedule cosine --momentum 0.9 --weight-decay 1e-4 \
    --crop-padding 2 --seed 1 --out "$ft" --run-dir "$out/finetune.run" "${resume[@]}" 2>&1 | tee -a "$out/finetune.log"
fi
cp "$out/finetune.run/metrics.jsonl" "$out/finetune-metrics.jsonl"
"$penni" eval --model "$baseline" --json > "$out/baseline-eval.json"
"$penni" eval --model "$ft" --json > "$out/penni-ft-eval.json"
"$penni" inspect "$baseline" --json > "$out/baseline-cost.json"
"$penni" inspect "$ft" --json > "$out/penni-ft-cost.json"
"$penni" inspect "$ft" > "$out/penni-ft-inspect.txt"
"$here/summarize.py"
