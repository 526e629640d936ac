#include "dist/mpi/mpi_process_group.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <iomanip>
#include <mutex>
#include <numeric>
#include <sstream>
#include <vector>

#include "dist/collective.h"
#include "dist/mpi/arrivals.h"
#include "dist/mpi/heartbeat.h"
#include "dist/mpi/mpi_check.h"
#include "dist/mpi/op.h"
#include "dist/mpi/runtime.h"

namespace tessera::dist {
namespace {

using Clock = std::chrono::steady_clock;
using collective::Elements;
using collective::Kind;
using collective::RankList;
using mpi_internal::Op;

// A peer not heard from (dist/mpi/heartbeat.h) for this long is "not responding" ...
constexpr double kSilenceS = 2.0;
// ... once it has had this long to be heard from; live peers send their arrivals within it.
constexpr double kHeartbeatDrainS = 1.5;

// How long the worker, idle, and a Wait() on an op still running, poll (yielding the core to any
// other thread that is ready) before they sleep: a collective issued or finished meanwhile is
// handed over without waking a thread, which costs a few microseconds each way (more from an
// idle core) and was most of the cost of a small collective.
constexpr auto kSpinBudget = std::chrono::microseconds(50);

// Polls `ready` until it holds (true) or `budget` has passed (false).
template <typename Ready>
bool SpinUntil(const Ready& ready, std::chrono::nanoseconds budget) {
  if (ready()) return true;
  const auto end = Clock::now() + budget;
  for (;;) {
    std::this_thread::yield();
    if (ready()) return true;
    if (Clock::now() >= end) return false;
  }
}

// Rejects what the MPI backend cannot carry; `op` and `role` name the call and the argument.
void CheckTensor(const char* op, const char* role, const Tensor& t) {
  if (t.numel() > 0 && !t.device().is_cpu())
    TESSERA_THROW(DeviceError, op, ": ", role, " ", t.Describe(),
                  " is not on the CPU; the MPI process group takes CPU tensors (the NCCL group "
                  "takes CUDA tensors)");
  if (collective::ReducibleOnCpu(t.dtype())) return;
  TESSERA_THROW(ShapeError, op, ": ", role, " ", DTypeName(t.dtype()), t.ShapeStr(),
                ": the MPI process group supports f32, f64, i32 and i64");
}

void CheckCount(const char* op, const char* role, int64_t n) {
  if (n > INT_MAX)
    TESSERA_THROW(ValueError, op, ": ", n, " elements per rank in the ", role, " exceed MPI's int count (",
                  INT_MAX, "); split it into several calls");
}

}  // namespace

// ---- state shared by the group, its worker thread and its Work handles --------------------------

struct MpiProcessGroup::State {
  MPI_Comm data = MPI_COMM_NULL;  // the collectives
  int rank = 0;
  int size = 1;
  std::vector<int> world_rank;  // group rank -> MPI_COMM_WORLD rank
  bool same_as_world = true;    // world_rank[r] == r for every r
  uint64_t id = 0;              // the same on every member (dist/mpi/arrivals.h)
  internal::ArrivalSlot entered;  // the collective the worker entered last, for the heartbeats

  std::mutex mu;                    // guards the queue and status below, and Op's result fields
  std::condition_variable work_cv;  // to the worker: queued work or stop
  std::condition_variable done_cv;  // to waiters: an op finished, or the group broke
  std::deque<std::shared_ptr<Op>> queue;
  std::atomic<size_t> queued{0};  // queue.size(), for the worker to poll without the lock
  std::shared_ptr<Op> running;  // the op the worker is executing, if any
  uint64_t next_seq = 1;
  std::string broken;     // why the group is broken; empty while it is healthy
  bool stop = false;      // the group object is gone; the worker exits when idle
  bool detached = false;  // ... and the worker then releases the MPI resources

  std::mutex release_mu;  // guards `released` and the freeing of `data`
  bool released = false;

  std::string BrokenMessage() const { return "the process group is broken and cannot be used: " + broken; }

  std::string DescribeRanks(const std::vector<int>& ranks) const {
    std::string s = RankList(ranks);
    if (!same_as_world && !ranks.empty()) {
      std::vector<int> world;
      for (int r : ranks) world.push_back(world_rank[r]);
      s += " (world ranks " + RankList(world) + ")";
    }
    return s;
  }

