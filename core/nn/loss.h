// Losses. Forward returns the mean loss as a one-element tensor; Backward returns dL/dinput for a
// loss scaled by `scale` (1 for plain training; 1/k for k accumulation micro-steps).
#pragma once

#include "core/tensor.h"

namespace tessera::nn {

// Softmax cross-entropy over logits [N, C] with integer labels [N] (i32), like
// torch.nn.CrossEntropyLoss with mean reduction. A sequence model's logits [N, T, C] with labels
// [N, T] are N * T predictions, and the loss is their mean.
class CrossEntropyLoss {
 public:
  Tensor Forward(const Tensor& logits, const Tensor& labels);
  Tensor Backward(double scale = 1.0);
  const Tensor& probs() const { return probs_; }

 private:
  Tensor probs_, labels_;
  Shape shape_;  // of the logits, for the gradient
};

// Mean squared error, like torch.nn.MSELoss with mean reduction.
class MSELoss {
 public:
  Tensor Forward(const Tensor& pred, const Tensor& target);
  Tensor Backward(double scale = 1.0);

 private:
  Tensor diff_;
};

}  // namespace tessera::nn
