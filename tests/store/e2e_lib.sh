# Shared by the end-to-end store tests (onnx_export_test.sh, quantize_test.sh), sourced after
# TESSERA and SRC are set: a scratch directory $W (removed on exit, with any server started with
# --port-file under it), and the helpers below.
unset TESSERA_STORE
W=$(mktemp -d)
trap 'pkill -f -- "--port-file $W/" 2>/dev/null || true; rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
train() {  # NAME SPEC SETTINGS...: a real run that publishes NAME to $W/store
  local name=$1 spec=$2; shift 2
  "$TESSERA" train "$spec" --run-dir "$W/run-$name" --set publish.store="$W/store" --set publish.model="$name" "$@" \
    > "$W/train-$name.log" 2>&1 || { cat "$W/train-$name.log"; fail "training $name"; }
}
train_small_cnn() {  # NAME STEPS: W2's shape with 4 and 8 channels and 16 hidden, on Fashion-MNIST
  train "$1" "$SRC/jobs/examples/fmnist_cnn.pbtxt" --set train.steps="$2" --set train.threads=2 \
    --set train.eval_every_steps=0 --set model.cnn.channels=4,8 --set model.cnn.hidden=16 --set train.epochs=1 \
    --set data.normalize.mean=0.286 --set data.normalize.std=0.353
}
expect_error() {  # WHAT PATTERN COMMAND...: COMMAND must fail, saying PATTERN
  local what=$1 pattern=$2; shift 2
  if "$@" > "$W/err.out" 2>&1; then fail "$what: accepted"; fi
  grep -q -- "$pattern" "$W/err.out" || { cat "$W/err.out"; fail "$what: message lacks '$pattern'"; }
  echo "refused ($what): $(tail -1 "$W/err.out")"
}
