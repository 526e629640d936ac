#!/usr/bin/python3
"""The Markdown report of bench/run_quantize_bench.sh from its JSON lines.

  quantize_report.py RESULTS.jsonl START LOAD_START LOAD_END TESSERA"""
import hashlib
import json
import platform
import statistics
import subprocess
import sys

path, start, load_start, load_end, tessera = sys.argv[1:6]
rows = [json.loads(line) for line in open(path) if line.strip()]
quant = [r for r in rows if r.get("kind") == "quantize"]
fwd = [r for r in rows if r.get("kind") == "forward"]
serve = [r for r in rows if r.get("tags", r).get("kind") == "serve"]


def tag(r, k):
    return str(r.get("tags", {}).get(k, r.get(k)))


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
print("# int8 serving of W2 beside f32\n")
print("Produced by `bench/run_quantize_bench.sh` (raw lines: `bench/results/int8_serving.jsonl`). W2 "
      "(`jobs/examples/fmnist_cnn.pbtxt`, 3 epochs, one seed per row) is trained and published, and "
      "`tessera store quantize` makes its int8 version: per-output-channel int8 weights, each Linear/Conv2d "
      "input calibrated as max |x| over 1000 training examples. Both are evaluated on the 10k test images "
      "by the quantize command itself. Target (the issue): an accuracy drop of at most 1 point.\n")
print(f"- date: {start} (UTC); machine: {cpu}, {platform.node()}; load average at start {load_start}, at end {load_end}")
print(f"- tessera at git {commit()}; binary {tessera} sha256 "
      f"{hashlib.sha256(open(tessera, 'rb').read()).hexdigest()[:12]}")
backend = {r.get("int8_backend") for r in fwd}
print(f"- int8 kernels: {', '.join(sorted(b for b in backend if b))} (oneDNN's s8 primitives; `reference`: the loops)\n")

print("## Accuracy and size\n")
print("| seed | f32 test accuracy | int8 test accuracy | drop (points) | f32 weights.h5 | int8 weights.h5 | size ratio |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
drops = []
for q in quant:
    a, b = q["parent_metrics"]["test_accuracy"], q["metrics"]["test_accuracy"]
    drops.append(100 * (a - b))
    print(f"| {q['seed']} | {a:.4f} | {b:.4f} | {100 * (a - b):+.2f} | {q['parent_weights_bytes']:,} | "
          f"{q['weights_bytes']:,} | {q['weights_bytes'] / q['parent_weights_bytes']:.3f} |")
if drops:
    print(f"\nLargest drop {max(drops):+.2f} points, mean {statistics.mean(drops):+.2f} "
          f"({'meets' if max(drops) <= 1.0 else 'misses'} the ≤ 1 point target).\n")

print("## Forward pass in process (one thread, CPU 1)\n")
print("`bench/int8_forward_bench`: the network as the server builds it, weights read as the server reads them; "
      "median of 300 forwards after 30 untimed, per round; the table gives the median over rounds.\n")
print("| batch | f32 ms | int8 ms | int8 / f32 time | f32 examples/s | int8 examples/s |")
print("| ---: | ---: | ---: | ---: | ---: | ---: |")
for b in sorted({r["batch"] for r in fwd}):
    f = statistics.median(r["median_ms"] for r in fwd if r["batch"] == b and r["quantization"] == "NONE")
    i = statistics.median(r["median_ms"] for r in fwd if r["batch"] == b and r["quantization"] == "INT8")
    print(f"| {b} | {f:.3f} | {i:.3f} | {i / f:.2f} | {b * 1e3 / f:,.0f} | {b * 1e3 / i:,.0f} |")

print("\n## Serving over HTTP (Triton binary, one image a request)\n")
print("One `tessera serve` (dynamic batching on, defaults; `--threads 1`, CPU 1) serving both versions; "
      "`bench/serve_load` on CPU 0; the median over rounds of each cell.\n")
print("| concurrency | version | requests/s | p50 ms | p99 ms | int8 / f32 p50 |")
print("| ---: | --- | ---: | ---: | ---: | ---: |")
for c in sorted({int(tag(r, "concurrency")) for r in serve}):
    cell = {}
    for v in ("1", "2"):
        rs = [r for r in serve if int(tag(r, "concurrency")) == c and tag(r, "version") == v]
        if rs:
            cell[v] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
    for v, name in (("1", "f32"), ("2", "int8")):
        if v in cell:
            ratio = f"{cell['2']['p50_ms'] / cell['1']['p50_ms']:.2f}" if v == "2" and "1" in cell else ""
            print(f"| {c} | {name} | {cell[v]['rps']:,.0f} | {cell[v]['p50_ms']:.3f} | {cell[v]['p99_ms']:.3f} | {ratio} |")

print("\n## Notes\n")
print("- The int8 file holds 4 bytes per output channel of scales and one of each layer's input scale beside "
      "the int8 weights; biases stay float32, hence a ratio a little over 1/4.")
print("- Where int8 time goes at batch 64 (ONEDNN_VERBOSE on this machine, AVX-512 VNNI): the two s8 "
      "convolutions take about 1.0 ms together, but oneDNN writes their f32 outputs in its channels-last "
      "layout, and turning them back into tessera's NCHW costs about 0.9 ms more; quantising each layer's "
      "input is a vectorised loop. Asking oneDNN 2.6 for NCHW outputs directly selects its reference "
      "kernel (about 70x slower), so the reorder stays until tessera's pooling takes channels-last input.")
print("- Over HTTP at concurrency 1 the forward pass is a small part of a request (about 0.75 ms, mostly "
      "protocol and batching delay), so int8 changes latency little there; at concurrency 16 the server "
      "runs batches and the int8 forward shows.")
