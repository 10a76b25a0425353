#!/usr/bin/env python3
"""Writes a small CNN with the pieces of mobile and multi-branch networks as an ONNX file
(opset 13, seeded random weights): HardSwish written as x * HardSigmoid(x) (as exporters before
opset 14 do), two branches joined by Concat, a squeeze-and-excitation block (global pool, 1x1
convs, Sigmoid, Mul), LeakyRelu, and a final Softmax.
usage: make_mobile_cnn.py OUT.onnx"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
inits, nodes = [], []


def weight(name, shape, scale):
    inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
    return name


def conv(x, out, cin, k, name):
    w = weight(name + ".weight", [out, cin, k, k], np.sqrt(2.0 / (cin * k * k)))
    b = weight(name + ".bias", [out], 0.1)
    nodes.append(helper.make_node("Conv", [x, w, b], [name], pads=[k // 2] * 4, name=name))
    return name


def op(kind, inputs, name, **attrs):
    nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
    return name


x = conv("input", 12, 1, 3, "stem")
x = op("Mul", [x, op("HardSigmoid", [x], "stem.gate", alpha=1 / 6, beta=0.5)], "stem.hswish")
x = op("Concat", [conv(x, 8, 12, 1, "branch1"), conv(x, 8, 12, 3, "branch3")], "concat", axis=1)
x = op("MaxPool", [op("Relu", [x], "relu")], "pool", kernel_shape=[2, 2], strides=[2, 2])
s = op("GlobalAveragePool", [x], "se.pool")
s = op("Sigmoid", [conv(op("Relu", [conv(s, 4, 16, 1, "se.reduce")], "se.relu"), 16, 4, 1, "se.expand")], "se.gate")
x = op("Mul", [x, s], "se.scale")
x = op("LeakyRelu", [conv(x, 24, 16, 3, "head")], "head.leaky", alpha=0.1)
x = op("Flatten", [op("GlobalAveragePool", [x], "gap")], "flatten")
fc = [weight("fc.weight", [10, 24], 0.3), weight("fc.bias", [10], 0.1)]
x = op("Gemm", [x] + fc, "fc", transB=1)
op("Softmax", [x], "prob", axis=1)

graph = helper.make_graph(
    nodes,
    "mobile_cnn",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
    [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 10])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="penni-test")
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
onnx.save(model, sys.argv[1])
