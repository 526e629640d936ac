#include "launch/world.h"

#include <cstdlib>
#include <string>

#include "core/error.h"

namespace tessera::launch {
namespace {

bool ReadInt(const char* name, int* out) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return false;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 24)
    TESSERA_THROW(ConfigError, "environment variable ", name, "='", v, "' is not a valid count or index");
  *out = static_cast<int>(x);
  return true;
}

// SLURM_TASKS_PER_NODE looks like "4(x2),3": the first node's count is enough for local_size when
// SLURM_NTASKS_PER_NODE is absent.
bool ReadSlurmTasksPerNode(int* out) {
  const char* v = std::getenv("SLURM_TASKS_PER_NODE");
  if (v == nullptr || *v < '0' || *v > '9') return false;
  *out = std::atoi(v);
  return *out > 0;
}

// SLURM_STEP_ID (SLURM_STEPID in older releases) of a step srun started: a number below Slurm's
// special ids (0xFFFFFFF0 and up: the batch and extern steps), never a name such as "batch".
bool ReadStepId(int* out) {
  for (const char* name : {"SLURM_STEP_ID", "SLURM_STEPID"}) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') continue;
    char* end = nullptr;
    const unsigned long long id = std::strtoull(v, &end, 10);
    if (*end != '\0' || id >= 0xFFFFFFF0ull) return false;
    *out = static_cast<int>(id);
    return true;
  }
  return false;
}

void Check(const World& w, const char* rank_var) {
  if (w.size < 1) TESSERA_THROW(ConfigError, "the launcher reports a world of ", w.size, " ranks");
  if (w.rank >= w.size)
    TESSERA_THROW(ConfigError, rank_var, "=", w.rank, " is outside the world of ", w.size, " ranks");
  if (w.local_size < 1 || w.local_rank >= w.local_size)
    TESSERA_THROW(ConfigError, "local rank ", w.local_rank, " is outside the ", w.local_size, " ranks on this node");
}

}  // namespace

World DetectWorld() {
  World w;
  if (ReadInt("OMPI_COMM_WORLD_RANK", &w.rank)) {
    w.launcher = "mpirun";
    ReadInt("OMPI_COMM_WORLD_SIZE", &w.size);
    if (!ReadInt("OMPI_COMM_WORLD_LOCAL_RANK", &w.local_rank)) w.local_rank = w.rank;
    if (!ReadInt("OMPI_COMM_WORLD_LOCAL_SIZE", &w.local_size)) w.local_size = w.size;
    Check(w, "OMPI_COMM_WORLD_RANK");
    return w;
  }
  // The batch shell of an sbatch job has SLURM_PROCID=0 and SLURM_NTASKS of the whole allocation
  // but is one process: only a process that srun started has a step id.
  int step = 0;
  if (ReadStepId(&step) && ReadInt("SLURM_PROCID", &w.rank)) {
    w.launcher = "srun";
    ReadInt("SLURM_NTASKS", &w.size);
    if (!ReadInt("SLURM_LOCALID", &w.local_rank)) w.local_rank = 0;
    if (!ReadInt("SLURM_NTASKS_PER_NODE", &w.local_size) && !ReadSlurmTasksPerNode(&w.local_size))
      w.local_size = w.local_rank + 1;
    Check(w, "SLURM_PROCID");
    return w;
  }
  if (ReadInt("PMI_RANK", &w.rank)) {
    w.launcher = "mpirun";
    ReadInt("PMI_SIZE", &w.size);
    w.local_rank = w.rank;
    w.local_size = w.size;
    Check(w, "PMI_RANK");
    return w;
  }
  return w;
}

}  // namespace tessera::launch
