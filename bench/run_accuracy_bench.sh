#!/usr/bin/env bash
# Training accuracy and wall time on the real Fashion-MNIST: tessera's trainer against PyTorch
# (Debian python3-torch 1.13) on the same spec, W1 (MLP, 5 epochs) and W2 (CNN, 3 epochs) of the
# shared BENCHMARKS.md, several seeds, runs interleaved (tessera, PyTorch, tessera, ...).
#
#   bench/run_accuracy_bench.sh           # from anywhere; needs build/tessera (cmake --build build -j1)
#
# tessera: build/tessera train jobs/examples/fmnist_{mlp,cnn}.pbtxt --set train.seed=S
#          --set train.threads=N, each run into its own run directory (summary.json).
# PyTorch: bench/torch_fmnist_train.py (same data files, model, default init, Adam 1e-3, batch 128,
#          per-epoch shuffle keeping the last partial batch, 1/255 scaling, evaluation after every
#          epoch as tessera does by default).
# Both get OMP_NUM_THREADS=N and OPENBLAS_NUM_THREADS=N; PyTorch also gets OMP_WAIT_POLICY=PASSIVE
# when N > 1 (spinning OpenMP workers fight OpenBLAS's threads on a 2-core machine: PASSIVE is the
# strongest PyTorch 1.13 configuration there, BENCHMARKS.md).
#
# Writes bench/results/fmnist_accuracy.json (one raw JSON line per run, a "disturbance" line per run:
# CPU time other processes used meanwhile, and steal; and a last "context" line: machine, versions,
# load) and bench/results/fmnist_accuracy.md (rebuild it with bench/fmnist_accuracy_report.py JSON).
# Knobs (environment): SEEDS ("1 2 3"), THREADS (2), W1_EPOCHS (5), W2_EPOCHS (3), WORKLOADS
# ("w1 w2"), BUILD (build), PYTHON (/usr/bin/python3), RUNS_DIR (runs/fmnist_accuracy-DATE),
# QUIET_WAIT (1: before starting, poll every 30 s until two checks in a row find no benchmark
# (step_bench, torch_step, run_core_bench) or build (ninja, cc1plus) running; 0: start at once),
# OUT_DIR (bench/results), NAME (fmnist_accuracy: the result files' base name).
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
SEEDS=${SEEDS:-"1 2 3"}
THREADS=${THREADS:-2}
WORKLOADS=${WORKLOADS:-"w1 w2"}
W1_EPOCHS=${W1_EPOCHS:-5}
W2_EPOCHS=${W2_EPOCHS:-3}
QUIET_WAIT=${QUIET_WAIT:-1}
OUT_DIR=${OUT_DIR:-bench/results}
NAME=${NAME:-fmnist_accuracy}
RUNS_DIR=${RUNS_DIR:-runs/fmnist_accuracy-$(date +%Y%m%d-%H%M%S)}
TESSERA=$BUILD/tessera
RAW=$OUT_DIR/$NAME.json
MD=$OUT_DIR/$NAME.md

if [[ ! -x $TESSERA ]]; then
  echo "run_accuracy_bench.sh: $TESSERA not found. Build it first: cmake --build $BUILD -j1" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import torch, numpy' 2>/dev/null; then
  echo "run_accuracy_bench.sh: $PYTHON cannot import torch and numpy (apt-get install python3-torch)" >&2
  exit 1
fi
mkdir -p "$OUT_DIR" "$RUNS_DIR"

# The machine is shared: wait until no other benchmark or build is running.
busy() {
  local p found=""
  for p in step_bench torch_step ninja cc1plus run_core_bench; do
    pgrep -f "$p" >/dev/null && found+="$p "
  done
  [[ -n $found ]] && { echo "$found"; return 0; }
  return 1
}
# Two checks in a row, 30 s apart, must find none (a build and a benchmark often follow each other).
WAITED=0
if [[ $QUIET_WAIT == 1 ]]; then
  quiet=0
  while (( quiet < 2 )); do
    if who=$(busy); then
      quiet=0
      echo "waiting for a quiet machine (running: $who; load $(cut -d' ' -f1-3 /proc/loadavg))..." >&2
    else
      quiet=$((quiet + 1))
      (( quiet < 2 )) && echo "quiet; checking again in 30 s (load $(cut -d' ' -f1-3 /proc/loadavg))..." >&2
    fi
    (( quiet < 2 )) && { sleep 30; WAITED=$((WAITED + 30)); }
  done
