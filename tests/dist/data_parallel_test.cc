// Data parallelism: N ranks with per-rank batch b reproduce one rank with batch N*b; at start-up,
// ranks that built another model or found another checkpoint are named on every rank. Run under
// mpirun with N = 2 and 4 (see tests/CMakeLists.txt).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>

#include "core/models.h"
#include "core/nn/loss.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "core/threads.h"
#include "tests/dist/mpi_test_env.h"
#include "dist/reducer.h"
#include "jobs/resume.h"
#include "tests/core/gradcheck.h"

namespace tessera::dist {
namespace {

std::unique_ptr<nn::Sequential> Build(bool cnn) {
  if (cnn) return models::BuildCnn({});  // W2
  return models::BuildMlp({});           // W1
}

// Trains `steps` steps on the global batches [s*B, (s+1)*B) of (x, y); with a group, this rank
// takes its slice of each and all-reduces through a Reducer with small buckets (several per step).
std::vector<double> Train(bool cnn, const Tensor& x, const Tensor& y, int64_t global_batch, int steps,
                          ProcessGroup* group, size_t* buckets = nullptr) {
  auto net = Build(cnn);
  net->set_needs_input_grad(false);
  nn::FlatParameters params(*net, Device::CPU(), DType::kF32, 11);
  std::unique_ptr<Reducer> reducer;
  if (group) {
    // Start from different values on each rank: the broadcast must make them equal.
    if (group->rank() != 0) params.values().Fill(0.25);
    BroadcastParameters(params, *group);
    reducer = std::make_unique<Reducer>(params, *group, /*bucket_mb=*/0.25, /*timeout_s=*/60);
    if (buckets) *buckets = reducer->buckets().size();
  }
  optim::Adam adam(params.values(), params.grads());
  nn::CrossEntropyLoss loss;
  const int world = group ? group->size() : 1, rank = group ? group->rank() : 0;
  const int64_t local = global_batch / world;
  for (int s = 0; s < steps; ++s) {
    int64_t lo = s * global_batch + rank * local;
    params.ZeroGrad();
    loss.Forward(net->Forward(x.Slice0(lo, lo + local)), y.Slice0(lo, lo + local));
    net->Backward(loss.Backward(1.0 / world));  // this rank's share of the global mean
    if (reducer) reducer->Finish();
    adam.Step(1e-3);
  }
  return params.values().ToVector();
}

class DataParallel : public ::testing::TestWithParam<bool> {};

TEST_P(DataParallel, NRanksReproduceOneRankWithTheGlobalBatch) {
  const bool cnn = GetParam();
  ProcessGroup& world = mpi_test::World();
  const int n = world.size();
  const int steps = 50;
  const int64_t per_rank = cnn ? 8 : 16, global = per_rank * n;
  // The same data on every rank (same seed).
  Tensor x = testing::RandomTensor({steps * global, 1, 28, 28}, DType::kF32, 5, 0, 1);
  PhiloxGenerator g(6);
  std::vector<double> labels(steps * global);
  for (double& l : labels) l = static_cast<double>(g.Below(10));
  Tensor y = Tensor::FromVector(labels, {steps * global}, DType::kI32);

  std::vector<double> single = Train(cnn, x, y, global, steps, nullptr);
  size_t buckets = 0;
  std::vector<double> parallel = Train(cnn, x, y, global, steps, &world, &buckets);
  EXPECT_GE(buckets, 2u) << "the test must exercise several buckets";
  ASSERT_EQ(single.size(), parallel.size());
  // Relative error of the whole parameter vector: ||p_N - p_1|| / ||p_1||.
  double diff = 0, norm = 0, worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < single.size(); ++i) {
    double d = std::fabs(single[i] - parallel[i]);
    diff += d * d;
    norm += single[i] * single[i];
    if (d > worst) {
      worst = d;
      worst_i = i;
    }
  }
  EXPECT_LE(std::sqrt(diff / norm), 1e-5) << "largest difference at parameter " << worst_i << ": single "
                                           << single[worst_i] << " vs " << n << " ranks " << parallel[worst_i];
}

INSTANTIATE_TEST_SUITE_P(W1AndW2, DataParallel, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "W2" : "W1"; });

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
    EXPECT_NE(msg.find("the ranks built different models: rank " + std::to_string(last) + " differ"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("on rank " + std::to_string(world.rank()) + ": 4 parameters"), std::string::npos) << msg;
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
    EXPECT_NE(std::string(e.what()).find("the ranks found different checkpoints to resume from (steps 30 to 40); is "
                                         "runs/x/checkpoints on a file system all ranks share?"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace tessera::dist
