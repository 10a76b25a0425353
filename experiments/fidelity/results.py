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
OUT_SVG = os.path.join(ROOT, "experiments", "penni-fmnist", "results-validation.svg")
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


def latencies():
    """Speed-ups over onnxruntime on the dense model, by benchmarked model name, from the side-by-
    side runs of experiments/engine-bench/fidelity*.sh (a later run of a model replaces an
    earlier one): {name: {"batch 1": x, "batch 64": y, "source": dir}} at 1 thread."""
    out = {}
    bench = os.path.join(ROOT, "experiments", "engine-bench")
    for d in sorted(os.listdir(bench)):
        path = os.path.join(bench, d, "results.json")
        if not (d.startswith("fidelity-") and os.path.exists(path)):
            continue
        for row in json.load(open(path))["rows"]:
            if row["threads"] == 1:
                e = out.setdefault(row["model"], {})
                e[f"batch {row['batch']}"] = round(row["speedup_compressed_vs_ort"], 2)
                e["source"] = rel(path)
    return out


LATENCY = latencies()


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
    config = os.path.join(HERE, f"config-{model}{stem}.toml")
    ep = config_epochs(config) if os.path.exists(config) else {}
    # the fair baseline trained as many extra epochs as this compression (run.sh names it)
    plain = config_epochs(os.path.join(HERE, f"config-{model}.toml"))
    fair_stem = "baseline-extra" if sum(ep.values()) == sum(plain.values()) else f"baseline-extra-{sum(ep.values())}"
    fair = final_line(os.path.join(model_dir, f"{fair_stem}.log"))
    fair_model = os.path.join(model_dir, f"{fair_stem}.penni")
    base_epochs, base_secs = epochs_and_seconds(os.path.join(model_dir, "baseline-metrics.jsonl"))
    fair_epochs, fair_secs = epochs_and_seconds(os.path.join(model_dir, f"{fair_stem}-metrics.jsonl"))
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
        "speedup_vs_onnxruntime_dense_1_thread": LATENCY.get(f"{model}-penni{stem}"),
        "test_change_points": round(-drop, 2),
        "compared_with": "fair baseline" if reference is not None else "baseline (fair baseline not finished)",
        "targets_met": {
            "params": pr >= TARGETS["params_removed"],
            "macs": mr >= TARGETS["macs_removed"],
            "accuracy": drop <= TARGETS["max_test_drop_points"],
        },
    }


def speed(s):
    return f"{s['batch 1']:.2f}x / {s['batch 64']:.2f}x" if s and "batch 1" in s and "batch 64" in s else "not measured"


def table(results):
    lines = [
        "| model | variant | test top-1: baseline (fair baseline) -> compressed | change vs comparison | val top-1 baseline -> compressed | params (paper) | MACs (paper) | epochs (base + retrain or ADMM + finetune) | speed-up over onnxruntime dense, batch 1 / 64 | targets 90% / 85% / -0.3 |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            f"| {speed(r['speedup_vs_onnxruntime_dense_1_thread'])} "
            f"| {'/'.join('yes' if met[k] else 'no' for k in ('params', 'macs', 'accuracy'))} |"
        )
    return "\n".join(lines) + "\n"


def chart(results):
    """SVG scatter: MACs removed (x) against the test top-1 change vs the comparison (y), one
    marker per run, a colour per model and a shape per method; the target box shaded."""
    w, h, left, bottom, top, right = 640, 380, 60, 50, 20, 170
    x0, x1 = 80.0, 100.0
    ys = [r["test_change_points"] for r in results] + [0.5]
    y0, y1 = min(ys + [-2.5]) - 0.2, max(ys) + 0.2
    px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)
    py = lambda y: top + (y1 - y) / (y1 - y0) * (h - top - bottom)
    colours = {"resnet20": "#1f77b4", "vgg16": "#d62728", "vgg16avg": "#ff7f0e", "resnet18": "#2ca02c", "resnet18w50": "#9467bd"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>',
           # the target: >= 85% of MACs removed, no more than 0.3 points lost
           f'<rect x="{px(85):.1f}" y="{py(y1):.1f}" width="{px(x1) - px(85):.1f}" height="{py(-0.3) - py(y1):.1f}" fill="#e8f4e8"/>',
           f'<text x="{px(85) + 4:.1f}" y="{py(y1) + 12:.1f}" fill="#3a7a3a">target (85% MACs, -0.3 points)</text>']
    for x in range(80, 101, 5):
        out.append(f'<line x1="{px(x):.1f}" y1="{py(y0):.1f}" x2="{px(x):.1f}" y2="{py(y1):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{px(x):.1f}" y="{h - bottom + 15}" text-anchor="middle">{x}%</text>')
    y = int(y0)
    while y <= y1:
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{w - right}" y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:+d}</text>')
        y += 1
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">MACs removed (paper-style)</text>')
    out.append(f'<text x="14" y="{(top + h - bottom) / 2}" transform="rotate(-90 14 {(top + h - bottom) / 2})" text-anchor="middle">test top-1 change (points)</text>')
    for r in results:
        x, yv = r["removed"]["macs_paper"] * 100, r["test_change_points"]
        c = colours.get(r["model"], "#555")
        cx, cy = px(x), py(yv)
        if r["variant"].startswith("tucker"):
            out.append(f'<rect x="{cx - 5:.1f}" y="{cy - 5:.1f}" width="10" height="10" fill="{c}"/>')
        elif r["variant"].startswith("auto"):
            out.append(f'<path d="M{cx:.1f},{cy - 6:.1f} L{cx + 6:.1f},{cy + 5:.1f} L{cx - 6:.1f},{cy + 5:.1f} Z" fill="{c}"/>')
        else:
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{c}"/>')
    lx = w - right + 15
    for i, (m, c) in enumerate(colours.items()):
        out.append(f'<rect x="{lx}" y="{top + 10 + 16 * i}" width="10" height="10" fill="{c}"/><text x="{lx + 15}" y="{top + 19 + 16 * i}">{m}</text>')
    for i, (shape, name) in enumerate((("circle", "PENNI"), ("rect", "Tucker-2"), ("path", "auto"))):
        yy = top + 16 * len(colours) + 22 + 16 * i
        mark = {"circle": f'<circle cx="{lx + 5}" cy="{yy + 5}" r="5" fill="#555"/>',
                "rect": f'<rect x="{lx}" y="{yy}" width="10" height="10" fill="#555"/>',
                "path": f'<path d="M{lx + 5},{yy - 1} L{lx + 11},{yy + 10} L{lx - 1},{yy + 10} Z" fill="#555"/>'}[shape]
        out.append(mark + f'<text x="{lx + 15}" y="{yy + 9}">{name}</text>')
    note_y = top + 16 * len(colours) + 82
    out.append(f'<text x="{lx}" y="{note_y}" fill="#555">vs fair baseline,</text><text x="{lx}" y="{note_y + 14}" fill="#555">test measured once</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


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
        + "`experiments/fidelity/`. Speed-ups: penni's engine on the compressed model over onnxruntime on "
        + "the dense one, 1 thread, from `experiments/engine-bench/fidelity.sh` (`fidelity-*/results.md`).\n\n"
        + table(results)
    )
    readme = open(README).read()
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        readme = head + BEGIN + "\n" + table(results) + END + rest.split(END, 1)[1]
    outputs = ((OUT_JSON, text_json), (OUT_MD, text_md), (OUT_SVG, chart(results)), (README, readme))
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
