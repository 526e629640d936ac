#!/usr/bin/env bash
# Sets up and builds (scripts/setup.sh), then runs the test suite with CTest.
# Extra arguments go to ctest, e.g.  scripts/test.sh -L core   or   scripts/test.sh -R Conv
# GPU tests (label gpu) skip with a message on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 600 "$@"
