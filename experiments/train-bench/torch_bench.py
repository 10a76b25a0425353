#!/usr/bin/env python3
"""PyTorch CPU baseline for experiments/train-bench: the job `penni train` / `penni compress` do,
written the way a PyTorch user would, with the same network, data, augmentation and SGD.

  dense: ResNet-20 (penni's zoo `resnet20`, width 1) trained for --epochs on a Fashion-MNIST
         subset, then evaluated on the test subset (the job of `penni train`).
  penni: the job of `penni compress` with 1 retraining epoch and 0 fine-tuning epochs: baseline
         evaluation, SVD decomposition of every 3x3 conv (weight = coefficients x d shared bases,
         by einsum), evaluation, one retraining epoch with lambda * sum |coefficients| in the loss
         (epoch 0 of PENNI's alternation: coefficients train, bases frozen), evaluation inside the
         epoch and after the phase, pruning (|a| < s * std per layer, and 1x1 weights),
         evaluation after prune, fine-tune (0 epochs) and shrink, as penni evaluates after each.

Prints one JSON object (phase times in seconds) on the last line of stdout and to --json.
The training loop is timed in the same buckets as penni-train's EpochRecord; PyTorch's CPU
backend is eager, so the time between two instants is the time of the ops between them.
"""

import argparse
import gzip
import json
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    _, _, dtype, ndim = struct.unpack(">BBBB", raw[:4])
    assert dtype == 0x08, f"{path}: expected unsigned bytes"
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def load(data_dir, train_subset, test_subset, seed):
    xtr = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    ytr = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz")).long()
    xte = read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"))
    yte = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz")).long()
    g = torch.Generator().manual_seed(seed)
    if train_subset:
        i = torch.randperm(len(xtr), generator=g)[:train_subset]
        xtr, ytr = xtr[i], ytr[i]
    if test_subset:
        i = torch.randperm(len(xte), generator=g)[:test_subset]
        xte, yte = xte[i], yte[i]
    return xtr.unsqueeze(1), ytr, xte.unsqueeze(1), yte


# --- the network: penni-model's zoo::cifar_resnet(n = 3), layer for layer -------------------


class DecomposedConv(nn.Module):
    """A k x k conv whose weight is coefficients (out*in, d) x bases (d, k*k), as in penni's IR."""

    def __init__(self, conv, d):
        super().__init__()
        o, i, kh, kw = conv.weight.shape
        w = conv.weight.detach().reshape(o * i, kh * kw)
        # best rank-d fit (penni's init = "svd"): bases = top right singular vectors
        _, _, vt = torch.linalg.svd(w, full_matrices=False)
        bases = vt[:d].contiguous()
        self.coefficients = nn.Parameter(w @ bases.t())
        self.bases = nn.Parameter(bases)
        self.shape = (o, i, kh, kw)
        self.stride, self.padding = conv.stride, conv.padding

    def forward(self, x):
        w = torch.einsum("nd,dk->nk", self.coefficients, self.bases).reshape(self.shape)
        return F.conv2d(x, w, None, self.stride, self.padding)


