#!/usr/bin/env python3
"""Times one onnxruntime configuration in a fresh process and prints one JSON line.
usage: ort_bench.py MODEL.onnx BATCH THREADS REPS WARMUP"""
import json
import resource
import statistics
import sys
import time


def rss_now():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main(model, batch, threads, reps, warmup):
    import numpy as np
    import onnxruntime as ort

    base = rss_now()  # interpreter + numpy + onnxruntime loaded, no model yet
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [batch] + [d for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "runtime": "onnxruntime " + ort.__version__, "batch": batch, "threads": threads,
        "median_ms": statistics.median(ms), "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "peak_rss_bytes": peak, "baseline_rss_bytes": base, "inference_bytes": peak - base,
    }))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]))
