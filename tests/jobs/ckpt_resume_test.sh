#!/usr/bin/env bash
# Resuming a `tessera train` run from its checkpoints, end to end, on real Fashion-MNIST:
#   (a) uninterrupted reference runs on 1 rank and on 2 ranks (mpirun), 200 steps;
#   (b) kill -9 of every process of a run (1 rank; 2 ranks: both ranks and mpirun) at a random
#       moment after its first committed checkpoint, then the same command again (1 rank: the run
#       directory is resumed automatically; 2 ranks: with --resume): the final checkpoint must equal
#       the uninterrupted run's bit for bit, every /model and /optim tensor, and the metrics after
#       the resume (learning rate, loss) must equal the reference's;
#   (c) resumes on another number of ranks with --resume-from: 2 -> 1, 1 -> 2 and 2 -> 4. The final
#       /model tensors must be within a relative norm of 1e-5 of the 1-rank reference (N ranks with
#       the same global batch reproduce 1 rank up to float rounding).
# The job has dropout (its masks follow the example positions) and a cosine schedule over the total
# steps with warm-up, so a resume must restore the data position, the optimizer state and its step
# count, and the schedule position exactly.
#
# Usage: ckpt_resume_test.sh TESSERA MPIEXEC SOURCE_DIR
set -u
TESSERA="$1"
MPIRUN="$2"
SRC="$3"
source "$(dirname "$0")/ckpt_test_lib.sh"

STEPS=200
EVERY=40
# 784-64-32-10 with dropout 0.1; Adam, lr 0.001 with a cosine schedule (20 warm-up steps) over the
# 200 steps; batch 1024 (59 steps per epoch, the last one short: the runs cross three epoch ends).
# Larger models or rates make the trajectory chaotic: 1 rank with 1 or 2 threads, or 1 and 2 ranks,
# then drift apart by ~1e-2 within 200 steps from rounding differences alone (measured with
# 256-128 hidden units and lr 0.002), which would hide what (c) checks.
ARGS=(--set train.steps=$STEPS --set train.threads=1 --set train.log_every_steps=10
      --set model.mlp.hidden=64,32 --set model.mlp.dropout=0.1 --set data.batch_size=1024
      --set optimizer.schedule.kind=COSINE --set optimizer.schedule.warmup_steps=20
      --set optimizer.schedule.min_lr=0.0001
      --set checkpoint.every_steps=$EVERY --set checkpoint.keep_last=10 --set parallel.collective_timeout_s=60)

# launch NP RUN [ARGS...]: the job on NP ranks (1: the plain process) in the foreground of the
# caller; output in RUN.out.
launch() {
  local np="$1" run="$2"
  shift 2
  run_tessera "$np" "$run" "$run.out" "${ARGS[@]}" "$@"
}
train() {  # NP RUN [ARGS...]: to completion
  local t0=$SECONDS
  launch "$@" || { cat "$2.out"; fail "$(basename "$2"): tessera train on $1 rank(s) failed"; }
  echo "  $(basename "$2"): $1 rank(s), done in $((SECONDS - t0)) s"
}

compare() { "$PY" "$SRC/tests/jobs/compare_checkpoints.py" "$@"; }

# check_resumed RUN STEP NP: metrics.jsonl has one resume event, at STEP on NP ranks;
# summary.json has resumed_from_step STEP and all the steps.
check_resumed() {
  "$PY" - "$@" "$STEPS" <<'PY' || fail "$(basename "$1"): the resume is not recorded as expected"
import json, sys
run, step, np_, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ev = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
res = [e for e in ev if e["event"] == "resume"]
assert len(res) == 1, f"expected one resume event, found {res}"
assert res[0]["step"] == step and res[0]["world_size"] == np_, res[0]
assert step > 0
s = json.load(open(f"{run}/summary.json"))
assert s["resumed_from_step"] == step, ("resumed_from_step", s["resumed_from_step"], step)
assert s["steps"] == steps and s["world_size"] == np_, (s["steps"], s["world_size"])
print(f"  metrics: resume event at step {step} on {np_} rank(s); summary.json resumed_from_step {s['resumed_from_step']}")
PY
}

# check_same_metrics RUN REF FROM: every train event after step FROM has the reference's lr and
# loss (log windows of 10 steps start at each checkpoint, so the losses are of the same steps).
check_same_metrics() {
  "$PY" - "$@" <<'PY' || fail "$(basename "$1"): the resumed run's metrics differ from the reference's"
import json, sys
run, ref, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
def train(p, after):
    ev = [json.loads(l) for l in open(f"{p}/metrics.jsonl")]
    if after:  # the events of the resumed process
        ev = ev[max(i for i, e in enumerate(ev) if e["event"] == "resume"):]
    return {e["step"]: e for e in ev if e["event"] == "train" and e["step"] > start}
a, b = train(run, True), train(ref, False)
assert sorted(a) == sorted(b) and a, (sorted(a), sorted(b))
for s in sorted(a):
    assert a[s]["lr"] == b[s]["lr"], ("lr", s, a[s]["lr"], b[s]["lr"])
    assert a[s]["loss"] == b[s]["loss"], ("loss", s, a[s]["loss"], b[s]["loss"])
sa, sb = json.load(open(f"{run}/summary.json")), json.load(open(f"{ref}/summary.json"))
for k in ("test_loss", "test_accuracy", "final_train_loss"):
    assert sa[k] == sb[k], (k, sa[k], sb[k])
print(f"  metrics: lr and loss of the {len(a)} log lines after step {start} equal the reference's "
      f"(lr at step {max(a)}: {a[max(a)]['lr']:.6g}); final test loss {sa['test_loss']:.6f} equal too")
PY
}

