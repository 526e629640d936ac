#!/usr/bin/env bash
# The main job on its embedded defaults: sets up and builds, then trains W2 (the Fashion-MNIST
# CNN) for 3 epochs and prints the test accuracy. Extra arguments go to `tessera example`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec build/tessera example "$@"
