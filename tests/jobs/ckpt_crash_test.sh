#!/usr/bin/env bash
# kill -9 while checkpoints are being written, again and again, as preemption does: TRIALS runs
# of one job in ONE run directory, alternately on 1 rank and on 2 ranks (mpirun), each killed
# (every rank, and mpirun) at a random moment, each resuming what the previous one left (so the
# resumes also cross world sizes). Half the trials are killed 0.3 to 2.5 s after the launch
# (during start-up, resume or training), half while a save of theirs is being written, at the
# first such moment 0 to 1.2 s after their first save began (so that enough kills land in a save,
# whatever the machine's load makes start-up take). The model is wide
# (784-2048-2048-10: 5.8M parameters, 70 MB per checkpoint with Adam's state) and a checkpoint is
# started after every step (keep_last 2), so a save is in flight most of the time in training.
# After every kill:
#   (i)   every committed checkpoint (checkpoints/step-*) passes `tessera ckpt verify`;
#   (ii)  `checkpoints/latest`, if present, points into a committed step directory (which verifies);
#   (iii) nothing else is visible: only `latest`, step-N directories holding exactly
#         checkpoint.h5, and hidden entries (.step-N.partial, .step-N.deleting, .step-N.replaced,
#         .latest.tmp);
#   (iv)  the next trial resumes from the checkpoint that `latest` named (its "resume" event has
#         that step) without error, and removes the hidden leftovers of the previous kill.
# A kill counts as landing while a save was in flight when, right after it, a hidden entry
# created by that trial exists (.partial: being written; .deleting/.replaced/.latest.tmp: being
# committed) or a committed step is newer than `latest` (killed between the rename and the move
# of `latest`). At least MIN_IN_FLIGHT kills must land so. A last run resumes and finishes.
#
# Usage: ckpt_crash_test.sh TESSERA MPIEXEC SOURCE_DIR
set -u
TESSERA="$1"
MPIRUN="$2"
SRC="$3"
TRIALS=24
MIN_IN_FLIGHT=10
KEEP=2
source "$(dirname "$0")/ckpt_test_lib.sh"
RUN="$DIR/run"
CK="$RUN/checkpoints"
RUN_RE="$(literal_re "$RUN")( |\$)"   # the processes of a trial: their command line names RUN

ARGS=(--set model.mlp.hidden=2048,2048 --set train.steps=1000000 --set train.threads=1 --set train.log_every_steps=1
      --set checkpoint.every_steps=1 --set checkpoint.keep_last=$KEEP --set parallel.collective_timeout_s=60)

launch() {  # NP OUT [ARGS...]
  local np="$1" out="$2"
  shift 2
  run_tessera "$np" "$RUN" "$out" "${ARGS[@]}" "$@"
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
step_num() { echo $((10#${1#step-})); }  # step-00000042 -> 42

# latest_step: the step `latest` names ("" when there is no `latest`); fails (ii) when it does not
# point at checkpoint.h5 in a committed step directory. (Run in $(...): its failure message goes to
# stderr and the caller exits on its status.)
latest_step() {
  fail() { echo "FAIL: $*" >&2; exit 1; }
  [ -e "$CK/latest" ] || [ -L "$CK/latest" ] || { echo ""; return 0; }
  local t
  t=$(readlink "$CK/latest") || fail "(ii) checkpoints/latest is not a symlink"
  [[ "$t" =~ ^(step-[0-9]{8})/checkpoint\.h5$ ]] || fail "(ii) checkpoints/latest -> '$t': not step-N/checkpoint.h5"
  [ -f "$CK/${BASH_REMATCH[1]}/checkpoint.h5" ] \
    || fail "(ii) checkpoints/latest -> $t, which does not exist (a dangling latest)"
  step_num "${BASH_REMATCH[1]}"
}
# expected_resume: the checkpoint a run started now must resume from: latest, else the newest
# committed step directory (tessera's FindLatestCheckpoint); "" when there is none.
expected_resume() {
  local s
  s=$(latest_step) || exit 1
  if [ -z "$s" ]; then
    local d
    for d in $(cd "$CK" 2>/dev/null && ls -d step-* 2>/dev/null | sort); do s=$(step_num "$d"); done
  fi
  echo "$s"
}

# check_dir: (i) to (iii) on the checkpoints directory. Sets COMMITTED (the steps) and LATEST.
check_dir() {
  COMMITTED=""
  LATEST=""
  [ -d "$CK" ] || return 0
  local e n
  for e in $(cd "$CK" && ls -A); do
    case "$e" in
      latest) ;;
      step-*)
        [[ "$e" =~ ^step-[0-9]{8}$ ]] && [ -d "$CK/$e" ] || fail "(iii) $e: not a committed checkpoint directory"
        n=$(cd "$CK/$e" && ls -A | tr '\n' ' ')
        [ "$n" = "checkpoint.h5 " ] || fail "(iii) $e holds '$n' (expected: checkpoint.h5 alone)"
        "$TESSERA" ckpt verify "$CK/$e" > "$DIR/verify.out" 2>&1 \
          || { cat "$DIR/verify.out"; fail "(i) committed checkpoint $e does not verify"; }
        COMMITTED="$COMMITTED $(step_num "$e")"
        ;;
      .step-*.partial | .step-*.deleting | .step-*.replaced | .latest.tmp) ;;
      *) fail "(iii) unexpected entry in checkpoints/: $e" ;;
    esac
  done
  LATEST=$(latest_step) || exit 1
  if [ -n "$LATEST" ]; then
    [[ " $COMMITTED " == *" $LATEST "* ]] || fail "(ii) latest (step $LATEST) is not among the committed steps:$COMMITTED"
  fi
}

