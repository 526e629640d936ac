#!/usr/bin/env python3
"""The peer of bench/run_zero_bench.sh: PyTorch FSDP on CPU with gloo, on the same wide MLP with
Adam in fp32, N processes of one thread each. Prints one JSON line per rank: the sharding strategy,
the median step time of the timed steps, and the peak RSS (ru_maxrss) before the model was built
and at the end.

  torch_fsdp_step.py --ranks 2 --strategy SHARD_GRAD_OP --hidden 4096,4096 --batch 64 --steps 8
(strategy: NO_SHARD, SHARD_GRAD_OP (ZeRO-2), FULL_SHARD (ZeRO-3); DDP for plain DistributedDataParallel)
"""
import argparse
import json
import os
import resource
import statistics
import time


def rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(rank, a, port):
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=a.ranks)
    torch.manual_seed(0)
    base_rss = rss_bytes()
    dims = [784] + [int(h) for h in a.hidden.split(",")] + [10]
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    params = sum(p.numel() for p in model.parameters())
    if a.strategy == "DDP":
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        model = FSDP(model, sharding_strategy=getattr(ShardingStrategy, a.strategy),
                     auto_wrap_policy=ModuleWrapPolicy({nn.Linear}), device_id=torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    local = a.batch // a.ranks
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(local, 784, generator=g)
    y = torch.randint(0, 10, (local,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for step in range(a.steps):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    dist.barrier()
    timed = times[2:] if len(times) > 3 else times
    print(json.dumps({"peer": "torch_fsdp", "torch": torch.__version__, "strategy": a.strategy, "ranks": a.ranks,
                      "rank": rank, "parameters": params, "step_seconds": statistics.median(timed),
                      "base_rss_bytes": base_rss, "peak_rss_bytes": rss_bytes()}), flush=True)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--strategy", default="SHARD_GRAD_OP")
    p.add_argument("--hidden", default="4096,4096,4096,4096,4096,4096")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--port", type=int, default=29533)
    a = p.parse_args()
    import torch.multiprocessing as mp
    mp.spawn(worker, args=(a, a.port), nprocs=a.ranks, join=True)


if __name__ == "__main__":
    main()
