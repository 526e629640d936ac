#include "dist/threads/thread_process_group.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>

#include "dist/collective.h"

namespace tessera::dist {
namespace {

using collective::Clock;
using collective::Kind;

// Collective #seq as the ranks issue it. Guarded by World::mu.
struct Slot {
  Slot(Kind k, int n) : kind(k), arrived(n, false), what(n), a(n), b(n), op(n), split(n) {}
  Kind kind;
  int count = 0;                // ranks that issued it
  std::vector<bool> arrived;    // per rank
  std::vector<std::string> what;  // per rank: its description ("allreduce #3 (5 f32, group of 2)")
  std::vector<Tensor> a, b;     // per rank: as in dist/mpi (the tensor or input; the output)
  std::vector<ReduceOp> op;
  int root = -1;                // broadcast, reduce: the first rank's root (the others' are in `what`)
  std::vector<std::pair<int, int>> color_key;  // split, per rank
  std::vector<std::unique_ptr<ProcessGroup>> split;
  bool done = false;            // computed (or failed: `error`)
  bool abandoned = false;       // a rank's deadline passed first: never computed
  int abandoned_by = -1;
  std::string timeout_message;  // that rank's diagnosis, which every rank then reports
  std::string error;
};

struct World {
  explicit World(int n) : size(n), next_seq(n, 1), broken(n) {}
  const int size;
  std::mutex mu;
  std::condition_variable cv;  // a slot was completed
  std::map<uint64_t, std::shared_ptr<Slot>> pending;
  std::vector<uint64_t> next_seq;    // per rank
  std::vector<std::string> broken;   // per rank: why its group is broken ("" while healthy)
};

void CheckTensor(const char* op, const char* role, const Tensor& t) {
  if (t.numel() > 0 && !t.device().is_cpu())
    TESSERA_THROW(DeviceError, op, ": ", role, " ", t.Describe(), " is not on the CPU; the thread process group "
                  "takes CPU tensors");
  if (!collective::ReducibleOnCpu(t.dtype()))
    TESSERA_THROW(ShapeError, op, ": ", role, " ", DTypeName(t.dtype()), t.ShapeStr(),
                  ": the thread process group supports f32, f64, i32 and i64");
}

// ---- computing a collective for every rank (by the last to issue it, under World::mu) ---------

// acc = the reduction over the ranks, in rank order, of `part(r)` (each `n` elements of `dtype`).
Tensor ReduceOverRanks(int size, int64_t n, DType dtype, ReduceOp op, const std::function<const void*(int)>& part) {
  Tensor acc = Tensor::Empty({n}, dtype);
  const size_t bytes = static_cast<size_t>(n) * SizeOf(dtype);
  if (bytes > 0) std::memcpy(acc.raw_data(), part(0), bytes);
  for (int r = 1; r < size; ++r) collective::ReduceInto(acc.raw_data(), part(r), n, dtype, op);
  if (op == ReduceOp::kAvg) collective::DivideBy(acc, size);
  return acc;
}

// Element `element` of `t`.
char* At(Tensor& t, int64_t element) {
  return static_cast<char*>(t.raw_data()) + element * static_cast<int64_t>(SizeOf(t.dtype()));
}

// Every rank must have issued the same collective: the same description (kind, sizes, dtype,
// root), reduction and, for a split, anything.
std::string Mismatch(const Slot& s, int size) {
  for (int r = 1; r < size; ++r) {
    if (s.what[r] != s.what[0])
      return detail::StrCat("the ranks issued different collectives at this point: rank 0 ", s.what[0], ", rank ", r,
                            " ", s.what[r]);
    if ((s.kind == Kind::kAllReduce || s.kind == Kind::kReduce || s.kind == Kind::kReduceScatter) &&
        s.op[r] != s.op[0])
      return detail::StrCat("rank ", r, " asked for another reduction than rank 0");
  }
  return "";
}

void Compute(Slot& s, int size) {
  switch (s.kind) {
    case Kind::kAllReduce: {
      const int64_t n = s.a[0].numel();
      Tensor acc = ReduceOverRanks(size, n, s.a[0].dtype(), s.op[0], [&](int r) { return s.a[r].raw_data(); });
      for (int r = 0; r < size; ++r)
        if (n > 0) std::memcpy(s.a[r].raw_data(), acc.raw_data(), acc.nbytes());
      return;
    }
    case Kind::kReduce: {
      const int64_t n = s.a[0].numel();
      Tensor acc = ReduceOverRanks(size, n, s.a[0].dtype(), s.op[0], [&](int r) { return s.a[r].raw_data(); });
      if (n > 0) std::memcpy(s.a[s.root].raw_data(), acc.raw_data(), acc.nbytes());
      return;
    }
    case Kind::kReduceScatter: {
      const int64_t n = s.b[0].numel();
      for (int r = 0; r < size; ++r) {
        Tensor acc = ReduceOverRanks(size, n, s.a[0].dtype(), s.op[0], [&](int q) { return At(s.a[q], r * n); });
        if (n > 0) std::memcpy(s.b[r].raw_data(), acc.raw_data(), acc.nbytes());
      }
      return;
    }
    case Kind::kAllGather: {
      const int64_t n = s.a[0].numel();
      const size_t bytes = static_cast<size_t>(n) * SizeOf(s.a[0].dtype());
      for (int r = 0; r < size; ++r)
        for (int q = 0; q < size && bytes > 0; ++q) std::memmove(At(s.b[r], q * n), s.a[q].raw_data(), bytes);
      return;
    }
    case Kind::kBroadcast: {
      for (int r = 0; r < size; ++r)
        if (r != s.root && s.a[r].nbytes() > 0) std::memcpy(s.a[r].raw_data(), s.a[s.root].raw_data(), s.a[r].nbytes());
      return;
    }
    case Kind::kBarrier: return;
    case Kind::kSplit: {
      std::map<int, std::vector<std::pair<int, int>>> by_color;  // color -> (key, rank)
      for (int r = 0; r < size; ++r) by_color[s.color_key[r].first].push_back({s.color_key[r].second, r});
      for (auto& [color, members] : by_color) {
        std::sort(members.begin(), members.end());
        std::vector<std::unique_ptr<ProcessGroup>> groups = MakeThreadGroups(static_cast<int>(members.size()));
        for (size_t i = 0; i < members.size(); ++i) s.split[members[i].second] = std::move(groups[i]);
      }
      return;
    }
  }
}

void Complete(Slot& s, int size) {
  s.error = Mismatch(s, size);
  if (s.error.empty()) {
    try {
      Compute(s, size);
    } catch (const std::exception& e) {
      s.error = e.what();
    }
  }
  s.done = true;
}

// ---- Work and the group -----------------------------------------------------------------------

class ThreadWork : public Work {
 public:
  // `late`: issued after another rank had given up on the collective.
  ThreadWork(std::shared_ptr<World> w, std::shared_ptr<Slot> s, int rank, uint64_t seq, std::string what,
             double timeout_s, Clock::time_point deadline, bool late)
      : w_(std::move(w)), s_(std::move(s)), rank_(rank), seq_(seq), what_(std::move(what)), timeout_s_(timeout_s),
        deadline_(deadline), late_(late) {}

