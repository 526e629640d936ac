#!/usr/bin/env bash
# Core step-time benchmark: tessera vs PyTorch (Debian python3-torch) on W1 and W2 at 1 and 2
# threads, with the sgemm ceiling of the same machine, in one run (shared BENCHMARKS.md).
#
#   bench/run_core_bench.sh            # from the repository root, after building step_bench:
#   cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTESSERA_BUILD_BENCHMARKS=ON && ninja -C build step_bench
#
# Writes bench/results/core_step.json (every raw JSON line) and bench/results/core_step.md.
#
# The machine is shared. Before each measurement the script waits (up to QUIET_WAIT seconds) for
# the other processes to go quiet, and after it records how much CPU they used meanwhile (a
# "disturbance" line). A measurement during which they used more than 5% of a core is run again,
# up to RETRIES times; the last attempt is kept and the report marks it if it was still disturbed.
#
# Each measurement runs in ROUNDS separate processes, interleaved; each process does WARMUP steps,
# then REPEATS runs of STEPS timed steps. The report takes the median over all runs.
#
# Knobs (environment): ROUNDS (5), WARMUP (20), STEPS (200), REPEATS (1), THREADS ("1 2"),
# BUILD (build), PYTHON (/usr/bin/python3), RETRIES (2), QUIET_WAIT (60).
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
WARMUP=${WARMUP:-20}
STEPS=${STEPS:-200}
REPEATS=${REPEATS:-1}
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-"1 2"}
RETRIES=${RETRIES:-2}
QUIET_WAIT=${QUIET_WAIT:-60}
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

HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
TMP=$(mktemp)
ATTEMPT=$(mktemp)
TIMES=$(mktemp)
trap 'rm -f "$TMP" "$ATTEMPT" "$TIMES"' EXIT
COMMON=(--warmup "$WARMUP" --steps "$STEPS" --repeats "$REPEATS")

# Busy and steal jiffies of the whole machine (/proc/stat: user nice system idle iowait irq softirq steal).
cpu_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }

# Waits until the machine is idle (under 10% of one core busy over 2 s), at most QUIET_WAIT s.
wait_quiet() {
  local b0 s0 b1 s1 waited=0
  while (( waited < QUIET_WAIT )); do
    read -r b0 s0 < <(cpu_jiffies); sleep 2; read -r b1 s1 < <(cpu_jiffies)
    (( (b1 - b0) * 10 < 2 * HZ )) && return 0
    (( waited == 0 )) && echo "  waiting for other processes to go quiet..." >&2
    waited=$((waited + 2))
  done
  echo "  still busy after ${QUIET_WAIT} s; measuring anyway" >&2
}

# Runs one measurement process with the thread variables set to $t and appends its JSON lines and
# then a "disturbance" line: CPU time other processes used meanwhile (the machine's busy time
# minus this process's own user+system time) and hypervisor steal time.
run() {
  local t=$1; shift
  local attempt busy0 steal0 busy1 steal1 w0 w1 own line disturbed
  for (( attempt = 1; attempt <= RETRIES + 1; ++attempt )); do
    wait_quiet
    echo "+ threads=$t $* (attempt $attempt)" >&2
    read -r busy0 steal0 < <(cpu_jiffies)
    w0=$(date +%s.%N)
    { TIMEFORMAT='%U %S'; time env OMP_NUM_THREADS="$t" OPENBLAS_NUM_THREADS="$t" "$@" 2>&3 > "$ATTEMPT"; } 3>&2 2>"$TIMES"
    w1=$(date +%s.%N)
    read -r busy1 steal1 < <(cpu_jiffies)
    own=$(awk '{ print $1 + $2 }' "$TIMES")
    if line=$(awk -v cmd="$*" -v t="$t" -v w0="$w0" -v w1="$w1" -v own="$own" -v hz="$HZ" -v n="$attempt" \
        -v busy=$((busy1 - busy0)) -v steal=$((steal1 - steal0)) 'BEGIN {
      w = w1 - w0; other = busy / hz - own; if (other < 0) other = 0
      gsub(/"/, "\\\"", cmd)
      printf "{\"kind\": \"disturbance\", \"cmd\": \"%s\", \"threads\": %d, \"attempt\": %d, \"wall_s\": %.1f, \"own_cpu_s\": %.1f, \"other_cpu_s\": %.1f, \"steal_s\": %.1f}", cmd, t, n, w, own, other, steal / hz
      exit !(other + steal / hz > 0.05 * w && other + steal / hz > 0.3)
    }'); then disturbed=1; else disturbed=0; fi
    cat "$ATTEMPT"
    echo "$line" >&2
    if (( disturbed == 0 || attempt == RETRIES + 1 )); then
      cat "$ATTEMPT" >> "$TMP"
      echo "$line" >> "$TMP"
      return 0
    fi
    echo "  disturbed by other processes: measuring again" >&2
  done
}

