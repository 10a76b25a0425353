#!/usr/bin/env bash
# The combination stage's two layouts (CSR, rows packed in pairs) on the real layers of the
# trained PENNI models in experiments/fidelity: `cargo bench --bench combination` PASSES times
# (default 3), then per layer and batch the median over passes of criterion's median time,
# the packed/CSR ratio, the fill (terms / packed slots) and what the planner's rule picks.
#   experiments/engine-bench/combination.sh            (OUT=dir, PASSES=n, PAUSE_PID=pid)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="${OUT:-$here/combination-$(date +%F)}"
passes="${PASSES:-3}"
mkdir -p "$out"
if [ -n "${PAUSE_PID:-}" ]; then
  kill -STOP "$PAUSE_PID"
  trap 'kill -CONT "$PAUSE_PID"' EXIT
fi
{
  echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) ($(nproc) cores), load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# commit $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo '+changes'), PENNI_BENCH_THREADS=${PENNI_BENCH_THREADS:-1}"
} > "$out/run.log"
for p in $(seq "$passes"); do
  echo "## pass $p" >> "$out/run.log"
  cargo bench -q --locked --manifest-path "$root/Cargo.toml" -p penni-engine --bench combination -- \
    --noplot 2>&1 | grep -E '^layer |time:|^[a-z0-9]+/' >> "$out/run.log"
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/run.log"
python3 "$here/combination_table.py" "$out/run.log" > "$out/results.md"
cat "$out/results.md"
