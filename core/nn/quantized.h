// int8 layers for serving: Linear and Conv2d with per-output-channel int8 weights and one
// calibrated scale for their input (post-training quantisation; `tessera store quantize` makes
// them, docs/model-store.md). Inference only: Backward() throws, and FlatParameters refuses them.
//
// Their parameters, by the names a weights file uses:
//   weight        i8  [out, in] or [out, in, k, k]: round(w / weight_scale[o]), in -127..127
//   bias          f32 [out]    (when the layer has one), unchanged
//   weight_scale  f32 [out]    max |w[o, ...]| / 127
//   input_scale   f32 [1]      max |x| over the calibration data / 127
// Forward quantises its input with input_scale, accumulates in int32, and scales each output
// channel by input_scale * weight_scale[o] (core/ops/cpu/int8.h). CPU only. A layer keeps oneDNN's
// primitives and its weights rearranged for them from its first forward on: a layer whose weights
// and scales are laid out anew starts over, but values changed in place are not seen.
#pragma once

#include "core/nn/layers.h"
#include "core/ops/cpu/int8.h"

namespace tessera::nn {

class QuantizedLinear : public Module {
 public:
  QuantizedLinear(int64_t in_features, int64_t out_features, bool bias);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;

 private:
  int64_t in_, out_;
  Parameter *weight_, *bias_ = nullptr, *weight_scale_, *input_scale_;
  cpu::int8::WeightCache cache_;  // primitives and rearranged weights, for the weights at cached_for_
  const void* cached_for_ = nullptr;
};

class QuantizedConv2d : public Module {
 public:
  QuantizedConv2d(int64_t in_channels, int64_t out_channels, int kernel_size, const Conv2dParams& params, bool bias);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;

 private:
  int64_t in_, out_;
  int kernel_;
  Conv2dParams params_;
  Parameter *weight_, *bias_ = nullptr, *weight_scale_, *input_scale_;
  cpu::int8::WeightCache cache_;
  const void* cached_for_ = nullptr;
};

// Replaces every Linear and Conv2d child of `net` with its int8 counterpart of the same sizes (no
// values: those come from a quantised weights file). Returns how many it replaced.
int QuantizeLayers(Sequential& net);

// Whether `m` is a layer QuantizeLayers replaces (calibration measures their inputs).
bool IsQuantizable(Module& m);

}  // namespace tessera::nn
