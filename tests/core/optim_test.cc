// Optimizers against hand-computed trajectories of PyTorch's update rules on L = p^2 (g = 2p),
// schedules and clipping in closed form, and the slice property ZeRO relies on.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops/ops.h"
#include "core/optim/optimizer.h"
#include "core/optim/schedule.h"
#include "tests/core/gradcheck.h"

namespace tessera {
namespace {

template <typename T>
class OptimTyped : public ::testing::Test {};
using OptimFloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(OptimTyped, OptimFloatTypes);

// Runs `steps` updates of L = p^2 from p = 1 and checks each p against `expected`.
template <typename MakeOpt>
void ExpectTrajectory(DType dt, double lr, MakeOpt make, const std::vector<double>& expected) {
  Tensor p = Tensor::Full({3}, 1.0, dt);
  Tensor g = Tensor::Zeros({3}, dt);
  auto opt = make(p, g);
  double tol = dt == DType::kF32 ? 2e-6 : 1e-12;
  for (size_t s = 0; s < expected.size(); ++s) {
    g.CopyFrom(p);
    ops::Scale(g, 2.0);
    opt->Step(lr);
    for (double v : p.ToVector()) ASSERT_NEAR(v, expected[s], tol) << opt->name() << " step " << s + 1;
  }
  EXPECT_EQ(opt->step_count(), static_cast<int64_t>(expected.size()));
}

TYPED_TEST(OptimTyped, SgdMomentumNesterovDampening) {
  const DType dt = DTypeOf<TypeParam>::value;
  auto sgd = [](optim::SgdOptions o) {
    return [o](Tensor p, Tensor g) { return std::make_unique<optim::Sgd>(p, g, o); };
  };
  ExpectTrajectory(dt, 0.1, sgd({0.0, 0.0, 0.0, false}), {0.8, 0.64, 0.512});
  ExpectTrajectory(dt, 0.1, sgd({0.9, 0.0, 0.01, false}), {0.799, 0.45750100000000005, 0.058194199});
  ExpectTrajectory(dt, 0.1, sgd({0.9, 0.0, 0.01, true}), {0.6181, 0.21923760999999992, -0.11165109425900016});
  ExpectTrajectory(dt, 0.1, sgd({0.9, 0.5, 0.01, false}), {0.799, 0.5378005000000001, 0.2486719997500001});
}

TYPED_TEST(OptimTyped, AdamAndAdamW) {
  const DType dt = DTypeOf<TypeParam>::value;
  // The first step is exactly lr * g / (|g| + eps) thanks to the bias corrections.
  ExpectTrajectory(dt, 0.01, [](Tensor p, Tensor g) { return std::make_unique<optim::Adam>(p, g); },
                   {0.99000000005, 0.9800027459961475, 0.9700100993784});
  optim::AdamOptions l2;
  l2.weight_decay = 0.1;
  ExpectTrajectory(dt, 0.01, [&](Tensor p, Tensor g) { return std::make_unique<optim::Adam>(p, g, l2); },
                   {0.990000000047619, 0.9800027459913749, 0.9700100993712262});
  ExpectTrajectory(dt, 0.01, [&](Tensor p, Tensor g) { return std::make_unique<optim::AdamW>(p, g, l2); },
                   {0.98900000005, 0.9780140360689855, 0.9670441523454768});
}

TYPED_TEST(OptimTyped, Rmsprop) {
  const DType dt = DTypeOf<TypeParam>::value;
  ExpectTrajectory(dt, 0.01, [](Tensor p, Tensor g) { return std::make_unique<optim::Rmsprop>(p, g); },
                   {0.9000000049999998, 0.8329179679700331, 0.7799822732436351});
  optim::RmspropOptions o;
  o.momentum = 0.9;
  o.centered = true;
  ExpectTrajectory(dt, 0.01, [&](Tensor p, Tensor g) { return std::make_unique<optim::Rmsprop>(p, g, o); },
                   {0.8994962235245836, 0.7413059808836701, 0.5496501653165236});
}

TEST(Optim, StateIsNamedLikePyTorch) {
  Tensor p = Tensor::Zeros({4}), g = Tensor::Zeros({4});
  optim::Adam adam(p, g);
  auto st = adam.State();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].first, "exp_avg");
  EXPECT_EQ(st[1].first, "exp_avg_sq");
  optim::Sgd sgd(p, g, {0.9});
  EXPECT_EQ(sgd.State().at(0).first, "momentum_buffer");
  EXPECT_THROW(optim::Sgd(p, g, {0.0, 0.0, 0.0, true}), ValueError);
  EXPECT_THROW(optim::Adam(p, Tensor::Zeros({5})), ShapeError);
}

