#!/usr/bin/python3
"""Asks `tessera serve` (its port file in DIR) for the logits of the f32 (1) and int8 (2) versions
of each model on the same inputs, over HTTP: the int8 answers must follow the f32 ones within
quantisation error and pick the same class for nearly every input.

  quantize_check.py DIR"""
import gzip
import json
import sys
import time
import urllib.request

import numpy as np

w = sys.argv[1]
for _ in range(300):
    try:
        ports = json.load(open(f"{w}/ports.json"))
        break
    except (OSError, ValueError):
        time.sleep(0.1)
else:
    sys.exit("the server wrote no port file")
base = f"http://127.0.0.1:{ports['http']}"


def logits(model, version, datatype, x):
    body = {"inputs": [{"name": "input", "datatype": datatype, "shape": list(x.shape), "data": x.ravel().tolist()}],
            "outputs": [{"name": "logits"}]}
    req = urllib.request.Request(f"{base}/v2/models/{model}/versions/{version}/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    out = json.load(urllib.request.urlopen(req, timeout=30))
    assert out["model_version"] == str(version), out["model_version"]
    return np.array(out["outputs"][0]["data"], dtype=np.float64).reshape(out["outputs"][0]["shape"])


def wait_ready(model, version):
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/v2/models/{model}/versions/{version}/ready", timeout=5)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{model} version {version} never became ready")


with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:64]
rows = [line.split(",") for line in open(f"{w}/test.csv").read().split("\n")[1:] if line]
blobs = np.array([[float(v) for v in r[:-1]] for r in rows[:64]], dtype=np.float32)

for model, datatype, x in (("cnn", "UINT8", images), ("mlp", "FP32", blobs)):
    for v in (1, 2):
        wait_ready(model, v)
    f32, i8 = logits(model, 1, datatype, x), logits(model, 2, datatype, x)
    err = np.abs(i8 - f32).max()
    spread = np.abs(f32).max()
    same = (i8.argmax(1) == f32.argmax(1)).mean()
    print(f"{model}: int8 logits within {err:.4f} of f32 (largest |logit| {spread:.2f}); same class for {same:.0%}")
    assert err > 0, f"{model}: the int8 version answers exactly as the f32 one: it is not quantised"
    assert err < 0.1 * spread, f"{model}: int8 logits off by {err} (largest {spread})"
    assert same >= 0.9, f"{model}: int8 and f32 agree on only {same:.0%} of the inputs"
print("quantize_check: ok")