T0=$SECONDS
echo "== (a) uninterrupted reference runs: $STEPS steps, a checkpoint every $EVERY"
train 1 "$DIR/ref1"
train 2 "$DIR/ref2"
for r in ref1 ref2; do
  [ "$(step_of "$DIR/$r/checkpoints/latest")" = $STEPS ] || fail "$r: latest is not step $STEPS"
  "$TESSERA" ckpt verify "$DIR/$r" > /dev/null || fail "$r: the final checkpoint does not verify"
done
echo -n "  ref2 vs ref1 (same global batch on 2 ranks): "
compare relnorm "$DIR/ref1/checkpoints/latest" "$DIR/ref2/checkpoints/latest" 1e-5 \
  || fail "the 2-rank reference differs from the 1-rank one"

# kill_and_resume NP RESUME_FLAG: see (b).
kill_and_resume() {
  local np="$1" flag="$2" attempt run pid delay step
  local max_delay_ms=300
  for attempt in 1 2 3 4; do
    run="$DIR/kill${np}_$attempt"
    launch "$np" "$run" 2>/dev/null &
    pid=$!
    # Wait (at most 60 s) for the first committed checkpoint.
    local i
    for i in $(seq 3000); do
      [ -L "$run/checkpoints/latest" ] && break
      kill -0 $pid 2>/dev/null || break
      sleep 0.02
    done
    [ -L "$run/checkpoints/latest" ] || { kill -9 $pid 2>/dev/null; cat "$run.out"; fail "kill$np: no checkpoint was committed"; }
    delay=$(awk -v ms=$((RANDOM % max_delay_ms)) 'BEGIN { printf "%.3f", ms / 1000 }')
    sleep "$delay"
    pkill -9 -f -- "$(literal_re "$run")( |$)"
    wait $pid 2>/dev/null
    for i in $(seq 100); do
      pgrep -f -- "$(literal_re "$run")( |$)" > /dev/null || break
      sleep 0.05
    done
    pgrep -f -- "$(literal_re "$run")( |$)" > /dev/null && fail "kill$np: processes of the run survived kill -9"
    step=$(step_of "$run/checkpoints/latest") || fail "kill$np: checkpoints/latest does not resolve after the kill"
    if [ ! -e "$run/summary.json" ] && [ "$step" -lt $STEPS ]; then break; fi
    echo "  attempt $attempt: the run finished before the kill ($delay s after its first checkpoint); again, sooner"
    max_delay_ms=$((max_delay_ms / 2))
    [ $attempt = 4 ] && fail "kill$np: could not kill the run before it finished"
  done
  local partial
  partial=$(cd "$run/checkpoints" && ls -d .step-*.partial 2>/dev/null | tr '\n' ' ')
  echo "  $(basename "$run"): kill -9 of every process of the run (${np} rank(s)$([ "$np" -gt 1 ] && echo " and mpirun")) $delay s" \
       "after its first checkpoint; latest: step $step; partial: ${partial:-none}"
  "$TESSERA" ckpt verify "$run" > /dev/null || fail "kill$np: latest does not verify after the kill"
  if [ -n "$flag" ]; then train "$np" "$run" "$flag"; else train "$np" "$run"; fi
  [ -z "$(cd "$run/checkpoints" && ls -d .step-*.partial 2>/dev/null)" ] || fail "kill$np: the partial checkpoint was not removed"
  check_resumed "$run" "$step" "$np"
  check_same_metrics "$run" "$DIR/ref$np" "$step"
  echo -n "  final checkpoint vs ref$np: "
  compare bitwise "$DIR/ref$np/checkpoints/latest" "$run/checkpoints/latest" \
    || fail "kill$np: the resumed run's final checkpoint differs from the uninterrupted run's"
}

echo "== (b) kill -9 after a checkpoint, resume on the same number of ranks: bitwise"
echo "- 1 rank, resumed by running the same command again"
kill_and_resume 1 ""
echo "- 2 ranks, resumed with --resume"
kill_and_resume 2 --resume

echo "== (c) resume on another number of ranks (--resume-from), against the 1-rank reference"
# resharded NP FROM_RUN STEP NAME: a new run on NP ranks from FROM_RUN's checkpoint at STEP.
resharded() {
  local np="$1" from="$2" step="$3" name="$4"
  local ck
  ck=$(printf '%s/checkpoints/step-%08d' "$DIR/$from" "$step")
  echo "- $name: $np rank(s) from $(basename "$ck") of $from"
  train "$np" "$DIR/$name" --resume-from "$ck"
  check_resumed "$DIR/$name" "$step" "$np"
  echo -n "  final /model vs ref1: "
  compare relnorm "$DIR/ref1/checkpoints/latest" "$DIR/$name/checkpoints/latest" 1e-5 \
    || fail "$name: the final model is not within 1e-5 of the 1-rank reference"
}
resharded 1 ref2 80 from2to1
resharded 2 ref1 120 from1to2
resharded 4 ref2 40 from2to4
echo "ok ($((SECONDS - T0)) s)"
