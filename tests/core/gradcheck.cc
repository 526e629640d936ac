#include "tests/core/gradcheck.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/random.h"

namespace tessera::testing {

Tensor RandomTensor(const Shape& shape, DType dtype, uint64_t seed, double lo, double hi) {
  PhiloxGenerator gen(seed, 77);
  std::vector<double> v(static_cast<size_t>(NumElements(shape)));
  for (double& e : v) e = gen.Uniform(lo, hi);
  return Tensor::FromVector(v, shape, dtype);
}

namespace {
double Dot(const Tensor& a, const Tensor& b) {
  const double* pa = a.data<double>();
  const double* pb = b.data<double>();
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += pa[i] * pb[i];
  return s;
}
}  // namespace

void CheckGradients(const GradCase& c, double eps, double tol, int max_per_input, uint64_t seed) {
  Tensor y0 = c.forward();
  ASSERT_EQ(y0.dtype(), DType::kF64) << "gradient checks run in f64";
  Tensor r = RandomTensor(y0.shape(), DType::kF64, seed + 1000);
  std::vector<Tensor> grads = c.backward(r);
  ASSERT_EQ(grads.size(), c.inputs.size());
  auto loss = [&] { return Dot(c.forward(), r); };
  PhiloxGenerator pick(seed, 5);
  for (size_t k = 0; k < c.inputs.size(); ++k) {
    // A checked input must have a gradient: a layer that drops its input gradient fails here.
    if (!grads[k].defined()) {
      ADD_FAILURE() << "no gradient was returned for " << c.names[k];
      continue;
    }
    Tensor in = c.inputs[k];
    ASSERT_EQ(grads[k].numel(), in.numel()) << "gradient of " << c.names[k] << " has the wrong size";
    Tensor g = grads[k].Clone();  // the next forward/backward may reuse buffers
    double* x = in.data<double>();
    const double* ga = g.data<double>();
    int64_t n = in.numel();
    std::vector<int64_t> idx;
    if (n <= max_per_input) {
      for (int64_t i = 0; i < n; ++i) idx.push_back(i);
    } else {
      for (int i = 0; i < max_per_input; ++i) idx.push_back(static_cast<int64_t>(pick.Below(n)));
    }
    for (int64_t i : idx) {
      double orig = x[i];
      x[i] = orig + eps;
      double lp = loss();
      x[i] = orig - eps;
      double lm = loss();
      x[i] = orig;
      double numeric = (lp - lm) / (2 * eps);
      double analytic = ga[i];
      double scale = std::max({1.0, std::fabs(analytic), std::fabs(numeric)});
      EXPECT_LE(std::fabs(analytic - numeric), tol * scale)
          << "d/d " << c.names[k] << "[" << i << "]: analytic " << analytic << " vs numeric " << numeric;
    }
  }
}

void CheckModuleGradients(nn::Module& m, nn::FlatParameters& params, const Tensor& x, bool check_input,
                          double eps, double tol, std::function<void()> before_forward) {
  GradCase c;
  if (check_input) {
    c.names.push_back("input");
    c.inputs.push_back(x);
  }
  for (const auto& e : params.entries()) {
    c.names.push_back(e.name);
    c.inputs.push_back(e.param->value);
  }
  m.SetTraining(true);
  c.forward = [&] {
    if (before_forward) before_forward();
    return m.Forward(x);
  };
  c.backward = [&](const Tensor& dy) {
    params.ZeroGrad();
    if (before_forward) before_forward();
    m.Forward(x);
    Tensor dx = m.Backward(dy);
    std::vector<Tensor> out;
    if (check_input) out.push_back(dx);
    for (const auto& e : params.entries()) out.push_back(e.param->grad);
    return out;
  };
  CheckGradients(c, eps, tol);
}

}  // namespace tessera::testing
