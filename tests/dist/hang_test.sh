#!/usr/bin/env bash
# A rank that dies or hangs in the middle of a 3-rank `tessera train` under mpirun:
#   (a) kill -9 rank 1;
#   (b) kill -STOP rank 1 (mpirun notices nothing: tessera's collective timeout must act);
#   (c) kill -9 rank 1 under mpirun's defaults, to keep docs/errors.md honest about what users
#       see then;
#   (d) kill -STOP rank 1 while a checkpoint is saved after every step: the survivors may be
#       waiting for a save (the checkpoint writer's collectives) rather than in training, and
#       must time out all the same;
#   (e) kill -STOP rank 1 at ZeRO stage 3, where most collectives are the gathers of each layer's
#       parameters (broadcasts, on a group of their own) and the reduces of its gradients.
# In each case the job must exit non-zero within the collective timeout plus a margin. In (a) and
# (b) a surviving rank must report the collective, its sequence number and rank 1 as not
# responding (heartbeats, dist/mpi/heartbeat.h).
#
# Why (a) runs mpirun with `--mca orte_abort_on_non_zero_status 0`: by default Open MPI's mpirun
# (4.1) kills the whole job about a second after a rank dies by a signal, before the survivors'
# collectives time out, and prints only its own "mpirun noticed that process rank 1 ... exited on
# signal 9 (Killed)". With the flag it leaves the survivors running; their collective times out
# and they report it (then MPI_Abort ends the job). Case (c) checks the default behaviour.
#
# Every wait is bounded; the EXIT trap continues and kills whatever is left (a stopped rank too).
set -u
TESSERA="$1"
MPIRUN="$2"
TIMEOUT_S=5    # parallel.collective_timeout_s
MARGIN_S=15    # kill to mpirun's exit must take less than TIMEOUT_S + MARGIN_S
DIR=$(mktemp -d)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

