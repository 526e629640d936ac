// CUDA kernels against the CPU oracle: every entry of the kernel table runs through the op
// front-end on CPU tensors and on the same data copied to cuda:0, and the results are compared
// with per-dtype tolerances (relative to the largest expected magnitude). Typed over f32 and f64
// where the op supports both. Without a GPU every test skips, saying why.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/allocator.h"
#include "core/ops/kernels.h"
#include "core/ops/ops.h"
#include "core/random.h"
#include "core/tensor.h"
#include "tessera/config.h"

#if TESSERA_USE_CUDA
#include "core/ops/cuda/conv.h"
#endif

// Absent hardware is the only reason to skip. KernelsFor() registers the CUDA backend, which
// installs the device allocators that Tensor::Empty on cuda:0 needs.
#define REQUIRE_GPU()                                                         \
  do {                                                                        \
    std::string why_;                                                         \
    if (!::tessera::CudaAvailable(&why_)) GTEST_SKIP() << "no GPU: " << why_; \
    ::tessera::KernelsFor(::tessera::Device::CUDA(0));                        \
  } while (0)

namespace tessera {
namespace {

const Device kGpu = Device::CUDA(0);

// Inputs are random; the seed can be changed with TESSERA_TEST_SEED and is printed on failure.
uint64_t BaseSeed() {
  static const uint64_t seed = [] {
    const char* s = std::getenv("TESSERA_TEST_SEED");
    return s ? std::strtoull(s, nullptr, 10) : uint64_t{20261126};
  }();
  return seed;
}

Tensor Random(const Shape& shape, DType dtype, uint64_t id, double lo = -1.0, double hi = 1.0) {
  PhiloxGenerator gen(BaseSeed(), id);
  std::vector<double> v(static_cast<size_t>(NumElements(shape)));
  for (double& x : v) x = gen.Uniform(lo, hi);
  return Tensor::FromVector(v, shape, dtype);
}

// Integers uniform in [0, n) as i32 or i64.
Tensor RandomIds(const Shape& shape, int64_t n, DType dtype, uint64_t id) {
  PhiloxGenerator gen(BaseSeed(), id);
  std::vector<double> v(static_cast<size_t>(NumElements(shape)));
  for (double& x : v) x = static_cast<double>(gen.Below(static_cast<uint64_t>(n)));
  return Tensor::FromVector(v, shape, dtype);
}

Tensor Gpu(const Tensor& t) { return t.To(kGpu); }

// max |want - got| / max |want| <= tol (absolute when want is all zero); NaN must meet NaN and
// infinities must match exactly. tol = 0 asks for identical values.
::testing::AssertionResult Near(const Tensor& want, const Tensor& got, double tol) {
  if (want.shape() != got.shape() || want.dtype() != got.dtype())
    return ::testing::AssertionFailure()
           << "expected " << want.Describe() << ", got " << got.Describe();
  if (got.device() != kGpu && got.device() != Device::CPU())
    return ::testing::AssertionFailure() << "unexpected device " << got.device().str();
  std::vector<double> a = want.ToVector(), b = got.ToVector();
  double scale = 0;
  for (double v : a)
    if (std::isfinite(v)) scale = std::max(scale, std::fabs(v));
  if (scale == 0) scale = 1;
  double worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      if (std::isnan(a[i]) != std::isnan(b[i]))
        return ::testing::AssertionFailure() << "element " << i << ": expected " << a[i] << ", got "
                                             << b[i] << " (seed " << BaseSeed() << ")";
      continue;
    }
    if (a[i] == b[i]) continue;
    double err = std::isinf(a[i]) || std::isinf(b[i]) ? std::numeric_limits<double>::infinity()
                                                      : std::fabs(a[i] - b[i]) / scale;
    if (err > worst) {
      worst = err;
      worst_i = i;
    }
  }
  if (worst > tol)
    return ::testing::AssertionFailure()
           << "element " << worst_i << " of " << want.Describe() << ": expected " << a[worst_i]
           << ", got " << b[worst_i] << "; error " << worst << " relative to max |expected| "
           << scale << " exceeds " << tol << " (seed " << BaseSeed() << ")";
  return ::testing::AssertionSuccess();
}

// Selects the conv implementation for a scope (cuDNN or im2col); a no-op in CPU-only builds,
// whose tests skip anyway.
class ConvBackend {
 public:
  explicit ConvBackend(bool cudnn) {
#if TESSERA_USE_CUDA
    cuda::SetConvUseCudnn(cudnn);
#endif
  }
  ~ConvBackend() {
#if TESSERA_USE_CUDA
    cuda::SetConvUseCudnn(true);
#endif
  }
};

// Tolerances, relative to the largest expected magnitude: elementwise math (device exp/tanh are
// within 2 ulp), row reductions and normalisation (other summation orders), products (GEMM, conv).
template <typename T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double kElementwise = 1e-5, kRows = 5e-5, kProduct = 1e-4;
};
template <>
struct Tol<double> {
  static constexpr double kElementwise = 1e-13, kRows = 1e-11, kProduct = 1e-11;
};

