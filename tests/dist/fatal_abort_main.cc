// Run by CTest under mpirun -np 2: rank 1 breaks an invariant while rank 0 waits in a barrier.
// The fatal handler that InitMpi installs must stop both ranks at once, through MPI_Abort:
// fatal_abort_test.sh checks the message, the abort, and that the job ends long before rank 0's
// 60 s collective timeout.
#include <cstdio>
#include <exception>

#include "core/error.h"
#include "dist/mpi/runtime.h"

int main(int argc, char** argv) {
  using namespace tessera::dist;
  InitMpi(&argc, &argv);
  auto world = WorldGroup();
  if (world->size() < 2) {
    std::fprintf(stderr, "fatal_abort: needs 2 ranks\n");
    return 1;
  }
  if (world->rank() == 1) TESSERA_CHECK(1 + 1 == 3, "(deliberately broken invariant)");
  CollectiveOptions o;
  o.timeout_s = 60;
  try {
    world->Barrier(o)->Wait();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", world->rank(), e.what());
    return 1;
  }
  std::printf("rank %d was not stopped\n", world->rank());
  return 1;
}
