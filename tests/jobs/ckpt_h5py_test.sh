#!/usr/bin/env bash
# Checkpoints as other tools see them: a short `tessera train` writes checkpoints; h5py (Debian's
# /usr/bin/python3, no tessera code) and h5dump read them; `tessera ckpt verify` passes the good
# one and names the tensor in a copy with one byte flipped in each tensor in turn, and says
# 'truncated' for a truncated copy.
#   ckpt_h5py_test.sh TESSERA SOURCE_DIR
set -u
TESSERA="$1"
SRC="$2"
PY=/usr/bin/python3
CHECK="$SRC/tests/jobs/h5py_check.py"
fail=0
ok() { echo "ok   $1"; }
bad() {
  echo "FAIL $1"
  fail=1
}

if ! "$PY" -c 'import h5py, numpy' 2>/dev/null; then
  echo "FAIL $PY cannot import h5py and numpy: install python3-h5py python3-numpy (scripts/setup.sh)"
  exit 1
fi
if ! command -v h5dump >/dev/null; then
  echo "FAIL h5dump is not installed: install hdf5-tools (scripts/setup.sh)"
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tessera_ckpt_h5py.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT

# Three Gaussian blobs in 4-D, as CSV with a header and the label in the middle.
"$PY" - "$work" <<'EOF' || exit 1
import sys
import numpy as np
rng = np.random.default_rng(7)
for name, n in (("train.csv", 300), ("test.csv", 90)):
    with open(sys.argv[1] + "/" + name, "w") as f:
        f.write("a,b,label,c,d\n")
        for _ in range(n):
            c = int(rng.integers(3))
            v = rng.normal(0, 0.5, 4)
            v[c] += 2.0
            f.write("%.5f,%.5f,%d,%.5f,%.5f\n" % (v[0], v[1], c, v[2], v[3]))
EOF
cat >"$work/job.pbtxt" <<EOF
name: "ckpt-h5py"
model { mlp { in_features: 4 hidden: 16 out_features: 3 } }
data { kind: CSV train_path: "$work/train.csv" test_path: "$work/test.csv" batch_size: 30 }
optimizer { kind: ADAM lr: 0.01 }
train { steps: 25 log_every_steps: 5 seed: 3 }
checkpoint { every_steps: 10 keep_last: 2 }
EOF

# 1. Train: checkpoints at steps 10 and 20, and the final one at 25; the newest two are kept.
run="$work/run"
if out=$("$TESSERA" train "$work/job.pbtxt" --run-dir "$run" 2>&1); then ok train; else
  bad "train: $out"
  exit 1
fi
ckpts="$run/checkpoints"
names=$(cd "$ckpts" && ls -A | tr '\n' ' ')
if [ "$names" = "latest step-00000020 step-00000025 " ]; then ok "checkpoint directories ($names)"; else
  bad "checkpoint directories: got '$names', want 'latest step-00000020 step-00000025 '"
fi
latest="$ckpts/latest"
if [ "$(readlink "$latest")" = "step-00000025/checkpoint.h5" ]; then ok "latest -> $(readlink "$latest")"; else
  bad "latest -> $(readlink "$latest")"
fi

# 2. tessera ckpt inspect --json, and h5py against both it and shapes written out here by hand.
if "$TESSERA" ckpt inspect --json "$run" >"$work/inspect.json" 2>"$work/inspect.err"; then ok inspect; else
  bad "inspect: $(cat "$work/inspect.err")"
