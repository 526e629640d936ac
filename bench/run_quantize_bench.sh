#!/usr/bin/env bash
# int8 serving of W2 (the Fashion-MNIST CNN) beside its f32 version: for each seed, W2 is trained
# (jobs/examples/fmnist_cnn.pbtxt, 3 epochs) and published, then `tessera store quantize` makes the
# int8 version (1000 calibration examples) and evaluates both on the 10k test images. Reported:
# the accuracy drop (target: at most 1 point), the weights file sizes, the forward pass in process
# (bench/int8_forward_bench, batch 1 and 64, one thread) and serving latency over HTTP (bench/
# serve_load, Triton binary requests of one image, concurrency 1 and 16, one server serving both
# versions, pinned to CPU 1 with one compute thread; the load generator on CPU 0).
#
#   bench/run_quantize_bench.sh [BUILD_DIR]
#
# Environment: SEEDS (1 2 3), ROUNDS (3: the latency cells are run this many times, interleaved by
# version, and the median is reported), REQUESTS (3000 per cell), RESULTS_DIR (bench/results).
# Writes RESULTS_DIR/int8_serving.{jsonl,md}. Builds nothing; needs a quiet machine.
set -euo pipefail
BUILD=${1:-build}
SRC=$(cd "$(dirname "$0")/.." && pwd)
TESSERA=$BUILD/tessera FWD=$BUILD/bench/int8_forward_bench LOAD=$BUILD/bench/serve_load
for b in "$TESSERA" "$FWD" "$LOAD"; do
  [ -x "$b" ] || { echo "missing $b: build it first (ninja -C $BUILD tessera int8_forward_bench serve_load)" >&2; exit 1; }
done
SEEDS=${SEEDS:-1 2 3} ROUNDS=${ROUNDS:-3} REQUESTS=${REQUESTS:-3000} RESULTS_DIR=${RESULTS_DIR:-$SRC/bench/results}
W=$(mktemp -d)
trap 'pkill -f -- "--port-file $W/" 2>/dev/null || true; rm -rf "$W"' EXIT
OUT=$W/results.jsonl
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
start=$(date -u +%Y-%m-%dT%H:%M:%SZ) load_start=$(cut -d' ' -f1-3 /proc/loadavg)

for seed in $SEEDS; do
  m=w2-s$seed
  log "seed $seed: training W2"
  "$TESSERA" train "$SRC/jobs/examples/fmnist_cnn.pbtxt" --run-dir "$W/run-$m" --set train.seed="$seed" \
    --set publish.store="$W/store" --set publish.model="$m" > "$W/train-$m.log" 2>&1 || { tail "$W/train-$m.log"; exit 1; }
  log "seed $seed: quantising"
  "$TESSERA" store quantize "$m" --store "$W/store" --json > "$W/q-$m.json"
  /usr/bin/python3 -c "import json,sys; j=json.load(open(sys.argv[1])); j['kind']='quantize'; j['seed']=int(sys.argv[2]); print(json.dumps(j))" \
    "$W/q-$m.json" "$seed" >> "$OUT"
done

m=w2-s${SEEDS%% *}
log "forward pass in process ($m)"
for round in $(seq "$ROUNDS"); do
  for v in 1 2; do taskset -c 1 "$FWD" --store "$W/store" --model "$m" --version $v --batch 1,64 --reps 300 \
    | sed "s/^{/{\"kind\":\"forward\",\"round\":$round,/" >> "$OUT"; done
done

log "serving $m versions 1 and 2"
taskset -c 1 "$TESSERA" serve --store "$W/store" --model "$m@1,2" --http-port 0 --grpc-port -1 --threads 1 \
  --port-file "$W/ports.json" > "$W/serve.log" 2>&1 &
for _ in $(seq 300); do [ -s "$W/ports.json" ] && break; sleep 0.1; done
port=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['http'])" "$W/ports.json")
for _ in $(seq 300); do
  curl -sf "localhost:$port/v2/models/$m/versions/2/ready" > /dev/null && curl -sf "localhost:$port/v2/models/$m/versions/1/ready" > /dev/null && break
  sleep 0.1
done
for round in $(seq "$ROUNDS"); do
  for c in 1 16; do
    for v in 1 2; do
      taskset -c 0 "$LOAD" --mode http-binary --port "$port" --model "$m" --model-version $v --concurrency $c \
        --requests "$REQUESTS" --warmup 200 --tag kind=serve --tag round="$round" --tag version=$v >> "$OUT"
    done
  done
done
pkill -f -- "--port-file $W/" || true
mkdir -p "$RESULTS_DIR"
cp "$OUT" "$RESULTS_DIR/int8_serving.jsonl"
/usr/bin/python3 "$SRC/bench/quantize_report.py" "$OUT" "$start" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "$TESSERA" > "$RESULTS_DIR/int8_serving.md"
log "wrote $RESULTS_DIR/int8_serving.{jsonl,md}"