template <typename T>
class GpuOps : public ::testing::Test {
 protected:
  static constexpr DType kType = DTypeOf<T>::value;
};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(GpuOps, FloatTypes);

constexpr DType kAllTypes[] = {DType::kF32, DType::kF64, DType::kBF16,
                               DType::kF16, DType::kI32, DType::kI64};
constexpr DType kFloatingTypes[] = {DType::kF32, DType::kF64, DType::kBF16, DType::kF16};

// ---- runtime and memory ----

TEST(GpuRuntime, ReportsDeviceAndSynchronizes) {
  REQUIRE_GPU();
  std::string why = "unset";
  EXPECT_TRUE(CudaAvailable(&why));
  EXPECT_TRUE(why.empty()) << why;
  EXPECT_GE(CudaDeviceCount(), 1);
  EXPECT_NO_THROW(ops::Synchronize(kGpu));
  EXPECT_THROW(
      KernelsFor(Device::CUDA(CudaDeviceCount())).synchronize(Device::CUDA(CudaDeviceCount())),
      DeviceError);
}

TEST(GpuMemory, CachingAllocatorReusesFreedBlocks) {
  REQUIRE_GPU();
  Allocator& a = GetAllocator(kGpu);
  a.EmptyCache();  // so the block freed below is the only one of its size in the cache
  const size_t bytes = (size_t(1) << 20) + 123;
  const AllocatorStats s0 = a.Stats();
  EXPECT_EQ(s0.bytes_cached, 0u);
  void* p = a.Allocate(bytes);
  ASSERT_NE(p, nullptr);
  const AllocatorStats s1 = a.Stats();
  EXPECT_EQ(s1.bytes_in_use, s0.bytes_in_use + AllocationBucket(bytes));
  a.Free(p, bytes);
  const AllocatorStats s2 = a.Stats();
  EXPECT_EQ(s2.bytes_in_use, s0.bytes_in_use);
  EXPECT_GE(s2.bytes_cached, AllocationBucket(bytes));
  void* q = a.Allocate(bytes);
  const AllocatorStats s3 = a.Stats();
  EXPECT_EQ(q, p);
  EXPECT_EQ(s3.cache_hits, s2.cache_hits + 1);
  EXPECT_EQ(s3.fresh_allocations, s2.fresh_allocations);
  a.Free(q, bytes);

  // Through tensors: the second tensor of the same size reuses the first one's block, and the
  // memory is real device memory (written and read back).
  uint64_t hits = a.Stats().cache_hits;
  { Tensor t = Tensor::Full({4099}, 2.5, DType::kF32, kGpu); }
  Tensor u = Tensor::Full({4099}, -1.25, DType::kF32, kGpu);
  EXPECT_GT(a.Stats().cache_hits, hits);
  EXPECT_TRUE(Near(Tensor::Full({4099}, -1.25), u, 0));

  a.EmptyCache();
  EXPECT_EQ(a.Stats().bytes_cached, 0u);
}

TEST(GpuMemory, FillEveryDtype) {
  REQUIRE_GPU();
  for (DType dt : kAllTypes) {
    for (double v : {0.0, -0.0, 1.5, -3.0, 1e5}) {
      for (int64_t n : {1, 1000, 70001}) {
        SCOPED_TRACE(std::string(DTypeName(dt)) + " value " + std::to_string(v) + " n " +
                     std::to_string(n));
        EXPECT_TRUE(Near(Tensor::Full({n}, v, dt), Tensor::Full({n}, v, dt, kGpu), 0));
      }
    }
  }
}

TEST(GpuMemory, CopyHostDeviceAndViews) {
  REQUIRE_GPU();
  for (int64_t n : {int64_t{1}, int64_t{17}, (int64_t{1} << 20) + 3}) {
    SCOPED_TRACE(n);
    Tensor x = Random({n}, DType::kF32, 1);
    Tensor g = Gpu(x);  // host -> device
    EXPECT_EQ(g.device(), kGpu);
    EXPECT_TRUE(Near(x, g.To(Device::CPU()), 0));  // device -> host
    Tensor c = g.Clone();                          // device -> device
    EXPECT_NE(c.raw_data(), g.raw_data());
    EXPECT_TRUE(Near(x, c, 0));
  }
  for (DType dt : {DType::kF64, DType::kI32, DType::kI64, DType::kBF16}) {
    Tensor x = Random({333}, dt, 2, -100, 100);
    EXPECT_TRUE(Near(x, Gpu(x), 0)) << DTypeName(dt);
  }
  // Views at an offset, both directions.
  Tensor big = Tensor::Zeros({100}, DType::kF32, kGpu);
  Tensor part = Random({50}, DType::kF32, 3);
  Tensor dst = big.View(13, {50});
  dst.CopyFrom(part);
  std::vector<double> want(100, 0.0), p = part.ToVector();
  for (int i = 0; i < 50; ++i) want[13 + i] = p[i];
  EXPECT_TRUE(Near(Tensor::FromVector(want, {100}), big, 0));
  Tensor host = Tensor::Empty({20});
  host.CopyFrom(big.View(20, {20}));
  EXPECT_TRUE(Near(part.View(7, {20}), host, 0));
}

