// The MPI process group under mpirun (tests/CMakeLists.txt runs it on 1 to 4 ranks). Every rank
// runs every test; expected values are in closed form: rank r contributes r + 1 + (i mod 97) at
// element i, so sums, averages, maxima and minima are exact in f32 even at 4M elements.
//
// This file: each collective's results, order and arguments; collective_failures_test.cc, linked
// after it so that its tests run last: messages per collective and timeouts.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "dist/mpi/mpi_process_group.h"
#include "tests/dist/collectives_util.h"
#include "tests/dist/mpi_test_env.h"

namespace tessera::dist {
namespace {

// ---- allreduce -----------------------------------------------------------------------------------

template <typename T>
void CheckAllReduce(ReduceOp op) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  const int64_t edge = kEdge / int64_t{sizeof(T)};
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{3} * P + 1, edge, edge + 1, kLarge}) {
    SCOPED_TRACE(::testing::Message() << "n = " << n);
    Tensor t = Make<T>(n, [&](int64_t i) { return r + 1 + Mod(i); });
    auto work = w.AllReduce(t, Opts(op));
    work->Wait();
    EXPECT_TRUE(work->IsCompleted());
    EXPECT_TRUE(ElementsAre<T>(t, n, [&](int64_t i) { return Reduced(op, P, Mod(i)); }));
  }
}

TEST(MpiAllReduce, SumF32) { CheckAllReduce<float>(ReduceOp::kSum); }
TEST(MpiAllReduce, SumF64) { CheckAllReduce<double>(ReduceOp::kSum); }
TEST(MpiAllReduce, SumI32) { CheckAllReduce<int32_t>(ReduceOp::kSum); }
TEST(MpiAllReduce, SumI64) { CheckAllReduce<int64_t>(ReduceOp::kSum); }
TEST(MpiAllReduce, AvgF32) { CheckAllReduce<float>(ReduceOp::kAvg); }
TEST(MpiAllReduce, AvgF64) { CheckAllReduce<double>(ReduceOp::kAvg); }
TEST(MpiAllReduce, MaxF32) { CheckAllReduce<float>(ReduceOp::kMax); }
TEST(MpiAllReduce, MaxF64) { CheckAllReduce<double>(ReduceOp::kMax); }
TEST(MpiAllReduce, MinF32) { CheckAllReduce<float>(ReduceOp::kMin); }
TEST(MpiAllReduce, MinF64) { CheckAllReduce<double>(ReduceOp::kMin); }

TEST(MpiAllReduce, ViewIntoALargerBuffer) {
  // A bucket is a view into a flat buffer: only its elements change.
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  Tensor flat = Make<float>(20, [&](int64_t i) { return r + 1 + Mod(i); });
  Tensor bucket = flat.View(5, {3, 3});
  w.AllReduce(bucket, Opts())->Wait();
  EXPECT_TRUE(ElementsAre<float>(flat, 20, [&](int64_t i) {
    return i >= 5 && i < 14 ? Reduced(ReduceOp::kSum, P, Mod(i)) : r + 1 + Mod(i);
  }));
}

// ---- reduce -------------------------------------------------------------------------------------

template <typename T>
void CheckReduce(ReduceOp op) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  for (int root = 0; root < P; ++root)
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{3} * P + 1,
                      kReduceEdge / int64_t{sizeof(T)}, kReduceEdge / int64_t{sizeof(T)} + 1, kLarge}) {
      SCOPED_TRACE(::testing::Message() << "root = " << root << ", n = " << n);
      Tensor t = Make<T>(n, [&](int64_t i) { return r + 1 + Mod(i); });
      w.Reduce(t, root, Opts(op))->Wait();
      if (r == root)
        EXPECT_TRUE(ElementsAre<T>(t, n, [&](int64_t i) { return Reduced(op, P, Mod(i)); }));
      else
        EXPECT_TRUE(ElementsAre<T>(t, n, [&](int64_t i) { return r + 1 + Mod(i); }))
            << "a non-root's input changed";
    }
}

