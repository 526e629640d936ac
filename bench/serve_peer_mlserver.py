"""The Python peer of bench/run_serve_bench.sh: an MLServer runtime serving a tessera model store
version (W2, the Fashion-MNIST CNN) through PyTorch, over the same KServe v2 protocol.

It reads what `tessera serve` reads: the version's model.pbtxt (the CNN's layout and the input
normalisation) and weights.h5 (every parameter at /model/<name>, read with h5py), and builds the
same network as core/models.cc: per channel count Conv2d(k, pad k/2) -> MaxPool2d(2) -> ReLU
(tessera's order; ReLU and max-pool commute), Flatten, per hidden size Linear -> ReLU, Linear.
Inputs are prepared as models::NormalizeExamples does: x * scale, then (x - mean) / std.

    python serve_peer_mlserver.py prepare VERSION_DIR REPO_DIR --name w2 --http-port P --grpc-port Q
writes REPO_DIR/settings.json (server) and REPO_DIR/NAME/model-settings.json; then
    mlserver start REPO_DIR      (with this file's directory on PYTHONPATH)
serves it. The server runs inference in its own process (parallel_workers 0: no worker pool, no
IPC), one PyTorch thread (TORCH_THREADS, default 1), no access log and no metrics server.
"""
import argparse
import json
import os
import re
import sys

import numpy as np


def read_architecture(version_dir):
    """The parts of model.pbtxt (tessera.store.Architecture, protobuf text) this peer needs."""
    text = open(os.path.join(version_dir, "model.pbtxt")).read()
    cnn = re.search(r"\bcnn\s*\{([^}]*)\}", text)
    if not cnn:
        sys.exit(f"{version_dir}/model.pbtxt: not a cnn model (this peer serves W2)")
    body = cnn.group(1)

    def ints(field):
        return [int(v) for v in re.findall(rf"\b{field}\s*:\s*(-?\d+)", body)]

    def one(field, default):
        v = re.findall(rf"\b{field}\s*:\s*([-0-9.eE+]+)", body)
        return float(v[0]) if v else default

    norm = re.search(r"\bnormalize\s*\{([^}]*)\}", text)
    nbody = norm.group(1) if norm else ""

    def floats(field):
        return [float(v) for v in re.findall(rf"\b{field}\s*:\s*([-0-9.eE+]+)", nbody)]

    scale = floats("scale")
    return {
        "in_channels": int(one("in_channels", 1)), "height": int(one("height", 28)), "width": int(one("width", 28)),
        "channels": ints("channels") or [32, 64], "kernel": int(one("kernel", 3)), "hidden": ints("hidden") or [128],
        "out_features": int(one("out_features", 10)), "dropout": one("dropout", 0.0),
        "scale": scale[0] if scale else 1.0, "mean": floats("mean"), "std": floats("std"),
        "input_shape": [int(v) for v in re.findall(r"^input_shape\s*:\s*(\d+)", text, re.M)],
    }


def build_model(version_dir):
    """(network, architecture): the torch network with the version's weights, in eval mode."""
    import h5py
    import torch
    from torch import nn

    a = read_architecture(version_dir)
    layers, ch, h, w = [], a["in_channels"], a["height"], a["width"]
    for out in a["channels"]:
        layers += [nn.Conv2d(ch, out, a["kernel"], 1, a["kernel"] // 2), nn.MaxPool2d(2), nn.ReLU()]
        ch, h, w = out, h // 2, w // 2
    layers.append(nn.Flatten())
    features = ch * h * w
    for hid in a["hidden"]:
        layers += [nn.Linear(features, hid), nn.ReLU()]
        if a["dropout"] > 0:
            layers.append(nn.Dropout(a["dropout"]))
        features = hid
    layers.append(nn.Linear(features, a["out_features"]))
    net = nn.Sequential(*layers)
    with h5py.File(os.path.join(version_dir, "weights.h5"), "r") as f:
        state = {k: torch.from_numpy(np.asarray(f["model"][k], dtype=np.float32)) for k in f["model"]}
    net.load_state_dict(state, strict=True)  # every tensor of the file, and every parameter of the net
    net.eval()
    return net, a


class Preparer:
    """x (uint8 or float, [n, C, H, W]) -> the float32 tensor the network takes."""

    def __init__(self, a):
        import torch
        c = a["in_channels"]
        self.scale = np.float32(a["scale"])
        mean = a["mean"] or [0.0]
        std = a["std"] or [1.0]
        self.mean = torch.tensor(mean if len(mean) > 1 else mean * c, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std if len(std) > 1 else std * c, dtype=torch.float32).view(1, c, 1, 1)
        self.plain = not a["mean"] and not a["std"]

    def __call__(self, x):
        import torch
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) * float(self.scale)
        return t if self.plain else (t - self.mean) / self.std


try:
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse
except ImportError:  # `prepare` and the logits check need no MLServer
    MLModel = object


class W2Runtime(MLModel):
    async def load(self) -> bool:
        import torch
        torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
        version_dir = self._settings.parameters.uri
        self.net, a = build_model(version_dir)
        self.prepare = Preparer(a)
        self.example = [a["in_channels"], a["height"], a["width"]]
        with torch.inference_mode():  # warm-up, as tessera does at load
            self.net(torch.zeros([64] + self.example))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        import torch
        x = NumpyCodec.decode_input(payload.inputs[0])
        x = x.reshape([-1] + self.example)
        with torch.inference_mode():
            logits = self.net(self.prepare(x)).numpy()
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output("logits", logits)])


def prepare(args):
    os.makedirs(os.path.join(args.repo, args.name), exist_ok=True)
    settings = {"debug": False, "host": "127.0.0.1", "http_port": args.http_port, "grpc_port": args.grpc_port,
                "parallel_workers": 0, "metrics_endpoint": None, "load_models_at_startup": True}
    json.dump(settings, open(os.path.join(args.repo, "settings.json"), "w"), indent=1)
    model = {"name": args.name, "implementation": "serve_peer_mlserver.W2Runtime",
             "parameters": {"uri": os.path.abspath(args.version_dir), "version": args.version}}
    if args.max_batch_size > 1:  # MLServer's adaptive batching
        model.update({"max_batch_size": args.max_batch_size, "max_batch_time": args.max_batch_time_s})
    json.dump(model, open(os.path.join(args.repo, args.name, "model-settings.json"), "w"), indent=1)


def main():
    p = argparse.ArgumentParser(description="MLServer peer for bench/run_serve_bench.sh")
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("prepare", help="write an MLServer model repository serving VERSION_DIR")
    q.add_argument("version_dir"), q.add_argument("repo")
    q.add_argument("--name", default="w2"), q.add_argument("--version", default="1")
    q.add_argument("--http-port", type=int, required=True), q.add_argument("--grpc-port", type=int, required=True)
    q.add_argument("--max-batch-size", type=int, default=0), q.add_argument("--max-batch-time-s", type=float, default=0.0005)
    a = p.parse_args()
    if a.cmd == "prepare":
        prepare(a)


if __name__ == "__main__":
    main()