TEST(GpuMemory, CastEveryPairMatchesCpu) {
  REQUIRE_GPU();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> special = {
      0.0,  -0.0,  1.0, -1.0, 0.1,   3.14159265358979, 1e-8,  6e-5, 65504, 65520,
      1e30, -1e30, inf, -inf, 1e-40, 1.0 / 3.0,        255.5, -2.5, 1e-3};
  special.push_back(std::numeric_limits<double>::quiet_NaN());
  Tensor rnd = Random({4097}, DType::kF64, 4, -50, 50);
  std::vector<double> values = special;
  for (double v : rnd.ToVector()) values.push_back(v);
  for (DType from : kFloatingTypes) {
    Tensor src = Tensor::FromVector(values, {static_cast<int64_t>(values.size())}, from);
    Tensor gsrc = Gpu(src);
    for (DType to : kFloatingTypes) {
      if (to == from) continue;
      SCOPED_TRACE(std::string(DTypeName(from)) + " -> " + DTypeName(to));
      EXPECT_TRUE(Near(src.Cast(to), gsrc.Cast(to), 0));
    }
  }
  // Integer dtypes with values they can hold.
  Tensor ints = Random({1001}, DType::kF64, 5, -1000, 1000);
  for (DType from : kAllTypes) {
    Tensor src = ints.Cast(from);
    Tensor gsrc = Gpu(src);
    for (DType to : kAllTypes) {
      if (to == from) continue;
      SCOPED_TRACE(std::string(DTypeName(from)) + " -> " + DTypeName(to) + " (integral range)");
      EXPECT_TRUE(Near(src.Cast(to), gsrc.Cast(to), 0));
    }
  }
}

TEST(GpuMemory, HalfPrecisionRoundTrips) {
  REQUIRE_GPU();
  Tensor x = Random({10007}, DType::kF32, 6, -100, 100);
  std::vector<double> xv = x.ToVector();
  Tensor gx = Gpu(x);
  for (DType half : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(half));
    Tensor rt = gx.Cast(half).Cast(DType::kF32);
    EXPECT_TRUE(Near(x.Cast(half).Cast(DType::kF32), rt, 0));
    // Round to nearest: relative error at most half an ulp (8 and 11 significant bits).
    const double bound = half == DType::kBF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    std::vector<double> r = rt.ToVector();
    for (size_t i = 0; i < xv.size(); ++i) {
      if (std::fabs(xv[i]) < 1e-3) continue;  // f16 subnormals have absolute, not relative, error
      ASSERT_LE(std::fabs(r[i] - xv[i]), bound * std::fabs(xv[i])) << "element " << i;
    }
  }
}

TEST(GpuOpsErrors, UnsupportedDtypesNameTheOp) {
  REQUIRE_GPU();
  Tensor h = Tensor::Zeros({4, 4}, DType::kBF16, kGpu);
  try {
    ops::Unary(UnaryOp::kRelu, h);
    ADD_FAILURE() << "Unary on bf16 did not throw";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("Unary"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
  Tensor c = Tensor::Zeros({4, 4}, DType::kBF16, kGpu);
  EXPECT_THROW(ops::Gemm(h, false, h, false, c), ShapeError);
  EXPECT_THROW(ops::Sum(h), ShapeError);
}

// ---- linear algebra and elementwise ----

TYPED_TEST(GpuOps, GemmAllTransposesAndScalings) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  struct Case {
    int64_t m, n, k;
  };
  uint64_t id = 100;
  for (Case s :
       {Case{1, 1, 1}, Case{7, 5, 3}, Case{64, 33, 17}, Case{128, 256, 96}, Case{3, 4, 0}}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        for (auto [alpha, beta] : {std::pair{1.0, 0.0}, std::pair{0.5, -2.0}}) {
          SCOPED_TRACE(::testing::Message()
                       << "m " << s.m << " n " << s.n << " k " << s.k << " ta " << ta << " tb "
                       << tb << " alpha " << alpha << " beta " << beta);
          Tensor a = Random(ta ? Shape{s.k, s.m} : Shape{s.m, s.k}, dt, ++id);
          Tensor b = Random(tb ? Shape{s.n, s.k} : Shape{s.k, s.n}, dt, ++id);
          Tensor c = Random({s.m, s.n}, dt, ++id);
          Tensor ga = Gpu(a), gb = Gpu(b), gc = Gpu(c);
          ops::Gemm(a, ta, b, tb, c, alpha, beta);
          ops::Gemm(ga, ta, gb, tb, gc, alpha, beta);
          EXPECT_TRUE(Near(c, gc, Tol<TypeParam>::kProduct));
        }
      }
    }
  }
}