fi
# Run a snapshot of the binary, so that a rebuild by someone else during the run cannot mix two
# builds; its checksum and build time go into the report.
cp "$TESSERA" "$RUNS_DIR/tessera"
TESSERA_BIN=$RUNS_DIR/tessera
export TESSERA_BINARY_INFO="$BUILD/tessera sha256 $(sha256sum "$TESSERA" | cut -c1-12), links: $(ldd "$TESSERA" | grep -oE 'lib(openblas|dnnl|gomp|omp|mkl)[^ ]*' | sort -u | tr '\n' ' ')"
DIRTY=$(for d in core jobs datasets launch dist; do [[ -d $d ]] && ! git diff --quiet HEAD -- "$d" 2>/dev/null && printf '%s/ ' "$d"; done; true)
export GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)${DIRTY:+ + uncommitted changes in ${DIRTY% }}"
export HEAD_TIME="$(git log -1 --format=%cI 2>/dev/null | xargs -r date -u +%Y-%m-%dT%H:%M:%SZ -d || echo unknown)"
export BINARY_TIME="$(date -u -r "$TESSERA" +%Y-%m-%dT%H:%M:%SZ)"
LOAD_START=$(cat /proc/loadavg)
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$(date +%s)

TMP=$(mktemp)
TIMES=$(mktemp)
trap 'rm -f "$TMP" "$TIMES"' EXIT
HZ=$(getconf CLK_TCK)
# Busy and steal jiffies of the whole machine (/proc/stat: user nice system idle iowait irq softirq steal).
cpu_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }

# measure IMPL WORKLOAD SEED LOG CMD...: runs CMD with the thread variables set, stdout and stderr
# to LOG; sets RC, and appends a "disturbance" line (other processes' CPU time meanwhile, steal)
# with the process's own wall and CPU time.
measure() {
  local impl=$1 wl=$2 seed=$3 log=$4; shift 4
  echo "+ $impl $wl seed=$seed threads=$THREADS: $*" >&2
  local busy0 steal0 busy1 steal1 w0 w1 own
  read -r busy0 steal0 < <(cpu_jiffies)
  w0=$(date +%s.%N)
  set +e
  { TIMEFORMAT='%U %S'; time env OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" "$@" >"$log" 2>&1; } 2>"$TIMES"
  RC=$?
  set -e
  w1=$(date +%s.%N)
  read -r busy1 steal1 < <(cpu_jiffies)
  own=$(awk 'END { print $1 + $2 }' "$TIMES")
  awk -v impl="$impl" -v wl="$wl" -v seed="$seed" -v t="$THREADS" -v w0="$w0" -v w1="$w1" -v own="$own" \
      -v hz="$HZ" -v rc="$RC" -v busy=$((busy1 - busy0)) -v steal=$((steal1 - steal0)) 'BEGIN {
    w = w1 - w0; other = busy / hz - own; if (other < 0) other = 0
    printf "{\"kind\": \"disturbance\", \"impl\": \"%s\", \"workload\": \"%s\", \"seed\": %d, \"threads\": %d, \"rc\": %d, \"process_wall_s\": %.2f, \"own_cpu_s\": %.1f, \"other_cpu_s\": %.1f, \"steal_s\": %.1f}\n", impl, wl, seed, t, rc, w, own, other, steal / hz
  }' >>"$TMP"
}

# A failed run becomes a "failed" line carrying the tail of its log.
failed_line() {
  local impl=$1 wl=$2 seed=$3 log=$4
  "$PYTHON" - "$impl" "$wl" "$seed" "$THREADS" "$RC" "$log" <<'EOF' >>"$TMP"
import json, sys
impl, wl, seed, threads, rc, log = sys.argv[1:]
tail = open(log, errors="replace").read()[-2000:]
print(json.dumps({"kind": "run", "impl": impl, "workload": wl, "seed": int(seed), "threads": int(threads),
                  "status": "failed", "rc": int(rc), "error": tail}))
EOF
  echo "run_accuracy_bench.sh: $impl $wl seed $seed FAILED (rc $RC); log: $log" >&2
  tail -n 20 "$log" >&2
}

