// Where the launcher put a process (TrainerOptions::placement, from launch/world.h) against the
// process group the trainer is handed: they must agree, and each rank's log records its local rank.
#include <gtest/gtest.h>

#include "core/threads.h"
#include "tests/dist/thread_ranks.h"
#include "tests/jobs/blobs_job.h"

namespace tessera::jobs {
namespace {

using blobs_test::BlobsJob;
using json = nlohmann::json;

// Runs the blobs job on 2 thread ranks with the placement `place(rank)`; each rank's error.
std::vector<std::string> RunPlaced(BlobsJob& job, const std::string& run,
                                   const std::function<TrainerOptions::Placement(int)>& place) {
  SetNumThreads(1);
  JobSpec spec = job.spec;
  spec.mutable_train()->set_steps(4);
  spec.mutable_parallel()->set_collective_timeout_s(10);
  return dist::thread_test::RunRanks(2, [&](dist::ProcessGroup& g) {
    TrainerOptions o;
    o.run_dir = (job.dir / run).string();
    o.progress = false;
    o.group = &g;
    o.placement = place(g.rank());
    Train(spec, o);
  });
}

TEST(Placement, ALauncherRankThatIsNotTheGroupsIsRefusedOnEveryRank) {
  BlobsJob job("placement_bad");
  const std::vector<std::string> errors =
      RunPlaced(job, "swapped", [](int r) { return TrainerOptions::Placement{1 - r, 2, 0, 1, "mpirun"}; });
  EXPECT_NE(errors[0].find("the launcher (mpirun) placed this process as rank 1 of 2 but its process group is rank 0 "
                           "of 2"),
            std::string::npos)
      << errors[0];
  EXPECT_NE(errors[1].find("as rank 0 of 2 but its process group is rank 1 of 2"), std::string::npos) << errors[1];
  // One process that a launcher says is one of four.
  TrainerOptions o;
  o.run_dir = (job.dir / "alone").string();
  o.progress = false;
  o.placement = {0, 4, 0, 1, "srun"};
  try {
    Train(job.spec, o);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("(srun) placed this process as rank 0 of 4 but its process group is rank 0 "
                                         "of 1"),
              std::string::npos)
        << e.what();
  }
  const std::vector<std::string> local =
      RunPlaced(job, "local", [](int r) { return TrainerOptions::Placement{r, 2, 2, 2, "mpirun"}; });
  EXPECT_NE(local[0].find("local rank 2 is outside [0, 2) (mpirun)"), std::string::npos) << local[0];
}

TEST(Placement, EachRanksLogRecordsItsLocalRank) {
  BlobsJob job("placement_log");
  const std::vector<std::string> errors =
      RunPlaced(job, "run", [](int r) { return TrainerOptions::Placement{r, 2, r, 2, "mpirun"}; });
  ASSERT_EQ(errors, (std::vector<std::string>{"", ""}));
  for (int r = 0; r < 2; ++r) {
    bool found = false;
    for (const json& e : blobs_test::ReadJsonLines(job.dir / ("run/rank-" + std::to_string(r) + ".log")))
      if (e["event"] == "placement") {
        found = true;
        EXPECT_EQ(e["launcher"], "mpirun");
        EXPECT_EQ(e["local_rank"], r);
        EXPECT_EQ(e["local_size"], 2);
      }
    EXPECT_TRUE(found) << "rank " << r << ": no placement event";
  }
}

}  // namespace
}  // namespace tessera::jobs
