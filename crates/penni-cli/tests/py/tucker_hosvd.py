#!/usr/bin/env python3
"""Independent check of penni's Tucker-2 decomposition: for every k x k conv of DENSE.onnx and
its three-conv replacement in TUCKER.onnx (written by `penni decompose --method tucker`), the
weight that the three convs compose, U_out . core . U_in^T, must equal numpy's truncated HOSVD
of the dense weight at the same ranks (np.linalg.svd of the mode-N and mode-C unfoldings).
Prints the largest relative difference; exits non-zero above 1e-4.
usage: tucker_hosvd.py DENSE.onnx TUCKER.onnx"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def convs(path):
    g = onnx.load(path).graph
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumer = {}
    for n in g.node:
        for i in n.input:
            consumer.setdefault(i, n)
    conv = [n for n in g.node if n.op_type == "Conv"]
    return w, producer, consumer, conv


def hosvd(w, r_out, r_in):
    n, c = w.shape[:2]
    u_out = np.linalg.svd(w.reshape(n, -1), full_matrices=False)[0][:, :r_out]
    u_in = np.linalg.svd(w.transpose(1, 0, 2, 3).reshape(c, -1), full_matrices=False)[0][:, :r_in]
    # projection onto the two subspaces: P_out W P_in
    return np.einsum("ar,br,bc...->ac...", u_out, u_out, np.einsum("nc...,cs,ds->nd...", w, u_in, u_in))


def main(dense_path, tucker_path):
    dw, _, _, dconv = convs(dense_path)
    tw, tprod, tcons, tconv = convs(tucker_path)
    spatial = [n for n in dconv if dw[n.input[1]].shape[2] * dw[n.input[1]].shape[3] > 1]
    cores = [n for n in tconv if tw[n.input[1]].shape[2] * tw[n.input[1]].shape[3] > 1]
    if len(spatial) != len(cores) or not cores:
        sys.exit(f"{len(spatial)} k x k convs in the dense model, {len(cores)} cores in the Tucker model")
    worst = 0.0
    for d, core in zip(spatial, cores):
        w = dw[d.input[1]]
        first, last = tprod[core.input[0]], tcons[core.output[0]]
        u_in_t = tw[first.input[1]][:, :, 0, 0]  # R_in x C
        u_out = tw[last.input[1]][:, :, 0, 0]  # N x R_out
        g = tw[core.input[1]]  # R_out x R_in x kh x kw
        composed = np.einsum("nr,rs...,sc->nc...", u_out, g, u_in_t)
        reference = hosvd(w, g.shape[0], g.shape[1])
        diff = np.abs(composed - reference).max() / np.abs(w).max()
        print(f"{d.name}: ranks ({g.shape[1]}, {g.shape[0]}), relative difference {diff:.2e}")
        worst = max(worst, diff)
    print(f"largest relative difference {worst:.2e}")
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
