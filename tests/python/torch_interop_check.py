#!/usr/bin/python3
"""The cases of torch_interop_test.sh, on the runs and the store it made: tessera_torch loads
tessera's models into PyTorch and writes PyTorch weights back, and every comparison is with
tessera itself -- `tessera serve` (KServe v2 over HTTP, binary tensors) on the same raw inputs,
`tessera train --set train.init_from=...` and its test loss, `tessera store publish`.

  torch_interop_check.py TESSERA SOURCE_DIR WORK
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

import h5py
import numpy as np
import torch
import torch.nn.functional as F

TESSERA, SRC, WORK = sys.argv[1:4]
sys.path.insert(0, os.path.join(SRC, "python"))
import tessera_torch as tt  # noqa: E402

STORE = os.path.join(WORK, "store")
TOL = 1e-5
measured = {}


def check(ok, what):
    if not ok:
        raise SystemExit(f"FAIL: {what}")


def record(name, diff, tol=TOL):
    measured[name] = diff
    print(f"  {name}: max abs difference {diff:.3g}")
    check(diff < tol, f"{name}: max abs difference {diff:.3g} is not below {tol}")


class Server:
    """`tessera serve` over the whole store on a free loopback port, stopped with SIGTERM."""

    def __init__(self):
        self.port_file = os.path.join(WORK, "ports.json")
        self.log = open(os.path.join(WORK, "serve.log"), "w")
        self.proc = subprocess.Popen([TESSERA, "serve", "--store", STORE, "--http-port", "0", "--grpc-port", "-1",
                                      "--port-file", self.port_file, "--poll-interval", "0.1",
                                      "--max-batch-size", "256", "--threads", "1"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.wait(lambda: os.path.exists(self.port_file), "the port file")
        self.url = f"http://127.0.0.1:{json.load(open(self.port_file))['http']}"

    def wait(self, ready, what, seconds=30):
        deadline = time.monotonic() + seconds
        while not ready():
            check(self.proc.poll() is None, f"tessera serve exited while waiting for {what}:\n{self.logtext()}")
            check(time.monotonic() < deadline, f"no {what} after {seconds} s:\n{self.logtext()}")
            time.sleep(0.05)

    def wait_for_version(self, model, version):
        def serving():
            try:
                return urllib.request.urlopen(f"{self.url}/v2/models/{model}/versions/{version}/ready").status == 200
            except (urllib.error.URLError, ConnectionError):
                return False
        self.wait(serving, f"{model} version {version} serving")

    def logtext(self):
        self.log.flush()
        return open(self.log.name, errors="replace").read()

    def infer(self, model, version, raw, datatype):
        """The logits `model` `version` answers for `raw` ([n, ...]), sent and returned as binary tensors."""
        body = np.ascontiguousarray(raw, dtype=np.uint8 if datatype == "UINT8" else "<f4").tobytes()
        header = json.dumps({"inputs": [{"name": "input", "shape": list(raw.shape), "datatype": datatype,
                                         "parameters": {"binary_data_size": len(body)}}],
                             "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
        req = urllib.request.Request(f"{self.url}/v2/models/{model}/versions/{version}/infer", data=header + body,
                                     headers={"Inference-Header-Content-Length": str(len(header)),
                                              "Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=60) as r:
            n = int(r.headers["Inference-Header-Content-Length"])
            data = r.read()
        out = json.loads(data[:n])
        check(out["model_version"] == str(version), f"{model}: version {out['model_version']} answered, not {version}")
        (logits,) = out["outputs"]
        return np.frombuffer(data[n:], "<f4").reshape(logits["shape"])

    def stop(self):
        self.proc.terminate()
        check(self.proc.wait(timeout=60) == 0, f"tessera serve did not stop cleanly:\n{self.logtext()}")


def tessera(*args):
    out = subprocess.run([TESSERA, *args], capture_output=True, text=True)
    check(out.returncode == 0, f"tessera {' '.join(args)}:\n{out.stdout}{out.stderr}")
    return out.stdout + out.stderr


def torch_logits(net, raw):
    with torch.no_grad():
        return net.predict(torch.as_tensor(np.array(raw))).numpy()


def max_diff(a, b):
    check(a.shape == b.shape, f"shapes differ: {a.shape} and {b.shape}")
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def csv_split(name):
    a = np.loadtxt(os.path.join(WORK, "blobs", name), delimiter=",", skiprows=1, dtype=np.float32)
    return a[:, :-1], a[:, -1].astype(np.int64)


def idx_split(split):
    with open(os.path.join(WORK, "fmnist", f"{split}-images.idx"), "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with open(os.path.join(WORK, "fmnist", f"{split}-labels.idx"), "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def test_loss(net, x, y):
    with torch.no_grad():
        return F.cross_entropy(net.predict(torch.as_tensor(np.array(x))).double(), torch.as_tensor(y)).item()


def same_state(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def tessera_to_torch(server, model, run, ref, x, y, datatype):
    """A trained run, loaded every way the package offers, against the store version tessera serves."""
    print(f"{model}: tessera -> PyTorch")
    net = tt.load_module(run)
    version_dir = os.path.join(STORE, model, "1")
    for other in (ref, version_dir, os.path.join(run, "checkpoints", "latest")):
        check(same_state(net.state_dict(), tt.read_weights(other)[0]), f"{other}: other weights than {run}'s")
    check(tt.load_module(ref).spec.input_dtype == datatype, f"{ref}: input dtype is not {datatype}")
    record(f"{model} v1: served vs PyTorch logits", max_diff(server.infer(model, 1, x, datatype), torch_logits(net, x)))
    summary = json.load(open(os.path.join(run, "summary.json")))
    record(f"{model} v1: trainer's test loss vs PyTorch's", abs(summary["test_loss"] - test_loss(net, x, y)))
    return net


def torch_steps(net, x, y, steps=5):
    """A few optimizer steps in PyTorch (dropout active), so the weights are PyTorch's own."""
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()
    for s in range(steps):
        batch = slice(32 * s, 32 * (s + 1))
        opt.zero_grad()
        F.cross_entropy(net.predict(torch.as_tensor(x[batch])), torch.as_tensor(y[batch])).backward()
        opt.step()
    return net.eval()


