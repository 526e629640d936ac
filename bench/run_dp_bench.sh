#!/usr/bin/env bash
# Data-parallel W1/W2 training throughput: tessera on 2 ranks x 1 thread (mpirun) against PyTorch
# DDP (gloo, Debian's python3-torch) on 2 ranks x 1 thread, global batch 256 = 2 x 128, in one
# run; and the scaling efficiency of 2 ranks against 1 for both (throughput(2 ranks, global 256)
# / (2 * throughput(1 rank, batch 128))). Target (shared BENCHMARKS.md): tessera >= 1.5x DDP.
#
#   bench/run_dp_bench.sh [BUILD_DIR]      (default: build; expects BUILD_DIR/bench/dp_step_bench)
#
# Builds nothing. Waits (polling every 30 s, at most 15 min, then runs anyway and says so) until no
# other benchmark or compile is running. Per workload, four measurements, interleaved so that
# drift hits both sides alike: tessera 1 rank, PyTorch 1 process, tessera 2 ranks, PyTorch DDP 2
# ranks. Each is warm-up + `steps` x `repeats` timed steps; the median repeat is reported.
# Writes bench/results/dp_training.{md,json}.
#
# Environment: W1_STEPS, W2_STEPS (default 200 each), REPEATS (3), WARMUP (20), QUIET_WAIT_S (900),
# RESULTS_DIR (bench/results).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BIN=$BUILD/bench/dp_step_bench
[ -x "$BIN" ] || { echo "missing $BIN: build it first (ninja -C $BUILD dp_step_bench)" >&2; exit 1; }
PY=/usr/bin/python3
W1_STEPS=${W1_STEPS:-200}
W2_STEPS=${W2_STEPS:-200}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-20}
QUIET_WAIT_S=${QUIET_WAIT_S:-900}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TESSERA_NUM_THREADS=1
OUT=${RESULTS_DIR:-bench/results}
mkdir -p "$OUT"
RAW=$(mktemp)
trap 'rm -f "$RAW"' EXIT

# ---- wait for a quiet machine -------------------------------------------------------------------
busy() {  # prints what is running, one "pattern: pids" per line; empty when quiet
  local p pids
  for p in step_bench torch_ "tessera train" cc1plus ninja; do
    pids=$(pgrep -f "$p" | tr '\n' ' ' || true)
    [ -n "$pids" ] && echo "$p: $pids"
  done
  return 0
}
waited=0
quiet=yes
while [ -n "$(busy)" ]; do
  if [ "$waited" -ge "$QUIET_WAIT_S" ]; then
    quiet=no
    break
  fi
  echo "waiting for a quiet machine (${waited}s): $(busy | tr '\n' ';') load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  sleep 30
  waited=$((waited + 30))
done
busy_at_start=$(busy | tr '\n' ';')
echo "quiet=$quiet after ${waited}s; still running: ${busy_at_start:-nothing}" >&2

# What else is using the CPU (the quiet patterns above do not catch everything, e.g. test suites
# run under mpiexec): processes at >= 10% CPU over their lifetime, by command.
cpu_users() {
  ps -eo pcpu=,args= --sort=-pcpu | awk '$1 >= 10 { n = split($2, a, "/"); c[a[n]]++; p[a[n]] += $1 }
    END { for (k in c) printf "%s x%d (%.0f%%); ", k, c[k], p[k] }'
}

# ---- measurements -------------------------------------------------------------------------------
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
others_start=$(cpu_users)
t_start=$(date +%s)
run() {  # run LABEL CMD...: appends the JSON line, tagged with the load before it, to $RAW
  local label=$1
  shift
  local load line
  load=$(cut -d' ' -f1 /proc/loadavg)
  echo "== $label (load $load)" >&2
  line=$(timeout 600 "$@" | grep '^{' | tail -1) || { echo "$label failed" >&2; exit 1; }
  [ -n "$line" ] || { echo "$label printed no result" >&2; exit 1; }
  echo "$line" | cut -c1-400 >&2
  echo "{\"label\": \"$label\", \"load1_before\": $load, \"result\": $line}" >> "$RAW"
}
for model in w1 w2; do
  steps=$W1_STEPS
  [ "$model" = w2 ] && steps=$W2_STEPS
  common=(--model "$model" --per-rank-batch 128 --threads 1 --warmup "$WARMUP" --steps "$steps" --repeats "$REPEATS")
  MPI=(mpirun --oversubscribe --bind-to none)
  run "$model tessera 1" "${MPI[@]}" -np 1 "$BIN" "${common[@]}"
  run "$model pytorch 1" env OMP_WAIT_POLICY=PASSIVE "$PY" bench/torch_ddp_step.py --ranks 1 "${common[@]}"
  run "$model tessera 2" "${MPI[@]}" -np 2 "$BIN" "${common[@]}"
  run "$model pytorch 2" env OMP_WAIT_POLICY=PASSIVE "$PY" bench/torch_ddp_step.py --ranks 2 "${common[@]}"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
