#!/usr/bin/env bash
# `tessera submit` without a cluster:
#   - --dry-run for a 4-node x 8-GPU job, and for a 3-task CPU sweep, against the expected scripts
#     (REGENERATE=1 rewrites them: review the diff before committing)
#     in tests/slurm/expected/ (paths that vary between machines written @TESSERA@, @SRC@, @CWD@);
#     the rendered scripts parse as bash (bash -n);
#   - what is refused, and how (sbatch refusing a job is in slurm_launch_test.sh): sbatch missing, bad counts, signal, time,
#     tasks per node != GPUs, a spec that does not validate, a bad sweep line or sweep task, and
#     parallel.data that is not the number of ranks asked for.
# Usage: submit_test.sh TESSERA SOURCE_DIR
set -u
TESSERA=$(readlink -f "$1")
SRC=$(readlink -f "$2")
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
JOB="$SRC/jobs/examples/fmnist_cnn.pbtxt"
cd "$DIR"
generic() {  # the machine-specific paths of a rendered script as placeholders
  sed -e "s|$(readlink -f "$TESSERA")|@TESSERA@|g" -e "s|$SRC|@SRC@|g" -e "s|$DIR|@CWD@|g"
}
check_expected() {  # NAME: stdin against tests/slurm/expected/NAME
  generic > "$DIR/$1"
  bash -n "$DIR/$1" || fail "$1: the rendered script is not valid bash"
  [ -n "${REGENERATE:-}" ] && cp "$DIR/$1" "$SRC/tests/slurm/expected/$1"
  diff -u "$SRC/tests/slurm/expected/$1" "$DIR/$1" || fail "$1: the dry run differs from tests/slurm/expected/$1"
  echo "  $1: as expected ($(wc -l < "$DIR/$1") lines)"
}

echo "== --dry-run"
"$TESSERA" submit "$JOB" --nodes 4 --gpus-per-node 8 --cpus-per-task 6 --time 12:00:00 --partition gpu \
  --account ml-team --run-dir /scratch/runs/cnn-4x8 --set optimizer.lr=0.02 --set "name=cnn 4x8" \
  --sbatch=--exclusive --dry-run | check_expected gpu_4x8.sbatch || exit 1
printf 'optimizer.lr=0.1\noptimizer.lr=0.01 train.seed=2\n\n# comment\noptimizer.lr=0.001\n' > "$DIR/sweep.txt"
"$TESSERA" submit "$JOB" --array "$DIR/sweep.txt" --run-dir runs/lr-sweep --ntasks-per-node 2 --time 30 --signal USR2@60 \
  --dry-run | check_expected sweep_cpu.sbatch || exit 1
[ ! -e "$DIR/runs" ] || fail "--dry-run created a run directory"

echo "== refusals"
refused() {  # EXPECTED_MESSAGE ARGS...: tessera submit ARGS fails and says EXPECTED_MESSAGE (env: RUN_ENV)
  local want="$1"
  shift
  if env ${RUN_ENV:-} "$TESSERA" submit "$@" > "$DIR/out" 2>&1; then fail "accepted: submit $*"; fi
  grep -qF -- "$want" "$DIR/out" || { cat "$DIR/out"; fail "submit $*: the error does not say: $want"; }
  echo "  refused: ${*:2}: $(grep -F -- "$want" "$DIR/out" | head -1 | cut -c1-150)"
}
mkdir -p "$DIR/empty"
RUN_ENV="PATH=$DIR/empty" refused "sbatch is not on PATH" "$JOB" --run-dir "$DIR/r1"
refused "--nodes must be at least 1, got 0" "$JOB" --nodes 0 --dry-run
refused "'KILL' is not a signal tessera can stop on" "$JOB" --signal KILL@60 --dry-run
refused "the time after @ must be 0 to 65535 seconds" "$JOB" --signal USR1@soon --dry-run
refused "must be USR1 or USR2 (TERM comes at the limit itself" "$JOB" --signal TERM@60 --dry-run
refused "--time 'tomorrow' is not a Slurm time" "$JOB" --time tomorrow --dry-run
refused "--ntasks-per-node 4 differs from --gpus-per-node 8" "$JOB" --gpus-per-node 8 --ntasks-per-node 4 --dry-run
refused "--launcher 'torchrun': use srun or mpirun" "$JOB" --launcher torchrun --dry-run
refused "optimizer.lr: must be > 0" "$JOB" --set optimizer.lr=-1 --dry-run
refused "parallel.data is 4 but the job asks for 2 ranks" "$JOB" --ntasks-per-node 2 --set parallel.data=4 --dry-run
printf 'optimizer.lr=0.1\nlr 0.1\n' > "$DIR/bad1.txt"
refused "bad1.txt:2: 'lr' is not an override FIELD=VALUE" "$JOB" --array "$DIR/bad1.txt" --dry-run
printf 'optimizer.lr=0.1\noptimizer.lr=-3\n' > "$DIR/bad2.txt"
refused "bad2.txt: array task 1: " "$JOB" --array "$DIR/bad2.txt" --dry-run
printf '# nothing\n\n' > "$DIR/bad3.txt"
refused "the sweep file lists no tasks" "$JOB" --array "$DIR/bad3.txt" --dry-run
refused "cannot take a path with spaces" "$JOB" --run-dir "$DIR/a b" --dry-run
echo "PASS"
