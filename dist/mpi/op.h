// Internal to dist/mpi/: one issued collective, as the MPI process group's worker thread runs it
// (mpi_process_group.cc queues, announces and times them; run_op.cc makes the MPI calls).
#pragma once

#include <mpi.h>

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
  std::string what;  // "allreduce #17 (2048 f32, group of 3)"
  std::chrono::steady_clock::time_point issued, deadline;

  bool done = false;
  std::exception_ptr error;
  std::string timeout_message;  // set once a Wait() on it timed out
  MPI_Comm split_data = MPI_COMM_NULL, split_control = MPI_COMM_NULL;
};

// Runs `op` with blocking MPI calls on `data`, of which this process is `rank` of `size`.
// Worker thread only; throws CommError for a failed call.
void RunOp(Op& op, MPI_Comm data, int rank, int size);

}  // namespace tessera::dist::mpi_internal
