#!/usr/bin/env bash
# ZeRO memory and step time: `tessera train` (mpirun, 1 thread a rank) on the issue's wide MLP,
# 784-4096x6-10 (Ψ = 87M parameters, fp32, Adam), at N = 1, 2 and 4 ranks (4 oversubscribed on
# this 2-core machine) and stages 0 to 3; beside it, in the same run, PyTorch FSDP on CPU with
# gloo (DDP, SHARD_GRAD_OP, FULL_SHARD) on the same model, if a PyTorch 2.x is at hand.
#
#   bench/run_zero_bench.sh [BUILD_DIR] [TORCH_PYTHON]
#
# Per run and rank: what tessera reports it holds (summary.json memory_per_rank), the formula for
# fp32 Adam (params 4Ψ, grads 4Ψ, moments 8Ψ: stage 1 8Ψ + 8Ψ/N, stage 2 4Ψ + 12Ψ/N, stage 3 16Ψ/N
# plus two gathered layers), the peak RSS
# (summary.json peak_rss_bytes) and the peak RSS less that of the same job with a 16-unit hidden
# layer (data, runtime, buffers: what is not the model's); the median step time of steps 3 to
# STEPS, and its ratio to stage 0 on the same N. TORCH_PYTHON: a python with torch >= 2 (default:
# $TORCH_PYTHON, else python3 on PATH; e.g. `python3 -m venv /tmp/fsdp && /tmp/fsdp/bin/pip install
# torch`). Without one the FSDP rows are left out, and the report says so.
# Writes bench/results/zero_memory.{md,json}. Environment: STEPS (8), BATCH (64), RESULTS_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
TORCH_PY=${2:-${TORCH_PYTHON:-python3}}
TESSERA=$BUILD/tessera
[ -x "$TESSERA" ] || { echo "missing $TESSERA: build it first" >&2; exit 1; }
PY=/usr/bin/python3
STEPS=${STEPS:-8}
BATCH=${BATCH:-64}
HIDDEN=4096,4096,4096,4096,4096,4096
OUT=${RESULTS_DIR:-bench/results}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$PY" tests/blobs_csv.py "$W" --dims 784 --classes 10 --train 2048 --test 64
cat > "$W/job.pbtxt" <<PB
name: "zero_bench"
model { mlp { in_features: 784 hidden: 16 out_features: 10 } }
data { kind: CSV train_path: "train.csv" test_path: "test.csv" batch_size: $BATCH shuffle: false }
optimizer { kind: ADAM lr: 0.0001 }
train { steps: $STEPS log_every_steps: 1 threads: 1 seed: 1 }
checkpoint { save_final: false }
PB
RAW="$OUT/zero_memory.raw.jsonl"  # kept: every run's numbers as measured
: > "$RAW"

tessera_run() {  # N STAGE HIDDEN
  local n="$1" stage="$2" hidden="$3" run="$W/run-$1-$2-${3%%,*}"
  local cmd=("$TESSERA" train "$W/job.pbtxt" --run-dir "$run" --set "model.mlp.hidden=$hidden"
             --set "parallel.zero_stage=$stage")
  if [ "$n" = 1 ]; then "${cmd[@]}" > "$run.out" 2>&1
  else mpirun -np "$n" --oversubscribe --bind-to none "${cmd[@]}" > "$run.out" 2>&1; fi || { cat "$run.out"; exit 1; }
  "$PY" - "$run" "$n" "$stage" "$hidden" "$BATCH" >> "$RAW" <<'PY'
import json, statistics, sys
run, n, stage, hidden, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
s = json.load(open(f"{run}/summary.json"))
ev = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
steps = [batch / e["samples_per_sec"] for e in ev if e["event"] == "train" and e["step"] >= 3]
print(json.dumps({"peer": "tessera", "ranks": n, "stage": stage, "hidden": hidden,
                  "memory": s["memory_per_rank"], "peak_rss_bytes": s["peak_rss_bytes"],
                  "between_steps_rss_bytes": s["between_steps_rss_bytes"],
                  "step_seconds": statistics.median(steps)}))
PY
  echo "  tessera N=$n stage $stage hidden ${hidden%%,*}x$(tr ',' '\n' <<< "$hidden" | wc -l): done" >&2
}

for n in 1 2 4; do
  tessera_run "$n" 0 16
  for stage in 0 1 2 3; do
    [ "$n" = 1 ] && [ "$stage" != 0 ] && continue
    tessera_run "$n" "$stage" "$HIDDEN"
  done
done

TORCH_NOTE=""
if "$TORCH_PY" -c 'import sys, torch; sys.exit(int(torch.__version__.split(".")[0]) < 2)' 2>/dev/null; then
  for n in 2 4; do
    for strategy in DDP SHARD_GRAD_OP FULL_SHARD; do
      "$TORCH_PY" bench/torch_fsdp_step.py --ranks "$n" --strategy "$strategy" --hidden "$HIDDEN" --batch "$BATCH" \
        --steps "$STEPS" >> "$RAW" 2> "$W/torch.err" || { cat "$W/torch.err"; TORCH_NOTE="FSDP $strategy on $n ranks failed: $(tail -1 "$W/torch.err")"; }
      echo "  torch N=$n $strategy: done" >&2
    done
  done
else
  TORCH_NOTE="no PyTorch >= 2 at $TORCH_PY (pip install torch into a venv and pass its python): the FSDP rows are missing"
fi
"$PY" bench/zero_report.py "$RAW" "$OUT" "$TORCH_NOTE"