TYPED_TEST(GpuOps, UnaryForwardAndBackward) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (int64_t n : {0, 1, 1001, 100003}) {
    Tensor x = Random({n}, dt, 200 + n, -3, 3);
    Tensor dy = Random({n}, dt, 300 + n);
    Tensor gx = Gpu(x), gdy = Gpu(dy);
    for (UnaryOp op :
         {UnaryOp::kRelu, UnaryOp::kGelu, UnaryOp::kNeg, UnaryOp::kExp, UnaryOp::kSquare}) {
      SCOPED_TRACE(::testing::Message() << "op " << static_cast<int>(op) << " n " << n);
      EXPECT_TRUE(Near(ops::Unary(op, x), ops::Unary(op, gx), Tol<TypeParam>::kElementwise));
      EXPECT_TRUE(Near(ops::UnaryBackward(op, x, dy), ops::UnaryBackward(op, gx, gdy),
                       Tol<TypeParam>::kElementwise));
    }
  }
  // In place (y aliases x).
  Tensor x = Random({999}, dt, 210, -3, 3);
  Tensor gx = Gpu(x);
  ops::UnaryInto(UnaryOp::kGelu, x, x);
  ops::UnaryInto(UnaryOp::kGelu, gx, gx);
  EXPECT_TRUE(Near(x, gx, Tol<TypeParam>::kElementwise));
}

TYPED_TEST(GpuOps, BinaryAndAxpby) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (int64_t n : {0, 1, 4099, 100001}) {
    Tensor a = Random({n}, dt, 400 + n);
    // Divisors away from zero: |b| in [0.5, 2] with a random sign.
    Tensor mag = Random({n}, dt, 500 + n, 0.5, 2.0), sign = Random({n}, dt, 600 + n);
    std::vector<double> bv = mag.ToVector(), sv = sign.ToVector();
    for (size_t i = 0; i < bv.size(); ++i) bv[i] *= sv[i] < 0 ? -1 : 1;
    Tensor b = Tensor::FromVector(bv, {n}, dt);
    Tensor ga = Gpu(a), gb = Gpu(b);
    for (BinaryOp op : {BinaryOp::kAdd, BinaryOp::kSub, BinaryOp::kMul, BinaryOp::kDiv}) {
      SCOPED_TRACE(::testing::Message() << "op " << static_cast<int>(op) << " n " << n);
      EXPECT_TRUE(
          Near(ops::Binary(op, a, b), ops::Binary(op, ga, gb), Tol<TypeParam>::kElementwise));
    }
    for (auto [alpha, beta] : {std::pair{2.0, 0.5}, std::pair{0.0, 3.0}, std::pair{1.5, 0.0}}) {
      SCOPED_TRACE(::testing::Message() << "axpby " << alpha << ", " << beta << " n " << n);
      Tensor y = b.Clone(), gy = gb.Clone();
      ops::Axpby(alpha, a, beta, y);
      ops::Axpby(alpha, ga, beta, gy);
      EXPECT_TRUE(Near(y, gy, Tol<TypeParam>::kElementwise));
    }
  }
}

TYPED_TEST(GpuOps, BiasBroadcasts) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (Shape s : {Shape{3, 5, 7}, Shape{1, 1}, Shape{1000, 33}}) {
    SCOPED_TRACE(ShapeString(s));
    Tensor y = Random(s, dt, 700), bias = Random({s.back()}, dt, 701);
    Tensor gy = Gpu(y);
    ops::AddBias(y, bias);
    ops::AddBias(gy, Gpu(bias));
    EXPECT_TRUE(Near(y, gy, Tol<TypeParam>::kElementwise));
  }
  for (Shape s : {Shape{4, 6, 5, 3}, Shape{2, 3, 1, 1}, Shape{5, 7}, Shape{16, 32, 28, 28}}) {
    SCOPED_TRACE(ShapeString(s));
    Tensor y = Random(s, dt, 702), bias = Random({s[1]}, dt, 703);
    Tensor gy = Gpu(y);
    ops::AddChannelBias(y, bias);
    ops::AddChannelBias(gy, Gpu(bias));
    EXPECT_TRUE(Near(y, gy, Tol<TypeParam>::kElementwise));
  }
}

TYPED_TEST(GpuOps, Dropout) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  Tensor x = Random({10007}, dt, 800);
  Tensor gx = Gpu(x);
  for (double p : {0.0, 0.3, 0.9}) {
    for (uint64_t offset : {uint64_t{0}, uint64_t{12345}}) {
      SCOPED_TRACE(::testing::Message() << "p " << p << " offset " << offset);
      // Same Philox mask and the same one multiplication: identical on both devices.
      EXPECT_TRUE(Near(ops::Dropout(x, p, 77, offset), ops::Dropout(gx, p, 77, offset), 0));
    }
  }
}

