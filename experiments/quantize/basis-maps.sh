#!/usr/bin/env bash
# Integer PENNI layers (issue 13): the basis maps between a PENNI layer's two stages quantized
# too (`penni quantize --basis-maps B`), so that the whole layer is integer. On the validation-
# protocol PENNI models of experiments/fidelity, every weight at 8 bits and 8-bit activations
# (min/max), basis maps in f32 (0) or at 8, 6 or 4 bits, each on the validation split
# (--no-test); then the setting fixed in advance (8-bit maps) once on the test split, kept in
# models/*-a8w8m8.penni. Then latency, 1 thread, batch 1 and 64, medians of 5 interleaved passes
# of `penni bench`: the f32 PENNI model, the 8-bit one with f32 maps (models/*-a8w8.penni, the
# f32 PENNI kernels) and the integer one. Writes basis-maps.jsonl, basis-maps-bench.jsonl and
# basis-maps.md here. Usage: experiments/quantize/basis-maps.sh  (PENNI=path to skip the build;
# PAUSE_PID=pid to stop a background job while timing; BENCH_ONLY=1 keeps basis-maps.jsonl and
# the models and only times them again)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
"$root/scripts/fetch-data.sh" >/dev/null
if [ -n "${PENNI:-}" ]; then penni="$PENNI"; else
  cargo build --release -q --locked -p penni-cli --manifest-path "$root/Cargo.toml"
  penni="$root/target/release/penni"
fi
out="$here/basis-maps.jsonl"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"; [ -n "${PAUSE_PID:-}" ] && kill -CONT "$PAUSE_PID" 2>/dev/null || true' EXIT
mkdir -p "$here/models"
models="resnet20/penni-budget vgg16/penni resnet18/penni"
if [ -z "${BENCH_ONLY:-}" ] || [ ! -f "$out" ]; then
: > "$out.tmp"
for model in $models; do
  m="$root/experiments/fidelity/$model.penni"
  for maps in 0 8 6 4; do
    line=$(nice -n 10 "$penni" quantize --model "$m" --dataset fashion-mnist --weights 8 --pointwise 8 --bases 8 \
      --coefficients 8 --activations 8 --basis-maps "$maps" --no-test --json --out "$tmp/q.penni" 2>/dev/null)
    echo "{\"model\": \"$model\", \"phase\": \"sweep\", \"basis_maps\": $maps, \"result\": $line}" >> "$out.tmp"
  done
  keep="$here/models/${model//\//-}-a8w8m8"
  line=$(nice -n 10 "$penni" quantize --model "$m" --dataset fashion-mnist --weights 8 --pointwise 8 --bases 8 \
    --coefficients 8 --activations 8 --basis-maps 8 --json --out "$keep.penni" 2>/dev/null)
  echo "{\"model\": \"$model\", \"phase\": \"test\", \"basis_maps\": 8, \"result\": $line}" >> "$out.tmp"
done
mv "$out.tmp" "$out"
fi
[ -n "${PAUSE_PID:-}" ] && kill -STOP "$PAUSE_PID" 2>/dev/null || true
bench="$here/basis-maps-bench.jsonl"
: > "$bench.tmp"
for pass in 1 2 3 4 5; do
  for model in $models; do
    name="${model//\//-}"
    for variant in f32 a8w8 a8w8m8; do
      case $variant in
        f32) f="$root/experiments/fidelity/$model.penni" ;;
        *) f="$here/models/$name-$variant.penni" ;;
      esac
      "$penni" bench --model "$f" --batch 1,64 --threads 1 --reps 20 --json 2>/dev/null |
        sed "s|^|{\"model\": \"$model\", \"variant\": \"$variant\", \"pass\": $pass, \"file_bytes\": $(stat -c %s "$f"), \"result\": |; s|$|}|" >> "$bench.tmp"
    done
  done
done
mv "$bench.tmp" "$bench"
python3 - "$out" "$bench" "$here/basis-maps.md" "$(uptime)" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
bench = [json.loads(l) for l in open(sys.argv[2])]
with open(sys.argv[3], "w") as f:
    f.write("Integer PENNI layers: every weight 8 bits (per output channel, per basis), activations 8 bits (min/max), "
            "the basis maps between the two stages in f32 or at B bits (signed, per tensor, min/max). Validation split "
            "(5,000 training images); `experiments/quantize/basis-maps.sh`, `basis-maps.jsonl`.\n\n")
    f.write("| model | basis maps | validation top-1 f32 model | quantized | change (points) |\n|---|---|---|---|---|\n")
    for r in rows:
        if r["phase"] != "sweep":
            continue
        q = r["result"]
        f.write(f"| {r['model']} | {r['basis_maps'] or 'f32'} | {q['eval_top1_f32']*100:.2f}% | {q['eval_top1_quantized']*100:.2f}% | "
                f"{(q['eval_top1_quantized']-q['eval_top1_f32'])*100:+.2f} |\n")
    f.write("\nTest split, measured once, for the setting fixed in advance (8-bit basis maps):\n\n")
    for r in rows:
        if r["phase"] == "test":
            q = r["result"]
            f.write(f"- {r['model']}: f32 {q['test_top1_f32']*100:.2f}%, integer PENNI {q['test_top1_quantized']*100:.2f}% "
                    f"({(q['test_top1_quantized']-q['test_top1_f32'])*100:+.2f} points)\n")
    f.write(f"\nLatency (`penni bench`, 1 thread, median over 5 interleaved passes of the median of 20 runs; ms per batch; "
            f"at the end: {sys.argv[4].strip()}):\n\n")
    f.write("| model | batch | f32 PENNI | 8-bit, f32 maps (f32 kernels) | integer PENNI (int8 kernels) | integer / f32 | file bytes f32 / 8-bit / integer |\n|---|---|---|---|---|---|---|\n")
    models = list(dict.fromkeys(b["model"] for b in bench))
    for m in models:
        for batch in (1, 64):
            med = {}
            size = {}
            for v in ("f32", "a8w8", "a8w8m8"):
                xs = [b["result"]["median_ms"] for b in bench if b["model"] == m and b["variant"] == v and b["result"]["batch"] == batch]
                med[v] = statistics.median(xs)
                size[v] = next(b["file_bytes"] for b in bench if b["model"] == m and b["variant"] == v)
            f.write(f"| {m} | {batch} | {med['f32']:.3f} | {med['a8w8']:.3f} | {med['a8w8m8']:.3f} | {med['a8w8m8']/med['f32']:.2f} | "
                    f"{size['f32']:,} / {size['a8w8']:,} / {size['a8w8m8']:,} |\n")
PY
cat "$here/basis-maps.md"
