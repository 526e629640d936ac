// The MPI runtime of a tessera process: start-up, the world group, shut-down.
//
// Typical main():
//   tessera::dist::InitMpi(&argc, &argv);
//   { auto world = tessera::dist::WorldGroup(); ... }   // every group destroyed before finalizing
//   tessera::dist::FinalizeMpi();
//
// InitMpi also installs a fatal handler (core/error.h) that prints the message with this rank's
// number and calls MPI_Abort(MPI_COMM_WORLD, 1): a broken invariant on one rank stops every rank.
// It also starts this process's heartbeat thread (dist/mpi/heartbeat.h), which lets a timed-out
// collective name the ranks that stopped responding; FinalizeMpi stops it.
//
// Thread safety: InitMpi and FinalizeMpi are called once each from the main thread.
#pragma once

#include <memory>

#include "dist/process_group.h"

namespace tessera::dist {

// Initialises MPI with MPI_THREAD_MULTIPLE (the process groups wait and issue from different
// threads) and starts the heartbeats. The first call in a process is collective over
// MPI_COMM_WORLD (it dups it for the heartbeats), also when someone else initialised MPI; a
// second call only checks the thread level. Throws CommError when the library provides less than
// MPI_THREAD_MULTIPLE (naming what it gave) or when MPI was already finalised. argc/argv may be
// null.
void InitMpi(int* argc, char*** argv);

// True between initialisation and finalisation.
bool MpiIsInitialized();

// Ends every rank of the job with `code` (MPI_Abort on MPI_COMM_WORLD); for main() after it has
// reported an error, since other ranks may be waiting for this one in a collective. Returns only
// when MPI is not initialised.
void AbortMpi(int code);

// Finalises MPI (no-op when it is not initialised or already finalised) and restores the
// previous fatal handler. Destroy every process group first. The worker thread of a group that
// timed out stays inside MPI until the missing ranks arrive; FinalizeMpi waits up to 10 s for
// such threads and then throws CommError instead of finalising (MPI_Finalize would hang): the
// caller should then exit with an error status, which makes mpirun stop the other ranks. The
// heartbeat thread is stopped and joined first in either case (within about 2 s; if it is stuck,
// FinalizeMpi throws CommError likewise).
void FinalizeMpi();

// A process group over MPI_COMM_WORLD (an MpiProcessGroup; see mpi_process_group.h). Collective:
// every rank calls it. Throws CommError when MPI is not initialised.
std::unique_ptr<ProcessGroup> WorldGroup();

namespace internal {
// Bookkeeping for FinalizeMpi: each MpiProcessGroup worker thread counts itself while it exists.
void WorkerThreadStarted();
void WorkerThreadExited();
}  // namespace internal

}  // namespace tessera::dist
