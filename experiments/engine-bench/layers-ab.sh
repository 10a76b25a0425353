#!/usr/bin/env bash
# Per-layer A/B timing of two penni binaries on one model: ROUNDS interleaved rounds of
# `penni profile` (1 thread, 10 repetitions each), then per planned step the least of each
# binary's medians over the rounds (a shared machine only ever adds time) and their ratio B/A.
# ab.sh times whole models; this says which layers a change moved. PAUSE_PID=pid stops that
# process (a background training run) meanwhile.
#   experiments/engine-bench/layers-ab.sh MODEL BATCH ROUNDS BIN_A BIN_B
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: $0 MODEL BATCH ROUNDS BIN_A BIN_B" >&2; exit 2; }
model=$1 batch=$2 rounds=$3 a=$4 b=$5
if [ -n "${PAUSE_PID:-}" ]; then
  kill -STOP "$PAUSE_PID"
  trap 'kill -CONT "$PAUSE_PID"' EXIT
fi
for _ in $(seq "$rounds"); do
  for bin in "$a" "$b"; do
    "$bin" profile --model "$model" --batch "$batch" --threads 1 --reps 10 | sed "s|^|$bin |"
  done
done | python3 -c '
import sys
# a profile line: step, kernel (spaced words), median us, share, MACs, GMAC/s
best, order, kinds = {}, [], {}
for line in sys.stdin:
    f = line.split()
    if len(f) < 7 or f[1] in ("step", "total") or not f[-3].endswith("%"):
        continue
    name, key, kind, t = f[0], f[1], " ".join(f[2:-4]), float(f[-4])
    if key not in order:
        order.append(key)
    kinds[(name, key)] = kind
    best[(name, key)] = min(best.get((name, key), t), t)
a, b = sys.argv[1:3]
print("| step | kernel (B) | A us | B us | B / A |\n|---|---|---|---|---|")
ta = tb = 0
for key in order:
    x, y = best.get((a, key)), best.get((b, key))
    if x is None or y is None:
        continue
    ta, tb = ta + x, tb + y
    print(f"| {key} | {kinds[(b, key)]} | {x:.1f} | {y:.1f} | {y / x:.2f} |" if x else f"| {key} | {kinds[(b, key)]} | {x:.1f} | {y:.1f} | - |")
print(f"| sum of steps | | {ta:.1f} | {tb:.1f} | {tb / ta:.2f} |")
' "$a" "$b"
