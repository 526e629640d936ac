// The MPI process group under mpirun (tests/CMakeLists.txt runs it on 1 to 4 ranks). Every rank
// runs every test; expected values are in closed form: rank r contributes r + 1 + (i mod 97) at
// element i, so sums, averages, maxima and minima are exact in f32 even at 4M elements.
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
#include "tests/dist/mpi_test_env.h"

// Every point-to-point send that tessera itself makes, counted by interposing MPI's send calls
// (Open MPI's collectives do not go through them): see MpiMessages below.
std::atomic<int64_t> g_sends{0};
extern "C" int MPI_Isend(const void* buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
                         MPI_Request* request) {
  ++g_sends;
  return PMPI_Isend(buf, count, type, dest, tag, comm, request);
}
extern "C" int MPI_Send(const void* buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm) {
  ++g_sends;
  return PMPI_Send(buf, count, type, dest, tag, comm);
}

namespace tessera::dist {
namespace {

using ::testing::AssertionFailure;
using ::testing::AssertionResult;
using ::testing::AssertionSuccess;
using Clock = std::chrono::steady_clock;

constexpr int64_t kLarge = int64_t{1} << 22;  // 4M elements
// The largest all-reduce, reduce, all-gather output and reduce-scatter input (bytes) that use a
// nonblocking call (dist/mpi/run_op.cc): sizes on both sides are tested.
constexpr int64_t kEdge = int64_t{16} << 10;
constexpr int64_t kReduceEdge = int64_t{4} << 10;
constexpr int64_t kBigEdge = int64_t{256} << 10;
// Short enough that a test which desynchronises the ranks fails before CTest's 120 s limit.
constexpr double kTestTimeoutS = 60;

ProcessGroup& World() { return mpi_test::World(); }

CollectiveOptions Opts(ReduceOp op = ReduceOp::kSum) {
  CollectiveOptions o;
  o.op = op;
  o.timeout_s = kTestTimeoutS;
  return o;
}

double Mod(int64_t i) { return static_cast<double>(i % 97); }

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

template <typename T, typename F>
Tensor Make(int64_t n, F value) {
  Tensor t = Tensor::Empty({n}, DTypeOf<T>::value);
  if (n > 0) {
    T* p = t.data<T>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(value(i));
  }
  return t;
}

// Compares every element with expected(i); reports how many differ and the first that does.
template <typename T, typename F>
AssertionResult ElementsAre(const Tensor& t, int64_t n, F expected) {
  if (t.numel() != n) return AssertionFailure() << "numel " << t.numel() << ", expected " << n;
  if (n == 0) return AssertionSuccess();
  const T* p = t.data<T>();
  int64_t wrong = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (static_cast<double>(p[i]) != expected(i)) {
      if (first < 0) first = i;
      ++wrong;
    }
  }
  if (wrong == 0) return AssertionSuccess();
  return AssertionFailure() << wrong << " of " << n << " elements wrong; first at " << first << ": got "
                            << static_cast<double>(p[first]) << ", expected " << expected(first);
}

AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return AssertionSuccess();
  return AssertionFailure() << "\"" << part << "\" not in: " << text;
}

// The message of the E that f() throws; a test failure if it throws nothing or something else.
template <typename E, typename F>
std::string ThrownMessage(F f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw the wrong type: " << e.what();
    return "";
  }
  ADD_FAILURE() << "threw nothing";
  return "";
}