def conv(cin, cout, k, stride):
    c = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
    return c


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv(cout, cout, 3, 1), nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNet20(nn.Module):
    def __init__(self, in_channels=1, classes=10, n=3):
        super().__init__()
        self.conv, self.bn = conv(in_channels, 16, 3, 1), nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, width in enumerate([16, 32, 64]):
            for b in range(n):
                blocks.append(Block(cin, width, 2 if stage > 0 and b == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def decompose(model, d):
    """Replaces every conv with k*k > 1 by its PENNI form; returns the decomposed layers."""
    layers = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.kernel_size[0] * child.kernel_size[1] > 1:
                dc = DecomposedConv(child, min(d, child.kernel_size[0] * child.kernel_size[1]))
                setattr(parent, name, dc)
                layers.append(dc)
    return layers


# --- data: the same augmentation as penni-data's BatchIter ---------------------------------


def batches(x, y, batch_size, mean, std, train, pad, flip, gen):
    """Yields normalised float batches; training: shuffled, drop_last, random crop + flip."""
    n = len(x)
    order = torch.randperm(n, generator=gen) if train else torch.arange(n)
    stop = n - n % batch_size if train else n
    for s in range(0, stop, batch_size):
        idx = order[s : s + batch_size]
        xb = x[idx]
        if train and (pad or flip):
            h, w = xb.shape[2], xb.shape[3]
            padded = F.pad(xb, (pad, pad, pad, pad)) if pad else xb
            dy = torch.randint(0, 2 * pad + 1, (len(idx),), generator=gen).tolist()
            dx = torch.randint(0, 2 * pad + 1, (len(idx),), generator=gen).tolist()
            fl = torch.randint(0, 2, (len(idx),), generator=gen).tolist()
            out = torch.empty_like(xb)
            for k in range(len(idx)):
                crop = padded[k, :, dy[k] : dy[k] + h, dx[k] : dx[k] + w]
                out[k] = crop.flip(-1) if flip and fl[k] else crop
            xb = out
        yield (xb.float() / 255.0 - mean) / std, y[idx]


def evaluate(model, x, y, mean, std):
    model.eval()
    hits, loss = 0, 0.0
    with torch.no_grad():
        for xb, yb in batches(x, y, 256, mean, std, False, 0, False, None):
            logits = model(xb)
            loss += F.cross_entropy(logits, yb, reduction="sum").item()
            hits += (logits.argmax(1) == yb).sum().item()
    model.train()
    return hits / len(x), loss / len(x)


def train_epoch(model, opt, x, y, mean, std, args, gen, l1_layers=(), lam=0.0):
    t = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0, "other": 0.0}
    started = time.perf_counter()
    model.train()
    loss_sum, hits, seen = 0.0, 0, 0
    it = batches(x, y, args.batch_size, mean, std, True, args.crop_padding, not args.no_flip, gen)
    while True:
        t0 = time.perf_counter()
        b = next(it, None)
        if b is None:
            break
        xb, yb = b
        t1 = time.perf_counter()
        logits = model(xb)
        ce = F.cross_entropy(logits, yb)
        loss = ce
        if lam > 0:
            loss = loss + lam * sum(layer.coefficients.abs().sum() for layer in l1_layers)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        ce_value = ce.item()
        loss_sum += ce_value * len(yb)
        hits += (logits.detach().argmax(1) == yb).sum().item()
        seen += len(yb)
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        t["data"] += t1 - t0
        t["forward"] += t2 - t1
        t["backward"] += t3 - t2
        t["other"] += t4 - t3
        t["optimizer"] += t5 - t4
    t["train_loss"] = loss_sum / seen
    t["train_top1"] = hits / seen
    t["train_seconds"] = time.perf_counter() - started
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["dense", "penni"], required=True)
    ap.add_argument("--data-dir", default=os.environ.get("PENNI_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--train-subset", type=int, default=12800)
    ap.add_argument("--test-subset", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--crop-padding", type=int, default=2)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d", type=int, default=5, help="bases per decomposed layer")
    ap.add_argument("--lam", type=float, default=1e-4, help="L1 strength on the coefficients")
    ap.add_argument("--prune-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="where to save the trained state_dict (as penni writes its model)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    job_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    xtr, ytr, xte, yte = load(args.data_dir, args.train_subset, args.test_subset, args.seed)
    # normalisation from the training split's statistics, as penni does without --mean/--std
    mean = (xtr.float() / 255.0).mean().item()
    std = (xtr.float() / 255.0).std().item()
    model = ResNet20(in_channels=xtr.shape[1], classes=int(ytr.max()) + 1)
    res = {
        "mode": args.mode,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_examples": len(xtr),
        "test_examples": len(xte),
        "setup_seconds": time.perf_counter() - job_start,
        "epochs": [],
        "evals": [],
    }

    def timed_eval(what):
        t = time.perf_counter()
        top1, loss = evaluate(model, xte, yte, mean, std)
        res["evals"].append({"after": what, "top1": top1, "loss": loss, "seconds": time.perf_counter() - t})
        return res["evals"][-1]["seconds"]

    def sgd(params):
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, nesterov=True, weight_decay=args.weight_decay)

    if args.mode == "dense":
        opt = sgd(model.parameters())
        for _ in range(args.epochs):
            e = train_epoch(model, opt, xtr, ytr, mean, std, args, gen)
            e["eval"] = timed_eval("epoch")
            res["epochs"].append(e)
    else:
        timed_eval("baseline")
        t = time.perf_counter()
        layers = decompose(model, args.d)
        res["decompose_seconds"] = time.perf_counter() - t
        timed_eval("decompose")
        # epoch 0 of the alternation: coefficients train, bases are frozen; all other parameters train
        for layer in layers:
            layer.bases.requires_grad_(False)
        opt = sgd([p for p in model.parameters() if p.requires_grad])
        for _ in range(args.epochs):
            e = train_epoch(model, opt, xtr, ytr, mean, std, args, gen, layers, args.lam)
            e["eval"] = timed_eval("epoch")
            res["epochs"].append(e)
        timed_eval("retrain")
        t = time.perf_counter()
        with torch.no_grad():
            for layer in layers:
                a = layer.coefficients
                a[a.abs() < args.prune_s * a.std()] = 0
            for m in model.modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
                    w = m.weight
                    w[w.abs() < args.prune_s * w.std()] = 0
        res["prune_seconds"] = time.perf_counter() - t
        timed_eval("prune")
        timed_eval("finetune")  # 0 fine-tuning epochs: penni evaluates the unchanged model
        timed_eval("shrink")
    if args.out:
        t = time.perf_counter()
        torch.save(model.state_dict(), args.out)
        res["save_seconds"] = time.perf_counter() - t
    res["job_seconds_in_process"] = time.perf_counter() - job_start
    line = json.dumps(res)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
