// Who am I: rank, world size, local rank and local size, from the launcher's environment.
//
//   mpirun   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE (Open MPI), or PMI_RANK / PMI_SIZE
//   srun     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE,
//            in a process with a SLURM_STEP_ID (one that srun started)
//   neither  a single process: rank 0 of 1
//
// The launcher that started the process wins: under mpirun inside a Slurm allocation every rank
// inherits SLURM_PROCID=0 from the batch shell, so Open MPI's variables are read first; and the
// batch shell itself (SLURM_PROCID=0, SLURM_NTASKS=N, no step id) is a single process.
//
// The local rank is to pick the GPU (device local_rank % device count) once training runs on GPUs.
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
