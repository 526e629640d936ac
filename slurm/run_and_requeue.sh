# ---- run, and requeue after a preemption (shared by the templates) ----
# The ranks checkpoint and exit 75 on @PREEMPT_SIGNAL@ or TERM. srun's ranks get both from Slurm
# directly. mpirun's ranks are children of this shell: the timed signal comes here (B:) and is
# passed on, and mpirun hands it to every rank (srun forwards it too; a rank that has it already
# ignores the second). TERM is not passed on: srun and mpirun answer it by killing the ranks, which
# get Slurm's TERM themselves. A trapped signal interrupts `wait`, so wait again until the launch
# has really ended, then read its status.
echo "tessera job $SLURM_JOB_ID: start $(date -u +%FT%TZ) on $SLURM_JOB_NODELIST, restart ${SLURM_RESTART_COUNT:-0}, run directory $RUN_DIR"
"${LAUNCH[@]}" "$TESSERA" train "$JOB_SPEC" --run-dir "$RUN_DIR" "${TRAIN_ARGS[@]}" "${TASK_SET[@]}" &
pid=$!
pass_on() {
  echo "tessera job $SLURM_JOB_ID: SIG$1 at $(date -u +%FT%TZ); the ranks stop at the next step with a checkpoint"
  kill -"$1" "$pid" 2> /dev/null
}
trap 'pass_on @PREEMPT_SIGNAL@' @PREEMPT_SIGNAL@
trap 'echo "tessera job $SLURM_JOB_ID: SIGTERM at $(date -u +%FT%TZ)"' TERM
while :; do
  wait "$pid"
  status=$?
  if [ "$status" -gt 128 ] && kill -0 "$pid" 2> /dev/null; then continue; fi
  break
done
# Requeue only a job that Slurm still runs: one stopped by the timed signal (or scancel --signal).
# A job that scancel cancelled, that reached its time limit, or that Slurm preempted (and requeues
# itself) is left as it is; its checkpoint is committed either way.
if [ "$status" = @EXIT_PREEMPTED@ ]; then
  state=$(scontrol show job -o "$SLURM_JOB_ID" 2> /dev/null | grep -o 'JobState=[A-Z_]*' | head -1 | cut -d= -f2)
  if [ "$state" = RUNNING ]; then
    echo "tessera job $SLURM_JOB_ID: preempted, checkpoint committed; requeueing (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "tessera job $SLURM_JOB_ID: scontrol requeue failed; resubmit $RUN_DIR/job.sbatch to resume" >&2
  else
    echo "tessera job $SLURM_JOB_ID: stopped with a committed checkpoint; the job is ${state:-gone}, so it is not requeued here"
  fi
fi
echo "tessera job $SLURM_JOB_ID: end $(date -u +%FT%TZ), exit status $status"
exit "$status"
