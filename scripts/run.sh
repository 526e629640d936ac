#!/usr/bin/env bash
# The main job on its embedded defaults, the whole shape of tessera: sets up and builds, trains W2
# (the Fashion-MNIST CNN of jobs/examples/fmnist_cnn.pbtxt) for 3 epochs on 2 data-parallel ranks
# under mpirun (one thread each: the 2 ranks share this machine's cores), publishes the result to
# the model store runs/store, starts `tessera serve` on a free loopback port, sends the test images
# through the inference protocol, prints the accuracy as served beside the trainer's, and stops
# the server.
#   Extra arguments go to `tessera train`, e.g.  scripts/run.sh --set train.epochs=1
#   RANKS=1 scripts/run.sh runs one process instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
RANKS=${RANKS:-2}
JOB=jobs/examples/fmnist_cnn.pbtxt
STORE=runs/store
MODEL=fmnist-cnn
RUN_DIR=runs/$MODEL-$(date -u +%Y%m%d-%H%M%S)
TRAIN=(build/tessera train "$JOB" --run-dir "$RUN_DIR" --set publish.store="$STORE" --set publish.model="$MODEL"
       --set publish.alias=latest-run)
if [ "$RANKS" = 1 ]; then
  "${TRAIN[@]}" "$@"
else
  # Open MPI refuses to start as root unless told that is intended.
  if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
  mpirun -np "$RANKS" --oversubscribe --bind-to none "${TRAIN[@]}" --set train.threads=1 "$@"
fi

VERSION=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['published_version'])" \
  "$RUN_DIR/summary.json")
PORTS=$RUN_DIR/serve.ports
build/tessera serve --store "$STORE" --model "$MODEL@$VERSION" --http-port 0 --grpc-port -1 --port-file "$PORTS" \
  2> "$RUN_DIR/serve.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$PORTS" ] && break; kill -0 $SERVER 2>/dev/null || { cat "$RUN_DIR/serve.log"; exit 1; }; sleep 0.1; done
PORT=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['http'])" "$PORTS")
echo "serving $MODEL version $VERSION from $STORE on http://127.0.0.1:$PORT (log: $RUN_DIR/serve.log)"
/usr/bin/python3 scripts/serve_check.py "http://127.0.0.1:$PORT" "$MODEL" "$VERSION" "$RUN_DIR/summary.json"
kill -TERM $SERVER
wait $SERVER
trap - EXIT
echo "server stopped; try it yourself: build/tessera serve --store $STORE --model $MODEL@latest-run"
