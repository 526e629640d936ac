#include "dist/collective.h"

#include <algorithm>
#include <sstream>

namespace tessera::dist::collective {

namespace {
// Longer timeouts are treated as this (keeps deadlines representable).
constexpr double kMaxTimeoutS = 1e7;
}  // namespace

const char* Name(Kind kind) {
  switch (kind) {
    case Kind::kAllReduce: return "allreduce";
    case Kind::kReduce: return "reduce";
    case Kind::kReduceScatter: return "reduce_scatter";
    case Kind::kAllGather: return "allgather";
    case Kind::kBroadcast: return "broadcast";
    case Kind::kBarrier: return "barrier";
    case Kind::kSplit: return "split";
  }
  return "collective";
}

std::string RankList(const std::vector<int>& ranks) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < ranks.size(); ++i) os << (i ? ", " : "") << ranks[i];
  os << "]";
  return os.str();
}

std::string Elements(const Tensor& t) { return detail::StrCat(t.numel(), " ", DTypeName(t.dtype())); }

std::string Describe(Kind kind, uint64_t seq, const std::string& desc, int group_size) {
  return detail::StrCat(Name(kind), " #", seq, " (", desc, "group of ", group_size, ")");
}

void CheckSameDType(const char* op, const Tensor& input, const Tensor& output) {
  if (input.dtype() != output.dtype())
    TESSERA_THROW(ShapeError, op, ": input ", DTypeName(input.dtype()), input.ShapeStr(), " and output ",
                  DTypeName(output.dtype()), output.ShapeStr(), " have different dtypes");
}

void CheckReduceScatterSizes(const Tensor& input, const Tensor& output, int group_size) {
  CheckSameDType("reduce_scatter", input, output);
  const int64_t n = output.numel();
  if (input.numel() != n * group_size)
    TESSERA_THROW(ShapeError, "reduce_scatter: input numel must equal size() * output numel: input ",
                  DTypeName(input.dtype()), input.ShapeStr(), " has ", input.numel(), " elements, output ",
                  DTypeName(output.dtype()), output.ShapeStr(), " has ", n, ", and a group of ", group_size,
                  " needs ", n * group_size);
}

void CheckAllGatherSizes(const Tensor& input, const Tensor& output, int group_size) {
  CheckSameDType("allgather", input, output);
  const int64_t n = input.numel();
  if (output.numel() != n * group_size)
    TESSERA_THROW(ShapeError, "allgather: output numel must equal size() * input numel: input ",
                  DTypeName(input.dtype()), input.ShapeStr(), " has ", n, " elements, output ",
                  DTypeName(output.dtype()), output.ShapeStr(), " has ", output.numel(), ", and a group of ",
                  group_size, " needs ", n * group_size);
}

bool AllGatherInPlace(const Tensor& input, const Tensor& output, int rank) {
  const char* in = static_cast<const char*>(input.raw_data());
  const char* out = static_cast<const char*>(output.raw_data());
  if (input.nbytes() == 0 || in + input.nbytes() <= out || out + output.nbytes() <= in) return false;
  if (in == out + static_cast<size_t>(rank) * input.nbytes()) return true;
  TESSERA_THROW(ValueError, "allgather: the input overlaps the output but is not its block ", rank,
                " (this rank's): in place, pass output's block rank() as the input");
}

void CheckRoot(const char* op, int root, int group_size) {
  if (root < 0 || root >= group_size)
    TESSERA_THROW(ValueError, op, ": root ", root, " is not a rank of this group of ", group_size);
}

void CheckTimeout(Kind kind, double timeout_s) {
  if (!(timeout_s > 0)) TESSERA_THROW(ValueError, Name(kind), ": timeout_s must be > 0, got ", timeout_s);
}

void CheckColor(int color) {
  if (color < 0) TESSERA_THROW(ValueError, "split: color must be >= 0, got ", color);
}

Clock::time_point Deadline(Clock::time_point issued, double timeout_s) {
  return issued + std::chrono::duration_cast<Clock::duration>(
                      std::chrono::duration<double>(std::min(timeout_s, kMaxTimeoutS)));
}

bool ReducibleOnCpu(DType t) {
  return t == DType::kF32 || t == DType::kF64 || t == DType::kI32 || t == DType::kI64;
}

namespace {
template <typename T>
void ReduceTyped(T* acc, const T* x, int64_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      for (int64_t i = 0; i < n; ++i) acc[i] += x[i];
      return;
    case ReduceOp::kMax:
      for (int64_t i = 0; i < n; ++i) acc[i] = std::max(acc[i], x[i]);
      return;
    case ReduceOp::kMin:
      for (int64_t i = 0; i < n; ++i) acc[i] = std::min(acc[i], x[i]);
      return;
  }
}

template <typename T>
void DivideTyped(T* p, int64_t n, int divisor) {
  const T d = static_cast<T>(divisor);
  for (int64_t i = 0; i < n; ++i) p[i] /= d;
}
}  // namespace

void ReduceInto(void* acc, const void* x, int64_t n, DType t, ReduceOp op) {
  switch (t) {
    case DType::kF32: return ReduceTyped(static_cast<float*>(acc), static_cast<const float*>(x), n, op);
    case DType::kF64: return ReduceTyped(static_cast<double*>(acc), static_cast<const double*>(x), n, op);
    case DType::kI32: return ReduceTyped(static_cast<int32_t*>(acc), static_cast<const int32_t*>(x), n, op);
    case DType::kI64: return ReduceTyped(static_cast<int64_t*>(acc), static_cast<const int64_t*>(x), n, op);
    default: break;
  }
  TESSERA_THROW(ShapeError, "reduce: dtype ", DTypeName(t), " is not supported (f32, f64, i32, i64)");
}

void DivideBy(const Tensor& t, int divisor) {
  void* p = t.raw_data();
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::kF32: return DivideTyped(static_cast<float*>(p), n, divisor);
    case DType::kF64: return DivideTyped(static_cast<double*>(p), n, divisor);
    case DType::kI32: return DivideTyped(static_cast<int32_t*>(p), n, divisor);
    case DType::kI64: return DivideTyped(static_cast<int64_t*>(p), n, divisor);
    default: break;
  }
  TESSERA_THROW(ShapeError, "average: dtype ", DTypeName(t.dtype()), " is not supported (f32, f64, i32, i64)");
}

}  // namespace tessera::dist::collective
