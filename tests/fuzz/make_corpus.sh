#!/usr/bin/env bash
# Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/NAME/ (committed; run again
# after a format change): small valid inputs the fuzzers mutate from.
#   tests/fuzz/make_corpus.sh build/tessera
set -euo pipefail
TESSERA=$(readlink -f "$1")
cd "$(dirname "$0")"
C=corpus
rm -rf "$C"
mkdir -p $C/idx $C/csv $C/hdf5 $C/tokens $C/spec $C/checkpoint $C/store $C/http_infer
PY=/usr/bin/python3
"$PY" - <<'PY'
import gzip, struct, json, h5py, numpy as np
def idx(dims, data):
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)
images = idx([3, 2, 3], range(18))
labels = idx([3], [2, 0, 1])
open("corpus/idx/images", "wb").write(b"\0" + images)
open("corpus/idx/images.gz", "wb").write(b"\0" + gzip.compress(images))
open("corpus/idx/labels", "wb").write(b"\1" + idx([2], [1, 0]))
def tokens(vocab, values):
    return struct.pack("<256i", 20240520, 1, len(values), vocab, *([0] * 252)) + struct.pack("<%dH" % len(values), *values)
open("corpus/tokens/bytes.bin", "wb").write(b"\3" + tokens(256, b"hello, fortunes\n%\n"))
open("corpus/tokens/llmc.bin", "wb").write(b"\0" + tokens(0, [50000, 7, 3, 9, 1]))
open("corpus/csv/table.csv", "w").write("a,b,label\n1,2,0\n3.5,-4e3,1\n")
open("corpus/csv/quoted.csv", "w").write('"b" , "a","label"\r\n\r\n0.25,1,2\r\n')
with h5py.File("corpus/hdf5/data.h5", "w", libver=("v110", "latest")) as f:
    f["features"] = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    f["labels"] = np.array([0, 1, 2, 1], dtype=np.int64)
    f["labels"].attrs["num_classes"] = 4
with h5py.File("corpus/hdf5/uint8.h5", "w") as f:
    f.create_dataset("features", data=np.arange(8, dtype=np.uint8).reshape(2, 4), chunks=(1, 4), compression="gzip")
    f["labels"] = np.array([1, 0], dtype=np.int64)
def infer(header_len, body):
    return struct.pack("<i", header_len) + body
j = json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 4], "data": [1, 2, 3, 4]}],
                "outputs": [{"name": "probabilities"}], "parameters": {"top_k": 2}}).encode()
open("corpus/http_infer/json", "wb").write(infer(-1, j))
nested = json.dumps({"id": "x", "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2],
                     "data": [[1.5, 2], [3, 4]]}]}).encode()
open("corpus/http_infer/nested", "wb").write(infer(-1, nested))
h = json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 4],
                "parameters": {"binary_data_size": 4}}],
                "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
open("corpus/http_infer/binary", "wb").write(infer(len(h), h + bytes([9, 8, 7, 6])))
PY
cp ../../jobs/examples/*.pbtxt $C/spec/
printf 'name: "s"\nmodel { cnn { channels: 4 } }\n\0model.mlp={}\nmodel.mlp.hidden=5,6\ntrain.epochs=1\n' > $C/spec/with_overrides
# A tiny checkpoint and store version from a real run: 2 features, 4 hidden units, 3 classes.
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
printf 'a,b,label\n1,2,0\n3,4,1\n5,6,2\n7,8,1\n' > "$W/t.csv"
printf 'name: "tiny"\nmodel { mlp { in_features: 2 hidden: 4 out_features: 3 } }\ndata { kind: CSV train_path: "t.csv" test_path: "t.csv" label_column: "label" batch_size: 2 }\ntrain { steps: 2 threads: 1 }\npublish { store: "store" }\n' > "$W/tiny.pbtxt"
(cd "$W" && "$TESSERA" train tiny.pbtxt --run-dir run > /dev/null)
cp "$(readlink -f "$W/run/checkpoints/latest")"/checkpoint.h5 $C/checkpoint/checkpoint.h5 2>/dev/null ||
  cp "$(readlink -f "$W/run/checkpoints/latest")" $C/checkpoint/checkpoint.h5
"$TESSERA" ckpt export "$W/run" "$W/model.h5" > /dev/null
cp "$W/model.h5" $C/checkpoint/model.h5
cp "$W"/store/tiny/1/manifest.pbtxt $C/store/manifest.pbtxt
du -sh $C; ls $C/*
