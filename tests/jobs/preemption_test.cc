// jobs/preemption: the preemption signals are taken by one watcher thread, never by the thread
// that computes. A storm of SIGUSR1 while this thread runs the training's GEMMs leaves the heap
// intact: oneDNN's JIT GEMM kernels (oneDNN issue #4845) point the stack pointer into a heap
// workspace, and a handler run on a thread inside one writes its signal frame there. Without the
// block the mask checks fail, and on an AVX2 or AVX-512 machine the storm often aborts in free().
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "core/error.h"
#include "core/ops/ops.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "jobs/preemption.h"

namespace tessera::jobs {
namespace {

bool BlockedHere(int sig) {
  sigset_t now;
  pthread_sigmask(SIG_BLOCK, nullptr, &now);
  return sigismember(&now, sig) == 1;
}

// The shapes of the example MLP's forward and backward (784-512-256-10, batch 64).
void TrainingGemms(int rounds) {
  const int64_t dims[][3] = {{64, 784, 512}, {64, 512, 256}, {64, 256, 10}};
  for (int r = 0; r < rounds; ++r)
    for (const auto& d : dims) {
      Tensor x = Tensor::Full({d[0], d[1]}, 0.5), w = Tensor::Full({d[2], d[1]}, 0.25);
      Tensor y = Tensor::Empty({d[0], d[2]}), dx = Tensor::Empty({d[0], d[1]}), dw = Tensor::Empty({d[2], d[1]});
      ops::Gemm(x, false, w, true, y);   // forward
      ops::Gemm(y, false, w, false, dx);  // input gradient
      ops::Gemm(y, true, x, false, dw);   // weight gradient
    }
}

TEST(PreemptionTest, SignalsAreTakenByTheWatcherNeverByTheComputeThread) {
  WatchPreemptSignals({SIGUSR1});
  EXPECT_TRUE(BlockedHere(SIGUSR1));
  EXPECT_TRUE(PreemptSignalsBlockedHere());
  bool blocked_in_later_thread = false;
  std::thread([&] { blocked_in_later_thread = BlockedHere(SIGUSR1); }).join();
  EXPECT_TRUE(blocked_in_later_thread) << "a thread started after WatchPreemptSignals could take the signal";

  std::atomic<bool> done{false};
  std::atomic<int> sent{0};
  std::thread storm([&] {
    while (!done) {
      kill(getpid(), SIGUSR1);
      ++sent;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  });
  SetNumThreads(1);  // f32 GEMMs on one thread go through oneDNN's sgemm (core/ops/cpu/gemm.cc)
  TrainingGemms(1000);
  done = true;
  storm.join();
  EXPECT_GT(sent.load(), 100);
  // The watcher takes a signal within microseconds; allow it a second under a loaded machine.
  for (int i = 0; i < 1000 && PreemptSignalReceived() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(PreemptSignalReceived(), SIGUSR1);

  StopWatchingPreemptSignals();
  EXPECT_FALSE(BlockedHere(SIGUSR1));
  struct sigaction now;
  sigaction(SIGUSR1, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_DFL) << "past the run, SIGUSR1 has its default action again";
}

TEST(PreemptionTest, AnEmptyListWatchesNothing) {
  WatchPreemptSignals({});
  EXPECT_FALSE(BlockedHere(SIGUSR2));
  EXPECT_FALSE(PreemptSignalsBlockedHere());
  StopWatchingPreemptSignals();  // nothing to stop: no effect
}

TEST(PreemptionTest, SignalNamesParseWithOrWithoutTheirPrefix) {
  EXPECT_EQ(ParseSignalName("USR1"), SIGUSR1);
  EXPECT_EQ(ParseSignalName("SIGTERM"), SIGTERM);
  EXPECT_EQ(ParseSignalName(std::to_string(SIGUSR2)), SIGUSR2);
  EXPECT_EQ(SignalName(SIGUSR1), "SIGUSR1");
  EXPECT_THROW(ParseSignalName("KILL"), ConfigError);
  EXPECT_THROW(ParseSignalName("9"), ConfigError);
  EXPECT_THROW(ParseSignalName(""), ConfigError);
}

}  // namespace
}  // namespace tessera::jobs
