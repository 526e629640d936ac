// Elementwise math shared by the CPU and CUDA kernels, so that each rule is written once.
#pragma once

#include <cmath>

#include "core/dtype.h"  // TESSERA_HD
#include "core/ops/params.h"

namespace tessera::fn {

#if !defined(__CUDA_ARCH__)
// Host code: take the float overloads, so f32 math stays in f32 (as on the device).
using std::exp;
using std::sqrt;
using std::tanh;
#endif

template <typename T>
TESSERA_HD inline T Relu(T x) { return x > T(0) ? x : T(0); }
template <typename T>
TESSERA_HD inline T ReluGrad(T x, T dy) { return x > T(0) ? dy : T(0); }

// GELU, tanh approximation: 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi).
template <typename T>
TESSERA_HD inline T Gelu(T x) {
  const T k = T(0.7978845608028654);
  T u = k * (x + T(0.044715) * x * x * x);
  return T(0.5) * x * (T(1) + tanh(u));
}
template <typename T>
TESSERA_HD inline T GeluGrad(T x, T dy) {
  const T k = T(0.7978845608028654);
  T u = k * (x + T(0.044715) * x * x * x);
  T t = tanh(u);
  T du = k * (T(1) + T(3) * T(0.044715) * x * x);
  return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du);
}

template <typename T>
TESSERA_HD inline T ApplyUnary(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::kRelu: return Relu(x);
    case UnaryOp::kGelu: return Gelu(x);
    case UnaryOp::kNeg: return -x;
    case UnaryOp::kExp: return exp(x);
    case UnaryOp::kSquare: return x * x;
  }
  return x;
}
template <typename T>
TESSERA_HD inline T ApplyUnaryGrad(UnaryOp op, T x, T dy) {
  switch (op) {
    case UnaryOp::kRelu: return ReluGrad(x, dy);
    case UnaryOp::kGelu: return GeluGrad(x, dy);
    case UnaryOp::kNeg: return -dy;
    case UnaryOp::kExp: return dy * exp(x);
    case UnaryOp::kSquare: return dy * T(2) * x;
  }
  return dy;
}
template <typename T>
TESSERA_HD inline T ApplyBinary(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::kAdd: return a + b;
    case BinaryOp::kSub: return a - b;
    case BinaryOp::kMul: return a * b;
    case BinaryOp::kDiv: return a / b;
  }
  return a;
}

// ---- optimizer rules (PyTorch's torch.optim semantics) ----

// SGD: g += wd p; buf = first ? g : momentum buf + (1 - dampening) g;
// step = nesterov ? g + momentum buf : buf; p -= lr step.
template <typename T>
TESSERA_HD inline void SgdUpdate(T& p, T g, T* buf, const SgdStepParams& h) {
  if (h.weight_decay != 0) g += T(h.weight_decay) * p;
  if (h.momentum != 0) {
    T b = h.first_step ? g : T(h.momentum) * *buf + (T(1) - T(h.dampening)) * g;
    *buf = b;
    g = h.nesterov ? g + T(h.momentum) * b : b;
  }
  p -= T(h.lr) * g;
}

// Adam / AdamW: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps), step_size = lr / bc1. Adam adds wd p to g (L2); AdamW multiplies
// p by (1 - lr wd) first (decoupled).
template <typename T>
TESSERA_HD inline void AdamUpdate(T& p, T g, T& m, T& v, const AdamStepParams& h) {
  if (h.weight_decay != 0) {
    if (h.decoupled) p *= T(1) - T(h.lr) * T(h.weight_decay);
    else g += T(h.weight_decay) * p;
  }
  m = T(h.beta1) * m + (T(1) - T(h.beta1)) * g;
  v = T(h.beta2) * v + (T(1) - T(h.beta2)) * g * g;
  T denom = sqrt(v) / T(h.bias_correction2_sqrt) + T(h.eps);
  p -= T(h.step_size) * m / denom;
}

// RMSprop: sq = a sq + (1 - a) g^2; centered: ga = a ga + (1 - a) g, avg = sqrt(sq - ga^2) + eps,
// else avg = sqrt(sq) + eps; momentum: buf = mom buf + g / avg, p -= lr buf; else p -= lr g / avg.
template <typename T>
TESSERA_HD inline void RmspropUpdate(T& p, T g, T& sq, T* ga, T* buf, const RmspropStepParams& h) {
  if (h.weight_decay != 0) g += T(h.weight_decay) * p;
  sq = T(h.alpha) * sq + (T(1) - T(h.alpha)) * g * g;
  T avg;
  if (h.centered) {
    *ga = T(h.alpha) * *ga + (T(1) - T(h.alpha)) * g;
    avg = sqrt(sq - *ga * *ga) + T(h.eps);
  } else {
    avg = sqrt(sq) + T(h.eps);
  }
  if (h.momentum > 0) {
    *buf = T(h.momentum) * *buf + g / avg;
    p -= T(h.lr) * *buf;
  } else {
    p -= T(h.lr) * g / avg;
  }
}

}  // namespace tessera::fn
