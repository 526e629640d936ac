// Layers: backward against finite differences (f64), f32 gradients against f64 (typed), PyTorch's
// initialisation, the flat parameter layout and the gradient-ready hook.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/models.h"
#include "core/nn/layers.h"
#include "core/nn/loss.h"
#include "core/ops/ops.h"
#include "tests/core/gradcheck.h"

namespace tessera {
namespace {

using testing::CheckModuleGradients;
using testing::RandomTensor;
constexpr DType F64 = DType::kF64;

TEST(LayerGrad, Linear) {
  nn::Linear m(5, 4);
  nn::FlatParameters p(m, Device::CPU(), F64, 1);
  CheckModuleGradients(m, p, RandomTensor({3, 5}, F64, 2));
  // Extra leading dimensions are treated as rows.
  CheckModuleGradients(m, p, RandomTensor({2, 3, 5}, F64, 3));
  nn::Linear nobias(3, 2, false);
  nn::FlatParameters q(nobias, Device::CPU(), F64, 1);
  CheckModuleGradients(nobias, q, RandomTensor({4, 3}, F64, 4));
}

TEST(LayerGrad, Conv2d) {
  nn::Conv2d m(2, 3, 3, 1, 1);
  nn::FlatParameters p(m, Device::CPU(), F64, 5);
  CheckModuleGradients(m, p, RandomTensor({2, 2, 5, 6}, F64, 6));
  nn::Conv2d strided(1, 2, 3, 2, 0, false);
  nn::FlatParameters q(strided, Device::CPU(), F64, 7);
  CheckModuleGradients(strided, q, RandomTensor({1, 1, 7, 7}, F64, 8));
}

TEST(LayerGrad, MaxPoolReluGeluFlatten) {
  nn::Sequential m;
  m.Add(std::make_unique<nn::Conv2d>(1, 2, 3, 1, 1));
  m.Add(std::make_unique<nn::GELU>());
  m.Add(std::make_unique<nn::MaxPool2d>(2));
  m.Add(std::make_unique<nn::ReLU>());
  m.Add(std::make_unique<nn::Flatten>());
  m.Add(std::make_unique<nn::Linear>(2 * 3 * 3, 3));
  nn::FlatParameters p(m, Device::CPU(), F64, 9);
  CheckModuleGradients(m, p, RandomTensor({2, 1, 6, 6}, F64, 10), true, 1e-6, 1e-5);
}

TEST(LayerGrad, LayerNorm) {
  nn::LayerNorm m(6);
  nn::FlatParameters p(m, Device::CPU(), F64, 11);
  // Give gamma and beta non-trivial values so their gradients are exercised.
  p.values().CopyFrom(RandomTensor({p.numel()}, F64, 12, 0.5, 1.5));
  CheckModuleGradients(m, p, RandomTensor({4, 6}, F64, 13));
}

TEST(LayerGrad, Embedding) {
  nn::Embedding m(7, 3);
  nn::FlatParameters p(m, Device::CPU(), F64, 14);
  Tensor ids = Tensor::FromVector({0, 6, 2, 2, 5}, {5}, DType::kI32);
  testing::GradCase c;
  c.names = {"weight"};
  c.inputs = {m.weight().value};
  c.forward = [&] { return m.Forward(ids); };
  c.backward = [&](const Tensor& dy) {
    p.ZeroGrad();
    m.Forward(ids);
    EXPECT_FALSE(m.Backward(dy).defined());
    return std::vector<Tensor>{m.weight().grad};
  };
  testing::CheckGradients(c);
}

TEST(LayerGrad, DropoutWithAFixedCounter) {
  nn::Sequential m;
  m.Add(std::make_unique<nn::Linear>(6, 8));
  auto& drop = m.Add(std::make_unique<nn::Dropout>(0.4));
  m.Add(std::make_unique<nn::Linear>(8, 2));
  nn::FlatParameters p(m, Device::CPU(), F64, 15);
  CheckModuleGradients(m, p, RandomTensor({5, 6}, F64, 16), true, 1e-6, 1e-6,
                       [&] { drop.set_rng_offset(0); });
  // Eval mode: identity.
  m.SetTraining(false);
  Tensor x = RandomTensor({3, 8}, F64, 17);
  EXPECT_EQ(drop.Forward(x).ToVector(), x.ToVector());
}

TEST(Dropout, MasksFollowTheExampleNotTheBatchSplit) {
  nn::Dropout drop(0.5);
  drop.SetSeed(3);
  Tensor x = testing::RandomTensor({4, 30}, DType::kF32, 1, 1, 2);
  drop.SetBatchPosition(100);  // rows are examples 100..103
  std::vector<double> whole = drop.Forward(x).ToVector();
  drop.SetBatchPosition(102);  // the second half alone, as rank 1 of 2 would see it
  std::vector<double> half = drop.Forward(x.Slice0(2, 4)).ToVector();
  for (size_t i = 0; i < half.size(); ++i) ASSERT_EQ(half[i], whole[60 + i]) << i;
  drop.SetBatchPosition(104);  // other examples, other masks
  EXPECT_NE(drop.Forward(x).ToVector(), whole);
}

TEST(LossGrad, CrossEntropyAndMse) {
  Tensor logits = RandomTensor({4, 5}, F64, 18);
  Tensor labels = Tensor::FromVector({4, 0, 2, 2}, {4}, DType::kI32);
  nn::CrossEntropyLoss ce;
  testing::GradCase c;
  c.names = {"logits"};
  c.inputs = {logits};
  c.forward = [&] { return ce.Forward(logits, labels).Reshape({1}); };
  c.backward = [&](const Tensor& dy) {
    ce.Forward(logits, labels);
    return std::vector<Tensor>{ce.Backward(dy.Item())};
  };
  testing::CheckGradients(c);

  Tensor pred = RandomTensor({3, 4}, F64, 19), target = RandomTensor({3, 4}, F64, 20);
  nn::MSELoss mse;
  testing::GradCase m;
  m.names = {"pred"};
  m.inputs = {pred};
  m.forward = [&] { return mse.Forward(pred, target).Reshape({1}); };
  m.backward = [&](const Tensor& dy) {
    mse.Forward(pred, target);
    return std::vector<Tensor>{mse.Backward(dy.Item())};
  };
  testing::CheckGradients(m);
  EXPECT_THROW(mse.Forward(pred, RandomTensor({4, 3}, F64, 1)), ShapeError);
}

// ---- typed over dtype: f32 analytic gradients agree with f64 ----
template <typename T>
class LayerTyped : public ::testing::Test {};
using LayerFloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LayerTyped, LayerFloatTypes);

// f32 gradients against the same network in f64 (f64 itself is checked by finite differences).
TEST(LayerF32, W2GradientsMatchDoublePrecision) {
  const DType dt = DType::kF32;
  models::CnnConfig cfg;
  cfg.height = cfg.width = 8;
  cfg.channels = {4, 6};
  cfg.hidden = {10};
  auto run = [&](DType d) {
    auto net = models::BuildCnn(cfg);
    nn::FlatParameters p(*net, Device::CPU(), d, 21);
    nn::CrossEntropyLoss loss;
    Tensor x = RandomTensor({3, 1, 8, 8}, d, 22);
    Tensor y = Tensor::FromVector({1, 7, 3}, {3}, DType::kI32);
    loss.Forward(net->Forward(x), y);
    net->Backward(loss.Backward());
    return p.grads().ToVector();
  };
  std::vector<double> got = run(dt), ref = run(F64);
  ASSERT_EQ(got.size(), ref.size());
  const double tol = 1e-5;
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], tol * std::max(1.0, std::fabs(ref[i]))) << i;
}

