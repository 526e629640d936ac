#!/usr/bin/env bash
# Core step-time benchmark: tessera vs PyTorch (Debian python3-torch) on W1 and W2 at 1 and 2
# threads, with the sgemm ceiling of the same machine, in one run (shared BENCHMARKS.md).
#
#   bench/run_core_bench.sh            # from the repository root, after building step_bench:
#   cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTESSERA_BUILD_BENCHMARKS=ON && ninja -C build step_bench
#
# Writes bench/results/core_step.json (every raw JSON line) and bench/results/core_step.md.
# Knobs (environment): WARMUP (20), STEPS (200), REPEATS (3), THREADS ("1 2"), BUILD (build),
# PYTHON (/usr/bin/python3), QUIET_LOAD (0.5: wait up to 2 min for the 1-minute load average to
# drop below it before starting; the machine is shared).
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
WARMUP=${WARMUP:-20}
STEPS=${STEPS:-200}
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-"1 2"}
QUIET_LOAD=${QUIET_LOAD:-0.5}
BENCH=$BUILD/bench/step_bench
OUT_DIR=bench/results
RAW=$OUT_DIR/core_step.json
MD=$OUT_DIR/core_step.md

if [[ ! -x $BENCH ]]; then
  echo "run_core_bench.sh: $BENCH not found. Build it first:" >&2
  echo "  cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DTESSERA_BUILD_BENCHMARKS=ON && ninja -C $BUILD step_bench" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "run_core_bench.sh: $PYTHON cannot import torch (apt-get install python3-torch)" >&2
  exit 1
fi
mkdir -p "$OUT_DIR"

load1() { cut -d' ' -f1 /proc/loadavg; }
for _ in $(seq 24); do
  awk -v l="$(load1)" -v q="$QUIET_LOAD" 'BEGIN { exit !(l < q) }' && break
  echo "waiting for a quiet machine (load $(load1) >= $QUIET_LOAD)..." >&2
  sleep 5
done
LOAD_START=$(cat /proc/loadavg)
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$(date +%s)

TMP=$(mktemp)
trap 'rm -f "$TMP"' EXIT
COMMON=(--warmup "$WARMUP" --steps "$STEPS" --repeats "$REPEATS")

# Runs one measurement process with the thread variables set to $t; keeps its JSON lines.
run() {
  local t=$1; shift
  echo "+ threads=$t $*" >&2
  env OMP_NUM_THREADS="$t" OPENBLAS_NUM_THREADS="$t" "$@" | tee -a "$TMP"
}

for t in $THREADS; do
  run "$t" "$BENCH" --sgemm-peak --threads "$t"
  for model in w1 w2; do
    run "$t" "$BENCH" --model "$model" --threads "$t" "${COMMON[@]}" --breakdown
    run "$t" "$PYTHON" bench/torch_step.py --model "$model" --threads "$t" "${COMMON[@]}"
    if (( t > 1 )); then
      # Spinning OpenMP workers fight OpenBLAS's threads on a 2-core machine: PASSIVE is the
      # strongest PyTorch 1.13 configuration there, so it is the peer the ratio uses.
      run "$t" env OMP_WAIT_POLICY=PASSIVE "$PYTHON" bench/torch_step.py --model "$model" --threads "$t" "${COMMON[@]}"
    fi
    if [[ $model == w1 ]]; then
      # Diagnostic, not a headline: the first Linear's input gradient skipped by hand.
      run "$t" "$BENCH" --model w1 --threads "$t" "${COMMON[@]}" --skip-first-dx
    fi
  done
done
cp "$TMP" "$RAW"

END=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export START END LOAD_START LOAD_END="$(cat /proc/loadavg)" ELAPSED=$(( $(date +%s) - T0 ))
export WARMUP STEPS REPEATS THREADS
export CPU_MODEL="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
export NPROC="$(nproc)"
export TESSERA_VERSION="$("$BUILD/tessera" --version 2>/dev/null || echo unknown)"
export GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- core 2>/dev/null || echo ' + uncommitted changes in core/')"
export OPENBLAS_VERSION="$(dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' 'libopenblas0-*' 2>/dev/null | awk '$1 == "ii" { printf "%s%s %s", n++ ? ", " : "", $2, $3 }')"
export TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
export TORCH_PKG="$(dpkg-query -W -f='${Version}' python3-torch 2>/dev/null || echo unknown)"
export OPENBLAS_CORETYPE_SEEN="${OPENBLAS_CORETYPE:-unset}" OPENBLAS_L2_SIZE_SEEN="${OPENBLAS_L2_SIZE:-unset}"
"$PYTHON" bench/core_step_report.py "$RAW" > "$MD"
echo "wrote $RAW and $MD (${ELAPSED} s)" >&2
cat "$MD"
