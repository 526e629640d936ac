#!/usr/bin/env bash
# The whole Slurm path on a real single-node cluster (munged, slurmctld, slurmd started here):
#   (a) `tessera submit` a 2-task training job that publishes to a store; an uninterrupted twin
#       is the reference;
#   (b) `scancel --signal=USR1` mid-run: every rank stops at one step with a committed checkpoint,
#       the batch script requeues the job, the restarted job (SLURM_RESTART_COUNT=1) resumes from
#       its run directory, finishes and publishes; its final checkpoint equals the reference's bit
#       for bit; the version's manifest names the Slurm job id and restart count; `tessera serve`
#       answers an infer request for that version;
#   (b2) the same under `--launcher mpirun`, preempted through the batch shell (scancel -b), which
#       passes the signal to mpirun and so to every rank;
#   (c) a time-limit signal (--time 1 --signal USR1@55) reaching the ranks while a checkpoint save
#       is in flight (a checkpoint every step), and a second signal during the preemption save:
#       every committed checkpoint verifies, and latest is the preemption's.
#   (d) plain scancel: SIGTERM reaches the ranks, which checkpoint; the job stays cancelled.
# Usage: slurm_preempt_test.sh TESSERA SOURCE_DIR
set -u
TESSERA="$1"
SRC="$2"
PY=/usr/bin/python3
DIR=$(mktemp -d)
source "$SRC/tests/slurm/cluster.sh"
cleanup() {
  slurm_stop
  pkill -9 -f -- "$DIR/" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 2' INT TERM
fail() { echo "FAIL: $*"; for f in "$DIR"/*/slurm-*.out; do [ -f "$f" ] && { echo "--- $f"; tail -30 "$f"; }; done; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$DIR/ompi"
export OMPI_MCA_orte_tmpdir_base="$DIR/ompi" OMPI_MCA_btl_vader_backing_directory="$DIR/ompi"
slurm_start "$DIR/cluster" || fail "the cluster did not start"
compare() { "$PY" "$SRC/tests/jobs/compare_checkpoints.py" "$@"; }
JOB="$SRC/jobs/examples/fmnist_mlp.pbtxt"
ARGS=(--ntasks-per-node 2 --cpus-per-task 1 --set train.epochs=2 --set train.threads=1 --set train.log_every_steps=20
      --set model.mlp.dropout=0.1 --set parallel.collective_timeout_s=60)
submit() {  # RUN [ARGS...]: prints the job id
  local run="$1" out
  shift
  out=$("$TESSERA" submit "$JOB" --run-dir "$run" "${ARGS[@]}" "$@") || fail "tessera submit failed: $out"
  sed -n 's/^submitted: job \([0-9]*\).*/\1/p' <<< "$out"
}
wait_for_training() {  # RUN SECONDS
  local i
  for i in $(seq $(($2 * 10))); do
    grep -q '"event":"train"' "$1/metrics.jsonl" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
last_event_field() {  # RUN EVENT FIELD
  "$PY" -c 'import json, sys
ev = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
print([e for e in ev if e["event"] == sys.argv[2]][-1][sys.argv[3]])' "$@"
}

echo "== (a) the uninterrupted reference job"
t0=$SECONDS
ref=$(submit "$DIR/ref")
[ -n "$ref" ] || fail "no job id from tessera submit"
r=$(slurm_wait "$ref" 180)
[ "$r" = "COMPLETED 0:0" ] || fail "reference job $ref: $r"
echo "  job $ref: $r in $((SECONDS - t0)) s"

echo "== (b) preempted, requeued, resumed, published, served"
t0=$SECONDS
STORE="$DIR/store"
job=$(submit "$DIR/run" --set publish.store="$STORE" --set publish.model=w1)
wait_for_training "$DIR/run" 60 || fail "job $job did not start training"
scancel --signal=USR1 "$job" || fail "scancel --signal=USR1 $job failed"
slurm_release_requeued "$job" 120 || fail "job $job was not requeued"
r=$(slurm_wait "$job" 180)
[ "$r" = "COMPLETED 0:0" ] || fail "job $job after the requeue: $r"
log="$DIR/run/slurm-$job.out"
grep -q "tessera job $job: preempted, checkpoint committed; requeueing (restart 1)" "$log" || fail "the log does not show the requeue"
grep -q "tessera job $job: start .* restart 1," "$log" || fail "the log does not show the restart"
step=$(last_event_field "$DIR/run" preempted step)
[ "$(last_event_field "$DIR/run" resume step)" = "$step" ] || fail "the restart did not resume from the preemption's step $step"
echo "  job $job: preempted after step $step, requeued, resumed there, $r; $((SECONDS - t0)) s"
echo -n "  final checkpoint vs the uninterrupted job's: "
compare bitwise "$DIR/ref/checkpoints/latest" "$DIR/run/checkpoints/latest" || fail "the preempted job's weights differ"
manifest="$STORE/w1/1/manifest.pbtxt"
[ -f "$manifest" ] || fail "no version 1 in the store"
grep -q "job_id: \"$job\"" "$manifest" || { cat "$manifest"; fail "the manifest does not name Slurm job $job"; }
grep -q "restart_count: 1" "$manifest" || { cat "$manifest"; fail "the manifest does not record restart 1"; }
echo "  store: w1 version 1, manifest names Slurm job $job, restart_count 1"
"$TESSERA" serve --store "$STORE" --model w1 --http-port 0 --grpc-port -1 --port-file "$DIR/serve.json" \
  > "$DIR/serve.log" 2>&1 &
spid=$!
for i in $(seq 200); do [ -s "$DIR/serve.json" ] && break; sleep 0.1; done
[ -s "$DIR/serve.json" ] || { cat "$DIR/serve.log"; fail "tessera serve did not start"; }
port=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["http"])' "$DIR/serve.json")
body=$("$PY" -c 'import json; print(json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}],
  "outputs": [{"name": "classes"}]}))')