def torch_to_tessera(server, model, net, before, x, y, datatype, job, init_ref):
    """`net`'s weights saved, published as version 2 and served; then a fine-tune starts from them."""
    print(f"{model}: PyTorch -> tessera")
    path = os.path.join(WORK, f"{model}-torch.h5")
    tt.save_weights(net, path)
    check("OK" in tessera("ckpt", "verify", path), f"{path}: tessera ckpt verify")
    out = tessera("store", "publish", path, "--store", STORE, "--model", model)
    check("(: cannot open" not in out, f"publish names no file in its warning:\n{out}")
    tessera("store", "verify", f"{model}@2", "--store", STORE)
    server.wait_for_version(model, 2)
    served = server.infer(model, 2, x, datatype)
    check(max_diff(served, before) > 1e-3, f"{model}: version 2 answers as version 1 did: the comparison below "
                                           "could not tell the weights apart")
    record(f"{model} v2 (PyTorch's weights): served vs PyTorch logits", max_diff(served, torch_logits(net, x)))
    init = init_ref or path
    run = os.path.join(WORK, f"{model}-from-torch")
    log = tessera("train", job, "--run-dir", run, "--set", f"train.init_from={init}", "--set", "train.steps=1",
                  "--set", "optimizer.lr=1e-9", "--set", "train.threads=1")
    for name in net.state_dict():
        check(re.search(rf"^\s*{re.escape(name)}: loaded from {re.escape(init)}$", log, re.M),
              f"{model}: the fine-tune's log does not say {name} was loaded from {init}:\n{log}")
    tuned, _ = tt.read_weights(run)  # after one step of lr 1e-9: PyTorch's weights to within float32 rounding
    record(f"{model}: init_from run's weights vs PyTorch's", max(max_diff(tuned[k].numpy(), v.numpy())
                                                                for k, v in net.state_dict().items()), 1e-6)
    summary = json.load(open(os.path.join(run, "summary.json")))
    record(f"{model}: init_from run's test loss vs PyTorch's", abs(summary["test_loss"] - test_loss(net, x, y)))