TEST(MpiReduce, SumF32ToEveryRoot) { CheckReduce<float>(ReduceOp::kSum); }
TEST(MpiReduce, AvgF64ToEveryRoot) { CheckReduce<double>(ReduceOp::kAvg); }
TEST(MpiReduce, MaxI64ToEveryRoot) { CheckReduce<int64_t>(ReduceOp::kMax); }

// ---- reduce_scatter ------------------------------------------------------------------------------

template <typename T>
void CheckReduceScatter(ReduceOp op) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  const int64_t edge = kBigEdge / int64_t{sizeof(T)} / P;  // per rank
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, edge, edge + 1, kLarge / P}) {
    SCOPED_TRACE(::testing::Message() << "n = " << n);
    Tensor input = Make<T>(P * n, [&](int64_t i) { return r + 1 + Mod(i); });
    Tensor output = Make<T>(n, [](int64_t) { return -1; });
    w.ReduceScatter(input, output, Opts(op))->Wait();
    EXPECT_TRUE(ElementsAre<T>(output, n, [&](int64_t i) { return Reduced(op, P, Mod(r * n + i)); }));
  }
}

TEST(MpiReduceScatter, SumF32) { CheckReduceScatter<float>(ReduceOp::kSum); }
TEST(MpiReduceScatter, SumF64) { CheckReduceScatter<double>(ReduceOp::kSum); }
TEST(MpiReduceScatter, AvgF32) { CheckReduceScatter<float>(ReduceOp::kAvg); }
TEST(MpiReduceScatter, AvgF64) { CheckReduceScatter<double>(ReduceOp::kAvg); }
TEST(MpiReduceScatter, MaxF32) { CheckReduceScatter<float>(ReduceOp::kMax); }

// ---- allgather -----------------------------------------------------------------------------------

template <typename T>
void CheckAllGather() {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  const int64_t edge = kBigEdge / int64_t{sizeof(T)} / P;  // per rank
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, edge, edge + 1, kLarge / P}) {
    SCOPED_TRACE(::testing::Message() << "n = " << n);
    Tensor input = Make<T>(n, [&](int64_t i) { return (r + 1) * 100 + Mod(i); });
    Tensor output = Make<T>(P * n, [](int64_t) { return -1; });
    w.AllGather(input, output, Opts())->Wait();
    EXPECT_TRUE(ElementsAre<T>(output, P * n, [&](int64_t j) { return (j / n + 1) * 100 + Mod(j % n); }));
  }
}

TEST(MpiAllGather, F32) { CheckAllGather<float>(); }
// In place: each rank's input is its own block of the output (MPI_IN_PLACE).
TEST(MpiAllGather, InPlace) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, kLarge / P}) {
    SCOPED_TRACE(::testing::Message() << "n = " << n);
    Tensor output =
        Make<float>(P * n, [&](int64_t j) { return j / n == r ? (r + 1) * 100 + Mod(j % n) : -1; });
    Tensor mine = output.Slice0(r * n, (r + 1) * n);
    w.AllGather(mine, output, Opts())->Wait();
    EXPECT_TRUE(ElementsAre<float>(output, P * n, [&](int64_t j) { return (j / n + 1) * 100 + Mod(j % n); }));
  }
}
TEST(MpiAllGather, F64) { CheckAllGather<double>(); }
TEST(MpiAllGather, I32) { CheckAllGather<int32_t>(); }

// ---- broadcast -----------------------------------------------------------------------------------

template <typename T>
void CheckBroadcast() {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  for (int root = 0; root < P; ++root) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{3} * P + 1, kLarge}) {
      SCOPED_TRACE(::testing::Message() << "root = " << root << ", n = " << n);
      const auto sent = [&](int64_t i) { return (root + 1) * 1000 + Mod(i); };
      Tensor t = r == root ? Make<T>(n, sent) : Make<T>(n, [](int64_t) { return -7; });
      w.Broadcast(t, root, Opts())->Wait();
      EXPECT_TRUE(ElementsAre<T>(t, n, sent));
    }
  }
}

TEST(MpiBroadcast, F32FromEveryRoot) { CheckBroadcast<float>(); }
TEST(MpiBroadcast, F64FromEveryRoot) { CheckBroadcast<double>(); }

// ---- barrier -------------------------------------------------------------------------------------

