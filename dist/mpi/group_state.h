// Internal to dist/mpi/: the state an MPI process group shares with its worker thread and its
// Work handles (mpi_process_group.cc runs the group and the worker; mpi_work.cc the handles).
//
// An op is in exactly one place until it is done: `queue` (issued, for the worker), `running`
// (the worker is running it), or `inflight` (a nonblocking op the issuing thread started itself
// because the group was idle; its Wait() polls it). The worker adopts the inflight op, and
// completes it with MPI_Wait, before it runs anything issued later, when a Wait() on it gives up
// (kPollBudget, deadline, broken group), when it is kAdoptAfter old, and when the group is
// destroyed; so at most one collective of a group
// is ever inside MPI on this rank, as when the worker ran them all.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dist/mpi/arrivals.h"
#include "dist/mpi/mpi_process_group.h"
#include "dist/mpi/op.h"

namespace tessera::dist {
namespace mpi_internal {

// How long the worker, idle, and a Wait() on an op still running, poll (yielding the core to any
// other thread that is ready) before they sleep: a collective issued or finished meanwhile is
// handed over without waking a thread, which costs a few microseconds each way (more from an
// idle core).
constexpr auto kSpinBudget = std::chrono::microseconds(50);

// How long the issuing thread's Wait() polls an op it started before it hands the op to the
// worker and sleeps; and how old an inflight op may grow before the worker adopts it anyway.
// Without that, an op (such as the second phase of a small all-reduce) would move forward only when
// this rank calls Wait(): a peer waiting on it, or on another group that this rank waits on
// meanwhile, could stall until a deadline.
constexpr auto kPollBudget = std::chrono::milliseconds(1);
constexpr auto kAdoptAfter = std::chrono::milliseconds(2);

// Polls `ready` until it holds (true) or `budget` has passed (false).
template <typename Ready>
bool SpinUntil(const Ready& ready, std::chrono::nanoseconds budget) {
  if (ready()) return true;
  const auto end = std::chrono::steady_clock::now() + budget;
  for (;;) {
    std::this_thread::yield();
    if (ready()) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
  }
}

}  // namespace mpi_internal

struct MpiProcessGroup::State {
  using Op = mpi_internal::Op;

  MPI_Comm data = MPI_COMM_NULL;  // the collectives
  int rank = 0;
  int size = 1;
  std::vector<int> world_rank;    // group rank -> MPI_COMM_WORLD rank
  bool same_as_world = true;      // world_rank[r] == r for every r
  uint64_t id = 0;                // the same on every member (dist/mpi/arrivals.h)
  internal::ArrivalSlot entered;  // the collective this rank entered last, for the heartbeats

  std::mutex mu;                    // guards the fields below, and Op's result fields
  std::condition_variable work_cv;  // to the worker: queued work, an op to adopt, or stop
  std::condition_variable done_cv;  // to waiters: an op finished, or the group broke
  std::deque<std::shared_ptr<Op>> queue;
  std::atomic<size_t> queued{0};  // queue.size(), for the worker to poll without the lock
  std::shared_ptr<Op> running;    // the op the worker is executing, if any
  std::shared_ptr<Op> inflight;   // the op the issuing thread started, until done or adopted
  bool adopt_inflight = false;    // asks the worker to adopt `inflight`
  uint64_t next_seq = 1;
  std::string broken;                  // why the group is broken; empty while it is healthy
  std::atomic<bool> is_broken{false};  // !broken.empty(), for a polling Wait()
  bool stop = false;                   // the group object is gone; the worker exits when idle
  bool detached = false;               // ... and the worker then releases the MPI resources

  std::mutex release_mu;  // guards `released` and the freeing of `data`
  bool released = false;

  std::string BrokenMessage() const { return "the process group is broken and cannot be used: " + broken; }
  // Marks the group broken (the first reason stays); `mu` held.
  void Break(const std::string& why);
  // Records that `op` finished (with `error` if it failed) and wakes its waiters; `mu` held.
  void Finish(Op& op, std::exception_ptr error, const std::string& reason);
  // "[0, 2] (world ranks [3, 5])".
  std::string DescribeRanks(const std::vector<int>& ranks) const;
  // The CommTimeoutError message for `op`, whose deadline has passed; `mu` not held.
  std::string DiagnoseTimeout(const Op& op);
  // Takes the group off the arrival board and frees the communicator. Called once the worker
  // has left MPI for good; never throws.
  void ReleaseMpiResources() noexcept;
};

namespace mpi_internal {

using State = MpiProcessGroup::State;

// Tests the inflight `op` once, unless another thread is completing it; finishes it when its
// request has completed. Returns whether it is finished. `s.mu` not held.
bool TestInflight(State& s, Op& op);
// Has the worker adopt `op` if the issuing thread started it and it is still inflight; `s.mu` held.
void HandToWorker(State& s, const Op& op);

// The Work handle of an issued op.
std::shared_ptr<Work> MakeWork(std::shared_ptr<State> state, std::shared_ptr<Op> op);

}  // namespace mpi_internal
}  // namespace tessera::dist