  // The CommTimeoutError message for `op`, whose deadline has passed.
  std::string DiagnoseTimeout(const Op& op) {
    uint64_t stuck_seq = op.seq;
    std::string stuck_what;  // set when this rank is still in an earlier collective
    Clock::time_point since = op.issued;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (running && running->seq < op.seq) {
        stuck_seq = running->seq;
        stuck_what = running->What();
        since = std::min(since, running->issued);
      }
    }
    // Which peers had not entered it, and which fell silent while it was pending: a rank killed
    // or stopped inside it has arrived too. Whether this rank itself was stalled, too.
    const double window_s = std::chrono::duration<double>(Clock::now() - since).count();
    std::vector<internal::PeerReport> reports;
    const bool have_heartbeats =
        internal::HeartbeatReports(world_rank, id, window_s, kSilenceS, kHeartbeatDrainS, &reports);
    std::vector<int> missing, silent;
    double silent_for = 0;
    if (have_heartbeats) {
      for (int p = 0; p < size; ++p) {
        if (p == rank) continue;
        if (!reports[p].listed || reports[p].entered < stuck_seq) missing.push_back(p);
        if (reports[p].silence_s <= kSilenceS) continue;
        silent_for = silent.empty() ? reports[p].silence_s : std::min(silent_for, reports[p].silence_s);
        silent.push_back(p);
      }
    }
    std::ostringstream m;
    m << op.What() << " did not complete within " << op.timeout_s << " s: ";
    if (!stuck_what.empty()) m << "this rank is still in " << stuck_what << ", where ";
    if (!have_heartbeats) {
      m << "which ranks did not arrive is unknown (heartbeats are not running: initialise MPI with "
           "tessera::dist::InitMpi)";
    } else {
      m << "ranks that did not arrive: " << DescribeRanks(missing);
      if (missing.empty() && silent.empty())
        m << " (every rank entered it: one may have died inside it, or the timeout is too short for "
             "this size)";
      else if (missing.empty())
        m << " (every rank entered it)";
      m << "; ranks not responding";
      if (!silent.empty())
        m << " (no heartbeat for " << (silent.size() > 1 ? "at least " : "") << std::fixed
          << std::setprecision(1) << silent_for << " s)";
      m << ": " << DescribeRanks(silent);
      if (reports[rank].silence_s > kSilenceS)
        m << "; this rank itself was stalled for " << std::fixed << std::setprecision(1)
          << reports[rank].silence_s << " s (stopped, or starved of CPU) while it waited";
    }
    m << "; the job cannot continue (a rank died, hung or was stopped)";
    return m.str();
  }

  // Takes the group off the arrival board and frees the communicator. Called once the worker
  // has left MPI for good; never throws.
  void ReleaseMpiResources() noexcept {
    std::lock_guard<std::mutex> lock(release_mu);
    if (released) return;
    released = true;
    if (entered) internal::UnregisterArrivals(id);
    if (MpiIsInitialized() && data != MPI_COMM_NULL) MPI_Comm_free(&data);
  }
};

namespace {

using State = MpiProcessGroup::State;

class MpiWork : public Work {
 public:
  MpiWork(std::shared_ptr<State> state, std::shared_ptr<Op> op)
      : state_(std::move(state)), op_(std::move(op)) {}

  void Wait() override {
    State& s = *state_;
    SpinUntil([&] { return op_->finished.load(std::memory_order_acquire); }, kSpinBudget);
    std::unique_lock<std::mutex> lock(s.mu);
    const auto finished = [&] { return op_->done || !s.broken.empty(); };
    if (!s.done_cv.wait_until(lock, op_->deadline, finished)) {
      lock.unlock();
      std::string message = s.DiagnoseTimeout(*op_);
      lock.lock();
      if (!op_->done) {
        op_->timeout_message = message;
        if (s.broken.empty()) s.broken = message;
        s.done_cv.notify_all();
        throw CommTimeoutError(message);
      }
    }
    if (!op_->timeout_message.empty()) throw CommTimeoutError(op_->timeout_message);
    if (op_->done) {
      if (op_->error) std::rethrow_exception(op_->error);
      return;
    }
    throw CommError(op_->What() + " cannot complete: " + s.BrokenMessage());
  }

  bool IsCompleted() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    return op_->done;
  }

  uint64_t sequence() const override { return op_->seq; }

 private:
  std::shared_ptr<State> state_;
  std::shared_ptr<Op> op_;
};

