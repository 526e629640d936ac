#include "dist/mpi/runtime.h"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "core/error.h"
#include "dist/mpi/heartbeat.h"
#include "dist/mpi/mpi_check.h"
#include "dist/mpi/mpi_process_group.h"

namespace tessera::dist {
namespace {

std::mutex g_mu;  // guards the fields below
std::condition_variable g_workers_cv;
int g_live_workers = 0;
bool g_handler_installed = false;
FatalHandler g_previous_handler = nullptr;
std::atomic<int> g_world_rank{-1};  // read by the fatal handler

const char* ThreadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "an unknown thread level";
}

bool Initialized() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

[[noreturn]] void AbortAllRanks(const std::string& message) {
  std::fprintf(stderr, "tessera: fatal: rank %d: %s\n", g_world_rank.load(), message.c_str());
  std::fflush(stderr);
  if (Initialized()) MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

}  // namespace

void AbortMpi(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  if (Initialized()) MPI_Abort(MPI_COMM_WORLD, code);
}

void InitMpi(int* argc, char*** argv) {
  std::lock_guard<std::mutex> lock(g_mu);
  int initialized = 0, finalized = 0;
  TESSERA_MPI_CHECK(MPI_Initialized(&initialized));
  TESSERA_MPI_CHECK(MPI_Finalized(&finalized));
  if (finalized)
    TESSERA_THROW(CommError,
                  "InitMpi: MPI was already finalised in this process; it cannot be initialised again");
  int provided = MPI_THREAD_SINGLE;
  if (!initialized) {
    TESSERA_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  } else {
    TESSERA_MPI_CHECK(MPI_Query_thread(&provided));
  }
  if (provided < MPI_THREAD_MULTIPLE)
    TESSERA_THROW(CommError, "InitMpi: the MPI library provides only ", ThreadLevelName(provided),
                  "; tessera needs MPI_THREAD_MULTIPLE (collectives run on a worker thread while "
                  "another waits). Use an MPI built with thread support (Open MPI: "
                  "--enable-mpi-thread-multiple, the default since 3.0)");
  int world_rank = -1;
  TESSERA_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  g_world_rank = world_rank;
  internal::StartHeartbeats();  // a no-op after the first call
  if (!g_handler_installed) {
    g_previous_handler = SetFatalHandler(&AbortAllRanks);
    g_handler_installed = true;
  }
}

bool MpiIsInitialized() { return Initialized(); }

void FinalizeMpi() {
  std::unique_lock<std::mutex> lock(g_mu);
  if (!Initialized()) return;
  const bool workers_left =
      !g_workers_cv.wait_for(lock, std::chrono::seconds(10), [] { return g_live_workers == 0; });
  const bool heartbeats_stopped = internal::StopHeartbeats();
  if (workers_left)
    TESSERA_THROW(CommError, "FinalizeMpi: rank ", g_world_rank.load(), ": ", g_live_workers,
                  " process-group worker thread(s) still exist: a group was not destroyed, or one "
                  "timed out and its worker is still inside MPI waiting for the missing ranks. "
                  "MPI_Finalize would hang; exit with an error status instead (mpirun then stops "
                  "the other ranks)");
  if (!heartbeats_stopped)
    TESSERA_THROW(CommError, "FinalizeMpi: rank ", g_world_rank.load(),
                  ": the heartbeat thread did not stop (it is stuck inside MPI). MPI_Finalize "
                  "would hang; exit with an error status instead");
  if (g_handler_installed) {
    SetFatalHandler(g_previous_handler);
    g_handler_installed = false;
  }
  TESSERA_MPI_CHECK(MPI_Finalize());
}

std::unique_ptr<ProcessGroup> WorldGroup() {
  if (!Initialized()) TESSERA_THROW(CommError, "WorldGroup: MPI is not initialised; call InitMpi first");
  return std::make_unique<MpiProcessGroup>(MPI_COMM_WORLD);
}

namespace internal {
void WorkerThreadStarted() {
  std::lock_guard<std::mutex> lock(g_mu);
  ++g_live_workers;
}
void WorkerThreadExited() {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    --g_live_workers;
  }
  g_workers_cv.notify_all();
}
}  // namespace internal

}  // namespace tessera::dist
