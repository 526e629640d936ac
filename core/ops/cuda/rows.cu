// Row-wise CUDA kernels: softmax, layer norm, embedding lookup, cross-entropy. Row kernels run one
// block per row (a block-stride loop covers more rows than the grid) with block reductions for the
// row statistics; column statistics (layer norm's dgamma, dbeta) use the deterministic ColumnSum.
#include <limits>

#include "core/ops/cuda/column_sum.cuh"
#include "core/ops/cuda/cuda_kernels.h"
#include "core/ops/cuda/launch.cuh"

namespace tessera::cuda {
namespace {

template <typename T>
__device__ constexpr T NegInf() {
  return -std::numeric_limits<T>::infinity();
}

// ---- softmax along the last dimension, rows of length d ----

template <typename T>
__global__ void SoftmaxKernel(const T* x, T* y, int64_t rows, int64_t d, bool log_softmax) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    T* yr = y + r * d;
    T m = NegInf<T>();
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) m = xr[j] > m ? xr[j] : m;
    m = BlockAllReduce(m, MaxOp(), NegInf<T>());
    T s = T(0);
    if (log_softmax) {
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s += exp(xr[j] - m);
      s = BlockAllReduce(s, SumOp(), T(0));
      const T lse = m + log(s);
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) yr[j] = xr[j] - lse;
    } else {
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        T e = exp(xr[j] - m);
        yr[j] = e;
        s += e;
      }
      s = BlockAllReduce(s, SumOp(), T(0));
      const T inv = T(1) / s;
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) yr[j] *= inv;  // own elements only
    }
  }
}

// log: dx = dy - exp(y) sum(dy); else dx = y (dy - sum(dy y)).
template <typename T>
__global__ void SoftmaxBackwardKernel(const T* y, const T* dy, T* dx, int64_t rows, int64_t d,
                                      bool log_softmax) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* yr = y + r * d;
    const T* gr = dy + r * d;
    T* out = dx + r * d;
    T s = T(0);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s += log_softmax ? gr[j] : gr[j] * yr[j];
    s = BlockAllReduce(s, SumOp(), T(0));
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
      out[j] = log_softmax ? gr[j] - exp(yr[j]) * s : yr[j] * (gr[j] - s);
  }
}

// ---- layer norm over rows of length d ----

template <typename T>
__global__ void LayerNormKernel(const T* x, const T* gamma, const T* beta, T eps, int64_t rows,
                                int64_t d, T* y, T* mean, T* rstd) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    T s = T(0);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
    const T mu = BlockAllReduce(s, SumOp(), T(0)) / static_cast<T>(d);
    T v = T(0);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) v += (xr[j] - mu) * (xr[j] - mu);
    const T var = BlockAllReduce(v, SumOp(), T(0)) / static_cast<T>(d);
    const T rs = T(1) / sqrt(var + eps);
    if (threadIdx.x == 0) {
      mean[r] = mu;
      rstd[r] = rs;
    }
    T* yr = y + r * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
      yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
  }
}

// xhat = (x - mu) rstd; dxhat = dy gamma; dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)).
template <typename T>
__global__ void LayerNormBackwardKernel(const T* x, const T* gamma, const T* mean, const T* rstd,
                                        const T* dy, int64_t rows, int64_t d, T* dx) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    const T* gr = dy + r * d;
    const T mu = mean[r], rs = rstd[r];
    T s1 = T(0), s2 = T(0);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      T dxh = gr[j] * gamma[j];
      s1 += dxh;
      s2 += dxh * (xr[j] - mu) * rs;
    }
    s1 = BlockAllReduce(s1, SumOp(), T(0)) / static_cast<T>(d);
    s2 = BlockAllReduce(s2, SumOp(), T(0)) / static_cast<T>(d);
    T* out = dx + r * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      T xh = (xr[j] - mu) * rs;
      out[j] = rs * (gr[j] * gamma[j] - s1 - xh * s2);
    }
  }
}

// dgamma[j] += sum_r dy[r, j] xhat[r, j].
template <typename T>
struct LayerNormGammaGrad {
  const T* x;
  const T* dy;
  const T* mean;
  const T* rstd;
  int64_t d;
  __device__ T operator()(int64_t r, int64_t j) const {
    return dy[r * d + j] * (x[r * d + j] - mean[r]) * rstd[r];
  }
};

// ---- embedding: rows of `d` elements copied by bit pattern (any dtype of that width) ----

// out[i, :] = weight[ids[i], :]; an id outside [0, rows) is clamped (the front-end checks ids only
// on the host), so a bad id never reads outside the table.
template <typename Bits, typename I>
__global__ void EmbeddingKernel(const Bits* weight, const I* ids, int64_t rows, int64_t d,
                                int64_t n, Bits* out) {
  TESSERA_GRID_STRIDE(e, n * d) {
    int64_t i = e / d, j = e - i * d;
    int64_t id = static_cast<int64_t>(ids[i]);
    id = id < 0 ? 0 : id >= rows ? rows - 1 : id;
    out[e] = weight[id * d + j];
  }
}

