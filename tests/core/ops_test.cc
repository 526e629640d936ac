// Ops: backward of every op against central finite differences in f64; forward values in closed
// form; f32 against f64 (typed); argument errors that name the op and the shapes.
#include "core/ops/ops.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/random.h"
#include "core/threads.h"
#include "tests/core/gradcheck.h"

namespace tessera {
namespace {

using testing::CheckGradients;
using testing::GradCase;
using testing::RandomTensor;

constexpr DType F64 = DType::kF64;

TEST(Philox, MatchesPublishedKnownAnswers) {
  // Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
  Philox4x32 z = Philox(0, 0, 0);
  EXPECT_EQ(z.v[0], 0x6627e8d5u);
  EXPECT_EQ(z.v[1], 0xe169c58du);
  EXPECT_EQ(z.v[2], 0xbc57ac4cu);
  EXPECT_EQ(z.v[3], 0x9b00dbd8u);
  Philox4x32 f = Philox(~0ull, ~0ull, ~0ull);
  EXPECT_EQ(f.v[0], 0x408f276du);
  EXPECT_EQ(f.v[1], 0x41c83b0eu);
  EXPECT_EQ(f.v[2], 0xa20bc7c6u);
  EXPECT_EQ(f.v[3], 0x6d5451fdu);
}

TEST(Philox, GeneratorPositionRestores) {
  PhiloxGenerator a(42, 3);
  for (int i = 0; i < 7; ++i) a.NextU32();
  PhiloxGenerator b(42, 3);
  b.SetPosition(a.counter(), a.lane());
  for (int i = 0; i < 20; ++i) EXPECT_EQ(a.NextU32(), b.NextU32());
}

// c = alpha op(a) op(b) + beta c by the definition, in double: the reference for the GEMM
// (which the gradient checks below also lean on).
std::vector<double> NaiveGemm(const std::vector<double>& a, bool ta, const std::vector<double>& b, bool tb,
                              const std::vector<double>& c0, int64_t m, int64_t n, int64_t k, double alpha,
                              double beta, std::vector<double>* magnitude) {
  std::vector<double> c(static_cast<size_t>(m * n));
  magnitude->assign(c.size(), 0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0, mag = 0;
      for (int64_t p = 0; p < k; ++p) {
        double x = ta ? a[p * m + i] : a[i * k + p], y = tb ? b[j * k + p] : b[p * n + j];
        s += x * y;
        mag += std::fabs(x * y);
      }
      c[i * n + j] = alpha * s + beta * c0[i * n + j];
      (*magnitude)[i * n + j] = std::fabs(alpha) * mag + std::fabs(beta * c0[i * n + j]);
    }
  return c;
}

// One Gemm against the definition: |error| within a few ulps per term of the sum of |products|.
void ExpectGemmMatchesDefinition(DType dt, int64_t m, int64_t n, int64_t k, bool ta, bool tb, double alpha,
                                 double beta) {
  Tensor a = RandomTensor(ta ? Shape{k, m} : Shape{m, k}, dt, 11);
  Tensor b = RandomTensor(tb ? Shape{n, k} : Shape{k, n}, dt, 12);
  Tensor c = RandomTensor({m, n}, dt, 13);
  std::vector<double> mag;
  std::vector<double> want =
      NaiveGemm(a.ToVector(), ta, b.ToVector(), tb, c.ToVector(), m, n, k, alpha, beta, &mag);
  ops::Gemm(a, ta, b, tb, c, alpha, beta);
  std::vector<double> got = c.ToVector();
  const double eps = dt == F64 ? 1e-15 : 1e-7;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_LE(std::fabs(got[i] - want[i]), 4 * static_cast<double>(k + 2) * eps * std::max(mag[i], 1e-30))
        << "element " << i << ": " << got[i] << " vs " << want[i];
}

TEST(OpsGemm, MatchesTheDefinitionForEveryTransposeSizeAndScaling) {
  // Tiny, odd, one-row, one-column, k = 1, and sizes past the kernels' blocking; on one thread
  // (f32 goes through oneDNN) and on two (OpenBLAS on blocks of rows or columns).
  const int64_t sizes[][3] = {{3, 5, 4},   {1, 7, 9},     {13, 1, 6},    {8, 8, 1},
                              {17, 33, 9}, {65, 129, 97}, {128, 64, 300}};
  const std::pair<double, double> scalings[] = {{1.0, 0.0}, {-0.5, 2.0}};
  const int threads_before = GetNumThreads();
  for (int threads : {1, 2}) {
    SetNumThreads(threads);
    for (DType dt : {DType::kF32, F64})
      for (const auto& sz : sizes)
        for (bool ta : {false, true})
          for (bool tb : {false, true})
            for (auto [alpha, beta] : scalings) {
              SCOPED_TRACE(::testing::Message() << threads << " thread(s), " << DTypeName(dt) << " m="
                                                << sz[0] << " n=" << sz[1] << " k=" << sz[2] << " ta=" << ta
                                                << " tb=" << tb << " alpha=" << alpha << " beta=" << beta);
              ExpectGemmMatchesDefinition(dt, sz[0], sz[1], sz[2], ta, tb, alpha, beta);
            }
  }
  SetNumThreads(threads_before);
}

TEST(OpsGrad, GemmAllTransposes) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      Tensor a = RandomTensor(ta ? Shape{4, 3} : Shape{3, 4}, F64, 1);
      Tensor b = RandomTensor(tb ? Shape{5, 4} : Shape{4, 5}, F64, 2);
      GradCase c;
      c.names = {"a", "b"};
      c.inputs = {a, b};
      c.forward = [&] { return ops::MatMul(a, b, ta, tb); };
      c.backward = [&](const Tensor& dy) {
        // dA = dy op(B)^T (transposed back if A was), dB likewise.
        Tensor da = ta ? ops::MatMul(b, dy, tb, true) : ops::MatMul(dy, b, false, !tb);
        Tensor db = tb ? ops::MatMul(dy, a, true, ta) : ops::MatMul(a, dy, !ta, false);
        return std::vector<Tensor>{da, db};
      };
      CheckGradients(c);
    }
  }
}