// The reduction over ranks of r + 1 + m, with P ranks.
double Reduced(ReduceOp op, int P, double m) {
  switch (op) {
    case ReduceOp::kSum:
      return P * (P + 1) / 2.0 + P * m;
    case ReduceOp::kAvg:
      return (P + 1) / 2.0 + m;
    case ReduceOp::kMax:
      return P + m;
    case ReduceOp::kMin:
      return 1 + m;
  }
  return 0;
}

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
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{3} * P + 1, kReduceEdge / int64_t{sizeof(T)},
                      kReduceEdge / int64_t{sizeof(T)} + 1, kLarge}) {
      SCOPED_TRACE(::testing::Message() << "root = " << root << ", n = " << n);
      Tensor t = Make<T>(n, [&](int64_t i) { return r + 1 + Mod(i); });
      w.Reduce(t, root, Opts(op))->Wait();
      if (r == root) EXPECT_TRUE(ElementsAre<T>(t, n, [&](int64_t i) { return Reduced(op, P, Mod(i)); }));
      else EXPECT_TRUE(ElementsAre<T>(t, n, [&](int64_t i) { return r + 1 + Mod(i); })) << "a non-root's input changed";
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
    Tensor output = Make<float>(P * n, [&](int64_t j) { return j / n == r ? (r + 1) * 100 + Mod(j % n) : -1; });
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
  EXPECT_GE(left, last_entry.data<double>()[0]) << "rank " << w.rank() << " left the barrier before rank 0 entered it";
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
  for (int j = 0; j < 9; ++j) EXPECT_TRUE(works[j]->IsCompleted()) << "allreduce " << j << " after allreduce 9";
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
  works.push_back(w.AllReduce(a, Opts()));                        // idle: started by this thread
  works.push_back(w.AllReduce(big, Opts()));                      // queued behind it
  works.push_back(w.AllReduce(b, Opts(ReduceOp::kAvg)));          // queued: the worker starts it
  works.push_back(w.AllGather(part, gathered, Opts()));           // queued
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

// A collective sends no message of its own to say it arrived (that was N - 1 per rank per
// collective, N^2 in all): only the heartbeats send, one per peer every 0.5 s, whatever the
// number of collectives. The timeout tests below check that the missing ranks are still named.
TEST(MpiMessages, CollectivesSendNoMessagesBesideTheHeartbeats) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  Tensor t = Make<float>(16, [&](int64_t i) { return r + 1 + Mod(i); });
  Tensor out = Tensor::Empty({16 * P}, DType::kF32);
  w.Barrier(Opts())->Wait();
  const int64_t before = g_sends.load();
  const auto start = Clock::now();
  constexpr int kRounds = 500;
  for (int i = 0; i < kRounds; ++i) {
    w.AllReduce(t, Opts(ReduceOp::kMax))->Wait();
    w.AllGather(t, out, Opts())->Wait();
  }
  const double elapsed = Seconds(start);
  const int64_t sent = g_sends.load() - before;
  const int64_t heartbeats = (P - 1) * (static_cast<int64_t>(elapsed / 0.5) + 2);
  EXPECT_LE(sent, heartbeats) << 2 * kRounds << " collectives in " << elapsed << " s";
  if (r == 0)
    std::printf("[rank 0] %d collectives in %.3f s: %lld sends by tessera (heartbeats)\n", 2 * kRounds, elapsed,
                static_cast<long long>(sent));
  // The count sees tessera's sends: over 1.2 s the heartbeats go to every peer at least twice.
  const int64_t quiet_before = g_sends.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_GE(g_sends.load() - quiet_before, 2 * (P - 1));
}

// ---- timeouts: keep these tests last; each breaks a dedicated group -----------------------------

// `n` f32 elements: small all-reduces are started and polled by the issuing thread, large ones
// run on the worker (dist/mpi/op.h); both must time out alike.
void CheckTheMissingRankIsNamed(int64_t n) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  if (P < 2) GTEST_SKIP() << "needs a peer to miss a collective (run with -np 2 or more)";
  const int skipper = P - 1;
  // A group of its own: it is broken below, and the world group must stay usable.
  auto g = w.Split(0, r);
  Tensor warm = Make<float>(5, [&](int64_t) { return r + 1; });
  g->AllReduce(warm, Opts())->Wait();  // #1

  Tensor t = Make<float>(n, [&](int64_t i) { return r + 1 + Mod(i); });
  if (r != skipper) {
    CollectiveOptions o = Opts();
    o.timeout_s = 2;
    const auto start = Clock::now();
    auto work = g->AllReduce(t, o);  // #2, which the skipper does not issue
    EXPECT_EQ(work->sequence(), 2u);
    std::string message = ThrownMessage<CommTimeoutError>([&] { work->Wait(); });
    const double elapsed = Seconds(start);
    EXPECT_TRUE(Contains(message, "allreduce #2"));
    EXPECT_TRUE(Contains(message, "ranks that did not arrive: [" + std::to_string(skipper) + "]"));
    EXPECT_TRUE(Contains(message, "ranks not responding: []"));  // the skipper is alive and beating
    EXPECT_GE(elapsed, 1.9);
    EXPECT_LE(elapsed, 4.0);
    if (r == 0) std::printf("[rank 0] CommTimeoutError after %.2f s: %s\n", elapsed, message.c_str());

    // Waiting again reports the same timeout; the group is broken for every later call.
    EXPECT_EQ(ThrownMessage<CommTimeoutError>([&] { work->Wait(); }), message);
    // Each later call names itself and the cause: the collective that broke the group, with its
    // sequence number and its own report.
    const std::string cause = "the process group is broken and cannot be used: allreduce #2 (" +
                              std::to_string(n) + " f32, group of " +
                              std::to_string(P) + ") did not complete within 2 s";
    std::string later = ThrownMessage<CommError>([&] { g->Barrier(Opts()); });
    EXPECT_TRUE(Contains(later, "barrier: " + cause)) << later;
    later = ThrownMessage<CommError>([&] { g->AllReduce(warm, Opts()); });
    EXPECT_TRUE(Contains(later, "allreduce: " + cause)) << later;
    EXPECT_TRUE(Contains(later, "ranks that did not arrive: [" + std::to_string(skipper) + "]")) << later;
  }
  w.Barrier(Opts())->Wait();  // the others have reported their timeout
  if (r == skipper) {
    // Issue the missed allreduce late: it releases the others' workers, still inside
    // MPI_Allreduce, and completes with every rank's contribution.
    g->AllReduce(t, Opts())->Wait();
    EXPECT_TRUE(ElementsAre<float>(t, n, [&](int64_t i) { return Reduced(ReduceOp::kSum, P, Mod(i)); }));
  }
  w.Barrier(Opts())->Wait();
}

