// A process group whose ranks are threads of one process (compare PyTorch's "threaded" test
// process group). Every collective of dist/process_group.h, with its sequence numbers, deadlines
// and broken state, on CPU tensors in shared memory: what runs on a process group (the reducer,
// sharded optimizers, checkpoint coordination) is tested on threads in milliseconds and under
// ThreadSanitizer, beside the real MPI tests under mpirun.
//
// How it works: the ranks' calls for collective #k meet in one shared slot. The last rank to issue
// it checks that every rank asked for the same collective with matching sizes, computes it for
// all of them (reductions in rank order, so results do not depend on thread timing), and marks it
// done; Wait() blocks until then or until the deadline. A rank that never issues #k (a test's way
// of stopping a rank) makes the others time out naming it; a slot a rank gave up on is never
// completed by a late arrival, whose Wait() fails instead.
#pragma once

#include <memory>
#include <vector>

#include "dist/process_group.h"

namespace tessera::dist {

// `size` groups over the same ranks: element r is rank r's, to be used by one thread (Wait() may
// be called from any thread, as on every backend).
std::vector<std::unique_ptr<ProcessGroup>> MakeThreadGroups(int size);

}  // namespace tessera::dist
