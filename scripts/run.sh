#!/usr/bin/env bash
# The main job on its embedded defaults: sets up and builds, then trains W2 (the Fashion-MNIST CNN
# of jobs/examples/fmnist_cnn.pbtxt) for 3 epochs on 2 data-parallel ranks under mpirun (one
# thread each: the 2 ranks share this machine's cores) and prints the test accuracy.
# Extra arguments go to `tessera train`, e.g.  scripts/run.sh --set train.epochs=1
# RANKS=1 scripts/run.sh runs one process instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
RANKS=${RANKS:-2}
JOB=jobs/examples/fmnist_cnn.pbtxt
if [ "$RANKS" = 1 ]; then
  exec build/tessera train "$JOB" "$@"
fi
# Open MPI refuses to start as root unless told that is intended.
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
exec mpirun -np "$RANKS" --oversubscribe --bind-to none build/tessera train "$JOB" --set train.threads=1 "$@"