// ---- reductions ----

TYPED_TEST(GpuOps, SumRowsAndChannels) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (Shape s : {Shape{1000, 37}, Shape{5000, 3}, Shape{1, 1}, Shape{0, 4}, Shape{4, 5, 300}}) {
    for (bool acc : {false, true}) {
      SCOPED_TRACE(ShapeString(s) + (acc ? " accumulate" : ""));
      Tensor x = Random(s, dt, 900), out = Random({s.back()}, dt, 901);
      Tensor gout = Gpu(out);
      ops::SumRows(x, out, acc);
      ops::SumRows(Gpu(x), gout, acc);
      EXPECT_TRUE(Near(out, gout, Tol<TypeParam>::kRows));
    }
  }
  for (Shape s : {Shape{7, 5, 9, 11}, Shape{64, 3, 32, 32}, Shape{1, 1, 1, 1}, Shape{3, 4},
                  Shape{0, 6, 2, 2}}) {
    for (bool acc : {false, true}) {
      SCOPED_TRACE(ShapeString(s) + (acc ? " accumulate" : ""));
      Tensor x = Random(s, dt, 902), out = Random({s[1]}, dt, 903);
      Tensor gout = Gpu(out);
      ops::SumChannels(x, out, acc);
      ops::SumChannels(Gpu(x), gout, acc);
      EXPECT_TRUE(Near(out, gout, Tol<TypeParam>::kRows));
    }
  }
}

TYPED_TEST(GpuOps, ReduceSumMeanMaxAndSumSquares) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (int64_t n : {int64_t{1}, int64_t{1000}, (int64_t{1} << 20) + 7}) {
    SCOPED_TRACE(n);
    Tensor x = Random({n}, dt, 1000 + n, -2, 1);
    Tensor gx = Gpu(x);
    EXPECT_TRUE(Near(ops::Sum(x), ops::Sum(gx), Tol<TypeParam>::kRows));
    EXPECT_TRUE(Near(ops::Mean(x), ops::Mean(gx), Tol<TypeParam>::kRows));
    EXPECT_TRUE(Near(ops::Max(x), ops::Max(gx), 0));
    const double want = ops::SumSquares(x), got = ops::SumSquares(gx);
    EXPECT_NEAR(got, want, Tol<TypeParam>::kRows * want);
  }
  // Empty: sum 0, mean NaN, sum of squares 0.
  Tensor e = Tensor::Empty({0}, dt), ge = Tensor::Empty({0}, dt, kGpu);
  EXPECT_TRUE(Near(ops::Sum(e), ops::Sum(ge), 0));
  EXPECT_TRUE(Near(ops::Mean(e), ops::Mean(ge), 0));
  EXPECT_EQ(ops::SumSquares(ge), 0.0);
  // NaN propagates through max.
  std::vector<double> v = Random({5000}, dt, 1100).ToVector();
  v[4321] = std::numeric_limits<double>::quiet_NaN();
  Tensor xn = Tensor::FromVector(v, {5000}, dt);
  EXPECT_TRUE(std::isnan(ops::Max(Gpu(xn)).Item()));
  EXPECT_TRUE(Near(ops::Max(xn), ops::Max(Gpu(xn)), 0));
}

// ---- rows: softmax, layer norm, embedding, cross-entropy ----

TYPED_TEST(GpuOps, SoftmaxAndLogSoftmax) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (Shape s : {Shape{1, 1}, Shape{17, 10}, Shape{8, 3000}, Shape{3, 4, 129}, Shape{2000, 64}}) {
    for (bool log : {false, true}) {
      SCOPED_TRACE(ShapeString(s) + (log ? " log" : ""));
      Tensor x = Random(s, dt, 1200, -5, 5), dy = Random(s, dt, 1201);
      Tensor gx = Gpu(x), gdy = Gpu(dy);
      Tensor y = log ? ops::LogSoftmax(x) : ops::Softmax(x);
      Tensor gy = log ? ops::LogSoftmax(gx) : ops::Softmax(gx);
      EXPECT_TRUE(Near(y, gy, Tol<TypeParam>::kRows));
      // Backward on the same y, so that only the backward kernel differs.
      EXPECT_TRUE(Near(ops::SoftmaxBackward(y, dy, log), ops::SoftmaxBackward(Gpu(y), gdy, log),
                       Tol<TypeParam>::kRows));
    }
  }
}