TEST(OpsGrad, UnaryOps) {
  for (UnaryOp op : {UnaryOp::kRelu, UnaryOp::kGelu, UnaryOp::kNeg, UnaryOp::kExp, UnaryOp::kSquare}) {
    Tensor x = RandomTensor({3, 7}, F64, 3, -2, 2);
    if (op == UnaryOp::kRelu) {  // keep away from the kink at 0
      double* p = x.data<double>();
      for (int64_t i = 0; i < x.numel(); ++i) p[i] += p[i] >= 0 ? 0.1 : -0.1;
    }
    GradCase c;
    c.names = {"x"};
    c.inputs = {x};
    c.forward = [&] { return ops::Unary(op, x); };
    c.backward = [&](const Tensor& dy) { return std::vector<Tensor>{ops::UnaryBackward(op, x, dy)}; };
    SCOPED_TRACE(static_cast<int>(op));
    CheckGradients(c);
  }
}

TEST(OpsGrad, BinaryMulDiv) {
  Tensor a = RandomTensor({2, 5}, F64, 4);
  Tensor b = RandomTensor({2, 5}, F64, 5, 0.5, 2.0);
  GradCase c;
  c.names = {"a", "b"};
  c.inputs = {a, b};
  c.forward = [&] { return ops::Add(ops::Mul(a, b), ops::Div(a, b)); };
  c.backward = [&](const Tensor& dy) {
    // d/da = dy (b + 1/b); d/db = dy (a - a / b^2)
    std::vector<double> g = dy.ToVector(), av = a.ToVector(), bv = b.ToVector(), da(g.size()), db(g.size());
    for (size_t i = 0; i < g.size(); ++i) {
      da[i] = g[i] * (bv[i] + 1 / bv[i]);
      db[i] = g[i] * (av[i] - av[i] / (bv[i] * bv[i]));
    }
    return std::vector<Tensor>{Tensor::FromVector(da, a.shape(), F64),
                               Tensor::FromVector(db, b.shape(), F64)};
  };
  CheckGradients(c);
}

