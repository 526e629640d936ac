# ---- run, and requeue after a preemption (shared by the templates) ----
# The ranks get the signals themselves (--signal without B:, and Slurm's SIGTERM reaches every
# step). This shell only waits: a trapped signal interrupts `wait`, so wait again until the launch
# has really ended, then read its status.
trap 'echo "tessera job $SLURM_JOB_ID: the batch shell got SIGTERM; the ranks are checkpointing"' TERM
trap 'echo "tessera job $SLURM_JOB_ID: the batch shell got SIGUSR1; the ranks are checkpointing"' USR1
echo "tessera job $SLURM_JOB_ID: start $(date -u +%FT%TZ) on $SLURM_JOB_NODELIST, restart ${SLURM_RESTART_COUNT:-0}, run directory $RUN_DIR"
"${LAUNCH[@]}" "$TESSERA" train "$JOB_SPEC" --run-dir "$RUN_DIR" "${TRAIN_ARGS[@]}" "${TASK_SET[@]}" &
pid=$!
while :; do
  wait "$pid"
  status=$?
  if [ "$status" -gt 128 ] && kill -0 "$pid" 2> /dev/null; then continue; fi
  break
done
if [ "$status" = @EXIT_PREEMPTED@ ]; then
  echo "tessera job $SLURM_JOB_ID: preempted, checkpoint committed; requeueing (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
  scontrol requeue "$SLURM_JOB_ID" && exit 0
  echo "tessera job $SLURM_JOB_ID: scontrol requeue failed; resubmit this script to resume from $RUN_DIR" >&2
fi
echo "tessera job $SLURM_JOB_ID: end $(date -u +%FT%TZ), exit status $status"
exit "$status"
