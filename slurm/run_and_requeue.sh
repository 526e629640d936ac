# ---- run, and requeue after a preemption (shared by the templates) ----
# The ranks checkpoint and exit 75 on @PREEMPT_SIGNAL@ or TERM. srun's ranks get both from Slurm
# directly. mpirun's ranks are children of this shell: the timed signal comes here (B:) and is
# passed on, and mpirun hands it to every rank (srun forwards it too; a rank that has it already
# ignores the second). TERM is not passed on: srun and mpirun answer it by killing the ranks, which
# get Slurm's TERM themselves. A trapped signal interrupts `wait`, so wait again until the launch
# has really ended, then read its status.
# This job as scontrol names it: an array task is JOB_TASK (the bare SLURM_JOB_ID of an array's
# first task names the whole array).
job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
job=${job:-$SLURM_JOB_ID}
pid=""
pass_on() {
  echo "tessera job $job: SIG$1 at $(date -u +%FT%TZ); the ranks stop at the next step with a checkpoint"
  [ -n "$pid" ] && kill -"$1" "$pid" 2> /dev/null
}
trap 'pass_on @PREEMPT_SIGNAL@' @PREEMPT_SIGNAL@
trap 'echo "tessera job $job: SIGTERM at $(date -u +%FT%TZ)"' TERM
echo "tessera job $job: start $(date -u +%FT%TZ) on $SLURM_JOB_NODELIST, restart ${SLURM_RESTART_COUNT:-0}, run directory $RUN_DIR"
"${LAUNCH[@]}" "$TESSERA" train "$JOB_SPEC" --run-dir "$RUN_DIR" "${TRAIN_ARGS[@]}" "${TASK_SET[@]}" &
pid=$!
while :; do
  wait "$pid"
  status=$?
  if [ "$status" -gt 128 ] && kill -0 "$pid" 2> /dev/null; then continue; fi
  break
done
# The launch may have ended while a trap ran: bash then still holds its real status.
if [ "$status" -gt 128 ]; then
  wait "$pid" 2> /dev/null
  again=$?
  [ "$again" != 127 ] && status=$again
fi
# Requeue only a job that Slurm still runs: one stopped by the timed signal (or scancel --signal).
# A job that scancel cancelled, that reached its time limit, or that Slurm preempted (and requeues
# itself) is left as it is; its checkpoint is committed either way.
if [ "$status" = @EXIT_PREEMPTED@ ]; then
  if ! command -v scontrol > /dev/null; then
    echo "tessera job $job: preempted with a committed checkpoint, but scontrol is not on PATH: resubmit to resume" >&2
    exit "$status"
  fi
  state=$(scontrol show job -o "$job" 2> /dev/null | grep -o 'JobState=[A-Z_]*' | head -1 | cut -d= -f2)
  if [ "$state" = RUNNING ]; then
    echo "tessera job $job: preempted, checkpoint committed; requeueing (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
    scontrol requeue "$job" && exit 0
    echo "tessera job $job: scontrol requeue failed; resubmit the script to resume from $RUN_DIR" >&2
  else
    echo "tessera job $job: stopped with a committed checkpoint; the job is ${state:-unknown to scontrol}, so it is not requeued here"
  fi
fi
echo "tessera job $job: end $(date -u +%FT%TZ), exit status $status"
exit "$status"
