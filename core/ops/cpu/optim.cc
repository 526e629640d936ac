// Optimizer updates over flat slices; the per-element rules live in ops/functors.h.
#include "core/ops/cpu/cpu_kernels.h"
#include "core/ops/functors.h"
#include "core/threads.h"

namespace tessera::cpu {

void SgdStep(Tensor& param, const Tensor& grad, Tensor& buf, const SgdStepParams& h) {
  TESSERA_DISPATCH_FLOAT(param.dtype(), "SgdStep", [&] {
    scalar_t* p = param.data<scalar_t>();
    const scalar_t* g = grad.data<scalar_t>();
    scalar_t* b = h.momentum != 0 ? buf.data<scalar_t>() : nullptr;
    // Pointers and hyper-parameters by value: stores through p cannot then alias them, and the
    // loops vectorise (state, params and grads never overlap).
    ParallelFor(param.numel(), kElementwiseGrain, [p, g, b, h](int64_t s, int64_t e) {
      _Pragma("GCC ivdep") for (int64_t i = s; i < e; ++i) fn::SgdUpdate(p[i], g[i], b ? b + i : nullptr, h);
    });
  });
}

void AdamStep(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStepParams& h) {
  TESSERA_DISPATCH_FLOAT(param.dtype(), "AdamStep", [&] {
    scalar_t* p = param.data<scalar_t>();
    const scalar_t* g = grad.data<scalar_t>();
    scalar_t* mp = m.data<scalar_t>();
    scalar_t* vp = v.data<scalar_t>();
    ParallelFor(param.numel(), kElementwiseGrain, [p, g, mp, vp, h](int64_t s, int64_t e) {
      if (h.weight_decay == 0) {  // the common case, without the branch in the loop
        AdamStepParams hz = h;
        hz.weight_decay = 0;
        _Pragma("GCC ivdep") for (int64_t i = s; i < e; ++i) fn::AdamUpdate(p[i], g[i], mp[i], vp[i], hz);
      } else {
        _Pragma("GCC ivdep") for (int64_t i = s; i < e; ++i) fn::AdamUpdate(p[i], g[i], mp[i], vp[i], h);
      }
    });
  });
}

void RmspropStep(Tensor& param, const Tensor& grad, Tensor& sq, Tensor& ga, Tensor& buf,
                 const RmspropStepParams& h) {
  TESSERA_DISPATCH_FLOAT(param.dtype(), "RmspropStep", [&] {
    scalar_t* p = param.data<scalar_t>();
    const scalar_t* g = grad.data<scalar_t>();
    scalar_t* s = sq.data<scalar_t>();
    scalar_t* a = h.centered ? ga.data<scalar_t>() : nullptr;
    scalar_t* b = h.momentum > 0 ? buf.data<scalar_t>() : nullptr;
    ParallelFor(param.numel(), kElementwiseGrain, [p, g, s, a, b, h](int64_t lo, int64_t hi) {
      _Pragma("GCC ivdep") for (int64_t i = lo; i < hi; ++i)
        fn::RmspropUpdate(p[i], g[i], s[i], a ? a + i : nullptr, b ? b + i : nullptr, h);
    });
  });
}

}  // namespace tessera::cpu
