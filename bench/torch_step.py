#!/usr/bin/python3
"""PyTorch peer of bench/step_bench: W1/W2 training-step throughput (shared BENCHMARKS.md).

Run with Debian's interpreter (/usr/bin/python3, python3-torch 1.13). Same step as step_bench:
zero_grad, forward, cross-entropy, backward, Adam(lr 1e-3) on one batch of 128 resident in
memory; inputs do not require grad. Prints one JSON line per measurement, with the same keys as
step_bench, plus the OpenMP wait policy seen in the environment (PyTorch 1.13 at 2 threads is
much faster with OMP_WAIT_POLICY=PASSIVE on a 2-core machine; the policy must be set before the
process starts, so the driver script runs this once per policy).

  /usr/bin/python3 bench/torch_step.py --model w1|w2 --threads N [--warmup 20] [--steps 200]
                                       [--repeats 3]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
from torch import nn

from torch_models import build  # bench/torch_models.py

BATCH_DEFAULT = 128




def count_flops(net, x):
    """Matrix-product FLOPs per step, by the rule step_bench uses: forward 2*M*N*K per
    Linear/Conv2d; backward twice that, minus the first layer's input gradient."""
    total, first = 0, True
    h = x
    with torch.no_grad():
        for m in net:
            y = m(h)
            mac = 0
            if isinstance(m, nn.Linear):
                mac = y.numel() * m.in_features
            elif isinstance(m, nn.Conv2d):
                k = m.weight.shape
                mac = y.numel() * k[1] * k[2] * k[3]
            if mac:
                total += 2 * mac * (2 if first else 3)
                first = False
            h = y
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["w1", "w2"], required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=BATCH_DEFAULT)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = build(a.model)
    net.train()
    # foreach=None: 1.13's default on CPU (the per-tensor loop).
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(a.batch, 1, 28, 28, generator=g)  # requires_grad is False
    y = torch.randint(0, 10, (a.batch,), generator=g)
    flops = count_flops(net, x)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    sps = []
    loss = None
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        t1 = time.perf_counter()
        sps.append(a.batch * a.steps / (t1 - t0))
    final = float(loss.item())
    if not math.isfinite(final):
        sys.exit(f"torch_step: loss is not finite after training: {final}")
    med = statistics.median(sps)
    print(json.dumps({
        "kind": "step", "impl": "pytorch", "model": a.model, "threads": a.threads,
        "batch": a.batch, "warmup": a.warmup, "steps": a.steps, "repeats": a.repeats,
        "samples_per_sec": round(med, 1),
        "samples_per_sec_min": round(min(sps), 1), "samples_per_sec_max": round(max(sps), 1),
        "ms_per_step": round(1e3 * a.batch / med, 3),
        "flops_per_step": flops, "gflops": round(flops * med / a.batch / 1e9, 2),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "torch_num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "final_loss": round(final, 4), "runs": [round(s, 1) for s in sps],
    }), flush=True)


if __name__ == "__main__":
    main()
