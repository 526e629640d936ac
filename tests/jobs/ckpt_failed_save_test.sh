#!/usr/bin/env bash
# A save that fails stops training on every rank (docs/checkpoint-format.md, "How a save works"):
# the disk is made to refuse a checkpoint's bytes with a file-size limit (ulimit -f; SIGXFSZ
# ignored, so writes fail with EFBIG as on a full disk or a quota) on one process, on rank 1 of
# 2, and on rank 0 of 2. Each run must end with a non-zero status within the deadline, name the
# checkpoint and the rank that failed, commit nothing, write no summary; a rerun without the limit then
# trains the same run directory from the start and commits every checkpoint.
set -u
TESSERA="$1"
MPIRUN="$2"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() { echo "FAIL: $*"; exit 1; }
# The limit covers Open MPI's shared-memory files too: its ranks talk over loopback TCP instead.
MPI=("$MPIRUN" --oversubscribe --mca btl self,tcp --mca btl_tcp_if_include lo)
LIMITED=(bash -c 'ulimit -f 64; trap "" XFSZ; exec "$@"' limited)  # 64 KiB per file

/usr/bin/python3 "$(dirname "$0")/../blobs_csv.py" "$DIR"
# 17923 parameters with Adam's state: a 215 KB checkpoint, well past the limit.
cat > "$DIR/job.pbtxt" <<'SPEC'
name: "blobs"
model { mlp { in_features: 4 hidden: 256 hidden: 64 out_features: 3 } }
data { kind: CSV train_path: "train.csv" test_path: "test.csv" batch_size: 32 }
optimizer { kind: ADAM lr: 0.01 }
train { epochs: 3 log_every_steps: 5 seed: 7 }
checkpoint { every_steps: 10 }
SPEC

# check NAME STATUS WANT...: the run's status is non-zero (not a crash: below 128) and its output
# holds one of the WANTs; nothing was committed, no summary written, training did not finish.
check() {
  local name=$1 status=$2
  shift 2
  local out="$DIR/$name.out" want=()
  for w in "$@"; do want+=(-e "$w"); done
  [ "$status" -ne 0 ] || { cat "$out"; fail "$name: a failed save must fail the job"; }
  [ "$status" -lt 128 ] || { cat "$out"; fail "$name: exit status $status (a crash or a kill, not an error)"; }
  grep -qF "${want[@]}" -- "$out" || { cat "$out"; fail "$name: none of [$*] in the output"; }
  grep -q '^done:' "$out" && fail "$name: training finished despite the failed save"
  [ -e "$DIR/$name/summary.json" ] && fail "$name: a summary was written"
  local committed
  committed=$(find "$DIR/$name/checkpoints" -mindepth 1 -maxdepth 1 -not -name '.*' 2>/dev/null)
  [ -z "$committed" ] || fail "$name: committed despite the failure: $committed"
  echo "ok: $name (status $status)"
}

run_timed() {  # run_timed NAME CMD...: runs CMD with its output in NAME.out; sets STATUS
  local name=$1
  shift
  local start=$SECONDS
  timeout -k 5 90 "$@" > "$DIR/$name.out" 2>&1
  STATUS=$?
  [ $((SECONDS - start)) -lt 60 ] || { cat "$DIR/$name.out"; fail "$name: took $((SECONDS - start)) s"; }
}

# The rank whose write failed reports the cause; the other learns that it failed from the save's
# own collectives and reports that. Whichever reports first ends the job (MPI_Abort), so the other
# report may or may not make it out: either one will do, each naming the save and the rank.
run_timed one "${LIMITED[@]}" "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/one"
check one $STATUS "tessera: error: checkpoint at step 10: $DIR/one/checkpoints/.step-00000010.partial/checkpoint.h5: "
grep -q "File too large" "$DIR/one.out" || { cat "$DIR/one.out"; fail "one: the cause is not named"; }

run_timed rank1 "${MPI[@]}" -np 1 "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/rank1" \
  : -np 1 "${LIMITED[@]}" "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/rank1"
check rank1 $STATUS "tessera: error on rank 1: checkpoint at step 10: $DIR/rank1/checkpoints/.step-00000010.partial/checkpoint.h5: write of " \
  "tessera: error on rank 0: checkpoint at step 10: rank 1 could not write its part of $DIR/rank1/checkpoints/.step-00000010.partial/checkpoint.h5 (rank 1 reports why)"

run_timed rank0 "${MPI[@]}" -np 1 "${LIMITED[@]}" "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/rank0" \
  : -np 1 "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/rank0"
check rank0 $STATUS "tessera: error on rank 0: checkpoint at step 10: $DIR/rank0/checkpoints/.step-00000010.partial/checkpoint.h5: " \
  "tessera: error on rank 1: checkpoint at step 10: rank 0 could not create $DIR/rank0/checkpoints/.step-00000010.partial/checkpoint.h5 (rank 0 reports why)"

# Without the limit, the same run directory trains from the start (nothing half-written was
# taken for a checkpoint) and commits the saves.
"${MPI[@]}" -np 2 "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$DIR/rank0" > "$DIR/again.out" 2>&1 \
  || { cat "$DIR/again.out"; fail "the rerun failed"; }
grep -q "resume:" "$DIR/again.out" && { cat "$DIR/again.out"; fail "the rerun resumed from something"; }
[ -f "$DIR/rank0/checkpoints/step-00000045/checkpoint.h5" ] || fail "the rerun committed no final checkpoint"
"$TESSERA" ckpt verify "$DIR/rank0" > /dev/null || fail "the rerun's checkpoint does not verify"
echo "ok"
