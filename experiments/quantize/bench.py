#!/usr/bin/env python3
"""Latency of the 8-bit models side by side, one run, one process per cell, PASSES passes
interleaved over the runtimes, each cell the median over passes of the median of REPS runs:
onnxruntime f32 and onnxruntime int8 (its own quantize_static: QDQ, per-channel int8 weights,
uint8 activations) on the dense baseline, onnxruntime on the QDQ export of penni's 8-bit PENNI
model, and penni's engine on the f32 and the 8-bit PENNI model and on penni's own 8-bit dense
model (its integer kernels, and the same model on the f32 kernels). The dense export goes through
onnxruntime's recommended `quant_pre_process` first (it folds the batchnorms, so that every conv
becomes an integer QLinearConv); its calibration images are random (the timing does not depend
on the ranges).
usage: bench.py PENNI_BINARY REPS PASSES NAME:DENSE.penni:F32_PENNI.penni:Q_PENNI.penni:Q_DENSE.penni ...
Writes bench.json and bench.md into OUT (default: here)."""
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
bench_dir = os.path.join(here, "..", "engine-bench")
out_dir = os.environ.get("OUT", here)
penni, reps, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
specs = [a.split(":") for a in sys.argv[4:]]
tmp = tempfile.mkdtemp(prefix="quantize-bench-")
WARMUP = 5


def penni_ms(model, batch, threads, f32_kernels=False):
    out = subprocess.run([penni, "bench", "--model", model, "--batch", str(batch), "--threads", str(threads),
                          "--reps", str(reps), "--warmup", str(WARMUP), "--json"] + (["--f32-kernels"] if f32_kernels else []),
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def ort_ms(model, batch, threads):
    out = subprocess.run([sys.executable, os.path.join(bench_dir, "ort_bench.py"), model, str(batch), str(threads), str(reps), str(WARMUP)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def ort_int8(dense_onnx, path):
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = path + ".pre.onnx"
    quant_pre_process(dense_onnx, pre, skip_symbolic_shape=True)
    inp = onnx.load(pre).graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{inp.name: rng.standard_normal([1] + dims).astype(np.float32)} for _ in range(32)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(pre, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


cells = []
def penni_f32_ms(model, batch, threads):
    return penni_ms(model, batch, threads, f32_kernels=True)


for name, dense, f32_penni, q_penni, q_dense, int_penni in specs:
    subprocess.run([penni, "convert", dense, os.path.join(tmp, f"{name}-dense.onnx")], check=True, capture_output=True)
    dense_onnx = os.path.join(tmp, f"{name}-dense.onnx")
    int8_onnx = os.path.join(tmp, f"{name}-dense-int8.onnx")
    ort_int8(dense_onnx, int8_onnx)
    q_onnx = os.path.join(tmp, f"{name}-q.onnx")
    subprocess.run([penni, "convert", q_penni, q_onnx], check=True, capture_output=True)
    int_onnx = os.path.join(tmp, f"{name}-int.onnx")
    subprocess.run([penni, "convert", int_penni, int_onnx], check=True, capture_output=True)
    for batch in (1, 64):
        cells.append((name, batch, {
            "ort f32 dense": (ort_ms, dense_onnx),
            "ort int8 dense": (ort_ms, int8_onnx),
            "ort on penni's 8-bit PENNI (QDQ)": (ort_ms, q_onnx),
            "penni f32 dense": (penni_ms, dense),
            "penni 8-bit dense": (penni_ms, q_dense),
            "penni 8-bit dense (f32 kernels)": (penni_f32_ms, q_dense),
            "penni f32 PENNI": (penni_ms, f32_penni),
            "penni 8-bit PENNI": (penni_ms, q_penni),
            "penni integer PENNI (8-bit basis maps)": (penni_ms, int_penni),
            "ort on penni's integer PENNI (QDQ)": (ort_ms, int_onnx),
        }))

times = {}
for p in range(passes):
    for name, batch, runs in cells:
        for label, (fn, model) in runs.items():
            times.setdefault((name, batch, label), []).append(fn(model, batch, 1))
rows = []
for name, batch, runs in cells:
    med = {label: statistics.median(times[(name, batch, label)]) for label in runs}
    rows.append({"model": name, "batch": batch, "threads": 1, "median_ms": med, "passes": times and {l: times[(name, batch, l)] for l in runs}})
load = open("/proc/loadavg").read().split()[:3]
with open(os.path.join(out_dir, "bench.json"), "w") as f:
    json.dump({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "load_after": load, "rows": rows}, f, indent=1)
labels = list(cells[0][2].keys())
with open(os.path.join(out_dir, "bench.md"), "w") as f:
    f.write(f"`experiments/quantize/bench.sh`: 1 thread, median over {passes} passes of the median of {reps} runs after {WARMUP} warm-up runs; "
            f"{os.cpu_count()} cores, load average {' '.join(load)} at the end. ms per batch.\n\n")
    ratios = [("ort int8 / ort f32", "ort int8 dense", "ort f32 dense"),
              ("penni 8-bit dense / penni f32 dense", "penni 8-bit dense", "penni f32 dense"),
              ("penni 8-bit dense / ort int8 dense", "penni 8-bit dense", "ort int8 dense"),
              ("ort int8 dense / penni f32 PENNI", "ort int8 dense", "penni f32 PENNI"),
              ("penni 8-bit PENNI / penni f32 PENNI", "penni 8-bit PENNI", "penni f32 PENNI"),
              ("penni integer PENNI / penni f32 PENNI", "penni integer PENNI (8-bit basis maps)", "penni f32 PENNI"),
              ("ort int8 dense / penni integer PENNI", "ort int8 dense", "penni integer PENNI (8-bit basis maps)")]
    f.write("| model | batch | " + " | ".join(labels) + " | " + " | ".join(r[0] for r in ratios) + " |\n")
    f.write("|---|---|" + "---|" * (len(labels) + len(ratios)) + "\n")
    for r in rows:
        m = r["median_ms"]
        f.write(f"| {r['model']} | {r['batch']} | " + " | ".join(f"{m[l]:.3f}" for l in labels)
                + "".join(f" | {m[a] / m[b]:.2f}" for _, a, b in ratios) + " |\n")
print(open(os.path.join(out_dir, "bench.md")).read())
