// The transformer: the fused causal attention op against a plain reference and finite
// differences, its causality and stability, every GPT layer's backward in f64, the tied head's
// shared gradient, and the GPT model's shapes, names and errors.
#include "core/nn/transformer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/models.h"
#include "core/ops/ops.h"
#include "core/threads.h"
#include "tests/core/gradcheck.h"

namespace tessera {
namespace {

using testing::CheckGradients;
using testing::CheckModuleGradients;
using testing::GradCase;
using testing::RandomTensor;
constexpr DType F64 = DType::kF64;

// Attention written the obvious way, one (example, head, query) at a time, in long double.
Tensor ReferenceAttention(const Tensor& qkv, int64_t heads) {
  const int64_t b = qkv.dim(0), t = qkv.dim(1), c = qkv.dim(2) / 3, dh = c / heads;
  std::vector<double> x = qkv.ToVector(), y(static_cast<size_t>(b * t * c));
  auto at = [&](int64_t bi, int64_t ti, int64_t col) {
    return x[static_cast<size_t>((bi * t + ti) * 3 * c + col)];
  };
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < t; ++i) {
        std::vector<long double> s(static_cast<size_t>(i + 1));
        long double m = -INFINITY, z = 0;
        for (int64_t j = 0; j <= i; ++j) {
          long double dot = 0;
          for (int64_t d = 0; d < dh; ++d)
            dot += static_cast<long double>(at(bi, i, h * dh + d)) * at(bi, j, c + h * dh + d);
          s[j] = dot / std::sqrt(static_cast<long double>(dh));
          m = std::max(m, s[j]);
        }
        for (auto& v : s) z += (v = std::exp(v - m));
        for (int64_t d = 0; d < dh; ++d) {
          long double acc = 0;
          for (int64_t j = 0; j <= i; ++j) acc += s[j] / z * at(bi, j, 2 * c + h * dh + d);
          y[static_cast<size_t>((bi * t + i) * c + h * dh + d)] = static_cast<double>(acc);
        }
      }
  return Tensor::FromVector(y, {b, t, c}, F64);
}

void ExpectNear(const Tensor& a, const Tensor& b, double tol, const char* what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  std::vector<double> x = a.ToVector(), y = b.ToVector();
  for (size_t i = 0; i < x.size(); ++i)
    ASSERT_NEAR(x[i], y[i], tol * std::max(1.0, std::fabs(y[i]))) << what << " element " << i;
}

TEST(CausalAttention, MatchesTheReference) {
  for (auto [b, t, c, heads] :
       std::vector<std::array<int64_t, 4>>{{1, 1, 4, 1}, {2, 5, 6, 3}, {3, 17, 8, 2}}) {
    Tensor qkv = RandomTensor({b, t, 3 * c}, F64, 100 + t, -2, 2);
    Tensor lse;
    Tensor y = ops::CausalAttention(qkv, heads, &lse);
    ExpectNear(y, ReferenceAttention(qkv, heads), 1e-12, "f64");
    EXPECT_EQ(lse.shape(), (Shape{b, heads, t}));
    ExpectNear(ops::CausalAttention(qkv.Cast(DType::kF32), heads, nullptr), y, 2e-5, "f32");
  }
}

TEST(CausalAttention, AFutureTokenChangesNoEarlierOutput) {
  Tensor qkv = RandomTensor({1, 6, 12}, F64, 7);
  Tensor y = ops::CausalAttention(qkv, 2, nullptr);
  std::vector<double> v = qkv.ToVector();
  for (size_t i = 5 * 12; i < v.size(); ++i) v[i] += 3.0;  // the last position's q, k and v
  Tensor y2 = ops::CausalAttention(Tensor::FromVector(v, {1, 6, 12}, F64), 2, nullptr);
  std::vector<double> a = y.ToVector(), b = y2.ToVector();
  for (size_t i = 0; i < 5 * 4; ++i) EXPECT_EQ(a[i], b[i]) << "position " << i / 4;
  EXPECT_NE(a[5 * 4], b[5 * 4]);
}

TEST(CausalAttention, HugeScoresStayFinite) {
  // Scores of order 1e4: exp() of them overflows unless the softmax subtracts each row's maximum.
  Tensor qkv = RandomTensor({2, 9, 24}, DType::kF32, 8, -100, 100);
  Tensor lse;
  Tensor y = ops::CausalAttention(qkv, 4, &lse);
  for (double v : y.ToVector()) ASSERT_TRUE(std::isfinite(v));
  for (double v : lse.ToVector()) ASSERT_TRUE(std::isfinite(v));
  ExpectNear(y, ReferenceAttention(qkv.Cast(F64), 4), 1e-3, "huge scores");
  Tensor dqkv = ops::CausalAttentionBackward(qkv, lse, RandomTensor({2, 9, 8}, DType::kF32, 9), 4);
  for (double v : dqkv.ToVector()) ASSERT_TRUE(std::isfinite(v));
}

TEST(CausalAttention, BackwardAgainstFiniteDifferences) {
  Tensor qkv = RandomTensor({2, 7, 18}, F64, 10, -1.5, 1.5);
  GradCase c;
  c.names = {"qkv"};
  c.inputs = {qkv};
  c.forward = [&] { return ops::CausalAttention(qkv, 3, nullptr); };
  c.backward = [&](const Tensor& dy) {
    Tensor lse;
    ops::CausalAttention(qkv, 3, &lse);
    return std::vector<Tensor>{ops::CausalAttentionBackward(qkv, lse, dy, 3)};
  };
  CheckGradients(c, 1e-6, 1e-6, 1000);
}

TEST(CausalAttention, SameBitsOnOneAndTwoThreads) {
  Tensor qkv = RandomTensor({3, 11, 24}, DType::kF32, 11);
  Tensor dy = RandomTensor({3, 11, 8}, DType::kF32, 12);
  auto run = [&](int threads) {
    SetNumThreads(threads);
    Tensor lse;
    Tensor y = ops::CausalAttention(qkv, 2, &lse);
    std::vector<double> out = y.ToVector(), d = ops::CausalAttentionBackward(qkv, lse, dy, 2).ToVector();
    out.insert(out.end(), d.begin(), d.end());
    return out;
  };
  std::vector<double> one = run(1), two = run(2);
  SetNumThreads(1);
  EXPECT_EQ(one, two);
}

TEST(CausalAttention, RefusesWhatDoesNotFit) {
  auto message = [](auto fn) {
    try {
      fn();
    } catch (const ShapeError& e) {
      return std::string(e.what());
    }
    return std::string("no ShapeError");
  };
  EXPECT_NE(message([] {
              ops::CausalAttention(Tensor::Zeros({2, 3, 10}), 2, nullptr);
            }).find("divisible by the 2 heads"),
            std::string::npos);
  EXPECT_NE(message([] {
              ops::CausalAttention(Tensor::Zeros({3, 12}), 2, nullptr);
            }).find("3-D"),
            std::string::npos);
  Tensor qkv = Tensor::Zeros({1, 4, 12}), lse;
  ops::CausalAttention(qkv, 2, &lse);
  EXPECT_NE(message([&] {
              ops::CausalAttentionBackward(qkv, lse, Tensor::Zeros({1, 4, 3}), 2);
            }).find("dy"),
            std::string::npos);
  EXPECT_NE(message([&] {
              ops::CausalAttentionBackward(qkv, Tensor::Zeros({1, 4, 2}), Tensor::Zeros({1, 4, 4}), 2);
            }).find("lse"),
            std::string::npos);
}

// A GPT small enough for finite differences: 2 layers, 2 heads, width 8.
models::GptConfig Tiny(int64_t context = 4, int64_t vocab = 10) {
  models::GptConfig c;
  c.layers = 2;
  c.heads = 2;
  c.width = 8;
  c.context = context;
  c.vocab = vocab;
  return c;
}

// ---- layers ----
TEST(TransformerGrad, CausalSelfAttention) {
  nn::CausalSelfAttention m(6, 2);
  nn::FlatParameters p(m, Device::CPU(), F64, 1);
  CheckModuleGradients(m, p, RandomTensor({2, 5, 6}, F64, 2), true, 1e-6, 1e-6);
}

TEST(TransformerGrad, Mlp) {
  nn::TransformerMlp m(4);
  nn::FlatParameters p(m, Device::CPU(), F64, 3);
  CheckModuleGradients(m, p, RandomTensor({2, 3, 4}, F64, 4), true, 1e-6, 1e-6);
}

TEST(TransformerGrad, Block) {
  nn::TransformerBlock m(8, 2);
  nn::FlatParameters p(m, Device::CPU(), F64, 5);
  // LayerNorm starts at gamma 1, beta 0; perturb every parameter so each gradient path is exercised.
  p.values().CopyFrom(ops::Add(p.values(), RandomTensor({p.numel()}, F64, 6, -0.3, 0.3)));
  CheckModuleGradients(m, p, RandomTensor({2, 4, 8}, F64, 7), true, 1e-6, 1e-6);
}

TEST(TransformerGrad, WholeGptWithTiedEmbeddings) {
  auto net = models::BuildGpt(Tiny(/*context=*/6, /*vocab=*/11));
  net->set_needs_input_grad(false);
  nn::FlatParameters p(*net, Device::CPU(), F64, 8);
  p.values().CopyFrom(ops::Add(p.values(), RandomTensor({p.numel()}, F64, 9, -0.2, 0.2)));
  Tensor ids = Tensor::FromVector({1, 4, 1, 0, 10, 3, 7, 7, 2, 9}, {2, 5}, DType::kI32);
  // wte's gradient is the sum of the head's and the embedding's; the check covers both.
  CheckModuleGradients(*net, p, ids, /*check_input=*/false, 1e-6, 1e-6);
}

TEST(TransformerGrad, DropoutIsLinearWithAFixedPosition) {
  nn::TransformerBlock m(4, 2, 0.3);
  nn::FlatParameters p(m, Device::CPU(), F64, 10);
  CheckModuleGradients(m, p, RandomTensor({3, 4, 4}, F64, 11), true, 1e-6, 1e-6,
                       [&] { m.SetBatchPosition(5); });
}

// ---- the model ----
TEST(Gpt, NamesShapesAndCountMatchGpt2) {
  auto net = models::BuildGpt(Tiny());
  std::map<std::string, Shape> shapes;
  for (auto& [name, param] : net->NamedParameters()) shapes[name] = param->shape;
  EXPECT_EQ(shapes["embed.wte"], (Shape{10, 8}));
  EXPECT_EQ(shapes["embed.wpe"], (Shape{4, 8}));
  EXPECT_EQ(shapes["h1.attn.c_attn.weight"], (Shape{24, 8}));
  EXPECT_EQ(shapes["h1.mlp.c_fc.weight"], (Shape{32, 8}));
  EXPECT_EQ(shapes["h0.mlp.c_proj.bias"], (Shape{8}));
  EXPECT_EQ(shapes["ln_f.weight"], (Shape{8}));
  EXPECT_EQ(shapes.size(), 2u + 2 * 12 + 2);  // no separate output weight: the head is tied
  // nanoGPT's count for the same sizes: 12 L C^2 + 13 L C + (V + T) C + 2 C.
  const int64_t L = 2, C = 8, V = 10, T = 4;
  EXPECT_EQ(net->NumParameters(), 12 * L * C * C + 13 * L * C + (V + T) * C + 2 * C);
  models::GptConfig g1;
  EXPECT_EQ(models::BuildGpt(g1)->NumParameters(), 124475904);  // GPT-2 124M with vocab 50304
}

TEST(Gpt, InitialisesAsGpt2) {
  models::GptConfig c = Tiny();
  c.width = 64;
  c.layers = 8;
  auto net = models::BuildGpt(c);
  nn::FlatParameters p(*net, Device::CPU(), DType::kF32, 3);
  auto stddev = [&](const std::string& name) {
    std::vector<double> v = p.Find(name).param->value.ToVector();
    double s = 0;
    for (double x : v) s += x * x;
    return std::sqrt(s / static_cast<double>(v.size()));
  };
  EXPECT_NEAR(stddev("h3.attn.c_attn.weight"), 0.02, 0.001);
  EXPECT_NEAR(stddev("h3.attn.c_proj.weight"), 0.02 / 4, 0.0005);  // 0.02 / sqrt(2 * 8)
  EXPECT_NEAR(stddev("h3.mlp.c_proj.weight"), 0.02 / 4, 0.0005);
  EXPECT_EQ(stddev("h3.mlp.c_fc.bias"), 0.0);
  EXPECT_EQ(p.Find("h3.ln_1.weight").param->value.ToVector(), std::vector<double>(64, 1.0));
}

TEST(Gpt, LogitsForEachPositionAndTheGradientAnnouncedOnce) {
  auto net = models::BuildGpt(Tiny());
  nn::FlatParameters p(*net, Device::CPU(), DType::kF32, 4);
  std::map<std::string, int> ready;
  std::map<const nn::Parameter*, std::string> names;
  for (auto& e : p.entries()) names[e.param] = e.name;
  std::vector<std::string> order;
  p.SetGradReadyHook([&](nn::Parameter& param) { order.push_back(names[&param]); });
  Tensor ids = Tensor::FromVector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::kI64);
  Tensor logits = net->Forward(ids);
  EXPECT_EQ(logits.shape(), (Shape{2, 3, 10}));
  net->Backward(Tensor::Full({2, 3, 10}, 0.1));
  for (auto& n : order) ready[n]++;
  EXPECT_EQ(ready.size(), p.entries().size());
  for (auto& [n, count] : ready) EXPECT_EQ(count, 1) << n;
  EXPECT_EQ(order.front(), "ln_f.weight");  // backward order: the last layer's gradients are final first
  EXPECT_EQ(order.back(), "embed.wpe");
}

TEST(Gpt, RefusesSizesThatDoNotFit) {
  models::GptConfig c = Tiny();
  c.heads = 3;
  EXPECT_THROW(models::BuildGpt(c), ConfigError);
  c = Tiny();
  c.vocab = 0;
  EXPECT_THROW(models::BuildGpt(c), ConfigError);
  c = Tiny();
  c.layers = 1000000000;  // a model.pbtxt of a few bytes must not make us build a billion blocks
  EXPECT_THROW(models::BuildGpt(c), ConfigError);
  auto net = models::BuildGpt(Tiny());
  nn::FlatParameters p(*net);
  try {
    net->Forward(Tensor::Zeros({1, 5}, DType::kI32));
    ADD_FAILURE() << "a sequence longer than the context was accepted";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("context of 4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(net->Forward(Tensor::FromVector({10}, {1, 1}, DType::kI32)),
               DataError);  // id outside the vocabulary
}

}  // namespace
}  // namespace tessera
