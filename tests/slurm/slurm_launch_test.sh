#!/usr/bin/env bash
# Launching tessera under a real Slurm cluster (munged, slurmctld, slurmd started here), compared
# with the plain process:
#   (a) `srun --mpi=pmix -n 2` (Slurm starts the ranks through PMIx) and (b) `mpirun` inside an
#       sbatch job (`tessera submit --launcher mpirun`; every rank inherits SLURM_PROCID=0) both
#       train on 2 ranks, each rank knows its place, and they reproduce the 1-process run: equal to
#       each other bit for bit, and within a relative norm of 1e-5 of it;
#   (c) `tessera train` in the batch shell itself (SLURM_PROCID=0, SLURM_NTASKS=2, no step) is one
#       process, not rank 0 of 2 waiting for a rank 1;
#   (d) a job array of 3 override lines (`tessera submit --array`): 3 run directories, each with
#       its overrides applied, and 3 published versions whose lineage names the array task;
#   (e) a job sbatch refuses (64 tasks on a 2-CPU node): tessera submit says what sbatch said.
# Usage: slurm_launch_test.sh TESSERA SOURCE_DIR
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
fail() { echo "FAIL: $*"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$DIR/ompi"
export OMPI_MCA_orte_tmpdir_base="$DIR/ompi" OMPI_MCA_btl_vader_backing_directory="$DIR/ompi"
slurm_start "$DIR/cluster" || fail "the cluster did not start"
compare() { "$PY" "$SRC/tests/jobs/compare_checkpoints.py" "$@"; }
JOB="$SRC/jobs/examples/fmnist_mlp.pbtxt"
# The small, non-chaotic job of ckpt_resume_test.sh: 1 and 2 ranks agree to float rounding.
SET=(--set train.steps=120 --set train.threads=1 --set train.log_every_steps=20 --set model.mlp.hidden=64,32
     --set data.batch_size=1024 --set parallel.collective_timeout_s=60)
ranks_of() {  # RUN: "world_size launcher" from the first line of its output
  sed -n 's/^tessera [^:]*: job .*, \([0-9]*\) ranks\? (\([a-z]*\)), run directory.*/\1 \2/p' "$1" | head -1
}

echo "== the 1-process reference"
"$TESSERA" train "$JOB" --run-dir "$DIR/ref1" "${SET[@]}" > "$DIR/ref1.out" 2>&1 || { cat "$DIR/ref1.out"; fail "ref1"; }

echo "== (a) srun --mpi=pmix -n 2"
timeout 180 srun --mpi=pmix -n 2 "$TESSERA" train "$JOB" --run-dir "$DIR/srun" "${SET[@]}" > "$DIR/srun.out" 2>&1 \
  || { cat "$DIR/srun.out"; fail "srun -n 2 failed"; }
[ "$(ranks_of "$DIR/srun.out")" = "2 srun" ] || { head -3 "$DIR/srun.out"; fail "srun: not 2 ranks launched by srun"; }
for r in 0 1; do [ -s "$DIR/srun/rank-$r.log" ] || fail "srun: no rank-$r.log"; done
echo -n "  2 ranks (srun); vs 1 process: "
compare relnorm "$DIR/ref1/checkpoints/latest" "$DIR/srun/checkpoints/latest" 1e-5 || fail "srun differs from 1 process"

echo "== (b) mpirun inside sbatch (tessera submit --launcher mpirun)"
out=$("$TESSERA" submit "$JOB" --run-dir "$DIR/mpirun" --launcher mpirun --ntasks-per-node 2 --cpus-per-task 1 \
  "${SET[@]}") || fail "tessera submit --launcher mpirun: $out"
job=$(sed -n 's/^submitted: job \([0-9]*\).*/\1/p' <<< "$out")
r=$(slurm_wait "$job" 180)
log="$DIR/mpirun/slurm-$job.out"
[ "$r" = "COMPLETED 0:0" ] || { cat "$log"; fail "job $job: $r"; }
grep -q "^LAUNCH=(mpirun " "$DIR/mpirun/job.sbatch" || fail "the script does not launch with mpirun"
[ "$(ranks_of "$log")" = "2 mpirun" ] || { cat "$log"; fail "mpirun in sbatch: not 2 ranks launched by mpirun"; }
echo -n "  job $job: 2 ranks (mpirun); vs srun: "
compare bitwise "$DIR/srun/checkpoints/latest" "$DIR/mpirun/checkpoints/latest" || fail "mpirun differs from srun"

echo "== (c) tessera train in the batch shell, no srun"
job=$(sbatch --parsable -n 2 -o "$DIR/shell.out" --wrap "'$TESSERA' train '$JOB' --run-dir '$DIR/shell' $(printf "'%s' " "${SET[@]}")")
r=$(slurm_wait "$job" 120)
[ "$r" = "COMPLETED 0:0" ] || { cat "$DIR/shell.out"; fail "job $job: $r"; }
[ "$(ranks_of "$DIR/shell.out")" = "1 single" ] || { head -3 "$DIR/shell.out"; fail "the batch shell is not one process"; }
echo -n "  job $job: 1 rank (single); vs the plain process: "
compare bitwise "$DIR/ref1/checkpoints/latest" "$DIR/shell/checkpoints/latest" || fail "differs from the plain process"

echo "== (d) a job array of 3 override lines"
cat > "$DIR/sweep.txt" <<'TXT'
# one array task per line
optimizer.lr=0.002
optimizer.lr=0.0005 train.seed=7
name=sweep-third  data.batch_size=512   # a comment
TXT
out=$("$TESSERA" submit "$JOB" --run-dir "$DIR/sweep" --array "$DIR/sweep.txt" --set train.steps=30 \
  --set train.threads=1 --set model.mlp.hidden=64,32 --set publish.store="$DIR/sweepstore" \
  --set publish.model=sweep) || fail "tessera submit --array: $out"
job=$(sed -n 's/^submitted: job \([0-9]*\) (3 array tasks)$/\1/p' <<< "$out")
[ -n "$job" ] || fail "tessera submit --array did not report 3 array tasks: $out"
for t in 0 1 2; do
  r=$(slurm_wait "${job}_$t" 180)
  [ "$r" = "COMPLETED 0:0" ] || { cat "$DIR/sweep/slurm-${job}_$t.out"; fail "array task $t: $r"; }
done
"$PY" - "$DIR/sweep" <<'PY' || fail "the array tasks' run directories are not as expected"
import json, os, re, sys
base = sys.argv[1]
want = [{"lr: 0.002", "seed: 1", "batch_size: 128"}, {"lr: 0.0005", "seed: 7", "batch_size: 128"},
        {"lr: 0.001", "seed: 1", "batch_size: 512", 'name: "sweep-third"'}]
for t, fields in enumerate(want):
    run = os.path.join(base, f"task-{t}")
    spec = open(os.path.join(run, "job.pbtxt")).read()
    for f in fields:
        assert re.search(r"(^|\s)" + re.escape(f) + r"(?=\s|$)", spec), f"task {t}: '{f}' not in {run}/job.pbtxt"
    s = json.load(open(os.path.join(run, "summary.json")))
    assert s["steps"] == 30, (t, s["steps"])
    print(f"  task-{t}: {', '.join(sorted(fields))}; 30 steps, test accuracy {s['test_accuracy']:.4f}")
assert sorted(d for d in os.listdir(base) if d.startswith("task-")) == ["task-0", "task-1", "task-2"]
PY
# Each task published a version whose lineage names the array job and its task.
"$PY" - "$DIR/sweepstore/sweep" "$job" <<'PY' || fail "the array tasks' versions do not record their Slurm array task"
import os, re, sys
root, job = sys.argv[1], sys.argv[2]
tasks = set()
for v in sorted(d for d in os.listdir(root) if d.isdigit()):
    m = open(os.path.join(root, v, "manifest.pbtxt")).read()
    assert f'array_job_id: "{job}"' in m, (v, "no array_job_id", job)
    tasks.add(re.search(r'array_task_id: "(\d+)"', m).group(1))
assert tasks == {"0", "1", "2"}, tasks
print(f"  store: 3 versions, lineage slurm.array_job_id {job}, array_task_id 0, 1 and 2")
PY
echo "== (e) a job sbatch refuses"
if out=$("$TESSERA" submit "$JOB" --run-dir "$DIR/toobig" --ntasks-per-node 64 "${SET[@]}" 2>&1); then
  fail "a job of 64 tasks on a 2-CPU node was accepted: $out"
fi
grep -q "tessera: error: sbatch refused the job (exit status 1): sbatch: error: Batch job submission failed" <<< "$out" \
  || fail "unclear error for a refused job: $out"
echo "  $out"
echo "PASS"