TEST(OpsGrad, BiasBroadcastsAndTheirAdjoints) {
  Tensor y = RandomTensor({3, 4}, F64, 6);
  Tensor b = RandomTensor({4}, F64, 7);
  GradCase c;
  c.names = {"y", "bias"};
  c.inputs = {y, b};
  c.forward = [&] {
    Tensor out = y.Clone();
    ops::AddBias(out, b);
    return out;
  };
  c.backward = [&](const Tensor& dy) {
    Tensor db = Tensor::Zeros({4}, F64);
    ops::SumRows(dy, db, true);
    return std::vector<Tensor>{dy.Clone(), db};
  };
  CheckGradients(c);

  Tensor y4 = RandomTensor({2, 3, 2, 2}, F64, 8);
  Tensor cb = RandomTensor({3}, F64, 9);
  GradCase c2;
  c2.names = {"y", "bias"};
  c2.inputs = {y4, cb};
  c2.forward = [&] {
    Tensor out = y4.Clone();
    ops::AddChannelBias(out, cb);
    return out;
  };
  c2.backward = [&](const Tensor& dy) {
    Tensor db = Tensor::Zeros({3}, F64);
    ops::SumChannels(dy, db, true);
    return std::vector<Tensor>{dy.Clone(), db};
  };
  CheckGradients(c2);
}

TEST(OpsGrad, SoftmaxAndLogSoftmax) {
  for (bool log : {false, true}) {
    Tensor x = RandomTensor({4, 6}, F64, 10, -3, 3);
    GradCase c;
    c.names = {"x"};
    c.inputs = {x};
    c.forward = [&] { return log ? ops::LogSoftmax(x) : ops::Softmax(x); };
    c.backward = [&](const Tensor& dy) {
      Tensor y = log ? ops::LogSoftmax(x) : ops::Softmax(x);
      return std::vector<Tensor>{ops::SoftmaxBackward(y, dy, log)};
    };
    CheckGradients(c);
  }
}

TEST(OpsGrad, LayerNorm) {
  Tensor x = RandomTensor({5, 8}, F64, 11, -2, 2);
  Tensor g = RandomTensor({8}, F64, 12, 0.5, 1.5);
  Tensor b = RandomTensor({8}, F64, 13);
  GradCase c;
  c.names = {"x", "gamma", "beta"};
  c.inputs = {x, g, b};
  c.forward = [&] { return ops::LayerNorm(x, g, b, 1e-5, nullptr, nullptr); };
  c.backward = [&](const Tensor& dy) {
    Tensor mean, rstd;
    ops::LayerNorm(x, g, b, 1e-5, &mean, &rstd);
    Tensor dg = Tensor::Zeros({8}, F64), db = Tensor::Zeros({8}, F64);
    Tensor dx = ops::LayerNormBackward(x, g, mean, rstd, dy, dg, db);
    return std::vector<Tensor>{dx, dg, db};
  };
  CheckGradients(c);
}

TEST(OpsGrad, EmbeddingWithRepeatedIds) {
  Tensor w = RandomTensor({6, 3}, F64, 14);
  Tensor ids = Tensor::FromVector({1, 4, 1, 0, 5, 1}, {2, 3}, DType::kI64);
  GradCase c;
  c.names = {"weight"};
  c.inputs = {w};
  c.forward = [&] { return ops::Embedding(w, ids); };
  c.backward = [&](const Tensor& dy) {
    Tensor dw = Tensor::Zeros({6, 3}, F64);
    ops::EmbeddingBackward(ids, dy, dw);
    return std::vector<Tensor>{dw};
  };
  CheckGradients(c);
}

TEST(OpsGrad, DropoutIsLinearWithAFixedMask) {
  Tensor x = RandomTensor({4, 50}, F64, 15);
  GradCase c;
  c.names = {"x"};
  c.inputs = {x};
  c.forward = [&] { return ops::Dropout(x, 0.3, 99, 12); };
  c.backward = [&](const Tensor& dy) { return std::vector<Tensor>{ops::Dropout(dy, 0.3, 99, 12)}; };
  CheckGradients(c);
}

struct ConvCase {
  Shape x, w;
  Conv2dParams p;
};

