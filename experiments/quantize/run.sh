#!/usr/bin/env bash
# Accuracy against bits per part (issue 13's hybrid trade-off, weights only): `penni quantize` on
# the validation-protocol PENNI models of experiments/fidelity (ResNet-20: uniform d = 3 and budget
# mode), every setting measured on the validation split (--no-test); then the 8-bit setting, the
# one fixed in advance, once on the test split. Writes results.jsonl and results.md here.
# Usage: experiments/quantize/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
"$root/scripts/fetch-data.sh" >/dev/null
if [ -n "${PENNI:-}" ]; then penni="$PENNI"; else
  cargo build --release -q --locked -p penni-cli --manifest-path "$root/Cargo.toml"
  penni="$root/target/release/penni"
fi
out="$here/results.jsonl"
tmp="$(mktemp -d)"
: > "$out.tmp"
for model in penni penni-budget; do
  m="$root/experiments/fidelity/resnet20/$model.penni"
  [ -f "$m" ] || continue
  for bits in "0 0" "8 8" "6 6" "4 8" "8 4" "4 4" "3 8" "8 3" "2 8" "8 2"; do
    set -- $bits
    line=$("$penni" quantize --model "$m" --dataset fashion-mnist --bases "$1" --coefficients "$2" \
      --weights 8 --pointwise 8 --activations 0 --no-test --json --out "$tmp/q.penni" 2>/dev/null)
    echo "{\"model\": \"resnet20/$model\", \"phase\": \"sweep\", \"result\": $line}" >> "$out.tmp"
  done
  line=$("$penni" quantize --model "$m" --dataset fashion-mnist --bases 8 --coefficients 8 --weights 8 --pointwise 8 --activations 0 \
    --json --out "$tmp/q.penni" 2>/dev/null)
  echo "{\"model\": \"resnet20/$model\", \"phase\": \"test\", \"result\": $line}" >> "$out.tmp"
done
mv "$out.tmp" "$out"
python3 - "$out" "$here/results.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
with open(sys.argv[2], "w") as f:
    f.write("Weights quantized per output channel (per basis), symmetric; k x k and 1x1/linear weights at 8 bits, "
            "activations f32. Validation split (5,000 training images); `experiments/quantize/run.sh`, `results.jsonl`.\n\n")
    f.write("| model | bases bits | coefficient bits | validation top-1 f32 | quantized | change (points) | weight storage vs f32 |\n|---|---|---|---|---|---|---|\n")
    for r in rows:
        if r["phase"] != "sweep":
            continue
        q = r["result"]; b = q["bits"]
        name = lambda v: "f32" if v == 0 else str(v)
        f.write(f"| {r['model']} | {name(b['bases'])} | {name(b['coefficients'])} | {q['eval_top1_f32']*100:.2f}% | "
                f"{q['eval_top1_quantized']*100:.2f}% | {(q['eval_top1_quantized']-q['eval_top1_f32'])*100:+.2f} | "
                f"{100*q['weight_bits_quantized']/q['weight_bits_f32']:.1f}% |\n")
    f.write("\nTest split, measured once, for the setting fixed in advance (all weights 8 bits):\n\n")
    for r in rows:
        if r["phase"] == "test":
            q = r["result"]
            f.write(f"- {r['model']}: f32 {q['test_top1_f32']*100:.2f}%, 8-bit weights {q['test_top1_quantized']*100:.2f}% "
                    f"({(q['test_top1_quantized']-q['test_top1_f32'])*100:+.2f} points)\n")
PY
rm -rf "$tmp"
cat "$here/results.md"
