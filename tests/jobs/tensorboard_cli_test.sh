#!/usr/bin/env bash
# TensorBoard reads what tessera writes: a 2-rank run's events.out.tfevents.* file is read back
# with TensorBoard's own loader (from PyPI, in a venv this script creates), its records' framing
# is checked with an independent CRC-32C, its scalars match metrics.jsonl, and a real
# `tensorboard --logdir` server lists the run and serves its loss curve over HTTP.
#   tensorboard_cli_test.sh TESSERA MPIEXEC SOURCE_DIR BUILD_DIR
set -euo pipefail
TESSERA=$1 MPIRUN=$2 SRC=$3 BUILD=$4
VENV=$BUILD/venv-tensorboard
if ! "$VENV/bin/python" -c "import tensorboard" 2>/dev/null; then
  echo "tensorboard_cli_test: creating $VENV with tensorboard from PyPI"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q tensorboard
fi
WORK=$(mktemp -d)
TB_PID=""
trap '[ -n "$TB_PID" ] && kill "$TB_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

/usr/bin/python3 "$SRC/tests/blobs_csv.py" "$WORK"
cat > "$WORK/job.pbtxt" <<'SPEC'
name: "blobs"
model { mlp { in_features: 4 hidden: 32 out_features: 3 } }
data { kind: CSV train_path: "train.csv" test_path: "test.csv" batch_size: 32 }
optimizer { kind: ADAM lr: 0.01 }
train { epochs: 2 log_every_steps: 5 seed: 3 threads: 1 }
SPEC
mkdir -p "$WORK/runs"
"$MPIRUN" -np 2 --oversubscribe "$TESSERA" train "$WORK/job.pbtxt" --run-dir "$WORK/runs/blobs" \
  > "$WORK/train.log" 2>&1 || { cat "$WORK/train.log"; exit 1; }

"$VENV/bin/python" "$SRC/tests/jobs/tensorboard_check.py" files "$WORK/runs/blobs"

# A run that stopped after logging past its last checkpoint (step 20 of 40, logged to 40: the
# checkpoint at 40 is removed, as if the process died before writing it), resumed from step 20.
R="$WORK/resumed"
for pass in 1 2; do
  "$TESSERA" train "$WORK/job.pbtxt" --run-dir "$R" --set train.steps=40 --set checkpoint.every_steps=20 \
    > "$WORK/resume-$pass.log" 2>&1 || { cat "$WORK/resume-$pass.log"; exit 1; }
  if [ $pass = 1 ]; then rm -rf "$R/checkpoints/step-00000040" "$R/checkpoints/latest"; fi
done
grep -q "resume: .*step 20" "$WORK/resume-2.log" || { cat "$WORK/resume-2.log"; exit 1; }
"$VENV/bin/python" "$SRC/tests/jobs/tensorboard_check.py" resumed "$R" 21

# The server, as a user starts it, on a free loopback port.
PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$VENV/bin/tensorboard" --logdir "$WORK/runs" --host 127.0.0.1 --port "$PORT" > "$WORK/tb.log" 2>&1 &
TB_PID=$!
"$VENV/bin/python" "$SRC/tests/jobs/tensorboard_check.py" server "$WORK/runs/blobs" "http://127.0.0.1:$PORT" \
  || { cat "$WORK/tb.log"; exit 1; }
