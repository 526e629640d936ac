#!/usr/bin/env bash
# The tessera command as users run it: --version, --help, validate, and errors with exit status 1.
set -u
TESSERA="$1"
SRC="$2"
fail=0
check() {  # check NAME EXPECTED_STATUS PATTERN -- command...
  local name="$1" want="$2" pattern="$3"
  shift 4
  out=$("$@" 2>&1)
  got=$?
  if [ "$got" != "$want" ] || ! grep -qE -- "$pattern" <<<"$out"; then
    echo "FAIL $name: exit $got (want $want), output:"
    echo "$out" | head -20
    fail=1
  else
    echo "ok   $name"
  fi
}
check version 0 '^tessera [0-9]+\.[0-9]+\.[0-9]+' -- "$TESSERA" --version
check help 0 'train.*Run a job spec' -- "$TESSERA" --help
check train-help 0 '--set FIELD=VALUE' -- "$TESSERA" train --help
check validate-ok 0 'valid' -- "$TESSERA" validate "$SRC/jobs/examples/fmnist_mlp.pbtxt" --no-file-check
check validate-bad-value 1 'optimizer.lr: must be > 0, got -1' -- \
  "$TESSERA" validate "$SRC/jobs/examples/fmnist_mlp.pbtxt" --no-file-check --set optimizer.lr=-1
check validate-bad-field 1 "no field 'epochz' in train" -- \
  "$TESSERA" validate "$SRC/jobs/examples/fmnist_mlp.pbtxt" --no-file-check --set train.epochz=1
check train-missing-file 1 'cannot open the job spec' -- "$TESSERA" train /nonexistent/job.pbtxt
check no-subcommand 106 'subcommand' -- "$TESSERA"
exit $fail
