#include "dist/reducer.h"

#include <algorithm>
#include <cstring>

#include "dist/collective.h"

namespace tessera::dist {

Reducer::Reducer(nn::FlatParameters& params, ProcessGroup& group, double bucket_mb, double timeout_s,
                 const ZeroPartition* partition)
    : params_(params), group_(group), partition_(partition) {
  if (partition && (partition->numel != params.numel() || partition->world != group.size()))
    TESSERA_THROW(ValueError, "Reducer: a ZeRO partition of ", partition->numel, " elements over ", partition->world,
                  " ranks for ", params.numel(), " elements over ", group.size());
  if (!(bucket_mb > 0)) TESSERA_THROW(ValueError, "Reducer: bucket size must be > 0 MB, got ", bucket_mb);
  options_.op = ReduceOp::kSum;
  options_.timeout_s = timeout_s;
  const auto& entries = params.entries();
  const int64_t elem = static_cast<int64_t>(SizeOf(params.grads().dtype()));
  const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024) / elem);
  bucket_of_param_.assign(entries.size(), -1);
  // Walk from the last parameter to the first; a bucket spans [offset of its first-laid-out
  // parameter, end of the previous bucket's start or the buffer end).
  int64_t end = params.numel();
  Bucket cur{0, end, {}};
  for (int i = static_cast<int>(entries.size()) - 1; i >= 0; --i) {
    cur.params.push_back(i);
    cur.begin = entries[i].offset;
    if (cur.end - cur.begin >= cap || i == 0) {
      if (i == 0) cur.begin = 0;
      buckets_.push_back(cur);
      cur = Bucket{0, cur.begin, {}};
    }
  }
  for (size_t b = 0; b < buckets_.size(); ++b)
    for (int p : buckets_[b].params) bucket_of_param_[p] = static_cast<int>(b);
  pending_.resize(buckets_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) pending_[b] = static_cast<int>(buckets_[b].params.size());
  params.SetGradReadyHook([this](nn::Parameter& p) { OnGradReady(p); });
}

Reducer::~Reducer() {
  params_.SetGradReadyHook(nullptr);
  for (InFlight& f : work_) {  // no collective may still use the buffers (NCCL keeps no reference)
    try {
      f.work->Wait();
    } catch (...) {  // reported where it happened
    }
  }
}

void Reducer::OnGradReady(nn::Parameter& p) {
  if (!enabled_ || buckets_.empty()) return;
  // Entries are in offset order: find this parameter's entry by its offset.
  const auto& entries = params_.entries();
  auto it = std::lower_bound(entries.begin(), entries.end(), p.offset,
                             [](const nn::FlatParameters::Entry& e, int64_t off) { return e.offset < off; });
  TESSERA_CHECK(it != entries.end() && it->param == &p, "gradient hook for a parameter outside the flat buffer");
  int b = bucket_of_param_[it - entries.begin()];
  --pending_[b];
  LaunchReady();
}

void Reducer::LaunchReady() {
  while (next_to_launch_ < static_cast<int>(buckets_.size()) && pending_[next_to_launch_] <= 0)
    Launch(buckets_[next_to_launch_++]);
  Retire(/*wait=*/false);
}

void Reducer::Launch(const Bucket& b) {
  Tensor& grads = params_.grads();
  if (!partition_) {
    Tensor slice = grads.View(b.begin, {b.end - b.begin});
    work_.push_back({group_.AllReduce(slice, options_), b.begin, b.end, false});
    return;
  }
  for (const ZeroPartition::Piece& p : partition_->Split(b.begin, b.end)) {
    Tensor slice = grads.View(p.begin, {p.end - p.begin});
    work_.push_back({group_.Reduce(slice, p.owner, options_), p.begin, p.end, p.owner != group_.rank()});
  }
}

void Reducer::Retire(bool wait) {
  for (; retired_ < work_.size(); ++retired_) {
    InFlight& f = work_[retired_];
    if (wait) f.work->Wait();
    else if (!f.work->IsCompleted()) return;
    else f.work->Wait();  // rethrows a failure
    if (!f.release) continue;
    ZeroAndRelease(params_.grads().View(f.begin, {f.end - f.begin}));
  }
}

