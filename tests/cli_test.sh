#!/usr/bin/env bash
# The tessera command as users run it: --version, --help, validate, and errors with exit status 1.
set -u
TESSERA="$1"
SRC="$2"
fail=0
check() {  # check NAME EXPECTED_STATUS PATTERN -- command...
  local name="$1" want="$2" pattern="$3"
  shift 4
  out=$("$@" 2>&1)
  got=$?
  if [ "$got" != "$want" ] || ! grep -qE -- "$pattern" <<<"$out"; then
    echo "FAIL $name: exit $got (want $want), output:"
    echo "$out" | head -20
    fail=1
  else
    echo "ok   $name"
  fi
}
check version 0 '^tessera [0-9]+\.[0-9]+\.[0-9]+' -- "$TESSERA" --version
check help 0 'train.*Run a job spec' -- "$TESSERA" --help
check train-help 0 '--set FIELD=VALUE' -- "$TESSERA" train --help
check validate-ok 0 'valid' -- "$TESSERA" validate "$SRC/jobs/examples/fmnist_mlp.pbtxt" --no-file-check
check validate-bad-value 1 '^tessera: error: .*optimizer.lr: must be > 0, got -1' -- \
  "$TESSERA" validate "$SRC/jobs/examples/fmnist_mlp.pbtxt" --no-file-check --set optimizer.lr=-1
check validate-bad-field 1 "no field 'epochz' in train" -- \
  "$TESSERA" validate "$SRC/jobs/examples/fmnist_mlp.pbtxt" --no-file-check --set train.epochz=1
check train-missing-file 1 '^tessera: error: .*job.pbtxt: no such file \(a job spec\)' -- "$TESSERA" train /nonexistent/job.pbtxt
check no-subcommand 106 'subcommand' -- "$TESSERA"
check train-help-resume 0 '--resume-from' -- "$TESSERA" train --help
check ckpt-help 0 'inspect.*verify.*export|export' -- "$TESSERA" ckpt --help
check resume-needs-run-dir 1 '--resume continues a run directory: name it with --run-dir' -- \
  "$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --resume
check resume-and-no-resume 108 'excludes' -- \
  "$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --resume --no-resume
check ckpt-missing 1 '^tessera: error: .*/nonexistent/ckpt: no such file or directory' -- "$TESSERA" ckpt inspect /nonexistent/ckpt
check ckpt-not-hdf5 1 'not an HDF5 file' -- "$TESSERA" ckpt verify "$SRC/jobs/examples/fmnist_mlp.pbtxt"
EMPTY=$(mktemp -d)
check ckpt-empty-dir 1 'no checkpoint there' -- "$TESSERA" ckpt verify "$EMPTY"
check resume-nothing 1 '--resume: no committed checkpoint in' -- \
  "$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --run-dir "$EMPTY" --resume
# Not regular files: a device read without end, a directory parsed as an empty spec, a FIFO that
# blocks the open (each once did so; now refused by name, at once).
mkfifo "$EMPTY/fifo"
check validate-dev-zero 1 '/dev/zero: is not a regular file .* refusing to read it as a job spec' -- \
  timeout 10 "$TESSERA" validate /dev/zero
check validate-directory 1 ': is a directory, not a job spec' -- timeout 10 "$TESSERA" validate "$EMPTY"
check ckpt-verify-fifo 1 'fifo: is not a regular file .* refusing to read it as a checkpoint' -- \
  timeout 10 "$TESSERA" ckpt verify "$EMPTY/fifo"
check ckpt-inspect-device 1 '/dev/zero: is not a regular file' -- timeout 10 "$TESSERA" ckpt inspect /dev/zero
# Sizes that used to pass validation and then crash (a wrapped parameter count, SIGFPE).
check validate-huge-hidden 1 'model.mlp: the layer sizes multiply past 2\^63 parameters' -- \
  "$TESSERA" validate "$SRC/jobs/examples/fmnist_mlp.pbtxt" --set model.mlp.hidden=23203451665043462
check train-huge-batch 1 'data.batch_size: must be in \[1, 2147483648\], got 9223372036854775807' -- \
  "$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --set data.batch_size=9223372036854775807
