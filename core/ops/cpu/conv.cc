// Convolution and max-pooling on the CPU, NCHW.
//
// Conv2d lowers to one large GEMM over the whole batch: im2col writes col [C*R*S, N*P*Q] (each
// image's columns side by side), then Y' [K, N*P*Q] = W [K, C*R*S] @ col, and Y' is transposed to
// y [N, K, P*Q] with the bias added on the way. One big GEMM runs far closer to the sgemm peak
// than N small ones. Backward: dW += dY' @ col^T, dcol = W^T @ dY', dx = col2im(dcol).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/threads.h"

namespace tessera::cpu {
namespace {

struct ConvGeom {
  int64_t n, c, h, w, k, r, s, p, q;
  int sh, sw, ph, pw;
  int64_t crs() const { return c * r * s; }
  int64_t pq() const { return p * q; }
};

ConvGeom Geometry(const Tensor& x, const Tensor& w, const Conv2dParams& prm) {
  ConvGeom g;
  g.n = x.dim(0); g.c = x.dim(1); g.h = x.dim(2); g.w = x.dim(3);
  g.k = w.dim(0); g.r = w.dim(2); g.s = w.dim(3);
  g.sh = prm.stride_h; g.sw = prm.stride_w; g.ph = prm.pad_h; g.pw = prm.pad_w;
  g.p = (g.h + 2 * g.ph - g.r) / g.sh + 1;
  g.q = (g.w + 2 * g.pw - g.s) / g.sw + 1;
  return g;
}

// col[(c*R + i)*S + j][img*PQ + oy*Q + ox] = x[img, c, oy*sh - ph + i, ox*sw - pw + j] (0 outside).
template <typename T>
void Im2Col(const T* x, const ConvGeom& g, T* col) {
  const int64_t ld = g.n * g.pq();
  ParallelFor(g.n * g.c, 1, [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      int64_t img = nc / g.c, ch = nc % g.c;
      const T* plane = x + nc * g.h * g.w;
      for (int64_t i = 0; i < g.r; ++i) {
        for (int64_t j = 0; j < g.s; ++j) {
          T* dst = col + ((ch * g.r + i) * g.s + j) * ld + img * g.pq();
          for (int64_t oy = 0; oy < g.p; ++oy) {
            int64_t iy = oy * g.sh - g.ph + i;
            T* row = dst + oy * g.q;
            if (iy < 0 || iy >= g.h) {
              std::fill(row, row + g.q, T(0));
              continue;
            }
            const T* src = plane + iy * g.w;
            if (g.sw == 1) {
              // ix = ox - pw + j: valid for ox in [lo, hi).
              int64_t lo = std::max<int64_t>(0, g.pw - j);
              int64_t hi = std::min<int64_t>(g.q, g.w + g.pw - j);
              for (int64_t ox = 0; ox < lo; ++ox) row[ox] = T(0);
              if (hi > lo) std::memcpy(row + lo, src + lo - g.pw + j, (hi - lo) * sizeof(T));
              for (int64_t ox = std::max(hi, lo); ox < g.q; ++ox) row[ox] = T(0);
            } else {
              for (int64_t ox = 0; ox < g.q; ++ox) {
                int64_t ix = ox * g.sw - g.pw + j;
                row[ox] = (ix >= 0 && ix < g.w) ? src[ix] : T(0);
              }
            }
          }
        }
      }
    }
  });
}

// The adjoint of Im2Col: dx[img, c, iy, ix] = sum of the col entries that read it.
template <typename T>
void Col2Im(const T* col, const ConvGeom& g, T* dx) {
  const int64_t ld = g.n * g.pq();
  ParallelFor(g.n * g.c, 1, [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      int64_t img = nc / g.c, ch = nc % g.c;
      T* plane = dx + nc * g.h * g.w;
      std::fill(plane, plane + g.h * g.w, T(0));
      for (int64_t i = 0; i < g.r; ++i) {
        for (int64_t j = 0; j < g.s; ++j) {
          const T* srcbase = col + ((ch * g.r + i) * g.s + j) * ld + img * g.pq();
          for (int64_t oy = 0; oy < g.p; ++oy) {
            int64_t iy = oy * g.sh - g.ph + i;
            if (iy < 0 || iy >= g.h) continue;
            const T* row = srcbase + oy * g.q;
            T* dst = plane + iy * g.w;
            if (g.sw == 1) {
              int64_t lo = std::max<int64_t>(0, g.pw - j);
              int64_t hi = std::min<int64_t>(g.q, g.w + g.pw - j);
              T* d = dst - g.pw + j;
              for (int64_t ox = lo; ox < hi; ++ox) d[ox] += row[ox];
            } else {
              for (int64_t ox = 0; ox < g.q; ++ox) {
                int64_t ix = ox * g.sw - g.pw + j;
                if (ix >= 0 && ix < g.w) dst[ix] += row[ox];
              }
            }
          }
        }
      }
    }
  });
}