resp=$(curl -s -f -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$port/v2/models/w1/versions/1/infer") \
  || { cat "$DIR/serve.log"; fail "the infer request for w1 version 1 failed"; }
kill $spid; wait $spid
grep -q '"model_version":"1"' <<< "$resp" && grep -q '"name":"classes"' <<< "$resp" || fail "unexpected answer: $resp"
echo "  tessera serve answered version 1: $resp"

echo "== (b2) the same with mpirun inside the job: the batch shell gets the signal and passes it on"
t0=$SECONDS
job=$(submit "$DIR/mpirun" --launcher mpirun)
wait_for_training "$DIR/mpirun" 60 || fail "job $job did not start training"
scancel -b --signal=USR1 "$job" || fail "scancel -b --signal=USR1 $job failed"
slurm_release_requeued "$job" 120 || fail "job $job was not requeued"
r=$(slurm_wait "$job" 180)
[ "$r" = "COMPLETED 0:0" ] || fail "job $job after the requeue: $r"
grep -q "SIGUSR1 at .*; the ranks stop at the next step" "$DIR/mpirun/slurm-$job.out" || fail "the batch shell did not pass SIGUSR1 on"
step=$(last_event_field "$DIR/mpirun" preempted step)
echo -n "  job $job: preempted after step $step, requeued, resumed, $r, $((SECONDS - t0)) s; vs the uninterrupted job: "
compare bitwise "$DIR/ref/checkpoints/latest" "$DIR/mpirun/checkpoints/latest" || fail "the mpirun job's weights differ"

echo "== (c) the time-limit signal during a checkpoint save"
# 784-1024-1024-10 (1.9M parameters, a 23 MB checkpoint) saved after every step: a save is in
# flight whenever a step ends.
t0=$SECONDS
run="$DIR/limit"
job=$("$TESSERA" submit "$JOB" --run-dir "$run" --ntasks-per-node 2 --cpus-per-task 1 --time 1 --signal USR1@55 \
  --set train.epochs=20 --set train.threads=1 --set model.mlp.hidden=1024,1024 --set checkpoint.every_steps=1 \
  --set checkpoint.keep_last=3 | sed -n 's/^submitted: job \([0-9]*\).*/\1/p')
[ -n "$job" ] || fail "tessera submit --time 1 failed"
for i in $(seq 900); do
  grep -q '"event":"preempted"' "$run/metrics.jsonl" 2>/dev/null && break
  [ "$i" -gt 100 ] && [ "$(slurm_state "$job")" != RUNNING ] && break
  sleep 0.1
done
scancel --signal=USR1 "$job" 2>/dev/null  # the second signal, during or just after the preemption save
for i in $(seq 300); do grep -q "requeueing" "$run/slurm-$job.out" 2>/dev/null && break; sleep 0.1; done
grep -q '"event":"preempted"' "$run/metrics.jsonl" || fail "job $job was not preempted by its time-limit signal"
scancel "$job"
step=$(last_event_field "$run" preempted step)
[ "$(last_event_field "$run" preempted save_in_flight)" = True ] || fail "no save was in flight when the signal was agreed"
"$TESSERA" ckpt verify "$run" > /dev/null || fail "latest does not verify after the time-limit signal"
"$PY" - "$run" "$step" <<'PY' || fail "latest is not the preemption's checkpoint"
import h5py, os, sys
run, step = sys.argv[1], int(sys.argv[2])
p = os.path.join(run, "checkpoints/latest")
p = os.path.join(p, "checkpoint.h5") if os.path.isdir(p) else p
got = int(h5py.File(p, "r").attrs["step"])
assert got == step, f"latest is step {got}, the preemption's is {step}"
PY
n=0
for d in "$run"/checkpoints/step-*; do
  "$TESSERA" ckpt verify "$d" > /dev/null || fail "$(basename "$d") does not verify"
  n=$((n + 1))
done
echo "  job $job: the signal came $(last_event_field "$run" preempted signal) after step $step with its save in flight;" \
     "latest is step $step; $n committed checkpoints verify; $((SECONDS - t0)) s"
echo "== (d) scancel: the ranks checkpoint, and the job is not requeued"
# Long enough that the scancel lands mid-training even on a loaded machine (2 epochs take 3 s).
job=$(submit "$DIR/cancel" --set train.epochs=30)
wait_for_training "$DIR/cancel" 60 || fail "job $job did not start training"
scancel "$job"
r=$(slurm_wait "$job" 60)
[ "${r%% *}" = CANCELLED ] || fail "job $job after scancel: $r"
sleep 1
[ "$(slurm_state "$job")" = CANCELLED ] || fail "job $job came back after scancel: $(slurm_state "$job")"
grep -q "the job is [A-Z]*, so it is not requeued here" "$DIR/cancel/slurm-$job.out" || fail "the log does not say why it was not requeued"
"$TESSERA" ckpt verify "$DIR/cancel" > /dev/null || fail "the checkpoint written on scancel does not verify"
echo "  job $job: $r; checkpoint of step $(last_event_field "$DIR/cancel" preempted step) committed; not requeued"
echo "PASS"