TYPED_TEST(GpuOps, LayerNormForwardAndBackward) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (Shape s : {Shape{1, 1}, Shape{33, 64}, Shape{4, 3, 1000}, Shape{300, 7}, Shape{2, 2048}}) {
    SCOPED_TRACE(ShapeString(s));
    const int64_t d = s.back();
    Tensor x = Random(s, dt, 1300, -2, 3), gamma = Random({d}, dt, 1301, 0.5, 1.5);
    Tensor beta = Random({d}, dt, 1302), dy = Random(s, dt, 1303);
    Tensor gx = Gpu(x), ggamma = Gpu(gamma), gbeta = Gpu(beta);
    Tensor mean, rstd, gmean, grstd;
    Tensor y = ops::LayerNorm(x, gamma, beta, 1e-5, &mean, &rstd);
    Tensor gy = ops::LayerNorm(gx, ggamma, gbeta, 1e-5, &gmean, &grstd);
    EXPECT_TRUE(Near(y, gy, Tol<TypeParam>::kRows));
    EXPECT_TRUE(Near(mean, gmean, Tol<TypeParam>::kRows));
    EXPECT_TRUE(Near(rstd, grstd, Tol<TypeParam>::kRows));
    // dgamma and dbeta accumulate into random starting values.
    Tensor dgamma = Random({d}, dt, 1304), dbeta = Random({d}, dt, 1305);
    Tensor gdgamma = Gpu(dgamma), gdbeta = Gpu(dbeta);
    Tensor dx = ops::LayerNormBackward(x, gamma, mean, rstd, dy, dgamma, dbeta);
    Tensor gdx = ops::LayerNormBackward(gx, ggamma, Gpu(mean), Gpu(rstd), Gpu(dy), gdgamma, gdbeta);
    EXPECT_TRUE(Near(dx, gdx, Tol<TypeParam>::kRows));
    EXPECT_TRUE(Near(dgamma, gdgamma, Tol<TypeParam>::kRows));
    EXPECT_TRUE(Near(dbeta, gdbeta, Tol<TypeParam>::kRows));
  }
}

TYPED_TEST(GpuOps, EmbeddingForwardAndBackward) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (DType id_type : {DType::kI32, DType::kI64}) {
    for (Shape ids_shape : {Shape{4, 7}, Shape{1}, Shape{3000}}) {
      SCOPED_TRACE(std::string(DTypeName(id_type)) + " ids " + ShapeString(ids_shape));
      Tensor w = Random({50, 16}, dt, 1400);
      Tensor ids = RandomIds(ids_shape, 50, id_type, 1401);  // repeats guaranteed for 3000
      Tensor gw = Gpu(w), gids = Gpu(ids);
      EXPECT_TRUE(Near(ops::Embedding(w, ids), ops::Embedding(gw, gids), 0));
      Shape ds = ids_shape;
      ds.push_back(16);
      Tensor dy = Random(ds, dt, 1402), dw = Random({50, 16}, dt, 1403);
      Tensor gdw = Gpu(dw);
      ops::EmbeddingBackward(ids, dy, dw);
      ops::EmbeddingBackward(gids, Gpu(dy), gdw);
      EXPECT_TRUE(Near(dw, gdw, Tol<TypeParam>::kRows));  // atomics: any order of repeated ids
    }
  }
}

TEST(GpuOpsRows, EmbeddingCopiesAnyDtypeAndClampsBadIds) {
  REQUIRE_GPU();
  Tensor w = Random({10, 8}, DType::kF32, 1410).Cast(DType::kBF16);
  Tensor ids = RandomIds({25}, 10, DType::kI64, 1411);
  EXPECT_TRUE(Near(ops::Embedding(w, ids), ops::Embedding(Gpu(w), Gpu(ids)), 0));
  // The front-end checks ids only on the host; on the device a bad id is clamped, never read
  // out of bounds.
  Tensor wf = Random({10, 8}, DType::kF32, 1412);
  Tensor bad = Tensor::FromVector({-5, 1000}, {2}, DType::kI32);
  Tensor got = ops::Embedding(Gpu(wf), Gpu(bad));
  Tensor want = ops::Embedding(wf, Tensor::FromVector({0, 9}, {2}, DType::kI32));
  EXPECT_TRUE(Near(want, got, 0));
}

TYPED_TEST(GpuOps, CrossEntropyForwardAndBackward) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  struct Case {
    int64_t n, c;
  };
  for (Case s : {Case{1, 1}, Case{16, 10}, Case{64, 1000}, Case{1000, 3}}) {
    SCOPED_TRACE(::testing::Message() << "n " << s.n << " c " << s.c);
    Tensor logits = Random({s.n, s.c}, dt, 1500, -4, 4);
    Tensor labels = RandomIds({s.n}, s.c, DType::kI32, 1501);
    Tensor glogits = Gpu(logits), glabels = Gpu(labels);
    Tensor probs, gprobs;
    Tensor loss = ops::CrossEntropy(logits, labels, &probs);
    Tensor gloss = ops::CrossEntropy(glogits, glabels, &gprobs);
    EXPECT_TRUE(Near(loss, gloss, Tol<TypeParam>::kRows));
    EXPECT_TRUE(Near(probs, gprobs, Tol<TypeParam>::kRows));
    EXPECT_TRUE(Near(ops::CrossEntropyBackward(probs, labels, 0.5),
                     ops::CrossEntropyBackward(Gpu(probs), glabels, 0.5),
                     Tol<TypeParam>::kElementwise));
  }
}

