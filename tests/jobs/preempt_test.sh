#!/usr/bin/env bash
# Preemption without Slurm: `tessera train` told to stop by a signal, as a job scheduler or a
# user with `kill` does it, on real Fashion-MNIST:
#   (a) 1 process, SIGUSR1 twice in a row (the second before, during or after the preemption's
#       save: none of them may change its outcome): exit status 75, the committed checkpoint verifies, metrics.jsonl ends with a
#       "preempted" event at its step, no summary.json; the same command again resumes there and
#       ends bitwise equal to an uninterrupted run;
#   (b) 2 ranks under mpirun, SIGTERM to ONE rank only: both ranks stop after the same step (one
#       checkpoint, written by 2 ranks), mpirun exits 75; the rerun ends bitwise equal to the
#       uninterrupted 2-rank run;
#   (c) --preempt-signal none: SIGUSR1 kills the process as it would any program (status 138).
#
# Usage: preempt_test.sh TESSERA MPIEXEC SOURCE_DIR
set -u
TESSERA="$1"
MPIRUN="$2"
SRC="$3"
source "$(dirname "$0")/ckpt_test_lib.sh"

# 938 steps of 128 on 784-512-256-10 with dropout, one thread: a few seconds per run.
ARGS=(--set train.epochs=2 --set train.threads=1 --set train.log_every_steps=20 --set model.mlp.dropout=0.1
      --set parallel.collective_timeout_s=60)
compare() { "$PY" "$SRC/tests/jobs/compare_checkpoints.py" "$@"; }
last_event() {  # RUN: the last line of metrics.jsonl
  tail -1 "$1/metrics.jsonl"
}
wait_for_training() {  # RUN PID: until the first train event (at most 60 s)
  local i
  for i in $(seq 600); do
    grep -q '"event":"train"' "$1/metrics.jsonl" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
event_field() {  # RUN FIELD: FIELD of the last event
  "$PY" -c 'import json, sys; print(json.loads(open(sys.argv[1] + "/metrics.jsonl").readlines()[-1])[sys.argv[2]])' "$1" "$2"
}

echo "== uninterrupted references on 1 and 2 ranks"
for np in 1 2; do
  run_tessera $np "$DIR/ref$np" "$DIR/ref$np.out" "${ARGS[@]}" || { cat "$DIR/ref$np.out"; fail "ref$np failed"; }
done

echo "== (a) 1 process, SIGUSR1 twice"
run="$DIR/p1"
run_tessera 1 "$run" "$run.out" "${ARGS[@]}" &
pid=$!
wait_for_training "$run" $pid || { cat "$run.out"; fail "p1 did not start training"; }
tpid=$(pgrep -f -- "^$(literal_re "$TESSERA") train .*--run-dir $(literal_re "$run")( |$)" | head -1)
kill -USR1 "$tpid"
sleep 0.01
kill -USR1 "$tpid" 2>/dev/null
wait $pid
rc=$?
[ $rc = 75 ] || { cat "$run.out"; fail "p1: exit status $rc after SIGUSR1, expected 75"; }
grep -q '"event":"preempted"' <<< "$(last_event "$run")" || fail "p1: metrics.jsonl does not end with a preempted event"
step=$(event_field "$run" step)
[ "$(event_field "$run" signal)" = SIGUSR1 ] || fail "p1: the preempted event does not name SIGUSR1"
[ "$step" -lt 938 ] || fail "p1: stopped at step $step, not before the end"
[ ! -e "$run/summary.json" ] || fail "p1: a preempted run wrote summary.json"
"$TESSERA" ckpt verify "$run" > /dev/null || fail "p1: the preemption checkpoint does not verify"
[ "$(step_of "$run/checkpoints/latest")" = "$step" ] || fail "p1: latest is not the checkpoint of step $step"
grep -q "stopped by SIGUSR1 after step $step: checkpoint committed; exit status 75" "$run.out" \
  || { cat "$run.out"; fail "p1: the stop is not reported"; }
echo "  stopped after step $step with status 75; the checkpoint verifies"
run_tessera 1 "$run" "$run.out" "${ARGS[@]}" || { cat "$run.out"; fail "p1: the rerun failed"; }
grep -q "resume: .*step $step" "$run.out" || { cat "$run.out"; fail "p1: the rerun did not resume from step $step"; }
echo -n "  resumed from step $step; final checkpoint vs ref1: "
compare bitwise "$DIR/ref1/checkpoints/latest" "$run/checkpoints/latest" || fail "p1: differs from the uninterrupted run"

echo "== (b) 2 ranks under mpirun, SIGTERM to one rank"
run="$DIR/p2"
run_tessera 2 "$run" "$run.out" "${ARGS[@]}" &
pid=$!
wait_for_training "$run" $pid || { cat "$run.out"; fail "p2 did not start training"; }
ranks=($(pgrep -f -- "^$(literal_re "$TESSERA") train .*--run-dir $(literal_re "$run")( |$)"))
[ ${#ranks[@]} = 2 ] || fail "p2: expected 2 rank processes, found ${#ranks[@]}"
kill -TERM "${ranks[1]}"
wait $pid
rc=$?
[ $rc = 75 ] || { cat "$run.out"; fail "p2: exit status $rc after SIGTERM to one rank, expected 75"; }
step=$(event_field "$run" step)
"$TESSERA" ckpt verify "$run" > /dev/null || fail "p2: the preemption checkpoint does not verify"
[ "$(step_of "$run/checkpoints/latest")" = "$step" ] || fail "p2: latest is not the checkpoint of step $step"
[ "$(event_field "$run" signal)" = SIGTERM ] || fail "p2: the preempted event does not name SIGTERM"
echo "  both ranks stopped after step $step (one rank was signalled); status 75; the checkpoint verifies"
run_tessera 2 "$run" "$run.out" "${ARGS[@]}" || { cat "$run.out"; fail "p2: the rerun failed"; }
echo -n "  resumed from step $step; final checkpoint vs ref2: "
compare bitwise "$DIR/ref2/checkpoints/latest" "$run/checkpoints/latest" || fail "p2: differs from the uninterrupted run"

echo "== (c) --preempt-signal none"
run="$DIR/p3"
run_tessera 1 "$run" "$run.out" "${ARGS[@]}" --preempt-signal none &
pid=$!
wait_for_training "$run" $pid || { cat "$run.out"; fail "p3 did not start training"; }
pkill -USR1 -f -- "^$(literal_re "$TESSERA") train .*--run-dir $(literal_re "$run")( |$)"
wait $pid
rc=$?
[ $rc = 138 ] || fail "p3: exit status $rc, expected 138 (killed by SIGUSR1)"
echo "  SIGUSR1 killed the run (status $rc)"
"$TESSERA" train "$JOB" --run-dir "$DIR/p4" --preempt-signal KILL 2> "$DIR/p4.err" && fail "--preempt-signal KILL was accepted"
grep -q "'KILL' is not a signal tessera can stop on" "$DIR/p4.err" || { cat "$DIR/p4.err"; fail "--preempt-signal KILL: unclear error"; }
echo "PASS"
