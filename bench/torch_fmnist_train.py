#!/usr/bin/python3
"""PyTorch peer of `tessera train` on the real Fashion-MNIST: W1 (MLP) and W2 (CNN) of the shared
BENCHMARKS.md, trained end to end, test accuracy at the end (bench/run_accuracy_bench.sh).

Run with Debian's interpreter (/usr/bin/python3, python3-torch 1.13). The spec is the one of
jobs/examples/fmnist_mlp.pbtxt and fmnist_cnn.pbtxt:
  - data: the IDX .gz files in /usr/share/datasets/fashion-mnist/ (read with gzip + numpy, no
    torchvision), inputs scaled by 1/255 (held in memory as float32, scaled once before training);
  - model: W1 Flatten-Linear(784,512)-ReLU-Linear(512,256)-ReLU-Linear(256,10), or W2
    Conv2d(1,32,3,pad 1)-ReLU-MaxPool2-Conv2d(32,64,3,pad 1)-ReLU-MaxPool2-Flatten-
    Linear(3136,128)-ReLU-Linear(128,10); PyTorch's default initialisation (torch.manual_seed(seed));
  - softmax cross-entropy, Adam lr 1e-3 (PyTorch 1.13 defaults otherwise), batch 128, a fresh
    shuffle every epoch, the last, partial batch of each epoch kept (drop_last false);
  - like tessera's default (train.eval_every_steps 0), the test split is evaluated after every
    epoch; evaluation time is excluded from train_seconds and included in wall_seconds.

train_seconds: the training loops only (batch gather, forward, backward, optimizer step).
wall_seconds: from the start of main() (after `import torch`) to the end: data reading,
  decoding, training and every evaluation, as tessera's summary.json wall_seconds (which starts
  when training is set up and ends after the final evaluation).
samples_per_sec: training samples / train_seconds.

PyTorch 1.13 at 2 threads on a 2-core machine is much faster with OMP_WAIT_POLICY=PASSIVE (it must
be set before the process starts); the policy seen is reported in the output line.

  /usr/bin/python3 bench/torch_fmnist_train.py --workload w1|w2 --seed S --threads N [--epochs E]
                                               [--data-dir DIR] [--batch 128] [--lr 1e-3]

Prints one JSON line: {workload, seed, threads, test_accuracy, train_seconds, wall_seconds,
samples_per_sec, ...}; progress goes to stderr.
"""
import argparse
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

from torch_models import build  # bench/torch_models.py

DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_EPOCHS = {"w1": 5, "w2": 3}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """An IDX file (gzip or raw) as a numpy array: magic 0 0 TYPE NDIM, NDIM big-endian int32 dims."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        sys.exit(f"{path}: not an IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if ndim else 1
    offset = 4 + 4 * ndim
    if len(raw) != offset + count * dtype.itemsize:
        sys.exit(f"{path}: {len(raw)} bytes, expected {offset + count * dtype.itemsize} for dims {list(dims)}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape([int(d) for d in dims])


def load_split(data_dir, prefix):
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    if images.shape[0] != labels.shape[0]:
        sys.exit(f"{prefix}: {images.shape[0]} images but {labels.shape[0]} labels")
    x = torch.from_numpy(images.astype(np.float32)).mul_(1.0 / 255.0).unsqueeze(1)  # [N, 1, 28, 28]
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y




@torch.no_grad()
def evaluate(net, x, y, batch=1000):
    net.eval()
    correct, loss_sum = 0, 0.0
    for lo in range(0, x.shape[0], batch):
        out = net(x[lo:lo + batch])
        loss_sum += float(nn.functional.cross_entropy(out, y[lo:lo + batch], reduction="sum"))
        correct += int((out.argmax(1) == y[lo:lo + batch]).sum())
    net.train()
    return correct / x.shape[0], loss_sum / x.shape[0]


def main():
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["w1", "w2"], required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="default: 5 for w1, 3 for w2")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data-dir", default=DATA_DIR)
    ap.add_argument("--log-every", type=int, default=100, help="progress to stderr every N steps (0: off)")
    a = ap.parse_args()
    epochs = a.epochs if a.epochs is not None else DEFAULT_EPOCHS[a.workload]

    torch.set_num_threads(a.threads)
    x_train, y_train = load_split(a.data_dir, "train")
    x_test, y_test = load_split(a.data_dir, "t10k")

    torch.manual_seed(a.seed)  # default initialisation of every layer
    net = build(a.workload)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(a.seed)

    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / a.batch)  # last partial batch kept
    train_seconds, samples, step = 0.0, 0, 0
    epoch_acc = []
    loss = None
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle)
        for lo in range(0, n, a.batch):
            idx = perm[lo:lo + a.batch]
            xb, yb = x_train[idx], y_train[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            step += 1
            samples += idx.shape[0]
            if a.log_every and step % a.log_every == 0:
                print(f"step {step}/{steps_per_epoch * epochs}  epoch {epoch + 1}  loss {float(loss):.4f}",
                      file=sys.stderr, flush=True)
        train_seconds += time.perf_counter() - t0
        acc, test_loss = evaluate(net, x_test, y_test)
        epoch_acc.append(round(acc, 4))
        print(f"eval  epoch {epoch + 1}  test loss {test_loss:.4f}  accuracy {acc:.4f}", file=sys.stderr, flush=True)
    final_loss = float(loss)
    if not math.isfinite(final_loss):
        sys.exit(f"torch_fmnist_train: the training loss is not finite: {final_loss}")
    wall = time.perf_counter() - t_start
    print(json.dumps({
        "impl": "pytorch", "workload": a.workload, "seed": a.seed, "threads": a.threads,
        "test_accuracy": acc, "test_loss": round(test_loss, 5),
        "train_seconds": round(train_seconds, 3), "wall_seconds": round(wall, 3),
        "samples_per_sec": round(samples / train_seconds, 1),
        "epochs": epochs, "steps": step, "batch": a.batch, "lr": a.lr,
        "epoch_test_accuracy": epoch_acc, "last_batch_loss": round(final_loss, 5),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "torch_num_threads": torch.get_num_threads(), "torch_version": torch.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