run_tessera() {
  local wl=$1 seed=$2 epochs=$3 spec dir
  [[ $wl == w1 ]] && spec=jobs/examples/fmnist_mlp.pbtxt || spec=jobs/examples/fmnist_cnn.pbtxt
  dir=$RUNS_DIR/tessera-$wl-seed$seed
  rm -rf "$dir"
  measure tessera "$wl" "$seed" "$RUNS_DIR/tessera-$wl-seed$seed.log" \
    "$TESSERA_BIN" train "$spec" --run-dir "$dir" \
    --set train.seed="$seed" --set train.threads="$THREADS" --set train.epochs="$epochs"
  if (( RC != 0 )) || [[ ! -f $dir/summary.json ]]; then
    failed_line tessera "$wl" "$seed" "$RUNS_DIR/tessera-$wl-seed$seed.log"
    return
  fi
  "$PYTHON" - "$wl" "$seed" "$dir" "$spec" <<'EOF' >>"$TMP"
import json, sys
wl, seed, d, spec = sys.argv[1:]
s = json.load(open(f"{d}/summary.json"))
evals = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if '"eval"' in l]
evals = [e for e in evals if e.get("event") == "eval"]
print(json.dumps({
    "kind": "run", "impl": "tessera", "workload": wl, "seed": int(seed), "threads": s["threads"],
    "status": "ok", "test_accuracy": s["test_accuracy"], "test_loss": round(s["test_loss"], 5),
    "train_seconds": round(s["train_seconds"], 3), "wall_seconds": round(s["wall_seconds"], 3),
    "samples_per_sec": round(s["samples_per_sec"], 1), "epochs": s["epochs_completed"], "steps": s["steps"],
    "epoch_test_accuracy": [round(e["test_accuracy"], 4) for e in evals],
    "eval_seconds": round(sum(e.get("eval_seconds", 0) for e in evals), 3),
    "final_train_loss": round(s["final_train_loss"], 5), "spec": spec, "run_dir": d,
    "tessera_version": s.get("tessera_version"),
}))
EOF
}

run_torch() {
  local wl=$1 seed=$2 epochs=$3 log=$RUNS_DIR/pytorch-$wl-seed$seed.log
  local policy=()
  (( THREADS > 1 )) && policy=(OMP_WAIT_POLICY=PASSIVE)
  measure pytorch "$wl" "$seed" "$log" \
    env "${policy[@]}" "$PYTHON" bench/torch_fmnist_train.py --workload "$wl" --seed "$seed" \
    --threads "$THREADS" --epochs "$epochs"
  local line
  line=$(grep '^{' "$log" | tail -n 1 || true)
  if (( RC != 0 )) || [[ -z $line ]]; then
    failed_line pytorch "$wl" "$seed" "$log"
    return
  fi
  "$PYTHON" -c 'import json, sys; d = json.loads(sys.argv[1]); print(json.dumps({"kind": "run", **d, "status": "ok"}))' \
    "$line" >>"$TMP"
}

i=0
for seed in $SEEDS; do
  for wl in $WORKLOADS; do
    [[ $wl == w1 ]] && epochs=$W1_EPOCHS || epochs=$W2_EPOCHS
    # Alternate which side goes first, so that slow drift of the machine does not favour one.
    if (( i % 2 == 0 )); then
      run_tessera "$wl" "$seed" "$epochs"; run_torch "$wl" "$seed" "$epochs"
    else
      run_torch "$wl" "$seed" "$epochs"; run_tessera "$wl" "$seed" "$epochs"
    fi
    i=$((i + 1))
    grep '"kind": "run"' "$TMP" | tail -n 2 | cut -c1-220 >&2
  done
done
END=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export START END LOAD_START LOAD_END="$(cat /proc/loadavg)" ELAPSED=$(( $(date +%s) - T0 )) WAITED
export THREADS SEEDS W1_EPOCHS W2_EPOCHS RUNS_DIR GIT_REV HEAD_TIME BINARY_TIME TESSERA_BINARY_INFO
export CPU_MODEL="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
export NPROC="$(nproc)" KERNEL="$(uname -r)"
export OS_NAME="$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" || echo unknown)"
export TESSERA_VERSION="$("$TESSERA" --version 2>/dev/null || echo unknown)"
export OPENBLAS_VERSION="$(dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' 'libopenblas0-*' 2>/dev/null | awk '$1 == "ii" { printf "%s%s %s", n++ ? ", " : "", $2, $3 }')"
export TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
export TORCH_PKG="$(dpkg-query -W -f='${Version}' python3-torch 2>/dev/null || echo unknown)"
export NUMPY_VERSION="$("$PYTHON" -c 'import numpy; print(numpy.__version__)')"
export PYTHON_VERSION="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
# The run's context goes into the raw file too, so that the report can be rebuilt from it alone.
"$PYTHON" - <<'EOF' >>"$TMP"
import json, os
keys = ("START END LOAD_START LOAD_END ELAPSED WAITED THREADS SEEDS W1_EPOCHS W2_EPOCHS RUNS_DIR CPU_MODEL NPROC "
        "KERNEL OS_NAME TESSERA_VERSION TESSERA_BINARY_INFO BINARY_TIME GIT_REV HEAD_TIME OPENBLAS_VERSION "
        "TORCH_VERSION TORCH_PKG NUMPY_VERSION PYTHON_VERSION").split()
print(json.dumps({"kind": "context", **{k: os.environ.get(k, "") for k in keys}}))
EOF
cp "$TMP" "$RAW"
"$PYTHON" bench/fmnist_accuracy_report.py "$RAW" > "$MD"
echo "wrote $RAW and $MD (${ELAPSED} s; run directories and logs in $RUNS_DIR)" >&2
cat "$MD"
