// int8 inference: the kernels against the reference loops (oneDNN's s8 primitives where tessera
// has them; the loops alone otherwise), the loops against exact integer arithmetic, and the int8
// layers against the f32 layers they replace, within the error quantisation allows.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <tuple>

#include "core/nn/quantized.h"
#include "core/ops/cpu/int8.h"
#include "core/ops/ops.h"
#include "tessera/config.h"

namespace tessera {
namespace {

namespace q8 = cpu::int8;

std::vector<int8_t> RandomInt8(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int> d(-127, 127);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(d(g));
  return v;
}

std::vector<float> RandomFloats(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

Tensor RandomTensor(const Shape& shape, uint32_t seed, float lo, float hi) {
  std::vector<float> v = RandomFloats(static_cast<size_t>(NumElements(shape)), seed, lo, hi);
  return Tensor::FromVector(std::vector<double>(v.begin(), v.end()), shape);
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, float rel, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rel * std::max(1.0f, std::fabs(want[i]))) << what << " element " << i;
}

TEST(Int8Quantize, RoundsClampsAndScalesPerRow) {
  EXPECT_FLOAT_EQ(q8::ScaleFor(12.7f), 0.1f);
  EXPECT_EQ(q8::ScaleFor(0.0f), 1.0f);
  EXPECT_EQ(q8::ScaleFor(NAN), 1.0f);
  const float x[] = {0.04f, 0.05f, -0.05f, 12.7f, -12.7f, 100.0f, -100.0f, 0.149f};
  int8_t q[8];
  q8::Quantize(x, 8, 0.1f, q);
  const int8_t want[] = {0, 0, 0, 127, -127, 127, -127, 1};  // 0.05 * 10 is 0.5 in float: half to even
  for (int i = 0; i < 8; ++i) EXPECT_EQ(q[i], want[i]) << i;

  const float w[] = {1.0f, -2.0f, 0.5f, 0.0f, 0.0f, 0.0f};  // [2, 3]; row 1 all zero
  int8_t wq[6];
  float scale[2];
  q8::QuantizeRows(w, 2, 3, wq, scale);
  EXPECT_FLOAT_EQ(scale[0], 2.0f / 127);
  EXPECT_EQ(scale[1], 1.0f);
  EXPECT_EQ(wq[0], 64);  // 1 / (2/127) = 63.5: half to even
  EXPECT_EQ(wq[1], -127);
  EXPECT_EQ(wq[3], 0);
}

TEST(Int8Kernels, LinearReferenceIsExactIntegerArithmetic) {
  const int64_t m = 3, c = 300, k = 5;
  auto x = RandomInt8(m * c, 1), w = RandomInt8(k * c, 2);
  auto scale = RandomFloats(k, 3, 0.5f, 2.0f), bias = RandomFloats(k, 4, -1, 1);
  std::vector<float> y(m * k);
  q8::LinearReference(x.data(), m, c, w.data(), k, scale.data(), bias.data(), y.data());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t o = 0; o < k; ++o) {
      int64_t acc = 0;  // 300 * 127 * 127 fits int32; computed wider here
      for (int64_t j = 0; j < c; ++j) acc += int64_t{x[i * c + j]} * w[o * c + j];
      EXPECT_FLOAT_EQ(y[i * k + o], scale[o] * static_cast<float>(acc) + bias[o]);
    }
}

// Built with oneDNN, the s8 primitives must be there (x86-64 has them from SSE4.1 up): a build
// that quietly fell back to the loops would serve int8 slower than f32.
TEST(Int8Kernels, RunOnOneDnnWhereTesseraHasIt) {
#if TESSERA_USE_ONEDNN
  EXPECT_STREQ(q8::Backend(), "onednn");
#else
  EXPECT_STREQ(q8::Backend(), "reference");
#endif
}

TEST(Int8Kernels, LinearAgreesWithReference) {
  SCOPED_TRACE(std::string("backend: ") + q8::Backend());
  for (auto [m, c, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 784, 128}, {32, 3136, 128}, {7, 128, 10}, {5, 3, 2}}) {
    auto x = RandomInt8(m * c, 5), w = RandomInt8(k * c, 6);
    auto scale = RandomFloats(k, 7, 1e-4f, 1e-3f), bias = RandomFloats(k, 8, -1, 1);
    std::vector<float> y(m * k), ref(m * k);
    q8::Linear(x.data(), m, c, w.data(), k, scale.data(), bias.data(), y.data());
    q8::LinearReference(x.data(), m, c, w.data(), k, scale.data(), bias.data(), ref.data());
    ExpectClose(y, ref, 1e-5f, "linear");
    q8::Linear(x.data(), m, c, w.data(), k, scale.data(), nullptr, y.data());  // no bias
    q8::LinearReference(x.data(), m, c, w.data(), k, scale.data(), nullptr, ref.data());
    ExpectClose(y, ref, 1e-5f, "linear without bias");
  }
}