fi
ntensors=$("$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); print(len(j["tensors"]) if j.get("step")==25 else -1)' \
  "$work/inspect.json" 2>/dev/null)
if [ "$ntensors" = 12 ]; then ok "inspect lists 12 tensors at step 25"; else bad "inspect: $ntensors tensors (want 12 at step 25)"; fi
if out=$("$PY" "$CHECK" "$latest" "$work/inspect.json" 2>&1); then ok "h5py vs inspect: $out"; else bad "h5py vs inspect: $out"; fi
cat >"$work/shapes.json" <<'EOF'
{"/model/1.weight": [16, 4], "/model/1.bias": [16], "/model/3.weight": [3, 16], "/model/3.bias": [3],
 "/optim/1.weight/exp_avg": [16, 4], "/optim/1.weight/exp_avg_sq": [16, 4], "/optim/3.bias/exp_avg_sq": [3]}
EOF
if out=$("$PY" "$CHECK" "$latest" "$work/shapes.json" 2>&1); then ok "h5py vs shapes: $out"; else bad "h5py vs shapes: $out"; fi
# ... and the checker itself fails on a wrong expectation.
echo '{"/model/1.weight": [4, 16]}' >"$work/wrong.json"
if out=$("$PY" "$CHECK" "$latest" "$work/wrong.json" 2>&1); then bad "h5py accepted a wrong shape: $out"; else
  if grep -q 'shape \[16, 4\], expected \[4, 16\]' <<<"$out"; then ok "h5py refuses a wrong shape"; else bad "h5py wrong shape: $out"; fi
fi

# 3. h5dump lists the groups and datasets.
if h5dump -H "$latest" >"$work/h5dump.txt" 2>&1 && grep -q 'GROUP "model"' "$work/h5dump.txt" &&
  grep -q 'DATASET "1.weight"' "$work/h5dump.txt" && grep -q 'GROUP "optim"' "$work/h5dump.txt"; then
  ok "h5dump -H lists /model and /optim"
else
  bad "h5dump -H: $(head -20 "$work/h5dump.txt")"
fi

# 4. verify: 0 on the good checkpoint; 1 naming the tensor for a byte flipped in each tensor.
if out=$("$TESSERA" ckpt verify "$latest" 2>&1) && grep -q ': OK (step 25, 12 tensors' <<<"$out"; then ok "verify good"; else
  bad "verify good: $out"
fi
if ! "$PY" "$CHECK" --flip-each "$latest" "$work/flips" >"$work/flips.txt" 2>"$work/flips.err"; then
  bad "flip-each: $(cat "$work/flips.err")"
fi
nflips=$(wc -l <"$work/flips.txt")
if [ "$nflips" = 12 ]; then ok "12 corrupt copies, one per tensor"; else bad "$nflips corrupt copies (want 12)"; fi
# The verifies run a few at a time (each is mostly process start-up).
i=0
while IFS=$'\t' read -r tensor copy; do
  ("$TESSERA" ckpt verify "$copy" >"$copy.out" 2>&1; echo $? >"$copy.rc") &
  i=$((i + 1))
  if [ $((i % 4)) = 0 ]; then wait; fi
done <"$work/flips.txt"
wait
while IFS=$'\t' read -r tensor copy; do
  rc=$(cat "$copy.rc")
  if [ "$rc" = 1 ] && grep -qF -- "$copy: $tensor: CRC-32 mismatch" "$copy.out" &&
    grep -q 'FAILED verification (1 problem)' "$copy.out"; then
    ok "verify names $tensor"
  else
    bad "verify of a copy with $tensor corrupt: exit $rc: $(cat "$copy.out")"
  fi
done <"$work/flips.txt"
first_copy=$(head -1 "$work/flips.txt" | cut -f2)
first_tensor=$(head -1 "$work/flips.txt" | cut -f1)
if out=$("$PY" "$CHECK" "$first_copy" "$work/inspect.json" 2>&1); then bad "h5py accepted a corrupt copy"; else
  if grep -qF "$first_tensor: zlib.crc32" <<<"$out"; then ok "h5py catches the corrupt $first_tensor"; else bad "h5py corrupt: $out"; fi
fi

# 5. A truncated copy: non-zero, saying so.
cp "$latest" "$work/cut.h5"
size=$(stat -c %s "$work/cut.h5")
truncate -s $((size / 2)) "$work/cut.h5"
for cmd in verify inspect; do
  if out=$("$TESSERA" ckpt "$cmd" "$work/cut.h5" 2>&1); then bad "$cmd accepted a truncated file: $out"; else
    # The file's name holds no "truncated": the words must come from the diagnosis (HDF5's "truncated file").
    if grep -q "truncated file" <<<"$out"; then ok "$cmd truncated: exit non-zero, says truncated"; else bad "$cmd truncated: $out"; fi
  fi
done

# 6. export: the model only, verified, and h5py reads it.
if out=$("$TESSERA" ckpt export "$run" "$work/model.h5" 2>&1) && "$TESSERA" ckpt verify "$work/model.h5" >/dev/null 2>&1 &&
  "$PY" -c 'import h5py,sys; f=h5py.File(sys.argv[1],"r"); sys.exit(0 if "model" in f and "optim" not in f and f.attrs["format"].decode()=="tessera.model" else 1)' "$work/model.h5"; then
  ok export
else
  bad "export: $out"
fi
# 7. export never replaces what it must not: the checkpoint itself, `latest`, a device, a file in a
#    checkpoint directory (once it renamed over its own input and lost the optimizer state).
refuse_export() {  # NAME OUT EXPECTED
  if out=$("$TESSERA" ckpt export "$run" "$2" 2>&1); then bad "export over $1 was accepted"
  elif grep -qF -- "$3" <<<"$out"; then ok "export refuses $1: ${out#tessera: error: }"
  else bad "export over $1: unclear error: $out"; fi
}
own=$(readlink -f "$latest")
[ -d "$own" ] && own="$own/checkpoint.h5"
refuse_export "its own input" "$own" "is the checkpoint being exported"
refuse_export "latest" "$run/checkpoints/latest" "is a symbolic link"
refuse_export "a device" /dev/null "is not a regular file"
refuse_export "a new file in a step directory" "$(dirname "$own")/model.h5" "is inside a checkpoint directory"
refuse_export "a new file in the checkpoints directory" "$run/checkpoints/model.h5" "is inside a checkpoint directory"
"$TESSERA" ckpt verify "$run" > /dev/null 2>&1 && [ -c /dev/null ] && ok "the checkpoint and /dev/null are intact" \
  || bad "a refused export damaged something"

echo '{"/model/1.weight": [16, 4], "/model/1.bias": [16], "/model/3.weight": [3, 16], "/model/3.bias": [3]}' >"$work/model_shapes.json"
if out=$("$PY" "$CHECK" "$work/model.h5" "$work/model_shapes.json" 2>&1); then ok "h5py vs export: $out"; else bad "h5py vs export: $out"; fi

exit $fail
