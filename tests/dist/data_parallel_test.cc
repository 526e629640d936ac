// Data parallelism: N ranks with per-rank batch b reproduce one rank with batch N*b (W1, W2, the
// GPT at ZeRO stages 0 to 2), and tensor parallelism of the GPT over the world; at start-up,
// ranks that built another model or found another checkpoint are named on every rank. Run under
// mpirun with N = 2 and 4 (see tests/CMakeLists.txt).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>

#include "core/models.h"
#include "dist/reducer.h"
#include "jobs/resume.h"
#include "tests/dist/dp_train.h"
#include "tests/dist/mpi_test_env.h"
#include "tests/dist/tp_train.h"

namespace tessera::dist {
namespace {

class DataParallel : public ::testing::TestWithParam<bool> {};

TEST_P(DataParallel, NRanksReproduceOneRankWithTheGlobalBatch) {
  const bool cnn = GetParam();
  ProcessGroup& world = mpi_test::World();
  const int n = world.size();
  const int steps = 50;
  const int64_t per_rank = cnn ? 8 : 16, global = per_rank * n;
  const dp_test::Data data = dp_test::MakeData(steps, global);  // the same on every rank
  dp_test::TrainConfig c;
  c.cnn = cnn;
  std::vector<double> single = dp_test::Train(data, global, steps, nullptr, c);
  size_t buckets = 0;
  c.buckets = &buckets;
  std::vector<double> parallel = dp_test::Train(data, global, steps, &world, c);
  EXPECT_GE(buckets, 2u) << "the test must exercise several buckets";
  std::string worst;
  EXPECT_LE(dp_test::RelativeDifference(single, parallel, &worst), 1e-5) << worst << " (" << n << " ranks)";
}

INSTANTIATE_TEST_SUITE_P(W1AndW2, DataParallel, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "W2" : "W1"; });

// The GPT (tied embeddings, attention, LayerNorm) under MPI: 20 steps at stages 0 to 2 end where
// one process ends with the global batch.
TEST(DataParallelGpt, NRanksReproduceOneRankAtStages0To2) {
  ProcessGroup& world = mpi_test::World();
  const int steps = 20;
  const int64_t global = 3 * world.size();
  const dp_test::Data data = dp_test::MakeTokenData(steps, global);
  dp_test::TrainConfig c;
  c.gpt = true;
  const std::vector<double> single = dp_test::Train(data, global, steps, nullptr, c);
  for (int stage : {0, 1, 2}) {
    c.zero_stage = stage;
    std::string worst;
    EXPECT_LE(dp_test::RelativeDifference(single, dp_test::Train(data, global, steps, &world, c), &worst),
              1e-5)
        << worst << " (stage " << stage << ", " << world.size() << " ranks)";
  }
}

// Tensor parallelism under MPI: the GPT split across the world (2 and 4 ranks) ends 20 steps of
// Adam where the whole GPT on one process ends.
TEST(TensorParallelGpt, TheWorldAsATensorGroupReproducesOneProcess) {
  const auto whole = tp_test::TrainWhole(20);
  EXPECT_LE(tp_test::TrainSplitAndCompare(mpi_test::World(), whole.second, 20), 1e-5)
      << "rank " << mpi_test::World().rank() << " of " << mpi_test::World().size();
}

// The last rank builds a wider first layer: every rank stops before the broadcast, naming it.
TEST(StartUp, RanksThatBuiltAnotherModelAreNamedOnEveryRank) {
  ProcessGroup& world = mpi_test::World();
  const int last = world.size() - 1;
  models::MlpConfig c;
  c.in_features = 8;
  c.hidden = {world.rank() == last ? 20 : 16};
  c.out_features = 3;
  auto net = models::BuildMlp(c);
  nn::FlatParameters params(*net, Device::CPU(), DType::kF32, 1);
  try {
    BroadcastParameters(params, world, 0, 30);
    ADD_FAILURE() << "rank " << world.rank() << ": the broadcast went ahead";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("the ranks built different models: rank " + std::to_string(last) + " differs"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("on rank " + std::to_string(world.rank()) + ": 4 parameters"), std::string::npos)
        << msg;
  }
  // The same model everywhere passes, and the broadcast makes the values equal.
  c.hidden = {16};
  auto same = models::BuildMlp(c);
  nn::FlatParameters p2(*same, Device::CPU(), DType::kF32, 1 + world.rank());
  BroadcastParameters(p2, world, 0, 30);
}

// Every rank must continue from the same step: one that found another checkpoint is an error on
// every rank, naming the range of steps and the directory.
TEST(StartUp, RanksThatFoundDifferentCheckpointsStopTheJob) {
  ProcessGroup& world = mpi_test::World();
  EXPECT_NO_THROW(jobs::AgreeOnStep(40, world, 30, "runs/x/checkpoints"));
  const int64_t step = world.rank() == world.size() - 1 ? 30 : 40;
  try {
    jobs::AgreeOnStep(step, world, 30, "runs/x/checkpoints");
    ADD_FAILURE() << "rank " << world.rank() << ": the ranks agreed";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "the ranks found different checkpoints to resume from (steps 30 to 40); is "
                  "runs/x/checkpoints on a file system all ranks share?"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace tessera::dist