TEST(MpiBarrier, WaitsForTheLastRank) {
  ProcessGroup& w = World();
  w.Barrier(Opts())->Wait();
  // Rank 0 enters late; no rank may leave before that moment. The ranks share one host here, so
  // steady_clock (CLOCK_MONOTONIC) is one clock for all of them; a rank descheduled for a while
  // changes nothing.
  if (w.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double entered = std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  w.Barrier(Opts())->Wait();
  const double left = std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  Tensor last_entry = Make<double>(1, [&](int64_t) { return entered; });
  w.Broadcast(last_entry, 0, Opts())->Wait();
  EXPECT_GE(left, last_entry.data<double>()[0])
      << "rank " << w.rank() << " left the barrier before rank 0 entered it";
  auto a = w.Barrier(Opts());
  auto b = w.Barrier(Opts());
  EXPECT_EQ(b->sequence(), a->sequence() + 1);
  b->Wait();
  a->Wait();
}

// ---- asynchrony and order ------------------------------------------------------------------------

TEST(MpiAsync, TenAllReducesCompleteInIssueOrder) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  std::vector<Tensor> tensors;
  std::vector<std::shared_ptr<Work>> works;
  for (int j = 0; j < 10; ++j) {
    tensors.push_back(Make<float>(1000 + 37 * j, [&](int64_t i) { return r + 1 + Mod(i + j); }));
    works.push_back(w.AllReduce(tensors.back(), Opts()));
  }
  for (int j = 0; j < 10; ++j) EXPECT_EQ(works[j]->sequence(), works[0]->sequence() + j);
  // When the last one has completed, every earlier one already has: they complete in issue order.
  works[9]->Wait();
  for (int j = 0; j < 9; ++j)
    EXPECT_TRUE(works[j]->IsCompleted()) << "allreduce " << j << " after allreduce 9";
  for (int j = 8; j >= 0; --j) works[j]->Wait();
  for (int j = 0; j < 10; ++j) {
    EXPECT_TRUE(works[j]->IsCompleted());
    EXPECT_TRUE(ElementsAre<float>(tensors[j], 1000 + 37 * j,
                                   [&](int64_t i) { return Reduced(ReduceOp::kSum, P, Mod(i + j)); }))
        << "allreduce " << j;
  }

  // Every rank numbered them alike.
  Tensor mine = Make<int64_t>(1, [&](int64_t) { return static_cast<double>(works[0]->sequence()); });
  Tensor all = Make<int64_t>(P, [](int64_t) { return -1; });
  w.AllGather(mine, all, Opts())->Wait();
  EXPECT_TRUE(
      ElementsAre<int64_t>(all, P, [&](int64_t) { return static_cast<double>(works[0]->sequence()); }));
}

TEST(MpiAsync, DependentCollectivesOnOneTensorRunInOrder) {
  // sum, then sum again, then max, all queued before any wait: only issue order gives P*S.
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  Tensor t = Make<double>(kLarge / 4, [&](int64_t i) { return r + 1 + Mod(i); });
  auto first = w.AllReduce(t, Opts());
  auto second = w.AllReduce(t, Opts());
  auto third = w.AllReduce(t, Opts(ReduceOp::kMax));
  third->Wait();
  EXPECT_TRUE(first->IsCompleted());
  EXPECT_TRUE(second->IsCompleted());
  EXPECT_TRUE(
      ElementsAre<double>(t, kLarge / 4, [&](int64_t i) { return P * Reduced(ReduceOp::kSum, P, Mod(i)); }));
}

