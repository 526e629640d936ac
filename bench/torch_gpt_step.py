#!/usr/bin/python3
"""PyTorch peer of bench/gpt_step_bench: GPT training-step throughput on the CPU.

The same step (zero_grad, forward over one resident batch of token windows, cross-entropy over
every position, backward, AdamW(lr 3e-4, weight decay 0.1)) on the same architecture and
initialisation scheme (bench/torch_models.py Gpt). Prints one JSON line with the same keys.

  /usr/bin/python3 bench/torch_gpt_step.py --threads N [--warmup 10] [--steps 50] [--layers 4]
      [--heads 4] [--width 128] [--context 128] [--vocab 256] [--batch 32]
"""
import argparse
import json
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from torch_models import Gpt  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    for name, default in [("threads", 1), ("warmup", 10), ("steps", 50), ("layers", 4), ("heads", 4),
                          ("width", 128), ("context", 128), ("vocab", 256), ("batch", 32)]:
        p.add_argument("--" + name, type=int, default=default)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    net = Gpt(a.layers, a.heads, a.width, a.context, a.vocab)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.1)
    stream = torch.randint(0, a.vocab, (a.batch * a.context + 1,))
    x = stream[:-1].view(a.batch, a.context)
    y = stream[1:].view(a.batch, a.context)
    seconds, last = [], 0.0
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x).view(-1, a.vocab), y.reshape(-1))
        loss.backward()
        opt.step()
        last = loss.item()
        if s >= a.warmup:
            seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    print(json.dumps({"impl": "pytorch", "version": torch.__version__, "threads": a.threads, "layers": a.layers,
                      "heads": a.heads, "width": a.width, "context": a.context, "vocab": a.vocab, "batch": a.batch,
                      "parameters": sum(p.numel() for p in net.parameters()), "steps": a.steps,
                      "step_ms_median": 1e3 * median, "step_ms_min": 1e3 * min(seconds),
                      "tokens_per_sec": a.batch * a.context / median, "final_loss": last}))


if __name__ == "__main__":
    main()