others_end=$(cpu_users)
elapsed=$(( $(date +%s) - t_start ))

# ---- report -------------------------------------------------------------------------------------
"$PY" - "$RAW" "$OUT/dp_training.md" "$OUT/dp_training.json" "$load_start" "$load_end" "$quiet" "$waited" \
  "${busy_at_start:-nothing}" "$elapsed" "$BUILD" "${others_start:-none}" "${others_end:-none}" <<'PY'
import datetime, json, os, subprocess, sys
raw, md_path, json_path, load_start, load_end, quiet, waited, busy, elapsed, build, others_start, others_end = sys.argv[1:]

def sh(cmd):
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True).stdout.strip()

recs = [json.loads(l) for l in open(raw) if l.strip()]
by = {(r["result"]["model"], r["result"]["impl"].split("-")[0], r["result"]["ranks"]): r for r in recs}
machine = {
    "cpu": sh("lscpu | sed -n 's/^Model name: *//p'"), "cores": int(sh("nproc --all")),
    "memory": sh("free -g | awk '/^Mem:/{print $2 \" GiB\"}'"), "os": sh(". /etc/os-release; echo $PRETTY_NAME"),
    "kernel": sh("uname -r"),
}
versions = {
    "tessera": sh("git rev-parse --short HEAD") + (" + uncommitted changes" if sh("git status --porcelain -- core dist") else ""),
    # The tree is shared and edited while benchmarks run: what the binary was built from.
    "tessera_sources_diff_sha256": sh("{ git diff HEAD -- core dist; git ls-files --others --exclude-standard core dist | "
                                      "xargs -r cat; } | sha256sum | cut -c1-16"),
    "tessera_sources_newer_than_binary": sh(f"find core dist -newer {build}/bench/dp_step_bench -type f | sort | tr '\\n' ' '"),
    "binary_mtime": sh(f"date -u -r {build}/bench/dp_step_bench +%Y-%m-%dT%H:%M:%SZ"),
    "compiler": sh(f"sed -n 's/^CMAKE_CXX_COMPILER:[^=]*=//p' {build}/CMakeCache.txt | xargs -r sh -c '$0 --version' | head -1"),
    "build_type": sh(f"sed -n 's/^CMAKE_BUILD_TYPE:[^=]*=//p' {build}/CMakeCache.txt"),
    "onednn": sh(f"sed -n 's/^TESSERA_USE_ONEDNN:[^=]*=//p' {build}/CMakeCache.txt"),
    "mpi": sh("mpirun --version | head -1"),
    "torch": sh("/usr/bin/python3 -c 'import torch; print(torch.__version__)'") + " (Debian " +
             sh("dpkg-query -W -f '${Package} ${Version}' python3-torch") + ")",
    "python": sh("/usr/bin/python3 --version"),
    "openblas": sh("dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n' 2>/dev/null | awk '$1 == \"ii\" && $2 ~ /^libopenblas0/ {print $2, $3; exit}'"),
}
date = datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z"
rows = []
for model in ("w1", "w2"):
    t1, t2 = by[(model, "tessera", 1)]["result"], by[(model, "tessera", 2)]["result"]
    p1, p2 = by[(model, "pytorch", 1)]["result"], by[(model, "pytorch", 2)]["result"]
    rows.append({
        "workload": model.upper(), "steps": t2["steps"], "repeats": t2["repeats"],
        "tessera_2rank_sps": t2["samples_per_sec"], "ddp_2rank_sps": p2["samples_per_sec"],
        "ratio": t2["samples_per_sec"] / p2["samples_per_sec"],
        "tessera_1rank_sps": t1["samples_per_sec"], "torch_1proc_sps": p1["samples_per_sec"],
        "tessera_scaling": t2["samples_per_sec"] / (2 * t1["samples_per_sec"]),
        "ddp_scaling": p2["samples_per_sec"] / (2 * p1["samples_per_sec"]),
        "ranges": {k: [r["samples_per_sec_min"], r["samples_per_sec_max"]]
                   for k, r in (("tessera_1", t1), ("tessera_2", t2), ("torch_1", p1), ("ddp_2", p2))},
    })
wait_note = (f"machine quiet after waiting {waited} s" if quiet == "yes" else
             f"NOT quiet: gave up waiting after {waited} s; still running at start: {busy}")
