// The thread process group (dist/threads/): every collective on 1 to 4 ranks and on sizes 0, 1,
// odd, not divisible by the group and large, against closed-form results; mismatched calls, a
// stopped rank and a broken group; Split.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>

#include "tests/dist/thread_ranks.h"

namespace tessera::dist {
namespace {

using thread_test::RunRanks;

void ExpectNoErrors(const std::vector<std::string>& errors) {
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

// Element i of rank r's input: distinct across ranks and elements, exact in f32.
double Value(int r, int64_t i) { return static_cast<double>((i % 1000) * 10 + r); }

Tensor RankInput(int r, int64_t n, DType dt = DType::kF32) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = Value(r, i);
  return Tensor::FromVector(v, {n}, dt);
}

const std::vector<int64_t> kSizes = {0, 1, 7, 1000, (int64_t{1} << 16) + 3};

TEST(ThreadGroup, AllReduceEveryOpSizeAndDtype) {
  for (int n : {1, 2, 3, 4}) {
    ExpectNoErrors(RunRanks(n, [n](ProcessGroup& g) {
      for (int64_t size : kSizes)
        for (DType dt : {DType::kF32, DType::kF64, DType::kI64})
          for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
            Tensor t = RankInput(g.rank(), size, dt);
            CollectiveOptions o;
            o.op = op;
            g.AllReduce(t, o)->Wait();
            std::vector<double> got = t.ToVector();
            for (int64_t i = 0; i < size; ++i) {
              double sum = 0;
              for (int r = 0; r < n; ++r) sum += Value(r, i);
              double want = op == ReduceOp::kSum   ? sum
                            : op == ReduceOp::kMax ? Value(n - 1, i)
                            : op == ReduceOp::kMin ? Value(0, i)
                                                   : sum / n;
              // The average is the sum divided in the tensor's own type.
              if (op == ReduceOp::kAvg && dt == DType::kI64) want = std::trunc(sum / n);
              if (op == ReduceOp::kAvg && dt == DType::kF32) want = static_cast<float>(sum) / static_cast<float>(n);
              ASSERT_DOUBLE_EQ(got[i], want) << "size " << size << " element " << i << " of " << n << " ranks";
            }
          }
    }));
  }
}

TEST(ThreadGroup, ReduceScatterAllGatherAndBroadcastOnEverySize) {
  for (int n : {1, 2, 3, 4}) {
    ExpectNoErrors(RunRanks(n, [n](ProcessGroup& g) {
      const int me = g.rank();
      for (int64_t block : kSizes) {
        // reduce_scatter: block `me` of the sum of every rank's input.
        Tensor in = RankInput(me, block * n), out = Tensor::Full({block}, -1, DType::kF32);
        g.ReduceScatter(in, out)->Wait();
        std::vector<double> got = out.ToVector();
        for (int64_t i = 0; i < block; ++i) {
          double sum = 0;
          for (int r = 0; r < n; ++r) sum += Value(r, me * block + i);
          ASSERT_EQ(got[i], sum) << "reduce_scatter block " << block << " element " << i;
        }
        // allgather: rank r's input at block r.
        Tensor mine = RankInput(me, block), all = Tensor::Full({block * n}, -1, DType::kF32);
        g.AllGather(mine, all)->Wait();
        got = all.ToVector();
        for (int r = 0; r < n; ++r)
          for (int64_t i = 0; i < block; ++i) ASSERT_EQ(got[r * block + i], Value(r, i)) << "allgather block " << r;
        // broadcast from the last rank.
        Tensor b = RankInput(me, block);
        g.Broadcast(b, n - 1)->Wait();
        got = b.ToVector();
        for (int64_t i = 0; i < block; ++i) ASSERT_EQ(got[i], Value(n - 1, i)) << "broadcast element " << i;
      }
      g.Barrier()->Wait();
    }));
  }
}

// reduce: the root ends with the sum, every other rank keeps its input; allgather in place.
TEST(ThreadGroup, ReduceToEveryRootAndAllGatherInPlaceOnEverySize) {
  for (int n : {1, 2, 3, 4}) {
    ExpectNoErrors(RunRanks(n, [n](ProcessGroup& g) {
      const int me = g.rank();
      for (int64_t size : kSizes)
        for (int root = 0; root < n; ++root) {
          Tensor t = RankInput(me, size);
          g.Reduce(t, root)->Wait();
          std::vector<double> got = t.ToVector();
          for (int64_t i = 0; i < size; ++i) {
            double sum = 0;
            for (int r = 0; r < n; ++r) sum += Value(r, i);
            ASSERT_EQ(got[i], me == root ? sum : Value(me, i)) << "reduce to " << root << ", element " << i;
          }
        }
      for (int64_t block : kSizes) {
        Tensor all = Tensor::Full({block * n}, -1, DType::kF32);
        Tensor mine = all.Slice0(me * block, (me + 1) * block);
        mine.CopyFrom(RankInput(me, block));
        g.AllGather(mine, all)->Wait();
        std::vector<double> got = all.ToVector();
        for (int r = 0; r < n; ++r)
          for (int64_t i = 0; i < block; ++i) ASSERT_EQ(got[r * block + i], Value(r, i)) << "block " << r;
      }
    }));
  }
}

// Several collectives in flight at once complete, with the same sequence numbers on every rank.
TEST(ThreadGroup, OutstandingCollectivesCompleteInAnyWaitOrder) {
  ExpectNoErrors(RunRanks(3, [](ProcessGroup& g) {
    std::vector<Tensor> ts;
    std::vector<std::shared_ptr<Work>> works;
    for (int k = 0; k < 10; ++k) {
      ts.push_back(Tensor::Full({5}, k + g.rank(), DType::kF32));
      works.push_back(g.AllReduce(ts.back()));
      EXPECT_EQ(works.back()->sequence(), static_cast<uint64_t>(k + 1));
    }
    for (int k = 9; k >= 0; --k) {  // wait newest first
      works[k]->Wait();
      EXPECT_TRUE(works[k]->IsCompleted());
      EXPECT_EQ(ts[k].ToVector()[0], 3 * k + 3);  // k + 0, k + 1, k + 2
    }
  }));
}

// A rank that asks for another collective, or another size, fails the collective on every rank.
TEST(ThreadGroup, MismatchedCollectivesFailOnEveryRank) {
  std::vector<std::string> errors = RunRanks(3, [](ProcessGroup& g) {
    Tensor t = Tensor::Zeros({g.rank() == 2 ? 5 : 4}, DType::kF32);
    g.AllReduce(t)->Wait();
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_NE(errors[r].find("allreduce #1 (" + std::string(r == 2 ? "5" : "4") + " f32, group of 3) failed: the "
                             "ranks issued different collectives at this point: rank 0 allreduce #1 (4 f32, group "
                             "of 3), rank 2 allreduce #1 (5 f32, group of 3)"),
              std::string::npos)
        << "rank " << r << ": " << errors[r];
  }
  errors = RunRanks(2, [](ProcessGroup& g) {
    Tensor t = Tensor::Zeros({4}, DType::kF32);
    if (g.rank() == 0) g.AllReduce(t)->Wait();
    else g.Broadcast(t, 0)->Wait();
  });
  for (const std::string& e : errors) EXPECT_NE(e.find("rank 1 broadcast #1 (4 f32 from rank 0, "), std::string::npos) << e;
}

// A rank that stops (here: never issues the second allreduce) is named by the others within the
// deadline; their group is broken afterwards, and a late arrival cannot complete the collective.
TEST(ThreadGroup, AStoppedRankIsNamedWithinTheDeadlineAndBreaksTheGroup) {
  std::atomic<int> gave_up{0};
  std::vector<std::string> errors = RunRanks(3, [&](ProcessGroup& g) {
    Tensor t = Tensor::Full({4}, 1, DType::kF32);
    g.AllReduce(t)->Wait();  // every rank is here (the default deadline: threads may start slowly)
    CollectiveOptions o;
    o.timeout_s = 0.3;
    if (g.rank() == 2) {
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (gave_up.load() < 2 && std::chrono::steady_clock::now() < give_up)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      g.AllReduce(t, o)->Wait();  // too late
      return;
    }
    struct Count {  // however this rank's wait ends, rank 2 stops waiting for it
      std::atomic<int>& n;
      ~Count() { ++n; }
    } count{gave_up};
    const auto t0 = std::chrono::steady_clock::now();
    try {
      g.AllReduce(t, o)->Wait();
    } catch (const CommTimeoutError& e) {
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      // The first rank to reach its deadline gives up for both (the other may have issued it a
      // little later).
      EXPECT_GE(waited, 0.25);
      EXPECT_LT(waited, 5.0);
      EXPECT_NE(std::string(e.what()).find("allreduce #2 (4 f32, group of 3) did not complete within 0.3 s: ranks "
                                           "that did not arrive: [2]"),
                std::string::npos)
          << e.what();
      g.Barrier(o);  // broken now: throws at once
      ADD_FAILURE() << "a broken group took a barrier";
    }
  });
  for (int r = 0; r < 2; ++r)
    EXPECT_NE(errors[r].find("barrier: the process group is broken and cannot be used: allreduce #2 (4 f32, group "
                             "of 3) did not complete within 0.3 s"),
              std::string::npos)
        << "rank " << r << ": " << errors[r];
  EXPECT_NE(errors[2].find("allreduce #2 (4 f32, group of 3) cannot complete: rank "), std::string::npos) << errors[2];
  EXPECT_NE(errors[2].find(" gave up waiting for it"), std::string::npos) << errors[2];
}

TEST(ThreadGroup, SplitOrdersBySubgroupKeyAndReducesWithinIt) {
  ExpectNoErrors(RunRanks(4, [](ProcessGroup& g) {
    // Even and odd ranks, in reverse order of rank within each.
    std::unique_ptr<ProcessGroup> sub = g.Split(g.rank() % 2, -g.rank());
    EXPECT_EQ(sub->size(), 2);
    EXPECT_EQ(sub->rank(), g.rank() < 2 ? 1 : 0);
    Tensor t = Tensor::Full({3}, g.rank(), DType::kF32);
    sub->AllReduce(t)->Wait();
    EXPECT_EQ(t.ToVector()[0], g.rank() % 2 == 0 ? 0 + 2 : 1 + 3);
    // The parent goes on working, its sequence independent of the sub-group's.
    Tensor u = Tensor::Full({1}, 1, DType::kF32);
    g.AllReduce(u)->Wait();
    EXPECT_EQ(u.ToVector()[0], 4);
  }));
}

TEST(ThreadGroup, BadArgumentsAreRefusedBeforeAnythingIsIssued) {
  std::vector<std::unique_ptr<ProcessGroup>> gs = MakeThreadGroups(2);
  Tensor in = Tensor::Zeros({5}, DType::kF32), out = Tensor::Zeros({2}, DType::kF32);
  EXPECT_THROW(gs[0]->ReduceScatter(in, out), ShapeError);
  EXPECT_THROW(gs[0]->AllGather(out, in), ShapeError);
  EXPECT_THROW(gs[0]->Broadcast(in, 2), ValueError);
  EXPECT_THROW(gs[0]->Reduce(in, -1), ValueError);
  Tensor four = Tensor::Zeros({4}, DType::kF32);
  Tensor block1 = four.Slice0(2, 4);  // rank 0's block is [0, 2): any other overlap is refused
  EXPECT_THROW(gs[0]->AllGather(block1, four), ValueError);
  CollectiveOptions o;
  o.timeout_s = 0;
  EXPECT_THROW(gs[0]->AllReduce(in, o), ValueError);
  EXPECT_THROW(gs[0]->Split(-1, 0), ValueError);
  EXPECT_THROW(MakeThreadGroups(0), ValueError);
  // Nothing was issued: both ranks start at collective #1.
  std::vector<std::shared_ptr<Work>> w;
  for (auto& g : gs) w.push_back(g->Barrier());
  for (auto& x : w) {
    x->Wait();
    EXPECT_EQ(x->sequence(), 1u);
  }
}

}  // namespace
}  // namespace tessera::dist
