// Memory-bound CUDA kernels: fill, copy, cast, elementwise math, bias broadcasts, dropout. Each is
// a grid-stride loop over flat elements; the math is the shared functors of ops/functors.h.
#include <cstring>

#include "core/ops/cuda/cuda_kernels.h"
#include "core/ops/cuda/launch.cuh"
#include "core/ops/functors.h"
#include "core/random.h"

namespace tessera::cuda {
namespace {

// ---- fill ----

// Fills with a bit pattern of the element's width (the value is converted on the host).
template <typename Bits>
__global__ void FillKernel(Bits* p, Bits pattern, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) p[i] = pattern;
}

template <typename Bits>
void FillBits(void* p, Bits pattern, int64_t n, cudaStream_t stream) {
  if (pattern == 0) {
    TESSERA_CUDA_CHECK(cudaMemsetAsync(p, 0, static_cast<size_t>(n) * sizeof(Bits), stream));
    return;
  }
  FillKernel<<<BlocksFor(n), kThreads, 0, stream>>>(static_cast<Bits*>(p), pattern, n);
  TESSERA_CUDA_CHECK_LAUNCH();
}

template <typename Bits, typename T>
Bits BitsOf(T v) {
  static_assert(sizeof(Bits) == sizeof(T));
  Bits b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

// ---- cast: every pair of the seven dtypes, through double (as the CPU kernel) ----

template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
void VisitDType(DType t, F&& f) {
  switch (t) {
    case DType::kF32:
      return f(Tag<float>{});
    case DType::kF64:
      return f(Tag<double>{});
    case DType::kBF16:
      return f(Tag<BFloat16>{});
    case DType::kF16:
      return f(Tag<Half>{});
    case DType::kI32:
      return f(Tag<int32_t>{});
    case DType::kI64:
      return f(Tag<int64_t>{});
    case DType::kI8:
      return f(Tag<int8_t>{});
  }
  TESSERA_THROW(ShapeError, "Cast: unknown dtype");
}

template <typename T>
__device__ inline double ToDouble(T v) {
  return static_cast<double>(v);
}
template <>
__device__ inline double ToDouble(BFloat16 v) {
  return BF16ToFloat(v.bits);
}
template <>
__device__ inline double ToDouble(Half v) {
  return HalfToFloat(v.bits);
}

template <typename T>
__device__ inline T FromDouble(double v) {
  return static_cast<T>(v);
}
// 16-bit types round through float, exactly as the CPU's StoreFromDouble.
template <>
__device__ inline BFloat16 FromDouble(double v) {
  return BFloat16{FloatToBF16(static_cast<float>(v))};
}
template <>
__device__ inline Half FromDouble(double v) {
  return Half{FloatToHalf(static_cast<float>(v))};
}

template <typename S, typename D>
__global__ void CastKernel(const S* src, D* dst, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) dst[i] = FromDouble<D>(ToDouble(src[i]));
}

// ---- elementwise math ----

template <typename T>
__global__ void UnaryKernel(UnaryOp op, const T* x, T* y, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) y[i] = fn::ApplyUnary(op, x[i]);
}

template <typename T>
__global__ void UnaryBackwardKernel(UnaryOp op, const T* x, const T* dy, T* dx, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) dx[i] = fn::ApplyUnaryGrad(op, x[i], dy[i]);
}

template <typename T>
__global__ void BinaryKernel(BinaryOp op, const T* a, const T* b, T* out, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) out[i] = fn::ApplyBinary(op, a[i], b[i]);
}

// mode 0: y = beta y (x unread); 1: y = alpha x (y unread); 2: y = alpha x + beta y -- the same
// cases as the CPU kernel, so NaN/inf in an unread operand never leaks in.
template <typename T>
__global__ void AxpbyKernel(int mode, T alpha, const T* x, T beta, T* y, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    if (mode == 0)
      y[i] = beta * y[i];
    else if (mode == 1)
      y[i] = alpha * x[i];
    else
      y[i] = alpha * x[i] + beta * y[i];
  }
}

// y viewed as [n / inner / c, c, inner]: y[i] += bias[(i / inner) % c]. inner = 1 is AddBias.
template <typename T>
__global__ void BiasKernel(T* y, const T* bias, int64_t c, int64_t inner, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) y[i] += bias[(i / inner) % c];
}

// Element i keeps iff PhiloxUniform(seed, 0, offset + i) >= p (ops.h), then scales by 1 / (1-p).
template <typename T>
__global__ void DropoutKernel(const T* x, float p, T scale, uint64_t seed, uint64_t offset, T* y,
                              int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    float u = PhiloxUniform(seed, 0, offset + static_cast<uint64_t>(i));
    y[i] = u >= p ? x[i] * scale : T(0);
  }
}

}  // namespace

