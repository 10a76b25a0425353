#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

Reads every `crate::a::b` path in crates/*/src (use lines and inline paths) and builds, per
crate, the graph top-level module -> top-level module. Sub-modules of one folder count as
their parent, since a folder is one unit of the crate's design.
"""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
bad = False
for src in sorted(root.glob("crates/*/src")):
    edges = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = rel.parts
        if parts[0] in ("lib", "main"):
            continue
        me = parts[0]
        # comments may name modules without using them
        text = re.sub(r"//[^\n]*", "", f.read_text())
        deps = set()
        for m in re.finditer(r"\bcrate::(\w+)", text):
            deps.add(m.group(1))
        # `use crate::{a, b::c}` groups
        for m in re.finditer(r"\bcrate::\{([^;]*)\}", text, re.S):
            deps.update(re.findall(r"(?:^|[,{\s])(\w+)(?=::|\s*[,}]|$)", m.group(1)))
        deps.discard(me)
        edges.setdefault(me, set()).update(d for d in deps if (src / f"{d}.rs").exists() or (src / d).is_dir())
    # depth-first search for a cycle
    state, stack = {}, []

    def visit(n):
        global bad
        state[n] = 1
        stack.append(n)
        for d in sorted(edges.get(n, ())):
            if state.get(d) == 1:
                print(f"{src.parent.name}: import circle: {' -> '.join(stack[stack.index(d):] + [d])}")
                bad = True
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
sys.exit(1 if bad else 0)
