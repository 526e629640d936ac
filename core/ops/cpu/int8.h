// int8 inference kernels on the CPU: symmetric quantisation (zero point 0) of activations and
// weights, products accumulated exactly in int32, then scaled back to f32 per output channel:
//
//   y[.., k] = (input_scale * weight_scale[k]) * sum(xq * wq) + bias[k]
//
// Through oneDNN's s8 primitives when tessera is built with it and the machine has them; through
// the reference loops here otherwise. Both accumulate the same integers, so they agree to float
// rounding of the final scale (tests/core/quantized_test.cc holds them to it).
#pragma once

#include <cstdint>
#include <memory>

#include "core/ops/params.h"
#include "core/tensor.h"

namespace tessera::cpu::int8 {

constexpr int kMax = 127;  // symmetric: -127..127 (never -128)

// The scale that maps [-max_abs, max_abs] onto [-127, 127] (1 when max_abs is 0 or not finite).
float ScaleFor(float max_abs);
// q = clamp(round(x / scale), -127, 127), rounding half to even.
void Quantize(const float* x, int64_t n, float scale, int8_t* q);
// Per output channel: w is [out, per_out] row-major; scale[k] = ScaleFor(max |w[k, :]|).
void QuantizeRows(const float* w, int64_t out, int64_t per_out, int8_t* q, float* scale);

// What a layer keeps between calls: its weights in the layouts oneDNN's primitives want, made at
// the first call that needs each layout. One per layer, used by one thread at a time; the layer's
// weights must not change while it holds them (Clear() after they do).
class WeightCache {
 public:
  struct Entries;
  void Clear() { entries_.reset(); }
  std::shared_ptr<Entries>& entries() { return entries_; }

 private:
  std::shared_ptr<Entries> entries_;
};

// x [m, c] s8, w [k, c] s8 (Linear's layout), scale [k], bias [k] or null -> y [m, k] f32.
// `cache` may be null (the weights are then rearranged on every call).
void Linear(const int8_t* x, int64_t m, int64_t c, const int8_t* w, int64_t k, const float* scale,
            const float* bias, float* y, WeightCache* cache = nullptr);
// x NCHW s8 of shape xs, w KCRS s8 of shape ws -> y NKPQ f32 (shape from Conv2dOutputShape).
void Conv2d(const int8_t* x, const Shape& xs, const int8_t* w, const Shape& ws, const Conv2dParams& p,
            const float* scale, const float* bias, float* y, WeightCache* cache = nullptr);

// The reference loops alone (what the tests compare oneDNN with).
void LinearReference(const int8_t* x, int64_t m, int64_t c, const int8_t* w, int64_t k, const float* scale,
                     const float* bias, float* y);
void Conv2dReference(const int8_t* x, const Shape& xs, const int8_t* w, const Shape& ws, const Conv2dParams& p,
                     const float* scale, const float* bias, float* y);

// Whether Linear and Conv2d run on oneDNN here ("onednn") or the reference loops ("reference").
const char* Backend();

}  // namespace tessera::cpu::int8
