// Causal self-attention on the CPU, fused: the scores, the masked softmax and the weighted sum of
// one (example, head) never leave a T x T scratch block, and backward recomputes the softmax from
// the saved log-sum-exp of each row instead of keeping the T x T probabilities of every head.
//
// Q, K and V are read in place from the packed projection qkv [B, T, 3C] (q | k | v, head h at
// columns h*Dh .. (h+1)*Dh of each third) through GEMM leading dimensions, so no head is copied out.
// (example, head) pairs are split across tessera's pool; each pair's result is a pure function of
// its inputs, computed by GEMMs on one thread, so the output does not depend on how the pairs are
// split. (A single pair runs on the calling thread, where oneDNN's GEMM may itself use the pool.)
#include <cmath>
#include <limits>
#include <vector>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/threads.h"

namespace tessera::cpu {
namespace {

// One (example, head) of the packed layout: row t of Q is q + t * ld, likewise K and V.
template <typename T>
struct Head {
  const T *q, *k, *v;
  int64_t ld;  // 3C
};

template <typename T>
Head<T> HeadOf(const T* qkv, int64_t b, int64_t h, int64_t t, int64_t c, int64_t dh) {
  const T* base = qkv + b * t * 3 * c + h * dh;
  return {base, base + c, base + 2 * c, 3 * c};
}

// p[i, j] = exp(s[i, j] - lse[i]) for j <= i, 0 above the diagonal; s holds scale * Q K^T.
template <typename T>
void MaskedProbabilities(T* s, const T* lse, int64_t t) {
  for (int64_t i = 0; i < t; ++i) {
    T* row = s + i * t;
    for (int64_t j = 0; j <= i; ++j) row[j] = std::exp(row[j] - lse[i]);
    for (int64_t j = i + 1; j < t; ++j) row[j] = 0;
  }
}

// Row i of s (its first i + 1 entries) -> its log-sum-exp, computed against the row's maximum.
template <typename T>
T RowLogSumExp(const T* row, int64_t i) {
  T m = row[0];
  for (int64_t j = 1; j <= i; ++j) m = std::max(m, row[j]);
  T sum = 0;
  for (int64_t j = 0; j <= i; ++j) sum += std::exp(row[j] - m);
  return m + std::log(sum);
}

template <typename T>
void ForwardHead(const Head<T>& hd, int64_t t, int64_t dh, T scale, T* y, int64_t ldy, T* lse,
                 std::vector<T>& s) {
  s.resize(static_cast<size_t>(t * t));
  StridedGemm<T>(false, true, t, t, dh, scale, hd.q, hd.ld, hd.k, hd.ld, 0, s.data(), t);
  for (int64_t i = 0; i < t; ++i) lse[i] = RowLogSumExp(s.data() + i * t, i);
  MaskedProbabilities(s.data(), lse, t);
  StridedGemm<T>(false, false, t, dh, t, 1, s.data(), t, hd.v, hd.ld, 0, y, ldy);
}

// dV = P^T dY; dP = dY V^T; dS = P * (dP - rowsum(P * dP)); dQ = scale dS K; dK = scale dS^T Q.
template <typename T>
void BackwardHead(const Head<T>& hd, int64_t t, int64_t dh, T scale, const T* lse, const T* dy, int64_t ldy,
                  T* dq, std::vector<T>& p, std::vector<T>& dp) {
  p.resize(static_cast<size_t>(t * t));
  dp.resize(static_cast<size_t>(t * t));
  StridedGemm<T>(false, true, t, t, dh, scale, hd.q, hd.ld, hd.k, hd.ld, 0, p.data(), t);
  MaskedProbabilities(p.data(), lse, t);
  T* dk = dq + (hd.k - hd.q);
  T* dv = dq + (hd.v - hd.q);
  StridedGemm<T>(true, false, t, dh, t, 1, p.data(), t, dy, ldy, 0, dv, hd.ld);
  StridedGemm<T>(false, true, t, t, dh, 1, dy, ldy, hd.v, hd.ld, 0, dp.data(), t);
  for (int64_t i = 0; i < t; ++i) {
    const T* pr = p.data() + i * t;
    T* g = dp.data() + i * t;
    T d = 0;
    for (int64_t j = 0; j <= i; ++j) d += pr[j] * g[j];
    for (int64_t j = 0; j <= i; ++j) g[j] = pr[j] * (g[j] - d);
    for (int64_t j = i + 1; j < t; ++j) g[j] = 0;
  }
  StridedGemm<T>(false, false, t, dh, t, scale, dp.data(), t, hd.k, hd.ld, 0, dq, hd.ld);
  StridedGemm<T>(true, false, t, dh, t, scale, dp.data(), t, hd.q, hd.ld, 0, dk, hd.ld);
}

struct Dims {
  int64_t b, t, c, heads, dh;
};
Dims DimsOf(const Tensor& qkv, int64_t heads) {
  const int64_t c = qkv.dim(2) / 3;
  return {qkv.dim(0), qkv.dim(1), c, heads, c / heads};
}

}  // namespace

void CausalAttention(const Tensor& qkv, int64_t heads, Tensor& y, Tensor& lse) {
  TESSERA_DISPATCH_FLOAT(qkv.dtype(), "CausalAttention", [&] {
    const Dims d = DimsOf(qkv, heads);
    const scalar_t scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(d.dh)));
    const scalar_t* in = qkv.data<scalar_t>();
    scalar_t* out = y.data<scalar_t>();
    scalar_t* l = lse.data<scalar_t>();
    ParallelFor(d.b * d.heads, 1, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> s;
      for (int64_t bh = lo; bh < hi; ++bh) {
        const int64_t b = bh / d.heads, h = bh % d.heads;
        ForwardHead(HeadOf(in, b, h, d.t, d.c, d.dh), d.t, d.dh, scale, out + b * d.t * d.c + h * d.dh, d.c,
                    l + bh * d.t, s);
      }
    });
  });
}

void CausalAttentionBackward(const Tensor& qkv, const Tensor& lse, const Tensor& dy, int64_t heads,
                             Tensor& dqkv) {
  TESSERA_DISPATCH_FLOAT(qkv.dtype(), "CausalAttentionBackward", [&] {
    const Dims d = DimsOf(qkv, heads);
    const scalar_t scale = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(d.dh)));
    const scalar_t* in = qkv.data<scalar_t>();
    const scalar_t* g = dy.data<scalar_t>();
    const scalar_t* l = lse.data<scalar_t>();
    scalar_t* out = dqkv.data<scalar_t>();
    ParallelFor(d.b * d.heads, 1, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> p, dp;
      for (int64_t bh = lo; bh < hi; ++bh) {
        const int64_t b = bh / d.heads, h = bh % d.heads;
        const int64_t head_offset = b * d.t * 3 * d.c + h * d.dh;
        BackwardHead(HeadOf(in, b, h, d.t, d.c, d.dh), d.t, d.dh, scale, l + bh * d.t,
                     g + b * d.t * d.c + h * d.dh, d.c, out + head_offset, p, dp);
      }
    });
  });
}

}  // namespace tessera::cpu