void RunWorker(std::shared_ptr<State> s) {
  for (;;) {
    std::shared_ptr<Op> op;
    {
      SpinUntil([&] { return s->queued.load(std::memory_order_acquire) > 0; }, kSpinBudget);
      std::unique_lock<std::mutex> lock(s->mu);
      s->work_cv.wait(lock, [&] { return s->stop || !s->queue.empty(); });
      if (s->queue.empty()) break;
      op = std::move(s->queue.front());
      s->queue.pop_front();
      s->queued.store(s->queue.size(), std::memory_order_release);
      if (!s->broken.empty()) {
        op->error = std::make_exception_ptr(CommError(op->What() + " was not run: " + s->BrokenMessage()));
        op->done = true;
        op->finished.store(true, std::memory_order_release);
        s->done_cv.notify_all();
        continue;
      }
      s->running = op;
    }
    std::exception_ptr error;
    std::string reason;
    try {
      s->entered->store(op->seq, std::memory_order_release);  // for the heartbeats
      mpi_internal::RunOp(*op, s->data, s->rank, s->size);
    } catch (const std::exception& e) {
      reason = op->What() + " failed: " + e.what();
      error = std::make_exception_ptr(CommError(reason));
    }
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->running.reset();
      op->done = true;
      op->finished.store(true, std::memory_order_release);
      op->error = error;
      if (error && s->broken.empty()) s->broken = reason;
      s->done_cv.notify_all();
    }
  }
  bool release;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    release = s->detached;
  }
  if (release) s->ReleaseMpiResources();
  s.reset();
  internal::WorkerThreadExited();
}

std::shared_ptr<Work> Enqueue(State& s, const std::shared_ptr<State>& shared, std::shared_ptr<Op> op,
                              double timeout_s) {
  collective::CheckTimeout(op->kind, timeout_s);
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.broken.empty()) TESSERA_THROW(CommError, collective::Name(op->kind), ": ", s.BrokenMessage());
  op->seq = s.next_seq++;
  op->timeout_s = timeout_s;
  op->group_size = s.size;
  op->issued = Clock::now();
  op->deadline = collective::Deadline(op->issued, timeout_s);
  s.queue.push_back(op);
  s.queued.store(s.queue.size(), std::memory_order_release);
  s.work_cv.notify_one();
  return std::make_shared<MpiWork>(shared, std::move(op));
}

}  // namespace

// ---- MpiProcessGroup -----------------------------------------------------------------------------

MpiProcessGroup::MpiProcessGroup(MPI_Comm comm) {
  int provided = MPI_THREAD_SINGLE;
  TESSERA_MPI_CHECK(MPI_Query_thread(&provided));
  if (provided < MPI_THREAD_MULTIPLE)
    TESSERA_THROW(CommError,
                  "MpiProcessGroup: MPI was initialised without MPI_THREAD_MULTIPLE; "
                  "initialise it with tessera::dist::InitMpi");
  MPI_Comm data = MPI_COMM_NULL;
  TESSERA_MPI_CHECK(MPI_Comm_dup(comm, &data));
  state_ = std::make_shared<State>();
  state_->data = data;
  try {
    state_->id = internal::AgreeGroupId(data);
  } catch (...) {
    MPI_Comm_free(&state_->data);
    throw;
  }
  Start();
}

MpiProcessGroup::MpiProcessGroup(Adopt, MPI_Comm data, uint64_t id) {
  state_ = std::make_shared<State>();
  state_->data = data;
  state_->id = id;
  Start();
}

void MpiProcessGroup::Start() {
  State& s = *state_;
  try {
    TESSERA_MPI_CHECK(MPI_Comm_set_errhandler(s.data, MPI_ERRORS_RETURN));
    TESSERA_MPI_CHECK(MPI_Comm_rank(s.data, &s.rank));
    TESSERA_MPI_CHECK(MPI_Comm_size(s.data, &s.size));

    MPI_Group group, world;
    TESSERA_MPI_CHECK(MPI_Comm_group(s.data, &group));
    TESSERA_MPI_CHECK(MPI_Comm_group(MPI_COMM_WORLD, &world));
    std::vector<int> ranks(static_cast<size_t>(s.size));
    std::iota(ranks.begin(), ranks.end(), 0);
    s.world_rank.assign(ranks.size(), MPI_UNDEFINED);
    TESSERA_MPI_CHECK(MPI_Group_translate_ranks(group, s.size, ranks.data(), world, s.world_rank.data()));
    TESSERA_MPI_CHECK(MPI_Group_free(&group));
    TESSERA_MPI_CHECK(MPI_Group_free(&world));
    s.same_as_world = s.world_rank == ranks;

    s.entered = internal::RegisterArrivals(s.id);
  } catch (...) {
    s.ReleaseMpiResources();
    throw;
  }
  internal::WorkerThreadStarted();
  try {
    worker_ = std::thread(RunWorker, state_);
  } catch (...) {
    internal::WorkerThreadExited();
    s.ReleaseMpiResources();
    throw;
  }
}

