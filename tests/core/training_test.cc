// End-to-end training through the C++ API: determinism across runs and thread counts, and a
// model that learns a synthetic task.
#include <gtest/gtest.h>

#include <cmath>

#include "core/metrics.h"
#include "core/models.h"
#include "core/nn/loss.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "core/threads.h"
#include "tests/core/gradcheck.h"

namespace tessera {
namespace {

// A synthetic 10-class image task: each class has a fixed random prototype; samples are the
// prototype plus noise.
struct Synthetic {
  Tensor x, y;
};
Synthetic MakeData(int64_t n, int64_t h, uint64_t seed) {
  Tensor protos = testing::RandomTensor({10, h * h}, DType::kF32, 1234, 0, 1);
  std::vector<double> pv = protos.ToVector();
  PhiloxGenerator gen(seed, 9);
  std::vector<double> xs(n * h * h), ys(n);
  for (int64_t i = 0; i < n; ++i) {
    int c = static_cast<int>(gen.Below(10));
    ys[i] = c;
    for (int64_t j = 0; j < h * h; ++j) xs[i * h * h + j] = pv[c * h * h + j] + 0.3 * gen.Normal();
  }
  return {Tensor::FromVector(xs, {n, 1, h, h}), Tensor::FromVector(ys, {n}, DType::kI32)};
}

std::vector<double> TrainSteps(bool cnn, int threads, int steps, uint64_t seed,
                               std::vector<double>* losses = nullptr, double lr = 3e-3) {
  SetNumThreads(threads);
  std::unique_ptr<nn::Sequential> net;
  if (cnn) {
    models::CnnConfig c;
    c.height = c.width = 12;
    c.channels = {8, 16};
    c.hidden = {32};
    c.dropout = 0.2;
    net = models::BuildCnn(c);
  } else {
    models::MlpConfig c;
    c.in_features = 144;
    c.hidden = {64, 32};
    c.dropout = 0.1;
    net = models::BuildMlp(c);
  }
  net->set_needs_input_grad(false);
  nn::FlatParameters params(*net, Device::CPU(), DType::kF32, seed);
  optim::Adam adam(params.values(), params.grads());
  nn::CrossEntropyLoss loss;
  Synthetic data = MakeData(steps * 32, 12, seed);
  for (int s = 0; s < steps; ++s) {
    params.ZeroGrad();
    Tensor x = data.x.Slice0(s * 32, (s + 1) * 32), y = data.y.Slice0(s * 32, (s + 1) * 32);
    Tensor l = loss.Forward(net->Forward(x), y);
    if (losses) losses->push_back(l.Item());
    net->Backward(loss.Backward());
    adam.Step(lr);
  }
  SetNumThreads(1);
  return params.values().ToVector();
}

TEST(Determinism, SameSeedBitwiseSameParametersAfterTenSteps) {
  for (bool cnn : {false, true}) {
    SCOPED_TRACE(cnn ? "cnn" : "mlp");
    std::vector<double> a1 = TrainSteps(cnn, 1, 10, 7);
    std::vector<double> b1 = TrainSteps(cnn, 1, 10, 7);
    std::vector<double> a2 = TrainSteps(cnn, 2, 10, 7);
    std::vector<double> b2 = TrainSteps(cnn, 2, 10, 7);
    EXPECT_TRUE(a1 == b1) << "1 thread: two runs differ";
    EXPECT_TRUE(a2 == b2) << "2 threads: two runs differ";
    // Across thread counts GEMM blocks differ, so only floating-point closeness is promised.
    ASSERT_EQ(a1.size(), a2.size());
    for (size_t i = 0; i < a1.size(); ++i) ASSERT_NEAR(a1[i], a2[i], 1e-5 * std::max(1.0, std::fabs(a1[i]))) << i;
    EXPECT_FALSE(a1 == TrainSteps(cnn, 1, 10, 8)) << "another seed must give other parameters";
  }
}

TEST(Training, CnnLearnsASyntheticTask) {
  std::vector<double> losses;
  TrainSteps(true, 2, 80, 3, &losses, 1e-2);
  double first = (losses[0] + losses[1] + losses[2]) / 3;
  double last = (losses[77] + losses[78] + losses[79]) / 3;
  EXPECT_LT(last, 0.3 * first) << "loss went from " << first << " to " << last;
}

}  // namespace
}  // namespace tessera