class ConvGrad : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvGrad, InputWeightAndBias) {
  const ConvCase& cc = GetParam();
  Tensor x = RandomTensor(cc.x, F64, 16);
  Tensor w = RandomTensor(cc.w, F64, 17);
  Tensor b = RandomTensor({cc.w[0]}, F64, 18);
  GradCase c;
  c.names = {"x", "w", "b"};
  c.inputs = {x, w, b};
  c.forward = [&] { return ops::Conv2d(x, w, b, cc.p); };
  c.backward = [&](const Tensor& dy) {
    Tensor dx, dw = Tensor::Zeros(w.shape(), F64), db = Tensor::Zeros(b.shape(), F64);
    ops::Conv2dBackward(x, w, dy, cc.p, &dx, dw, &db);
    return std::vector<Tensor>{dx, dw, db};
  };
  CheckGradients(c);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ConvGrad,
    ::testing::Values(ConvCase{{2, 3, 5, 5}, {4, 3, 3, 3}, {1, 1, 1, 1}},         // W2-like: 3x3, pad 1
                      ConvCase{{1, 2, 6, 5}, {3, 2, 3, 2}, {2, 1, 0, 1}},         // strides, rect kernel
                      ConvCase{{3, 2, 4, 4}, {2, 2, 1, 1}, {1, 1, 0, 0}},         // pointwise
                      ConvCase{{1, 1, 7, 7}, {2, 1, 5, 5}, {3, 3, 2, 2}},         // large pad and stride
                      ConvCase{{4, 1, 28, 28}, {32, 1, 3, 3}, {1, 1, 1, 1}},      // W2's first layer
                      ConvCase{{2, 32, 14, 14}, {64, 32, 3, 3}, {1, 1, 1, 1}}));  // W2's second

#if TESSERA_USE_ONEDNN
// f32 convolutions run through oneDNN; the im2col path (checked above against finite differences
// in f64) is the reference for them.
TEST_P(ConvGrad, OneDnnMatchesIm2colInF32) {
  const ConvCase& cc = GetParam();
  Tensor x = RandomTensor(cc.x, DType::kF32, 40), w = RandomTensor(cc.w, DType::kF32, 41);
  Tensor b = RandomTensor({cc.w[0]}, DType::kF32, 42);
  Shape ys = ops::Conv2dOutputShape(cc.x, cc.w, cc.p);
  Tensor dy = RandomTensor(ys, DType::kF32, 43);
  auto run = [&](cpu::CpuConvImpl impl) {
    cpu::SetCpuConvImpl(impl);
    Tensor y = ops::Conv2d(x, w, b, cc.p);
    Tensor dx;
    Tensor dw = RandomTensor(cc.w, DType::kF32, 44),
           db = RandomTensor({cc.w[0]}, DType::kF32, 45);  // accumulated into
    ops::Conv2dBackward(x, w, dy, cc.p, &dx, dw, &db);
    Tensor y_nobias = ops::Conv2d(x, w, Tensor(), cc.p);
    cpu::SetCpuConvImpl(cpu::CpuConvImpl::kAuto);
    return std::vector<Tensor>{y, dx, dw, db, y_nobias};
  };
  ASSERT_TRUE(cpu::CpuConvUsesOneDnn());
  std::vector<Tensor> ref = run(cpu::CpuConvImpl::kIm2col), got = run(cpu::CpuConvImpl::kAuto);
  const char* names[] = {"y", "dx", "dw", "db", "y without bias"};
  for (size_t i = 0; i < ref.size(); ++i) {
    std::vector<double> r = ref[i].ToVector(), g = got[i].ToVector();
    double scale = 1;
    for (double v : r) scale = std::max(scale, std::fabs(v));
    for (size_t j = 0; j < r.size(); ++j)
      ASSERT_NEAR(g[j], r[j], 1e-5 * scale) << names[i] << " element " << j;
  }
}
#endif

TEST(OpsGrad, MaxPool) {
  // Distinct values so the argmax is stable under +-eps.
  Tensor x = Tensor::Empty({2, 3, 5, 4}, F64);
  PhiloxGenerator gen(19);
  std::vector<double> v(x.numel());
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i) * 0.01;
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[gen.Below(i)]);
  x = Tensor::FromVector(v, x.shape(), F64);
  for (Pool2dParams p :
       {Pool2dParams{2, 2, 2, 2, 0, 0}, Pool2dParams{3, 3, 1, 1, 1, 1}, Pool2dParams{3, 2, 2, 1, 0, 0}}) {
    GradCase c;
    c.names = {"x"};
    c.inputs = {x};
    c.forward = [&] { return ops::MaxPool2d(x, p, nullptr); };
    c.backward = [&](const Tensor& dy) {
      Tensor idx;
      ops::MaxPool2d(x, p, &idx);
      return std::vector<Tensor>{ops::MaxPool2dBackward(dy, idx, x.shape())};
    };
    CheckGradients(c, 1e-6, 1e-6);
  }
}

