#!/usr/bin/env bash
# The main job on its embedded defaults: sets up and builds, then trains W2 (the Fashion-MNIST
# CNN of jobs/examples/fmnist_cnn.pbtxt) for 3 epochs and prints the test accuracy.
# Extra arguments go to `tessera train`, e.g.  scripts/run.sh --set train.epochs=1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec build/tessera train jobs/examples/fmnist_cnn.pbtxt "$@"