def expect_error(what, pattern, fn):
    try:
        fn()
    except tt.TesseraFileError as e:
        check(re.search(pattern, str(e)), f"{what}: the message lacks {pattern!r}: {e}")
        print(f"  refused ({what}): {e}")
        return
    raise SystemExit(f"FAIL: {what}: accepted")


def hostile(net):
    print("hostile inputs")
    good = os.path.join(WORK, "blobs-mlp-torch.h5")
    wrong = {k: (v.t().contiguous() if k == "1.weight" else v) for k, v in net.state_dict().items()}
    expect_error("a state_dict tensor of the wrong shape", r"save_weights\(.*bad\.h5\): /model/1\.weight: has shape "
                 r"\[6, 16\] but the mlp of the spec has shape \[16, 6\]",
                 lambda: tt.save_weights(wrong, os.path.join(WORK, "bad.h5"), net.spec))
    nan = dict(net.state_dict(), **{"4.bias": torch.full_like(net.state_dict()["4.bias"], float("nan"))})
    expect_error("NaN weights", r"/model/4\.bias: holds NaN",
                 lambda: tt.save_weights(nan, os.path.join(WORK, "bad.h5"), net.spec))
    reshaped = os.path.join(WORK, "reshaped.h5")  # a sound tessera file whose tensor does not fit its own spec
    arrays = {k: v.numpy() for k, v in wrong.items()}
    tt.h5write.write_weights_file(reshaped, arrays, 0, net.spec.job_spec)
    expect_error("a file tensor of the wrong shape", rf"{re.escape(reshaped)}: /model/1\.weight: has shape \[6, 16\] "
                 r"but the mlp of the spec has shape \[16, 6\]", lambda: tt.read_weights(reshaped))
    foreign = os.path.join(WORK, "foreign.h5")
    with h5py.File(foreign, "w") as f:
        f["model/1.weight"] = np.zeros((16, 6), np.float32)
    expect_error("an HDF5 file that is not tessera's",
                 rf"{re.escape(foreign)}: not a tessera checkpoint or weights file", lambda: tt.load_module(foreign))
    csv = os.path.join(WORK, "blobs", "test.csv")
    expect_error("a file that is not HDF5", rf"{re.escape(csv)}: not an HDF5 file", lambda: tt.read_weights(csv))
    flipped = os.path.join(WORK, "flipped.h5")
    with open(good, "rb") as f:
        data = bytearray(f.read())
    with h5py.File(good, "r") as f:
        at = f["model/4.weight"].id.get_offset() + 5
    data[at] ^= 0x40
    with open(flipped, "wb") as f:
        f.write(data)
    expect_error("a flipped bit in a tensor", rf"{re.escape(flipped)}: /model/4\.weight: CRC-32 mismatch",
                 lambda: tt.read_weights(flipped))
    linked = os.path.join(WORK, "linked.h5")  # /manifest an external link into another (here a sound) file
    shutil.copyfile(good, linked)
    with h5py.File(linked, "r+") as f:
        del f["manifest"]
        f["manifest"] = h5py.ExternalLink(good, "/manifest")
    expect_error("an external-link manifest", rf"{re.escape(linked)}: /manifest: is a soft or external link",
                 lambda: tt.read_weights(linked))
    huge = os.path.join(WORK, "huge.h5")  # a file of a few KiB whose tensor declares 11 GiB, its manifest agreeing
    rows = 7 << 25
    text = json.dumps({"tensors": [{"path": "/model/1.weight", "shape": [rows, 13], "dtype": "float32",
                                    "bytes": rows * 13 * 4, "crc32": 0}]}).encode()
    with h5py.File(good, "r") as g, h5py.File(huge, "w") as f:  # HDF5's earliest format: no header checksums
        for k, v in g.attrs.items():
            f.attrs[k] = v
        f["model/1.weight"] = np.zeros((7, 13), "<f4")
        f["model/1.weight"].attrs["crc32"] = np.uint32(0)
        f["manifest"] = np.array(text, dtype=h5py.string_dtype("utf-8", len(text)))
        f["manifest"].attrs["crc32"] = np.uint32(zlib.crc32(text))
    with open(huge, "rb") as f:
        data = bytearray(f.read())
    dims = data.find(struct.pack("<QQ", 7, 13))  # the dataspace message's dimensions, then its maximum dimensions
    size = data.find(struct.pack("<Q", 7 * 13 * 4), dims, dims + 256)  # the layout message's size of the data
    check(dims > 0 and size > 0, f"{huge}: the dataspace and layout messages of /model/1.weight are not found")
    data[dims:dims + 32] = struct.pack("<QQ", rows, 13) * 2
    data[size:size + 8] = struct.pack("<Q", rows * 13 * 4)
    with open(huge, "wb") as f:
        f.write(data)
    with h5py.File(huge, "r") as f:
        shape = f["model/1.weight"].shape
    check(shape == (rows, 13), f"{huge}: the patched /model/1.weight has shape {shape}")
    expect_error("a dataset far larger than the file", rf"{re.escape(huge)}: /model/1\.weight: its {rows * 13 * 4} "
                 r"bytes at offset \d+ lie beyond the end of the file \(\d+ bytes\)", lambda: tt.read_weights(huge))
    arrayed = os.path.join(WORK, "arrayed.h5")
    shutil.copyfile(good, arrayed)
    with h5py.File(arrayed, "r+") as f:
        crc = f["model/1.weight"].attrs["crc32"]
        f["model/1.weight"].attrs["crc32"] = np.array([crc, crc], np.uint32)
    expect_error("an array-valued crc32 attribute", rf"{re.escape(arrayed)}: /model/1\.weight: the crc32 attribute "
                 r"holds 2 values; expected one", lambda: tt.read_weights(arrayed))
    expect_error("a missing store version", r"store://.*/blobs-mlp@9: model 'blobs-mlp' has no version 9",
                 lambda: tt.read_weights(f"store://{STORE}/blobs-mlp@9"))


