#!/usr/bin/env python3
"""Chart of the hybrid trade-off: validation top-1 change (points) against bits per part, from
results.jsonl (weights: bases / coefficients, ResNet-20 PENNI models) and activations.jsonl
(activations, every weight 8 bits, three models). Writes bits.svg here.
Usage: python3 experiments/quantize/chart.py"""
import json
import os

here = os.path.dirname(os.path.abspath(__file__))
rows = []  # (group label, bar label, change)
for line in open(os.path.join(here, "results.jsonl")):
    r = json.loads(line)
    if r["phase"] != "sweep" or r["model"] != "resnet20/penni-budget":
        continue
    q = r["result"]
    b = q["bits"]
    if b["bases"] == 0:
        continue
    rows.append(("weights (ResNet-20): bases / coefficients bits", f"{b['bases']}/{b['coefficients']}",
                 (q["eval_top1_quantized"] - q["eval_top1_f32"]) * 100))
for line in open(os.path.join(here, "activations.jsonl")):
    r = json.loads(line)
    q = r["result"]
    b = q["bits"]
    if r["phase"] != "sweep" or b["activations"] == 0 or (b["activations"] == 8 and b["calibration"] != "min_max"):
        continue
    rows.append((f"activations ({r['model'].split('/')[0]}), weights 8", f"a{b['activations']}",
                 (q["eval_top1_quantized"] - q["eval_top1_f32"]) * 100))

w, bar, gap, left, top, h = 0, 22, 18, 70, 30, 300
groups = []
for g, label, v in rows:
    if not groups or groups[-1][0] != g:
        groups.append((g, []))
    groups[-1][1].append((label, v))
width = lambda bars: max(len(bars) * bar, 190)
w = left + sum(width(b) + gap for _, b in groups) + 20
lo = min(-10.0, min(v for _, _, v in rows))
py = lambda v: top + (0 - v) / (0 - lo) * (h - top - 60) if v < 0 else top
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 40}" font-family="sans-serif" font-size="10">',
       f'<rect width="{w}" height="{h + 40}" fill="white"/>',
       f'<text x="{left}" y="16" font-size="12">validation top-1 change (points) against bits per part; clipped at {lo:.0f}</text>']
for t in range(0, int(lo) - 1, -2):
    out.append(f'<line x1="{left}" x2="{w - 10}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#ddd"/>')
    out.append(f'<text x="{left - 5}" y="{py(t) + 3:.1f}" text-anchor="end">{t:+d}</text>')
out.append(f'<line x1="{left}" x2="{w - 10}" y1="{py(-0.3):.1f}" y2="{py(-0.3):.1f}" stroke="#3a7a3a" stroke-dasharray="4 3"/>')
x = left + 10
colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
for gi, (g, bars) in enumerate(groups):
    x0 = x
    x += (width(bars) - len(bars) * bar) / 2
    for label, v in bars:
        y = py(max(v, lo))
        out.append(f'<rect x="{x}" y="{py(0):.1f}" width="{bar - 4}" height="{max(y - py(0), 1):.1f}" fill="{colours[gi % 4]}"><title>{g} {label}: {v:+.2f}</title></rect>')
        out.append(f'<text x="{x + (bar - 4) / 2}" y="{h - 18}" text-anchor="middle">{label}</text>')
        x += bar
    out.append(f'<text x="{x0 + width(bars) / 2}" y="{h - 4}" text-anchor="middle" font-size="9">{g}</text>')
    x = x0 + width(bars) + gap
out.append("</svg>")
open(os.path.join(here, "bits.svg"), "w").write("\n".join(out) + "\n")
print("wrote", os.path.join(here, "bits.svg"))
