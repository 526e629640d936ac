// Shared by the multi-rank suites run under mpirun (see mpi_test_main.cc).
#pragma once

#include "dist/process_group.h"

namespace tessera::dist::mpi_test {

// The MPI_COMM_WORLD group, created by main after InitMpi and destroyed before FinalizeMpi.
ProcessGroup& World();

}  // namespace tessera::dist::mpi_test
