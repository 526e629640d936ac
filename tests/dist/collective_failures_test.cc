// The MPI process group under mpirun, when things go wrong: the messages a collective sends (none
// of its own), and timeouts that name the missing or stopped rank. Linked after collectives_test.cc
// so that these run last; each timeout test breaks a dedicated group.
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
    std::printf("[rank 0] %d collectives in %.3f s: %lld sends by tessera (heartbeats)\n", 2 * kRounds,
                elapsed, static_cast<long long>(sent));
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
                              std::to_string(n) + " f32, group of " + std::to_string(P) +
                              ") did not complete within 2 s";
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
  w.Barrier(Opts())->Wait();                        // the others have reported their timeout
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
