# Shared by ckpt_resume_test.sh and ckpt_crash_test.sh (sourced, after TESSERA, MPIRUN and SRC are
# set): a scratch directory DIR removed on exit together with every process whose command line
# names it, Open MPI's session files kept inside it (runs killed by -9 leave them behind), the data
# check, `fail`, `literal_re`, and `run_tessera NP RUN_DIR OUT [ARGS...]`, which runs
# `tessera train $JOB` on NP ranks (1: the plain process) with ARGS, bounded to 120 s.
PY=/usr/bin/python3
DATA=/usr/share/datasets/fashion-mnist
JOB="$SRC/jobs/examples/fmnist_mlp.pbtxt"
DIR=$(mktemp -d)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$DIR/ompi"
export OMPI_MCA_orte_tmpdir_base="$DIR/ompi" OMPI_MCA_btl_vader_backing_directory="$DIR/ompi"

# A regular expression that matches the string $1 literally.
literal_re() { printf '%s' "$1" | sed 's/[].[\*^$()+?{}|]/\\&/g'; }
cleanup() {
  pkill -9 -f -- "$(literal_re "$DIR/")" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 2' INT TERM
fail() { echo "FAIL: $*"; exit 1; }
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -f "$DATA/$f" ] || fail "$DATA/$f is missing (scripts/setup.sh installs dataset-fashion-mnist)"
done
"$PY" -c "import h5py, numpy" 2>/dev/null || fail "$PY lacks h5py or numpy (scripts/setup.sh installs python3-h5py)"

run_tessera() {  # NP RUN_DIR OUT [ARGS...]
  local np="$1" run="$2" out="$3"
  shift 3
  if [ "$np" = 1 ]; then
    timeout -k 10 120 "$TESSERA" train "$JOB" --run-dir "$run" "$@" > "$out" 2>&1
  else
    timeout -k 10 120 "$MPIRUN" -np "$np" --allow-run-as-root --oversubscribe --bind-to none \
      "$TESSERA" train "$JOB" --run-dir "$run" "$@" > "$out" 2>&1
  fi
}
step_of() {  # the step of a checkpoint (file or directory), from its root attribute
  "$PY" -c 'import h5py, sys, os
p = sys.argv[1]
p = os.path.join(p, "checkpoint.h5") if os.path.isdir(p) else p
print(int(h5py.File(p, "r").attrs["step"]))' "$1"
}