// Small all-gathers, all-reduces and reduce-scatters are started by the issuing thread when the
// group is idle, and queued for the worker otherwise: interleaved with large ones, each must still
// run in issue order and give the right answer, whichever thread starts it.
TEST(MpiAsync, SmallAndLargeCollectivesInterleavedCompleteInIssueOrder) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  const int64_t small = 3 * P + 1, large = kLarge / 4;
  Tensor a = Make<float>(small, [&](int64_t i) { return r + 1 + Mod(i); });
  Tensor big = Make<float>(large, [&](int64_t i) { return r + 1 + Mod(i); });
  Tensor b = Make<double>(small, [&](int64_t i) { return r + 1 + Mod(i); });
  Tensor part = Make<float>(small, [&](int64_t i) { return r * small + i; });
  Tensor gathered = Tensor::Empty({small * P}, DType::kF32);
  Tensor scatter_in = Make<float>(small * P, [&](int64_t i) { return r + 1 + Mod(i); });
  Tensor scattered = Tensor::Empty({small}, DType::kF32);
  std::vector<std::shared_ptr<Work>> works;
  works.push_back(w.AllReduce(a, Opts()));                // idle: started by this thread
  works.push_back(w.AllReduce(big, Opts()));              // queued behind it
  works.push_back(w.AllReduce(b, Opts(ReduceOp::kAvg)));  // queued: the worker starts it
  works.push_back(w.AllGather(part, gathered, Opts()));   // queued
  works.push_back(w.ReduceScatter(scatter_in, scattered, Opts(ReduceOp::kMax)));  // queued
  works.back()->Wait();
  for (size_t j = 0; j < works.size(); ++j) EXPECT_TRUE(works[j]->IsCompleted()) << "collective " << j;
  for (auto& work : works) work->Wait();
  EXPECT_TRUE(ElementsAre<float>(a, small, [&](int64_t i) { return Reduced(ReduceOp::kSum, P, Mod(i)); }));
  EXPECT_TRUE(ElementsAre<float>(big, large, [&](int64_t i) { return Reduced(ReduceOp::kSum, P, Mod(i)); }));
  EXPECT_TRUE(ElementsAre<double>(b, small, [&](int64_t i) { return Reduced(ReduceOp::kAvg, P, Mod(i)); }));
  EXPECT_TRUE(ElementsAre<float>(gathered, small * P, [&](int64_t i) { return static_cast<double>(i); }));
  EXPECT_TRUE(ElementsAre<float>(scattered, small,
                                 [&](int64_t i) { return Reduced(ReduceOp::kMax, P, Mod(r * small + i)); }));

  // Several small ones in a row, waited on in reverse: only the first can start at once.
  std::vector<Tensor> tensors;
  works.clear();
  for (int j = 0; j < 6; ++j) {
    tensors.push_back(Make<int64_t>(1 + j, [&](int64_t i) { return r + 1 + Mod(i + j); }));
    works.push_back(w.AllReduce(tensors.back(), Opts()));
  }
  for (int j = 5; j >= 0; --j) works[j]->Wait();
  for (int j = 0; j < 6; ++j)
    EXPECT_TRUE(ElementsAre<int64_t>(tensors[j], 1 + j,
                                     [&](int64_t i) { return Reduced(ReduceOp::kSum, P, Mod(i + j)); }))
        << "allreduce " << j;
}

// A small all-reduce has two phases, and this rank may not Wait() on it for a while: it must still
// move forward for the peers. Here half the ranks wait on group h first, half on group g, each
// with its small all-reduce on the other group still unwaited: only ops that progress without
// their own Wait() let both finish before the deadline.
TEST(MpiAsync, SmallCollectivesProgressWithoutTheirOwnWait) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  auto g = w.Split(0, r);
  auto h = w.Split(0, r);
  Tensor x = Make<float>(1000, [&](int64_t i) { return r + 1 + Mod(i); });
  Tensor y = Make<float>(1000, [&](int64_t i) { return r + 1 + Mod(i + 1); });
  ProcessGroup& first = r % 2 == 0 ? *g : *h;
  ProcessGroup& second = r % 2 == 0 ? *h : *g;
  Tensor& mine_first = r % 2 == 0 ? x : y;
  Tensor& mine_second = r % 2 == 0 ? y : x;
  CollectiveOptions o = Opts();
  o.timeout_s = 20;
  const auto start = Clock::now();
  auto pending = first.AllReduce(mine_first, o);
  second.AllReduce(mine_second, o)->Wait();
  pending->Wait();
  EXPECT_LE(Seconds(start), 5.0);
  EXPECT_TRUE(ElementsAre<float>(x, 1000, [&](int64_t i) { return Reduced(ReduceOp::kSum, P, Mod(i)); }));
  EXPECT_TRUE(ElementsAre<float>(y, 1000, [&](int64_t i) { return Reduced(ReduceOp::kSum, P, Mod(i + 1)); }));
}

