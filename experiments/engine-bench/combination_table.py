"""Tabulates combination.sh's run.log: per layer and batch, the median over passes of each
layout's criterion median time (both layouts do the same useful MACs, so the time ratio is the
inverse MAC-rate ratio), the packed/CSR ratio, the fill (CSR terms / packed slots) and the
layout the planner's rule picks."""
import re
import statistics
import sys

UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def main(path):
    times, info, header = {}, {}, []
    case = None
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.startswith("# "):
            header.append(line[2:])
            continue
        m = re.match(r"^layer (\S+) (b\d+): (.*) \| auto (\w+)$", line)
        if m:
            name, batch, step, auto = m.groups()
            nnz = int(re.search(r" nnz(\d+)", step).group(1))
            slots = int(re.search(r" packed2x(\d+)", step).group(1))
            info[(name, batch)] = (nnz, slots, auto)
            continue
        m = re.match(r"^(\S+)/(csr|packed)/(b\d+)", line)
        if m:
            case = m.groups()
        m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)
        if m and case:
            name, form, batch = case
            times.setdefault((name, batch, form), []).append(float(m.group(1)) * UNITS[m.group(2)])
            case = None
    print("Combination stage: CSR against rows packed in pairs, real layers of experiments/fidelity")
    print()
    for h in header:
        print(f"- {h}")
    print()
    print("| layer | batch | CSR us | packed us | packed / CSR time | fill | rule picks |")
    print("|---|---|---|---|---|---|---|")
    wins = 0
    for (name, batch), (nnz, slots, auto) in info.items():
        c = times.get((name, batch, "csr"))
        p = times.get((name, batch, "packed"))
        if not c or not p:
            continue
        cm, pm = statistics.median(c), statistics.median(p)
        faster = "packed" if pm < cm else "csr"
        wins += auto == faster
        print(f"| {name} | {batch} | {cm * 1e6:.1f} | {pm * 1e6:.1f} | {pm / cm:.2f} | {nnz / max(slots, 1):.2f} | {auto} |")
    print()
    print(f"The rule picked the faster layout in {wins} of {len(info)} cases (medians over {len(next(iter(times.values()), []))} passes).")


if __name__ == "__main__":
    main(sys.argv[1])
