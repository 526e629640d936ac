#include "core/nn/quantized.h"

#include <vector>

#include "core/ops/cpu/int8.h"
#include "core/ops/ops.h"

namespace tessera::nn {
namespace {

// The int8 copy of `x`, quantised with the layer's input scale.
std::vector<int8_t> QuantizeInput(const Tensor& x, const Parameter& input_scale) {
  std::vector<int8_t> q(static_cast<size_t>(x.numel()));
  cpu::int8::Quantize(x.data<float>(), x.numel(), input_scale.value.data<float>()[0], q.data());
  return q;
}

// input_scale * weight_scale[o], the factor from the int32 sums back to f32.
std::vector<float> OutputScales(const Parameter& weight_scale, const Parameter& input_scale) {
  const float s = input_scale.value.data<float>()[0];
  const float* w = weight_scale.value.data<float>();
  std::vector<float> out(static_cast<size_t>(weight_scale.value.numel()));
  for (size_t o = 0; o < out.size(); ++o) out[o] = s * w[o];
  return out;
}

void RequireHostF32(const Module& m, const Tensor& x) {
  if (!x.defined() || !x.device().is_cpu() || x.dtype() != DType::kF32)
    TESSERA_THROW(ShapeError, m.Describe(), ": takes f32 input on the CPU (int8 layers run on the CPU only)");
}

// Drops what the cache holds when the weights are not the ones it was filled for.
void Refresh(cpu::int8::WeightCache& cache, const void*& cached_for, const Parameter& weight) {
  if (weight.value.raw_data() == cached_for) return;
  cache.Clear();
  cached_for = weight.value.raw_data();
}

[[noreturn]] void InferenceOnly(const Module& m) {
  TESSERA_THROW(Error, m.Describe(), ": int8 layers are for inference only; train the f32 model");
}

}  // namespace

QuantizedLinear::QuantizedLinear(int64_t in, int64_t out, bool bias) : Module("QuantizedLinear"), in_(in), out_(out) {
  if (in <= 0 || out <= 0) TESSERA_THROW(ValueError, "QuantizedLinear: sizes must be positive, got in=", in, " out=", out);
  weight_ = &AddParameter("weight", {out, in}, Init::Zeros(), DType::kI8);
  if (bias) bias_ = &AddParameter("bias", {out}, Init::Zeros());
  weight_scale_ = &AddParameter("weight_scale", {out}, Init::Ones());
  input_scale_ = &AddParameter("input_scale", {1}, Init::Ones());
}

std::string QuantizedLinear::Describe() const {
  return detail::StrCat("QuantizedLinear(in=", in_, ", out=", out_, ", bias=", bias_ ? "true" : "false", ", int8)");
}

Tensor QuantizedLinear::Forward(const Tensor& x) {
  RequireMaterialized(*weight_);
  RequireHostF32(*this, x);
  if (x.ndim() < 1 || x.dim(-1) != in_)
    TESSERA_THROW(ShapeError, Describe(), ": input of shape ", x.ShapeStr(), " does not end in ", in_);
  const Tensor& xc = x;
  const int64_t rows = xc.numel() / in_;
  Shape ys = xc.shape();
  ys.back() = out_;
  Tensor y = Tensor::Empty(ys);
  std::vector<int8_t> q = QuantizeInput(xc, *input_scale_);
  std::vector<float> scale = OutputScales(*weight_scale_, *input_scale_);
  Refresh(cache_, cached_for_, *weight_);
  cpu::int8::Linear(q.data(), rows, in_, weight_->value.data<int8_t>(), out_, scale.data(),
                    bias_ ? bias_->value.data<float>() : nullptr, y.data<float>(), &cache_);
  return y;
}

Tensor QuantizedLinear::Backward(const Tensor&) { InferenceOnly(*this); }

QuantizedConv2d::QuantizedConv2d(int64_t in, int64_t out, int k, const Conv2dParams& params, bool bias)
    : Module("QuantizedConv2d"), in_(in), out_(out), kernel_(k), params_(params) {
  if (in <= 0 || out <= 0 || k <= 0) TESSERA_THROW(ValueError, "QuantizedConv2d: channels and kernel must be positive");
  weight_ = &AddParameter("weight", {out, in, k, k}, Init::Zeros(), DType::kI8);
  if (bias) bias_ = &AddParameter("bias", {out}, Init::Zeros());
  weight_scale_ = &AddParameter("weight_scale", {out}, Init::Ones());
  input_scale_ = &AddParameter("input_scale", {1}, Init::Ones());
}

std::string QuantizedConv2d::Describe() const {
  return detail::StrCat("QuantizedConv2d(in=", in_, ", out=", out_, ", kernel=", kernel_, ", stride=", params_.stride_h,
                        ", padding=", params_.pad_h, ", int8)");
}

Tensor QuantizedConv2d::Forward(const Tensor& x) {
  RequireMaterialized(*weight_);
  RequireHostF32(*this, x);
  if (x.ndim() != 4 || x.dim(1) != in_)
    TESSERA_THROW(ShapeError, Describe(), ": input of shape ", x.ShapeStr(), " is not [N, ", in_, ", H, W]");
  const Tensor& xc = x;
  const Shape& ws = weight_->shape;
  Tensor y = Tensor::Empty(ops::Conv2dOutputShape(xc.shape(), ws, params_));
  std::vector<int8_t> q = QuantizeInput(xc, *input_scale_);
  std::vector<float> scale = OutputScales(*weight_scale_, *input_scale_);
  Refresh(cache_, cached_for_, *weight_);
  cpu::int8::Conv2d(q.data(), xc.shape(), weight_->value.data<int8_t>(), ws, params_, scale.data(),
                    bias_ ? bias_->value.data<float>() : nullptr, y.data<float>(), &cache_);
  return y;
}

Tensor QuantizedConv2d::Backward(const Tensor&) { InferenceOnly(*this); }

bool IsQuantizable(Module& m) { return dynamic_cast<Linear*>(&m) || dynamic_cast<Conv2d*>(&m); }

int QuantizeLayers(Sequential& net) {
  int replaced = 0;
  for (size_t i = 0; i < net.size(); ++i) {
    if (auto* l = dynamic_cast<Linear*>(&net[i])) {
      const Shape& ws = l->weight().shape;
      net.Replace(i, std::make_unique<QuantizedLinear>(ws[1], ws[0], l->bias() != nullptr));
      ++replaced;
    } else if (auto* c = dynamic_cast<Conv2d*>(&net[i])) {
      const Shape& ws = c->weight().shape;
      net.Replace(i, std::make_unique<QuantizedConv2d>(ws[1], ws[0], c->kernel_size(), c->params(), c->bias() != nullptr));
      ++replaced;
    } else if (auto* s = dynamic_cast<Sequential*>(&net[i])) {
      replaced += QuantizeLayers(*s);
    }
  }
  return replaced;
}

}  // namespace tessera::nn
