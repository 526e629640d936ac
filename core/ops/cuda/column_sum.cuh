// Deterministic column sums for the CUDA kernels (device code; .cu only):
// out[j] (+)= sum_r f(r, j) over a [rows, cols] matrix whose values a functor computes.
//
// Stage 1: block (x: 256 columns, y: one chunk of rows) sums its chunk's rows in order into
// partial[chunk, j]; stage 2 adds the chunks in order. No atomics, so the result is the same on
// every run; the chunking depends only on the shape.
#pragma once

#include "core/ops/cuda/launch.cuh"

namespace tessera::cuda {

// The plain values of x viewed as [rows, cols].
template <typename T>
struct RowMajorValue {
  const T* x;
  int64_t cols;
  __device__ T operator()(int64_t r, int64_t j) const { return x[r * cols + j]; }
};

template <typename T, typename F>
__global__ void ColumnPartialKernel(F f, int64_t rows, int64_t cols, int64_t rows_per_chunk,
                                    T* partial) {
  int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  T acc = T(0);
  for (int64_t r = r0; r < r1; ++r) acc += f(r, j);
  partial[blockIdx.y * cols + j] = acc;
}

template <typename T>
__global__ void ColumnFinishKernel(const T* partial, int64_t chunks, int64_t cols, T* out,
                                   bool accumulate) {
  TESSERA_GRID_STRIDE(j, cols) {
    T acc = T(0);
    for (int64_t c = 0; c < chunks; ++c) acc += partial[c * cols + j];
    out[j] = accumulate ? out[j] + acc : acc;
  }
}

// out (device pointer on `device`, `cols` elements) (+)= column sums of f over `rows` rows.
template <typename T, typename F>
void ColumnSum(F f, int64_t rows, int64_t cols, T* out, bool accumulate, int device,
               cudaStream_t stream) {
  if (cols == 0) return;
  if (rows == 0) {
    if (!accumulate) TESSERA_CUDA_CHECK(cudaMemsetAsync(out, 0, cols * sizeof(T), stream));
    return;
  }
  constexpr int64_t kMaxChunks = 256;
  int64_t rows_per_chunk = std::max<int64_t>(32, (rows + kMaxChunks - 1) / kMaxChunks);
  int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  Tensor partial = Tensor::Empty({chunks, cols}, DTypeOf<T>::value, Device::CUDA(device));
  dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads), static_cast<unsigned>(chunks));
  ColumnPartialKernel<<<grid, kThreads, 0, stream>>>(f, rows, cols, rows_per_chunk,
                                                     partial.data<T>());
  TESSERA_CUDA_CHECK_LAUNCH();
  ColumnFinishKernel<<<BlocksFor(cols), kThreads, 0, stream>>>(partial.data<T>(), chunks, cols, out,
                                                               accumulate);
  TESSERA_CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
