// Finite-difference gradient checks for ops and layers (f64, central differences).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/nn/module.h"
#include "core/tensor.h"

namespace tessera::testing {

// A differentiable computation over some input tensors (host, f64). `forward` reads the inputs
// (which the checker perturbs in place) and returns the output; `backward` takes dL/dy and returns
// one gradient per input. Every input is checked: an undefined gradient is a failure (leave an input
// that is not differentiable out of `inputs`).
struct GradCase {
  std::vector<std::string> names;
  std::vector<Tensor> inputs;
  std::function<Tensor()> forward;
  std::function<std::vector<Tensor>(const Tensor& dy)> backward;
};

// Checks every analytic gradient of L = sum(r * forward()) for a fixed random r against
// (L(x + eps) - L(x - eps)) / (2 eps) on up to `max_per_input` elements per input (all of them
// when the input is small). Records a gtest failure naming the input, element and both values
// when |analytic - numeric| > tol * max(1, |analytic|, |numeric|).
void CheckGradients(const GradCase& c, double eps = 1e-6, double tol = 1e-6, int max_per_input = 96,
                    uint64_t seed = 1);

// The same for a module: inputs are x (when check_input; the module must then return its gradient)
// and every parameter. The module must
// already be laid out in f64 on the CPU by `params`. `before_forward` runs before each forward
// (e.g. to reset a dropout counter).
void CheckModuleGradients(nn::Module& m, nn::FlatParameters& params, const Tensor& x,
                          bool check_input = true, double eps = 1e-6, double tol = 1e-6,
                          std::function<void()> before_forward = nullptr);

// A host tensor with uniform entries in [lo, hi).
Tensor RandomTensor(const Shape& shape, DType dtype, uint64_t seed, double lo = -1.0, double hi = 1.0);

}  // namespace tessera::testing
