// Optimizer updates on CUDA over flat slices; the per-element rules are ops/functors.h, shared
// with the CPU kernels. Hyper-parameters travel by value in the launch.
#include "core/ops/cuda/cuda_kernels.h"
#include "core/ops/cuda/launch.cuh"
#include "core/ops/functors.h"

namespace tessera::cuda {
namespace {

template <typename T>
__global__ void SgdKernel(T* p, const T* g, T* buf, SgdStepParams h, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) fn::SgdUpdate(p[i], g[i], buf ? buf + i : nullptr, h);
}

template <typename T>
__global__ void AdamKernel(T* p, const T* g, T* m, T* v, AdamStepParams h, int64_t n) {
  TESSERA_GRID_STRIDE(i, n) fn::AdamUpdate(p[i], g[i], m[i], v[i], h);
}

template <typename T>
__global__ void RmspropKernel(T* p, const T* g, T* sq, T* ga, T* buf, RmspropStepParams h,
                              int64_t n) {
  TESSERA_GRID_STRIDE(i, n) {
    fn::RmspropUpdate(p[i], g[i], sq[i], ga ? ga + i : nullptr, buf ? buf + i : nullptr, h);
  }
}

}  // namespace

void SgdStep(Tensor& param, const Tensor& grad, Tensor& buf, const SgdStepParams& h) {
  TESSERA_DISPATCH_FLOAT(param.dtype(), "SgdStep", [&] {
    const int64_t n = param.numel();
    if (n == 0) return;
    OnDevice on(param);
    scalar_t* b = h.momentum != 0 ? buf.data<scalar_t>() : nullptr;
    SgdKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(param.data<scalar_t>(),
                                                          grad.data<scalar_t>(), b, h, n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void AdamStep(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStepParams& h) {
  TESSERA_DISPATCH_FLOAT(param.dtype(), "AdamStep", [&] {
    const int64_t n = param.numel();
    if (n == 0) return;
    OnDevice on(param);
    AdamKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(
        param.data<scalar_t>(), grad.data<scalar_t>(), m.data<scalar_t>(), v.data<scalar_t>(), h,
        n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

void RmspropStep(Tensor& param, const Tensor& grad, Tensor& sq, Tensor& ga, Tensor& buf,
                 const RmspropStepParams& h) {
  TESSERA_DISPATCH_FLOAT(param.dtype(), "RmspropStep", [&] {
    const int64_t n = param.numel();
    if (n == 0) return;
    OnDevice on(param);
    scalar_t* a = h.centered ? ga.data<scalar_t>() : nullptr;
    scalar_t* b = h.momentum > 0 ? buf.data<scalar_t>() : nullptr;
    RmspropKernel<<<BlocksFor(n), kThreads, 0, on.stream()>>>(
        param.data<scalar_t>(), grad.data<scalar_t>(), sq.data<scalar_t>(), a, b, h, n);
    TESSERA_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace tessera::cuda
