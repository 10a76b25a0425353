#!/usr/bin/env python3
"""Makes a runnable copy of an ONNX model zoo 'light' model (onnx/backend/test/data/light):
their weights are ConstantOfShape nodes that fill every tensor with one value, which hides
most mistakes. Each becomes a random initializer instead: conv and Gemm weights scaled like
Kaiming initialisation, batchnorm scales and variances in [0.5, 1.5], biases and means small.
A final Softmax is dropped so that the comparison sees the logits (a saturated softmax would
compare almost nothing).

Usage: randomize_light.py IN.onnx OUT.onnx SEED
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper

src, dst, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = onnx.load(src)
graph = model.graph
rng = np.random.default_rng(seed)
consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

role = {}
for n in graph.node:
    if n.op_type in ("Conv", "Gemm") and len(n.input) > 1:
        role[n.input[1]] = n.op_type
        if len(n.input) > 2:
            role[n.input[2]] = "small"
    if n.op_type == "BatchNormalization":
        role[n.input[1]] = role[n.input[4]] = "positive"
        role[n.input[2]] = role[n.input[3]] = "small"

nodes = []
for n in graph.node:
    if n.op_type != "ConstantOfShape" or n.input[0] not in consts:
        nodes.append(n)
        continue
    shape = [int(d) for d in consts[n.input[0]]]
    r = role.get(n.output[0], "positive")
    if r == "Conv":
        v = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif r == "Gemm":
        v = rng.standard_normal(shape) * np.sqrt(1.0 / shape[-1])
    elif r == "small":
        v = rng.standard_normal(shape) * 0.1
    else:
        v = rng.uniform(0.5, 1.5, shape)
    graph.initializer.append(numpy_helper.from_array(v.astype(np.float32), n.output[0]))

last = nodes[-1]
if last.op_type == "Softmax" and last.output[0] == graph.output[0].name:
    nodes.pop()
    graph.output[0].name = last.input[0]  # same shape: softmax keeps it
del graph.node[:]
graph.node.extend(nodes)
# IR 3 wants every initializer listed as a graph input; from IR 4 on they need not be
model.ir_version = max(model.ir_version, 4)
onnx.save(model, dst)
