// Memory-bound CPU kernels: fill, copy, cast, elementwise math, bias broadcasts, reductions,
// dropout. Loops are written for auto-vectorisation; ParallelFor splits large ones.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/ops/functors.h"
#include "core/random.h"
#include "core/threads.h"

namespace tessera::cpu {
namespace {

template <typename T>
T FromDouble(double v) {
  return static_cast<T>(v);
}

// GELU in f32 from plain arithmetic, so that its loops vectorise (libm's tanhf and expm1f are scalar
// calls, and GELU through them was half of a GPT's CPU step). tanh(u) = (e - 1) / (e + 1) and
// 1 - tanh(u)^2 = 4 / (e + 2 + 1/e), with e = exp(2u) (the second form keeps its relative precision
// where tanh is within an ulp of +-1). exp by range reduction, 2^n * exp(r) with |r| <= ln(2) / 2
// and exp(r) its Taylor series to degree 6 (truncation below 2e-7 relative); |u| is clamped at 40,
// where both are constant to float precision.
inline float Exp2uF32(float u) {
  const float x = 2.0f * std::min(40.0f, std::max(-40.0f, u));
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round(x / ln 2), exact for |x| < 2^22
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;   // x - n ln 2 in two parts
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-116, 116]
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float GeluF32(float x) {
  const float e = Exp2uF32(0.7978845608028654f * (x + 0.044715f * x * x * x));
  return 0.5f * x * (1.0f + (e - 1.0f) / (e + 1.0f));
}

inline float GeluGradF32(float x, float dy) {
  const float e = Exp2uF32(0.7978845608028654f * (x + 0.044715f * x * x * x));
  const float t = (e - 1.0f) / (e + 1.0f), sech2 = 4.0f / (e + 2.0f + 1.0f / e);
  const float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
  return dy * (0.5f * (1.0f + t) + 0.5f * x * sech2 * du);
}

// Loads element i of any floating dtype as double (for the generic cast path).
double LoadAsDouble(const Tensor& t, int64_t i) {
  const void* p = t.raw_data();
  switch (t.dtype()) {
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kF64:
      return static_cast<const double*>(p)[i];
    case DType::kBF16:
      return BF16ToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::kF16:
      return HalfToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::kI32:
      return static_cast<const int32_t*>(p)[i];
    case DType::kI64:
      return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::kI8:
      return static_cast<const int8_t*>(p)[i];
  }
  return 0;
}

void StoreFromDouble(Tensor& t, int64_t i, double v) {
  void* p = t.raw_data();
  switch (t.dtype()) {
    case DType::kF32:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      break;
    case DType::kF64:
      static_cast<double*>(p)[i] = v;
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(p)[i] = FloatToBF16(static_cast<float>(v));
      break;
    case DType::kF16:
      static_cast<uint16_t*>(p)[i] = FloatToHalf(static_cast<float>(v));
      break;
    case DType::kI32:
      static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v);
      break;
    case DType::kI64:
      static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v);
      break;
    case DType::kI8:
      static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v);
      break;
  }
}

}  // namespace

void Fill(Tensor& t, double value) {
  int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::kF32: {
      float* p = t.data<float>();
      float v = static_cast<float>(value);
      if (v == 0.0f && !std::signbit(v)) {
        ParallelFor(n, kElementwiseGrain * 4,
                    [&](int64_t b, int64_t e) { std::memset(p + b, 0, (e - b) * sizeof(float)); });
      } else {
        ParallelFor(n, kElementwiseGrain, [&](int64_t b, int64_t e) { std::fill(p + b, p + e, v); });
      }
      break;
    }
    default:
      for (int64_t i = 0; i < n; ++i) StoreFromDouble(t, i, value);
  }
}

void Copy(Tensor& dst, const Tensor& src) {
  char* d = static_cast<char*>(dst.raw_data());
  const char* s = static_cast<const char*>(src.raw_data());
  if (d == s) return;
  int64_t bytes = static_cast<int64_t>(dst.nbytes());
  ParallelFor(bytes, int64_t(1) << 20, [&](int64_t b, int64_t e) { std::memmove(d + b, s + b, e - b); });
}

void Cast(Tensor& dst, const Tensor& src) {
  int64_t n = src.numel();
  if (src.dtype() == DType::kF32 && dst.dtype() == DType::kBF16) {
    const float* s = src.data<float>();
    uint16_t* d = static_cast<uint16_t*>(dst.raw_data());
    for (int64_t i = 0; i < n; ++i) d[i] = FloatToBF16(s[i]);
    return;
  }
  if (src.dtype() == DType::kF64 && dst.dtype() == DType::kF32) {
    const double* s = src.data<double>();
    float* d = dst.data<float>();
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
    return;
  }
  for (int64_t i = 0; i < n; ++i) StoreFromDouble(dst, i, LoadAsDouble(src, i));
}