// ---- initialisation ----
TEST(Models, PoolingBeforeReluIsExactlyReluBeforePooling) {
  // W2's blocks run Conv -> MaxPool -> ReLU; check against Conv -> ReLU -> MaxPool, bitwise.
  auto make = [](bool relu_first) {
    auto net = std::make_unique<nn::Sequential>();
    net->Add(std::make_unique<nn::Conv2d>(2, 3, 3, 1, 1));
    if (relu_first) net->Add(std::make_unique<nn::ReLU>());
    net->Add(std::make_unique<nn::MaxPool2d>(2));
    if (!relu_first) net->Add(std::make_unique<nn::ReLU>());
    return net;
  };
  auto a = make(true), b = make(false);
  nn::FlatParameters pa(*a, Device::CPU(), DType::kF32, 4), pb(*b, Device::CPU(), DType::kF32, 4);
  Tensor x = testing::RandomTensor({2, 2, 6, 6}, DType::kF32, 5);
  Tensor ya = a->Forward(x), yb = b->Forward(x);
  EXPECT_EQ(ya.ToVector(), yb.ToVector());
  Tensor dy = testing::RandomTensor(ya.shape(), DType::kF32, 6);
  EXPECT_EQ(a->Backward(dy).ToVector(), b->Backward(dy).ToVector());
  EXPECT_EQ(pa.grads().ToVector(), pb.grads().ToVector());
}

