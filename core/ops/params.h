// Plain parameter structs shared by the op front-end, CPU kernels and CUDA kernels.
#pragma once

#include <cstdint>

namespace tessera {

enum class UnaryOp : uint8_t { kRelu, kGelu, kNeg, kExp, kSquare };
enum class BinaryOp : uint8_t { kAdd, kSub, kMul, kDiv };
enum class ReduceOp : uint8_t { kSum, kMean, kMax };

struct Conv2dParams {
  int stride_h = 1, stride_w = 1;
  int pad_h = 0, pad_w = 0;
};

struct Pool2dParams {
  int kernel_h = 2, kernel_w = 2;
  int stride_h = 2, stride_w = 2;
  int pad_h = 0, pad_w = 0;
};

// Hyper-parameters of one optimizer step, resolved on the host (bias corrections included) so
// that the CPU and CUDA kernels apply the same per-element rule (see ops/functors.h).
struct SgdStepParams {
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  bool first_step = false;  // the momentum buffer is initialised to the gradient
};
struct AdamStepParams {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool decoupled = false;    // AdamW: p *= 1 - lr * wd before the Adam update
  double step_size = 0;             // lr / (1 - beta1^t)
  double bias_correction2_sqrt = 1;  // sqrt(1 - beta2^t)
};
struct RmspropStepParams {
  double lr = 0, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0;
  bool centered = false;
};

}  // namespace tessera
