#!/usr/bin/env bash
# tessera serve end to end, the way operators and their clients use it: a real W1 training run
# publishes to a store, `tessera serve` serves it on loopback, and tritonclient (HTTP and gRPC,
# from PyPI, in a venv this script creates) and curl talk to it unchanged. The cases are in
# clients_test.py.
#   serve_cli_test.sh TESSERA SOURCE_DIR BUILD_DIR
set -euo pipefail
TESSERA=$1 SRC=$2 BUILD=$3
VENV=$BUILD/venv-serve-client
if ! "$VENV/bin/python" -c "import tritonclient.http, tritonclient.grpc, numpy" 2>/dev/null; then
  echo "serve_cli_test: creating $VENV with tritonclient from PyPI"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'tritonclient[http,grpc]' numpy
fi
WORK=$(mktemp -d)
trap 'pkill -f -- "--port-file $WORK/" 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --run-dir "$WORK/run" --set train.epochs=1 \
  --set train.threads=1 --set publish.store="$WORK/store" --set publish.model=w1 --set publish.alias=production \
  > "$WORK/train.log" 2>&1 || { cat "$WORK/train.log"; exit 1; }
"$VENV/bin/python" "$SRC/tests/serve/clients_test.py" "$TESSERA" "$WORK"
