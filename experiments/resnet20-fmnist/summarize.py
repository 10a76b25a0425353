#!/usr/bin/env python3
"""Writes results.md from metrics.jsonl (one JSON line per epoch, written by `penni train`)."""
import json
import os

here = os.path.dirname(os.path.abspath(__file__))
rows = [json.loads(l) for l in open(os.path.join(here, "metrics.jsonl")) if l.strip()]
with open(os.path.join(here, "results.md"), "w") as f:
    f.write("| epoch | lr | train loss | train top-1 | test loss | test top-1 | seconds |\n|---|---|---|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['epoch'] + 1} | {r['lr']:.4f} | {r['train_loss']:.4f} | {100 * r['train_top1']:.2f}% | "
                f"{r['test_loss']:.4f} | {100 * r['test_top1']:.2f}% | {r['seconds']:.0f} |\n")
    secs = sorted(r["seconds"] for r in rows)
    f.write(f"\nFinal test top-1: **{100 * rows[-1]['test_top1']:.2f}%** after {len(rows)} epochs; "
            f"median {secs[len(secs) // 2]:.0f} s per epoch (including the test-set evaluation).\n")
print(open(os.path.join(here, "results.md")).read())
