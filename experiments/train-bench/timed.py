#!/usr/bin/env python3
"""Runs a command and writes its wall time, CPU time (user + sys of the command and its children,
from getrusage), CPU utilisation (CPU time / wall), peak RSS, the load average before and after,
and the CPU the rest of the machine used meanwhile (busy time in /proc/stat minus the command's
own, in cores: 0 = a quiet machine, 1 = another job kept one core busy) to a JSON file:
`timed.py OUT.json -- CMD ARGS...`. The command's output passes through."""

import json
import os
import resource
import subprocess
import sys
import time

out, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
assert sep == "--" and cmd, __doc__
tick = os.sysconf("SC_CLK_TCK")


def busy_seconds():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
    return (sum(v[:8]) - v[3] - v[4]) / tick


load_before = os.getloadavg()
busy0 = busy_seconds()
t = time.perf_counter()
rc = subprocess.call(cmd)
wall = time.perf_counter() - t
busy = busy_seconds() - busy0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
ours = ru.ru_utime + ru.ru_stime
rec = {
    "cmd": cmd,
    "rc": rc,
    "wall_s": wall,
    "user_s": ru.ru_utime,
    "sys_s": ru.ru_stime,
    "cpu_util": ours / wall,
    "others_cpu_cores": max(busy - ours, 0.0) / wall,
    "max_rss_mib": ru.ru_maxrss / 1024,
    "load_before": load_before,
    "load_after": os.getloadavg(),
}
with open(out, "w") as f:
    json.dump(rec, f)
    f.write("\n")
print(
    f"[timed] wall {wall:.1f}s cpu {ours:.1f}s ({rec['cpu_util'] * 100:.0f}%) others {rec['others_cpu_cores']:.2f} cores "
    f"load {load_before[0]:.2f} -> {rec['load_after'][0]:.2f} rc {rc}",
    file=sys.stderr,
)
sys.exit(rc)
