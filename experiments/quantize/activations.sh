#!/usr/bin/env bash
# Static activation quantization (issue 13, item 1): `penni quantize` with every weight at 8 bits
# and the activations that convs, linear layers and adds read at 8, 6 or 4 bits, ranges chosen
# by min/max, the 99.99th percentile or least MSE on 512 training images; on the validation-
# protocol PENNI models of experiments/fidelity, each setting on the validation split
# (--no-test). Then the setting fixed in advance (8-bit activations by min/max, 8-bit weights)
# once on the test split; that model is kept in models/ (.penni and its QDQ .onnx export).
# Writes activations.jsonl and activations.md here. Usage: experiments/quantize/activations.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
"$root/scripts/fetch-data.sh" >/dev/null
if [ -n "${PENNI:-}" ]; then penni="$PENNI"; else
  cargo build --release -q --locked -p penni-cli --manifest-path "$root/Cargo.toml"
  penni="$root/target/release/penni"
fi
out="$here/activations.jsonl"
tmp="$(mktemp -d)"
mkdir -p "$here/models"
: > "$out.tmp"
for model in resnet20/penni-budget vgg16/penni resnet18/penni; do
  m="$root/experiments/fidelity/$model.penni"
  [ -f "$m" ] || continue
  for setting in "8 min_max" "8 percentile" "8 mse" "6 mse" "4 mse" "0 min_max"; do
    set -- $setting
    line=$(nice -n 10 "$penni" quantize --model "$m" --dataset fashion-mnist --weights 8 --pointwise 8 --bases 8 \
      --coefficients 8 --activations "$1" --calibration "$2" --no-test --json --out "$tmp/q.penni" 2>/dev/null)
    echo "{\"model\": \"$model\", \"phase\": \"sweep\", \"result\": $line}" >> "$out.tmp"
  done
  keep="$here/models/${model//\//-}-a8w8"
  line=$(nice -n 10 "$penni" quantize --model "$m" --dataset fashion-mnist --weights 8 --pointwise 8 --bases 8 \
    --coefficients 8 --activations 8 --calibration min_max --json --out "$keep.penni" 2>/dev/null)
  "$penni" convert "$keep.penni" "$keep.onnx" >/dev/null
  echo "{\"model\": \"$model\", \"phase\": \"test\", \"result\": $line}" >> "$out.tmp"
done
mv "$out.tmp" "$out"
python3 - "$out" "$here/activations.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
with open(sys.argv[2], "w") as f:
    f.write("Batchnorms folded; every weight 8 bits per output channel (per basis), symmetric; activations read by "
            "convs, linear layers and adds per tensor, unsigned, ranges from 512 training images. Validation split "
            "(5,000 training images); `experiments/quantize/activations.sh`, `activations.jsonl`.\n\n")
    f.write("| model | activation bits | range | validation top-1 f32 | quantized | change (points) | tensors | most clipped |\n|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        if r["phase"] != "sweep":
            continue
        q = r["result"]; b = q["bits"]
        a = b["activations"]
        ranges = q["activation_ranges"]
        clip = max((x["clipped"] for x in ranges), default=0.0)
        f.write(f"| {r['model']} | {a if a else 'f32'} | {b['calibration'] if a else '-'} | {q['eval_top1_f32']*100:.2f}% | "
                f"{q['eval_top1_quantized']*100:.2f}% | {(q['eval_top1_quantized']-q['eval_top1_f32'])*100:+.2f} | "
                f"{len(ranges)} | {clip*100:.3f}% |\n")
    f.write("\nTest split, measured once, for the setting fixed in advance (8-bit activations by min/max, 8-bit weights):\n\n")
    for r in rows:
        if r["phase"] == "test":
            q = r["result"]
            f.write(f"- {r['model']}: f32 {q['test_top1_f32']*100:.2f}%, quantized {q['test_top1_quantized']*100:.2f}% "
                    f"({(q['test_top1_quantized']-q['test_top1_f32'])*100:+.2f} points)\n")
PY
rm -rf "$tmp"
cat "$here/activations.md"