LAUNCHER=""    # pid of the `timeout ... mpirun` of the current case
RANK_PIDS=()   # the ranks of the current case, until they are seen gone
cleanup() {
  local p
  for p in "${RANK_PIDS[@]}"; do
    kill -CONT "$p" 2>/dev/null
    kill -KILL "$p" 2>/dev/null
  done
  [ -n "$LAUNCHER" ] && kill -TERM "$LAUNCHER" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 2' INT TERM
fail() { echo "FAIL: $*"; exit 1; }

# Four Gaussian blobs in 64-D; an MLP 64-256-256-4 whose step takes a few ms on 3 ranks.
/usr/bin/python3 "$(dirname "$0")/../blobs_csv.py" "$DIR" --dims 64 --classes 4 --train 3072 --test 192 --offset 1.0
# steps bounds a run nobody kills to a minute or two.
cat > "$DIR/job.pbtxt" <<'SPEC'
name: "hang"
model { mlp { in_features: 64 hidden: 256 hidden: 256 out_features: 4 } }
data { kind: CSV train_path: "train.csv" test_path: "test.csv" batch_size: 768 }
optimizer { kind: SGD lr: 0.01 }
train { steps: 20000 log_every_steps: 10 seed: 3 }
SPEC

now() { date +%s.%N; }
elapsed_since() { /usr/bin/python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# run_case NAME SIGNAL [MPIRUN FLAGS...]: starts the job, sends SIGNAL to rank 1 once all ranks
# train, waits for mpirun to exit. Sets RC, SECONDS_TO_EXIT; the output is in $DIR/NAME.out.
EXTRA_SETS=()  # more `--set` arguments for tessera in the next case
run_case() {
  local name="$1" sig="$2"
  shift 2
  local run="$DIR/$name" out="$DIR/$name.out"
  timeout 120 "$MPIRUN" -np 3 --oversubscribe "$@" "$TESSERA" train "$DIR/job.pbtxt" --run-dir "$run" \
    --set parallel.collective_timeout_s=$TIMEOUT_S "${EXTRA_SETS[@]}" > "$out" 2>&1 &
  LAUNCHER=$!
  # Training is under way once every rank has logged a "train" event (at most 60 s).
  local i r ready
  for i in $(seq 600); do
    ready=1
    for r in 0 1 2; do grep -qs '"event":"train"' "$run/rank-$r.log" || ready=0; done
    [ $ready = 1 ] && break
    kill -0 "$LAUNCHER" 2>/dev/null || { cat "$out"; fail "$name: the job ended before training"; }
    sleep 0.1
  done
  [ $ready = 1 ] || { cat "$out"; fail "$name: no train events from every rank within 60 s"; }
  local pids
  pids=$(/usr/bin/python3 - "$run" <<'PY'
import json, sys
print(" ".join(str(json.loads(open(f"{sys.argv[1]}/rank-{r}.log").readline())["pid"]) for r in range(3)))
PY
  ) || fail "$name: cannot read the pids from the rank logs"
  read -r -a pid_of_rank <<< "$pids"
  RANK_PIDS=("${pid_of_rank[@]}")
  local victim="${pid_of_rank[1]}"
  grep -q tessera "/proc/$victim/cmdline" 2>/dev/null || fail "$name: pid $victim of rank 1 is not a tessera process"
  sleep 1  # a second into training: some steps later, inside or between collectives
  local t0
  t0=$(now)
  kill "-$sig" "$victim" || fail "$name: kill -$sig $victim"
  # mpirun's exit, bounded: the deadline, the margin, and 10 s more to report a slow exit.
  for i in $(seq $(( (TIMEOUT_S + MARGIN_S + 10) * 10 ))); do
    kill -0 "$LAUNCHER" 2>/dev/null || break
    sleep 0.1
  done
  SECONDS_TO_EXIT=$(elapsed_since "$t0")
  if kill -0 "$LAUNCHER" 2>/dev/null; then
    cat "$out"
    fail "$name: mpirun still runs $SECONDS_TO_EXIT s after kill -$sig of rank 1"
  fi
  wait "$LAUNCHER"
  RC=$?
  LAUNCHER=""
  # No rank outlives mpirun (a stopped one included) for more than a few seconds.
  for i in $(seq 50); do
    local alive=0
    for r in 0 1 2; do kill -0 "${pid_of_rank[$r]}" 2>/dev/null && [ "$(ps -o stat= -p "${pid_of_rank[$r]}" | cut -c1)" != Z ] && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  [ $alive = 0 ] || fail "$name: a rank outlived mpirun"
  RANK_PIDS=()
  echo "$name: kill -$sig rank 1 -> mpirun exited with status $RC after $SECONDS_TO_EXIT s"
}

check_exit() {  # NAME STATUS: mpirun's documented exit status (docs/errors.md): 137 when a rank
  # was killed, 1 when tessera's MPI_Abort ended the job
  [ "$RC" != 0 ] || { cat "$DIR/$1.out"; fail "$1: the job exited with status 0"; }
  [ "$RC" = "$2" ] || { cat "$DIR/$1.out"; fail "$1: mpirun exited with status $RC, not $2"; }
  [ "$RC" != 124 ] || { cat "$DIR/$1.out"; fail "$1: the job ran into the test's 120 s limit"; }
  /usr/bin/python3 -c "import sys; sys.exit(not float(sys.argv[1]) < float(sys.argv[2]))" \
    "$SECONDS_TO_EXIT" $(( TIMEOUT_S + MARGIN_S )) \
    || { cat "$DIR/$1.out"; fail "$1: mpirun took $SECONDS_TO_EXIT s to exit (limit $(( TIMEOUT_S + MARGIN_S )) s)"; }
}

# A survivor's report: the collective, its sequence number, rank 1 as not responding (a checkpoint's
# collectives wait the timeout plus the time its bytes take at checkpoint.min_io_mb_per_s: 5.03 s here).
SURVIVOR_ERROR='tessera: error on rank [02]: (checkpoint at step [0-9]+: )?(allreduce|reduce|reduce_scatter|allgather|broadcast|barrier) #[0-9]+ \([^)]*\) did not complete within 5(\.[0-9]+)? s: .*ranks not responding \(no heartbeat for [0-9.]+ s\): \[1\]'
check_survivor_error() {  # NAME
  grep -Eq "$SURVIVOR_ERROR" "$DIR/$1.out" \
    || { cat "$DIR/$1.out"; fail "$1: no surviving rank named the collective and rank 1"; }
  grep -E "$SURVIVOR_ERROR" "$DIR/$1.out" | head -1 | sed "s/^/$1: /"
}

# (a) kill -9, with mpirun told not to end the job itself.
run_case kill9 KILL --mca orte_abort_on_non_zero_status 0
check_exit kill9 137
check_survivor_error kill9

# (b) kill -STOP: mpirun sees nothing; the survivors' timeout ends the job (MPI_Abort, which also
# continues and kills the stopped rank).
run_case stop STOP
check_exit stop 1
check_survivor_error stop

# (c) kill -9 under mpirun's defaults: mpirun ends the job at once and names the rank itself.
run_case kill9_default KILL
check_exit kill9_default 137
grep -Eq "(mpirun|mpiexec) noticed that process rank 1 .* exited on signal 9" "$DIR/kill9_default.out" \
  || { cat "$DIR/kill9_default.out"; fail "kill9_default: mpirun did not name rank 1"; }
grep -E "(mpirun|mpiexec) noticed that process rank 1" "$DIR/kill9_default.out" | sed "s/^/kill9_default: /"

# (d) kill -STOP during checkpointing (a save after every step, so one is nearly always in flight).
EXTRA_SETS=(--set checkpoint.every_steps=1 --set checkpoint.keep_last=2)
run_case stop_ckpt STOP
EXTRA_SETS=()
check_exit stop_ckpt 1
check_survivor_error stop_ckpt
grep -q '^checkpoint: step' "$DIR/stop_ckpt.out" || { cat "$DIR/stop_ckpt.out"; fail "stop_ckpt: no checkpoint was written"; }

# (e) kill -STOP at ZeRO stage 3.
EXTRA_SETS=(--set parallel.zero_stage=3)
run_case stop_zero3 STOP
EXTRA_SETS=()
check_exit stop_zero3 1
check_survivor_error stop_zero3
echo "ok"
