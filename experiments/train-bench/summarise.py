#!/usr/bin/env python3
"""Summarises target/train-bench/rep*/ into results.json and results.md (medians over reps).

`summarise.py WORK_DIR OUT_DIR`. Every figure comes from a file of the run: *.time.json (timed.py:
wall, CPU, load average), dense.run/metrics.jsonl and compress.run/retrain/metrics.jsonl
(penni-train's per-epoch records with the time breakdown), torch-*.json (torch_bench.py)."""

import glob
import json
import os
import statistics
import sys

work, out = sys.argv[1], sys.argv[2]
# A run is "quiet" when the rest of the machine used less than this many cores meanwhile
# (timed.py's others_cpu_cores, from /proc/stat): other engineers build on the same 2 cores.
QUIET = 0.25
BUCKETS = ["data", "forward", "backward", "optimizer", "eval", "other", "checkpoint"]


def read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def penni_epoch(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    b = {k: r.get(f"{k}_seconds") for k in BUCKETS}
    b["epoch"] = r["seconds"] + (r.get("checkpoint_seconds") or 0.0)
    b["eval_data"], b["eval_forward"] = r.get("eval_data_seconds"), r.get("eval_forward_seconds")
    b["train_loss"], b["test_top1"] = r["train_loss"], r["test_top1"]
    return b


def torch_epoch(res):
    if res is None:
        return None
    e = res["epochs"][-1]
    b = {k: e.get(k) for k in ["data", "forward", "backward", "optimizer", "other"]}
    b["eval"] = e["eval"]
    b["checkpoint"] = None
    b["epoch"] = e["train_seconds"] + e["eval"]
    b["train_loss"], b["test_top1"] = e["train_loss"], [v for v in res["evals"] if v["after"] == "epoch"][-1]["top1"]
    return b


reps = []
for d in sorted(glob.glob(os.path.join(work, "rep*")), key=lambda p: int(p.rsplit("rep", 1)[1])):
    reps.append(
        {
            "rep": os.path.basename(d),
            "dense": {
                "penni": {"job": read_json(f"{d}/penni-dense.time.json"), "epoch": penni_epoch(f"{d}/dense.run/metrics.jsonl")},
                "torch": {"job": read_json(f"{d}/torch-dense.time.json"), "epoch": torch_epoch(read_json(f"{d}/torch-dense.json"))},
            },
            "penni": {
                "penni": {
                    "job": read_json(f"{d}/penni-compress.time.json"),
                    "epoch": penni_epoch(f"{d}/compress.run/retrain/metrics.jsonl"),
                },
                "torch": {"job": read_json(f"{d}/torch-penni.time.json"), "epoch": torch_epoch(read_json(f"{d}/torch-penni.json"))},
            },
        }
    )


def med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def quiet(job):
    return job is not None and job.get("others_cpu_cores") is not None and job["others_cpu_cores"] < QUIET


summary = {}
for task in ["dense", "penni"]:
    s = {}
    for side in ["penni", "torch"]:
        jobs = [r[task][side]["job"] for r in reps if r[task][side]["job"]]
        epochs = [r[task][side]["epoch"] for r in reps if r[task][side]["epoch"]]
        qjobs = [r[task][side]["job"] for r in reps if quiet(r[task][side]["job"])]
        qepochs = [r[task][side]["epoch"] for r in reps if quiet(r[task][side]["job"]) and r[task][side]["epoch"]]
        s[side] = {
            "quiet_runs": len(qjobs),
            "quiet_wall_s": med([j["wall_s"] for j in qjobs]),
            "quiet_cpu_util": med([j["cpu_util"] for j in qjobs]),
            "quiet_epoch": {k: med([e[k] for e in qepochs]) for k in (BUCKETS + ["epoch"])},
            "others_cpu_cores": [round(j.get("others_cpu_cores", float("nan")), 2) for j in jobs],
            "runs": len(jobs),
            "wall_s": med([j["wall_s"] for j in jobs]),
            "cpu_util": med([j["cpu_util"] for j in jobs]),
            "load_before": [round(j["load_before"][0], 2) for j in jobs],
            "epoch": {k: med([e[k] for e in epochs]) for k in (BUCKETS + ["epoch", "train_loss", "test_top1"])},
        }
        if side == "penni":
            s[side]["epoch"]["eval_data"] = med([e["eval_data"] for e in epochs])
            s[side]["epoch"]["eval_forward"] = med([e["eval_forward"] for e in epochs])
    ratios = [
        r[task]["penni"]["job"]["wall_s"] / r[task]["torch"]["job"]["wall_s"]
        for r in reps
        if r[task]["penni"]["job"] and r[task]["torch"]["job"]
    ]
    s["ratio_per_rep"] = [round(x, 2) for x in ratios]
    s["ratio_median"] = med(ratios)
    s["ratio_of_medians"] = (s["penni"]["wall_s"] / s["torch"]["wall_s"]) if s["penni"]["wall_s"] and s["torch"]["wall_s"] else None
    qp, qt = s["penni"]["quiet_wall_s"], s["torch"]["quiet_wall_s"]
    s["quiet_ratio_of_medians"] = qp / qt if qp and qt else None
    summary[task] = s

with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"summary": summary, "reps": reps}, f, indent=1)
    f.write("\n")


