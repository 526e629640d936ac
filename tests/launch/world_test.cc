// DetectWorld(): the launcher that started the process decides rank and size.
#include "launch/world.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace tessera::launch {
namespace {

const char* const kVars[] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                             "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
                             "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_STEP_ID", "SLURM_STEPID",
                             "PMI_RANK", "PMI_SIZE", "PMIX_RANK"};

// Sets exactly `vars` (the others unset) for the life of the object.
class Env {
 public:
  explicit Env(const std::vector<std::pair<std::string, std::string>>& vars) {
    for (const char* v : kVars) unsetenv(v);
    for (const auto& [k, v] : vars) setenv(k.c_str(), v.c_str(), 1);
  }
  ~Env() {
    for (const char* v : kVars) unsetenv(v);
  }
};

TEST(DetectWorld, NoLauncherIsOneProcess) {
  Env e({});
  World w = DetectWorld();
  EXPECT_EQ(w.size, 1);
  EXPECT_EQ(w.launcher, "single");
}

TEST(DetectWorld, SrunTask) {
  Env e({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "1"}, {"SLURM_TASKS_PER_NODE", "2(x2)"},
         {"SLURM_STEP_ID", "0"}, {"PMIX_RANK", "3"}});
  World w = DetectWorld();
  EXPECT_EQ(w.launcher, "srun");
  EXPECT_EQ(w.rank, 3);
  EXPECT_EQ(w.size, 4);
  EXPECT_EQ(w.local_rank, 1);
  EXPECT_EQ(w.local_size, 2);
}

// Under mpirun inside an allocation every rank inherits the batch shell's SLURM_PROCID=0.
TEST(DetectWorld, MpirunInsideAnAllocationReadsOpenMpi) {
  Env e({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}, {"OMPI_COMM_WORLD_RANK", "1"},
         {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
         {"PMIX_RANK", "1"}});
  World w = DetectWorld();
  EXPECT_EQ(w.launcher, "mpirun");
  EXPECT_EQ(w.rank, 1);
  EXPECT_EQ(w.local_rank, 1);
}

// The batch shell: SLURM_PROCID=0 and the allocation's SLURM_NTASKS, but no step.
TEST(DetectWorld, BatchShellIsOneProcess) {
  Env e({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}});
  World w = DetectWorld();
  EXPECT_EQ(w.launcher, "single");
  EXPECT_EQ(w.size, 1);
}

// Slurm's special step ids (the batch step 0xFFFFFFFB, the extern step) and names are not srun steps.
TEST(DetectWorld, SpecialStepIdsAreNotSrunSteps) {
  for (const char* step : {"4294967291", "4294967292", "batch"}) {
    Env e({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_ID", step}});
    EXPECT_EQ(DetectWorld().launcher, "single") << step;
  }
}

TEST(DetectWorld, InconsistentValuesNameTheVariable) {
  {
    Env e({{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}, {"SLURM_STEP_ID", "0"}});
    EXPECT_THROW(
        try { DetectWorld(); } catch (const ConfigError& err) {
          EXPECT_NE(std::string(err.what()).find("SLURM_PROCID=4 is outside the world of 4"), std::string::npos)
              << err.what();
          throw;
        },
        ConfigError);
  }
  Env e({{"OMPI_COMM_WORLD_RANK", "x"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
  EXPECT_THROW(DetectWorld(), ConfigError);
}

}  // namespace
}  // namespace tessera::launch
