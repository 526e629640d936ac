#!/usr/bin/env bash
# Serving W2 (the Fashion-MNIST CNN): batch-1 requests at concurrency 1, 16 and 64 over HTTP JSON,
# HTTP binary (Triton's binary tensor extension) and gRPC against `tessera serve`, beside the same
# server's no-op endpoints (the protocol ceiling) and, in the same run, MLServer serving the same
# weights through PyTorch (bench/serve_peer_mlserver.py) on the same requests (bench/serve_load.cc).
# Targets (the serving issue): >= 3x the Python server's requests/s at concurrency 16; p99 at
# concurrency 1 under 2 ms; dynamic batching raises requests/s at concurrency 64 over batching off.
#
#   bench/run_serve_bench.sh [BUILD_DIR]     (expects BUILD_DIR/tessera and BUILD_DIR/bench/serve_load)
#
# Builds nothing. Without STORE, trains W2 briefly (300 steps, about 15 s) into a scratch store.
# Environment: STORE (a model store holding MODEL), MODEL (w2), ROUNDS (3: the matrix is run this
# many times, interleaved, and the median is reported), REQUESTS (4000 per tessera cell),
# PEER_REQUESTS (1500 per MLServer cell), VENV (BUILD_DIR/venv-bench-peer), RESULTS_DIR
# (bench/results). Writes RESULTS_DIR/serve.{json,md}.
#
# Cores (the machine has 2): every server is pinned to CPU 1 (`taskset -c 1`) with one compute
# thread (tessera --threads 1; PyTorch torch.set_num_threads(1), OMP/OpenBLAS 1), and the load
# generator to CPU 0, so a server never competes with its own load for a core. Only one server is
# under load at a time; the others sit idle (tessera polls the store every 2 s, MLServer's event
# loop sleeps). The servers: tessera with dynamic batching (defaults: --max-batch-size 64,
# --max-queue-delay-us 500), tessera --no-batching, MLServer plain, and MLServer with its adaptive
# batching at the same limits (max_batch_size 64, max_batch_time 500 us).
#
# The peer: MLServer from PyPI in a venv made with Debian's python3 and --system-site-packages, so
# it runs Debian's python3-torch (1.13) and python3-h5py; pip adds mlserver and numpy < 2 (torch
# 1.13 was built against numpy 1.x). MLServer speaks v2 HTTP JSON and gRPC (raw_input_contents),
# not Triton's binary HTTP extension, so HTTP binary has no peer row. It runs inference in the
# server process (parallel_workers 0): its default, one worker process fed over IPC, would only add
# a hop on one core, and with this install (mlserver 1.7.1, uvloop 0.23) the worker dies at its
# first request ("There is no current event loop in thread 'MainThread'"). Before timing, the logits of
# every server on 8 test images must equal tessera's within 1e-4 (bench/serve_logits_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
TESSERA=$BUILD/tessera
LOAD=$BUILD/bench/serve_load
for b in "$TESSERA" "$LOAD"; do
  [ -x "$b" ] || { echo "missing $b: build it first (ninja -C $BUILD tessera serve_load)" >&2; exit 1; }
