// Reductions on CUDA: column sums (sum_rows), per-channel sums, whole-tensor sum/mean/max and the
// sum of squares. Whole-tensor and per-channel sums accumulate in double, as the CPU kernels do.
// Every reduction combines partial results in a fixed order: results are deterministic.
#include <limits>

#include "core/ops/cuda/column_sum.cuh"
#include "core/ops/cuda/cuda_kernels.h"
#include "core/ops/cuda/launch.cuh"

namespace tessera::cuda {
namespace {

// ---- per-channel sums: x [N, C, S] ----

// Block (c, chunk) sums planes n in [chunk * per_chunk, ...) of channel c into partial[c, chunk].
template <typename T>
__global__ void ChannelPartialKernel(const T* x, int64_t n, int64_t c, int64_t s, int64_t per_chunk,
                                     double* partial) {
  const int64_t ch = blockIdx.x, chunk = blockIdx.y;
  int64_t n0 = chunk * per_chunk, n1 = n0 + per_chunk < n ? n0 + per_chunk : n;
  double acc = 0;
  for (int64_t img = n0; img < n1; ++img) {
    const T* plane = x + (img * c + ch) * s;
    for (int64_t k = threadIdx.x; k < s; k += blockDim.x) acc += static_cast<double>(plane[k]);
  }
  acc = BlockAllReduce(acc, SumOp(), 0.0);
  if (threadIdx.x == 0) partial[ch * gridDim.y + chunk] = acc;
}

template <typename T>
__global__ void ChannelFinishKernel(const double* partial, int64_t chunks, int64_t c, T* out,
                                    bool accumulate) {
  TESSERA_GRID_STRIDE(ch, c) {
    double acc = 0;
    for (int64_t k = 0; k < chunks; ++k) acc += partial[ch * chunks + k];
    out[ch] = accumulate ? out[ch] + static_cast<T>(acc) : static_cast<T>(acc);
  }
}

// ---- whole-tensor reductions ----

constexpr int kReduceThreads = 256;
constexpr int64_t kReduceMaxBlocks = 1024;

// Blocks for a partial reduction: depends on n only, never on the device.
int ReduceBlocks(int64_t n) {
  int64_t per_block = kReduceThreads * 8;
  return static_cast<int>(std::min<int64_t>((n + per_block - 1) / per_block, kReduceMaxBlocks));
}

// partial[block] = op over the block's grid-stride share of x (squared when kSquare), in double.
template <typename T, typename Op, bool kSquare>
__global__ void PartialReduceKernel(const T* x, int64_t n, Op op, double identity,
                                    double* partial) {
  double acc = identity;
  TESSERA_GRID_STRIDE(i, n) {
    double v = static_cast<double>(x[i]);
    acc = op(acc, kSquare ? v * v : v);
  }
  acc = BlockAllReduce(acc, op, identity);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block: out[0] = op over partial[0 .. count) (divided by `divide_by` when it is > 0).
template <typename T, typename Op>
__global__ void FinishReduceKernel(const double* partial, int count, Op op, double identity,
                                   double divide_by, T* out) {
  double acc = identity;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc = op(acc, partial[i]);
  acc = BlockAllReduce(acc, op, identity);
  if (threadIdx.x == 0) out[0] = static_cast<T>(divide_by > 0 ? acc / divide_by : acc);
}

// out[0] (device, type T) = op(x) in double, optionally divided.
template <typename T, typename Op, bool kSquare, typename Out>
void ReduceAll(const T* x, int64_t n, Op op, double identity, double divide_by, Out* out,
               int device, cudaStream_t stream) {
  int blocks = ReduceBlocks(n);
  Tensor partial = Tensor::Empty({blocks}, DType::kF64, Device::CUDA(device));
  PartialReduceKernel<T, Op, kSquare>
      <<<blocks, kReduceThreads, 0, stream>>>(x, n, op, identity, partial.data<double>());
  TESSERA_CUDA_CHECK_LAUNCH();
  FinishReduceKernel<<<1, kReduceThreads, 0, stream>>>(partial.data<double>(), blocks, op, identity,
                                                       divide_by, out);
  TESSERA_CUDA_CHECK_LAUNCH();
}

}  // namespace

void SumRows(const Tensor& x, Tensor& out, bool accumulate) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "SumRows", [&] {
    int64_t c = out.numel(), rows = c ? x.numel() / c : 0;
    OnDevice on(x);
    ColumnSum(RowMajorValue<scalar_t>{x.data<scalar_t>(), c}, rows, c, out.data<scalar_t>(),
              accumulate, x.device().index, on.stream());
  });
}

void SumChannels(const Tensor& x, Tensor& out, bool accumulate) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "SumChannels", [&] {
    int64_t n = x.dim(0), c = x.dim(1), s = c && n ? x.numel() / (n * c) : 0;
    if (c == 0) return;
    OnDevice on(x);
    if (n == 0 || s == 0) {
      if (!accumulate) Fill(out, 0.0);
      return;
    }
    int64_t chunks = std::min<int64_t>(n, 32), per_chunk = (n + chunks - 1) / chunks;
    chunks = (n + per_chunk - 1) / per_chunk;
    Tensor partial = Tensor::Empty({c, chunks}, DType::kF64, x.device());
    dim3 grid(static_cast<unsigned>(c), static_cast<unsigned>(chunks));
    ChannelPartialKernel<<<grid, RowThreads(s), 0, on.stream()>>>(
        x.data<scalar_t>(), n, c, s, per_chunk, partial.data<double>());
    TESSERA_CUDA_CHECK_LAUNCH();
    ChannelFinishKernel<<<BlocksFor(c), kThreads, 0, on.stream()>>>(
        partial.data<double>(), chunks, c, out.data<scalar_t>(), accumulate);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void Reduce(ReduceOp op, const Tensor& x, Tensor& out) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Reduce", [&] {
    int64_t n = x.numel();
    if (n == 0) {  // the front-end rejects max of nothing
      Fill(out, op == ReduceOp::kMean ? std::numeric_limits<double>::quiet_NaN() : 0.0);
      return;
    }
    OnDevice on(x);
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* o = out.data<scalar_t>();
    int dev = x.device().index;
    if (op == ReduceOp::kMax) {
      ReduceAll<scalar_t, MaxOp, false>(xp, n, MaxOp(), -std::numeric_limits<double>::infinity(),
                                        0.0, o, dev, on.stream());
    } else {
      double divide_by = op == ReduceOp::kMean ? static_cast<double>(n) : 0.0;
      ReduceAll<scalar_t, SumOp, false>(xp, n, SumOp(), 0.0, divide_by, o, dev, on.stream());
    }
  });
}

double SumSquares(const Tensor& x) {
  return TESSERA_DISPATCH_FLOAT(x.dtype(), "SumSquares", [&] {
    int64_t n = x.numel();
    if (n == 0) return 0.0;
    OnDevice on(x);
    Tensor result = Tensor::Empty({1}, DType::kF64, x.device());
    ReduceAll<scalar_t, SumOp, true>(x.data<scalar_t>(), n, SumOp(), 0.0, 0.0,
                                     result.data<double>(), x.device().index, on.stream());
    double host = 0;
    TESSERA_CUDA_CHECK(cudaMemcpyAsync(&host, result.data<double>(), sizeof(double),
                                       cudaMemcpyDeviceToHost, on.stream()));
    TESSERA_CUDA_CHECK(cudaStreamSynchronize(on.stream()));
    return host;
  });
}

}  // namespace tessera::cuda