void Reducer::Finish() {
  std::exception_ptr error;
  if (enabled_) {
    for (int& p : pending_) p = 0;  // parameters that got no gradient: reduce their zeros too
    try {
      LaunchReady();
    } catch (...) {
      error = std::current_exception();
    }
  }
  next_to_launch_ = 0;
  for (size_t b = 0; b < buckets_.size(); ++b) pending_[b] = static_cast<int>(buckets_[b].params.size());
  // Wait for everything even after a failure, so that no collective still uses the buffers.
  while (retired_ < work_.size()) {
    try {
      Retire(/*wait=*/true);
    } catch (...) {
      if (!error) error = std::current_exception();
      ++retired_;
    }
  }
  work_.clear();
  retired_ = 0;
  if (error) std::rethrow_exception(error);
}

namespace {
uint64_t Fnv1a(const void* data, size_t n) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
uint64_t Checksum(const Tensor& t) { return Fnv1a(t.raw_data(), t.nbytes()); }

// Every rank must have built the same flat layout (the same parameters, in order, at the same
// offsets, of the same dtype) before rank `root`'s values can mean anything to the others: a
// ConfigError on every rank names the ranks that differ from the root.
void CheckSameLayout(const nn::FlatParameters& params, ProcessGroup& group, int root, const CollectiveOptions& o) {
  collective::CheckRoot("broadcast", root, group.size());
  std::string text = detail::StrCat(DTypeName(params.values().dtype()), " ", params.numel());
  for (const auto& e : params.entries()) text += detail::StrCat(" ", e.name, "@", e.offset, "+", e.numel);
  Tensor mine = Tensor::FromVector({0}, {1}, DType::kI64);
  *mine.data<int64_t>() = static_cast<int64_t>(Fnv1a(text.data(), text.size()) >> 1);
  Tensor all = Tensor::Empty({group.size()}, DType::kI64);
  group.AllGather(mine, all, o)->Wait();
  std::string differ;
  for (int r = 0; r < group.size(); ++r)
    if (all.data<int64_t>()[r] != all.data<int64_t>()[root]) differ += detail::StrCat(differ.empty() ? "" : ", ", r);
  const bool one = differ.find(',') == std::string::npos;
  if (!differ.empty())
    TESSERA_THROW(ConfigError, "the ranks built different models: rank", one ? " " : "s ", differ,
                  one ? " differs" : " differ", " from rank ", root, " (here, on rank ", group.rank(), ": ", params.entries().size(),
                  " parameters, ", params.numel(), " ", DTypeName(params.values().dtype()),
                  " elements with padding); do all ranks run the same job spec?");
}
}  // namespace

void BroadcastParameters(nn::FlatParameters& params, ProcessGroup& group, int root, double timeout_s) {
  CollectiveOptions o;
  o.timeout_s = timeout_s;
  CheckSameLayout(params, group, root, o);
  group.Broadcast(params.values(), root, o)->Wait();
  // Verify: the min and the max of every rank's checksum must agree.
  uint64_t h = Checksum(params.values()) >> 1;  // fits an i64
  Tensor lo = Tensor::FromVector({0}, {1}, DType::kI64), hi = Tensor::FromVector({0}, {1}, DType::kI64);
  *lo.data<int64_t>() = static_cast<int64_t>(h);
  *hi.data<int64_t>() = static_cast<int64_t>(h);
  o.op = ReduceOp::kMin;
  group.AllReduce(lo, o)->Wait();
  o.op = ReduceOp::kMax;
  group.AllReduce(hi, o)->Wait();
  if (*lo.data<int64_t>() != *hi.data<int64_t>())
    TESSERA_THROW(CommError, "initial parameters differ between ranks after the broadcast from rank ", root,
                  " (checksums ", *lo.data<int64_t>(), " vs ", *hi.data<int64_t>(), ")");
}

}  // namespace tessera::dist