  void Wait() override {
    std::unique_lock<std::mutex> lock(w_->mu);
    std::string& broken = w_->broken[rank_];
    if (!timeout_message_.empty()) throw CommTimeoutError(timeout_message_);
    if (late_) {
      const std::string m = detail::StrCat(what_, " cannot complete: rank ", s_->abandoned_by,
                                           " gave up waiting for it (its deadline passed)");
      if (broken.empty()) broken = m;
      w_->cv.notify_all();  // this rank's other works
      throw CommError(m);
    }
    const bool ended = w_->cv.wait_until(lock, deadline_, [&] { return s_->done || s_->abandoned || !broken.empty(); });
    if (s_->done) {
      if (s_->error.empty()) return;
      if (broken.empty()) broken = what_ + " failed: " + s_->error;
      w_->cv.notify_all();
      throw CommError(what_ + " failed: " + s_->error);
    }
    if (!ended || s_->abandoned) {
      // The deadline passed, here or on a rank that arrived too: the same diagnosis on every rank.
      if (!s_->abandoned) {
        std::vector<int> missing;
        for (int r = 0; r < w_->size; ++r)
          if (!s_->arrived[r]) missing.push_back(r);
        s_->abandoned = true;
        s_->abandoned_by = rank_;
        s_->timeout_message = detail::StrCat(what_, " did not complete within ", timeout_s_,
                                             " s: ranks that did not arrive: ", collective::RankList(missing),
                                             "; the job cannot continue (a rank died, hung or was stopped)");
      }
      timeout_message_ = s_->timeout_message;
      if (broken.empty()) broken = timeout_message_;
      w_->cv.notify_all();  // this rank's other works, and the slot's other waiters
      throw CommTimeoutError(timeout_message_);
    }
    throw CommError(what_ + " cannot complete: the process group is broken and cannot be used: " + broken);
  }

  bool IsCompleted() override {
    std::lock_guard<std::mutex> lock(w_->mu);
    return s_->done;
  }

  uint64_t sequence() const override { return seq_; }

  // Split's result for this rank (after Wait()).
  std::unique_ptr<ProcessGroup> TakeSplit() {
    std::lock_guard<std::mutex> lock(w_->mu);
    return std::move(s_->split[rank_]);
  }

 private:
  std::shared_ptr<World> w_;
  std::shared_ptr<Slot> s_;
  const int rank_;
  const uint64_t seq_;
  const std::string what_;
  const double timeout_s_;
  const Clock::time_point deadline_;
  const bool late_;
  std::string timeout_message_;  // guarded by World::mu
};

class ThreadProcessGroup : public ProcessGroup {
 public:
  ThreadProcessGroup(std::shared_ptr<World> w, int rank) : w_(std::move(w)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return w_->size; }
  std::string backend() const override { return "threads"; }

