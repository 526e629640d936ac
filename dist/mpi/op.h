// Internal to dist/mpi/: one issued collective, as the MPI process group's worker thread runs it
// (mpi_process_group.cc queues and times them; run_op.cc makes the MPI calls).
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <string>

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

  // "allreduce #17 (2048 f32, group of 3)": built only for messages, since a small collective
  // costs a few microseconds in all.
  std::string What() const;
};

// Runs `op` with blocking MPI calls on `data`, of which this process is `rank` of `size`.
// Worker thread only; throws CommError for a failed call.
void RunOp(Op& op, MPI_Comm data, int rank, int size);

}  // namespace tessera::dist::mpi_internal
