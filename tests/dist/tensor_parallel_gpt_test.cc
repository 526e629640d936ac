// The GPT split across a tensor group of 2 and 4 thread ranks (dist/tensor_parallel_gpt.h): cut
// from the single-process GPT's parameters, it computes the same loss and, on every rank, the
// shards of the same gradients (f64); trained 20 steps of Adam side by side (f32), every rank's
// shards end within 1e-5 of the single process's.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/ops/ops.h"
#include "core/threads.h"
#include "tests/core/gradcheck.h"
#include "tests/dist/thread_ranks.h"
#include "tests/dist/tp_train.h"

namespace tessera::dist {
namespace {

using namespace tp_test;
using thread_test::RunRanks;

TEST(TensorParallelGpt, LossAndGradientShardsAreTheWholeModels) {
  SetNumThreads(1);
  const models::GptConfig c = Config();
  auto whole = models::BuildGpt(c);
  whole->set_needs_input_grad(false);
  nn::FlatParameters wp(*whole, Device::CPU(), DType::kF64, 5);
  // Biases start at zero and LayerNorms at 1 and 0: move every value, so that a bias added on
  // every rank instead of once, or a LayerNorm gradient summed over ranks, shows.
  wp.values().CopyFrom(ops::Add(wp.values(), testing::RandomTensor({wp.numel()}, DType::kF64, 7, -0.2, 0.2)));
  // Not structured bindings: the rank lambdas below capture them (clang 14 refuses that in C++17).
  const std::pair<Tensor, Tensor> batch = Batch(0, c.vocab);
  const Tensor &x = batch.first, &y = batch.second;
  nn::CrossEntropyLoss ce;
  const auto values = Snapshot(wp);
  const double want = ce.Forward(whole->Forward(x), y).Item();
  whole->Backward(ce.Backward());
  const auto grads = Snapshot(wp, /*grads=*/true);
  for (int ranks : {2, 4}) {
    std::vector<double> loss(ranks);
    std::vector<std::string> errors = RunRanks(ranks, [&](ProcessGroup& g) {
      const TensorGroup tg{&g, 30};
      auto net = BuildTensorParallelGpt(c, tg);
      net->set_needs_input_grad(false);
      nn::FlatParameters p(*net, Device::CPU(), DType::kF64, 99);
      const auto shards = GptShards(c, tg);
      CopyShards(values, p, shards);
      VocabParallelCrossEntropy vce(tg);
      loss[g.rank()] = vce.Forward(net->Forward(x), y).Item();
      net->Backward(vce.Backward());
      for (const auto& e : p.entries()) {
        const double diff =
            RelativeDifference(e.param->grad.ToVector(), Piece(grads, e.name, shards).ToVector());
        if (diff > 1e-10)
          ADD_FAILURE() << ranks << " ranks, rank " << g.rank() << ": " << e.name << " differs by " << diff;
      }
    });
    for (int r = 0; r < ranks; ++r) {
      EXPECT_EQ(errors[r], "") << "rank " << r;
      EXPECT_NEAR(loss[r], want, 1e-12) << ranks << " ranks, rank " << r;
    }
  }
}

// Laid out with the whole model's seed, each rank starts from its piece of the whole GPT's initial
// values: different heads on different ranks, not the same shard drawn T times.
TEST(TensorParallelGpt, ARankStartsFromItsPieceOfTheWholeGpt) {
  SetNumThreads(1);
  const models::GptConfig c = Config();
  auto whole = models::BuildGpt(c);
  nn::FlatParameters wp(*whole, Device::CPU(), DType::kF32, kSeed);
  const auto values = Snapshot(wp);
  for (int ranks : {2, 4}) {
    std::vector<std::vector<double>> wte(ranks);
    std::vector<std::string> errors = RunRanks(ranks, [&](ProcessGroup& g) {
      const TensorGroup tg{&g, 30};
      auto net = BuildTensorParallelGpt(c, tg);
      nn::FlatParameters p(*net, Device::CPU(), DType::kF32, kSeed);
      InitializeAsWholeGpt(p, c, kSeed, tg);
      const auto shards = GptShards(c, tg);
      for (const auto& e : p.entries())
        if (e.param->value.ToVector() != Piece(values, e.name, shards).ToVector())
          ADD_FAILURE() << ranks << " ranks, rank " << g.rank() << ": " << e.name
                        << " is not its piece of the whole";
      wte[g.rank()] = p.Find("embed.wte").param->value.ToVector();
    });
    for (int r = 0; r < ranks; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
    EXPECT_NE(wte[0], wte[1]) << "ranks 0 and 1 hold the same rows of wte";
  }
}

TEST(TensorParallelGpt, TwentyAdamStepsEndWhereOneProcessEnds) {
  SetNumThreads(1);
  const auto whole = TrainWhole(20);
  const auto& end = whole.second;
  for (int ranks : {2, 4}) {
    std::vector<double> diff(ranks);
    std::vector<std::string> errors =
        RunRanks(ranks, [&](ProcessGroup& g) { diff[g.rank()] = TrainSplitAndCompare(g, end, 20); });
    for (int r = 0; r < ranks; ++r) {
      EXPECT_EQ(errors[r], "") << "rank " << r;
      EXPECT_LE(diff[r], 1e-5) << ranks << " ranks, rank " << r;
    }
  }
}

}  // namespace
}  // namespace tessera::dist
