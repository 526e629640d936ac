// 2-D convolution on CUDA, NCHW, cross-correlation (no kernel flip), as on the CPU.
//
// With cuDNN (TESSERA_USE_CUDNN): cuDNN's legacy convolution API, algorithms from the v7
// heuristics (deterministic ones preferred; TF32 only if AllowTf32()), workspace from the caching
// allocator. Otherwise, or when SetConvUseCudnn(false): the CPU's lowering -- im2col to
// col [C*R*S, N*P*Q], Y' [K, N*P*Q] = W [K, C*R*S] @ col through cuBLAS, Y' transposed to
// y [N, K, P*Q]; backward dW += dY' @ col^T, dcol = W^T @ dY', dx = col2im(dcol).
// Bias: added after the convolution; db accumulates through SumChannels.
#include <atomic>
#include <climits>

#include "core/allocator.h"
#include "core/ops/cuda/conv.h"
#include "core/ops/cuda/cuda_kernels.h"
#include "core/ops/cuda/launch.cuh"

namespace tessera::cuda {
namespace {

std::atomic<bool> use_cudnn{true};

struct ConvGeom {
  int64_t n, c, h, w, k, r, s, p, q;
  int sh, sw, ph, pw;
  TESSERA_HD int64_t crs() const { return c * r * s; }
  TESSERA_HD int64_t pq() const { return p * q; }
};

ConvGeom Geometry(const Tensor& x, const Tensor& w, const Conv2dParams& prm) {
  ConvGeom g;
  g.n = x.dim(0);
  g.c = x.dim(1);
  g.h = x.dim(2);
  g.w = x.dim(3);
  g.k = w.dim(0);
  g.r = w.dim(2);
  g.s = w.dim(3);
  g.sh = prm.stride_h;
  g.sw = prm.stride_w;
  g.ph = prm.pad_h;
  g.pw = prm.pad_w;
  g.p = (g.h + 2 * g.ph - g.r) / g.sh + 1;
  g.q = (g.w + 2 * g.pw - g.s) / g.sw + 1;
  return g;
}

// ---- im2col path ----

// col[(c*R + i)*S + j][img*PQ + oy*Q + ox] = x[img, c, oy*sh - ph + i, ox*sw - pw + j] (0 outside).
template <typename T>
__global__ void Im2ColKernel(const T* x, ConvGeom g, T* col) {
  const int64_t ld = g.n * g.pq();
  TESSERA_GRID_STRIDE(e, g.crs() * ld) {
    const int64_t row = e / ld, cidx = e - row * ld;
    const int64_t img = cidx / g.pq(), pix = cidx - img * g.pq();
    const int64_t oy = pix / g.q, ox = pix - oy * g.q;
    const int64_t ch = row / (g.r * g.s), rs = row - ch * g.r * g.s;
    const int64_t i = rs / g.s, j = rs - i * g.s;
    const int64_t iy = oy * g.sh - g.ph + i, ix = ox * g.sw - g.pw + j;
    col[e] = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
                 ? x[((img * g.c + ch) * g.h + iy) * g.w + ix]
                 : T(0);
  }
}

// The adjoint of Im2Col as a gather: each dx element sums the col entries that read it, in the
// same (i, j) order as the CPU's scatter. No atomics.
template <typename T>
__global__ void Col2ImKernel(const T* col, ConvGeom g, T* dx) {
  const int64_t ld = g.n * g.pq();
  TESSERA_GRID_STRIDE(e, g.n * g.c * g.h * g.w) {
    const int64_t ix = e % g.w, iy = (e / g.w) % g.h, ch = (e / (g.w * g.h)) % g.c;
    const int64_t img = e / (g.w * g.h * g.c);
    T acc = T(0);
    for (int64_t i = 0; i < g.r; ++i) {
      const int64_t ty = iy + g.ph - i;
      if (ty < 0 || ty % g.sh != 0 || ty / g.sh >= g.p) continue;
      const int64_t oy = ty / g.sh;
      for (int64_t j = 0; j < g.s; ++j) {
        const int64_t tx = ix + g.pw - j;
        if (tx < 0 || tx % g.sw != 0 || tx / g.sw >= g.q) continue;
        const int64_t ox = tx / g.sw;
        acc += col[((ch * g.r + i) * g.s + j) * ld + img * g.pq() + oy * g.q + ox];
      }
    }
    dx[e] = acc;
  }
}

// out[b, a, :] = in[a, b, :] for in viewed as [A, B, S].
template <typename T>
__global__ void SwapLeadingKernel(const T* in, int64_t a_dim, int64_t b_dim, int64_t s, T* out) {
  TESSERA_GRID_STRIDE(e, a_dim * b_dim * s) {
    const int64_t k = e % s, b = (e / s) % b_dim, a = e / (s * b_dim);
    out[(b * a_dim + a) * s + k] = in[e];
  }
}

template <typename T>
void SwapLeading(const Tensor& in, int64_t a_dim, int64_t b_dim, int64_t s, Tensor& out,
                 cudaStream_t stream) {
  const int64_t n = a_dim * b_dim * s;
  SwapLeadingKernel<<<BlocksFor(n), kThreads, 0, stream>>>(in.data<T>(), a_dim, b_dim, s,
                                                           out.data<T>());
  TESSERA_CUDA_CHECK_LAUNCH();
}

template <typename T>
Tensor Im2Col(const Tensor& x, const ConvGeom& g, cudaStream_t stream) {
  Tensor col = Tensor::Empty({g.crs(), g.n * g.pq()}, x.dtype(), x.device());
  Im2ColKernel<<<BlocksFor(col.numel()), kThreads, 0, stream>>>(x.data<T>(), g, col.data<T>());
  TESSERA_CUDA_CHECK_LAUNCH();
  return col;
}

template <typename T>
void ForwardIm2Col(const Tensor& x, const Tensor& w, const ConvGeom& g, Tensor& y,
                   cudaStream_t stream) {
  Tensor col = Im2Col<T>(x, g, stream);
  Tensor w2 = w.Reshape({g.k, g.crs()});
  if (g.n == 1) {
    Tensor y2 = y.Reshape({g.k, g.pq()});
    Gemm(w2, false, col, false, y2, 1.0, 0.0);
  } else {
    Tensor yt = Tensor::Empty({g.k, g.n * g.pq()}, x.dtype(), x.device());
    Gemm(w2, false, col, false, yt, 1.0, 0.0);
    SwapLeading<T>(yt, g.k, g.n, g.pq(), y, stream);
  }
}

template <typename T>
void BackwardIm2Col(const Tensor& x, const Tensor& w, const Tensor& dy, const ConvGeom& g,
                    Tensor& dx, Tensor& dw, cudaStream_t stream) {
  Tensor dyt;
  if (g.n == 1) {
    dyt = dy.Reshape({g.k, g.pq()});
  } else {
    dyt = Tensor::Empty({g.k, g.n * g.pq()}, x.dtype(), x.device());
    SwapLeading<T>(dy, g.n, g.k, g.pq(), dyt, stream);
  }
  Tensor col = Im2Col<T>(x, g, stream);
  Tensor dw2 = dw.Reshape({g.k, g.crs()});
  Gemm(dyt, false, col, true, dw2, 1.0, 1.0);
  if (dx.defined()) {
    Gemm(w.Reshape({g.k, g.crs()}), true, dyt, false, col, 1.0, 0.0);  // col now holds dcol
    Col2ImKernel<<<BlocksFor(dx.numel()), kThreads, 0, stream>>>(col.data<T>(), g, dx.data<T>());
    TESSERA_CUDA_CHECK_LAUNCH();
  }
}

#if TESSERA_USE_CUDNN
// ---- cuDNN path ----

// Workspaces above this are skipped in favour of a leaner algorithm.
constexpr size_t kMaxWorkspaceBytes = size_t(1) << 30;

struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  TensorDesc(cudnnDataType_t type, int64_t n, int64_t c, int64_t h, int64_t w) {
    TESSERA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d));
    TESSERA_CUDNN_CHECK(
        cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, type, int(n), int(c), int(h), int(w)));
  }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
};

