#!/usr/bin/env python3
"""Side-by-side: onnxruntime on the dense model, penni's engine on the dense model and on the
PENNI model, same machine, same thread counts, one run. Every configuration runs in a fresh
process so that peak memory is its own. Writes results.json and results.md here.
usage: side_by_side.py PENNI_BINARY REPS NAME:DENSE.penni:DENSE.onnx:PENNI.penni ...
(one NAME:... triple per model pair; the dense model as .penni for penni and as .onnx for
onnxruntime, both holding the same weights)"""
import json
import os
import platform
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
penni, reps = sys.argv[1], int(sys.argv[2])
pairs = [a.split(":") for a in sys.argv[3:]]
warmup = 5
rows = []


def penni_bench(model, batch, threads):
    out = subprocess.run([penni, "bench", "--model", model, "--batch", str(batch), "--threads", str(threads),
                          "--reps", str(reps), "--warmup", str(warmup), "--json"], check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"median_ms": r["median_ms"], "p90_ms": r["p90_ms"], "peak_rss_bytes": r["peak_rss_bytes"],
            "baseline_rss_bytes": r["baseline_rss_bytes"], "inference_bytes": r["peak_rss_bytes"] - r["baseline_rss_bytes"],
            "arena_bytes": r["arena_peak_bytes"], "weight_bytes": r["weight_bytes"], "macs": r["macs"]}


def ort_bench(model, batch, threads):
    out = subprocess.run([sys.executable, os.path.join(here, "ort_bench.py"), model, str(batch), str(threads), str(reps), str(warmup)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


for net, dense_penni, dense_onnx, penni_model in pairs:
    for batch in [1, 64]:
        for threads in [1, 2]:
            ort = ort_bench(dense_onnx, batch, threads)
            dense = penni_bench(dense_penni, batch, threads)
            comp = penni_bench(penni_model, batch, threads)
            row = {"model": net, "batch": batch, "threads": threads, "onnxruntime": ort, "penni_dense": dense, "penni_compressed": comp,
                   "dense_vs_ort": dense["median_ms"] / ort["median_ms"],
                   "speedup_compressed_vs_ort": ort["median_ms"] / comp["median_ms"],
                   "memory_compressed_vs_ort": comp["inference_bytes"] / max(ort["inference_bytes"], 1)}
            rows.append(row)
            print(f"{net} b{batch} t{threads}: ort {ort['median_ms']:.3f} ms, penni dense {dense['median_ms']:.3f} ms "
                  f"({row['dense_vs_ort']:.2f}x ort), penni PENNI {comp['median_ms']:.3f} ms ({row['speedup_compressed_vs_ort']:.2f}x faster than ort); "
                  f"memory PENNI/ort {row['memory_compressed_vs_ort']:.2f}", flush=True)

machine = {"cpu": platform.processor() or open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].split(":", 1)[1].strip(),
           "cores": os.cpu_count(), "reps": reps, "warmup": warmup}
with open(os.path.join(here, "results.json"), "w") as f:
    json.dump({"machine": machine, "rows": rows}, f, indent=1)
with open(os.path.join(here, "results.md"), "w") as f:
    f.write(f"Machine: {machine['cpu']}, {machine['cores']} cores; medians of {reps} runs after {warmup} warm-up runs.\n")
    f.write("Memory = peak RSS of the process during inference minus its RSS before the model was loaded.\n\n")
    f.write("| model | batch | threads | onnxruntime dense ms | penni dense ms | penni PENNI ms | dense / ort | ort / PENNI (speed-up) | memory PENNI / ort |\n")
    f.write("|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['onnxruntime']['median_ms']:.3f} | {r['penni_dense']['median_ms']:.3f} | "
                f"{r['penni_compressed']['median_ms']:.3f} | {r['dense_vs_ort']:.2f} | {r['speedup_compressed_vs_ort']:.2f} | {r['memory_compressed_vs_ort']:.2f} |\n")
print("wrote", os.path.join(here, "results.md"))