void Fill(Tensor& t, double value) {
  int64_t n = t.numel();
  if (n == 0) return;
  OnDevice on(t);
  void* p = t.raw_data();
  switch (t.dtype()) {
    case DType::kF32:
      return FillBits(p, BitsOf<uint32_t>(static_cast<float>(value)), n, on.stream());
    case DType::kF64:
      return FillBits(p, BitsOf<uint64_t>(value), n, on.stream());
    case DType::kBF16:
      return FillBits(p, FloatToBF16(static_cast<float>(value)), n, on.stream());
    case DType::kF16:
      return FillBits(p, FloatToHalf(static_cast<float>(value)), n, on.stream());
    case DType::kI32:
      return FillBits(p, BitsOf<uint32_t>(static_cast<int32_t>(value)), n, on.stream());
    case DType::kI64:
      return FillBits(p, BitsOf<uint64_t>(static_cast<int64_t>(value)), n, on.stream());
    case DType::kI8:
      return FillBits(p, BitsOf<uint8_t>(static_cast<int8_t>(value)), n, on.stream());
  }
}

void Copy(Tensor& dst, const Tensor& src) {
  if (dst.nbytes() == 0 || dst.raw_data() == src.raw_data()) return;
  const bool host_side = dst.device().is_cpu() || src.device().is_cpu();
  // Work queued on another device's stream must finish before its data is read.
  if (src.device().is_cuda() && dst.device().is_cuda() && src.device() != dst.device()) {
    OnDevice on_src(src);
    TESSERA_CUDA_CHECK(cudaStreamSynchronize(on_src.stream()));
  }
  OnDevice on(dst.device().is_cuda() ? dst : src);
  TESSERA_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(),
                                     cudaMemcpyDefault, on.stream()));
  // The host sees the data (or may reuse its buffer) only once the copy is done.
  if (host_side) TESSERA_CUDA_CHECK(cudaStreamSynchronize(on.stream()));
}

void Cast(Tensor& dst, const Tensor& src) {
  int64_t n = src.numel();
  if (n == 0) return;
  OnDevice on(src);
  VisitDType(src.dtype(), [&](auto s) {
    using S = typename decltype(s)::type;
    VisitDType(dst.dtype(), [&](auto d) {
      using D = typename decltype(d)::type;
      CastKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(static_cast<const S*>(src.raw_data()),
                                                             static_cast<D*>(dst.raw_data()), n);
      TESSERA_CUDA_CHECK_LAUNCH();
    });
  });
}

void Unary(UnaryOp op, const Tensor& x, Tensor& y) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Unary", [&] {
    int64_t n = x.numel();
    if (n == 0) return;
    OnDevice on(x);
    UnaryKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(op, x.data<scalar_t>(),
                                                            y.data<scalar_t>(), n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void UnaryBackward(UnaryOp op, const Tensor& x, const Tensor& dy, Tensor& dx) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "UnaryBackward", [&] {
    int64_t n = x.numel();
    if (n == 0) return;
    OnDevice on(x);
    UnaryBackwardKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(
        op, x.data<scalar_t>(), dy.data<scalar_t>(), dx.data<scalar_t>(), n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void Binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  TESSERA_DISPATCH_FLOAT(a.dtype(), "Binary", [&] {
    int64_t n = a.numel();
    if (n == 0) return;
    OnDevice on(a);
    BinaryKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(
        op, a.data<scalar_t>(), b.data<scalar_t>(), out.data<scalar_t>(), n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void Axpby(double alpha, const Tensor& x, double beta, Tensor& y) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Axpby", [&] {
    int64_t n = y.numel();
    if (n == 0) return;
    OnDevice on(y);
    int mode = alpha == 0.0 ? 0 : beta == 0.0 ? 1 : 2;
    AxpbyKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(
        mode, static_cast<scalar_t>(alpha), x.data<scalar_t>(), static_cast<scalar_t>(beta),
        y.data<scalar_t>(), n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void AddBias(Tensor& y, const Tensor& bias) {
  TESSERA_DISPATCH_FLOAT(y.dtype(), "AddBias", [&] {
    int64_t n = y.numel(), c = bias.numel();
    if (n == 0 || c == 0) return;
    OnDevice on(y);
    BiasKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(y.data<scalar_t>(),
                                                           bias.data<scalar_t>(), c, 1, n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void AddChannelBias(Tensor& y, const Tensor& bias) {
  TESSERA_DISPATCH_FLOAT(y.dtype(), "AddChannelBias", [&] {
    int64_t n = y.numel(), c = y.dim(1);
    if (n == 0) return;
    int64_t s = n / (y.dim(0) * c);
    OnDevice on(y);
    BiasKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(y.data<scalar_t>(),
                                                           bias.data<scalar_t>(), c, s, n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void Dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Dropout", [&] {
    int64_t n = x.numel();
    if (n == 0) return;
    OnDevice on(x);
    DropoutKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(
        x.data<scalar_t>(), static_cast<float>(p), static_cast<scalar_t>(1.0 / (1.0 - p)), seed,
        offset, y.data<scalar_t>(), n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tessera::cuda