TEST(GpuOpsRows, CrossEntropyFlagsBadLabelsWithoutReadingOutOfBounds) {
  REQUIRE_GPU();
  Tensor logits = Gpu(Random({3, 5}, DType::kF32, 1510));
  Tensor labels = Gpu(Tensor::FromVector({1, -1, 5}, {3}, DType::kI32));
  Tensor probs;
  Tensor loss = ops::CrossEntropy(logits, labels, &probs);
  EXPECT_TRUE(std::isnan(loss.Item()));
  // The rows' probabilities are still a softmax, and the gradient stays finite.
  std::vector<double> p = probs.ToVector();
  for (int r = 0; r < 3; ++r) {
    double s = 0;
    for (int j = 0; j < 5; ++j) s += p[r * 5 + j];
    EXPECT_NEAR(s, 1.0, 1e-5);
  }
  for (double v : ops::CrossEntropyBackward(probs, labels).ToVector())
    EXPECT_TRUE(std::isfinite(v));
}

// ---- convolution and pooling ----

struct ConvCase {
  int64_t n, c, h, w, k, r, s;
  int stride, pad;
};

TYPED_TEST(GpuOps, Conv2dForwardAndBackwardBothBackends) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  const ConvCase cases[] = {{1, 1, 5, 5, 1, 3, 3, 1, 0},    {2, 3, 9, 7, 4, 3, 3, 1, 1},
                            {3, 2, 11, 10, 5, 3, 2, 2, 1},  {4, 8, 8, 8, 16, 1, 1, 1, 0},
                            {2, 3, 7, 7, 2, 5, 5, 2, 2},    {1, 4, 6, 6, 3, 1, 1, 1, 0},
                            {8, 16, 14, 14, 32, 3, 3, 1, 1}};
  for (bool cudnn : {true, false}) {
    ConvBackend backend(cudnn);
    for (const ConvCase& cc : cases) {
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << (cudnn ? "cuDNN" : "im2col") << " x [" << cc.n << "," << cc.c << "," << cc.h
                     << "," << cc.w << "] w [" << cc.k << "," << cc.c << "," << cc.r << "," << cc.s
                     << "] stride " << cc.stride << " pad " << cc.pad
                     << (with_bias ? " bias" : ""));
        Conv2dParams p;
        p.stride_h = p.stride_w = cc.stride;
        p.pad_h = p.pad_w = cc.pad;
        Tensor x = Random({cc.n, cc.c, cc.h, cc.w}, dt, 1600);
        Tensor w = Random({cc.k, cc.c, cc.r, cc.s}, dt, 1601);
        Tensor bias = with_bias ? Random({cc.k}, dt, 1602) : Tensor();
        Tensor gx = Gpu(x), gw = Gpu(w), gbias = with_bias ? Gpu(bias) : Tensor();
        Tensor y = ops::Conv2d(x, w, bias, p);
        Tensor gy = ops::Conv2d(gx, gw, gbias, p);
        EXPECT_TRUE(Near(y, gy, Tol<TypeParam>::kProduct));

        // Backward: dx overwritten (created here), dw and db accumulate into random values.
        Tensor dy = Random(y.shape(), dt, 1603), gdy = Gpu(dy);
        Tensor dw = Random(w.shape(), dt, 1604), gdw = Gpu(dw);
        Tensor db = Random({cc.k}, dt, 1605), gdb = Gpu(db);
        Tensor dx, gdx;
        ops::Conv2dBackward(x, w, dy, p, &dx, dw, &db);
        ops::Conv2dBackward(gx, gw, gdy, p, &gdx, gdw, &gdb);
        EXPECT_TRUE(Near(dx, gdx, Tol<TypeParam>::kProduct));
        EXPECT_TRUE(Near(dw, gdw, Tol<TypeParam>::kProduct));
        EXPECT_TRUE(Near(db, gdb, Tol<TypeParam>::kRows));
        // dx is overwritten, not accumulated: a second call gives the same dx.
        Tensor gdw2 = Gpu(dw);
        ops::Conv2dBackward(gx, gw, gdy, p, &gdx, gdw2, nullptr);
        EXPECT_TRUE(Near(dx, gdx, Tol<TypeParam>::kProduct));
      }
    }
  }
}

