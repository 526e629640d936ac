// The Work handle of an MPI collective, and the completion of the ops that the issuing thread
// started itself (dist/mpi/group_state.h).
#include <algorithm>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>

#include "dist/mpi/group_state.h"
#include "dist/mpi/mpi_check.h"

namespace tessera::dist::mpi_internal {
namespace {

using Clock = std::chrono::steady_clock;

class MpiWork : public Work {
 public:
  MpiWork(std::shared_ptr<State> state, std::shared_ptr<Op> op)
      : state_(std::move(state)), op_(std::move(op)) {}

  void Wait() override {
    State& s = *state_;
    Op& op = *op_;
    if (op.caller_started)
      PollInflight();
    else
      SpinUntil([&] { return op.finished.load(std::memory_order_acquire); }, kSpinBudget);
    std::unique_lock<std::mutex> lock(s.mu);
    // Still inflight (kPollBudget or the deadline passed, or the group broke): the worker takes it
    // over and stays inside MPI on it, as on its own ops, while this thread sleeps.
    HandToWorker(s, op);
    const auto finished = [&] { return op.done || !s.broken.empty(); };
    if (!s.done_cv.wait_until(lock, op.deadline, finished)) {
      lock.unlock();
      std::string message = s.DiagnoseTimeout(op);
      lock.lock();
      if (!op.done) {
        op.timeout_message = message;
        s.Break(message);
        s.done_cv.notify_all();
        throw CommTimeoutError(message);
      }
    }
    if (!op.timeout_message.empty()) throw CommTimeoutError(op.timeout_message);
    if (op.done) {
      if (op.error) std::rethrow_exception(op.error);
      return;
    }
    throw CommError(op.What() + " cannot complete: " + s.BrokenMessage());
  }

  bool IsCompleted() override {
    if (op_->caller_started) TestInflight(*state_, *op_);
    std::lock_guard<std::mutex> lock(state_->mu);
    return op_->done;
  }

  uint64_t sequence() const override { return op_->seq; }

 private:
  // Tests the op this thread started until it finishes, the worker adopts it, the group breaks,
  // kPollBudget or the deadline passes; yields the core between tests once kSpinBudget has passed.
  void PollInflight() {
    State& s = *state_;
    Op& op = *op_;
    const auto start = Clock::now();
    const auto spin_end = start + kSpinBudget, poll_end = std::min(start + kPollBudget, op.deadline);
    for (;;) {
      if (TestInflight(s, op)) return;
      if (op.adopted.load(std::memory_order_acquire) || s.is_broken.load(std::memory_order_acquire)) return;
      const auto now = Clock::now();
      if (now >= poll_end) return;
      if (now >= spin_end) std::this_thread::yield();
    }
  }

  std::shared_ptr<State> state_;
  std::shared_ptr<Op> op_;
};

}  // namespace

bool TestInflight(State& s, Op& op) {
  if (op.finished.load(std::memory_order_acquire)) return true;
  std::unique_lock<std::mutex> test(op.test_mu, std::try_to_lock);
  if (!test.owns_lock() || op.adopted.load(std::memory_order_acquire)) return false;
  if (op.finished.load(std::memory_order_acquire)) return true;
  int flag = 0;
  const int rc = MPI_Test(&op.request, &flag, MPI_STATUS_IGNORE);
  if (rc == MPI_SUCCESS && !flag) return false;
  std::exception_ptr error;
  std::string reason;
  try {
    if (rc != MPI_SUCCESS) TESSERA_THROW(CommError, "MPI_Test failed: ", MpiErrorString(rc));
    if (!ContinueNonblocking(op, s.data, s.rank, s.size)) return false;  // its next phase started
  } catch (const std::exception& e) {
    reason = op.What() + " failed: " + e.what();
    error = std::make_exception_ptr(CommError(reason));
  }
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.inflight.get() == &op) {
    s.inflight.reset();  // the caller's handle keeps `op` alive
    s.adopt_inflight = false;
  }
  s.Finish(op, error, reason);
  return true;
}

void HandToWorker(State& s, const Op& op) {
  if (s.inflight.get() != &op || s.adopt_inflight) return;
  s.adopt_inflight = true;
  s.work_cv.notify_one();
}

std::shared_ptr<Work> MakeWork(std::shared_ptr<State> state, std::shared_ptr<Op> op) {
  return std::make_shared<MpiWork>(std::move(state), std::move(op));
}

}  // namespace tessera::dist::mpi_internal
