// Who am I: rank, world size, local rank and local size, from the launcher's environment.
//
//   mpirun   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE (Open MPI), or PMI_RANK / PMI_SIZE
//   srun     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE
//   neither  a single process: rank 0 of 1
//
// The local rank picks the GPU (device local_rank % device count).
#pragma once

#include <string>

namespace tessera::launch {

struct World {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string launcher = "single";  // "mpirun", "srun" or "single"

  bool distributed() const { return size > 1; }
};

// Reads the environment. Throws ConfigError for values that are present but inconsistent (a
// rank outside [0, size), a non-numeric value), naming the variable.
World DetectWorld();

}  // namespace tessera::launch