struct FilterDesc {
  cudnnFilterDescriptor_t d = nullptr;
  FilterDesc(cudnnDataType_t type, int64_t k, int64_t c, int64_t r, int64_t s) {
    TESSERA_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d));
    TESSERA_CUDNN_CHECK(
        cudnnSetFilter4dDescriptor(d, type, CUDNN_TENSOR_NCHW, int(k), int(c), int(r), int(s)));
  }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d); }
};

struct ConvDesc {
  cudnnConvolutionDescriptor_t d = nullptr;
  ConvDesc(const ConvGeom& g, cudnnDataType_t type) {
    TESSERA_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d));
    TESSERA_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d, g.ph, g.pw, g.sh, g.sw, 1, 1,
                                                        CUDNN_CROSS_CORRELATION, type));
    // FMA math keeps f32 out of TF32 tensor cores (cuDNN's default allows TF32 on Ampere+).
    SetMath(type == CUDNN_DATA_FLOAT && AllowTf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH);
  }
  void SetMath(cudnnMathType_t m) { TESSERA_CUDNN_CHECK(cudnnSetConvolutionMathType(d, m)); }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d); }
};

// Memory from the device's caching allocator, returned when the scope ends. Safe although the
// kernel using it may still be queued: the next user of the block is queued after it on the same
// stream (ops/cuda/context.h).
class Workspace {
 public:
  Workspace(Device device, size_t bytes) : allocator_(GetAllocator(device)), bytes_(bytes) {
    if (bytes_ > 0) ptr_ = allocator_.Allocate(bytes_);
  }
  ~Workspace() {
    if (ptr_) allocator_.Free(ptr_, bytes_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  Allocator& allocator_;
  size_t bytes_;
  void* ptr_ = nullptr;
};

// Runs `run(algorithm)` for the heuristics' candidates in their ranked order, deterministic ones
// first, until one succeeds. A candidate must be supported, fit the workspace cap and, unless TF32
// is allowed, not use tensor-op math on f32. CUDNN_STATUS_NOT_SUPPORTED from a run (reported before
// anything is written) moves on to the next candidate; any other failure throws.
template <typename Perf, typename Run>
void RunBestAlgorithm(const Perf* perf, int count, bool f32, const char* what, Run run) {
  cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < count; ++i) {
      const Perf& a = perf[i];
      if (a.status != CUDNN_STATUS_SUCCESS || a.memory > kMaxWorkspaceBytes) continue;
      if (f32 && !AllowTf32() && a.mathType != CUDNN_FMA_MATH && a.mathType != CUDNN_DEFAULT_MATH)
        continue;
      if ((a.determinism == CUDNN_DETERMINISTIC) != (pass == 0)) continue;
      last = run(a);
      if (last == CUDNN_STATUS_SUCCESS) return;
      if (last != CUDNN_STATUS_NOT_SUPPORTED) ThrowCudnnError(last, what, __FILE__, __LINE__);
    }
  }
  TESSERA_THROW(DeviceError, what,
                ": no cuDNN algorithm could run (last status: ", cudnnGetErrorString(last), ")");
}

