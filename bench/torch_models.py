"""W1 and W2 of BENCHMARKS.md in PyTorch: the peer models every PyTorch benchmark script uses."""
from torch import nn


def build(workload):
    """W1: MLP 784-512-256-10 with ReLU. W2: two Conv(3x3, pad 1)-ReLU-MaxPool2 blocks (32, 64
    channels), Linear(3136, 128)-ReLU, Linear(128, 10)."""
    if workload == "w1":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 512), nn.ReLU(),
            nn.Linear(512, 256), nn.ReLU(),
            nn.Linear(256, 10))
    if workload == "w2":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(3136, 128), nn.ReLU(),
            nn.Linear(128, 10))
    raise ValueError(f"unknown workload {workload!r} (w1 or w2)")
