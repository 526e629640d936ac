// Internal to dist/mpi/: one issued collective (mpi_process_group.cc queues and times them;
// run_op.cc makes the MPI calls).
//
// Small all-gathers, all-reduces, reduces and reduce-scatters use nonblocking MPI calls (UsesNonblocking),
// so that the issuing thread can start them itself when the group is idle and its Wait() can poll
// them against the deadline, with no hand-over to the worker thread. Which call an op uses
// depends only on its kind and sizes, never on this rank's state: a nonblocking collective does
// not match a blocking one, so every rank must choose alike.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "dist/collective.h"
#include "dist/process_group.h"

namespace tessera::dist::mpi_internal {

// One issued collective. The fields from `done` on are guarded by State::mu; the split result is
// written by the worker before it sets `done`.
struct Op {
  collective::Kind kind = collective::Kind::kBarrier;
  Tensor a;  // allreduce, reduce, broadcast: the tensor; reduce_scatter, allgather: the input
  Tensor b;  // reduce_scatter, allgather: the output
  ReduceOp reduce = ReduceOp::kSum;
  int root = 0, color = 0, key = 0;
  double timeout_s = 0;
  uint64_t seq = 0;
  int group_size = 1;
  std::chrono::steady_clock::time_point issued, deadline;

  bool done = false;
  std::atomic<bool> finished{false};  // `done`, for a Wait() to poll without the lock
  std::exception_ptr error;
  std::string timeout_message;  // set once a Wait() on it timed out
  MPI_Comm split_data = MPI_COMM_NULL;
  uint64_t split_id = 0;  // the new group's id (dist/mpi/arrivals.h)

  // A nonblocking op: its request and the blocks it gathers. The thread that completes the
  // request holds `test_mu` (MPI forbids completing one request from two threads at once).
  MPI_Request request = MPI_REQUEST_NULL;
  std::vector<unsigned char> scratch;
  int phase = 0;  // of a two-phase all-reduce
  std::mutex test_mu;
  bool caller_started = false;        // started by the issuing thread, not by the worker
  std::atomic<bool> adopted{false};   // ... and since handed to the worker, which completes it

  // "allreduce #17 (2048 f32, group of 3)": built only for messages, since a small collective
  // costs a few microseconds in all.
  std::string What() const;
};

// Whether `op` uses a nonblocking MPI call (small all-gathers, all-reduces, reduces and
// reduce-scatters).
bool UsesNonblocking(const Op& op, int size);
// Starts such an op on `data`, of which this process is `rank` of `size`. Reduce-scatters
// exchange blocks (all-to-all) that each rank then reduces itself, in rank order; all-reduces and
// reduces do the same for 1/size of the tensor and then all-gather the reduced blocks: the same result on
// every rank (Open MPI's own nonblocking reductions cost several times more at these sizes).
// Throws CommError.
void StartNonblocking(Op& op, MPI_Comm data, int rank, int size);
// Once op.request has completed: the local reduction, and the next phase's call (returns false:
// wait for op.request again) or kAvg's division (returns true: the op is done). Throws CommError.
bool ContinueNonblocking(Op& op, MPI_Comm data, int rank, int size);

// Runs `op` to completion on `data` (blocking MPI calls, or a nonblocking one and MPI_Wait).
// Worker thread only; throws CommError for a failed call.
void RunOp(Op& op, MPI_Comm data, int rank, int size);

}  // namespace tessera::dist::mpi_internal