TEST(Init, LinearAndConvFollowPyTorchDefaults) {
  nn::Linear lin(400, 300);
  nn::Conv2d conv(8, 16, 3);
  nn::Sequential both;
  nn::FlatParameters p1(lin, Device::CPU(), DType::kF32, 3);
  nn::FlatParameters p2(conv, Device::CPU(), DType::kF32, 3);
  auto check = [](const Tensor& t, double bound) {
    std::vector<double> v = t.ToVector();
    double mean = 0, sq = 0;
    for (double e : v) {
      ASSERT_LE(std::fabs(e), bound);
      mean += e;
      sq += e * e;
    }
    mean /= v.size();
    sq /= v.size();
    EXPECT_NEAR(mean, 0.0, 0.05 * bound);
    EXPECT_NEAR(sq, bound * bound / 3, 0.05 * bound * bound / 3);  // variance of U(-b, b)
  };
  check(lin.weight().value, 1 / std::sqrt(400.0));
  check(conv.weight().value, 1 / std::sqrt(72.0));
  for (double b : lin.bias()->value.ToVector()) EXPECT_LE(std::fabs(b), 1 / std::sqrt(400.0));
}

TEST(Init, SameSeedSameValuesOtherSeedOthers) {
  auto values = [](uint64_t seed) {
    auto net = models::BuildMlp({});
    nn::FlatParameters p(*net, Device::CPU(), DType::kF32, seed);
    return p.values().ToVector();
  };
  EXPECT_EQ(values(5), values(5));
  EXPECT_NE(values(5), values(6));
}

// ---- flat layout and hooks ----
TEST(FlatParameters, EveryParameterIsAnAlignedViewOfOneBuffer) {
  auto net = models::BuildMlp({});
  nn::FlatParameters p(*net, Device::CPU(), DType::kF32, 1);
  const auto& e = p.entries();
  ASSERT_EQ(e.size(), 6u);
  EXPECT_EQ(e[0].name, "1.weight");
  EXPECT_EQ(e[1].name, "1.bias");
  EXPECT_EQ(e[5].name, "5.bias");
  EXPECT_EQ(p.num_parameters(), 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10);
  for (const auto& en : e) {
    EXPECT_EQ(en.offset % nn::FlatParameters::kAlignment, 0);
    EXPECT_EQ(en.param->value.storage(), p.values().storage());
    EXPECT_EQ(en.param->grad.storage(), p.grads().storage());
    EXPECT_EQ(en.param->value.storage_offset(), en.offset);
  }
  EXPECT_THROW(p.Find("9.weight"), Error);
  // Writing through the flat buffer is visible through the views.
  p.values().Fill(0.5);
  EXPECT_EQ(e[3].param->value.ToVector()[7], 0.5);
}

TEST(FlatParameters, ForwardBeforeLayoutIsAClearError) {
  nn::Linear m(3, 2);
  try {
    m.Forward(Tensor::Zeros({1, 3}));
    FAIL();
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("FlatParameters"), std::string::npos) << err.what();
  }
}

TEST(GradReadyHook, FiresOncePerParameterInReverseOrderWithFinalGradients) {
  auto net = models::BuildMlp({});
  net->set_needs_input_grad(false);
  nn::FlatParameters p(*net, Device::CPU(), DType::kF32, 1);
  std::vector<std::string> order;
  std::map<std::string, std::vector<double>> at_hook;
  p.SetGradReadyHook([&](nn::Parameter& prm) {
    for (const auto& e : p.entries())
      if (e.param == &prm) {
        order.push_back(e.name);
        at_hook[e.name] = prm.grad.ToVector();
      }
  });
  nn::CrossEntropyLoss loss;
  Tensor x = RandomTensor({4, 1, 28, 28}, DType::kF32, 2);
  loss.Forward(net->Forward(x), Tensor::FromVector({1, 2, 3, 4}, {4}, DType::kI32));
  Tensor dx = net->Backward(loss.Backward());
  EXPECT_FALSE(dx.defined());  // the first layer skipped its input gradient
  EXPECT_EQ(order, (std::vector<std::string>{"5.weight", "5.bias", "3.weight", "3.bias", "1.weight", "1.bias"}));
  for (const auto& e : p.entries()) EXPECT_EQ(at_hook[e.name], e.param->grad.ToVector()) << e.name;
}

TEST(Module, BackwardWithoutForwardAndBadShapesAreClearErrors) {
  nn::Linear m(3, 2);
  nn::FlatParameters p(m);
  EXPECT_THROW(m.Backward(Tensor::Zeros({1, 2})), Error);
  try {
    m.Forward(Tensor::Zeros({4, 5}));
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("Linear(in=3, out=2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[4, 5]"), std::string::npos) << e.what();
  }
  auto net = models::BuildCnn({});
  EXPECT_NE(net->Summary().find("Conv2d(in=1, out=32, kernel=3"), std::string::npos) << net->Summary();
  EXPECT_EQ(net->NumParameters(), 32 * 9 + 32 + 64 * 32 * 9 + 64 + 3136 * 128 + 128 + 1280 + 10);
}

}  // namespace
}  // namespace tessera