// Is the conv a plain per-pixel matrix product (1x1, stride 1, no padding)?
bool IsPointwise(const ConvGeom& g) {
  return g.r == 1 && g.s == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}

std::atomic<CpuConvImpl> g_conv_impl{CpuConvImpl::kAuto};

}  // namespace

void SetCpuConvImpl(CpuConvImpl impl) { g_conv_impl = impl; }

bool CpuConvUsesOneDnn() { return TESSERA_USE_ONEDNN && g_conv_impl.load() == CpuConvImpl::kAuto; }

void Conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& prm, Tensor& y) {
#if TESSERA_USE_ONEDNN
  if (CpuConvUsesOneDnn() && OneDnnConv2d(x, w, bias, prm, y)) return;
#endif
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Conv2d", [&] {
    ConvGeom g = Geometry(x, w, prm);
    if (g.n == 0 || g.k == 0 || g.pq() == 0) return;
    const int64_t cols = g.n * g.pq();
    Tensor col;
    if (g.crs() == 0) {
      y.Fill(0.0);
    } else {
      if (IsPointwise(g) && g.n == 1) {
        col = x.Reshape({g.c, g.pq()});
      } else {
        col = Tensor::Empty({g.crs(), cols}, x.dtype());
        Im2Col(x.data<scalar_t>(), g, col.data<scalar_t>());
      }
    }
    Tensor yt = g.n == 1 ? y.Reshape({g.k, g.pq()}) : Tensor::Empty({g.k, cols}, x.dtype());
    Tensor w2 = w.Reshape({g.k, g.crs()});
    if (g.crs() > 0) Gemm(w2, false, col, false, yt, 1.0, 0.0);
    else yt.Fill(0.0);
    const scalar_t* bp = bias.defined() ? bias.data<scalar_t>() : nullptr;
    scalar_t* yp = y.data<scalar_t>();
    const scalar_t* ytp = yt.data<scalar_t>();
    // Transpose [K, N, PQ] -> [N, K, PQ], adding the bias.
    ParallelFor(g.n * g.k, 1, [&](int64_t b, int64_t e) {
      for (int64_t nk = b; nk < e; ++nk) {
        int64_t img = nk / g.k, ch = nk % g.k;
        scalar_t* dst = yp + nk * g.pq();
        const scalar_t* src = ytp + ch * cols + img * g.pq();
        scalar_t bv = bp ? bp[ch] : scalar_t(0);
        if (dst == src) {
          if (bp) for (int64_t i = 0; i < g.pq(); ++i) dst[i] += bv;
        } else {
          for (int64_t i = 0; i < g.pq(); ++i) dst[i] = src[i] + bv;
        }
      }
    });
  });
}

void Conv2dBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv2dParams& prm,
                    Tensor& dx, Tensor& dw, Tensor& db) {
#if TESSERA_USE_ONEDNN
  if (CpuConvUsesOneDnn() && OneDnnConv2dBackward(x, w, dy, prm, dx, dw, db)) return;
#endif
  TESSERA_DISPATCH_FLOAT(x.dtype(), "Conv2dBackward", [&] {
    ConvGeom g = Geometry(x, w, prm);
    const int64_t cols = g.n * g.pq();
    if (db.defined()) SumChannels(dy, db, /*accumulate=*/true);
    if (g.n == 0 || g.k == 0 || g.pq() == 0 || g.crs() == 0) {
      if (dx.defined()) dx.Fill(0.0);
      return;
    }
    // dY' [K, N*PQ] from dy [N, K, PQ].
    Tensor dyt;
    if (g.n == 1) {
      dyt = dy.Reshape({g.k, g.pq()});
    } else {
      dyt = Tensor::Empty({g.k, cols}, x.dtype());
      const scalar_t* src = dy.data<scalar_t>();
      scalar_t* dst = dyt.data<scalar_t>();
      ParallelFor(g.n * g.k, 1, [&](int64_t b, int64_t e) {
        for (int64_t nk = b; nk < e; ++nk) {
          int64_t img = nk / g.k, ch = nk % g.k;
          std::memcpy(dst + ch * cols + img * g.pq(), src + nk * g.pq(), g.pq() * sizeof(scalar_t));
        }
      });
    }
    Tensor col = Tensor::Empty({g.crs(), cols}, x.dtype());
    Im2Col(x.data<scalar_t>(), g, col.data<scalar_t>());
    Tensor dw2 = dw.Reshape({g.k, g.crs()});
    Gemm(dyt, false, col, true, dw2, 1.0, 1.0);
    if (dx.defined()) {
      Tensor w2 = w.Reshape({g.k, g.crs()});
      Gemm(w2, true, dyt, false, col, 1.0, 0.0);  // reuse col as dcol
      Col2Im(col.data<scalar_t>(), g, dx.data<scalar_t>());
    }
  });
}