// cuDNN takes alpha and beta as the data type's scalar.
struct Scalars {
  float f;
  double d;
  explicit Scalars(double v) : f(static_cast<float>(v)), d(v) {}
  const void* get(bool f64) const { return f64 ? static_cast<const void*>(&d) : &f; }
};

void CheckCudnnSize(const Tensor& t, const char* what) {
  if (t.numel() > INT_MAX)
    TESSERA_THROW(ShapeError, what, ": ", t.Describe(), " exceeds cuDNN's 32-bit element count");
}

struct CudnnConv {
  const ConvGeom& g;
  bool f64;
  cudnnDataType_t type;
  TensorDesc x, y;
  FilterDesc w;
  ConvDesc conv;
  CudnnConv(const ConvGeom& geom, DType dtype)
      : g(geom),
        f64(dtype == DType::kF64),
        type(f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT),
        x(type, g.n, g.c, g.h, g.w),
        y(type, g.n, g.k, g.p, g.q),
        w(type, g.k, g.c, g.r, g.s),
        conv(g, type) {
    int n, c, p, q;
    TESSERA_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv.d, x.d, w.d, &n, &c, &p, &q));
    if (n != g.n || c != g.k || p != g.p || q != g.q)
      TESSERA_THROW(DeviceError, "Conv2d: cuDNN computes output [", n, ", ", c, ", ", p, ", ", q,
                    "], tessera [", g.n, ", ", g.k, ", ", g.p, ", ", g.q, "]");
  }
  void UseMath(cudnnMathType_t m) {
    if (!f64 && AllowTf32()) conv.SetMath(m);
  }
};

void ForwardCudnn(const Tensor& xt, const Tensor& wt, const ConvGeom& g, Tensor& yt) {
  const int dev = xt.device().index;
  cudnnHandle_t h = CudnnHandle(dev);
  CudnnConv cd(g, xt.dtype());
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int count = 0;
  TESSERA_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(
      h, cd.x.d, cd.w.d, cd.conv.d, cd.y.d, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf));
  Scalars one(1.0), zero(0.0);
  RunBestAlgorithm(perf, count, !cd.f64, "cudnnConvolutionForward", [&](const auto& a) {
    cd.UseMath(a.mathType);
    Workspace ws(xt.device(), a.memory);
    return cudnnConvolutionForward(h, one.get(cd.f64), cd.x.d, xt.raw_data(), cd.w.d, wt.raw_data(),
                                   cd.conv.d, a.algo, ws.get(), ws.bytes(), zero.get(cd.f64),
                                   cd.y.d, yt.raw_data());
  });
}

