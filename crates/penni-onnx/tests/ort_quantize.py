#!/usr/bin/env python3
"""Quantizes an f32 ONNX model with onnxruntime's own static quantization (QDQ format, int8
per-channel weights, uint8 activations, min/max calibration), as a user of onnxruntime would:
ort_quantize.py MODEL.onnx CALIBRATION.npy OUT.onnx. Used by tests/quantized.rs; needs the
environment from scripts/python-env.sh."""
import sys

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static


class Reader(CalibrationDataReader):
    def __init__(self, name, images):
        self.batches = iter([{name: images[i : i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self.batches, None)


def main(model, calib, out):
    import onnx

    name = onnx.load(model).graph.input[0].name
    quantize_static(
        model,
        out,
        Reader(name, np.load(calib)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    print(f"quantized {model} -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: ort_quantize.py MODEL.onnx CALIBRATION.npy OUT.onnx")
    main(*sys.argv[1:])
