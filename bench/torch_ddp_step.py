#!/usr/bin/python3
"""PyTorch peer of bench/dp_step_bench: data-parallel W1/W2 training-step throughput (shared
BENCHMARKS.md), DistributedDataParallel over gloo on N processes x 1 thread.

Run with Debian's interpreter (/usr/bin/python3, python3-torch 1.13). With --ranks 2 it starts the
two processes itself (torch.multiprocessing.spawn; MASTER_ADDR=127.0.0.1, a free MASTER_PORT);
with --ranks 1 it trains in this process with no process group and no DDP wrapper (the baseline
for the scaling efficiency). Each rank holds its own batch of --per-rank-batch random samples
(inputs uniform in [0, 1), labels in [0, 10), a seed per rank) resident in memory; a step is
zero_grad, forward, cross-entropy, backward (DDP all-reduces the gradients in buckets during
backward and averages them), Adam(lr 1e-3). Parameters start equal on every rank (DDP
broadcasts rank 0's at construction).

Timing: each repeat is a barrier, --steps steps, a barrier; the repeat's time is the slowest
rank's (all_reduce MAX). samples_per_sec is global: ranks * per-rank-batch * steps / time. Prints
one JSON line from rank 0 with the same keys as dp_step_bench.

  /usr/bin/python3 bench/torch_ddp_step.py --model w1|w2 [--ranks 2] [--per-rank-batch 128]
                                           [--threads 1] [--warmup 20] [--steps 200] [--repeats 3]
"""
import argparse
import json
import math
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from torch_models import build  # bench/torch_models.py




def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(rank, a):
    """Trains on this rank; returns the JSON record on rank 0 (None elsewhere)."""
    torch.set_num_threads(a.threads)
    world = a.ranks
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = build(a.model)
    net.train()
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    # foreach=None: 1.13's default on CPU (the per-tensor loop).
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1234 + rank)
    x = torch.rand(a.per_rank_batch, 1, 28, 28, generator=g)  # requires_grad is False
    y = torch.randint(0, 10, (a.per_rank_batch,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def barrier():
        if world > 1:
            dist.barrier()

    for _ in range(a.warmup):
        step()
    sps = []
    loss = None
    for _ in range(a.repeats):
        barrier()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        barrier()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        sps.append(world * a.per_rank_batch * a.steps / t.item())
    final = float(loss.item())
    # The replicas must still agree after training.
    if world > 1:
        s = torch.tensor([sum(float(p.double().sum()) for p in net.parameters())], dtype=torch.float64)
        lo, hi = s.clone(), s.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if lo.item() != hi.item():
            raise RuntimeError(f"replicas diverged: parameter sums range over [{lo.item()}, {hi.item()}]")
        # No destroy_process_group() and no interpreter teardown: see worker().
    if not math.isfinite(final):
        raise RuntimeError(f"loss is not finite after training: {final}")
    if rank != 0:
        return None
    med = statistics.median(sps)
    return {
        "kind": "dp_step", "impl": "pytorch-ddp" if world > 1 else "pytorch", "model": a.model,
        "ranks": world, "threads": a.threads, "per_rank_batch": a.per_rank_batch,
        "global_batch": world * a.per_rank_batch, "warmup": a.warmup, "steps": a.steps,
        "repeats": a.repeats, "backend": "gloo" if world > 1 else None,
        "samples_per_sec": round(med, 1),
        "samples_per_sec_min": round(min(sps), 1), "samples_per_sec_max": round(max(sps), 1),
        "ms_per_step": round(1e3 * world * a.per_rank_batch / med, 3),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "torch_num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "final_loss": round(final, 4), "runs": [round(v, 1) for v in sps],
    }


def worker(rank, a):
    if a.ranks == 1:
        rec = run(rank, a)
        print(json.dumps(rec), flush=True)
        return
    # A spawned rank leaves with os._exit: in 1.13, tearing down DDP's Reducer (which holds the
    # gloo process group) at interpreter exit can deadlock: the main thread, holding the GIL,
    # joins gloo's worker thread, which waits for the GIL to free a tensor. Seen here on W1 as a
    # rank that never exits and spins a core in the TCPStore's watcher once rank 0 has gone.
    code = 0
    try:
        rec = run(rank, a)
        if rec is not None:
            print(json.dumps(rec), flush=True)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["w1", "w2"], required=True)
    ap.add_argument("--ranks", type=int, choices=[1, 2], default=2)
    ap.add_argument("--per-rank-batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.ranks == 1:
        worker(0, a)
        return
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    mp.spawn(worker, args=(a,), nprocs=a.ranks, join=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # mp.spawn re-raises a child's failure as ProcessRaisedException
        sys.exit(f"torch_ddp_step: {e}")