TEST(Optim, SlicesUpdateExactlyLikeTheWholeBuffer) {
  // ZeRO hands each rank a contiguous slice: two optimizers over two halves must equal one.
  Tensor p1 = testing::RandomTensor({1001}, DType::kF32, 1), g = testing::RandomTensor({1001}, DType::kF32, 2);
  Tensor p2 = p1.Clone();
  optim::AdamW whole(p1, g);
  optim::AdamW lo(p2.View(0, {500}), g.View(0, {500}));
  optim::AdamW hi(p2.View(500, {501}), g.View(500, {501}));
  for (int s = 0; s < 5; ++s) {
    whole.Step(1e-3);
    lo.Step(1e-3);
    hi.Step(1e-3);
  }
  EXPECT_EQ(p1.ToVector(), p2.ToVector());
}

TEST(Schedule, StepAndCosineInClosedForm) {
  optim::StepLr step(0.1, 10, 0.5);
  EXPECT_DOUBLE_EQ(step.At(0), 0.1);
  EXPECT_DOUBLE_EQ(step.At(9), 0.1);
  EXPECT_DOUBLE_EQ(step.At(10), 0.05);
  EXPECT_DOUBLE_EQ(step.At(25), 0.025);
  optim::CosineLr cos(1.0, 4, 14, 0.1);
  EXPECT_DOUBLE_EQ(cos.At(0), 0.25);
  EXPECT_DOUBLE_EQ(cos.At(3), 1.0);
  EXPECT_DOUBLE_EQ(cos.At(4), 1.0);
  EXPECT_NEAR(cos.At(9), 0.1 + 0.45 * (1 + std::cos(M_PI * 0.5)), 1e-15);
  EXPECT_DOUBLE_EQ(cos.At(14), 0.1);
  EXPECT_DOUBLE_EQ(cos.At(100), 0.1);
  EXPECT_THROW(optim::CosineLr(1.0, 5, 4), ValueError);
  EXPECT_DOUBLE_EQ(optim::ConstantLr(0.3).At(1000), 0.3);
}

TEST(Clip, ScalesOnlyAboveTheMaxNorm) {
  Tensor g = Tensor::FromVector({3, 4}, {2}, DType::kF64);
  EXPECT_DOUBLE_EQ(optim::ClipGradNorm(g, 10.0), 5.0);
  EXPECT_EQ(g.ToVector(), (std::vector<double>{3, 4}));
  EXPECT_DOUBLE_EQ(optim::ClipGradNorm(g, 1.0), 5.0);
  std::vector<double> v = g.ToVector();
  EXPECT_NEAR(v[0], 3 / (5 + 1e-6), 1e-15);
  EXPECT_NEAR(v[1], 4 / (5 + 1e-6), 1e-15);
  // With an all-reduced sum of squares (e.g. 2 ranks holding equal shards): norm = sqrt(2 * 25).
  Tensor h = Tensor::FromVector({3, 4}, {2}, DType::kF64);
  EXPECT_NEAR(optim::ClipGradNorm(h, 1.0, 50.0), std::sqrt(50.0), 1e-15);
  // ... and this rank's shard is scaled by the global norm, not by its own (5).
  std::vector<double> hv = h.ToVector();
  EXPECT_NEAR(hv[0], 3 / (std::sqrt(50.0) + 1e-6), 1e-15);
  EXPECT_NEAR(hv[1], 4 / (std::sqrt(50.0) + 1e-6), 1e-15);
  EXPECT_THROW(optim::ClipGradNorm(h, 0.0), ValueError);
}

}  // namespace
}  // namespace tessera
