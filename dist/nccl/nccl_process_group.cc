#include "dist/nccl/nccl_process_group.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <sstream>
#include <thread>

#include "core/ops/cuda/context.h"
#include "core/ops/cuda/cuda_check.h"
#include "dist/collective.h"

namespace tessera::dist {
namespace {

using Clock = std::chrono::steady_clock;

#define TESSERA_NCCL_CHECK(call)                                                                   \
  do {                                                                                             \
    ncclResult_t tessera_nccl_ = (call);                                                           \
    if (tessera_nccl_ != ncclSuccess)                                                              \
      TESSERA_THROW(CommError, #call, " failed at ", __FILE__, ":", __LINE__, ": ",                \
                    ncclGetErrorString(tessera_nccl_));                                           \
  } while (0)

ncclDataType_t NcclType(const char* op, DType t) {
  switch (t) {
    case DType::kF32: return ncclFloat32;
    case DType::kF64: return ncclFloat64;
    case DType::kBF16: return ncclBfloat16;
    case DType::kF16: return ncclFloat16;
    case DType::kI32: return ncclInt32;
    case DType::kI64: return ncclInt64;
    case DType::kI8: return ncclInt8;
  }
  TESSERA_THROW(ShapeError, op, ": unsupported dtype");
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

struct Shared {
  ncclComm_t comm = nullptr;
  int device = 0, rank = 0, size = 1;
  cudaStream_t stream = nullptr;
  uint64_t seq = 0;
  bool broken = false;
  std::string broken_why;
};

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<Shared> s, uint64_t seq, std::string what, double timeout_s, cudaEvent_t done)
      : s_(std::move(s)), seq_(seq), what_(std::move(what)), deadline_(Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s))),
        timeout_s_(timeout_s), done_(done) {}
  ~NcclWork() override {
    if (done_) cudaEventDestroy(done_);
  }

  bool IsCompleted() override {
    if (completed_) return true;
    cudaError_t e = cudaEventQuery(done_);
    if (e == cudaSuccess) completed_ = true;
    else if (e != cudaErrorNotReady) TESSERA_CUDA_CHECK(e);
    return completed_;
  }

  void Wait() override {
    cuda::DeviceGuard guard(s_->device);
    while (!IsCompleted()) {
      ncclResult_t async_error = ncclSuccess;
      TESSERA_NCCL_CHECK(ncclCommGetAsyncError(s_->comm, &async_error));
      if (async_error != ncclSuccess) Break(std::string(what_) + " failed: " + ncclGetErrorString(async_error));
      if (Clock::now() > deadline_) {
        std::ostringstream m;
        m << what_ << " did not complete within " << timeout_s_
          << " s (NCCL cannot tell which ranks did not arrive); the job cannot continue (a rank died, hung or "
             "was stopped)";
        Break(m.str(), true);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  uint64_t sequence() const override { return seq_; }

 private:
  [[noreturn]] void Break(const std::string& why, bool timeout = false) {
    if (!s_->broken) {
      s_->broken = true;
      s_->broken_why = why;
      ncclCommAbort(s_->comm);  // releases the kernels stuck waiting for the missing peers
      s_->comm = nullptr;
    }
    if (timeout) throw CommTimeoutError(why);
    throw CommError(why);
  }

  std::shared_ptr<Shared> s_;
  uint64_t seq_;
  std::string what_;
  Clock::time_point deadline_;
  double timeout_s_;
  cudaEvent_t done_;
  bool completed_ = false;
};

class NcclProcessGroup : public ProcessGroup {
 public:
  explicit NcclProcessGroup(std::shared_ptr<Shared> s) : s_(std::move(s)) {}
  ~NcclProcessGroup() override {
    if (s_->comm) ncclCommDestroy(s_->comm);
  }

  int rank() const override { return s_->rank; }
  int size() const override { return s_->size; }
  std::string backend() const override { return "nccl"; }

  std::shared_ptr<Work> AllReduce(Tensor& t, const CollectiveOptions& o) override {
    Check("allreduce", t);
    return Launch("allreduce", t, o, [&](cudaStream_t st) {
      return ncclAllReduce(t.raw_data(), t.raw_data(), t.numel(), NcclType("allreduce", t.dtype()), NcclOp(o.op),
                           s_->comm, st);
    });
  }

  std::shared_ptr<Work> Reduce(Tensor& t, int root, const CollectiveOptions& o) override {
    Check("reduce", t);
    if (root < 0 || root >= s_->size) TESSERA_THROW(ValueError, "reduce: root ", root, " outside the group of ", s_->size);
    return Launch("reduce", t, o, [&](cudaStream_t st) {
      return ncclReduce(t.raw_data(), t.raw_data(), t.numel(), NcclType("reduce", t.dtype()), NcclOp(o.op), root,
                        s_->comm, st);
    });
  }

  std::shared_ptr<Work> ReduceScatter(const Tensor& in, Tensor& out, const CollectiveOptions& o) override {
    Check("reduce_scatter", in);
    Check("reduce_scatter", out);
    if (in.numel() != out.numel() * s_->size || in.dtype() != out.dtype())
      TESSERA_THROW(ShapeError, "reduce_scatter: input ", in.Describe(), " must hold ", s_->size, " x the output ",
                    out.Describe());
    return Launch("reduce_scatter", out, o, [&](cudaStream_t st) {
      return ncclReduceScatter(in.raw_data(), out.raw_data(), out.numel(), NcclType("reduce_scatter", in.dtype()),
                               NcclOp(o.op), s_->comm, st);
    });
  }

  std::shared_ptr<Work> AllGather(const Tensor& in, Tensor& out, const CollectiveOptions& o) override {
    Check("allgather", in);
    Check("allgather", out);
    if (out.numel() != in.numel() * s_->size || in.dtype() != out.dtype())
      TESSERA_THROW(ShapeError, "allgather: output ", out.Describe(), " must hold ", s_->size, " x the input ",
                    in.Describe());
    collective::AllGatherInPlace(in, out, s_->rank);  // refuses any other overlap
    return Launch("allgather", out, o, [&](cudaStream_t st) {
      return ncclAllGather(in.raw_data(), out.raw_data(), in.numel(), NcclType("allgather", in.dtype()), s_->comm, st);
    });
  }

  std::shared_ptr<Work> Broadcast(Tensor& t, int root, const CollectiveOptions& o) override {
    Check("broadcast", t);
    if (root < 0 || root >= s_->size) TESSERA_THROW(ValueError, "broadcast: root ", root, " outside the group of ", s_->size);
    return Launch("broadcast", t, o, [&](cudaStream_t st) {
      return ncclBroadcast(t.raw_data(), t.raw_data(), t.numel(), NcclType("broadcast", t.dtype()), root, s_->comm, st);
    });
  }

  std::shared_ptr<Work> Barrier(const CollectiveOptions& o) override {
    if (!barrier_.defined()) barrier_ = Tensor::Zeros({1}, DType::kF32, Device::CUDA(s_->device));
    return AllReduce(barrier_, o);
  }

  // ncclCommSplit blocks until every rank arrives; it has no deadline of its own.
  std::unique_ptr<ProcessGroup> Split(int color, int key, double /*timeout_s*/) override {
    Usable();
    cuda::DeviceGuard guard(s_->device);
    auto s = std::make_shared<Shared>();
    s->device = s_->device;
    TESSERA_NCCL_CHECK(ncclCommSplit(s_->comm, color, key, &s->comm, nullptr));
    TESSERA_NCCL_CHECK(ncclCommUserRank(s->comm, &s->rank));
    TESSERA_NCCL_CHECK(ncclCommCount(s->comm, &s->size));
    TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    return std::make_unique<NcclProcessGroup>(s);
  }

 private:
  void Usable() const {
    if (s_->broken) TESSERA_THROW(CommError, "the NCCL process group is broken and cannot be used: ", s_->broken_why);
  }

  void Check(const char* op, const Tensor& t) const {
    Usable();
    if (!t.defined() || !t.device().is_cuda() || t.device().index != s_->device)
      TESSERA_THROW(ShapeError, op, ": NCCL tensors must be on cuda:", s_->device, ", got ",
                    t.defined() ? t.Describe() : "an undefined tensor");
  }

  template <typename Fn>
  std::shared_ptr<Work> Launch(const char* op, const Tensor& t, const CollectiveOptions& o, Fn fn) {
    if (!(o.timeout_s > 0)) TESSERA_THROW(ValueError, op, ": timeout must be > 0 s");
    cuda::DeviceGuard guard(s_->device);
    const uint64_t seq = ++s_->seq;
    cudaStream_t compute = cuda::CurrentStream(s_->device);
    // The collective waits for the compute queued so far; later compute waits for the collective.
    cudaEvent_t ready, done;
    TESSERA_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    TESSERA_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    TESSERA_CUDA_CHECK(cudaEventRecord(ready, compute));
    TESSERA_CUDA_CHECK(cudaStreamWaitEvent(s_->stream, ready, 0));
    TESSERA_CUDA_CHECK(cudaEventDestroy(ready));
    ncclResult_t r = fn(s_->stream);
    if (r != ncclSuccess)
      TESSERA_THROW(CommError, op, " #", seq, " failed to start: ", ncclGetErrorString(r));
    TESSERA_CUDA_CHECK(cudaEventRecord(done, s_->stream));
    TESSERA_CUDA_CHECK(cudaStreamWaitEvent(compute, done, 0));
    std::ostringstream what;
    what << op << " #" << seq << " (" << t.numel() << " " << DTypeName(t.dtype()) << ", group of " << s_->size << ")";
    return std::make_shared<NcclWork>(s_, seq, what.str(), o.timeout_s, done);
  }

  std::shared_ptr<Shared> s_;
  Tensor barrier_;
};

}  // namespace

std::unique_ptr<ProcessGroup> MakeNcclProcessGroup(ProcessGroup& bootstrap, int device) {
  std::string why;
  if (!CudaAvailable(&why)) TESSERA_THROW(DeviceError, "NCCL process group: ", why);
  cuda::DeviceGuard guard(device);
  ncclUniqueId id;
  static_assert(sizeof(ncclUniqueId) % 4 == 0, "ncclUniqueId is sent as i32 words");
  Tensor buf = Tensor::Zeros({static_cast<int64_t>(sizeof(ncclUniqueId) / 4)}, DType::kI32);
  if (bootstrap.rank() == 0) {
    TESSERA_NCCL_CHECK(ncclGetUniqueId(&id));
    std::memcpy(buf.raw_data(), &id, sizeof id);
  }
  bootstrap.Broadcast(buf, 0)->Wait();
  std::memcpy(&id, buf.raw_data(), sizeof id);
  auto s = std::make_shared<Shared>();
  s->device = device;
  s->rank = bootstrap.rank();
  s->size = bootstrap.size();
  TESSERA_NCCL_CHECK(ncclCommInitRank(&s->comm, s->size, id, s->rank));
  TESSERA_CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
  return std::make_unique<NcclProcessGroup>(s);
}

}  // namespace tessera::dist