void Unary(UnaryOp op, const Tensor& x, Tensor& y) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Unary", [&] {
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* yp = y.data<scalar_t>();
    ParallelFor(x.numel(), kElementwiseGrain, [&, xp, yp](int64_t b, int64_t e) {
      switch (op) {  // hoisted so each loop vectorises
        case UnaryOp::kRelu:
          _Pragma("GCC ivdep") for (int64_t i = b; i < e; ++i) yp[i] =
              xp[i] > scalar_t(0) ? xp[i] : scalar_t(0);
          break;
        case UnaryOp::kGelu:
          if constexpr (std::is_same_v<scalar_t, float>) {
            _Pragma("GCC ivdep") for (int64_t i = b; i < e; ++i) yp[i] = GeluF32(xp[i]);
            break;
          }
          [[fallthrough]];
        default:
          for (int64_t i = b; i < e; ++i) yp[i] = fn::ApplyUnary(op, xp[i]);
      }
    });
  });
}

void UnaryBackward(UnaryOp op, const Tensor& x, const Tensor& dy, Tensor& dx) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "UnaryBackward", [&] {
    const scalar_t* xp = x.data<scalar_t>();
    const scalar_t* dyp = dy.data<scalar_t>();
    scalar_t* dxp = dx.data<scalar_t>();
    // Pointers are captured by value and the loops marked ivdep (dx may be dy itself, element for
    // element): otherwise every store could alias the closure and nothing vectorises.
    ParallelFor(x.numel(), kElementwiseGrain, [&, xp, dyp, dxp](int64_t b, int64_t e) {
      switch (op) {
        case UnaryOp::kRelu:
          _Pragma("GCC ivdep") for (int64_t i = b; i < e; ++i) dxp[i] =
              xp[i] > scalar_t(0) ? dyp[i] : scalar_t(0);
          break;
        case UnaryOp::kGelu:
          if constexpr (std::is_same_v<scalar_t, float>) {
            _Pragma("GCC ivdep") for (int64_t i = b; i < e; ++i) dxp[i] = GeluGradF32(xp[i], dyp[i]);
            break;
          }
          [[fallthrough]];
        default:
          for (int64_t i = b; i < e; ++i) dxp[i] = fn::ApplyUnaryGrad(op, xp[i], dyp[i]);
      }
    });
  });
}

void Binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  TESSERA_DISPATCH_FLOAT(a.dtype(), "Binary", [&] {
    const scalar_t* ap = a.data<scalar_t>();
    const scalar_t* bp = b.data<scalar_t>();
    scalar_t* op_ = out.data<scalar_t>();
    ParallelFor(a.numel(), kElementwiseGrain, [&, ap, bp, op_](int64_t s, int64_t e) {
      _Pragma("GCC ivdep") for (int64_t i = s; i < e; ++i) op_[i] = fn::ApplyBinary(op, ap[i], bp[i]);
    });
  });
}

void Axpby(double alpha, const Tensor& x, double beta, Tensor& y) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Axpby", [&] {
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* yp = y.data<scalar_t>();
    scalar_t a = static_cast<scalar_t>(alpha), bt = static_cast<scalar_t>(beta);
    ParallelFor(x.numel(), kElementwiseGrain, [&, xp, yp, a, bt](int64_t s, int64_t e) {
      if (alpha == 0.0) {
        for (int64_t i = s; i < e; ++i) yp[i] = bt * yp[i];
      } else if (beta == 0.0) {
        for (int64_t i = s; i < e; ++i) yp[i] = a * xp[i];
      } else {
        for (int64_t i = s; i < e; ++i) yp[i] = a * xp[i] + bt * yp[i];
      }
    });
  });
}

void AddBias(Tensor& y, const Tensor& bias) {
  TESSERA_DISPATCH_FLOAT(y.dtype(), "AddBias", [&] {
    int64_t c = bias.numel(), rows = c ? y.numel() / c : 0;
    scalar_t* yp = y.data<scalar_t>();
    const scalar_t* bp = bias.data<scalar_t>();
    ParallelFor(rows, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(c, 1)),
                [&](int64_t s, int64_t e) {
                  for (int64_t r = s; r < e; ++r) {
                    scalar_t* row = yp + r * c;
                    for (int64_t j = 0; j < c; ++j) row[j] += bp[j];
                  }
                });
  });
}