def fmt(x, p=1):
    return "-" if x is None else f"{x:.{p}f}"


names = {"dense": "(a) dense training: `penni train`", "penni": "(b) PENNI retraining: `penni compress`"}
lines = [
    "# train-bench results",
    "",
    f"Medians over {len(reps)} repetitions; written by summarise.py from target/train-bench/ (see run.log).",
    "Wall = the whole process (data loading to the written model), from timed.py; CPU = (user+sys)/wall.",
    "",
    f"Others = cores the rest of the machine used during the run (/proc/stat); quiet = others < {QUIET}.",
    "",
    "All runs:",
    "",
    "| job | penni wall s | PyTorch wall s | penni / PyTorch | per rep | penni CPU | PyTorch CPU | load avg before (penni; torch) | others, cores (penni; torch) |",
    "|---|---|---|---|---|---|---|---|---|",
]
for task in ["dense", "penni"]:
    s = summary[task]
    lines.append(
        f"| {names[task]} | {fmt(s['penni']['wall_s'])} | {fmt(s['torch']['wall_s'])} | {fmt(s['ratio_median'], 2)} | "
        f"{', '.join(str(x) for x in s['ratio_per_rep'])} | {fmt(s['penni']['cpu_util'] and s['penni']['cpu_util'] * 100, 0)}% | "
        f"{fmt(s['torch']['cpu_util'] and s['torch']['cpu_util'] * 100, 0)}% | {s['penni']['load_before']}; {s['torch']['load_before']} | "
        f"{s['penni']['others_cpu_cores']}; {s['torch']['others_cpu_cores']} |"
    )
lines += [
    "",
    "Quiet runs only (medians of the runs with others < QUIET; n = how many):",
    "",
    "| job | penni wall s (n) | PyTorch wall s (n) | penni / PyTorch | penni CPU | PyTorch CPU | penni epoch s | PyTorch epoch s |",
    "|---|---|---|---|---|---|---|---|",
]
for task in ["dense", "penni"]:
    s = summary[task]
    p, t = s["penni"], s["torch"]
    lines.append(
        f"| {names[task]} | {fmt(p['quiet_wall_s'])} ({p['quiet_runs']}) | {fmt(t['quiet_wall_s'])} ({t['quiet_runs']}) | "
        f"{fmt(s['quiet_ratio_of_medians'], 2)} | {fmt(p['quiet_cpu_util'] and p['quiet_cpu_util'] * 100, 0)}% | "
        f"{fmt(t['quiet_cpu_util'] and t['quiet_cpu_util'] * 100, 0)}% | {fmt(p['quiet_epoch']['epoch'])} | {fmt(t['quiet_epoch']['epoch'])} |"
    )
lines += [
    "",
    "Per-epoch breakdown (seconds, medians of all runs): penni from metrics.jsonl (EpochRecord), PyTorch from torch_bench.py's buckets.",
    "",
    "| job | side | data | forward | backward | optimizer | eval | other | checkpoint | epoch total | train loss | test top-1 |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for task in ["dense", "penni"]:
    for side in ["penni", "torch"]:
        e = summary[task][side]["epoch"]
        lines.append(
            f"| {task} | {side} | "
            + " | ".join(fmt(e[k]) for k in BUCKETS)
            + f" | {fmt(e['epoch'])} | {fmt(e['train_loss'], 3)} | {fmt(e['test_top1'] and e['test_top1'] * 100, 1)}% |"
        )
with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
