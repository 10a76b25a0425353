#!/usr/bin/env python3
"""Collects every committed result of the validation protocol (experiments/fidelity/MODEL/) into
experiments/penni-fmnist/results.json and renders its table into results-validation.md there
and into README.md (between the results-validation markers). Nothing here is measured: it reads the logs, reports and metrics the runs wrote.

    python3 experiments/fidelity/results.py          # rewrite results.json and the table
    python3 experiments/fidelity/results.py --check  # fail if either is stale (CI-friendly)

Each entry: model, variant, baseline / compressed / fair_baseline (.penni paths in the repo),
val_top1 and test_top1 (baseline, compressed, fair baseline), params_paper and macs_paper
(baseline, compressed), epochs per stage, wall_seconds per stage, and the issue-12 targets.
"""
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT_JSON = os.path.join(ROOT, "experiments", "penni-fmnist", "results.json")
OUT_MD = os.path.join(ROOT, "experiments", "penni-fmnist", "results-validation.md")
README = os.path.join(ROOT, "README.md")
BEGIN, END = "<!-- results-validation:begin -->", "<!-- results-validation:end -->"
FINAL = re.compile(r"final: validation top-1 ([\d.]+)%, test top-1 ([\d.]+)%")
TARGETS = {"params_removed": 0.90, "macs_removed": 0.85, "max_test_drop_points": 0.3}


def rel(p):
    return os.path.relpath(p, ROOT)


def final_line(log):
    """(validation, test) top-1 from the last `final:` line of a `penni train` log."""
    if not os.path.exists(log):
        return None
    found = None
    with open(log) as f:
        for line in f:
            m = FINAL.search(line)
            if m:
                found = (float(m.group(1)) / 100, float(m.group(2)) / 100)
    return found


def epochs_and_seconds(metrics):
    if not os.path.exists(metrics):
        return None, None
    rows = [json.loads(l) for l in open(metrics) if l.strip()]
    return len(rows), round(sum(r.get("seconds", 0.0) for r in rows), 1)


def phase_seconds(progress):
    """Wall seconds per phase from a compression run's progress.jsonl (last start to done)."""
    if not os.path.exists(progress):
        return None
    start, out = {}, {}
    for line in open(progress):
        e = json.loads(line)
        if e["event"] == "phase_start":
            start[e["phase"]] = e["time"]
        elif e["event"] == "phase_done" and e["phase"] in start:
            out[e["phase"]] = round(e["time"] - start[e["phase"]], 1)
    return out


def config_epochs(config):
    out, section = {}, None
    for line in open(config):
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        m = re.match(r"epochs\s*=\s*(\d+)", line)
        if m and section in ("retrain", "admm", "finetune"):
            out[section] = int(m.group(1))
    return out


def entry(model_dir, report_path):
    model = os.path.basename(model_dir)
    stem = os.path.basename(report_path)[len("report"):-len(".json")]  # "" or "-budget"
    variant = stem.lstrip("-") or "plain"
    compressed = os.path.join(model_dir, f"penni{stem}.penni")
    if not os.path.exists(compressed):
        return None
    report = json.load(open(report_path))
    if not report.get("test"):
        return None  # not finished: the test set is measured after the last phase
    phases = {p["phase"]: p for p in report["phases"]}
    base, last = phases["baseline"], report["phases"][-1]
    base_final = final_line(os.path.join(model_dir, "baseline.log"))
    fair = final_line(os.path.join(model_dir, "baseline-extra.log"))
    fair_model = os.path.join(model_dir, "baseline-extra.penni")
    base_epochs, base_secs = epochs_and_seconds(os.path.join(model_dir, "baseline-metrics.jsonl"))
    fair_epochs, fair_secs = epochs_and_seconds(os.path.join(model_dir, "baseline-extra-metrics.jsonl"))
    config = os.path.join(HERE, f"config-{model}{stem}.toml")
    ep = config_epochs(config) if os.path.exists(config) else {}
    secs = phase_seconds(os.path.join(model_dir, f"penni{stem}.run", "progress.jsonl"))
    test_base, test_comp = report["test"]["baseline_top1"], report["test"]["final_top1"]
    reference = fair[1] if fair and os.path.exists(fair_model) else None
    pr = 1 - last["cost"]["params_paper"] / base["cost"]["params_paper"]
    mr = 1 - last["cost"]["macs_paper"] / base["cost"]["macs_paper"]
    drop = ((reference if reference is not None else test_base) - test_comp) * 100
    budget = report.get("budget") or {}
    target = budget.get("target") or (
        {"macs_fraction": budget["target_macs_fraction"]} if "target_macs_fraction" in budget else None
    )
    if target and "macs_fraction" in target:
        variant += f" (MACs <= {target['macs_fraction'] * 100:g}%)"
    elif target and "latency_ms" in target:
        variant += f" (latency <= {target['latency_ms']['ms']} ms)"
    return {
        "model": model,
        "variant": variant,
        "protocol": "validation split of 5,000 training images for every in-pipeline figure; test set measured once, at the end",
        "config": rel(config) if os.path.exists(config) else None,
        "baseline": rel(os.path.join(model_dir, "baseline.penni")),
        "compressed": rel(compressed),
        "fair_baseline": rel(fair_model) if reference is not None else None,
        "val_top1": {
            "baseline": base["top1"],
            "compressed": last["top1"],
            "fair_baseline": fair[0] if reference is not None else None,
        },
        "test_top1": {"baseline": test_base, "compressed": test_comp, "fair_baseline": reference},
        "params_paper": {"baseline": base["cost"]["params_paper"], "compressed": last["cost"]["params_paper"]},
        "macs_paper": {"baseline": base["cost"]["macs_paper"], "compressed": last["cost"]["macs_paper"]},
        "epochs": {
            "baseline": base_epochs,
            "retrain": ep.get("retrain"),
            "admm": ep.get("admm"),
            "finetune": ep.get("finetune"),
            "fair_baseline_extra": fair_epochs if reference is not None else None,
        },
        "wall_seconds": {
            "baseline": base_secs,
            "compress": round(sum(secs.values()), 1) if secs else None,
            "compress_phases": secs,
            "fair_baseline_extra": fair_secs if reference is not None else None,
        },
        "removed": {"params_paper": round(pr, 4), "macs_paper": round(mr, 4)},
        "test_change_points": round(-drop, 2),
        "compared_with": "fair baseline" if reference is not None else "baseline (fair baseline not finished)",
        "targets_met": {
            "params": pr >= TARGETS["params_removed"],
            "macs": mr >= TARGETS["macs_removed"],
            "accuracy": drop <= TARGETS["max_test_drop_points"],
        },
    }


