#!/usr/bin/env python3
"""Exports small but real CNNs from PyTorch with torch.onnx.export, as the ONNX fixtures that
crates/penni-cli/tests/torch_flow.rs imports, compresses and exports again.

The committed fixtures were written with torch 2.15.0 (the PyPI wheel, run on the CPU), onnx 1.22.0 and onnxscript 0.7.2:

  * <model>-torchscript-opset17.onnx  the classic TorchScript exporter (dynamo=False, opset 17)
  * <model>-dynamo-opset18.onnx       the dynamo exporter (dynamo=True, opset 18), as by default
                                      with its ONNX optimizer (optimize=True)
  * <model>-dynamo-noopt-opset18.onnx the dynamo exporter with optimize=False: BatchNorm2d not
                                      folded, zero conv biases built with Shape/Expand/CastLike,
                                      the flatten target built from Shape/Squeeze/Reshape/Concat

All are exported in eval mode with do_constant_folding=True and a dynamic batch dimension,
weights inside the file (external_data=False). Next to each .onnx file, <same name>.npy holds
torch's own output, model(x), on the fixed input input.npy (4 x 1 x 28 x 28).

Models (28 x 28 grey-scale input, 10 classes, so Fashion-MNIST fits):

  * resnet_mini: conv(bias=False)+BatchNorm2d+ReLU stem, a conv with bias + ReLU6 (Clip) +
    MaxPool2d, a residual basic block with an identity shortcut, one with a stride-2
    1x1-conv+BN shortcut, a BatchNorm2d after the last residual add (the exporters fold every
    BatchNorm2d that follows a conv into the conv; this one stays a BatchNormalization node),
    AdaptiveAvgPool2d(1), torch.flatten(x, 1), Linear.
  * vgg_mini: conv(bias)+ReLU, MaxPool2d, conv+BN+ReLU6, AvgPool2d, x.view(x.size(0), -1)
    (a flatten of a 16 x 7 x 7 map; the TorchScript exporter builds its target shape at run
    time from Shape/Gather/Unsqueeze/Concat), Linear, ReLU, Dropout, Linear.

Seeds are fixed, and the BatchNorm running statistics and affine parameters are randomised so
that a wrong BatchNorm folding would show in the outputs.

Regenerate (torch is not part of scripts/python-env.sh: it downloads several GB):

  python3.11 -m venv /tmp/torch-venv
  /tmp/torch-venv/bin/pip install torch==2.15.0 onnx==1.22.0 onnxscript==0.7.2 numpy
  /tmp/torch-venv/bin/python crates/penni-cli/tests/py/export_torch.py crates/penni-cli/tests/fixtures/torch

usage: export_torch.py OUT_DIR
"""
import os
import sys

import numpy as np
import onnx
import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetMini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.conv = nn.Conv2d(8, 8, 3, 1, 1, bias=True)
        self.act = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.bn = nn.BatchNorm2d(16)  # after a residual add: no conv to fold it into
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.pool(self.act(self.conv(self.stem(x))))
        x = self.bn(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class VggMini(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(inplace=True),
            nn.AvgPool2d(2, 2, ceil_mode=True),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 7 * 7, 32), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(32, classes))

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


MODELS = {"resnet_mini": ResNetMini, "vgg_mini": VggMini}


def randomise_bn(model, g):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


EXPORTS = [("torchscript-opset17", dict(dynamo=False)), ("dynamo-opset18", dict(dynamo=True, optimize=True)),
           ("dynamo-noopt-opset18", dict(dynamo=True, optimize=False))]


def export(model, x, path, dynamo, optimize=True):
    common = dict(input_names=["input"], output_names=["logits"], do_constant_folding=True)
    if dynamo:
        torch.onnx.export(model, (x,), path, dynamo=True, optimize=optimize, opset_version=18, external_data=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, **common)
    else:
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **common)
    onnx.checker.check_model(onnx.load(path), full_check=True)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    np.save(os.path.join(out, "input.npy"), x.numpy())
    for i, (name, cls) in enumerate(MODELS.items()):
        torch.manual_seed(100 + i)
        model = cls()
        randomise_bn(model, torch.Generator().manual_seed(200 + i))
        model.eval()
        with torch.no_grad():
            y = model(x).numpy()
        for tag, how in EXPORTS:
            base = os.path.join(out, f"{name}-{tag}")
            export(model, x, base + ".onnx", **how)
            np.save(base + ".npy", y)
            print(f"{base}.onnx: {os.path.getsize(base + '.onnx')} bytes")


if __name__ == "__main__":
    main()