namespace {
// max(m, v) keeping the first maximum and the first NaN, as the general path does.
template <typename T>
inline void TakeIfGreater(T v, int32_t i, T& m, int32_t& mi) {
  bool take = v > m || (v != v && m == m);
  m = take ? v : m;
  mi = take ? i : mi;
}

// The common 2x2 window with stride 2 and no padding, written so that it vectorises.
template <typename T>
void MaxPool2x2(const T* xp, int64_t planes, int64_t h, int64_t w, int64_t p, int64_t q, T* yp, int32_t* ip) {
  ParallelFor(planes, 8, [&](int64_t b, int64_t e) {
    for (int64_t plane = b; plane < e; ++plane) {
      const T* src = xp + plane * h * w;
      T* dst = yp + plane * p * q;
      int32_t* idx = ip + plane * p * q;
      for (int64_t oy = 0; oy < p; ++oy) {
        const T* r0 = src + 2 * oy * w;
        const T* r1 = r0 + w;
        const int32_t base = static_cast<int32_t>(2 * oy * w);
        for (int64_t ox = 0; ox < q; ++ox) {
          T m = r0[2 * ox];
          const int32_t i0 = base + static_cast<int32_t>(2 * ox);
          int32_t mi = i0;
          TakeIfGreater(r0[2 * ox + 1], i0 + 1, m, mi);
          TakeIfGreater(r1[2 * ox], i0 + static_cast<int32_t>(w), m, mi);
          TakeIfGreater(r1[2 * ox + 1], i0 + static_cast<int32_t>(w) + 1, m, mi);
          dst[oy * q + ox] = m;
          idx[oy * q + ox] = mi;
        }
      }
    }
  });
}
}  // namespace

void MaxPool2d(const Tensor& x, const Pool2dParams& prm, Tensor& y, Tensor& indices) {
  TESSERA_DISPATCH_FLOAT(x.dtype(), "MaxPool2d", [&] {
    int64_t nc = x.dim(0) * x.dim(1), h = x.dim(2), w = x.dim(3), p = y.dim(2), q = y.dim(3);
    const scalar_t* xp = x.data<scalar_t>();
    scalar_t* yp = y.data<scalar_t>();
    int32_t* ip = indices.data<int32_t>();
    if (prm.kernel_h == 2 && prm.kernel_w == 2 && prm.stride_h == 2 && prm.stride_w == 2 && prm.pad_h == 0 &&
        prm.pad_w == 0) {
      MaxPool2x2(xp, nc, h, w, p, q, yp, ip);
      return;
    }
    ParallelFor(nc, 8, [&](int64_t b, int64_t e) {
      for (int64_t plane = b; plane < e; ++plane) {
        const scalar_t* src = xp + plane * h * w;
        for (int64_t oy = 0; oy < p; ++oy) {
          for (int64_t ox = 0; ox < q; ++ox) {
            scalar_t best = -std::numeric_limits<scalar_t>::infinity();
            int32_t best_i = -1;
            for (int64_t i = 0; i < prm.kernel_h; ++i) {
              int64_t iy = oy * prm.stride_h - prm.pad_h + i;
              if (iy < 0 || iy >= h) continue;
              for (int64_t j = 0; j < prm.kernel_w; ++j) {
                int64_t ix = ox * prm.stride_w - prm.pad_w + j;
                if (ix < 0 || ix >= w) continue;
                scalar_t v = src[iy * w + ix];
                if (best_i < 0) {
                  best = v;
                  best_i = static_cast<int32_t>(iy * w + ix);
                } else {
                  TakeIfGreater(v, static_cast<int32_t>(iy * w + ix), best, best_i);  // first max; first NaN
                }
              }
            }
            yp[(plane * p + oy) * q + ox] = best;
            ip[(plane * p + oy) * q + ox] = best_i;
          }
        }
      }
    });
  });
}

void MaxPool2dBackward(const Tensor& dy, const Tensor& indices, Tensor& dx) {
  TESSERA_DISPATCH_FLOAT(dy.dtype(), "MaxPool2dBackward", [&] {
    int64_t nc = dx.dim(0) * dx.dim(1), hw = dx.dim(2) * dx.dim(3), pq = dy.dim(2) * dy.dim(3);
    const scalar_t* g = dy.data<scalar_t>();
    const int32_t* ip = indices.data<int32_t>();
    scalar_t* d = dx.data<scalar_t>();
    ParallelFor(nc, 8, [&](int64_t b, int64_t e) {
      for (int64_t plane = b; plane < e; ++plane) {
        scalar_t* dst = d + plane * hw;
        std::fill(dst, dst + hw, scalar_t(0));
        for (int64_t i = 0; i < pq; ++i) dst[ip[plane * pq + i]] += g[plane * pq + i];
      }
    });
  });
}

}  // namespace tessera::cpu
