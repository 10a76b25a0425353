#!/usr/bin/env python3
"""Runs ONNX models with onnxruntime: for each (model.onnx, input.npy, output.npy) triple on the
command line, checks the model with onnx.checker, runs it on the input and saves the output.
Used by tests/onnxruntime.rs; needs the environment from scripts/python-env.sh."""
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main(args):
    if len(args) % 3 != 0 or not args:
        sys.exit("usage: ort_run.py MODEL.onnx INPUT.npy OUTPUT.npy [MODEL INPUT OUTPUT ...]")
    for model_path, in_path, out_path in zip(args[0::3], args[1::3], args[2::3]):
        onnx.checker.check_model(onnx.load(model_path), full_check=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        x = np.load(in_path)
        (name,) = [i.name for i in sess.get_inputs()]
        (y,) = sess.run(None, {name: x})
        np.save(out_path, np.ascontiguousarray(y, dtype=np.float32))
    print(f"onnxruntime {ort.__version__}: ran {len(args) // 3} model(s)")


if __name__ == "__main__":
    main(sys.argv[1:])