START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$(date +%s)
# Rounds of every measurement, each in a fresh process: run-to-run differences between processes
# (memory layout, allocator state) are larger than those within one, so the median is taken over
# processes as well as repeats. Rounds interleave everything, so drift affects both sides alike.
for (( round = 1; round <= ROUNDS; ++round )); do
  echo "=== round $round of $ROUNDS" >&2
  breakdown=(); (( round == 1 )) && breakdown=(--breakdown)
  for t in $THREADS; do
    run "$t" "$BENCH" --sgemm-peak --threads "$t"
    for model in w1 w2; do
      run "$t" "$BENCH" --model "$model" --threads "$t" "${COMMON[@]}" "${breakdown[@]}"
      run "$t" "$PYTHON" bench/torch_step.py --model "$model" --threads "$t" "${COMMON[@]}"
      if (( t > 1 )); then
        # Spinning OpenMP workers fight OpenBLAS's threads on a 2-core machine: PASSIVE is the
        # strongest PyTorch 1.13 configuration there, so the ratio takes the better of the two.
        run "$t" env OMP_WAIT_POLICY=PASSIVE "$PYTHON" bench/torch_step.py --model "$model" --threads "$t" "${COMMON[@]}"
      fi
    done
  done
done
cp "$TMP" "$RAW"

END=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export START END ELAPSED=$(( $(date +%s) - T0 )) NPROC=$NCPU
export WARMUP STEPS REPEATS ROUNDS THREADS RETRIES
export CPU_MODEL="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
export TESSERA_VERSION="$("$BUILD/tessera" --version 2>/dev/null || echo unknown)"
export GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- core 2>/dev/null || echo ' + uncommitted changes in core/')"
export OPENBLAS_VERSION="$(dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' 'libopenblas0-*' 2>/dev/null | awk '$1 == "ii" { printf "%s%s %s", n++ ? ", " : "", $2, $3 }')"
export BUILD_CONFIG="$(grep -E '^(CMAKE_BUILD_TYPE|TESSERA_NATIVE):' "$BUILD/CMakeCache.txt" | sed 's/:[A-Z]*=/=/' | tr '\n' ' ')$(awk '/#define TESSERA_USE/ { printf "%s=%s ", $2, $3 }' "$BUILD/generated/tessera/config.h")"
export DNNL_VERSION="$(dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' 'libdnnl*' 2>/dev/null | awk '$1 == "ii" && $2 !~ /-dev/ { printf "%s%s %s", n++ ? ", " : "", $2, $3 }')"
export TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
export TORCH_PKG="$(dpkg-query -W -f='${Version}' python3-torch 2>/dev/null || echo unknown)"
export OPENBLAS_CORETYPE_SEEN="${OPENBLAS_CORETYPE:-unset}" OPENBLAS_L2_SIZE_SEEN="${OPENBLAS_L2_SIZE:-unset}"
"$PYTHON" bench/core_step_report.py "$RAW" > "$MD"
echo "wrote $RAW and $MD (${ELAPSED} s)" >&2
cat "$MD"
