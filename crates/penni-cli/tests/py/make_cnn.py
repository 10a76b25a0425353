#!/usr/bin/env python3
"""Writes a small residual CNN as an ONNX file laid out the way torch.onnx.export writes one
(Conv with bias, BatchNormalization, Relu, MaxPool, residual Add, GlobalAveragePool, Flatten,
Gemm with transB=1, opset 13, weights as initializers), with seeded random weights.
usage: make_cnn.py OUT.onnx"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
inits, nodes = [], []


def const(name, arr):
    inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
    return name


def conv(x, name, cin, cout, k, stride=1, pad=1):
    w = rng.normal(0, (2.0 / (cin * k * k)) ** 0.5, (cout, cin, k, k))
    nodes.append(helper.make_node("Conv", [x, const(name + ".weight", w), const(name + ".bias", rng.normal(0, 0.05, cout))],
                                  [name], name="/" + name + "/Conv", kernel_shape=[k, k], strides=[stride, stride],
                                  pads=[pad] * 4, dilations=[1, 1], group=1))
    return name


def bn(x, name, c):
    ins = [x, const(name + ".weight", rng.uniform(0.5, 1.5, c)), const(name + ".bias", rng.normal(0, 0.1, c)),
           const(name + ".running_mean", rng.normal(0, 0.1, c)), const(name + ".running_var", rng.uniform(0.5, 1.5, c))]
    nodes.append(helper.make_node("BatchNormalization", ins, [name], name="/" + name + "/BatchNormalization", epsilon=1e-5, momentum=0.9))
    return name


def relu(x, name):
    nodes.append(helper.make_node("Relu", [x], [name], name="/" + name + "/Relu"))
    return name


x = relu(bn(conv("input", "conv1", 1, 8, 3), "bn1", 8), "relu1")
x = "pool1"
nodes.append(helper.make_node("MaxPool", ["relu1"], [x], name="/pool1/MaxPool", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]))
h = relu(bn(conv(x, "block.conv1", 8, 8, 3), "block.bn1", 8), "block.relu1")
h = bn(conv(h, "block.conv2", 8, 8, 3), "block.bn2", 8)
nodes.append(helper.make_node("Add", [h, x], ["block.add"], name="/block/Add"))
y = relu("block.add", "block.relu2")
y = relu(bn(conv(y, "conv3", 8, 16, 3, stride=2), "bn3", 16), "relu3")
nodes.append(helper.make_node("GlobalAveragePool", [y], ["gap"], name="/gap/GlobalAveragePool"))
nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="/Flatten", axis=1))
nodes.append(helper.make_node("Gemm", ["flat", const("fc.weight", rng.normal(0, 0.25, (10, 16))), const("fc.bias", rng.normal(0, 0.1, 10))],
                              ["logits"], name="/fc/Gemm", alpha=1.0, beta=1.0, transB=1))
graph = helper.make_graph(nodes, "main_graph",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
model = helper.make_model(graph, producer_name="pytorch", producer_version="2.13.0", opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 7
onnx.checker.check_model(model, full_check=True)
onnx.save(model, sys.argv[1])