def table(results):
    lines = [
        "| model | variant | test top-1: baseline (fair baseline) -> compressed | change vs comparison | val top-1 baseline -> compressed | params (paper) | MACs (paper) | epochs (base + retrain or ADMM + finetune) | targets 90% / 85% / -0.3 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t, v = r["test_top1"], r["val_top1"]
        fair = f" ({t['fair_baseline'] * 100:.2f}%)" if t["fair_baseline"] is not None else " (fair: not yet)"
        p, m, e = r["params_paper"], r["macs_paper"], r["epochs"]
        met = r["targets_met"]
        lines.append(
            f"| {r['model']} | {r['variant']} | {t['baseline'] * 100:.2f}%{fair} -> {t['compressed'] * 100:.2f}% "
            f"| {r['test_change_points']:+.2f} vs {r['compared_with']} "
            f"| {v['baseline'] * 100:.2f}% -> {v['compressed'] * 100:.2f}% "
            f"| {p['baseline']:,} -> {p['compressed']:,} ({r['removed']['params_paper'] * 100:.1f}% removed) "
            f"| {m['baseline'] / 1e6:.2f}M -> {m['compressed'] / 1e6:.2f}M ({r['removed']['macs_paper'] * 100:.1f}% removed) "
            f"| {e['baseline']} + {e['retrain'] or e['admm']} + {e['finetune']} "
            f"| {'/'.join('yes' if met[k] else 'no' for k in ('params', 'macs', 'accuracy'))} |"
        )
    return "\n".join(lines) + "\n"


def main():
    results = []
    for model_dir in sorted(glob.glob(os.path.join(HERE, "*/"))):
        for report in sorted(glob.glob(os.path.join(model_dir, "report*.json"))):
            e = entry(model_dir.rstrip("/"), report)
            if e:
                results.append(e)
    text_json = json.dumps(results, indent=2) + "\n"
    text_md = (
        "<!-- generated by experiments/fidelity/results.py from experiments/fidelity/*/ -->\n"
        + "Validation protocol (issue 12): every in-pipeline figure on a 5,000-image validation split, "
        + "the test set measured once at the end. Paper-style counts. Logs, reports and commands: "
        + "`experiments/fidelity/`.\n\n"
        + table(results)
    )
    readme = open(README).read()
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        readme = head + BEGIN + "\n" + table(results) + END + rest.split(END, 1)[1]
    outputs = ((OUT_JSON, text_json), (OUT_MD, text_md), (README, readme))
    if "--check" in sys.argv:
        stale = [p for p, t in outputs if not os.path.exists(p) or open(p).read() != t]
        if stale:
            sys.exit(f"stale: {', '.join(map(rel, stale))}; rerun python3 experiments/fidelity/results.py")
        return
    for p, t in outputs:
        with open(p + ".tmp", "w") as f:
            f.write(t)
        os.replace(p + ".tmp", p)
    sys.stdout.write(text_md)


if __name__ == "__main__":
    main()
