#include "core/optim/optimizer.h"

#include <cmath>

#include "core/ops/ops.h"

namespace tessera::optim {

Optimizer::Optimizer(Tensor params, Tensor grads) : params_(std::move(params)), grads_(std::move(grads)) {
  if (!params_.defined() || !grads_.defined())
    TESSERA_THROW(ValueError, "optimizer: params and grads must be defined tensors");
  if (params_.ndim() != 1 || grads_.ndim() != 1 || params_.numel() != grads_.numel())
    TESSERA_THROW(ShapeError, "optimizer: params ", params_.Describe(), " and grads ", grads_.Describe(),
                  " must be 1-D slices of the same length");
  if (params_.device() != grads_.device() || params_.dtype() != grads_.dtype())
    TESSERA_THROW(ShapeError, "optimizer: params ", params_.Describe(), " and grads ", grads_.Describe(),
                  " must share device and dtype");
}

Tensor& Optimizer::AddState(const std::string& name) {
  state_.emplace_back(name, Tensor::Zeros(params_.shape(), params_.dtype(), params_.device()));
  return state_.back().second;
}

Sgd::Sgd(Tensor params, Tensor grads, SgdOptions o) : Optimizer(std::move(params), std::move(grads)), o_(o) {
  if (o.momentum < 0 || o.weight_decay < 0)
    TESSERA_THROW(ValueError, "sgd: momentum and weight_decay must be >= 0");
  if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
    TESSERA_THROW(ValueError, "sgd: nesterov momentum requires momentum > 0 and dampening = 0");
  if (o.momentum != 0) buf_ = AddState("momentum_buffer");
}

void Sgd::Step(double lr) {
  SgdStepParams p;
  p.lr = lr;
  p.momentum = o_.momentum;
  p.dampening = o_.dampening;
  p.weight_decay = o_.weight_decay;
  p.nesterov = o_.nesterov;
  p.first_step = step_ == 0;
  ops::SgdStep(params_, grads_, buf_, p);
  ++step_;
}

Adam::Adam(Tensor params, Tensor grads, AdamOptions o, bool decoupled)
    : Optimizer(std::move(params), std::move(grads)), o_(o), decoupled_(decoupled) {
  if (o.beta1 < 0 || o.beta1 >= 1 || o.beta2 < 0 || o.beta2 >= 1)
    TESSERA_THROW(ValueError, name(), ": betas must be in [0, 1), got (", o.beta1, ", ", o.beta2, ")");
  if (o.eps < 0 || o.weight_decay < 0)
    TESSERA_THROW(ValueError, name(), ": eps and weight_decay must be >= 0");
  m_ = AddState("exp_avg");
  v_ = AddState("exp_avg_sq");
}

void Adam::Step(double lr) {
  ++step_;
  AdamStepParams p;
  p.lr = lr;
  p.beta1 = o_.beta1;
  p.beta2 = o_.beta2;
  p.eps = o_.eps;
  p.weight_decay = o_.weight_decay;
  p.decoupled = decoupled_;
  double t = static_cast<double>(step_);
  p.step_size = lr / (1.0 - std::pow(o_.beta1, t));
  p.bias_correction2_sqrt = std::sqrt(1.0 - std::pow(o_.beta2, t));
  ops::AdamStep(params_, grads_, m_, v_, p);
}

Rmsprop::Rmsprop(Tensor params, Tensor grads, RmspropOptions o)
    : Optimizer(std::move(params), std::move(grads)), o_(o) {
  if (o.alpha < 0 || o.eps < 0 || o.momentum < 0 || o.weight_decay < 0)
    TESSERA_THROW(ValueError, "rmsprop: alpha, eps, momentum and weight_decay must be >= 0");
  sq_ = AddState("square_avg");
  if (o.momentum > 0) buf_ = AddState("momentum_buffer");
  if (o.centered) ga_ = AddState("grad_avg");
}

void Rmsprop::Step(double lr) {
  RmspropStepParams p;
  p.lr = lr;
  p.alpha = o_.alpha;
  p.eps = o_.eps;
  p.weight_decay = o_.weight_decay;
  p.momentum = o_.momentum;
  p.centered = o_.centered;
  ops::RmspropStep(params_, grads_, sq_, ga_, buf_, p);
  ++step_;
}

double ClipGradNorm(Tensor& grads, double max_norm, double sum_of_squares) {
  if (!(max_norm > 0)) TESSERA_THROW(ValueError, "ClipGradNorm: max_norm must be > 0, got ", max_norm);
  double norm = std::sqrt(sum_of_squares);
  if (norm > max_norm) ops::Scale(grads, max_norm / (norm + 1e-6));
  return norm;
}

double ClipGradNorm(Tensor& grads, double max_norm) {
  return ClipGradNorm(grads, max_norm, ops::SumSquares(grads));
}

}  // namespace tessera::optim