check train-too-big-for-memory 1 'model.mlp: [0-9]+ parameters need [0-9.]+ GB for their weights and gradients alone; this machine has' -- \
  "$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --set model.mlp.hidden=1000000,1000000 --run-dir "$EMPTY/big"
# NaN weights hide behind ReLU (the loss stays finite): the run must stop, and save nothing.
check train-nan-weights 1 'the weights hold NaN or Inf values \(first in 1.weight\) after step 10; nothing is saved' -- \
  "$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --set data.normalize.scale=1e38 --set train.steps=60 \
  --set train.log_every_steps=20 --set checkpoint.every_steps=10 --run-dir "$EMPTY/nan"
[ -z "$(ls "$EMPTY/nan/checkpoints" 2>/dev/null)" ] || { echo "FAIL train-nan-weights: a checkpoint was saved"; fail=1; }
# Two runs on one run directory: the second is refused, naming the first; the first is unharmed.
"$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --set train.epochs=2 --set checkpoint.every_steps=50 \
  --run-dir "$EMPTY/shared" > "$EMPTY/first.out" 2>&1 &
first=$!
for i in $(seq 300); do grep -q '"event":"train"' "$EMPTY/shared/metrics.jsonl" 2>/dev/null && break; sleep 0.1; done
check train-run-dir-in-use 1 "the run directory $EMPTY/shared is in use by tessera pid $first on .* since" -- \
  "$TESSERA" train "$SRC/jobs/examples/fmnist_mlp.pbtxt" --run-dir "$EMPTY/shared"
if wait $first && grep -q '^done: ' "$EMPTY/first.out"; then echo "ok   train-run-dir-first-unharmed"
else echo "FAIL train-run-dir-first-unharmed:"; tail -5 "$EMPTY/first.out"; fail=1; fi
# A test label the model cannot output is blamed on the test file, not the training labels.
printf 'a,b,label\n1,2,0\n3,4,1\n5,6,1\n' > "$EMPTY/train.csv"
printf 'a,b,label\n1,2,0\n3,4,7\n' > "$EMPTY/test.csv"
printf 'name: "csv"\nmodel { mlp { in_features: 2 hidden: 4 out_features: 3 } }\ndata { kind: CSV train_path: "train.csv" test_path: "test.csv" label_column: "label" batch_size: 2 }\ntrain { epochs: 1 }\n' > "$EMPTY/csv.pbtxt"
check train-bad-test-label 1 "the test labels of csv .*test.csv .* go up to class 7 but model.mlp.out_features is 3" -- \
  "$TESSERA" train "$EMPTY/csv.pbtxt" --run-dir "$EMPTY/csvrun"
# A checkpoints directory that cannot take a save is refused at the start, not after training;
# a `latest` whose checkpoint is gone falls back with a warning, not silently.
J="$SRC/jobs/examples/fmnist_mlp.pbtxt"
touch "$EMPTY/afile"
check train-ckpt-dir-is-a-file 1 "checkpoint.dir: $EMPTY/afile: exists and is not a directory" -- \
  "$TESSERA" train "$J" --run-dir "$EMPTY/c1" --set checkpoint.dir="$EMPTY/afile"
mkdir -p "$EMPTY/c2/checkpoints/latest"
check train-latest-is-a-directory 1 "latest: is a directory, not the symbolic link tessera keeps there" -- \
  "$TESSERA" train "$J" --run-dir "$EMPTY/c2"
"$TESSERA" train "$J" --run-dir "$EMPTY/c3" --set train.steps=20 --set checkpoint.every_steps=10 > /dev/null 2>&1
rm "$EMPTY/c3/checkpoints/step-00000020/checkpoint.h5"
check train-latest-gone-warns 0 "warning: .*latest names step-00000020/checkpoint.h5, which is gone; resuming from .*step-00000010/checkpoint.h5" -- \
  "$TESSERA" train "$J" --run-dir "$EMPTY/c3" --set train.steps=20 --set checkpoint.every_steps=10
rm -rf "$EMPTY"
exit $fail
