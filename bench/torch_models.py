"""W1 and W2 of BENCHMARKS.md in PyTorch: the peer models every PyTorch benchmark script uses."""
import torch
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


class Gpt(nn.Module):
    """The GPT-2 architecture as tessera's model.gpt builds it (core/models.h BuildGpt), written the
    way nanoGPT writes it for PyTorch without scaled_dot_product_attention (1.13 has none): token
    and position embeddings, pre-LayerNorm blocks of causal self-attention and a GELU (tanh) MLP,
    ln_f, the head tied to the token embedding. Initialised as GPT-2 (and tessera): weights
    N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 layers)), biases 0."""

    def __init__(self, layers, heads, width, context, vocab):
        super().__init__()
        import math
        self.heads = heads
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            b = nn.Module()
            b.ln_1, b.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            b.c_attn, b.attn_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            b.c_fc, b.mlp_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
            self.blocks.append(b)
        self.ln_f = nn.LayerNorm(width)
        self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).tril())
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
            elif "ln_" not in name:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, ids):
        import math
        b, t = ids.shape
        x = self.wte(ids) + self.wpe.weight[:t]
        c = x.shape[-1]
        for blk in self.blocks:
            q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                       for z in blk.c_attn(blk.ln_1(x)).split(c, dim=2))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // self.heads))
            att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(dim=-1)
            x = x + blk.attn_proj((att @ v).transpose(1, 2).reshape(b, t, c))
            x = x + blk.mlp_proj(nn.functional.gelu(blk.c_fc(blk.ln_2(x)), approximate="tanh"))
        return self.ln_f(x) @ self.wte.weight.t()
