#!/usr/bin/env bash
# The built-in default job: sets up Fashion-MNIST, builds penni, trains a small ResNet-20 on a
# subset, compresses it with PENNI and prints accuracy, parameters and MACs before and after.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/fetch-data.sh
cargo build --release --locked -p penni-cli
exec target/release/penni demo "$@"