// ---- sub-groups ----------------------------------------------------------------------------------

TEST(MpiSplit, ByParity) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank(), parity = r % 2;
  // Key P - r orders each sub-group by decreasing world rank.
  auto sub = w.Split(parity, P - r);
  std::vector<int> members;
  for (int q = P - 1; q >= 0; --q)
    if (q % 2 == parity) members.push_back(q);
  ASSERT_EQ(sub->size(), static_cast<int>(members.size()));
  EXPECT_EQ(sub->backend(), "mpi");
  int my_index = 0;
  while (members[my_index] != r) ++my_index;
  EXPECT_EQ(sub->rank(), my_index);

  double member_sum = 0;
  for (int q : members) member_sum += q + 1;
  const int S = sub->size();
  for (int64_t n : {int64_t{0}, int64_t{7}, kLarge / 4}) {
    Tensor t = Make<float>(n, [&](int64_t i) { return r + 1 + Mod(i); });
    auto work = sub->AllReduce(t, Opts());
    work->Wait();
    EXPECT_TRUE(ElementsAre<float>(t, n, [&](int64_t i) { return member_sum + S * Mod(i); })) << "n = " << n;
  }

  Tensor me = Make<int32_t>(1, [&](int64_t) { return r; });
  Tensor gathered = Make<int32_t>(S, [](int64_t) { return -1; });
  sub->AllGather(me, gathered, Opts())->Wait();
  EXPECT_TRUE(ElementsAre<int32_t>(gathered, S, [&](int64_t j) { return members[j]; }));

  // The world group is still in step after the sub-groups' traffic.
  w.Barrier(Opts())->Wait();
}

// ---- bad arguments -------------------------------------------------------------------------------

TEST(MpiErrors, BadArgumentsThrowWithoutTakingASequenceNumber) {
  ProcessGroup& w = World();
  const int P = w.size();
  auto before = w.Barrier(Opts());
  before->Wait();

  Tensor in = Tensor::Zeros({P * 3 + 1}), out = Tensor::Zeros({3});
  std::string m = ThrownMessage<ShapeError>([&] { w.ReduceScatter(in, out, Opts()); });
  EXPECT_TRUE(Contains(m, "reduce_scatter"));
  EXPECT_TRUE(Contains(m, std::to_string(P * 3 + 1)));
  EXPECT_TRUE(Contains(m, "needs " + std::to_string(P * 3)));

  Tensor small = Tensor::Zeros({3}), big = Tensor::Zeros({P * 3 + 1});
  m = ThrownMessage<ShapeError>([&] { w.AllGather(small, big, Opts()); });
  EXPECT_TRUE(Contains(m, "allgather"));
  EXPECT_TRUE(Contains(m, std::to_string(P * 3 + 1)));

  Tensor in64 = Tensor::Zeros({P * 3}, DType::kF64);
  m = ThrownMessage<ShapeError>([&] { w.ReduceScatter(in64, out, Opts()); });
  EXPECT_TRUE(Contains(m, "dtypes"));

  Tensor half = Tensor::Empty({4}, DType::kBF16);
  m = ThrownMessage<ShapeError>([&] { w.AllReduce(half, Opts()); });
  EXPECT_TRUE(Contains(m, "bf16"));

  m = ThrownMessage<ValueError>([&] { w.Broadcast(out, P, Opts()); });
  EXPECT_TRUE(Contains(m, "root " + std::to_string(P)));

  CollectiveOptions no_time = Opts();
  no_time.timeout_s = 0;
  m = ThrownMessage<ValueError>([&] { w.Barrier(no_time); });
  EXPECT_TRUE(Contains(m, "timeout_s"));

  m = ThrownMessage<ValueError>([&] { w.Split(-1, 0); });
  EXPECT_TRUE(Contains(m, "color"));

  auto after = w.Barrier(Opts());
  EXPECT_EQ(after->sequence(), before->sequence() + 1);
  after->Wait();
}

}  // namespace
}  // namespace tessera::dist
