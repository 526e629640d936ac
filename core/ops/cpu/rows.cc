// Row-wise CPU kernels: softmax, layer norm, cross-entropy, embedding lookup.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/threads.h"

namespace tessera::cpu {
namespace {
int64_t RowGrain(int64_t d) { return std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(d, 1)); }

template <typename T>
void SoftmaxRow(const T* x, T* y, int64_t d, bool log) {
  T m = x[0];
  for (int64_t j = 1; j < d; ++j) m = std::max(m, x[j]);
  T sum = 0;
  if (log) {
    for (int64_t j = 0; j < d; ++j) sum += std::exp(x[j] - m);
    T lse = m + std::log(sum);
    for (int64_t j = 0; j < d; ++j) y[j] = x[j] - lse;
  } else {
    for (int64_t j = 0; j < d; ++j) {
      y[j] = std::exp(x[j] - m);
      sum += y[j];
    }
    T inv = T(1) / sum;
    for (int64_t j = 0; j < d; ++j) y[j] *= inv;
  }
}
}  // namespace

void Softmax(const Tensor& x, Tensor& y, bool log) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Softmax", [&] {
    int64_t d = x.dim(-1), rows = d ? x.numel() / d : 0;
    if (d == 0) return;
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* yp = y.data<scalar_t>();
    ParallelFor(rows, RowGrain(d), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) SoftmaxRow(xp + r * d, yp + r * d, d, log);
    });
  });
}

void SoftmaxBackward(const Tensor& y, const Tensor& dy, Tensor& dx, bool log) {
  TESSERA_DISPATCH_FLOAT(y.dtype(), "SoftmaxBackward", [&] {
    int64_t d = y.dim(-1), rows = d ? y.numel() / d : 0;
    const scalar_t* yp = y.data<scalar_t>();
    const scalar_t* dyp = dy.data<scalar_t>();
    scalar_t* dxp = dx.data<scalar_t>();
    ParallelFor(rows, RowGrain(d), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* yr = yp + r * d;
        const scalar_t* gr = dyp + r * d;
        scalar_t* out = dxp + r * d;
        if (log) {  // dx = dy - softmax * sum(dy)
          scalar_t s = 0;
          for (int64_t j = 0; j < d; ++j) s += gr[j];
          for (int64_t j = 0; j < d; ++j) out[j] = gr[j] - std::exp(yr[j]) * s;
        } else {  // dx = y * (dy - sum(dy * y))
          scalar_t s = 0;
          for (int64_t j = 0; j < d; ++j) s += gr[j] * yr[j];
          for (int64_t j = 0; j < d; ++j) out[j] = yr[j] * (gr[j] - s);
        }
      }
    });
  });
}

void LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& y,
               Tensor& mean, Tensor& rstd) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "LayerNorm", [&] {
    int64_t d = x.dim(-1), rows = d ? x.numel() / d : 0;
    const scalar_t* xp = x.data<scalar_t>();
    const scalar_t* g = gamma.data<scalar_t>();
    const scalar_t* bt = beta.data<scalar_t>();
    scalar_t* yp = y.data<scalar_t>();
    scalar_t* mp = mean.data<scalar_t>();
    scalar_t* rp = rstd.data<scalar_t>();
    ParallelFor(rows, RowGrain(d), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* xr = xp + r * d;
        scalar_t mu = 0;
        for (int64_t j = 0; j < d; ++j) mu += xr[j];
        mu /= static_cast<scalar_t>(d);
        scalar_t var = 0;
        for (int64_t j = 0; j < d; ++j) var += (xr[j] - mu) * (xr[j] - mu);
        var /= static_cast<scalar_t>(d);
        scalar_t rs = scalar_t(1) / std::sqrt(var + static_cast<scalar_t>(eps));
        mp[r] = mu;
        rp[r] = rs;
        scalar_t* yr = yp + r * d;
        for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - mu) * rs * g[j] + bt[j];
      }
    });
  });
}

void LayerNormBackward(const Tensor& x, const Tensor& gamma, const Tensor& mean, const Tensor& rstd,
                       const Tensor& dy, Tensor& dx, Tensor& dgamma, Tensor& dbeta) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "LayerNormBackward", [&] {
    int64_t d = x.dim(-1), rows = d ? x.numel() / d : 0;
    const scalar_t* xp = x.data<scalar_t>();
    const scalar_t* g = gamma.data<scalar_t>();
    const scalar_t* mp = mean.data<scalar_t>();
    const scalar_t* rp = rstd.data<scalar_t>();
    const scalar_t* dyp = dy.data<scalar_t>();
    scalar_t* dxp = dx.data<scalar_t>();
    scalar_t* dg = dgamma.data<scalar_t>();
    scalar_t* db = dbeta.data<scalar_t>();
    // dx: rows in parallel. xhat = (x - mu) rstd; dxhat = dy * gamma;
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    ParallelFor(rows, RowGrain(d), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* xr = xp + r * d;
        const scalar_t* gr = dyp + r * d;
        scalar_t mu = mp[r], rs = rp[r];
        scalar_t s1 = 0, s2 = 0;
        for (int64_t j = 0; j < d; ++j) {
          scalar_t dxh = gr[j] * g[j];
          s1 += dxh;
          s2 += dxh * (xr[j] - mu) * rs;
        }
        s1 /= static_cast<scalar_t>(d);
        s2 /= static_cast<scalar_t>(d);
        scalar_t* out = dxp + r * d;
        for (int64_t j = 0; j < d; ++j) {
          scalar_t xh = (xr[j] - mu) * rs;
          out[j] = rs * (gr[j] * g[j] - s1 - xh * s2);
        }
      }
    });
    // dgamma, dbeta: columns in parallel, rows in order (deterministic).
    ParallelFor(d, 64, [&](int64_t cb, int64_t ce) {
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* xr = xp + r * d;
        const scalar_t* gr = dyp + r * d;
        for (int64_t j = cb; j < ce; ++j) {
          dg[j] += gr[j] * (xr[j] - mp[r]) * rp[r];
          db[j] += gr[j];
        }
      }
    });
  });
}