TEST(OpsGrad, CrossEntropy) {
  Tensor logits = RandomTensor({5, 4}, F64, 20, -2, 2);
  Tensor labels = Tensor::FromVector({0, 3, 1, 1, 2}, {5}, DType::kI32);
  GradCase c;
  c.names = {"logits"};
  c.inputs = {logits};
  c.forward = [&] { return ops::CrossEntropy(logits, labels, nullptr).Reshape({1}); };
  c.backward = [&](const Tensor& dy) {
    Tensor probs;
    ops::CrossEntropy(logits, labels, &probs);
    return std::vector<Tensor>{ops::CrossEntropyBackward(probs, labels, dy.Item())};
  };
  CheckGradients(c);
}

TEST(OpsForward, MaxPoolTiesTakeTheFirstMaximumAndNaNPropagates) {
  const double nan = std::nan("");
  // Two 2x2 windows side by side, then the same with a 3x3 window (the general path).
  Tensor x = Tensor::FromVector({1, 5, 2, 2, 5, 3, 2, -1}, {1, 1, 2, 4}, F64);
  Tensor idx;
  EXPECT_EQ(ops::MaxPool2d(x, {2, 2, 2, 2, 0, 0}, &idx).ToVector(), (std::vector<double>{5, 2}));
  EXPECT_EQ(idx.ToVector(), (std::vector<double>{1, 2}));
  Tensor wide = Tensor::FromVector({1, 5, 2, 5, 3, 2, 0, 0, 0}, {1, 1, 3, 3}, F64);
  EXPECT_EQ(ops::MaxPool2d(wide, {3, 3, 1, 1, 0, 0}, &idx).ToVector(), (std::vector<double>{5}));
  EXPECT_EQ(idx.ToVector(), (std::vector<double>{1}));
  for (Pool2dParams p : {Pool2dParams{2, 2, 2, 2, 0, 0}, Pool2dParams{2, 2, 1, 1, 0, 0}}) {
    Tensor n = Tensor::FromVector({1, nan, 2, nan}, {1, 1, 2, 2}, F64);
    Tensor y = ops::MaxPool2d(n, p, &idx);
    EXPECT_TRUE(std::isnan(y.ToVector()[0]));
    EXPECT_EQ(idx.ToVector()[0], 1);
  }
}

TEST(OpsForward, EmptyInnerDimensionGivesZerosEvenOverGarbage) {
  Tensor c = Tensor::Full({2, 3}, std::nan(""), F64);
  ops::Gemm(Tensor::Zeros({2, 0}, F64), false, Tensor::Zeros({0, 3}, F64), false, c, 1.0, 0.0);
  EXPECT_EQ(c.ToVector(), std::vector<double>(6, 0.0));
}

TEST(OpsForward, CrossEntropyMatchesClosedForm) {
  Tensor logits = Tensor::FromVector({0, 0, 0, 1, 2, 3}, {2, 3}, F64);
  Tensor labels = Tensor::FromVector({1, 2}, {2}, DType::kI32);
  double l0 = std::log(3.0);
  double l1 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 3.0;
  EXPECT_NEAR(ops::CrossEntropy(logits, labels, nullptr).Item(), (l0 + l1) / 2, 1e-12);
}

TEST(OpsForward, ReductionsInClosedForm) {
  for (int64_t n : {1, 7, 4096, 4097, 100003}) {
    std::vector<double> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(i + 1);
    Tensor t = Tensor::FromVector(v, {n}, F64);
    double sum = static_cast<double>(n) * (n + 1) / 2;
    EXPECT_DOUBLE_EQ(ops::Sum(t).Item(), sum) << n;
    EXPECT_DOUBLE_EQ(ops::Mean(t).Item(), sum / n) << n;
    EXPECT_DOUBLE_EQ(ops::Max(t).Item(), static_cast<double>(n)) << n;
    EXPECT_DOUBLE_EQ(ops::SumSquares(t), static_cast<double>(n) * (n + 1) * (2 * n + 1) / 6) << n;
  }
  EXPECT_EQ(ops::Sum(Tensor::Zeros({0}, F64)).Item(), 0.0);
  EXPECT_THROW(ops::Max(Tensor::Zeros({0}, F64)), ShapeError);
}