TEST(MpiTimeout, TheMissingRankIsNamedAndNobodyHangs) { CheckTheMissingRankIsNamed(2048); }
TEST(MpiTimeout, TheMissingRankIsNamedOnTheWorkerToo) { CheckTheMissingRankIsNamed(int64_t{1} << 16); }

// Split keeps the deadline it is given (it once always waited 300 s, whatever the job said).
TEST(MpiTimeout, SplitKeepsItsDeadline) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  if (P < 2) GTEST_SKIP() << "needs a peer to miss a collective (run with -np 2 or more)";
  const int skipper = P - 1;
  auto g = w.Split(0, r);  // broken below; the world group must stay usable
  if (r != skipper) {
    const auto start = Clock::now();
    std::string message = ThrownMessage<CommTimeoutError>([&] { g->Split(1, r, 2.0); });
    const double elapsed = Seconds(start);
    EXPECT_TRUE(Contains(message, "split #1")) << message;
    EXPECT_TRUE(Contains(message, "ranks that did not arrive: [" + std::to_string(skipper) + "]")) << message;
    EXPECT_GE(elapsed, 1.9);
    EXPECT_LE(elapsed, 6.0);
  }
  w.Barrier(Opts())->Wait();  // the others have reported their timeout
  if (r == skipper) g->Split(1, r, kTestTimeoutS);  // releases the others' workers, still inside the split
  w.Barrier(Opts())->Wait();
}

TEST(MpiTimeout, WaitingOnALaterCollectiveNamesTheOneThisRankIsStuckIn) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  if (P < 2) GTEST_SKIP() << "needs a peer to miss a collective (run with -np 2 or more)";
  const int skipper = P - 1;
  // Key -r reverses the order: the skipper is rank 0 of this group, world rank P - 1.
  auto g = w.Split(0, -r);
  ASSERT_EQ(g->rank(), P - 1 - r);

  Tensor t = Make<float>(7, [&](int64_t i) { return r + 1 + Mod(i); });
  if (r != skipper) {
    CollectiveOptions patient = Opts(), quick = Opts();
    patient.timeout_s = 30;
    quick.timeout_s = 2;
    auto stuck = g->AllReduce(t, patient);  // #1, which the skipper does not issue (yet)
    auto later = g->Barrier(quick);         // #2, queued behind it
    const auto start = Clock::now();
    std::string message = ThrownMessage<CommTimeoutError>([&] { later->Wait(); });
    const double elapsed = Seconds(start);
    EXPECT_TRUE(
        Contains(message, "barrier #2 (group of " + std::to_string(P) + ") did not complete within 2 s"));
    EXPECT_TRUE(
        Contains(message, "this rank is still in allreduce #1 (7 f32, group of " + std::to_string(P) + ")"));
    EXPECT_TRUE(
        Contains(message, "ranks that did not arrive: [0] (world ranks [" + std::to_string(skipper) + "])"));
    EXPECT_TRUE(Contains(message, "ranks not responding: []"));
    EXPECT_GE(elapsed, 1.9);
    EXPECT_LE(elapsed, 4.0);
    if (r == 0) std::printf("[rank 0] CommTimeoutError after %.2f s: %s\n", elapsed, message.c_str());
    // The group broke: the earlier collective's Wait() does not sit out its own 30 s.
    const auto again = Clock::now();
    const std::string stuck_message = ThrownMessage<CommError>([&] { stuck->Wait(); });
    EXPECT_TRUE(Contains(stuck_message, "allreduce #1 (7 f32, group of " + std::to_string(P) +
                                            ") cannot complete: the process group is broken and cannot be "
                                            "used: barrier #2"))
        << stuck_message;
    EXPECT_LE(Seconds(again), 1.0);
  }
  w.Barrier(Opts())->Wait();
  if (r == skipper) {
    // Releases the others' workers from allreduce #1; their barrier #2 is never run.
    g->AllReduce(t, Opts())->Wait();
    EXPECT_TRUE(ElementsAre<float>(t, 7, [&](int64_t i) { return Reduced(ReduceOp::kSum, P, Mod(i)); }));
  }
  w.Barrier(Opts())->Wait();
}

