#!/usr/bin/python3
"""A GPT written independently in PyTorch, loaded from a tessera checkpoint with h5py, must agree
with tessera: the same test loss and next-token accuracy over the test split's windows (to float32
rounding), and the same greedy continuation of a prompt.

  gpt_torch_check.py CHECKPOINT TEST_BIN SUMMARY_JSON GENERATED_TXT PROMPT LAYERS HEADS CONTEXT
"""
import json
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F


def load(path):
    with h5py.File(path, "r") as f:
        return {k: torch.from_numpy(np.array(f["model"][k], dtype=np.float32)) for k in f["model"].keys()}


def layer_norm(x, w, prefix):
    return F.layer_norm(x, (x.shape[-1],), w[prefix + ".weight"], w[prefix + ".bias"], 1e-5)


def forward(w, ids, layers, heads):
    b, t = ids.shape
    x = w["embed.wte"][ids] + w["embed.wpe"][:t]
    c = x.shape[-1]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for l in range(layers):
        p = "h%d." % l
        h = layer_norm(x, w, p + "ln_1")
        qkv = F.linear(h, w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"])
        q, k, v = (z.view(b, t, heads, c // heads).transpose(1, 2) for z in qkv.split(c, dim=2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // heads)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + F.linear(y, w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"])
        h = layer_norm(x, w, p + "ln_2")
        h = F.gelu(F.linear(h, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"]), approximate="tanh")
        x = x + F.linear(h, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"])
    return layer_norm(x, w, "ln_f") @ w["embed.wte"].t()


def main():
    ckpt, test_bin, summary_path, generated_path, prompt = sys.argv[1:6]
    layers, heads, context = (int(a) for a in sys.argv[6:9])
    w = load(ckpt)
    header = np.fromfile(test_bin, dtype=np.int32, count=256)
    assert header[0] == 20240520 and header[1] == 1, "not a token file"
    tokens = np.fromfile(test_bin, dtype=np.uint16, offset=1024).astype(np.int64)
    assert len(tokens) == header[2]
    n = (len(tokens) - 1) // context
    x = torch.from_numpy(tokens[: n * context].reshape(n, context))
    y = torch.from_numpy(tokens[1 : n * context + 1].reshape(n, context))
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, 64):
            logits = forward(w, x[i : i + 64], layers, heads)
            loss_sum += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i : i + 64].reshape(-1),
                                        reduction="sum").double().item()
            correct += (logits.argmax(-1) == y[i : i + 64]).sum().item()
        ids = list(prompt.encode())
        for _ in range(60):
            logits = forward(w, torch.tensor([ids[-context:]]), layers, heads)
            ids.append(int(logits[0, -1].argmax()))
    summary = json.load(open(summary_path))
    loss, acc = loss_sum / (n * context), correct / (n * context)
    print("torch: test loss %.6f, next-token accuracy %.6f; tessera: %.6f, %.6f"
          % (loss, acc, summary["test_loss"], summary["test_accuracy"]))
    assert summary["test_tokens"] == n * context, summary["test_tokens"]
    assert abs(loss - summary["test_loss"]) <= 1e-4 * loss, "the test losses differ"
    assert abs(acc - summary["test_accuracy"]) <= 1e-3, "the next-token accuracies differ"
    mine = bytes(ids).decode("latin-1")
    theirs = open(generated_path, "rb").read().decode("latin-1").rstrip("\n")
    print("torch greedy:   %r\ntessera greedy: %r" % (mine, theirs))
    assert theirs == mine, "the greedy continuations differ"


if __name__ == "__main__":
    main()