TEST(OpsForward, DropoutKeepsAboutOneMinusPAndScales) {
  Tensor x = Tensor::Full({100000}, 1.0, DType::kF32);
  Tensor y = ops::Dropout(x, 0.25, 7, 0);
  std::vector<double> v = y.ToVector();
  int64_t kept = 0;
  for (double e : v) {
    if (e != 0) {
      ++kept;
      EXPECT_FLOAT_EQ(e, 1.0 / 0.75);
    }
  }
  EXPECT_NEAR(static_cast<double>(kept) / v.size(), 0.75, 0.01);
  // Element i depends only on (seed, offset + i): a shifted window sees the same mask.
  Tensor y2 = ops::Dropout(x.View(0, {1000}), 0.25, 7, 500);
  std::vector<double> w = y2.ToVector();
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(w[i], v[500 + i]);
}

TEST(OpsDeterminism, ReductionsAndRowKernelsDoNotDependOnThreadCount) {
  Tensor x = RandomTensor({512, 300}, DType::kF32, 21);
  Tensor img = RandomTensor({8, 3, 20, 20}, DType::kF32, 23);
  Tensor idx;
  auto run = [&] {
    Tensor rows = Tensor::Zeros({300}, DType::kF32);
    ops::SumRows(x, rows, false);
    Tensor chans = Tensor::Zeros({3}, DType::kF32);
    ops::SumChannels(img, chans, false);
    Tensor pooled = ops::MaxPool2d(img, {2, 2, 2, 2, 0, 0}, &idx);
    return std::vector<std::vector<double>>{ops::Sum(x).ToVector(),
                                            rows.ToVector(),
                                            {ops::SumSquares(x)},
                                            chans.ToVector(),
                                            ops::MaxPool2dBackward(pooled, idx, img.shape()).ToVector(),
                                            ops::Softmax(x).ToVector()};
  };
  SetNumThreads(1);
  auto one = run();
  SetNumThreads(2);
  auto two = run();
  SetNumThreads(1);
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << "result " << i;
}

// ---- typed: f32 kernels agree with f64 kernels ----
template <typename T>
class OpsTyped : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(OpsTyped, FloatTypes);

double Tolerance(DType t) { return t == DType::kF32 ? 2e-5 : 1e-12; }

void ExpectClose(const Tensor& got, const Tensor& ref, double tol, const char* what) {
  std::vector<double> g = got.ToVector(), r = ref.ToVector();
  ASSERT_EQ(g.size(), r.size()) << what;
  double scale = 1e-30;
  for (double v : r) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_LE(std::fabs(g[i] - r[i]), tol * std::max(1.0, scale)) << what << " element " << i;
}

// f32 against the same computation in f64 (an f64 instance would compare f64 with itself; f64 is
// checked against naive references and finite differences instead).
TEST(OpsF32, ForwardMatchesDoublePrecision) {
  const DType dt = DType::kF32;
  const double tol = Tolerance(dt);
  Tensor a64 = RandomTensor({9, 13}, F64, 30), b64 = RandomTensor({13, 7}, F64, 31);
  ExpectClose(ops::MatMul(a64.Cast(dt), b64.Cast(dt)), ops::MatMul(a64, b64), tol, "matmul");
  ExpectClose(ops::Gelu(a64.Cast(dt)), ops::Gelu(a64), tol, "gelu");
  ExpectClose(ops::LogSoftmax(a64.Cast(dt)), ops::LogSoftmax(a64), tol, "log_softmax");
  Tensor g = RandomTensor({13}, F64, 32), be = RandomTensor({13}, F64, 33);
  ExpectClose(ops::LayerNorm(a64.Cast(dt), g.Cast(dt), be.Cast(dt), 1e-5, nullptr, nullptr),
              ops::LayerNorm(a64, g, be, 1e-5, nullptr, nullptr), 10 * tol, "layernorm");
  Tensor x = RandomTensor({2, 3, 9, 9}, F64, 34), w = RandomTensor({5, 3, 3, 3}, F64, 35),
         b = RandomTensor({5}, F64, 36);
  ExpectClose(ops::Conv2d(x.Cast(dt), w.Cast(dt), b.Cast(dt), {1, 1, 1, 1}),
              ops::Conv2d(x, w, b, {1, 1, 1, 1}), tol, "conv2d");
  ExpectClose(ops::MaxPool2d(x.Cast(dt), {2, 2, 2, 2, 0, 0}, nullptr),
              ops::MaxPool2d(x, {2, 2, 2, 2, 0, 0}, nullptr), tol, "maxpool");
}

