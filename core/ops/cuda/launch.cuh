// Launch geometry and warp/block reductions shared by the CUDA kernels (device code; .cu only).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/ops/cuda/context.h"
#include "core/ops/cuda/cuda_check.h"
#include "core/tensor.h"

namespace tessera::cuda {

// Makes a tensor's device current for the scope and gives the stream to queue work on.
class OnDevice {
 public:
  explicit OnDevice(const Tensor& t) : OnDevice(t.device().index) {}
  explicit OnDevice(int device) : guard_(device), stream_(CurrentStream(device)) {}
  cudaStream_t stream() const { return stream_; }

 private:
  DeviceGuard guard_;
  cudaStream_t stream_;
};

constexpr int kThreads = 256;
// Grid-stride loops cap the grid here (a few waves on an H100's 132 SMs); the cap is fixed, not
// read from the device, so that results never depend on which card ran them.
constexpr int64_t kMaxBlocks = 4096;

inline int BlocksFor(int64_t n, int threads = kThreads) {
  return static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, kMaxBlocks));
}

// Threads per block for a one-block-per-row kernel over rows of length d (a multiple of 32).
inline int RowThreads(int64_t d) { return d <= 32 ? 32 : d <= 1024 ? 128 : 256; }
// Blocks for one-block-per-row kernels; rows beyond the grid are taken by a block-stride loop.
inline int RowBlocks(int64_t rows) { return static_cast<int>(std::min<int64_t>(rows, 65535)); }

#define TESSERA_GRID_STRIDE(i, n)                                                        \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
// Max that propagates NaN (as the CPU reduce does).
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    if (a != a) return a;
    if (b != b) return b;
    return b > a ? b : a;
  }
};

template <typename T, typename Op>
__device__ T WarpAllReduce(T v, Op op) {
  for (int mask = 16; mask > 0; mask >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, mask));
  return v;
}

// Reduces v over the block and returns the result to every thread. blockDim.x must be a multiple
// of 32; every thread of the block must call it (it synchronises). The combination order is fixed
// by the block size, so the result is deterministic.
template <typename T, typename Op>
__device__ T BlockAllReduce(T v, Op op, T identity) {
  __shared__ T partial[33];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpAllReduce(v, op);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? partial[lane] : identity;
    w = WarpAllReduce(w, op);
    if (lane == 0) partial[32] = w;
  }
  __syncthreads();
  T result = partial[32];
  __syncthreads();  // partial[] is reused by the next call
  return result;
}

}  // namespace tessera::cuda
