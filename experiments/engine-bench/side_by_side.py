#!/usr/bin/env python3
"""Side-by-side: onnxruntime on the dense model and on the compressed model (exported to ONNX),
penni's engine on both, same machine, same thread counts, one run. Every configuration runs in a
fresh process so that peak memory is its own. Each cell is measured PASSES times, the passes
interleaved over all runtimes, and reported as the median over passes of each pass's median, so
that a burst of load on a shared machine moves one pass, not the result. The ratios split the
gain: model gain (onnxruntime dense / onnxruntime compressed) and engine gain (onnxruntime
compressed / penni compressed). Memory is also given net of each runtime's fixed overhead:
the same measurement on a one-layer model (one 1x1 conv to one channel on the model's input) is
subtracted; where what is left of the denominator is within the noise of that overhead (under
5% of it: onnxruntime's ~86 MB hide the few hundred kB of a small model), the net ratio is not
measurable and shows as "-". Writes results.json and results.md into OUT (default: here).
usage: side_by_side.py PENNI_BINARY REPS PASSES NAME:DENSE.penni:DENSE.onnx:COMPRESSED.penni ...
(the dense model as .penni for penni and as .onnx for onnxruntime, both holding the same weights;
the compressed model is exported to ONNX here with `penni convert`)
       side_by_side.py --table DIR   (rewrites DIR/results.md and the ratios of DIR/results.json)"""
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
out_dir = os.environ.get("OUT", here)
warmup = 5
rows = []
# a net memory under this fraction of its runtime's fixed overhead is within that overhead's noise
NET_RESOLUTION = 0.05


def net_ratio(num, den):
    """Net memory of cell `num` over that of cell `den`, None where `den`'s is not measurable."""
    if den["net_inference_bytes"] < NET_RESOLUTION * den["fixed_overhead_bytes"] or den["net_inference_bytes"] <= 0:
        return None
    return num["net_inference_bytes"] / den["net_inference_bytes"]


def ratios(cell):
    """The ratios of a table row, from its four runtimes' cells."""
    ort, ortc, dense, comp = (cell[k]["median_ms"] for k in ("onnxruntime", "onnxruntime_compressed", "penni_dense", "penni_compressed"))
    return {"dense_vs_ort": dense / ort,
            "speedup_compressed_vs_ort": ort / comp,
            "model_gain": ort / ortc,
            "engine_gain": ortc / comp,
            "memory_compressed_vs_ort": cell["penni_compressed"]["inference_bytes"] / max(cell["onnxruntime"]["inference_bytes"], 1),
            "memory_compressed_vs_dense_penni": cell["penni_compressed"]["inference_bytes"] / max(cell["penni_dense"]["inference_bytes"], 1),
            "net_memory_compressed_vs_ort": net_ratio(cell["penni_compressed"], cell["onnxruntime"]),
            "net_memory_compressed_vs_dense_penni": net_ratio(cell["penni_compressed"], cell["penni_dense"])}


