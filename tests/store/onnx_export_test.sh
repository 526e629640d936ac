#!/usr/bin/env bash
# tessera store export-onnx, checked by ONNX's own tools: an MLP (GELU, dropout, per-feature
# normalisation), a CNN (Fashion-MNIST, bytes scaled and standardised) and a GPT (on Debian's
# fortune files) are trained and published by real runs, exported, validated by onnx.checker, run by onnxruntime (both from
# PyPI, in a venv this script creates), and compared with what `tessera serve` answers for the
# same inputs over its HTTP protocol. Hostile references and unwritable outputs are refused.
#   onnx_export_test.sh TESSERA SOURCE_DIR BUILD_DIR
set -euo pipefail
TESSERA=$1 SRC=$2 BUILD=$3
VENV=$BUILD/venv-onnx
if ! "$VENV/bin/python" -c "import onnx, onnxruntime, numpy" 2>/dev/null; then
  echo "onnx_export_test: creating $VENV with onnx and onnxruntime from PyPI"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q onnx onnxruntime numpy
fi
. "$SRC/tests/store/e2e_lib.sh"

/usr/bin/python3 "$SRC/tests/blobs_csv.py" "$W"
cat > "$W/mlp.pbtxt" <<'SPEC'
name: "mlp"
model { mlp { in_features: 4 hidden: 32 hidden: 16 out_features: 3 activation: GELU dropout: 0.1 } }
data { kind: CSV train_path: "train.csv" test_path: "test.csv" batch_size: 32
       normalize { mean: 0.1 mean: -0.2 mean: 0.3 mean: 0 std: 1.5 std: 2 std: 0.5 std: 1 } }
optimizer { kind: ADAM lr: 0.01 }
train { epochs: 2 seed: 3 threads: 1 }
SPEC
train mlp "$W/mlp.pbtxt"
train_small_cnn cnn 40
"$TESSERA" corpus /usr/share/games/fortunes -o "$W/tokens" > /dev/null || fail "corpus"
train gpt "$SRC/jobs/examples/fortunes_gpt.pbtxt" --set data.train_path="$W/tokens/train.bin" \
  --set data.test_path="$W/tokens/test.bin" --set model.gpt.layers=2 --set model.gpt.width=32 \
  --set model.gpt.context=16 --set model.gpt.dropout=0.1 --set train.steps=30 --set train.eval_every_steps=0 \
  --set optimizer.schedule.warmup_steps=5 --set train.threads=1

for m in mlp cnn gpt; do
  "$TESSERA" store export-onnx "$m@latest" "$W/$m.onnx" --store "$W/store" > "$W/export-$m.log" 2>&1 \
    || { cat "$W/export-$m.log"; fail "export-onnx $m"; }
  cat "$W/export-$m.log"
done

"$TESSERA" serve --store "$W/store" --http-port 0 --grpc-port -1 --port-file "$W/ports.json" > "$W/serve.log" 2>&1 &
"$VENV/bin/python" "$SRC/tests/store/onnx_check.py" "$W" || { cat "$W/serve.log"; fail "ONNX outputs"; }

# What export-onnx refuses: exit non-zero, name what is wrong.
expect_error "no such version" "mlp" "$TESSERA" store export-onnx mlp@7 "$W/x.onnx" --store "$W/store"
expect_error "no such model" "nomodel" "$TESSERA" store export-onnx nomodel "$W/x.onnx" --store "$W/store"
expect_error "an output in a missing directory" "$W/missing/x.onnx" "$TESSERA" store export-onnx mlp "$W/missing/x.onnx" --store "$W/store"
expect_error "no store named" "which model store" "$TESSERA" store export-onnx mlp "$W/x.onnx"
echo "onnx_export_test: ok"
