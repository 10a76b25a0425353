#!/usr/bin/env python3
"""Runs a command and writes its wall time, CPU time (user + sys of the command and its children,
from getrusage), CPU utilisation (CPU time / wall), peak RSS and the load average before and
after to a JSON file: `timed.py OUT.json -- CMD ARGS...`. The command's output passes through."""

import json
import os
import resource
import subprocess
import sys
import time

out, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
assert sep == "--" and cmd, __doc__
load_before = os.getloadavg()
t = time.perf_counter()
rc = subprocess.call(cmd)
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
rec = {
    "cmd": cmd,
    "rc": rc,
    "wall_s": wall,
    "user_s": ru.ru_utime,
    "sys_s": ru.ru_stime,
    "cpu_util": (ru.ru_utime + ru.ru_stime) / wall,
    "max_rss_mib": ru.ru_maxrss / 1024,
    "load_before": load_before,
    "load_after": os.getloadavg(),
}
with open(out, "w") as f:
    json.dump(rec, f)
    f.write("\n")
print(f"[timed] wall {wall:.1f}s cpu {ru.ru_utime + ru.ru_stime:.1f}s ({rec['cpu_util'] * 100:.0f}%) "
      f"load {load_before[0]:.2f} -> {rec['load_after'][0]:.2f} rc {rc}", file=sys.stderr)
sys.exit(rc)