// dweight[ids[i], :] += dy[i, :] with atomics (repeated ids collide); bad ids are skipped.
template <typename T, typename I>
__global__ void EmbeddingBackwardKernel(const I* ids, const T* dy, int64_t rows, int64_t d,
                                        int64_t n, T* dweight) {
  TESSERA_GRID_STRIDE(e, n * d) {
    int64_t i = e / d, j = e - i * d;
    int64_t id = static_cast<int64_t>(ids[i]);
    if (id >= 0 && id < rows) atomicAdd(dweight + id * d + j, dy[e]);
  }
}

// ---- cross-entropy over logits [n, c] ----

// probs = softmax(row); row_loss[r] = logsumexp(row) - row[label], in double as on the CPU. A
// label outside [0, c) is never read: its row's loss is NaN, which flags the batch through the
// mean (the CPU front-end throws instead).
template <typename T>
__global__ void CrossEntropyKernel(const T* logits, const int32_t* labels, int64_t n, int64_t c,
                                   T* probs, double* row_loss) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const T* xr = logits + r * c;
    T* pr = probs + r * c;
    T m = NegInf<T>();
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) m = xr[j] > m ? xr[j] : m;
    m = BlockAllReduce(m, MaxOp(), NegInf<T>());
    T s = T(0);
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      T e = exp(xr[j] - m);
      pr[j] = e;
      s += e;
    }
    s = BlockAllReduce(s, SumOp(), T(0));
    const T inv = T(1) / s;
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) pr[j] *= inv;
    if (threadIdx.x == 0) {
      const int32_t l = labels[r];
      row_loss[r] = (l >= 0 && l < c) ? static_cast<double>(m + log(s) - xr[l])
                                      : std::numeric_limits<double>::quiet_NaN();
    }
  }
}

// One block: loss = sum(row_loss) / n, summed in a fixed order.
template <typename T>
__global__ void MeanLossKernel(const double* row_loss, int64_t n, T* loss) {
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += row_loss[i];
  acc = BlockAllReduce(acc, SumOp(), 0.0);
  if (threadIdx.x == 0) loss[0] = static_cast<T>(acc / static_cast<double>(n));
}

// dlogits = s (probs - onehot(label)), s = scale / n; a label outside [0, c) adds no one-hot term.
template <typename T>
__global__ void CrossEntropyBackwardKernel(const T* probs, const int32_t* labels, T s, int64_t n,
                                           int64_t c, T* dlogits) {
  TESSERA_GRID_STRIDE(e, n * c) {
    int64_t r = e / c, j = e - r * c;
    T v = probs[e] * s;
    if (labels[r] == j) v -= s;
    dlogits[e] = v;
  }
}

}  // namespace

void Softmax(const Tensor& x, Tensor& y, bool log) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Softmax", [&] {
    int64_t d = x.dim(-1), rows = d ? x.numel() / d : 0;
    if (rows == 0) return;
    OnDevice on(x);
    SoftmaxKernel<<<RowBlocks(rows), RowThreads(d), 0, on.stream()>>>(
        x.data<scalar_t>(), y.data<scalar_t>(), rows, d, log);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void SoftmaxBackward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  TESSERA_DISPATCH_FLOAT(y.dtype(), "SoftmaxBackward", [&] {
    int64_t d = y.dim(-1), rows = d ? y.numel() / d : 0;
    if (rows == 0) return;
    OnDevice on(y);
    SoftmaxBackwardKernel<<<RowBlocks(rows), RowThreads(d), 0, on.stream()>>>(
        y.data<scalar_t>(), dy.data<scalar_t>(), dx.data<scalar_t>(), rows, d, log);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& y,
               Tensor& mean, Tensor& rstd) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "LayerNorm", [&] {
    int64_t d = x.dim(-1), rows = d ? x.numel() / d : 0;
    if (rows == 0) return;
    OnDevice on(x);
    LayerNormKernel<<<RowBlocks(rows), RowThreads(d), 0, on.stream()>>>(
        x.data<scalar_t>(), gamma.data<scalar_t>(), beta.data<scalar_t>(),
        static_cast<scalar_t>(eps), rows, d, y.data<scalar_t>(), mean.data<scalar_t>(),
        rstd.data<scalar_t>());
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void LayerNormBackward(const Tensor& x, const Tensor& gamma, const Tensor& mean, const Tensor& rstd,
                       const Tensor& dy, Tensor& dx, Tensor& dgamma, Tensor& dbeta) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "LayerNormBackward", [&] {
    int64_t d = x.dim(-1), rows = d ? x.numel() / d : 0;
    if (rows == 0) return;
    OnDevice on(x);
    const scalar_t* xp = x.data<scalar_t>();
    const scalar_t* dyp = dy.data<scalar_t>();
    LayerNormBackwardKernel<<<RowBlocks(rows), RowThreads(d), 0, on.stream()>>>(
        xp, gamma.data<scalar_t>(), mean.data<scalar_t>(), rstd.data<scalar_t>(), dyp, rows, d,
        dx.data<scalar_t>());
    TESSERA_CUDA_CHECK_LAUNCH();
    const int dev = x.device().index;
    ColumnSum(
        LayerNormGammaGrad<scalar_t>{xp, dyp, mean.data<scalar_t>(), rstd.data<scalar_t>(), d},
        rows, d, dgamma.data<scalar_t>(), /*accumulate=*/true, dev, on.stream());
    ColumnSum(RowMajorValue<scalar_t>{dyp, d}, rows, d, dbeta.data<scalar_t>(),
              /*accumulate=*/true, dev, on.stream());
  });
}

