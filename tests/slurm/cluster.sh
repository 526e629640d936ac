# A real single-node Slurm cluster for a test, under one scratch directory (sourced).
#
#   source tests/slurm/cluster.sh
#   slurm_start DIR      munged, slurmctld and slurmd with their own key, ports, state and logs in
#                        DIR; exports SLURM_CONF; returns once the node is idle (or fails)
#   slurm_wait JOB SECS  polls until JOB ends; prints JobState and ExitCode ("COMPLETED 0:0")
#   slurm_state JOB      the job's JobState now
#   slurm_release_requeued JOB SECS   start a job requeued by its own script now, not in 130 s
#   slurm_stop           cancels every job, scontrol shutdown, then the daemons by PID: call it from
#                        the test's EXIT trap (slurm_start sets none, so as not to replace it)
#
# As root with no cgroups and no systemd: the settings are those ../shared/SLURM.md verified.
# Ports are chosen free, so two clusters (two tests) can run side by side.

_free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

slurm_start() {
  SLURM_DIR="$1"
  local d="$SLURM_DIR"
  mkdir -p "$d/munge" "$d/state" "$d/spool" "$d/log"
  chmod 0755 "$d/munge"
  for b in munged mungekey slurmctld slurmd scontrol sinfo; do
    command -v "$b" > /dev/null || PATH="$PATH:/usr/sbin"
    command -v "$b" > /dev/null || { echo "FAIL: $b is missing (scripts/setup.sh installs slurmctld slurmd slurm-client munge)"; return 1; }
  done
  mungekey -c -k "$d/munge/key" 2>/dev/null || mungekey --create --keyfile="$d/munge/key"
  chmod 0600 "$d/munge/key"
  munged --key-file="$d/munge/key" --socket="$d/munge/socket" --pid-file="$d/munge/pid" \
         --log-file="$d/munge/log" --seed-file="$d/munge/seed" --force \
    || { cat "$d/munge/log"; echo "FAIL: munged did not start"; return 1; }

  local hw ctld_port slurmd_port
  hw=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ UpTime.*//')
  # Job ids start at a random number and the step's temporary files live in DIR, so that two
  # clusters side by side never share a PMIx directory such as /tmp/spmix_appdir_0_1.0.
  local first_job=$(( (RANDOM % 9000 + 1) * 100 ))
  mkdir -p "$d/tmp"
  ctld_port=$(_free_port)
  slurmd_port=$(_free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(_free_port); done
  cat > "$d/slurm.conf" <<CONF
ClusterName=tessera-test
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$d/munge/socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$d/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
KillWait=10
FirstJobId=$first_job
TmpFS=$d/tmp
NodeName=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  export SLURM_CONF="$d/slurm.conf"
  slurmctld -f "$SLURM_CONF" || { cat "$d/log/slurmctld.log"; echo "FAIL: slurmctld did not start"; return 1; }
  slurmd -f "$SLURM_CONF" -N localhost || { cat "$d/log/slurmd.log"; echo "FAIL: slurmd did not start"; return 1; }
  local i state
  for i in $(seq 150); do
    state=$(sinfo -h -n localhost -o %t 2>/dev/null)
    [ "$state" = idle ] && return 0
    sleep 0.1
  done
  tail -20 "$d/log/slurmctld.log" "$d/log/slurmd.log"
  echo "FAIL: the Slurm node is not idle 15 s after start (state: '$state')"
  return 1
}

slurm_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -1 | cut -d= -f2; }

slurm_wait() {  # JOB SECONDS
  local job="$1" limit="$2" t0=$SECONDS line state code
  while [ $((SECONDS - t0)) -lt "$limit" ]; do
    line=$(scontrol show job -o "$job" 2>/dev/null)
    state=$(grep -o 'JobState=[A-Z_]*' <<< "$line" | head -1 | cut -d= -f2)
    code=$(grep -o ' ExitCode=[0-9:]*' <<< "$line" | head -1 | cut -d= -f2)
    case "$state" in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)
        echo "$state $code"; return 0 ;;
    esac
    sleep 0.2
  done
  echo "TIMEOUT-WAITING $state"
  return 1
}

# A job requeued from inside (scontrol requeue) waits about 130 s for its BeginTime. Once the old
# run is gone from the node (its slurmstepd processes ended and the node idle: a restart while the
# old batch step is still being cleaned up is refused, "already killed, do not launch batch job"),
# start it now. That refusal is a race of this shortcut, not of the job: if the restart still dies
# at once (FAILED with no run time), requeue it once more and start it again. Returns once the
# job runs again.
slurm_release_requeued() {  # JOB SECONDS
  local job="$1" limit="$2" t0=$SECONDS line retried=0
  while [ $((SECONDS - t0)) -lt "$limit" ]; do
    line=$(scontrol show job -o "$job" 2>/dev/null)
    case "$line" in
      *JobState=PENDING*Reason=BeginTime*)
        if [ "$(sinfo -h -n localhost -o %t)" = idle ] && ! pgrep -f "slurmstepd: \[$job\." > /dev/null; then
          sleep 1
          scontrol update JobId="$job" StartTime=now
        fi ;;
      *JobState=RUNNING*Restarts=[1-9]*|*Restarts=[1-9]*JobState=RUNNING*) return 0 ;;
      *JobState=FAILED*RunTime=00:00:00*)
        if [ $retried = 0 ]; then
          echo "  (job $job's restart was refused by slurmd while the old run was cleaned up; requeueing it again)"
          retried=1
          scontrol requeue "$job"
        else
          echo "job $job ended instead: $line"; return 1
        fi ;;
      *JobState=COMPLETED*|*JobState=FAILED*|*JobState=CANCELLED*) echo "job $job ended instead: $line"; return 1 ;;
    esac
    sleep 0.2
  done
  echo "job $job was not requeued and restarted within $limit s: $line"
  return 1
}

slurm_stop() {
  [ -n "${SLURM_DIR:-}" ] || return 0
  local d="$SLURM_DIR" p i
  # A job left running (a test that failed) would go on training after the daemons stop.
  scancel --full --signal=KILL --state=RUNNING -u "$(id -un)" > /dev/null 2>&1
  scancel -u "$(id -un)" > /dev/null 2>&1
  for i in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  scontrol shutdown > /dev/null 2>&1
  for p in "$d/slurmctld.pid" "$d/slurmd.pid"; do
    [ -f "$p" ] || continue
    local pid i
    pid=$(cat "$p")
    for i in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2> /dev/null
  done
  [ -f "$d/munge/pid" ] && kill "$(cat "$d/munge/pid")" 2> /dev/null
  SLURM_DIR=""
}
