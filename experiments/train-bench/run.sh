#!/usr/bin/env bash
# Side-by-side training benchmark: penni (burn flex CPU) against PyTorch CPU on the same machine,
# same thread count, same network (ResNet-20, 1x28x28), data (Fashion-MNIST subset), augmentation
# (random crop padding 2 + horizontal flip) and SGD (lr 0.1, Nesterov momentum 0.9, wd 5e-4).
#
#   (a) dense: `penni train` 1 epoch + evaluation   vs  torch_bench.py --mode dense
#   (b) PENNI: `penni compress` with 1 retraining epoch, 0 fine-tuning epochs (penni-bench.toml)
#                                                   vs  torch_bench.py --mode penni
#
# Usage: experiments/train-bench/run.sh          (from anywhere; REPS=3 repetitions by default)
# Env: REPS (3), THREADS (2), TRAIN_SUBSET (12800), TEST_SUBSET (2000), TORCH_VERSION (2.15.0),
#      NO_TORCH=1 (skip the optional PyTorch baseline), PENNI_DATA_DIR (Fashion-MNIST directory).
# Writes run.log (this console output), results.json and results.md next to this script; the
# per-run files (timings, metrics.jsonl, models) go to target/train-bench/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
exec > >(tee "$here/run.log") 2>&1

REPS="${REPS:-3}"
THREADS="${THREADS:-2}"
TRAIN_SUBSET="${TRAIN_SUBSET:-12800}"
TEST_SUBSET="${TEST_SUBSET:-2000}"
TORCH_VERSION="${TORCH_VERSION:-2.15.0}"
DATA_DIR="${PENNI_DATA_DIR:-/usr/share/datasets/fashion-mnist}"
work="$root/target/train-bench"
venv="$root/target/torch-venv"
py=python3

echo "== train-bench $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) cores, REPS=$REPS THREADS=$THREADS"
echo "   $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "   git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (crates/ has uncommitted changes)')"

if [ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" ]; then
  if [ "$DATA_DIR" = /usr/share/datasets/fashion-mnist ]; then scripts/fetch-data.sh; else
    echo "error: no Fashion-MNIST in $DATA_DIR" >&2; exit 1; fi
fi

# Optional baseline: PyTorch from PyPI in its own venv (the Linux wheel pulls CUDA libraries,
# several GB; only the CPU is used). Not part of scripts/python-env.sh, which CI uses.
have_torch=0
if [ "${NO_TORCH:-0}" != 1 ]; then
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null; then
    echo "== installing torch==$TORCH_VERSION into $venv"
    $py -m venv "$venv" && "$venv/bin/pip" install -q "torch==$TORCH_VERSION" || echo "warning: torch install failed; continuing without the PyTorch baseline"
  fi
  "$venv/bin/python" -c "import torch" 2>/dev/null && have_torch=1
fi

echo "== cargo build --release --locked -p penni-cli"
if ! cargo build --release --locked -p penni-cli; then
  # others may be mid-edit in the shared tree; a binary built earlier is still a measurement of it
  [ -x target/release/penni ] || exit 1
  echo "WARNING: the build failed; timing the existing target/release/penni ($(date -u -r target/release/penni +%H:%M:%SZ))"
fi
penni="$root/target/release/penni"

export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" PYTHONWARNINGS="ignore"
data_args=(--data-dir "$DATA_DIR" --train-subset "$TRAIN_SUBSET" --test-subset "$TEST_SUBSET")
# A penni with --val-split holds a validation split out of the training data by default; the
# benchmark trains on all TRAIN_SUBSET images and evaluates on the test subset, as PyTorch does.
if "$penni" train --help | grep -c -- --val-split >/dev/null; then data_args+=(--val-split 0); fi
echo "   penni data arguments: ${data_args[*]}"
rm -rf "$work"
mkdir -p "$work"

snapshot() { # the machine's state before a timed run: load average and the busiest processes
  echo "-- $(date -u +%H:%M:%S) $(uptime | sed 's/.*load average/load average/')"
  top -b -n2 -d 0.5 -o %CPU -w 200 | awk '/^top -/{f++} f==2' | sed -n '8,10p' | awk '{printf "     top: %5s%% %s\n", $9, $12}'
}

for rep in $(seq 1 "$REPS"); do
  d="$work/rep$rep"
  mkdir -p "$d"
  echo "== rep $rep/$REPS"
  snapshot
  $py "$here/timed.py" "$d/penni-dense.time.json" -- "$penni" train --model resnet20 --epochs 1 --batch-size 128 \
    --lr 0.1 --momentum 0.9 --weight-decay 5e-4 --crop-padding 2 "${data_args[@]}" \
    --out "$d/dense.penni" --run-dir "$d/dense.run"
  if [ "$have_torch" = 1 ]; then
    snapshot
    $py "$here/timed.py" "$d/torch-dense.time.json" -- "$venv/bin/python" "$here/torch_bench.py" --mode dense \
      --threads "$THREADS" --data-dir "$DATA_DIR" --train-subset "$TRAIN_SUBSET" --test-subset "$TEST_SUBSET" \
      --out "$d/torch-dense.pt" --json "$d/torch-dense.json" | tail -c 400
  fi
  snapshot
  $py "$here/timed.py" "$d/penni-compress.time.json" -- "$penni" compress --model "$d/dense.penni" \
    --config "$here/penni-bench.toml" --crop-padding 2 "${data_args[@]}" \
    --out "$d/compressed.penni" --run-dir "$d/compress.run"
  if [ "$have_torch" = 1 ]; then
    snapshot
    $py "$here/timed.py" "$d/torch-penni.time.json" -- "$venv/bin/python" "$here/torch_bench.py" --mode penni \
      --threads "$THREADS" --data-dir "$DATA_DIR" --train-subset "$TRAIN_SUBSET" --test-subset "$TEST_SUBSET" \
      --out "$d/torch-penni.pt" --json "$d/torch-penni.json" | tail -c 400
  fi
done

echo "== summary"
$py "$here/summarise.py" "$work" "$here"
