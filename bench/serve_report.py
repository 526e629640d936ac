"""Writes bench/results/serve.{json,md} from bench/run_serve_bench.sh's serve_load lines.

    serve_report.py RESULTS.jsonl LOGITS.json OUT_DIR LOAD_START LOAD_END PEER_VERSIONS TESSERA_VERSION VERSION_DIR [SOURCE]
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
logits = json.load(open(sys.argv[2]))
out, load_start, load_end, peer_versions, tessera_version, vdir = sys.argv[3:9]
source = sys.argv[9] if len(sys.argv) > 9 else vdir  # where the version came from

TARGET_RATIO, TARGET_P99_MS = 3.0, 2.0
CONCURRENCY = [1, 16, 64]
LABEL = {"http-json": "HTTP JSON", "http-binary": "HTTP binary", "grpc": "gRPC", "http-noop": "HTTP no-op",
         "grpc-noop": "gRPC no-op (ServerLive)", "http-live": "HTTP GET /v2/health/live"}
SERVER = {"tessera": "tessera (batching)", "tessera-nobatch": "tessera --no-batching", "mlserver": "MLServer",
          "mlserver-batched": "MLServer adaptive batching"}


def key(r):
    mode = r["mode"] + ("-binary-body" if r.get("body") == "binary" else "")
    return r["server"], mode, r["concurrency"]


cells = {}
for r in rows:
    cells.setdefault(key(r), []).append(r)


def summary(k):
    rs = cells.get(k)
    if not rs:
        return None
    rps = [r["rps"] for r in rs]
    return {"rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs), "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "p99_ms_worst": max(r["p99_ms"] for r in rs), "rounds": len(rs), "requests": rs[0]["requests"]}


table = {"%s|%s|%d" % k: summary(k) for k in sorted(cells)}


def get(server, mode, c):
    return table.get("%s|%s|%d" % (server, mode, c))


def ratio(a, b):
    return a["rps"] / b["rps"] if a and b else None


# ---- targets --------------------------------------------------------------------------------------
targets = {"throughput_c16": [], "throughput_c16_batched_peer": [], "p99_c1": [], "batching_c64": []}
for mode in ["http-json", "grpc"]:  # like with like: the same protocol on both sides
    t = get("tessera", mode, 16)
    for peer, name in [("mlserver", "throughput_c16"), ("mlserver-batched", "throughput_c16_batched_peer")]:
        p = get(peer, mode, 16)
        if p:
            targets[name].append({"tessera": mode, "peer": peer, "peer_mode": mode, "ratio": ratio(t, p)})
for peer, name in [("mlserver", "throughput_c16"), ("mlserver-batched", "throughput_c16_batched_peer")]:
    modes = [m for m in ["http-json", "grpc"] if get(peer, m, 16)]
    best_peer_mode = max(modes, key=lambda m: get(peer, m, 16)["rps"])
    best_mode = max(["http-json", "http-binary", "grpc"], key=lambda m: get("tessera", m, 16)["rps"])
    targets[name].append({"tessera": best_mode, "peer": peer, "peer_mode": best_peer_mode, "best_vs_best": True,
                          "ratio": ratio(get("tessera", best_mode, 16), get(peer, best_peer_mode, 16))})
for mode in ["http-json", "http-binary", "grpc"]:
    s = get("tessera", mode, 1)
    targets["p99_c1"].append({"mode": mode, "p99_ms": s["p99_ms"], "p99_ms_worst": s["p99_ms_worst"]})
    targets["batching_c64"].append({"mode": mode, "ratio": ratio(get("tessera", mode, 64), get("tessera-nobatch", mode, 64))})
met = {
    "throughput_c16": all(t["ratio"] >= TARGET_RATIO for t in targets["throughput_c16"]),
    "throughput_c16_batched_peer": all(t["ratio"] >= TARGET_RATIO for t in targets["throughput_c16_batched_peer"]),
    "p99_c1": all(t["p99_ms"] < TARGET_P99_MS for t in targets["p99_c1"]),
    "batching_c64": all(t["ratio"] > 1 for t in targets["batching_c64"]),
}

cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
meta = {"date": datetime.date.today().isoformat(), "machine": "%s, %d cores" % (cpu, os.cpu_count()),
        "kernel": platform.release(), "load_at_start": load_start, "load_at_end": load_end, "peer": peer_versions,
        "tessera": tessera_version, "model_version": "/".join(os.path.normpath(vdir).split(os.sep)[-2:]), "model_source": source, "rounds": max(int(r["round"]) for r in rows if "round" in r)}
json.dump({"meta": meta, "logits_check": logits, "cells": table, "targets": targets, "met": met, "runs": rows},
          open(os.path.join(out, "serve.json"), "w"), indent=1)


# ---- markdown -------------------------------------------------------------------------------------
def fmt_rps(s):
    if not s:
        return "-"
    spread = " (%.0f-%.0f)" % (s["rps_min"], s["rps_max"]) if s["rounds"] > 1 else ""
    return "%.0f%s" % (s["rps"], spread)


def yes(b):
    return "**met**" if b else "**not met**"


lines = ["# Serving W2: tessera serve against MLServer + PyTorch (bench/run_serve_bench.sh)", ""]
lines.append("%s; %s; kernel %s; load at start %s, at end %s; %s; %s." % (
    meta["date"], meta["machine"], meta["kernel"], load_start, load_end, tessera_version, peer_versions))
lines.append("")
lines.append(
    "W2 (the Fashion-MNIST CNN; the version served: %s), batch-1 requests: one Fashion-MNIST test image (input UINT8 [1,1,28,28]), "
    "output `logits` only. Closed loop: N client threads (bench/serve_load.cc), each with its own keep-alive "
    "connection, one request at a time; %d requests per tessera cell and %d per MLServer cell after a warm-up; "
    "every answer checked (200, 10 finite logits). Servers on CPU 1 with one compute thread each (tessera "
    "`--threads 1`, PyTorch 1 thread, MLServer `parallel_workers: 0`), the load generator on CPU 0. "
    "tessera's batching: `--max-batch-size 64 --max-queue-delay-us 500`; MLServer's adaptive batching the same "
    "(max_batch_size 64, max_batch_time 0.5 ms). %d rounds, interleaved; req/s is the median (range), p50 and "
    "p99 the medians over the rounds." % (
        source, get("tessera", "http-json", 1)["requests"],
        get("mlserver", "http-json", 1)["requests"], meta["rounds"]))
lines.append("")
diffs = ", ".join("%s %.1e" % (k, v) for k, v in logits["max_abs_diff"].items())
lines.append("Same work: before timing, the logits of every server on %d test images were compared with tessera's "
             "(max |difference|: %s; tolerance %g): %s." % (len(logits["images"]), diffs, logits["tolerance"],
                                                            "equal" if logits["ok"] else "NOT equal"))
lines.append("")
lines.append("## Targets")
lines.append("")
lines.append("| target | measured | |\n| --- | --- | --- |")
for name, what in [("throughput_c16", ">= 3x the Python server's requests/s at concurrency 16 (MLServer without batching, its default)"),
                   ("throughput_c16_batched_peer", "the same against MLServer with its adaptive batching on (a stronger peer)")]:
    parts = []
    for t in targets[name]:
        parts.append("%s%s / %s: %.1fx" % ("best vs best, " if t.get("best_vs_best") else "", LABEL[t["tessera"]],
                                           LABEL[t["peer_mode"]], t["ratio"]))
    lines.append("| %s | %s | %s |" % (what, "; ".join(parts), yes(met[name])))
parts = ["%s %.2f ms (worst round %.2f)" % (LABEL[t["mode"]], t["p99_ms"], t["p99_ms_worst"]) for t in targets["p99_c1"]]
lines.append("| p99 at concurrency 1 under 2 ms | %s | %s |" % ("; ".join(parts), yes(met["p99_c1"])))
parts = ["%s %.2fx" % (LABEL[t["mode"]], t["ratio"]) for t in targets["batching_c64"]]
lines.append("| batching on / off, requests/s at concurrency 64 > 1 | %s | %s |" % ("; ".join(parts), yes(met["batching_c64"])))
lines.append("")

order = [("tessera", m) for m in ["http-json", "http-binary", "grpc"]] + \
        [("tessera-nobatch", m) for m in ["http-json", "http-binary", "grpc"]] + \
        [("mlserver", m) for m in ["http-json", "grpc"]] + [("mlserver-batched", m) for m in ["http-json", "grpc"]] + \
        [("tessera", "http-noop"), ("tessera", "http-noop-binary-body"), ("tessera", "grpc-noop"),
         ("tessera", "http-live"), ("mlserver", "http-live")]
ceiling = {"http-json": "http-noop", "http-binary": "http-noop-binary-body", "grpc": "grpc-noop"}
for c in CONCURRENCY:
    lines.append("## Concurrency %d" % c)
    lines.append("")
    lines.append("| server | protocol | req/s | p50 ms | p99 ms | of the no-op ceiling |\n| --- | --- | --- | --- | --- | --- |")
    for server, mode in order:
        s = get(server, mode, c)
        if not s:
            continue
        label = LABEL.get(mode, "HTTP no-op, binary request body" if mode == "http-noop-binary-body" else mode)
        if mode == "http-noop":
            label = "HTTP no-op, JSON request body"
        of = ""
        if server.startswith("tessera") and mode in ceiling and get("tessera", ceiling[mode], c):
            of = "%.0f%%" % (100 * s["rps"] / get("tessera", ceiling[mode], c)["rps"])
        lines.append("| %s | %s | %s | %.2f | %.2f | %s |" % (SERVER[server], label, fmt_rps(s), s["p50_ms"], s["p99_ms"], of))
    lines.append("")
lines.append("Ratios at each concurrency (tessera / MLServer requests/s, like with like; batching on / off):")
lines.append("")
lines.append("| concurrency | HTTP JSON vs MLServer | HTTP JSON vs MLServer batched | gRPC vs MLServer | gRPC vs MLServer batched | "
             "batching on/off JSON | binary | gRPC |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
for c in CONCURRENCY:
    def r(a, b):
        x = ratio(a, b)
        return "%.2fx" % x if x else "-"
    lines.append("| %d | %s | %s | %s | %s | %s | %s | %s |" % (
        c, r(get("tessera", "http-json", c), get("mlserver", "http-json", c)),
        r(get("tessera", "http-json", c), get("mlserver-batched", "http-json", c)),
        r(get("tessera", "grpc", c), get("mlserver", "grpc", c)),
        r(get("tessera", "grpc", c), get("mlserver-batched", "grpc", c)),
        r(get("tessera", "http-json", c), get("tessera-nobatch", "http-json", c)),
        r(get("tessera", "http-binary", c), get("tessera-nobatch", "http-binary", c)),
        r(get("tessera", "grpc", c), get("tessera-nobatch", "grpc", c))))
lines.append("")
on1, off1 = get("tessera", "http-binary", 1), get("tessera-nobatch", "http-binary", 1)
if on1 and off1:
    lines.append("At concurrency 1 the batcher holds a lone request for up to its queue delay before running it: "
                 "HTTP binary p50 %.2f ms with batching, %.2f ms with `--no-batching`." % (on1["p50_ms"], off1["p50_ms"]))
    lines.append("")
lines.append("MLServer does not implement Triton's binary HTTP extension, so HTTP binary has no peer row; it has "
             "no no-op endpoint either, so `GET /v2/health/live` is shown for both servers as the cheapest request "
             "each answers.")
lines.append("")
text = "\n".join(lines) + "\n"
open(os.path.join(out, "serve.md"), "w").write(text)
print(text)