done
MODEL=${MODEL:-w2}
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-4000}
PEER_REQUESTS=${PEER_REQUESTS:-1500}
VENV=${VENV:-$BUILD/venv-bench-peer}
OUT=${RESULTS_DIR:-bench/results}
MLSERVER_VERSION=1.7.1
mkdir -p "$OUT"
SCRATCH=$(mktemp -d "$(realpath "$BUILD")/serve_bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
log() { echo "run_serve_bench: $*" >&2; }

# ---- the peer's venv -----------------------------------------------------------------------------
if ! "$VENV/bin/python" -c "import mlserver, torch, h5py" 2>/dev/null; then
  log "making $VENV (mlserver $MLSERVER_VERSION over Debian's python3-torch)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q "mlserver==$MLSERVER_VERSION" 'numpy<2'
fi

# ---- the model -----------------------------------------------------------------------------------
SOURCE="${STORE:-}"
if [ -z "${STORE:-}" ]; then
  STORE=$SCRATCH/store
  SOURCE="trained for this run, 300 steps"
  log "training W2 briefly (300 steps) into $STORE"
  "$TESSERA" train jobs/examples/fmnist_cnn.pbtxt --set train.steps=300 --set train.threads=2 \
    --set publish.store="$STORE" --set publish.model="$MODEL" --run-dir "$SCRATCH/run" > "$SCRATCH/train.log" 2>&1 ||
    { tail -20 "$SCRATCH/train.log" >&2; exit 1; }
fi
VERSION=$(ls "$STORE/$MODEL" | grep -E '^[1-9][0-9]*$' | sort -n | tail -1)
[ -n "$VERSION" ] || { echo "no version of $MODEL in $STORE" >&2; exit 1; }
VDIR=$(realpath "$STORE/$MODEL/$VERSION")
[ "${SOURCE#trained}" != "$SOURCE" ] || SOURCE="$STORE/$MODEL/$VERSION"
BENCH_DIR=$(realpath bench)
VENV_DIR=$(realpath "$VENV")

# ---- the servers (all on CPU 1) ------------------------------------------------------------------
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 TORCH_THREADS=1
start_tessera() {  # NAME EXTRA-FLAGS...
  local name=$1; shift
  taskset -c 1 "$TESSERA" serve --store "$STORE" --model "$MODEL" --http-port 0 --grpc-port 0 --threads 1 \
    --port-file "$SCRATCH/$name.ports" "$@" > "$SCRATCH/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 150); do [ -s "$SCRATCH/$name.ports" ] && return; sleep 0.2; done
  tail "$SCRATCH/$name.log" >&2; exit 1
}
port_of() { /usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$SCRATCH/$1.ports" "$2"; }
free_port() { /usr/bin/python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
start_mlserver() {  # NAME EXTRA-PREPARE-FLAGS...
  local name=$1; shift
  local http grpc
  http=$(free_port); grpc=$(free_port)
  "$VENV/bin/python" bench/serve_peer_mlserver.py prepare "$VDIR" "$SCRATCH/$name" --name "$MODEL" \
    --version "$VERSION" --http-port "$http" --grpc-port "$grpc" "$@"
  (cd "$SCRATCH/$name" && PYTHONPATH="$BENCH_DIR" exec taskset -c 1 "$VENV_DIR/bin/mlserver" start .) \
    > "$SCRATCH/$name.log" 2>&1 &
  PIDS+=($!)
  echo "{\"http\": $http, \"grpc\": $grpc}" > "$SCRATCH/$name.ports"
  for _ in $(seq 240); do
    curl -sf "http://127.0.0.1:$http/v2/models/$MODEL/ready" > /dev/null && return
    sleep 0.25
  done
  tail -20 "$SCRATCH/$name.log" >&2; exit 1
}
log "starting tessera serve (batching on, off) and MLServer (plain, adaptive batching) on CPU 1"
start_tessera tessera
start_tessera tessera-nobatch --no-batching
start_mlserver mlserver
start_mlserver mlserver-batched --max-batch-size 64 --max-batch-time-s 0.0005

# ---- same work: the logits of every server against tessera's --------------------------------------
url() { echo "http://127.0.0.1:$(port_of "$1" http)/$MODEL/$VERSION"; }
"$VENV/bin/python" bench/serve_logits_check.py "$VDIR" "tessera=$(url tessera)" "tessera-nobatch=$(url tessera-nobatch)" \
  "mlserver=$(url mlserver)" "mlserver-batched=$(url mlserver-batched)" > "$SCRATCH/logits.json" ||
  { cat "$SCRATCH/logits.json" >&2; echo "the servers' logits differ: not timing" >&2; exit 1; }
cat "$SCRATCH/logits.json" >&2

# ---- the matrix ----------------------------------------------------------------------------------
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS=$SCRATCH/results.jsonl
cell() {  # SERVER MODE CONCURRENCY REQUESTS [EXTRA serve_load FLAGS]
  local server=$1 mode=$2 c=$3 n=$4; shift 4
  local port
  case $mode in grpc*) port=$(port_of "$server" grpc) ;; *) port=$(port_of "$server" http) ;; esac
  taskset -c 0 "$LOAD" --mode "$mode" --port "$port" --model "$MODEL" --model-version "$VERSION" \
    --concurrency "$c" --requests "$n" --warmup $((c * 8 > 200 ? c * 8 : 200)) \
    --tag server="$server" --tag round="$round" "$@" >> "$RESULTS"
}
t0=$(date +%s)
for round in $(seq "$ROUNDS"); do
  for c in 1 16 64; do
    log "round $round/$ROUNDS, concurrency $c"
    for m in http-json http-binary grpc; do cell tessera "$m" "$c" "$REQUESTS"; done
    cell tessera http-noop "$c" "$REQUESTS"
    cell tessera http-noop "$c" "$REQUESTS" --noop-body binary --tag body=binary
    cell tessera grpc-noop "$c" "$REQUESTS"
    cell tessera http-live "$c" "$REQUESTS"
    for m in http-json http-binary grpc; do cell tessera-nobatch "$m" "$c" "$REQUESTS"; done
    for m in http-json grpc; do cell mlserver "$m" "$c" "$PEER_REQUESTS"; done
    cell mlserver http-live "$c" "$REQUESTS"
    if [ "$c" -gt 1 ]; then
      for m in http-json grpc; do cell mlserver-batched "$m" "$c" "$PEER_REQUESTS"; done
    fi
  done
done
log "matrix done in $(($(date +%s) - t0)) s"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

versions=$("$VENV/bin/python" -c "import mlserver, torch, sys; print('MLServer %s, PyTorch %s, Python %s' % (mlserver.__version__, torch.__version__, sys.version.split()[0]))")
/usr/bin/python3 bench/serve_report.py "$RESULTS" "$SCRATCH/logits.json" "$OUT" "$load_start" "$load_end" "$versions" \
  "$("$TESSERA" --version 2>/dev/null | head -1)" "$VDIR" "$SOURCE"