MpiProcessGroup::~MpiProcessGroup() {
  State& s = *state_;
  bool join;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    // Drain: each pending collective gets until its deadline.
    Clock::time_point latest = Clock::now();
    for (const auto& op : s.queue) latest = std::max(latest, op->deadline);
    if (s.running) latest = std::max(latest, s.running->deadline);
    const auto idle = [&] { return (s.queue.empty() && !s.running) || !s.broken.empty(); };
    if (!s.done_cv.wait_until(lock, latest, idle)) {
      s.broken = (s.running ? s.running->What() : std::string("a collective")) +
                 " had not completed by its deadline when its process group was destroyed";
      std::fprintf(stderr, "tessera: rank %d of a group of %d: %s; the job cannot continue\n", s.rank, s.size,
                   s.broken.c_str());
      std::fflush(stderr);
    }
    s.stop = true;
    if (!s.broken.empty()) {
      for (auto& op : s.queue) {
        op->error = std::make_exception_ptr(CommError(op->What() + " was not run: " + s.BrokenMessage()));
        op->done = true;
        op->finished.store(true, std::memory_order_release);
      }
      s.queue.clear();
      s.queued.store(0);
      s.done_cv.notify_all();
    }
    // A worker still inside MPI (its collective timed out) cannot be joined.
    join = !s.running;
    s.detached = !join;
  }
  s.work_cv.notify_all();
  if (join) {
    worker_.join();
    s.ReleaseMpiResources();
  } else {
    worker_.detach();
  }
}

int MpiProcessGroup::rank() const { return state_->rank; }
int MpiProcessGroup::size() const { return state_->size; }

std::shared_ptr<Work> MpiProcessGroup::AllReduce(Tensor& t, const CollectiveOptions& o) {
  CheckTensor("allreduce", "tensor", t);
  auto op = std::make_shared<Op>();
  op->kind = Kind::kAllReduce;
  op->a = t;
  op->reduce = o.op;
  return Enqueue(*state_, state_, std::move(op), o.timeout_s);
}

std::shared_ptr<Work> MpiProcessGroup::Reduce(Tensor& t, int root, const CollectiveOptions& o) {
  CheckTensor("reduce", "tensor", t);
  collective::CheckRoot("reduce", root, size());
  auto op = std::make_shared<Op>();
  op->kind = Kind::kReduce;
  op->a = t;
  op->root = root;
  op->reduce = o.op;
  return Enqueue(*state_, state_, std::move(op), o.timeout_s);
}

std::shared_ptr<Work> MpiProcessGroup::ReduceScatter(const Tensor& input, Tensor& output,
                                                     const CollectiveOptions& o) {
  CheckTensor("reduce_scatter", "input", input);
  CheckTensor("reduce_scatter", "output", output);
  collective::CheckReduceScatterSizes(input, output, size());
  const int64_t n = output.numel();
  CheckCount("reduce_scatter", "output", n);
  auto op = std::make_shared<Op>();
  op->kind = Kind::kReduceScatter;
  op->a = input;
  op->b = output;
  op->reduce = o.op;
  return Enqueue(*state_, state_, std::move(op), o.timeout_s);
}

std::shared_ptr<Work> MpiProcessGroup::AllGather(const Tensor& input, Tensor& output,
                                                 const CollectiveOptions& o) {
  CheckTensor("allgather", "input", input);
  CheckTensor("allgather", "output", output);
  collective::CheckAllGatherSizes(input, output, size());
  collective::AllGatherInPlace(input, output, rank());  // refuses any other overlap
  const int64_t n = input.numel();
  CheckCount("allgather", "input", n);
  auto op = std::make_shared<Op>();
  op->kind = Kind::kAllGather;
  op->a = input;
  op->b = output;
  return Enqueue(*state_, state_, std::move(op), o.timeout_s);
}

std::shared_ptr<Work> MpiProcessGroup::Broadcast(Tensor& t, int root, const CollectiveOptions& o) {
  CheckTensor("broadcast", "tensor", t);
  collective::CheckRoot("broadcast", root, size());
  auto op = std::make_shared<Op>();
  op->kind = Kind::kBroadcast;
  op->a = t;
  op->root = root;
  return Enqueue(*state_, state_, std::move(op), o.timeout_s);
}

std::shared_ptr<Work> MpiProcessGroup::Barrier(const CollectiveOptions& o) {
  auto op = std::make_shared<Op>();
  op->kind = Kind::kBarrier;
  return Enqueue(*state_, state_, std::move(op), o.timeout_s);
}

std::unique_ptr<ProcessGroup> MpiProcessGroup::Split(int color, int key, double timeout_s) {
  collective::CheckColor(color);
  auto op = std::make_shared<Op>();
  op->kind = Kind::kSplit;
  op->color = color;
  op->key = key;
  auto work = Enqueue(*state_, state_, op, timeout_s);
  work->Wait();
  return std::unique_ptr<ProcessGroup>(new MpiProcessGroup(Adopt{}, op->split_data, op->split_id));
}

}  // namespace tessera::dist
