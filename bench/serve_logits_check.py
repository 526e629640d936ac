"""Checks that two v2 servers do the same work before bench/run_serve_bench.sh times them: sends the
same Fashion-MNIST test images (batch-1 HTTP JSON requests, output "logits") to each and compares
the logits, and also against the peer's network run here (serve_peer_mlserver.build_model).

    serve_logits_check.py VERSION_DIR NAME=URL[/MODEL[/VERSION]] NAME=URL... [--images 8] [--tol 1e-4]
Prints one JSON line (max |difference| of each server against the first); exits 1 beyond --tol.
"""
import argparse
import gzip
import http.client
import json
import os
import sys
import urllib.parse

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def infer(url, model, version, image):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 1, 28, 28],
                                   "data": image.reshape(-1).tolist()}],
                       "outputs": [{"name": "logits"}]})
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read()
    if r.status != 200:
        sys.exit(f"serve_logits_check: {url}{path} answered {r.status}: {text[:300]!r}")
    out = [o for o in json.loads(text)["outputs"] if o["name"] == "logits"][0]
    return np.asarray(out["data"], dtype=np.float64).reshape(-1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("version_dir")
    p.add_argument("servers", nargs="+", help="NAME=http://HOST:PORT/MODEL[/VERSION]")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    with gzip.open(IMAGES) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    pick = np.linspace(0, len(x) - 1, a.images).astype(int)
    got = {}
    for s in a.servers:
        name, url = s.split("=", 1)
        u = urllib.parse.urlparse(url)
        parts = [q for q in u.path.split("/") if q]
        base = f"{u.scheme}://{u.netloc}"
        got[name] = np.stack([infer(base, parts[0], parts[1] if len(parts) > 1 else "", x[i]) for i in pick])
    import torch
    from serve_peer_mlserver import Preparer, build_model
    net, arch = build_model(a.version_dir)
    with torch.inference_mode():
        got["torch-in-process"] = net(Preparer(arch)(x[pick])).double().numpy()
    names = list(got)
    ref = got[names[0]]
    diffs = {n: float(np.abs(got[n] - ref).max()) for n in names[1:]}
    ok = all(d <= a.tol for d in diffs.values())
    print(json.dumps({"images": [int(i) for i in pick], "reference": names[0], "max_abs_diff": diffs,
                      "tolerance": a.tol, "ok": ok, "logits_range": [float(ref.min()), float(ref.max())]}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