TEST(Int8Kernels, Conv2dAgreesWithReference) {
  SCOPED_TRACE(std::string("backend: ") + q8::Backend());
  struct Case {
    Shape x, w;
    int stride, pad;
  };
  for (const Case& t : {Case{{2, 1, 28, 28}, {32, 1, 3, 3}, 1, 1}, Case{{3, 32, 14, 14}, {64, 32, 3, 3}, 1, 1},
                        Case{{1, 3, 9, 7}, {4, 3, 3, 3}, 2, 0}, Case{{2, 5, 6, 6}, {3, 5, 1, 1}, 1, 0}}) {
    Conv2dParams p;
    p.stride_h = p.stride_w = t.stride;
    p.pad_h = p.pad_w = t.pad;
    const Shape ys = ops::Conv2dOutputShape(t.x, t.w, p);
    auto x = RandomInt8(NumElements(t.x), 9), w = RandomInt8(NumElements(t.w), 10);
    auto scale = RandomFloats(t.w[0], 11, 1e-4f, 1e-3f), bias = RandomFloats(t.w[0], 12, -1, 1);
    std::vector<float> y(NumElements(ys)), ref(NumElements(ys));
    q8::Conv2d(x.data(), t.x, w.data(), t.w, p, scale.data(), bias.data(), y.data());
    q8::Conv2dReference(x.data(), t.x, w.data(), t.w, p, scale.data(), bias.data(), ref.data());
    ExpectClose(y, ref, 1e-5f, "conv");
  }
}

// Fills an int8 layer from the f32 one as `tessera store quantize` does.
template <typename F>
void FillQuantized(F& f, nn::Module& q, float input_max_abs) {
  auto fp = f.NamedParameters();
  auto qp = q.NamedParameters();
  std::map<std::string, nn::Parameter*> by;
  for (auto& [n, p] : qp) by[n] = p;
  const Tensor& w = f.weight().value;
  const int64_t out = w.dim(0), per = w.numel() / out;
  q8::QuantizeRows(w.template data<float>(), out, per, by["weight"]->value.template data<int8_t>(),
                   by["weight_scale"]->value.template data<float>());
  if (f.bias()) by["bias"]->value.CopyFrom(f.bias()->value);
  by["input_scale"]->value.data<float>()[0] = q8::ScaleFor(input_max_abs);
}

TEST(QuantizedLayers, FollowTheFloatLayersWithinQuantisationError) {
  nn::Linear lin(256, 16);
  nn::FlatParameters lp(lin, Device::CPU(), DType::kF32, 3);
  nn::QuantizedLinear qlin(256, 16, true);
  nn::AllocateParameters(qlin);
  Tensor x = RandomTensor({4, 256}, 13, -1, 1);
  FillQuantized(lin, qlin, 1.0f);
  lin.SetTraining(false);
  auto want = lin.Forward(x).ToVector(), got = qlin.Forward(x).ToVector();
  double max_err = 0, max_y = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_err = std::max(max_err, std::fabs(got[i] - want[i]));
    max_y = std::max(max_y, std::fabs(want[i]));
  }
  EXPECT_LT(max_err, 0.02 * max_y + 0.01) << "largest output " << max_y;
  EXPECT_GT(max_err, 0.0) << "an int8 layer that equals the f32 one exactly is not quantising";

  nn::Conv2d conv(3, 8, 3, 1, 1);
  nn::FlatParameters cp(conv, Device::CPU(), DType::kF32, 4);
  nn::QuantizedConv2d qconv(3, 8, 3, conv.params(), true);
  nn::AllocateParameters(qconv);
  FillQuantized(conv, qconv, 2.0f);
  Tensor xc = RandomTensor({2, 3, 10, 10}, 14, -2, 2);
  conv.SetTraining(false);
  want = conv.Forward(xc).ToVector();
  got = qconv.Forward(xc).ToVector();
  max_err = max_y = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_err = std::max(max_err, std::fabs(got[i] - want[i]));
    max_y = std::max(max_y, std::fabs(want[i]));
  }
  EXPECT_LT(max_err, 0.02 * max_y + 0.01) << "largest output " << max_y;
}

TEST(QuantizedLayers, ReplaceTheFloatLayersForInferenceOnly) {
  nn::Sequential net;
  net.Add(std::make_unique<nn::Conv2d>(1, 4, 3, 1, 1));
  net.Add(std::make_unique<nn::ReLU>());
  net.Add(std::make_unique<nn::Flatten>());
  net.Add(std::make_unique<nn::Linear>(4 * 5 * 5, 3, false));
  EXPECT_EQ(nn::QuantizeLayers(net), 2);
  std::vector<std::string> names;
  for (auto& [n, p] : net.NamedParameters()) names.push_back(n + ":" + DTypeName(p->dtype));
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight:i8", "0.bias:f32", "0.weight_scale:f32", "0.input_scale:f32",
                                             "3.weight:i8", "3.weight_scale:f32", "3.input_scale:f32"}));
  EXPECT_THROW(nn::FlatParameters flat(net), ValueError);
  nn::AllocateParameters(net);
  net.SetTraining(false);
  Tensor y = net.Forward(Tensor::Zeros({2, 1, 5, 5}));
  EXPECT_EQ(y.shape(), (Shape{2, 3}));
  EXPECT_THROW(net.Backward(Tensor::Zeros({2, 3})), Error);
  EXPECT_THROW(net.Forward(Tensor::Zeros({2, 1, 5, 5}, DType::kF64)), ShapeError);
}

}  // namespace
}  // namespace tessera
