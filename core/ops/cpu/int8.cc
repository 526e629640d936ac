#include "core/ops/cpu/int8.h"

#include <algorithm>
#include <cmath>

#include "core/ops/cpu/cpu_kernels.h"
#include "core/ops/ops.h"
#include "tessera/config.h"

namespace tessera::cpu::int8 {

float ScaleFor(float max_abs) {
  return max_abs > 0.0f && std::isfinite(max_abs) ? max_abs / static_cast<float>(kMax) : 1.0f;
}

void Quantize(const float* x, int64_t n, float scale, int8_t* q) {
  const float inv = 1.0f / scale, lo = -static_cast<float>(kMax), hi = static_cast<float>(kMax);
  // Written so the compiler vectorises it (every activation of every layer goes through here):
  // clamp by comparisons (NaN, which a finite network never makes, ends up as -127), then round
  // half to even in the default rounding mode.
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i] * inv;
    v = v > lo ? v : lo;
    v = v < hi ? v : hi;
    q[i] = static_cast<int8_t>(static_cast<int32_t>(std::nearbyint(v)));
  }
}

void QuantizeRows(const float* w, int64_t out, int64_t per_out, int8_t* q, float* scale) {
  for (int64_t k = 0; k < out; ++k) {
    const float* row = w + k * per_out;
    float m = 0.0f;
    for (int64_t j = 0; j < per_out; ++j) m = std::max(m, std::fabs(row[j]));
    scale[k] = ScaleFor(m);
    Quantize(row, per_out, scale[k], q + k * per_out);
  }
}

void LinearReference(const int8_t* x, int64_t m, int64_t c, const int8_t* w, int64_t k, const float* scale,
                     const float* bias, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    const int8_t* xr = x + i * c;
    for (int64_t o = 0; o < k; ++o) {
      const int8_t* wr = w + o * c;
      int32_t acc = 0;
      for (int64_t j = 0; j < c; ++j) acc += static_cast<int32_t>(xr[j]) * static_cast<int32_t>(wr[j]);
      y[i * k + o] = scale[o] * static_cast<float>(acc) + (bias ? bias[o] : 0.0f);
    }
  }
}

void Conv2dReference(const int8_t* x, const Shape& xs, const int8_t* w, const Shape& ws, const Conv2dParams& p,
                     const float* scale, const float* bias, float* y) {
  const Shape ys = ops::Conv2dOutputShape(xs, ws, p);
  const int64_t n = xs[0], c = xs[1], h = xs[2], wd = xs[3], k = ws[0], r = ws[2], s = ws[3];
  const int64_t oh = ys[2], ow = ys[3];
  for (int64_t b = 0; b < n; ++b)
    for (int64_t o = 0; o < k; ++o)
      for (int64_t py = 0; py < oh; ++py)
        for (int64_t px = 0; px < ow; ++px) {
          int32_t acc = 0;
          for (int64_t ci = 0; ci < c; ++ci)
            for (int64_t dy = 0; dy < r; ++dy) {
              const int64_t iy = py * p.stride_h - p.pad_h + dy;
              if (iy < 0 || iy >= h) continue;
              for (int64_t dx = 0; dx < s; ++dx) {
                const int64_t ix = px * p.stride_w - p.pad_w + dx;
                if (ix < 0 || ix >= wd) continue;
                acc += static_cast<int32_t>(x[((b * c + ci) * h + iy) * wd + ix]) *
                       static_cast<int32_t>(w[((o * c + ci) * r + dy) * s + dx]);
              }
            }
          y[((b * k + o) * oh + py) * ow + px] = scale[o] * static_cast<float>(acc) + (bias ? bias[o] : 0.0f);
        }
}

void Linear(const int8_t* x, int64_t m, int64_t c, const int8_t* w, int64_t k, const float* scale,
            const float* bias, float* y, WeightCache* cache) {
  if (!OneDnnInt8Linear(x, m, c, w, k, scale, bias, y, cache)) LinearReference(x, m, c, w, k, scale, bias, y);
}

void Conv2d(const int8_t* x, const Shape& xs, const int8_t* w, const Shape& ws, const Conv2dParams& p,
            const float* scale, const float* bias, float* y, WeightCache* cache) {
  if (!OneDnnInt8Conv2d(x, xs, w, ws, p, scale, bias, y, cache)) Conv2dReference(x, xs, w, ws, p, scale, bias, y);
}

const char* Backend() { return OneDnnInt8Available() ? "onednn" : "reference"; }

}  // namespace tessera::cpu::int8

#if !TESSERA_USE_ONEDNN
namespace tessera::cpu {
bool OneDnnInt8Available() { return false; }
bool OneDnnInt8Linear(const int8_t*, int64_t, int64_t, const int8_t*, int64_t, const float*, const float*, float*,
                      int8::WeightCache*) {
  return false;
}
bool OneDnnInt8Conv2d(const int8_t*, const Shape&, const int8_t*, const Shape&, const Conv2dParams&, const float*,
                      const float*, float*, int8::WeightCache*) {
  return false;
}
}  // namespace tessera::cpu
#endif
