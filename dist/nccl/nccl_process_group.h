// The NCCL process group: collectives on CUDA tensors (compiled when TESSERA_USE_NCCL).
//
// One NCCL communicator per group, bootstrapped through another process group (MPI): rank 0
// creates the unique id and broadcasts it. Collectives run on a dedicated NCCL stream per group,
// ordered after the device's compute stream (core/ops/cuda/context.h) with an event, and the
// compute stream is ordered after each collective with another event: no host synchronisation
// in the step (as llm.c does). Work::Wait() blocks the host until the collective has finished,
// polling with the collective's deadline; on timeout the communicator is aborted (ncclCommAbort),
// the group is broken and CommTimeoutError names the collective and its sequence number. NCCL
// cannot tell which peer is missing; the message says so.
//
// Contract otherwise as dist/process_group.h. Tensors must be on this group's device.
#pragma once

#include <memory>

#include "dist/process_group.h"

namespace tessera::dist {

// Creates the group over the ranks of `bootstrap` (every rank calls this), using CUDA device
// `device` on this rank. Throws DeviceError when no GPU is present and CommError when NCCL fails.
std::unique_ptr<ProcessGroup> MakeNcclProcessGroup(ProcessGroup& bootstrap, int device);

}  // namespace tessera::dist
