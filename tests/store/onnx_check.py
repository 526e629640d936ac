"""The exported ONNX files of onnx_export_test.sh, checked with ONNX's tools against tessera serve.

    onnx_check.py WORK_DIR    (WORK_DIR holds mlp.onnx, cnn.onnx, test.csv and ports.json)

Each model (an MLP, a CNN, a GPT): onnx.checker (full check, shape inference included) passes; the graph's input and
outputs are as documented; onnxruntime's logits and probabilities on the same inputs match the
server's within 1e-5 (absolute, and relative to the largest logit).
"""
import gzip
import json
import os
import sys
import time
import urllib.request

import numpy as np
import onnx
import onnxruntime as ort

WORK = sys.argv[1]
TOL = 1e-5


def server_url():
    port_file = os.path.join(WORK, "ports.json")
    for _ in range(600):
        if os.path.exists(port_file):
            try:
                return f"http://127.0.0.1:{json.load(open(port_file))['http']}"
            except (ValueError, KeyError):
                pass
        time.sleep(0.05)
    sys.exit("tessera serve wrote no port file")


def wait_ready(url, model):
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"{url}/v2/models/{model}/ready").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"{model} never became ready")


def served(url, model, x):
    """(logits, probabilities) from tessera serve's KServe v2 HTTP endpoint, FP32 (a GPT's ids:
    INT32) in, FP32 out."""
    dtype = "INT32" if x.dtype == np.int64 else "FP32"
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": dtype, "data": x.ravel().tolist()}],
            "outputs": [{"name": "logits"}, {"name": "probabilities"}]}
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    out = {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"])
           for o in json.load(urllib.request.urlopen(req))["outputs"]}
    return out["logits"], out["probabilities"]


def inputs(model):
    if model == "gpt":  # 4 windows of 16 byte-level token ids
        return np.random.default_rng(5).integers(0, 256, size=(4, 16), dtype=np.int64)
    if model == "mlp":
        rows = [line.split(",") for line in open(os.path.join(WORK, "test.csv")).read().split("\n")[1:] if line]
        return np.array([[float(v) for v in r[:4]] for r in rows[:64]], dtype=np.float32)
    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    return raw[:64 * 784].reshape(64, 1, 28, 28).astype(np.float32)  # bytes as 0-255, as the server takes


def check(url, model):
    path = os.path.join(WORK, f"{model}.onnx")
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["input"], m.graph.input
    assert [o.name for o in m.graph.output] == ["logits", "probabilities"], m.graph.output
    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
    want_type = onnx.TensorProto.INT64 if model == "gpt" else onnx.TensorProto.FLOAT
    assert m.graph.input[0].type.tensor_type.elem_type == want_type, m.graph.input[0]
    if model == "gpt":  # [batch, T] ids in, [batch, T, vocab] out
        assert dims(m.graph.input[0]) == [-1, 16] and dims(m.graph.output[0]) == [-1, 16, 256], m.graph
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["tessera.model"] == model and meta["tessera.version"] == "1", meta
    ops = sorted({n.op_type for n in m.graph.node})
    x = inputs(model)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits, probs = sess.run(["logits", "probabilities"], {"input": x})
    wait_ready(url, model)
    want_logits, want_probs = served(url, model, x)
    assert logits.shape == want_logits.shape, (logits.shape, want_logits.shape)
    d_logits = float(np.abs(logits - want_logits).max())
    d_probs = float(np.abs(probs - want_probs).max())
    scale = float(np.abs(want_logits).max())
    print(f"{model}: ops {ops}; {x.shape[0]} inputs; onnxruntime vs tessera serve: max |logits| diff {d_logits:.2e} "
          f"(largest logit {scale:.2f}), max |probabilities| diff {d_probs:.2e}")
    assert d_logits <= TOL * max(1.0, scale), f"{model}: logits differ by {d_logits}"
    assert d_probs <= TOL, f"{model}: probabilities differ by {d_probs}"
    assert (logits.argmax(-1) == want_logits.argmax(-1)).all()
    return ops


url = server_url()
assert "Gemm" in check(url, "mlp")
assert {"Conv", "MaxPool"} <= set(check(url, "cnn"))
assert {"Gather", "LayerNormalization", "Softmax", "Split"} <= set(check(url, "gpt"))
print("onnx_check: ok")
