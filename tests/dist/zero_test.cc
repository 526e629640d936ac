// ZeRO stages 1 to 3 (dist/zero.h, dist/zero3.h, dist/data_parallel.h) on the thread process
// group: after 50 steps of W1 and W2 on 2, 3 and 4 ranks every stage ends where stage 0 ends (1e-5
// relative), with gradient clipping by the global norm and with accumulation, with ranks whose
// micro-batches are empty; every rank holds the same parameters; what a rank holds shrinks as the
// formulas say; a stopped rank is named; the partition and its pieces.
#include <gtest/gtest.h>

#include "core/threads.h"
#include "tests/dist/dp_train.h"
#include "tests/dist/thread_ranks.h"

namespace tessera::dist {
namespace {

using thread_test::RunRanks;

struct Case {
  bool cnn;
  int ranks, accumulate;
  double clip;
};

std::string Describe(const Case& c, int stage) {
  return detail::StrCat(c.cnn ? "W2" : "W1", ", ", c.ranks, " ranks, ", c.accumulate, " micro-batches, clip ",
                        c.clip, ", stage ", stage);
}

// Every rank's parameters after `steps` steps at `stage`; rank r's at [r].
std::vector<std::vector<double>> TrainOnRanks(const Case& c, int stage, const dp_test::Data& data,
                                              int64_t global, int steps) {
  std::vector<std::vector<double>> ranks(c.ranks);
  std::vector<std::string> errors = RunRanks(c.ranks, [&](ProcessGroup& g) {
    dp_test::TrainConfig tc;
    tc.cnn = c.cnn;
    tc.accumulate = c.accumulate;
    tc.clip = c.clip;
    tc.zero_stage = stage;
    ranks[g.rank()] = dp_test::Train(data, global, steps, &g, tc);
  });
  for (int r = 0; r < c.ranks; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  return ranks;
}

void ExpectStagesMatchStageZero(const Case& c) {
  SetNumThreads(1);  // the ranks share this process's thread pool
  const int steps = 50;
  // Uneven per-rank batches with accumulation: 3 examples a rank in 2 micro-batches.
  const int64_t global = (c.cnn ? 3 : 5) * c.ranks;
  const dp_test::Data data = dp_test::MakeData(steps, global);
  const std::vector<double> stage0 = TrainOnRanks(c, 0, data, global, steps)[0];
  for (int stage : {1, 2, 3}) {
    SCOPED_TRACE(Describe(c, stage));
    std::vector<std::vector<double>> ranks = TrainOnRanks(c, stage, data, global, steps);
    for (int r = 1; r < c.ranks; ++r)
      EXPECT_TRUE(ranks[r] == ranks[0]) << "rank " << r << " ended elsewhere than rank 0";
    std::string worst;
    EXPECT_LE(dp_test::RelativeDifference(stage0, ranks[0], &worst), 1e-5) << worst;
  }
}

TEST(Zero, W1StagesMatchStageZeroOn2To4Ranks) {
  for (int n : {2, 3, 4}) ExpectStagesMatchStageZero({false, n, 1, 0});
}
TEST(Zero, W1WithClippingAndAccumulation) {
  for (int n : {2, 3, 4}) ExpectStagesMatchStageZero({false, n, 2, 0.05});
}
// The GPT at stages 1 and 2, with clipping and accumulation; stage 3 refuses its tied head by name.
TEST(Zero, GptStagesMatchStageZeroAndStage3RefusesTiedWeights) {
  SetNumThreads(1);
  const int steps = 20, ranks = 3;
  const int64_t global = 5 * ranks;
  const dp_test::Data data = dp_test::MakeTokenData(steps, global);
  auto train = [&](int stage) {
    std::vector<std::vector<double>> out(ranks);
    std::vector<std::string> errors = RunRanks(ranks, [&](ProcessGroup& g) {
      dp_test::TrainConfig tc;
      tc.gpt = true;
      tc.accumulate = 2;
      tc.clip = 0.5;
      tc.zero_stage = stage;
      out[g.rank()] = dp_test::Train(data, global, steps, &g, tc);
    });
    return std::make_pair(out, errors);
  };
  auto [stage0, errors0] = train(0);
  for (int stage : {1, 2}) {
    auto [ranks_out, errors] = train(stage);
    for (int r = 0; r < ranks; ++r) EXPECT_EQ(errors[r], "") << "stage " << stage << " rank " << r;
    std::string worst;
    EXPECT_LE(dp_test::RelativeDifference(stage0[0], ranks_out[0], &worst), 1e-5)
        << "stage " << stage << ": " << worst;
  }
  auto [unused, errors3] = train(3);
  for (int r = 0; r < ranks; ++r)
    EXPECT_NE(errors3[r].find("ZeRO stage 3 cannot shard this model: TiedLmHead"), std::string::npos)
        << errors3[r];
}

TEST(Zero, W2StagesMatchStageZeroWithClippingAndAccumulation) {
  for (int n : {2, 3, 4}) ExpectStagesMatchStageZero({true, n, 2, 0.05});
}

// 7 examples a step over 3 ranks (2, 2, 3) in 3 micro-batches: the first micro-batch of ranks 0
// and 1 is empty, rank 2's is not. A rank without examples still takes part in every gather
// (stage 3) and reduce, so the ranks stay matched and agree with stage 0.
TEST(Zero, RanksWithEmptyMicroBatchesStayMatched) {
  SetNumThreads(1);
  const int steps = 10;
  const dp_test::Data data = dp_test::MakeData(steps, 7);
  const Case c{false, 3, 3, 0.05};
  const std::vector<double> stage0 = TrainOnRanks(c, 0, data, 7, steps)[0];
  for (int stage : {2, 3}) {
    SCOPED_TRACE(Describe(c, stage));
    std::vector<std::vector<double>> ranks = TrainOnRanks(c, stage, data, 7, steps);
    for (int r = 1; r < c.ranks; ++r) EXPECT_TRUE(ranks[r] == ranks[0]) << "rank " << r;
    std::string worst;
    EXPECT_LE(dp_test::RelativeDifference(stage0, ranks[0], &worst), 1e-5) << worst;
  }
}

// At stage 3 a rank holds its own shard of the parameters and nothing else between steps: the
// values outside it read as zeros until gathered.
TEST(Zero, AtStage3ARankHoldsOnlyItsShardBetweenSteps) {
  SetNumThreads(1);
  const dp_test::Data data = dp_test::MakeData(2, 8);
  std::vector<std::vector<double>> flat(2);
  std::vector<int64_t> begin(2), end(2);
  std::vector<std::string> errors = RunRanks(2, [&](ProcessGroup& g) {
    dp_test::TrainConfig tc;
    tc.zero_stage = 3;
    tc.sharded_values = &flat[g.rank()];
    dp_test::Train(data, 8, 2, &g, tc);
  });
  for (const std::string& e : errors) ASSERT_EQ(e, "");
  ASSERT_EQ(flat[0].size(), flat[1].size());
  const size_t half = flat[0].size() / 2;
  int64_t nonzero_outside = 0, nonzero_inside = 0;
  for (int r = 0; r < 2; ++r)
    for (size_t i = 0; i < flat[r].size(); ++i) {
      const bool mine = (i < half) == (r == 0);
      if (flat[r][i] != 0) (mine ? nonzero_inside : nonzero_outside) += 1;
    }
  EXPECT_EQ(nonzero_outside, 0) << "values outside a rank's shard are held";
  EXPECT_GT(nonzero_inside, static_cast<int64_t>(half));  // most of both shards are nonzero
}

// A NaN in one rank's shard at stage 3 is seen by every rank (each checks only its own shard).
TEST(Zero, ANonFiniteParameterInOneShardIsSeenByEveryRank) {
  for (int stage : {0, 3}) {
    std::vector<int> finite(3, -1);
    std::vector<std::string> errors = RunRanks(3, [&](ProcessGroup& g) {
      auto net = models::BuildMlp({});
      DataParallel::Options o;
      o.zero_stage = stage;
      DataParallel dp(*net, 1, &g, o,
                      [](const Tensor& v, const Tensor& gr) { return std::make_unique<optim::Adam>(v, gr); });
      dp.Join();
      bool before = dp.ParametersFinite();
      // Rank 2 spoils the last element of its own shard (at stage 0: of its copy, which is all).
      if (g.rank() == 2) dp.params().values().data<float>()[dp.params().numel() - 1] = NAN;
      finite[g.rank()] = before && !dp.ParametersFinite() ? 0 : 1;
    });
    for (const std::string& e : errors) ASSERT_EQ(e, "");
    for (int r = 0; r < 3; ++r)
      EXPECT_EQ(finite[r], stage == 3 || r == 2 ? 0 : 1) << "stage " << stage << ", rank " << r;
  }
}

// A rank that stops taking part in a stage-2 step: every other rank fails within the deadline,
// naming the reduce and the rank, never hangs.
TEST(Zero, ARankThatStopsIsNamedByTheOthersWithinTheDeadline) {
  SetNumThreads(1);
  const dp_test::Data data = dp_test::MakeData(3, 9);
  std::vector<std::string> errors = RunRanks(3, [&](ProcessGroup& g) {
    dp_test::TrainConfig tc;
    tc.zero_stage = 2;
    tc.timeout_s = 1;
    if (g.rank() == 2) tc.stop_after = 1;
    dp_test::Train(data, 9, 3, &g, tc);
  });
  EXPECT_EQ(errors[2], "");
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(errors[r].find("reduce #"), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("did not complete within 1 s: ranks that did not arrive: [2]"),
              std::string::npos)
        << errors[r];
  }
}

// At stage 3 the first collective of a step is the gather of the first layer's parameters: the
// ranks still running name it (a broadcast) and the rank that stopped.
TEST(Zero, ARankThatStopsDuringAStage3GatherIsNamed) {
  SetNumThreads(1);
  const dp_test::Data data = dp_test::MakeData(3, 9);
  std::vector<std::string> errors = RunRanks(3, [&](ProcessGroup& g) {
    dp_test::TrainConfig tc;
    tc.zero_stage = 3;
    tc.timeout_s = 1;
    if (g.rank() == 1) tc.stop_after = 1;
    dp_test::Train(data, 9, 3, &g, tc);
  });
  for (int r : {0, 2}) {
    EXPECT_NE(errors[r].find("broadcast #"), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("did not complete within 1 s: ranks that did not arrive: [1]"),
              std::string::npos)
        << errors[r];
  }
}

// The clip must bind for the tests above to test the global norm: at 0.05 it does from step 1.
TEST(Zero, TheClipInTheseTestsBinds) {
  SetNumThreads(1);
  const dp_test::Data data = dp_test::MakeData(1, 10);
  dp_test::TrainConfig plain, clipped;
  clipped.clip = 0.05;
  std::string worst;
  EXPECT_GT(dp_test::RelativeDifference(dp_test::Train(data, 10, 1, nullptr, plain),
                                        dp_test::Train(data, 10, 1, nullptr, clipped), &worst),
            1e-4);
}

// Per rank: parameters whole until stage 3; gradients whole until stage 2; optimizer state (Adam:
// 2 moments) divided by N from stage 1 -- the ZeRO paper's 4 + 4 + 8, 4 + 4 + 8/N, 4 + 4/N + 8/N
// and 4/N + 4/N + 8/N bytes.
TEST(Zero, WhatARankHoldsFollowsTheFormulas) {
  for (int stage : {0, 1, 2, 3}) {
    std::vector<DataParallel::Memory> held(4);
    int64_t numel = 0;
    std::vector<std::string> errors = RunRanks(4, [&](ProcessGroup& g) {
      auto net = models::BuildMlp({});
      DataParallel::Options o;
      o.zero_stage = stage;
      DataParallel dp(*net, 1, &g, o,
                      [](const Tensor& v, const Tensor& gr) { return std::make_unique<optim::Adam>(v, gr); });
      dp.Join();
      held[g.rank()] = dp.Held();
      if (g.rank() == 0) numel = dp.params().numel();
    });
    for (const std::string& e : errors) ASSERT_EQ(e, "");
    const int64_t psi = numel * 4;
    SCOPED_TRACE("stage " + std::to_string(stage));
    for (const DataParallel::Memory& m : held) {
      EXPECT_EQ(m.parameter_bytes, stage >= 3 ? psi / 4 : psi);
      EXPECT_EQ(m.gathered_unit_bytes > 0, stage >= 3);
      EXPECT_EQ(m.gradient_bytes, stage >= 2 ? psi / 4 : psi);
      EXPECT_EQ(m.optimizer_state_bytes, stage >= 1 ? 2 * psi / 4 : 2 * psi);
    }
    if (stage > 0) {
      EXPECT_EQ(numel % 4, 0) << "the flat buffers are padded to a multiple of the ranks";
    }
  }
}

TEST(Zero, PiecesAreCutAtShardBoundariesWithTheirOwners) {
  ZeroPartition p;
  p.numel = 12;
  p.world = 3;
  p.rank = 1;
  EXPECT_EQ(p.begin(), 4);
  EXPECT_EQ(p.end(), 8);
  std::vector<ZeroPartition::Piece> pieces = p.Split(2, 11);
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].begin, 2);
  EXPECT_EQ(pieces[0].end, 4);
  EXPECT_EQ(pieces[0].owner, 0);
  EXPECT_EQ(pieces[1].begin, 4);
  EXPECT_EQ(pieces[1].end, 8);
  EXPECT_EQ(pieces[1].owner, 1);
  EXPECT_EQ(pieces[2].begin, 8);
  EXPECT_EQ(pieces[2].end, 11);
  EXPECT_EQ(pieces[2].owner, 2);
  EXPECT_TRUE(p.Split(5, 5).empty());
  std::vector<std::unique_ptr<ProcessGroup>> gs = MakeThreadGroups(3);
  EXPECT_THROW(MakeZeroPartition(10, *gs[0]), ValueError);
}

}  // namespace
}  // namespace tessera::dist