TYPED_TEST(GpuOps, MaxPoolForwardAndBackward) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  struct Case {
    Shape x;
    int k, stride, pad;
  };
  for (const Case& pc :
       {Case{{2, 3, 8, 8}, 2, 2, 0}, Case{{1, 2, 7, 9}, 3, 2, 1}, Case{{2, 1, 5, 5}, 3, 1, 1},
        Case{{16, 8, 28, 28}, 2, 2, 0}, Case{{1, 1, 1, 1}, 1, 1, 0}}) {
    SCOPED_TRACE(::testing::Message() << ShapeString(pc.x) << " k " << pc.k << " stride "
                                      << pc.stride << " pad " << pc.pad);
    Pool2dParams p;
    p.kernel_h = p.kernel_w = pc.k;
    p.stride_h = p.stride_w = pc.stride;
    p.pad_h = p.pad_w = pc.pad;
    Tensor x = Random(pc.x, dt, 1700);
    Tensor idx, gidx;
    Tensor y = ops::MaxPool2d(x, p, &idx);
    Tensor gy = ops::MaxPool2d(Gpu(x), p, &gidx);
    EXPECT_TRUE(Near(y, gy, 0));
    EXPECT_TRUE(Near(idx, gidx, 0));
    Tensor dy = Random(y.shape(), dt, 1701);
    // Overlapping windows add in any order on the device (atomics).
    EXPECT_TRUE(Near(ops::MaxPool2dBackward(dy, idx, pc.x),
                     ops::MaxPool2dBackward(Gpu(dy), gidx, pc.x), Tol<TypeParam>::kElementwise));
  }
}

// ---- optimizer steps: a few steps with fresh gradients, params and state compared ----

template <typename StepCpu, typename StepGpu>
void RunSteps(DType dt, int64_t n, int states, uint64_t seed, double tol, StepCpu cpu_step,
              StepGpu gpu_step) {
  Tensor p = Random({n}, dt, seed), gp = Gpu(p);
  std::vector<Tensor> s, gs;
  for (int i = 0; i < states; ++i) {
    // Non-negative starts, since some states are running second moments.
    s.push_back(Tensor::Zeros({n}, dt));
    gs.push_back(Tensor::Zeros({n}, dt, kGpu));
  }
  for (int step = 1; step <= 3; ++step) {
    Tensor g = Random({n}, dt, seed + 10 * step);
    Tensor gg = Gpu(g);
    cpu_step(step, p, g, s);
    gpu_step(step, gp, gg, gs);
    SCOPED_TRACE(::testing::Message() << "after step " << step);
    EXPECT_TRUE(Near(p, gp, tol));
    for (int i = 0; i < states; ++i) EXPECT_TRUE(Near(s[i], gs[i], tol)) << "state " << i;
  }
}

TYPED_TEST(GpuOps, SgdSteps) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (bool momentum : {false, true}) {
    SCOPED_TRACE(momentum ? "momentum, nesterov, weight decay" : "plain");
    auto step = [&](int t, Tensor& p, const Tensor& g, std::vector<Tensor>& s) {
      SgdStepParams h;
      h.lr = 0.1;
      if (momentum) {
        h.momentum = 0.9;
        h.nesterov = true;
        h.weight_decay = 1e-2;
      }
      h.first_step = t == 1;
      Tensor none;
      ops::SgdStep(p, g, momentum ? s[0] : none, h);
    };
    RunSteps(dt, 10007, 1, 1800, Tol<TypeParam>::kElementwise, step, step);
  }
  // Dampening without Nesterov.
  auto damp = [&](int t, Tensor& p, const Tensor& g, std::vector<Tensor>& s) {
    SgdStepParams h;
    h.lr = 0.05;
    h.momentum = 0.8;
    h.dampening = 0.3;
    h.first_step = t == 1;
    ops::SgdStep(p, g, s[0], h);
  };
  RunSteps(dt, 513, 1, 1850, Tol<TypeParam>::kElementwise, damp, damp);
}

TYPED_TEST(GpuOps, AdamAndAdamWSteps) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (bool decoupled : {false, true}) {
    SCOPED_TRACE(decoupled ? "AdamW" : "Adam with L2");
    auto step = [&](int t, Tensor& p, const Tensor& g, std::vector<Tensor>& s) {
      AdamStepParams h;
      h.lr = 1e-2;
      h.weight_decay = 0.1;
      h.decoupled = decoupled;
      h.step_size = h.lr / (1 - std::pow(h.beta1, t));
      h.bias_correction2_sqrt = std::sqrt(1 - std::pow(h.beta2, t));
      ops::AdamStep(p, g, s[0], s[1], h);
    };
    RunSteps(dt, 10007, 2, 1900, Tol<TypeParam>::kElementwise, step, step);
  }
}

TYPED_TEST(GpuOps, RmspropSteps) {
  REQUIRE_GPU();
  const DType dt = TestFixture::kType;
  for (bool centered : {false, true}) {
    SCOPED_TRACE(centered ? "centered, momentum, weight decay" : "plain");
    auto step = [&](int, Tensor& p, const Tensor& g, std::vector<Tensor>& s) {
      RmspropStepParams h;
      h.lr = 1e-2;
      if (centered) {
        h.centered = true;
        h.momentum = 0.9;
        h.weight_decay = 1e-2;
      }
      ops::RmspropStep(p, g, s[0], s[1], s[2], h);
    };
    RunSteps(dt, 10007, 3, 2000, Tol<TypeParam>::kElementwise, step, step);
  }
}

}  // namespace
}  // namespace tessera