def write_table(machine, rows, out_dir):
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=1)
    load_start, load_end = machine["loadavg_start"], machine["loadavg_end"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(f"Machine: {machine['cpu']}, {machine['cores']} cores; load average {load_start[0]:.2f} at the start, "
                f"{load_end[0]:.2f} at the end. Each cell: the median over {machine['passes']} passes of the median of {machine['reps']} runs "
                f"after {machine['warmup']} warm-up runs, the passes interleaved over the runtimes.\n")
        f.write("Memory = peak RSS of the process during inference minus its RSS before the model was loaded; net memory also "
                "subtracts the runtime's fixed overhead, the same measurement on a one-layer model of the same input "
                f"(\"-\": the denominator's net memory is under {NET_RESOLUTION:.0%} of its runtime's fixed overhead, within its noise).\n")
        f.write("Model gain = onnxruntime dense / onnxruntime on the compressed model's ONNX export; engine gain = "
                "onnxruntime compressed / penni compressed; their product is the speed-up.\n\n")
        f.write("| model | batch | threads | ort dense ms | ort compressed ms | penni dense ms | penni compressed ms | dense / ort | "
                "speed-up (ort dense / penni compressed) | model gain | engine gain | memory compressed / ort dense | memory compressed / penni dense | "
                "net memory compressed / ort dense | net memory compressed / penni dense |\n")
        f.write("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['onnxruntime']['median_ms']:.3f} | "
                    f"{r['onnxruntime_compressed']['median_ms']:.3f} | {r['penni_dense']['median_ms']:.3f} | "
                    f"{r['penni_compressed']['median_ms']:.3f} | {r['dense_vs_ort']:.2f} | {r['speedup_compressed_vs_ort']:.2f} | "
                    f"{r['model_gain']:.2f} | {r['engine_gain']:.2f} | {r['memory_compressed_vs_ort']:.2f} | "
                    f"{r['memory_compressed_vs_dense_penni']:.2f} | {fmt(r['net_memory_compressed_vs_ort'])} | "
                    f"{fmt(r['net_memory_compressed_vs_dense_penni'])} |\n")
    print("wrote", os.path.join(out_dir, "results.md"))


if sys.argv[1] == "--table":
    d = json.load(open(os.path.join(sys.argv[2], "results.json")))
    for r in d["rows"]:
        r.update(ratios(r))
    write_table(d["machine"], d["rows"], sys.argv[2])
    sys.exit(0)

penni, reps, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pairs = [a.split(":") for a in sys.argv[4:]]
exports = tempfile.mkdtemp(prefix="engine-bench-")


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


def one_layer_model(onnx_model, path):
    """A one-layer model on the input of `onnx_model` (one 1x1 conv to one channel): what each
    runtime needs to hold any model of this input at all."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inp = onnx.load(onnx_model).graph.input[0]
    dims = [d.dim_value if d.dim_value > 0 else "N" for d in inp.type.tensor_type.shape.dim]
    c = dims[1]
    w = numpy_helper.from_array(np.full((1, c, 1, 1), 0.5, dtype=np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])
    graph = helper.make_graph([node], "one_layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + dims[1:])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1] + dims[2:])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def combine(runs):
    """The median pass (by median latency) of one runtime's passes, with every pass's median kept."""
    ordered = sorted(runs, key=lambda r: r["median_ms"])
    mid = dict(ordered[len(ordered) // 2])
    mid["median_ms"] = statistics.median(r["median_ms"] for r in runs)
    mid["pass_medians_ms"] = [r["median_ms"] for r in runs]
    return mid


load_start = os.getloadavg()
for net, dense_penni, dense_onnx, comp_penni in pairs:
    comp_onnx = os.path.join(exports, f"{net}-compressed.onnx")
    subprocess.run([penni, "convert", comp_penni, comp_onnx], check=True, capture_output=True)
    one_onnx, one_penni = os.path.join(exports, f"{net}-one-layer.onnx"), os.path.join(exports, f"{net}-one-layer.penni")
    one_layer_model(dense_onnx, one_onnx)
    subprocess.run([penni, "convert", one_onnx, one_penni], check=True, capture_output=True)
    for batch in [1, 64]:
        for threads in [1, 2]:
            fixed_ort = ort_bench(one_onnx, batch, threads)["inference_bytes"]
            fixed_penni = penni_bench(one_penni, batch, threads)["inference_bytes"]
            runs = {"onnxruntime": [], "onnxruntime_compressed": [], "penni_dense": [], "penni_compressed": []}
            for _ in range(passes):
                runs["onnxruntime"].append(ort_bench(dense_onnx, batch, threads))
                runs["penni_dense"].append(penni_bench(dense_penni, batch, threads))
                runs["penni_compressed"].append(penni_bench(comp_penni, batch, threads))
                runs["onnxruntime_compressed"].append(ort_bench(comp_onnx, batch, threads))
            cell = {k: combine(v) for k, v in runs.items()}
            for k in cell:
                fixed = fixed_ort if k.startswith("onnxruntime") else fixed_penni
                cell[k]["fixed_overhead_bytes"] = fixed
                cell[k]["net_inference_bytes"] = max(cell[k]["inference_bytes"] - fixed, 0)
            ort, ortc, dense, comp = (cell[k]["median_ms"] for k in ("onnxruntime", "onnxruntime_compressed", "penni_dense", "penni_compressed"))
            row = {"model": net, "batch": batch, "threads": threads, **cell, **ratios(cell)}
            rows.append(row)
            print(f"{net} b{batch} t{threads}: ort dense {ort:.3f} ms, ort compressed {ortc:.3f} ms, penni dense {dense:.3f} ms, "
                  f"penni compressed {comp:.3f} ms: {row['speedup_compressed_vs_ort']:.2f}x faster than ort dense "
                  f"(model {row['model_gain']:.2f}x, engine {row['engine_gain']:.2f}x)", flush=True)
load_end = os.getloadavg()

machine = {"cpu": platform.processor() or open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].split(":", 1)[1].strip(),
           "cores": os.cpu_count(), "reps": reps, "warmup": warmup, "passes": passes,
           "loadavg_start": load_start, "loadavg_end": load_end}
os.makedirs(out_dir, exist_ok=True)
write_table(machine, rows, out_dir)
