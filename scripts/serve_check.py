#!/usr/bin/python3
"""Sends Fashion-MNIST test images to a running `tessera serve` through the inference protocol
(HTTP, Triton's binary tensor extension; only the standard library and numpy) and prints the
accuracy as served beside the trainer's test accuracy from the run's summary.json.

    scripts/serve_check.py URL MODEL VERSION SUMMARY_JSON [--images N]
Exits 1 when the two differ (the whole test set is sent by default, so they must be equal)."""
import argparse, gzip, http.client, json, sys, time, urllib.parse

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url"), p.add_argument("model"), p.add_argument("version"), p.add_argument("summary")
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--batch", type=int, default=50)
    a = p.parse_args()
    with gzip.open(f"{DATA}/t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:a.images]
    with gzip.open(f"{DATA}/t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:a.images]
    u = urllib.parse.urlparse(a.url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    path = f"/v2/models/{a.model}/versions/{a.version}/infer"
    correct, start, answered_by = 0, time.monotonic(), set()
    for b in range(0, len(x), a.batch):
        batch = np.ascontiguousarray(x[b:b + a.batch])
        header = json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": list(batch.shape),
                                         "parameters": {"binary_data_size": batch.nbytes}}],
                             "outputs": [{"name": "classes"}]}).encode()
        conn.request("POST", path, header + batch.tobytes(),
                     {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            sys.exit(f"serve_check: {path} answered {r.status}: {body[:300].decode(errors='replace')}")
        out = json.loads(body)
        answered_by.add(out["model_version"])
        classes = np.array(out["outputs"][0]["data"]).reshape(-1)
        correct += int((classes == y[b:b + a.batch]).sum())
    seconds = time.monotonic() - start
    served = correct / len(x)
    trained = json.load(open(a.summary))["test_accuracy"]
    print(f"served: {len(x)} test images in {seconds:.1f} s ({len(x) / seconds:.0f} images/s, "
          f"{(len(x) + a.batch - 1) // a.batch} requests) by {a.model} version {','.join(sorted(answered_by))}")
    print(f"accuracy as served {served:.4f}; the trainer's test accuracy {trained:.4f}")
    if a.images == len(y) == 10000 and abs(served - trained) > 1e-12:
        sys.exit("serve_check: the served accuracy differs from the trainer's")


if __name__ == "__main__":
    main()
