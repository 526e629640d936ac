// Max-pooling on CUDA, NCHW: one thread per output; indices are flat offsets into each input
// H*W plane (as on the CPU). The backward scatters dy through the indices with atomics.
#include <limits>

#include "core/ops/cuda/cuda_kernels.h"
#include "core/ops/cuda/launch.cuh"

namespace tessera::cuda {
namespace {

struct PoolGeom {
  int64_t planes, h, w, p, q;
  int kh, kw, sh, sw, ph, pw;
};

// First maximum in window order wins; a NaN is taken and ends the row scan, as on the CPU.
template <typename T>
__global__ void MaxPoolKernel(const T* x, PoolGeom g, T* y, int32_t* indices) {
  TESSERA_GRID_STRIDE(o, g.planes * g.p * g.q) {
    const int64_t plane = o / (g.p * g.q), pq = o - plane * g.p * g.q;
    const int64_t oy = pq / g.q, ox = pq - oy * g.q;
    const T* src = x + plane * g.h * g.w;
    T best = -std::numeric_limits<T>::infinity();
    int32_t best_i = -1;
    for (int i = 0; i < g.kh; ++i) {
      const int64_t iy = oy * g.sh - g.ph + i;
      if (iy < 0 || iy >= g.h) continue;
      for (int j = 0; j < g.kw; ++j) {
        const int64_t ix = ox * g.sw - g.pw + j;
        if (ix < 0 || ix >= g.w) continue;
        const T v = src[iy * g.w + ix];
        if (v > best || best_i < 0 || v != v) {
          best = v;
          best_i = static_cast<int32_t>(iy * g.w + ix);
          if (v != v) break;
        }
      }
    }
    y[o] = best;
    indices[o] = best_i;
  }
}

// dx (zeroed first) [plane, idx] += dy [plane, o]. Overlapping windows make several outputs hit
// one input, hence the atomics; an index outside the plane is skipped.
template <typename T>
__global__ void MaxPoolBackwardKernel(const T* dy, const int32_t* indices, int64_t planes,
                                      int64_t pq, int64_t hw, T* dx) {
  TESSERA_GRID_STRIDE(o, planes * pq) {
    const int64_t plane = o / pq;
    const int32_t idx = indices[o];
    if (idx >= 0 && idx < hw) atomicAdd(dx + plane * hw + idx, dy[o]);
  }
}

}  // namespace

void MaxPool2d(const Tensor& x, const Pool2dParams& prm, Tensor& y, Tensor& indices) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "MaxPool2d", [&] {
    PoolGeom g{x.dim(0) * x.dim(1), x.dim(2),     x.dim(3),     y.dim(2),  y.dim(3), prm.kernel_h,
               prm.kernel_w,        prm.stride_h, prm.stride_w, prm.pad_h, prm.pad_w};
    const int64_t n = g.planes * g.p * g.q;
    if (n == 0) return;
    if (g.h * g.w > std::numeric_limits<int32_t>::max())
      TESSERA_THROW(ShapeError, "MaxPool2d: input plane of ", x.Describe(),
                    " is too large for i32 indices");
    OnDevice on(x);
    MaxPoolKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(
        x.data<scalar_t>(), g, y.data<scalar_t>(), indices.data<int32_t>());
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void MaxPool2dBackward(const Tensor& dy, const Tensor& indices, Tensor& dx) {
  TESSERA_DISPATCH_FLOAT(dy.dtype(), "MaxPool2dBackward", [&] {
    const int64_t planes = dx.dim(0) * dx.dim(1), hw = dx.dim(2) * dx.dim(3);
    const int64_t pq = dy.dim(2) * dy.dim(3);
    Fill(dx, 0.0);
    if (planes * pq == 0 || hw == 0) return;
    OnDevice on(dy);
    MaxPoolBackwardKernel<<<BlocksFor(planes * pq), kThreads, 0, on.stream()>>>(
        dy.data<scalar_t>(), indices.data<int32_t>(), planes, pq, hw, dx.data<scalar_t>());
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tessera::cuda
