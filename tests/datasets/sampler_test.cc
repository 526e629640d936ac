#include "datasets/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "core/random.h"
#include "tests/datasets/test_util.h"

namespace tessera::datasets {
namespace {

using testing::ThrownMessage;
using Indices = std::vector<int64_t>;

Indices Concat(const std::vector<Indices>& parts) {
  Indices out;
  for (const Indices& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// All global batches of an epoch, concatenated.
Indices EpochIndices(const DistributedSampler& s, int64_t epoch) {
  std::vector<Indices> batches;
  for (int64_t step = 0; step < s.steps_per_epoch(); ++step) batches.push_back(s.GlobalBatch(epoch, step));
  return Concat(batches);
}

Indices Iota(int64_t begin, int64_t end) {
  Indices v(end - begin);
  std::iota(v.begin(), v.end(), begin);
  return v;
}

TEST(DistributedSampler, ValidatesArgumentsNamingTheValues) {
  EXPECT_CONTAINS(ThrownMessage<ValueError>([] { DistributedSampler(0, 4, 1, true, false); }),
                  "dataset_size must be >= 1, got 0");
  EXPECT_CONTAINS(ThrownMessage<ValueError>([] { DistributedSampler(10, 0, 1, true, false); }),
                  "global_batch must be >= 1, got 0");
  EXPECT_CONTAINS(ThrownMessage<ValueError>([] { DistributedSampler(10, 4, 1, true, false, 0, 0); }),
                  "world must be >= 1, got 0");
  EXPECT_CONTAINS(ThrownMessage<ValueError>([] { DistributedSampler(10, 4, 1, true, false, 2, 2); }),
                  "rank 2 is outside [0, 2)");
  EXPECT_CONTAINS(ThrownMessage<ValueError>([] { DistributedSampler(10, 4, 1, true, false, -1, 2); }),
                  "rank -1 is outside");
  EXPECT_CONTAINS(ThrownMessage<ValueError>([] { DistributedSampler(10, 6, 1, true, false, 0, 4); }),
                  "global_batch 6 must be divisible by world 4");
  EXPECT_CONTAINS(ThrownMessage<ValueError>([] { DistributedSampler(3, 4, 1, true, true); }), "leaves no step");
  EXPECT_NO_THROW(DistributedSampler(3, 4, 1, true, false, 3, 4));
}

TEST(DistributedSampler, StepsPerEpoch) {
  EXPECT_EQ(DistributedSampler(10, 4, 0, true, false).steps_per_epoch(), 3);
  EXPECT_EQ(DistributedSampler(10, 4, 0, true, true).steps_per_epoch(), 2);
  EXPECT_EQ(DistributedSampler(12, 4, 0, true, false).steps_per_epoch(), 3);
  EXPECT_EQ(DistributedSampler(12, 4, 0, true, true).steps_per_epoch(), 3);
  EXPECT_EQ(DistributedSampler(1, 1, 0, true, false).steps_per_epoch(), 1);
  EXPECT_EQ(DistributedSampler(3, 8, 0, true, false).steps_per_epoch(), 1);
}

TEST(DistributedSampler, RankSlicesAreDisjointAndMakeUpTheGlobalBatch) {
  // 37 = 4 * 8 + 5: a short last batch; 5 does not divide by 2 or 4.
  for (int world : {1, 2, 4, 8}) {
    for (int64_t step = 0; step < 5; ++step) {
      std::vector<Indices> locals;
      Indices global;
      for (int r = 0; r < world; ++r) {
        DistributedSampler s(37, 8, 42, true, false, r, world);
        locals.push_back(s.LocalBatch(3, step));
        if (r == 0) global = s.GlobalBatch(3, step);
        EXPECT_EQ(s.LocalOffset(step), static_cast<int64_t>(global.size()) * r / world);
      }
      EXPECT_EQ(Concat(locals), global) << "world " << world << " step " << step;
      std::set<int64_t> distinct(global.begin(), global.end());
      EXPECT_EQ(distinct.size(), global.size());
      for (int r = 0; r < world; ++r) {
        // floor-based slices: [len*r/W, len*(r+1)/W).
        int64_t len = static_cast<int64_t>(global.size());
        EXPECT_EQ(static_cast<int64_t>(locals[r].size()), len * (r + 1) / world - len * r / world);
        if (step < 4) {
          EXPECT_EQ(static_cast<int64_t>(locals[r].size()), 8 / world);
        }
      }
    }
  }
  // A last batch of 3 over 4 ranks: slices of 0, 1, 1, 1.
  std::vector<size_t> sizes;
  for (int r = 0; r < 4; ++r) sizes.push_back(DistributedSampler(11, 4, 5, true, false, r, 4).LocalBatch(0, 2).size());
  EXPECT_EQ(sizes, (std::vector<size_t>{0, 1, 1, 1}));
}

// Run steps count over epochs: 37 examples in batches of 8 make 5 steps an epoch (the fifth of 5).
TEST(DistributedSampler, RunStepsGiveTheGlobalBatchSizeAndEachRanksPosition) {
  for (int world : {1, 2, 4}) {
    for (int r = 0; r < world; ++r) {
      DistributedSampler s(37, 8, 42, true, false, r, world);
      for (int64_t run_step = 0; run_step < 12; ++run_step) {
        const int64_t in_epoch = run_step % 5;
        EXPECT_EQ(s.GlobalBatchSize(run_step), in_epoch == 4 ? 5 : 8) << run_step;
        EXPECT_EQ(s.GlobalBatchSize(run_step), static_cast<int64_t>(s.GlobalBatch(run_step / 5, in_epoch).size()));
        EXPECT_EQ(s.RunPosition(run_step), static_cast<uint64_t>(run_step * 8 + s.LocalOffset(in_epoch)));
      }
    }
  }
  // The same example has the same position whatever the world: example k of the global batch is at
  // run_step * B + k.
  DistributedSampler one(37, 8, 42, true, false, 0, 1), third_of_four(37, 8, 42, true, false, 2, 4);
  EXPECT_EQ(third_of_four.RunPosition(6), one.RunPosition(6) + 4);
}

TEST(DistributedSampler, EpochCoversEveryIndexExactlyOnce) {
  for (bool shuffle : {false, true}) {
    DistributedSampler s(37, 8, 7, shuffle, false);
    ASSERT_EQ(s.steps_per_epoch(), 5);
    EXPECT_EQ(s.GlobalBatch(0, 4).size(), 5u);  // the short last batch
    for (int64_t epoch : {0, 1, 5}) {
      Indices all = EpochIndices(s, epoch);
      std::sort(all.begin(), all.end());
      EXPECT_EQ(all, Iota(0, 37)) << "shuffle " << shuffle << " epoch " << epoch;
    }
    // drop_last: 4 full batches, 32 distinct indices, the other 5 left out this epoch.
    DistributedSampler d(37, 8, 7, shuffle, true);
    Indices kept = EpochIndices(d, 0);
    EXPECT_EQ(kept.size(), 32u);
    EXPECT_EQ(std::set<int64_t>(kept.begin(), kept.end()).size(), 32u);
  }
}

TEST(DistributedSampler, GlobalBatchDoesNotDependOnRankCount) {
  for (int64_t step = 0; step < 5; ++step) {
    Indices one = DistributedSampler(37, 8, 99, true, false, 0, 1).GlobalBatch(2, step);
    for (int world : {2, 4}) {
      std::vector<Indices> locals;
      for (int r = 0; r < world; ++r)
        locals.push_back(DistributedSampler(37, 8, 99, true, false, r, world).LocalBatch(2, step));
      EXPECT_EQ(Concat(locals), one) << "world " << world << " step " << step;
      EXPECT_EQ(DistributedSampler(37, 8, 99, true, false, world - 1, world).GlobalBatch(2, step), one);
    }
  }
}

TEST(DistributedSampler, EpochsAndSeedsGiveDifferentPermutations) {
  DistributedSampler s(1000, 10, 1234, true, false);
  Indices e0 = s.EpochOrder(0), e1 = s.EpochOrder(1), e2 = s.EpochOrder(2);
  EXPECT_NE(e0, e1);
  EXPECT_NE(e1, e2);
  EXPECT_NE(e0, Iota(0, 1000));
  EXPECT_EQ(EpochIndices(s, 1), e1);
  // Same seed, another object: same order; asking epochs out of order changes nothing.
  DistributedSampler t(1000, 10, 1234, true, false);
  EXPECT_EQ(t.EpochOrder(2), e2);
  EXPECT_EQ(t.EpochOrder(0), e0);
  EXPECT_EQ(t.GlobalBatch(1, 7), s.GlobalBatch(1, 7));
  // Another seed: another order.
  EXPECT_NE(DistributedSampler(1000, 10, 1235, true, false).EpochOrder(0), e0);
}

TEST(DistributedSampler, ShuffleIsFisherYatesOverPhiloxEpochStream) {
  // The documented construction, so other tools can reproduce the order.
  const int64_t n = 50;
  const uint64_t seed = 77;
  for (int64_t epoch : {0, 3}) {
    Indices want = Iota(0, n);
    PhiloxGenerator gen(seed, static_cast<uint64_t>(epoch));
    for (int64_t i = n - 1; i > 0; --i) std::swap(want[i], want[gen.Below(i + 1)]);
    EXPECT_EQ(DistributedSampler(n, 5, seed, true, false).EpochOrder(epoch), want);
  }
}

TEST(DistributedSampler, NoShuffleKeepsFileOrder) {
  DistributedSampler s(10, 4, 3, /*shuffle=*/false, false, 1, 2);
  for (int64_t epoch : {0, 4}) {
    EXPECT_EQ(s.GlobalBatch(epoch, 0), Iota(0, 4));
    EXPECT_EQ(s.GlobalBatch(epoch, 2), Iota(8, 10));
    EXPECT_EQ(s.LocalBatch(epoch, 1), Iota(6, 8));
    EXPECT_EQ(s.LocalBatch(epoch, 2), Iota(9, 10));
  }
}

TEST(DistributedSampler, RejectsStepsAndEpochsOutOfRange) {
  DistributedSampler s(10, 4, 3, true, false);
  EXPECT_CONTAINS(ThrownMessage<ValueError>([&] { s.GlobalBatch(0, 3); }), "step 3 is outside [0, 3)");
  EXPECT_THROW(s.LocalBatch(0, -1), ValueError);
  EXPECT_THROW(s.GlobalBatch(-1, 0), ValueError);
}

TEST(EvalIndices, EveryExampleOnceInFileOrder) {
  EXPECT_EQ(EvalIndices(10, 0, 1), Iota(0, 10));
  for (int world : {2, 3, 4, 7}) {
    std::vector<Indices> parts;
    for (int r = 0; r < world; ++r) parts.push_back(EvalIndices(10, r, world));
    EXPECT_EQ(Concat(parts), Iota(0, 10)) << world;
  }
  EXPECT_EQ(EvalIndices(10, 1, 3), Iota(3, 6));
  EXPECT_EQ(EvalIndices(10, 2, 3), Iota(6, 10));
  EXPECT_EQ(EvalIndices(2, 0, 4), Indices{});
  EXPECT_EQ(EvalIndices(2, 3, 4), Indices{1});
  EXPECT_EQ(EvalIndices(0, 0, 2), Indices{});
  EXPECT_THROW(EvalIndices(10, 3, 3), ValueError);
  EXPECT_THROW(EvalIndices(10, 0, 0), ValueError);
}

}  // namespace
}  // namespace tessera::datasets