def main():
    server = Server()
    try:
        server.wait_for_version("blobs-mlp", 1)
        server.wait_for_version("fmnist-cnn", 1)
        x, y = csv_split("test.csv")
        xtrain, ytrain = csv_split("train.csv")
        mlp = tessera_to_torch(server, "blobs-mlp", os.path.join(WORK, "mlp-run"), f"store://{STORE}/blobs-mlp",
                               x, y, "FP32")
        before = torch_logits(mlp, x)
        torch_to_tessera(server, "blobs-mlp", torch_steps(mlp, xtrain, ytrain), before, x, y, "FP32",
                         os.path.join(WORK, "mlp.pbtxt"), None)
        ix, iy = idx_split("test")
        cnn = tessera_to_torch(server, "fmnist-cnn", os.path.join(WORK, "cnn-run"),
                               f"store://{STORE}/fmnist-cnn@production", ix, iy, "UINT8")
        torch.manual_seed(7)  # a spec made in Python (no job spec to carry over), PyTorch's own initialisation
        made = tt.ModelSpec(tt.CnnSpec(channels=(4, 8, 8), hidden=(16,), dropout=0.1),
                            tt.Normalize(scale=1 / 255, mean=(0.286,), std=(0.353,)), input_dtype="UINT8")
        fresh = tt.build_module(made)
        torch_to_tessera(server, "fmnist-cnn", fresh, torch_logits(cnn, ix), ix, iy, "UINT8",
                         os.path.join(WORK, "cnn.pbtxt"), f"store://{STORE}/fmnist-cnn@2")
        hostile(mlp)
    finally:
        server.stop()
    print(f"max abs differences: {max(measured.values()):.3g} at most (tolerance {TOL})")


main()
