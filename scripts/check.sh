#!/usr/bin/env bash
# The house rules that CI checks before the tests (.ci/run): formatting, clippy with warnings as
# errors on every target, the criterion benches still build, and no crate's modules import each
# other in a circle. Run it before you commit.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== generated results tables are current"
python3 experiments/fidelity/results.py --check
echo "== module import circles"
python3 scripts/module-cycles.py
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== benches build"
cargo bench --workspace --bench '*' --no-run --locked