// A rank that is stopped (SIGSTOP) stops its heartbeats: the others name it as not responding,
// and once continued it reports its own stall. Rank 0 continues it (SIGCONT) once all the others
// have reported, so every rank must run on one host.
TEST(MpiTimeout, AStoppedRankIsNamedAsNotResponding) {
  ProcessGroup& w = World();
  const int P = w.size(), r = w.rank();
  if (P < 2) GTEST_SKIP() << "needs a peer to stop (run with -np 2 or more)";
  const int skipper = P - 1;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const int64_t host_hash = static_cast<int64_t>(std::hash<std::string>{}(host) >> 1);
  Tensor mine =
      Make<int64_t>(2, [&](int64_t i) { return i == 0 ? static_cast<int64_t>(getpid()) : host_hash; });
  Tensor all = Tensor::Empty({2 * P}, DType::kI64);
  w.AllGather(mine, all, Opts())->Wait();
  for (int q = 0; q < P; ++q)
    if (all.data<int64_t>()[2 * q + 1] != all.data<int64_t>()[1])
      GTEST_SKIP() << "the ranks run on several hosts; rank 0 could not continue a stopped rank";
  const pid_t skipper_pid = static_cast<pid_t>(all.data<int64_t>()[2 * skipper]);

  auto g = w.Split(0, r);
  auto others = w.Split(r == skipper ? 1 : 0, r);  // the ranks that are not stopped
  auto h = w.Split(0, r);                          // for a barrier the skipper enters alone
  Tensor warm = Make<float>(5, [&](int64_t) { return r + 1; });
  g->AllReduce(warm, Opts())->Wait();  // #1
  Tensor t = Make<float>(64, [&](int64_t i) { return r + 1 + Mod(i); });
  w.Barrier(Opts())->Wait();
  if (r == skipper) {
    CollectiveOptions quick = Opts();
    quick.timeout_s = 1;
    auto alone = h->Barrier(quick);  // the others enter it at the end
    raise(SIGSTOP);                  // until rank 0 continues it
    const std::string own = ThrownMessage<CommTimeoutError>([&] { alone->Wait(); });
    EXPECT_TRUE(Contains(own, "this rank itself was stalled for "));
    EXPECT_TRUE(Contains(own, "ranks not responding: []"));
    g->AllReduce(t, Opts())->Wait();  // #2, late: releases the others' workers
    EXPECT_TRUE(ElementsAre<float>(t, 64, [&](int64_t i) { return Reduced(ReduceOp::kSum, P, Mod(i)); }));
  } else {
    struct ContinueSkipper {  // however this block is left
      pid_t pid;
      bool on;
      ~ContinueSkipper() {
        if (on) kill(pid, SIGCONT);
      }
    } continue_skipper{skipper_pid, r == 0};
    CollectiveOptions o = Opts();
    o.timeout_s = 3;  // longer than the 2 s of silence that make a rank "not responding"
    const auto start = Clock::now();
    auto work = g->AllReduce(t, o);  // #2
    std::string message = ThrownMessage<CommTimeoutError>([&] { work->Wait(); });
    const double elapsed = Seconds(start);
    const std::string s = std::to_string(skipper);
    EXPECT_TRUE(Contains(message, "allreduce #2"));
    EXPECT_TRUE(Contains(message, "ranks that did not arrive: [" + s + "]"));
    EXPECT_TRUE(Contains(message, "ranks not responding (no heartbeat for "));
    EXPECT_TRUE(Contains(message, " s): [" + s + "]"));
    EXPECT_FALSE(Contains(message, "this rank itself was stalled"));
    // The deadline, the arrival grace, then up to 1.5 s for the silent rank to be heard from.
    EXPECT_GE(elapsed, 2.9);
    EXPECT_LE(elapsed, 6.5);
    if (r == 0) std::printf("[rank 0] CommTimeoutError after %.2f s: %s\n", elapsed, message.c_str());
    others->Barrier(Opts())->Wait();  // every one of them has timed out before the skipper goes on
  }
  w.Barrier(Opts())->Wait();
  if (r != skipper) h->Barrier(Opts())->Wait();  // releases the skipper's worker
  w.Barrier(Opts())->Wait();
}

}  // namespace
}  // namespace tessera::dist
