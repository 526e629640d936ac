#!/usr/bin/env bash
# Sets up and builds (scripts/setup.sh), then runs the test suite with CTest.
# Extra arguments go to ctest, e.g.  scripts/test.sh -L core   or   scripts/test.sh -R Conv
# Without arguments, the sanitizer build and the fuzzers run after the suite (scripts/sanitize.sh).
# GPU tests (label gpu) skip with a message on machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# OpenMP threads (oneDNN's and tessera's) sleep between parallel regions instead of spinning, so
# concurrent tests and ranks do not starve each other. The tessera command sets this itself.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
status=0
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 600 "$@" || status=$?
# The whole suite (no arguments) also runs the sanitizer build and the fuzzers (scripts/sanitize.sh,
# several minutes); TESSERA_SANITIZERS=0 skips them.
if [ $# -eq 0 ] && [ "${TESSERA_SANITIZERS:-1}" != 0 ]; then
  scripts/sanitize.sh || status=1
fi
exit $status