void AddChannelBias(Tensor& y, const Tensor& bias) {
  TESSERA_DISPATCH_FLOAT(y.dtype(), "AddChannelBias", [&] {
    int64_t n = y.dim(0), c = y.dim(1), s = c && n ? y.numel() / (n * c) : 0;
    scalar_t* yp = y.data<scalar_t>();
    const scalar_t* bp = bias.data<scalar_t>();
    ParallelFor(n * c, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(s, 1)),
                [&](int64_t b, int64_t e) {
                  for (int64_t nc = b; nc < e; ++nc) {
                    scalar_t v = bp[nc % c];
                    scalar_t* plane = yp + nc * s;
                    for (int64_t i = 0; i < s; ++i) plane[i] += v;
                  }
                });
  });
}

void SumRows(const Tensor& x, Tensor& out, bool accumulate) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "SumRows", [&] {
    int64_t c = out.numel(), rows = c ? x.numel() / c : 0;
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* op = out.data<scalar_t>();
    // Columns are split across threads; each column sums its rows in order (deterministic).
    ParallelFor(c, 64, [&](int64_t cb, int64_t ce) {
      std::vector<scalar_t> acc(ce - cb, scalar_t(0));
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* row = xp + r * c;
        for (int64_t j = cb; j < ce; ++j) acc[j - cb] += row[j];
      }
      for (int64_t j = cb; j < ce; ++j) op[j] = accumulate ? op[j] + acc[j - cb] : acc[j - cb];
    });
  });
}

void SumChannels(const Tensor& x, Tensor& out, bool accumulate) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "SumChannels", [&] {
    int64_t n = x.dim(0), c = x.dim(1), s = c && n ? x.numel() / (n * c) : 0;
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* op = out.data<scalar_t>();
    ParallelFor(c, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t ch = cb; ch < ce; ++ch) {
        double acc = 0;
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t* plane = xp + (i * c + ch) * s;
          scalar_t part = 0;
          for (int64_t k = 0; k < s; ++k) part += plane[k];
          acc += part;
        }
        op[ch] = accumulate ? op[ch] + static_cast<scalar_t>(acc) : static_cast<scalar_t>(acc);
      }
    });
  });
}

namespace {
// Sum (or sum of squares) of x in fixed chunks, combined in chunk order: thread-count independent.
template <typename T, bool kSquare>
double ChunkedSum(const T* p, int64_t n) {
  int64_t chunks = (n + kReduceChunk - 1) / kReduceChunk;
  std::vector<double> partial(chunks, 0.0);
  ParallelFor(chunks, 16, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      int64_t lo = c * kReduceChunk, hi = std::min(n, lo + kReduceChunk);
      double acc = 0;
      if constexpr (kSquare) {
        for (int64_t i = lo; i < hi; ++i) acc += static_cast<double>(p[i]) * p[i];
      } else {
        for (int64_t i = lo; i < hi; ++i) acc += p[i];
      }
      partial[c] = acc;
    }
  });
  double total = 0;
  for (double v : partial) total += v;
  return total;
}
}  // namespace

void Reduce(ReduceOp op, const Tensor& x, Tensor& out) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Reduce", [&] {
    const scalar_t* p = x.data<scalar_t>();
    int64_t n = x.numel();
    scalar_t* o = out.data<scalar_t>();
    if (op == ReduceOp::kMax) {
      scalar_t m = p[0];
      for (int64_t i = 1; i < n; ++i) m = (p[i] > m || std::isnan(p[i])) ? p[i] : m;
      *o = m;
      return;
    }
    double s = ChunkedSum<scalar_t, false>(p, n);
    if (op == ReduceOp::kMean) s = n ? s / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
    *o = static_cast<scalar_t>(s);
  });
}

double SumSquares(const Tensor& x) {
  return TESSERA_DISPATCH_FLOAT(x.dtype(), "SumSquares",
                                [&] { return ChunkedSum<scalar_t, true>(x.data<scalar_t>(), x.numel()); });
}

void Dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Dropout", [&] {
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* yp = y.data<scalar_t>();
    const float pf = static_cast<float>(p);
    const scalar_t scale = static_cast<scalar_t>(1.0 / (1.0 - p));
    ParallelFor(x.numel(), kElementwiseGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        float u = PhiloxUniform(seed, 0, offset + static_cast<uint64_t>(i));
        yp[i] = u >= pf ? xp[i] * scale : scalar_t(0);
      }
    });
  });
}

}  // namespace tessera::cpu
