#!/usr/bin/env bash
# Runs the official ONNX backend test cases against penni's importer and reference forward pass.
# Fetches the onnx==1.22.0 wheel from PyPI once (the last release that ships the test data),
# unpacks only onnx/backend/test/data/*, then runs the gated integration test.
#   PENNI_CACHE        where the wheel and data go (default: <repo>/target/onnx-testdata)
#   PENNI_PYTHON       python with pip to download with (default: python3)
#   PENNI_ONNX_VERBOSE=1  print the reason of every failing case
#   --fetch-only       only fetch the data and print its directory (scripts/test.sh uses this)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cache="${PENNI_CACHE:-$repo/target/onnx-testdata}"
py="${PENNI_PYTHON:-python3}"
dest="$cache/onnx-1.22.0"
data="$dest/onnx/backend/test/data"

if [[ ! -f "$data/.complete" ]]; then
    mkdir -p "$cache"
    wheel="$(ls "$cache"/onnx-1.22.0-*.whl 2>/dev/null | head -n 1 || true)"
    if [[ -z "$wheel" ]]; then
        echo "fetching onnx==1.22.0 from PyPI into $cache" >&2
        "$py" -m pip download --quiet --disable-pip-version-check --no-deps onnx==1.22.0 -d "$cache" >&2
        wheel="$(ls "$cache"/onnx-1.22.0-*.whl | head -n 1)"
    fi
    rm -rf "$dest"
    mkdir -p "$dest"
    # A wheel is a zip; python's zipfile avoids depending on unzip being installed.
    "$py" - "$wheel" "$dest" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnx/backend/test/data/")]
    z.extractall(dest, names)
print(f"unpacked {len(names)} files", file=sys.stderr)
PY
    touch "$data/.complete"
fi

if [[ "${1:-}" == "--fetch-only" ]]; then
    echo "$data"
    exit 0
fi
cd "$repo"
PENNI_ONNX_TESTDATA="$data" exec cargo test -p penni-onnx --test conformance -- --nocapture "$@"
