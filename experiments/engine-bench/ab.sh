#!/usr/bin/env bash
# A/B timing of two penni binaries on one model: PASSES interleaved passes of `penni bench`
# (30 timed runs each after 3 warm-ups), then the median over the passes of each binary's
# median. The machines are shared: interleaving and the median over passes keep a neighbour's
# burst from deciding. PAUSE_PID=pid stops that process (a background training run) meanwhile.
#   experiments/engine-bench/ab.sh MODEL BATCH THREADS PASSES BIN_A BIN_B
set -euo pipefail
[ $# -eq 6 ] || { echo "usage: $0 MODEL BATCH THREADS PASSES BIN_A BIN_B" >&2; exit 2; }
model=$1 batch=$2 threads=$3 passes=$4 a=$5 b=$6
if [ -n "${PAUSE_PID:-}" ]; then
  kill -STOP "$PAUSE_PID"
  trap 'kill -CONT "$PAUSE_PID"' EXIT
fi
for _ in $(seq "$passes"); do
  for bin in "$a" "$b"; do
    ms=$("$bin" bench --model "$model" --batch "$batch" --threads "$threads" --reps 30 --json |
      python3 -c 'import json,sys; print([json.loads(l) for l in sys.stdin][0]["median_ms"])')
    echo "$bin $ms"
  done
done | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    name, ms = line.split()
    runs.setdefault(name, []).append(float(ms))
for name, ms in runs.items():
    print(f"{name}: median {statistics.median(ms):.3f} ms over {len(ms)} passes {ms}")
'