  std::shared_ptr<Work> AllReduce(Tensor& t, const CollectiveOptions& o) override {
    CheckTensor("allreduce", "tensor", t);
    return Issue(Kind::kAllReduce, o.timeout_s, collective::Elements(t) + ", ", [&](Slot& s) {
      s.a[rank_] = t;
      s.op[rank_] = o.op;
    });
  }

  std::shared_ptr<Work> Reduce(Tensor& t, int root, const CollectiveOptions& o) override {
    CheckTensor("reduce", "tensor", t);
    collective::CheckRoot("reduce", root, size());
    return Issue(Kind::kReduce, o.timeout_s, detail::StrCat(collective::Elements(t), " to rank ", root, ", "),
                 [&](Slot& s) {
                   s.a[rank_] = t;
                   s.op[rank_] = o.op;
                   if (s.root < 0) s.root = root;
                 });
  }

  std::shared_ptr<Work> ReduceScatter(const Tensor& input, Tensor& output, const CollectiveOptions& o) override {
    CheckTensor("reduce_scatter", "input", input);
    CheckTensor("reduce_scatter", "output", output);
    collective::CheckReduceScatterSizes(input, output, size());
    return Issue(Kind::kReduceScatter, o.timeout_s,
                 detail::StrCat(collective::Elements(input), " -> ", output.numel(), ", "), [&](Slot& s) {
                   s.a[rank_] = input;
                   s.b[rank_] = output;
                   s.op[rank_] = o.op;
                 });
  }

  std::shared_ptr<Work> AllGather(const Tensor& input, Tensor& output, const CollectiveOptions& o) override {
    CheckTensor("allgather", "input", input);
    CheckTensor("allgather", "output", output);
    collective::CheckAllGatherSizes(input, output, size());
    collective::AllGatherInPlace(input, output, rank_);  // refuses any other overlap
    return Issue(Kind::kAllGather, o.timeout_s,
                 detail::StrCat(collective::Elements(input), " -> ", output.numel(), ", "), [&](Slot& s) {
                   s.a[rank_] = input;
                   s.b[rank_] = output;
                 });
  }

  std::shared_ptr<Work> Broadcast(Tensor& t, int root, const CollectiveOptions& o) override {
    CheckTensor("broadcast", "tensor", t);
    collective::CheckRoot("broadcast", root, size());
    return Issue(Kind::kBroadcast, o.timeout_s, detail::StrCat(collective::Elements(t), " from rank ", root, ", "),
                 [&](Slot& s) {
                   s.a[rank_] = t;
                   if (s.root < 0) s.root = root;
                 });
  }

  std::shared_ptr<Work> Barrier(const CollectiveOptions& o) override {
    return Issue(Kind::kBarrier, o.timeout_s, "", [](Slot&) {});
  }

  std::unique_ptr<ProcessGroup> Split(int color, int key, double timeout_s) override {
    collective::CheckColor(color);
    auto work = Issue(Kind::kSplit, timeout_s, "", [&](Slot& s) {
      if (s.color_key.empty()) s.color_key.resize(w_->size);
      s.color_key[rank_] = {color, key};
    });
    work->Wait();
    return static_cast<ThreadWork&>(*work).TakeSplit();
  }

 private:
  // Enters this rank into collective #seq; the last rank to do so computes it for all.
  std::shared_ptr<Work> Issue(Kind kind, double timeout_s, const std::string& desc, const std::function<void(Slot&)>& fill) {
    collective::CheckTimeout(kind, timeout_s);
    const Clock::time_point deadline = collective::Deadline(Clock::now(), timeout_s);
    std::lock_guard<std::mutex> lock(w_->mu);
    if (!w_->broken[rank_].empty())
      TESSERA_THROW(CommError, collective::Name(kind), ": the process group is broken and cannot be used: ",
                    w_->broken[rank_]);
    const uint64_t seq = w_->next_seq[rank_]++;
    std::shared_ptr<Slot>& slot = w_->pending[seq];
    if (!slot) slot = std::make_shared<Slot>(kind, w_->size);
    std::shared_ptr<Slot> s = slot;
    const bool late = s->abandoned;
    s->what[rank_] = collective::Describe(kind, seq, desc, w_->size);
    s->arrived[rank_] = true;
    ++s->count;
    fill(*s);
    if (s->count == w_->size) {
      w_->pending.erase(seq);
      if (!s->abandoned) {
        Complete(*s, w_->size);
        w_->cv.notify_all();
      }
    }
    return std::make_shared<ThreadWork>(w_, s, rank_, seq, s->what[rank_], timeout_s, deadline, late);
  }

  std::shared_ptr<World> w_;
  const int rank_;
};

}  // namespace

std::vector<std::unique_ptr<ProcessGroup>> MakeThreadGroups(int size) {
  if (size < 1) TESSERA_THROW(ValueError, "MakeThreadGroups: size must be >= 1, got ", size);
  auto world = std::make_shared<World>(size);
  std::vector<std::unique_ptr<ProcessGroup>> groups;
  for (int r = 0; r < size; ++r) groups.push_back(std::make_unique<ThreadProcessGroup>(world, r));
  return groups;
}

}  // namespace tessera::dist
