#include "core/nn/layers.h"

#include "core/ops/ops.h"

namespace tessera::nn {
// ---- Linear ----
Linear::Linear(int64_t in, int64_t out, bool bias) : Module("Linear"), in_(in), out_(out) {
  if (in <= 0 || out <= 0) TESSERA_THROW(ValueError, "Linear: sizes must be positive, got in=", in, " out=", out);
  weight_ = &AddParameter("weight", {out, in}, Init::KaimingUniformA5(in));
  if (bias) bias_ = &AddParameter("bias", {out}, Init::KaimingUniformA5(in));
}

std::string Linear::Describe() const {
  return detail::StrCat("Linear(in=", in_, ", out=", out_, ", bias=", bias_ ? "true" : "false", ")");
}

Tensor Linear::Forward(const Tensor& x) {
  RequireMaterialized(*weight_);
  if (!x.defined() || x.ndim() < 1 || x.dim(-1) != in_)
    TESSERA_THROW(ShapeError, Describe(), ": input ", x.defined() ? x.Describe() : "undefined",
                  " must have last dimension ", in_);
  Tensor x2 = x.Reshape({-1, in_});
  Tensor y = Tensor::Empty({x2.dim(0), out_}, x.dtype(), x.device());
  ops::Gemm(x2, false, weight_->value, true, y);
  if (bias_) ops::AddBias(y, bias_->value);
  x_ = training() ? x2 : Tensor();
  x_shape_ = x.shape();
  Shape ys = x.shape();
  ys.back() = out_;
  return y.Reshape(ys);
}

Tensor Linear::Backward(const Tensor& dy) {
  RequireSaved(x_);
  Tensor dy2 = dy.Reshape({-1, out_});
  if (dy2.dim(0) != x_.dim(0))
    TESSERA_THROW(ShapeError, Describe(), ": gradient ", dy.Describe(), " does not match the input's ",
                  x_.dim(0), " rows");
  ops::Gemm(dy2, true, x_, false, weight_->grad, 1.0, 1.0);  // dW += dy^T x
  NotifyGradReady(*weight_);
  if (bias_) {
    ops::SumRows(dy2, bias_->grad, /*accumulate=*/true);
    NotifyGradReady(*bias_);
  }
  Tensor dx;
  if (needs_input_grad()) {
    dx = Tensor::Empty({dy2.dim(0), in_}, dy.dtype(), dy.device());
    ops::Gemm(dy2, false, weight_->value, false, dx);  // dx = dy W
    dx = dx.Reshape(x_shape_);
  }
  x_ = Tensor();
  return dx;
}

// ---- Conv2d ----
Conv2d::Conv2d(int64_t in, int64_t out, int k, int stride, int padding, bool bias)
    : Module("Conv2d"), in_(in), out_(out), kernel_(k) {
  if (in <= 0 || out <= 0 || k <= 0 || stride <= 0 || padding < 0)
    TESSERA_THROW(ValueError, "Conv2d: channels and kernel must be positive, stride >= 1, padding >= 0");
  params_.stride_h = params_.stride_w = stride;
  params_.pad_h = params_.pad_w = padding;
  int64_t fan_in = in * k * k;
  weight_ = &AddParameter("weight", {out, in, k, k}, Init::KaimingUniformA5(fan_in));
  if (bias) bias_ = &AddParameter("bias", {out}, Init::KaimingUniformA5(fan_in));
}

std::string Conv2d::Describe() const {
  return detail::StrCat("Conv2d(in=", in_, ", out=", out_, ", kernel=", kernel_, ", stride=",
                        params_.stride_h, ", padding=", params_.pad_h, ", bias=", bias_ ? "true" : "false", ")");
}

Tensor Conv2d::Forward(const Tensor& x) {
  RequireMaterialized(*weight_);
  if (!x.defined() || x.ndim() != 4 || x.dim(1) != in_)
    TESSERA_THROW(ShapeError, Describe(), ": input ", x.defined() ? x.Describe() : "undefined",
                  " must be [N, ", in_, ", H, W]");
  Tensor y = ops::Conv2d(x, weight_->value, bias_ ? bias_->value : Tensor(), params_);
  x_ = training() ? x : Tensor();
  return y;
}

Tensor Conv2d::Backward(const Tensor& dy) {
  RequireSaved(x_);
  Tensor dx;
  ops::Conv2dBackward(x_, weight_->value, dy, params_, needs_input_grad() ? &dx : nullptr,
                      weight_->grad, bias_ ? &bias_->grad : nullptr);
  NotifyGradReady(*weight_);
  if (bias_) NotifyGradReady(*bias_);
  x_ = Tensor();
  return dx;
}

// ---- MaxPool2d ----
MaxPool2d::MaxPool2d(int k, int stride, int padding) : Module("MaxPool2d") {
  params_.kernel_h = params_.kernel_w = k;
  params_.stride_h = params_.stride_w = stride > 0 ? stride : k;
  params_.pad_h = params_.pad_w = padding;
}

std::string MaxPool2d::Describe() const {
  return detail::StrCat("MaxPool2d(kernel=", params_.kernel_h, ", stride=", params_.stride_h,
                        ", padding=", params_.pad_h, ")");
}

Tensor MaxPool2d::Forward(const Tensor& x) {
  Tensor idx;
  Tensor y = ops::MaxPool2d(x, params_, training() ? &idx : nullptr);
  indices_ = idx;
  x_shape_ = x.shape();
  return y;
}

Tensor MaxPool2d::Backward(const Tensor& dy) {
  RequireSaved(indices_);
  Tensor dx = ops::MaxPool2dBackward(dy, indices_, x_shape_);
  indices_ = Tensor();
  return dx;
}

// ---- activations ----
Tensor ReLU::Forward(const Tensor& x) {
  Tensor y = ops::Relu(x);
  y_ = training() ? y : Tensor();
  return y;
}

Tensor ReLU::Backward(const Tensor& dy) {
  RequireSaved(y_);
  // relu'(x) = [x > 0] = [y > 0]: the output serves as the saved input.
  Tensor dx = ops::UnaryBackward(UnaryOp::kRelu, y_, dy);
  y_ = Tensor();
  return dx;
}

Tensor GELU::Forward(const Tensor& x) {
  x_ = training() ? x : Tensor();
  return ops::Gelu(x);
}

Tensor GELU::Backward(const Tensor& dy) {
  RequireSaved(x_);
  Tensor dx = ops::UnaryBackward(UnaryOp::kGelu, x_, dy);
  x_ = Tensor();
  return dx;
}

// ---- Dropout ----
Dropout::Dropout(double p) : Module("Dropout"), p_(p) {
  if (!(p >= 0.0 && p < 1.0)) TESSERA_THROW(ValueError, "Dropout: probability must be in [0, 1), got ", p);
}

std::string Dropout::Describe() const { return detail::StrCat("Dropout(p=", p_, ")"); }

Tensor Dropout::Forward(const Tensor& x) {
  if (!training() || p_ == 0.0) {
    saved_ = training();
    last_offset_ = ~0ull;
    return x;
  }
  if (has_position_) {
    const uint64_t row = x.ndim() >= 1 && x.dim(0) > 0 ? static_cast<uint64_t>(x.numel() / x.dim(0)) : 0;
    last_offset_ = position_ * row;
    has_position_ = false;  // one position per forward
  } else {
    last_offset_ = offset_;
    offset_ += (static_cast<uint64_t>(x.numel()) + 3) / 4 * 4;
  }
  saved_ = true;
  return ops::Dropout(x, p_, seed_, last_offset_);
}

Tensor Dropout::Backward(const Tensor& dy) {
  if (!saved_) TESSERA_THROW(Error, Describe(), ": Backward() called without a training-mode Forward() first");
  saved_ = false;
  if (p_ == 0.0 || last_offset_ == ~0ull) return dy;
  return ops::Dropout(dy, p_, seed_, last_offset_);  // same mask, same scale
}

// ---- LayerNorm ----
LayerNorm::LayerNorm(int64_t dim, double eps) : Module("LayerNorm"), dim_(dim), eps_(eps) {
  if (dim <= 0) TESSERA_THROW(ValueError, "LayerNorm: dim must be positive, got ", dim);
  gamma_ = &AddParameter("weight", {dim}, Init::Ones());
  beta_ = &AddParameter("bias", {dim}, Init::Zeros());
}

std::string LayerNorm::Describe() const { return detail::StrCat("LayerNorm(dim=", dim_, ", eps=", eps_, ")"); }

Tensor LayerNorm::Forward(const Tensor& x) {
  RequireMaterialized(*gamma_);
  if (!x.defined() || x.ndim() < 1 || x.dim(-1) != dim_)
    TESSERA_THROW(ShapeError, Describe(), ": input ", x.defined() ? x.Describe() : "undefined",
                  " must have last dimension ", dim_);
  Tensor mean, rstd;
  Tensor y = ops::LayerNorm(x, gamma_->value, beta_->value, eps_, &mean, &rstd);
  if (training()) {
    x_ = x;
    mean_ = mean;
    rstd_ = rstd;
  }
  return y;
}

Tensor LayerNorm::Backward(const Tensor& dy) {
  RequireSaved(x_);
  Tensor dx = ops::LayerNormBackward(x_, gamma_->value, mean_, rstd_, dy, gamma_->grad, beta_->grad);
  NotifyGradReady(*gamma_);
  NotifyGradReady(*beta_);
  x_ = mean_ = rstd_ = Tensor();
  return dx;
}

// ---- Embedding ----
Embedding::Embedding(int64_t num, int64_t dim) : Module("Embedding"), num_(num), dim_(dim) {
  if (num <= 0 || dim <= 0) TESSERA_THROW(ValueError, "Embedding: sizes must be positive");
  weight_ = &AddParameter("weight", {num, dim}, Init::Normal(0.0, 1.0));
}

std::string Embedding::Describe() const { return detail::StrCat("Embedding(num=", num_, ", dim=", dim_, ")"); }

Tensor Embedding::Forward(const Tensor& ids) {
  RequireMaterialized(*weight_);
  Tensor y = ops::Embedding(weight_->value, ids);
  ids_ = training() ? ids : Tensor();
  return y;
}

Tensor Embedding::Backward(const Tensor& dy) {
  RequireSaved(ids_);
  ops::EmbeddingBackward(ids_, dy, weight_->grad);
  NotifyGradReady(*weight_);
  ids_ = Tensor();
  return Tensor();
}

// ---- Flatten ----
Tensor Flatten::Forward(const Tensor& x) {
  if (!x.defined() || x.ndim() < 1) TESSERA_THROW(ShapeError, "Flatten: input needs a batch dimension");
  x_shape_ = x.shape();
  return x.Reshape({x.dim(0), -1});
}

Tensor Flatten::Backward(const Tensor& dy) {
  if (!dy.defined()) return dy;
  return dy.Reshape(x_shape_);
}

}  // namespace tessera::nn