# trial_events FROM_LINE: this trial's metrics (the lines after FROM_LINE) as "key=value" lines:
# resume=STEP (or none), trained=LAST_STEP, unreported=STEP of a checkpoint_started without its
# checkpoint event (or none), garbled=N (lines that are not JSON).
trial_events() {
  "$PY" - "$RUN/metrics.jsonl" "$1" <<'PY'
import json, sys
try:
    lines = open(sys.argv[1]).read().split("\n")[int(sys.argv[2]):]
except FileNotFoundError:
    lines = []
ev, garbled = [], 0
for l in lines:
    if not l.strip():
        continue
    try:
        ev.append(json.loads(l))
    except ValueError:
        garbled += 1
res = [e["step"] for e in ev if e.get("event") == "resume"]
trained = [e["step"] for e in ev if e.get("event") == "train"]
started = [e["step"] for e in ev if e.get("event") == "checkpoint_started"]
done = {e["step"] for e in ev if e.get("event") == "checkpoint"}
open_saves = [s for s in started if s not in done]
print(f"resume={res[0] if res else 'none'}")
print(f"resumes={len(res)}")
print(f"trained={max(trained) if trained else 'none'}")
print(f"unreported={open_saves[-1] if open_saves else 'none'}")
print(f"garbled={garbled}")
PY
}
ev() { sed -n "s/^$1=//p" <<< "$EVENTS"; }