doc = {"benchmark": "dp_training", "date": date, "machine": machine, "versions": versions,
       "load_avg_before": load_start, "load_avg_after": load_end, "quiet": quiet == "yes",
       "waited_s": int(waited), "busy_at_start": busy,
       "cpu_users_before": others_start, "cpu_users_after": others_end, "elapsed_s": int(elapsed),
       "target": "tessera 2-rank >= 1.5x PyTorch DDP (gloo)", "table": rows, "runs": recs}
json.dump(doc, open(json_path, "w"), indent=1)

def k(v):
    return f"{v / 1000:.2f} k" if v >= 1000 else f"{v:.0f}"

md = ["# Data-parallel training: tessera (MPI, 2 ranks) against PyTorch DDP (gloo, 2 ranks)", "",
      f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}; {machine['os']}, kernel {machine['kernel']}",
      f"- date: {date}; run took {elapsed} s; {wait_note}",
      f"- load average (1/5/15 min) before {load_start}, after {load_end} (on {machine['cores']} cores); "
      f"1-min load before each measurement in the table at the end",
      f"- other processes using the CPU (>= 10%): before: {others_start}; after: {others_end}",
      f"- versions: tessera {versions['tessera']} (core/ and dist/ diff sha256 {versions['tessera_sources_diff_sha256']}; binary built "
      f"{versions['binary_mtime']}; sources newer than it: {versions['tessera_sources_newer_than_binary'] or 'none'}; "
      f"{versions['build_type']}, oneDNN {versions['onednn']}, {versions['compiler']}); "
      f"{versions['mpi']}; PyTorch {versions['torch']}, {versions['python']}; {versions['openblas']}",
      "- method: `bench/run_dp_bench.sh` (tessera: `dp_step_bench` under `mpirun --oversubscribe --bind-to none`, dist::Reducer "
      "with 25 MB buckets; PyTorch: `torch_ddp_step.py`, DistributedDataParallel over gloo, 25 MB buckets, 2 processes from "
      "torch.multiprocessing). 1 thread per rank everywhere: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TESSERA_NUM_THREADS=1, "
      "torch.set_num_threads(1), OMP_WAIT_POLICY=PASSIVE for PyTorch. Per-rank batch 128 of random data resident in memory, "
      "global batch 256 on 2 ranks; Adam lr 1e-3; fp32.",
      f"- timing: {rows[0]['repeats']} repeats of {rows[0]['steps']} (W1) / {rows[1]['steps']} (W2) steps after "
      f"{recs[0]['result']['warmup']} warm-up steps; barrier before and after each repeat, the slowest rank's time; "
      "median repeat (range in brackets). Measurements interleaved per workload: tessera 1, PyTorch 1, tessera 2, DDP 2.",
      "- scaling efficiency = throughput(2 ranks, global 256) / (2 x throughput(1 rank, batch 128)); the 1-rank runs are plain "
      "training (no reducer, no DDP).",
      "", "| workload | tessera 2-rank samples/s | DDP samples/s | ratio (target >= 1.5) | tessera scaling efficiency | DDP scaling efficiency |",
      "| --- | --- | --- | --- | --- | --- |"]
for r in rows:
    g = r["ranges"]
    md.append(f"| {r['workload']} | {k(r['tessera_2rank_sps'])} ({k(g['tessera_2'][0])}–{k(g['tessera_2'][1])}) | "
              f"{k(r['ddp_2rank_sps'])} ({k(g['ddp_2'][0])}–{k(g['ddp_2'][1])}) | {r['ratio']:.2f} | "
              f"{r['tessera_scaling']:.2f} | {r['ddp_scaling']:.2f} |")
md += ["", "1-rank baselines (batch 128):", "", "| workload | tessera 1 rank samples/s | PyTorch 1 process samples/s | ratio |",
       "| --- | --- | --- | --- |"]
for r in rows:
    g = r["ranges"]
    md.append(f"| {r['workload']} | {k(r['tessera_1rank_sps'])} ({k(g['tessera_1'][0])}–{k(g['tessera_1'][1])}) | "
              f"{k(r['torch_1proc_sps'])} ({k(g['torch_1'][0])}–{k(g['torch_1'][1])}) | "
              f"{r['tessera_1rank_sps'] / r['torch_1proc_sps']:.2f} |")
md += ["", "| run | 1-min load before | samples/s | ms/step | runs |", "| --- | --- | --- | --- | --- |"]
for rec in recs:
    res = rec["result"]
    md.append(f"| {rec['label']} | {rec['load1_before']} | {res['samples_per_sec']:.1f} | {res['ms_per_step']:.2f} | "
              f"{', '.join(f'{v:.0f}' for v in res['runs'])} |")
open(md_path, "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
