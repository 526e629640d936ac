#!/usr/bin/env bash
# PyTorch interop (python/tessera_torch, docs/pytorch.md) against real tessera runs: a small MLP
# (GELU, dropout, normalised CSV features) and a small CNN (three conv blocks, dropout, Fashion-MNIST
# pixels) are trained and published to a store; torch_interop_check.py loads them into PyTorch
# and compares PyTorch's logits with `tessera serve`'s on the same raw inputs and the trainer's
# test loss with PyTorch's, then writes PyTorch weights back (after torch optimizer steps, and a
# freshly initialised module), publishes and serves them and fine-tunes from them with
# train.init_from, and feeds the package hostile files.
#   torch_interop_test.sh TESSERA SOURCE_DIR
set -euo pipefail
TESSERA=$1 SRC=$2
WORK=$(mktemp -d)
stop_server() {  # the server torch_interop_check.py started, if it is still running (its pid is in the port file)
  local pid
  pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$WORK/ports.json" 2>/dev/null || true)
  if [ -n "$pid" ] && grep -qF -- "$WORK/ports.json" "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid"; fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
train() {  # NAME JOB ARGS...
  local name=$1 job=$2; shift 2
  "$TESSERA" train "$job" --run-dir "$WORK/$name" "$@" > "$WORK/$name.log" 2>&1 ||
    { cat "$WORK/$name.log"; fail "training $name"; }
}

mkdir "$WORK/blobs" "$WORK/fmnist"
/usr/bin/python3 "$SRC/tests/blobs_csv.py" "$WORK/blobs" --dims 6
/usr/bin/python3 "$SRC/tests/python/fmnist_subset.py" "$WORK/fmnist" --train 600 --test 200
cat > "$WORK/mlp.pbtxt" <<SPEC
name: "blobs-mlp"
model { mlp { in_features: 6 hidden: 16 hidden: 8 out_features: 3 dropout: 0.1 activation: GELU } }
data {
  kind: CSV train_path: "$WORK/blobs/train.csv" test_path: "$WORK/blobs/test.csv" batch_size: 32
  normalize {  # one mean and std per feature
    scale: 0.5 mean: 0.25 mean: 0.5 mean: 0 mean: 0.1 mean: 0.2 mean: 0.3
    std: 0.8 std: 1 std: 1.5 std: 2 std: 0.5 std: 1.25
  }
}
optimizer { kind: ADAM lr: 0.01 }
train { epochs: 3 log_every_steps: 5 seed: 3 threads: 1 }
SPEC
cat > "$WORK/cnn.pbtxt" <<SPEC
name: "fmnist-cnn"
model { cnn { channels: 4 channels: 8 channels: 8 hidden: 16 dropout: 0.1 } }
data {
  kind: IDX batch_size: 50
  train_images: "$WORK/fmnist/train-images.idx" train_labels: "$WORK/fmnist/train-labels.idx"
  test_images: "$WORK/fmnist/test-images.idx" test_labels: "$WORK/fmnist/test-labels.idx"
  normalize { scale: 0.00392156862745098 mean: 0.286 std: 0.353 }
}
optimizer { kind: ADAM lr: 0.005 }
train { epochs: 2 log_every_steps: 6 seed: 5 threads: 1 }
SPEC
# One publishes at the end of its job, the other with `tessera store publish`.
train mlp-run "$WORK/mlp.pbtxt" --set publish.store="$WORK/store"
train cnn-run "$WORK/cnn.pbtxt"
"$TESSERA" store publish "$WORK/cnn-run" --store "$WORK/store" --model fmnist-cnn --alias production > /dev/null

/usr/bin/python3 "$SRC/tests/python/torch_interop_check.py" "$TESSERA" "$SRC" "$WORK" || {
  [ -f "$WORK/serve.log" ] && tail -20 "$WORK/serve.log"; fail "torch_interop_check.py"; }
echo "torch_interop_test: ok"