T0=$SECONDS
IN_FLIGHT=0; IN_FLIGHT_METRICS=0; RESUMED=0; BEFORE_TRAINING=0
EXPECT=""
echo "$TRIALS trials of kill -9 in one run directory; model 784-2048-2048-10, a checkpoint after every step, keep_last $KEEP"
for trial in $(seq $TRIALS); do
  np=$(( trial % 2 == 1 ? 1 : 2 ))
  OLD_HIDDEN=$(cd "$CK" 2>/dev/null && ls -A | grep '^\.' | tr '\n' ' ')
  if [ -z "$EXPECT" ]; then rm -f "$RUN/metrics.jsonl"; fi  # a fresh start truncates it anyway
  lines_before=0
  [ -f "$RUN/metrics.jsonl" ] && lines_before=$(wc -l < "$RUN/metrics.jsonl")
  touch "$DIR/marker"
  sleep 0.01  # entries created by this trial are strictly newer than the marker
  out="$DIR/trial-$trial.out"
  t_start=$(now_ms)
  # (the subshell reports the kill of its child to /dev/null, not to the test's output)
  launch "$np" "$out" 2>/dev/null &
  pid=$!
  alive() {
    kill -0 $pid 2>/dev/null && return 0
    wait $pid
    local rc=$?
    cat "$out"
    fail "trial $trial: the run ($np rank(s)) exited by itself with status $rc after $(( $(now_ms) - t_start )) ms" \
         "(resuming from step ${EXPECT:-none})"
  }
  # Trials 1, 2, 5, 6, ... (1 rank and 2 ranks alike) are killed at a random moment 0.3 to 2.5 s
  # after the launch: during the start, the resume or training. Trials 3, 4, 7, 8, ... at the first
  # moment, 0 to 1.2 s after their first save began, when a save of theirs is being written (a
  # .step-N.partial newer than the marker): these land in a save however long the start-up took on
  # a loaded machine (a save follows every step).
  partial_now() { [ -n "$(find "$CK" -mindepth 1 -maxdepth 1 -name '.step-*.partial' -newer "$DIR/marker" 2>/dev/null)" ]; }
  if [ $(( (trial - 1) % 4 )) -lt 2 ]; then
    when="launch"
    deadline=$(( t_start + 300 + RANDOM % 2201 ))
  else
    when="a save"
    for i in $(seq 3000); do
      partial_now && break
      alive
      sleep 0.01
    done
    deadline=$(( $(now_ms) + RANDOM % 1201 ))
  fi
  while [ "$(now_ms)" -lt $deadline ]; do
    alive
    sleep 0.02
  done
  if [ "$when" = "a save" ]; then
    for i in $(seq 1000); do
      partial_now && break
      alive
      sleep 0.002
    done
  fi
  pkill -9 -f -- "$RUN_RE"
  t_kill=$(( $(now_ms) - t_start ))
  wait $pid 2>/dev/null
  for i in $(seq 100); do
    pgrep -f -- "$RUN_RE" > /dev/null || break
    sleep 0.05
  done
  pgrep -f -- "$RUN_RE" > /dev/null && fail "trial $trial: processes of the run survived kill -9"

  # What the kill interrupted, from the disk (before anything reads or changes it).
  NEW_HIDDEN=$(cd "$CK" 2>/dev/null && find . -mindepth 1 -maxdepth 1 -name '.*' -newer "$DIR/marker" -printf '%f ' | sort)
  STALE_HIDDEN=$(cd "$CK" 2>/dev/null && find . -mindepth 1 -maxdepth 1 -name '.*' ! -newer "$DIR/marker" -printf '%f ')
  check_dir
  newest=""
  for s in $COMMITTED; do newest=$s; done
  flight=""
  [ -n "$NEW_HIDDEN" ] && flight="$NEW_HIDDEN"
  if [ -n "$LATEST" ] && [ -n "$newest" ] && [ "$newest" -gt "$LATEST" ]; then
    flight="${flight}step $newest committed but latest still at $LATEST"
  fi

  # (iv) for this trial: did it resume from what the previous kill left, and clean up after it?
  EVENTS=$(trial_events "$lines_before")
  [ "$(ev garbled)" = 0 ] || fail "trial $trial: metrics.jsonl has $(ev garbled) line(s) that are not JSON"
  resumed=$(ev resume)
  note=""
  if [ "$(ev resumes)" -gt 1 ]; then fail "trial $trial: more than one resume event"; fi
  if [ "$resumed" != none ]; then
    [ -n "$EXPECT" ] || fail "trial $trial: resumed from step $resumed, but no checkpoint was committed"
    [ "$resumed" = "$EXPECT" ] || fail "trial $trial: resumed from step $resumed, but latest was step $EXPECT"
    RESUMED=$((RESUMED + 1))
    note="resumed from step $resumed"
    [ -z "$STALE_HIDDEN" ] || fail "trial $trial: resumed but left the previous kill's hidden entries: $STALE_HIDDEN"
  elif [ -n "$EXPECT" ]; then
    note="killed before resuming (from step $EXPECT)"
  else
    note="fresh start"
  fi
  if [ "$(ev trained)" = none ]; then
    BEFORE_TRAINING=$((BEFORE_TRAINING + 1))
    note="$note, killed before its first step"
  else
    note="$note, trained to step $(ev trained)"
  fi
  if [ -n "$flight" ]; then
    IN_FLIGHT=$((IN_FLIGHT + 1))
    note="$note; SAVE IN FLIGHT: $flight"
  fi
  [ "$(ev unreported)" != none ] && IN_FLIGHT_METRICS=$((IN_FLIGHT_METRICS + 1))
  printf 'trial %2d: %d rank(s), killed %4d ms after the launch (drawn from the %s): %s; committed:%s, latest %s; all verify\n' \
    "$trial" "$np" "$t_kill" "$when" "$note" "${COMMITTED:- none}" "${LATEST:-none}"
  EXPECT=$(expected_resume) || exit 1
done

echo "== a last run resumes from step ${EXPECT:-none} and finishes 2 steps later"
[ -n "$EXPECT" ] || fail "no checkpoint was ever committed"
lines_before=$(wc -l < "$RUN/metrics.jsonl")
(launch 2 "$DIR/final.out" --set train.steps=$((EXPECT + 2))) || { cat "$DIR/final.out"; fail "the last run failed"; }
EVENTS=$(trial_events "$lines_before")
[ "$(ev resume)" = "$EXPECT" ] || fail "the last run resumed from step $(ev resume), but latest was step $EXPECT"
leftover=$(cd "$CK" && ls -A | grep '^\.')
[ -z "$leftover" ] || fail "hidden entries left after a complete run: $leftover"
check_dir
[ "$COMMITTED" = " $((EXPECT + 1)) $((EXPECT + 2))" ] || fail "committed steps after the last run:$COMMITTED"
[ "$LATEST" = $((EXPECT + 2)) ] || fail "latest is step $LATEST after the last run"
"$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])); assert s["resumed_from_step"] == int(sys.argv[2]), s' \
  "$RUN/summary.json" "$EXPECT" || fail "summary.json: resumed_from_step"
echo "  resumed from step $EXPECT, committed:$COMMITTED, latest $LATEST; no hidden leftovers"

echo "kills: $TRIALS; with a save in flight (seen on disk): $IN_FLIGHT;" \
     "with a checkpoint_started not yet reported in the metrics: $IN_FLIGHT_METRICS;" \
     "resumed: $RESUMED; killed before the first step: $BEFORE_TRAINING ($((SECONDS - T0)) s)"
[ $IN_FLIGHT -ge $MIN_IN_FLIGHT ] || fail "only $IN_FLIGHT of $TRIALS kills landed while a save was in flight (need $MIN_IN_FLIGHT)"
echo "ok"
