#!/usr/bin/env bash
# dist_fatal_abort_np2: rank 1 breaks an invariant while rank 0 waits in a barrier with a 60 s
# deadline (tests/dist/fatal_abort_main.cc). The fatal handler that InitMpi installs must take every
# rank down through MPI_Abort. mpirun's own rule of killing the job when a rank exits non-zero is
# switched off (orte_abort_on_non_zero_status 0), so that only MPI_Abort can stop rank 0 early.
# Usage: fatal_abort_test.sh FATAL_ABORT_BINARY MPIEXEC
set -u
BIN="$1"
MPIEXEC="$2"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() { echo "FAIL: $*"; exit 1; }
t0=$SECONDS
out=$(timeout -k 5 40 "$MPIEXEC" -np 2 --oversubscribe --mca orte_abort_on_non_zero_status 0 "$BIN" 2>&1)
rc=$?
dt=$((SECONDS - t0))
echo "$out" | tail -20
[ "$rc" -ne 0 ] || fail "mpirun exited 0"
grep -q "tessera: fatal: rank 1: .*check failed: 1 + 1 == 3" <<< "$out" || fail "no fatal message from rank 1"
# Open MPI 4.1 prints "MPI_ABORT was invoked on rank 1" through its show_help channel, which now
# and then loses the text ("ORTE_ERROR_LOG: Data unpack would read past end of buffer ... show_help.c"),
# so the text is not required. What proves MPI_Abort is rank 0's fate: with mpirun's kill-on-exit
# rule off, nothing else can stop it inside its 60 s barrier (a std::abort on rank 1 instead leaves
# it waiting until its deadline, which the last two checks catch).
! grep -q "was not stopped" <<< "$out" || fail "a rank went on after the fatal error"
! grep -q "^rank 0: " <<< "$out" || fail "rank 0 ran into its barrier's deadline instead of being stopped"
[ "$dt" -lt 30 ] || fail "the job took $dt s to end (rank 0's deadline is 60 s)"
echo "PASS: rank 1's fatal error ended both ranks through MPI_Abort in $dt s, exit status $rc"