namespace {
template <typename I>
void EmbeddingImpl(const Tensor& weight, const I* ids, int64_t n, Tensor& out) {
  int64_t d = weight.dim(1);
  size_t row_bytes = d * SizeOf(weight.dtype());
  const char* w = static_cast<const char*>(weight.raw_data());
  char* o = static_cast<char*>(out.raw_data());
  ParallelFor(n, RowGrain(d), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(o + i * row_bytes, w + ids[i] * row_bytes, row_bytes);
  });
}
template <typename T, typename I>
void EmbeddingBackwardImpl(const I* ids, int64_t n, const T* dy, T* dw, int64_t d) {
  // Columns split across threads; ids visited in order: deterministic for repeated ids.
  ParallelFor(d, 64, [&](int64_t cb, int64_t ce) {
    for (int64_t i = 0; i < n; ++i) {
      T* row = dw + ids[i] * d;
      const T* g = dy + i * d;
      for (int64_t j = cb; j < ce; ++j) row[j] += g[j];
    }
  });
}
}  // namespace

void Embedding(const Tensor& weight, const Tensor& ids, Tensor& out) {
  if (ids.dtype() == DType::kI32) EmbeddingImpl(weight, ids.data<int32_t>(), ids.numel(), out);
  else EmbeddingImpl(weight, ids.data<int64_t>(), ids.numel(), out);
}

void EmbeddingBackward(const Tensor& ids, const Tensor& dy, Tensor& dweight) {
  TESSERA_DISPATCH_FLOAT(dy.dtype(), "EmbeddingBackward", [&] {
    int64_t d = dweight.dim(1);
    if (ids.dtype() == DType::kI32)
      EmbeddingBackwardImpl(ids.data<int32_t>(), ids.numel(), dy.data<scalar_t>(), dweight.data<scalar_t>(), d);
    else
      EmbeddingBackwardImpl(ids.data<int64_t>(), ids.numel(), dy.data<scalar_t>(), dweight.data<scalar_t>(), d);
  });
}

void CrossEntropy(const Tensor& logits, const Tensor& labels, Tensor& probs, Tensor& loss) {
  TESSERA_DISPATCH_FLOAT(logits.dtype(), "CrossEntropy", [&] {
    int64_t n = logits.dim(0), c = logits.dim(1);
    const scalar_t* x = logits.data<scalar_t>();
    scalar_t* p = probs.data<scalar_t>();
    const int32_t* l = labels.data<int32_t>();
    double total = 0;
    for (int64_t r = 0; r < n; ++r) {
      const scalar_t* xr = x + r * c;
      scalar_t* pr = p + r * c;
      scalar_t m = xr[0];
      for (int64_t j = 1; j < c; ++j) m = std::max(m, xr[j]);
      scalar_t sum = 0;
      for (int64_t j = 0; j < c; ++j) {
        pr[j] = std::exp(xr[j] - m);
        sum += pr[j];
      }
      scalar_t inv = scalar_t(1) / sum;
      for (int64_t j = 0; j < c; ++j) pr[j] *= inv;
      total += static_cast<double>(m + std::log(sum) - xr[l[r]]);  // -log softmax at the label
    }
    *loss.data<scalar_t>() = static_cast<scalar_t>(n ? total / static_cast<double>(n) : 0.0);
  });
}

void CrossEntropyBackward(const Tensor& probs, const Tensor& labels, double scale, Tensor& dlogits) {
  TESSERA_DISPATCH_FLOAT(probs.dtype(), "CrossEntropyBackward", [&] {
    int64_t n = probs.dim(0), c = probs.dim(1);
    const scalar_t* p = probs.data<scalar_t>();
    const int32_t* l = labels.data<int32_t>();
    scalar_t* d = dlogits.data<scalar_t>();
    scalar_t s = n ? static_cast<scalar_t>(scale / static_cast<double>(n)) : scalar_t(0);
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = 0; j < c; ++j) d[r * c + j] = p[r * c + j] * s;
      d[r * c + l[r]] -= s;
    }
  });
}

}  // namespace tessera::cpu
