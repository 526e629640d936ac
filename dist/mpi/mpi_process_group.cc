#include "dist/mpi/mpi_process_group.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <exception>
#include <mutex>
#include <numeric>
#include <vector>

#include "dist/collective.h"
#include "dist/mpi/arrivals.h"
#include "dist/mpi/group_state.h"
#include "dist/mpi/heartbeat.h"
#include "dist/mpi/mpi_check.h"
#include "dist/mpi/op.h"
#include "dist/mpi/runtime.h"

namespace tessera::dist {
namespace {

using Clock = std::chrono::steady_clock;
using collective::Kind;
using mpi_internal::Op;

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

using mpi_internal::kSpinBudget;
using mpi_internal::SpinUntil;
using mpi_internal::State;

// Takes the next op for the worker, `s.mu` held: the inflight op first, which the worker adopts
// (completes) before anything issued after it; else the head of the queue. Fails, without
// running it, a queued op of a broken group (returns null then). `adopted` says which.
std::shared_ptr<Op> TakeNext(State& s, bool* adopted) {
  std::shared_ptr<Op> op;
  *adopted = s.inflight && (s.adopt_inflight || !s.queue.empty() || s.stop);
  if (*adopted) {
    op = std::move(s.inflight);
    s.inflight.reset();
    s.adopt_inflight = false;
    op->adopted.store(true, std::memory_order_release);
    s.running = op;
    return op;
  }
  op = std::move(s.queue.front());
  s.queue.pop_front();
  s.queued.store(s.queue.size(), std::memory_order_release);
  if (!s.broken.empty()) {
    s.Finish(*op, std::make_exception_ptr(CommError(op->What() + " was not run: " + s.BrokenMessage())), "");
    return nullptr;
  }
  s.running = op;
  return op;
}

// Runs `op` (or, adopted, completes it with MPI_Wait); returns its failure and the reason.
std::exception_ptr Execute(State& s, Op& op, bool adopted, std::string* reason) {
  try {
    if (adopted) {
      std::lock_guard<std::mutex> test(op.test_mu);
      if (op.finished.load(std::memory_order_acquire)) return nullptr;  // its Wait() got there first
      do {
        TESSERA_MPI_CHECK(MPI_Wait(&op.request, MPI_STATUS_IGNORE));
      } while (!mpi_internal::ContinueNonblocking(op, s.data, s.rank, s.size));
    } else {
      s.entered->store(op.seq, std::memory_order_release);  // for the heartbeats
      mpi_internal::RunOp(op, s.data, s.rank, s.size);
    }
  } catch (const std::exception& e) {
    *reason = op.What() + " failed: " + e.what();
    return std::make_exception_ptr(CommError(*reason));
  }
  return nullptr;
}

// Sleeps until there is work: queued ops, stop, or an inflight op to adopt (asked for, or
// kAdoptAfter old: the worker looks every kAdoptAfter, since starting an op does not wake it).
void WaitForWork(State& s, std::unique_lock<std::mutex>& lock) {
  const auto ready = [&] { return s.stop || !s.queue.empty() || s.adopt_inflight; };
  while (!s.work_cv.wait_for(lock, mpi_internal::kAdoptAfter, ready)) {
    if (s.inflight && Clock::now() - s.inflight->issued >= mpi_internal::kAdoptAfter) {
      s.adopt_inflight = true;
      return;
    }
  }
}

void RunWorker(std::shared_ptr<State> s) {
  for (;;) {
    std::shared_ptr<Op> op;
    bool adopted = false;
    {
      SpinUntil([&] { return s->queued.load(std::memory_order_acquire) > 0; }, kSpinBudget);
      std::unique_lock<std::mutex> lock(s->mu);
      WaitForWork(*s, lock);
      if (s->queue.empty() && !(s->inflight && (s->adopt_inflight || s->stop))) {
        if (s->stop) break;
        s->adopt_inflight = false;  // its Wait() finished it meanwhile
        continue;
      }
      op = TakeNext(*s, &adopted);
      if (!op) continue;
    }
    std::string reason;
    std::exception_ptr error = Execute(*s, *op, adopted, &reason);
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->running.reset();
      if (!op->done) s->Finish(*op, error, reason);
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

// Starts `op` on the issuing thread (the group is idle, so every earlier op is done and the
// order on the communicator is kept); `s.mu` held. A failure to start is the op's failure.
void StartInflight(State& s, const std::shared_ptr<Op>& op) {
  op->caller_started = true;
  s.entered->store(op->seq, std::memory_order_release);  // for the heartbeats
  try {
    mpi_internal::StartNonblocking(*op, s.data, s.rank, s.size);
  } catch (const std::exception& e) {
    const std::string reason = op->What() + " failed: " + e.what();
    s.Finish(*op, std::make_exception_ptr(CommError(reason)), reason);
    return;
  }
  s.inflight = op;
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
  if (s.queue.empty() && !s.running && !s.inflight && mpi_internal::UsesNonblocking(*op, s.size)) {
    StartInflight(s, op);
  } else {
    s.queue.push_back(op);
    s.queued.store(s.queue.size(), std::memory_order_release);
    s.work_cv.notify_one();
  }
  return mpi_internal::MakeWork(shared, std::move(op));
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
    // Drain: each pending collective gets until its deadline; the worker completes an inflight one.
    Clock::time_point latest = Clock::now();
    for (const auto& op : s.queue) latest = std::max(latest, op->deadline);
    for (const auto* op : {s.running.get(), s.inflight.get()})
      if (op) latest = std::max(latest, op->deadline);
    if (s.inflight) {
      s.adopt_inflight = true;
      s.work_cv.notify_one();
    }
    const auto idle = [&] { return (s.queue.empty() && !s.running && !s.inflight) || !s.broken.empty(); };
    if (!s.done_cv.wait_until(lock, latest, idle)) {
      const Op* stuck = s.running ? s.running.get() : s.inflight.get();
      s.Break((stuck ? stuck->What() : std::string("a collective")) +
              " had not completed by its deadline when its process group was destroyed");
      std::fprintf(stderr, "tessera: rank %d of a group of %d: %s; the job cannot continue\n", s.rank, s.size,
                   s.broken.c_str());
      std::fflush(stderr);
    }
    s.stop = true;
    if (!s.broken.empty()) {
      for (auto& op : s.queue)
        s.Finish(*op, std::make_exception_ptr(CommError(op->What() + " was not run: " + s.BrokenMessage())),
                 "");
      s.queue.clear();
      s.queued.store(0);
    }
    // A worker still inside MPI (its collective timed out), or about to adopt an inflight op that
    // has not completed, cannot be joined.
    join = !s.running && !s.inflight;
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
