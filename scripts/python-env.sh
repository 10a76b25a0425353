#!/usr/bin/env bash
# Creates (idempotently) the Python virtual environment that penni's cross-checks use
# (onnxruntime side-by-side tests, the ONNX conformance data) and prints its python path.
#   PENNI_VENV   where the environment lives (default: <repo>/.venv)
#   PENNI_PYTHON_BASE  the interpreter to build it from (default: python3.11, else python3)
# Everything it installs is pinned, so two machines get the same environment. pip's own output
# goes to stderr; stdout is only the python path, so `PENNI_PYTHON=$(scripts/python-env.sh)` works.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PENNI_VENV:-$repo/.venv}"
pins=(onnxruntime==1.32.0 numpy==2.4.6 onnx==1.22.0)

base="${PENNI_PYTHON_BASE:-}"
if [[ -z "$base" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then base=python3.11; else base=python3; fi
fi

py="$venv/bin/python"
stamp="$venv/.penni-pins"
want="${pins[*]}"
if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$py"
    exit 0
fi

if [[ ! -x "$py" ]]; then
    ver="$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [[ "$ver" != "3.11" ]]; then
        echo "python-env.sh: warning: building the environment with Python $ver; the pins were chosen for 3.11" >&2
    fi
    "$base" -m venv "$venv" >&2
fi
"$py" -m pip install --disable-pip-version-check --quiet "${pins[@]}" >&2
"$py" -c 'import onnxruntime, numpy, onnx' >&2
echo "$want" > "$stamp"
echo "$py"