void Embedding(const Tensor& weight, const Tensor& ids, Tensor& out) {
  const int64_t rows = weight.dim(0), d = weight.dim(1), n = ids.numel();
  if (n == 0 || d == 0) return;
  if (rows == 0) {  // no row to clamp to: every id is out of range
    Fill(out, 0.0);
    return;
  }
  OnDevice on(weight);
  auto launch = [&](auto bits, auto id_type) {
    using Bits = decltype(bits);
    using I = decltype(id_type);
    EmbeddingKernel<<<BlocksFor(n * d), kThreads, 0, on.stream()>>>(
        static_cast<const Bits*>(weight.raw_data()), static_cast<const I*>(ids.raw_data()), rows, d,
        n, static_cast<Bits*>(out.raw_data()));
    TESSERA_CUDA_CHECK_LAUNCH();
  };
  auto with_bits = [&](auto id_type) {
    switch (SizeOf(weight.dtype())) {
      case 2:
        return launch(uint16_t{}, id_type);
      case 4:
        return launch(uint32_t{}, id_type);
      case 8:
        return launch(uint64_t{}, id_type);
    }
    TESSERA_THROW(ShapeError, "Embedding: unsupported weight dtype ", DTypeName(weight.dtype()));
  };
  if (ids.dtype() == DType::kI32)
    with_bits(int32_t{});
  else
    with_bits(int64_t{});
}

void EmbeddingBackward(const Tensor& ids, const Tensor& dy, Tensor& dweight) {
  TESSERA_DISPATCH_FLOAT(dy.dtype(), "EmbeddingBackward", [&] {
    const int64_t rows = dweight.dim(0), d = dweight.dim(1), n = ids.numel();
    if (n == 0 || d == 0) return;
    OnDevice on(dy);
    const int blocks = BlocksFor(n * d);
    if (ids.dtype() == DType::kI32) {
      EmbeddingBackwardKernel<<<blocks, kThreads, 0, on.stream()>>>(
          ids.data<int32_t>(), dy.data<scalar_t>(), rows, d, n, dweight.data<scalar_t>());
    } else {
      EmbeddingBackwardKernel<<<blocks, kThreads, 0, on.stream()>>>(
          ids.data<int64_t>(), dy.data<scalar_t>(), rows, d, n, dweight.data<scalar_t>());
    }
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void CrossEntropy(const Tensor& logits, const Tensor& labels, Tensor& probs, Tensor& loss) {
  TESSERA_DISPATCH_FLOAT(logits.dtype(), "CrossEntropy", [&] {
    const int64_t n = logits.dim(0), c = logits.dim(1);
    if (n == 0) {
      Fill(loss, 0.0);
      return;
    }
    OnDevice on(logits);
    Tensor row_loss = Tensor::Empty({n}, DType::kF64, logits.device());
    CrossEntropyKernel<<<RowBlocks(n), RowThreads(c), 0, on.stream()>>>(
        logits.data<scalar_t>(), labels.data<int32_t>(), n, c, probs.data<scalar_t>(),
        row_loss.data<double>());
    TESSERA_CUDA_CHECK_LAUNCH();
    MeanLossKernel<<<1, kThreads, 0, on.stream()>>>(row_loss.data<double>(), n,
                                                    loss.data<scalar_t>());
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void CrossEntropyBackward(const Tensor& probs, const Tensor& labels, double scale,
                          Tensor& dlogits) {
  TESSERA_DISPATCH_FLOAT(probs.dtype(), "CrossEntropyBackward", [&] {
    const int64_t n = probs.dim(0), c = probs.dim(1);
    if (n == 0 || c == 0) return;
    OnDevice on(probs);
    const scalar_t s = static_cast<scalar_t>(scale / static_cast<double>(n));
    CrossEntropyBackwardKernel<<<BlocksFor(n * c), kThreads, 0, on.stream()>>>(
        probs.data<scalar_t>(), labels.data<int32_t>(), s, n, c, dlogits.data<scalar_t>());
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tessera::cuda