// ---- errors ----
template <typename Fn>
std::string ErrorOf(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(OpsErrors, ShapeMismatchesNameTheOpAndBothShapes) {
  Tensor a = Tensor::Zeros({128, 784}), b = Tensor::Zeros({512, 785});
  std::string msg = ErrorOf([&] { ops::MatMul(a, b, false, true); });
  EXPECT_NE(msg.find("Gemm"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[128, 784]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[512, 785]"), std::string::npos) << msg;

  msg = ErrorOf([&] { ops::Add(Tensor::Zeros({2, 3}), Tensor::Zeros({3, 2})); });
  EXPECT_NE(msg.find("[2, 3]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[3, 2]"), std::string::npos) << msg;

  msg = ErrorOf([&] { ops::Conv2d(Tensor::Zeros({1, 3, 8, 8}), Tensor::Zeros({4, 2, 3, 3}), Tensor(), {}); });
  EXPECT_NE(msg.find("Conv2d"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[1, 3, 8, 8]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[4, 2, 3, 3]"), std::string::npos) << msg;

  msg = ErrorOf([&] { ops::Add(Tensor::Zeros({2}), Tensor::Zeros({2}, F64)); });
  EXPECT_NE(msg.find("f32"), std::string::npos) << msg;
  EXPECT_NE(msg.find("f64"), std::string::npos) << msg;

  msg = ErrorOf([&] {
    ops::CrossEntropy(Tensor::Zeros({2, 3}), Tensor::FromVector({1, 3}, {2}, DType::kI32), nullptr);
  });
  EXPECT_NE(msg.find("label 3 in row 1"), std::string::npos) << msg;

  msg = ErrorOf([&] {
    ops::CrossEntropyBackward(Tensor::Zeros({2, 3}), Tensor::FromVector({-1, 0}, {2}, DType::kI32));
  });
  EXPECT_NE(msg.find("CrossEntropyBackward: label -1 in row 0"), std::string::npos) << msg;

  msg = ErrorOf([&] {
    Tensor x = Tensor::Zeros({4, 3}), g = Tensor::Zeros({3}), dg = Tensor::Zeros({3}),
           db = Tensor::Zeros({3});
    ops::LayerNormBackward(x, g, Tensor::Zeros({2}), Tensor::Zeros({4}), x, dg, db);
  });
  EXPECT_NE(msg.find("one value per row (4)"), std::string::npos) << msg;

  msg = ErrorOf([&] { ops::Embedding(Tensor::Zeros({4, 2}), Tensor::FromVector({0, 9}, {2}, DType::kI32)); });
  EXPECT_NE(msg.find("id 9 at position 1"), std::string::npos) << msg;
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

// The f32 GELU computes tanh from arithmetic (it vectorises); against f64 std::tanh it must stay
// within float precision everywhere: the tails, zero, tiny and huge inputs, and its derivative.
TEST(OpsF32, GeluAndItsGradientMatchDoubleToFloatPrecision) {
  std::vector<double> xs;
  for (int i = -4000; i <= 4000; ++i) xs.push_back(i * 0.005);  // [-20, 20]
  for (double v : {0.0, 1e-30, -1e-30, 1e-7, -1e-7, 60.0, -60.0, 1e6, -1e6}) xs.push_back(v);
  const Shape s{static_cast<int64_t>(xs.size())};
  Tensor x64 = Tensor::FromVector(xs, s, DType::kF64);
  Tensor x32 = x64.Cast(DType::kF32);
  Tensor dy = Tensor::Full(s, 1.0, DType::kF64);
  std::vector<double> y64 = ops::Gelu(x32.Cast(DType::kF64)).ToVector(), y32 = ops::Gelu(x32).ToVector();
  std::vector<double> g64 = ops::UnaryBackward(UnaryOp::kGelu, x32.Cast(DType::kF64), dy).ToVector();
  std::vector<double> g32 = ops::UnaryBackward(UnaryOp::kGelu, x32, dy.Cast(DType::kF32)).ToVector();
  const std::vector<double> in = x32.ToVector();
  for (size_t i = 0; i < xs.size(); ++i) {
    ASSERT_NEAR(y32[i], y64[i], 2e-7 * std::max(1.0, std::fabs(y64[i])) + 1e-7 * std::fabs(in[i]))
        << "gelu(" << in[i] << ")";
    ASSERT_NEAR(g32[i], g64[i], 4e-7 * std::max(1.0, std::fabs(g64[i]))) << "gelu'(" << in[i] << ")";
  }
}

}  // namespace
}  // namespace tessera