void BackwardCudnn(const Tensor& xt, const Tensor& wt, const Tensor& dyt, const ConvGeom& g,
                   Tensor& dx, Tensor& dw) {
  const int dev = xt.device().index;
  cudnnHandle_t h = CudnnHandle(dev);
  CudnnConv cd(g, xt.dtype());
  Scalars one(1.0), zero(0.0);
  {  // dw += conv_filter_grad(x, dy): beta = 1 accumulates
    cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int count = 0;
    TESSERA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
        h, cd.x.d, cd.y.d, cd.conv.d, cd.w.d, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count,
        perf));
    RunBestAlgorithm(perf, count, !cd.f64, "cudnnConvolutionBackwardFilter", [&](const auto& a) {
      cd.UseMath(a.mathType);
      Workspace ws(xt.device(), a.memory);
      return cudnnConvolutionBackwardFilter(h, one.get(cd.f64), cd.x.d, xt.raw_data(), cd.y.d,
                                            dyt.raw_data(), cd.conv.d, a.algo, ws.get(), ws.bytes(),
                                            one.get(cd.f64), cd.w.d, dw.raw_data());
    });
  }
  if (dx.defined()) {  // dx = conv_data_grad(w, dy): beta = 0 overwrites
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int count = 0;
    TESSERA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
        h, cd.w.d, cd.y.d, cd.conv.d, cd.x.d, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf));
    RunBestAlgorithm(perf, count, !cd.f64, "cudnnConvolutionBackwardData", [&](const auto& a) {
      cd.UseMath(a.mathType);
      Workspace ws(xt.device(), a.memory);
      return cudnnConvolutionBackwardData(h, one.get(cd.f64), cd.w.d, wt.raw_data(), cd.y.d,
                                          dyt.raw_data(), cd.conv.d, a.algo, ws.get(), ws.bytes(),
                                          zero.get(cd.f64), cd.x.d, dx.raw_data());
    });
  }
}
#endif  // TESSERA_USE_CUDNN

bool UseCudnnFor(const Tensor& x, const Tensor& w, const Tensor& y) {
#if TESSERA_USE_CUDNN
  if (!use_cudnn.load(std::memory_order_relaxed)) return false;
  CheckCudnnSize(x, "Conv2d");
  CheckCudnnSize(w, "Conv2d");
  CheckCudnnSize(y, "Conv2d");
  return true;
#else
  return false;
#endif
}

}  // namespace

void SetConvUseCudnn(bool use) { use_cudnn.store(use, std::memory_order_relaxed); }

bool ConvUsesCudnn() { return TESSERA_USE_CUDNN && use_cudnn.load(std::memory_order_relaxed); }

void Conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& prm,
            Tensor& y) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Conv2d", [&] {
    const ConvGeom g = Geometry(x, w, prm);
    if (y.numel() == 0) return;
    OnDevice on(x);
    if (x.numel() == 0 || w.numel() == 0) {  // nothing to correlate: y = bias (or 0)
      Fill(y, 0.0);
    } else if (UseCudnnFor(x, w, y)) {
#if TESSERA_USE_CUDNN
      ForwardCudnn(x, w, g, y);
#endif
    } else {
      ForwardIm2Col<scalar_t>(x, w, g, y, on.stream());
    }
    if (bias.defined()) AddChannelBias(y, bias);
  });
}

void Conv2dBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv2dParams& prm,
                    Tensor& dx, Tensor& dw, Tensor& db) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Conv2dBackward", [&] {
    const ConvGeom g = Geometry(x, w, prm);
    OnDevice on(x);
    if (db.defined()) SumChannels(dy, db, /*accumulate=*/true);
    if (dy.numel() == 0 || x.numel() == 0 || w.numel() == 0) {  // dw gains nothing
      if (dx.defined()) Fill(dx, 0.0);
      return;
    }
    if (UseCudnnFor(x, w, dy)) {
#if TESSERA_USE_CUDNN
      BackwardCudnn(x, w, dy, g, dx, dw);
#endif
    } else {
      BackwardIm2Col<scalar_t>(x, w, dy, g, dx, dw, on.stream());
    }
  });
}

}  // namespace tessera::cuda
