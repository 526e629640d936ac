#!/usr/bin/env bash
# tessera store quantize, end to end: a CNN (Fashion-MNIST bytes) and an MLP (CSV floats) are
# trained and published by real runs, quantised to int8, verified, read back with h5py, and
# served beside their f32 parents by `tessera serve`, whose answers (over HTTP, from
# quantize_check.py) must follow the parents' within quantisation error. What quantize and the
# other commands refuse of an int8 version is refused with a message that names the way out.
#   quantize_test.sh TESSERA SOURCE_DIR
set -euo pipefail
TESSERA=$1 SRC=$2
. "$SRC/tests/store/e2e_lib.sh"

/usr/bin/python3 "$SRC/tests/blobs_csv.py" "$W"
cat > "$W/mlp.pbtxt" <<'SPEC'
name: "mlp"
model { mlp { in_features: 4 hidden: 32 hidden: 16 out_features: 3 } }
data { kind: CSV train_path: "train.csv" test_path: "test.csv" batch_size: 32 normalize { mean: 0.5 std: 1.5 } }
optimizer { kind: ADAM lr: 0.01 }
train { epochs: 2 seed: 3 threads: 1 }
SPEC
train mlp "$W/mlp.pbtxt"
train_small_cnn cnn 150

"$TESSERA" store quantize cnn --store "$W/store" --samples 500 --json > "$W/q-cnn.json" 2> "$W/q-cnn.err" \
  || { cat "$W/q-cnn.err"; fail "quantize cnn"; }
"$TESSERA" store quantize "store://$W/store/mlp@latest" --alias int8 > "$W/q-mlp.txt" 2>&1 \
  || { cat "$W/q-mlp.txt"; fail "quantize mlp"; }
cat "$W/q-mlp.txt"
grep -q "published mlp version 2: int8 of version 1 (3 layers, calibrated on 480 training examples)" "$W/q-mlp.txt" \
  || fail "quantize's report"
grep -q "mlp@int8 -> 2" "$W/q-mlp.txt" || fail "the alias was not moved"
"$TESSERA" store verify cnn --store "$W/store" || fail "verify cnn"
"$TESSERA" store verify mlp --store "$W/store" || fail "verify mlp"
"$TESSERA" store show cnn@2 --store "$W/store" > "$W/show.txt"
grep -q "(int8)" "$W/show.txt" && grep -q "int8 post-training quantisation of version 1 (4 layers" "$W/show.txt" \
  && grep -q "made from cnn version 1" "$W/show.txt" || { cat "$W/show.txt"; fail "store show of the int8 version"; }

# The files as any HDF5 reader sees them, and the report against them.
/usr/bin/python3 - "$W" <<'PY' || fail "the int8 version's files"
import json, sys
import h5py, numpy as np
w = sys.argv[1]
q = json.load(open(f"{w}/q-cnn.json"))
assert q["version"] == 2 and q["parent"] == 1 and q["layers"] == 4 and q["calibration_examples"] == 500, q
f32, i8 = h5py.File(f"{w}/store/cnn/1/weights.h5", "r"), h5py.File(f"{w}/store/cnn/2/weights.h5", "r")
assert i8.attrs["dtype"] in (b"int8", "int8"), i8.attrs["dtype"]
for layer in ("0", "3", "7", "9"):
    wq, s = i8[f"model/{layer}.weight"][()], i8[f"model/{layer}.weight_scale"][()]
    wf = f32[f"model/{layer}.weight"][()]
    assert wq.dtype == np.int8 and wq.shape == wf.shape, (layer, wq.dtype, wq.shape)
    assert np.abs(wq.astype(np.int32)).max() == 127, f"layer {layer}: no row reaches 127"
    back = wq.reshape(len(s), -1).astype(np.float32) * s[:, None]
    err = np.abs(back - wf.reshape(len(s), -1)).max(axis=1)
    assert (err <= s / 2 + 1e-7).all(), f"layer {layer}: dequantised weights off by more than half a step"
    assert np.array_equal(i8[f"model/{layer}.bias"][()], f32[f"model/{layer}.bias"][()])
    assert i8[f"model/{layer}.input_scale"].shape == (1,) and i8[f"model/{layer}.input_scale"][0] > 0
assert q["weights_bytes"] < q["parent_weights_bytes"], q
acc, f32acc = q["metrics"]["test_accuracy"], q["parent_metrics"]["test_accuracy"]
assert f32acc > 0.5 and abs(acc - f32acc) <= 0.02, (acc, f32acc)
arch = open(f"{w}/store/cnn/2/model.pbtxt").read()
assert "quantization: INT8" in arch, arch
manifest = open(f"{w}/store/cnn/2/manifest.pbtxt").read()
assert "version: 1" in manifest and "derivation:" in manifest and "f32_test_accuracy" in manifest
print(f"int8 files: ok (cnn test accuracy {acc:.4f}, f32 {f32acc:.4f}; "
      f"weights {q['weights_bytes']} bytes, f32 {q['parent_weights_bytes']})")
PY

"$TESSERA" serve --store "$W/store" --model cnn@1,2 --model mlp@1,2 --http-port 0 --grpc-port -1 \
  --port-file "$W/ports.json" > "$W/serve.log" 2>&1 &
/usr/bin/python3 "$SRC/tests/store/quantize_check.py" "$W" || { cat "$W/serve.log"; fail "int8 answers"; }
grep -q "loaded cnn version 2" "$W/serve.log" || fail "the server did not log the int8 load"

# What an int8 version is refused for: exit non-zero, name what is wrong and what to do.
expect_error "quantising twice" "cnn version 2 is already quantised (INT8)" \
  "$TESSERA" store quantize cnn@2 --store "$W/store"
expect_error "ONNX export" "is quantised (quantization: INT8); export the f32 version" \
  "$TESSERA" store export-onnx cnn@2 "$W/x.onnx" --store "$W/store"
expect_error "fine-tuning" "is int8 (a quantised version, for serving): fine-tune the f32 version" \
  "$TESSERA" train "$W/mlp.pbtxt" --run-dir "$W/run-ft" --set train.init_from="store://$W/store/mlp@int8"
expect_error "no samples" "samples" "$TESSERA" store quantize mlp@1 --samples 0 --store "$W/store"
expect_error "no such version" "no version 9" "$TESSERA" store quantize mlp@9 --store "$W/store"
rm -f "$W/train.csv"
expect_error "calibration data gone" "train.csv" "$TESSERA" store quantize mlp@1 --store "$W/store"
[ "$("$TESSERA" store list mlp --store "$W/store" --json | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 2 ] \
  || fail "a refused quantize published something"
echo "quantize_test: ok"
