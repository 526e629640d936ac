// Optimizers with PyTorch's update rules (torch.optim.SGD, RMSprop, Adam, AdamW), so a recipe
// ported from PyTorch follows the same trajectory.
//
// An optimizer works on one contiguous slice of a flat parameter buffer and the matching slice of
// the gradient buffer: the whole buffer on one rank, or the rank's shard under ZeRO. It owns its
// state tensors (same length as the slice, same device and dtype), named as in PyTorch's
// state_dict ("exp_avg", "exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg") so that
// checkpoints can store them under those names.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace tessera::optim {

class Optimizer {
 public:
  // params and grads: 1-D tensors of equal length on the same device (views into flat buffers).
  Optimizer(Tensor params, Tensor grads);
  virtual ~Optimizer() = default;

  // One update with learning rate lr (the schedule is the caller's). Increments step_count().
  virtual void Step(double lr) = 0;
  virtual std::string name() const = 0;

  int64_t step_count() const { return step_; }
  void set_step_count(int64_t step) { step_ = step; }
  // The state tensors by name; a checkpoint saves and restores these in place.
  std::vector<std::pair<std::string, Tensor>> State() const { return state_; }
  const Tensor& params() const { return params_; }
  const Tensor& grads() const { return grads_; }

 protected:
  Tensor& AddState(const std::string& name);  // zero-initialised, like params
  Tensor params_, grads_;
  int64_t step_ = 0;
  std::vector<std::pair<std::string, Tensor>> state_;
};

struct SgdOptions {
  double momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
};
class Sgd : public Optimizer {
 public:
  Sgd(Tensor params, Tensor grads, SgdOptions options = {});
  void Step(double lr) override;
  std::string name() const override { return "sgd"; }

 private:
  SgdOptions o_;
  Tensor buf_;
};

struct AdamOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
};
// Adam with L2 weight decay added to the gradient (torch.optim.Adam).
class Adam : public Optimizer {
 public:
  Adam(Tensor params, Tensor grads, AdamOptions options = {}, bool decoupled = false);
  void Step(double lr) override;
  std::string name() const override { return decoupled_ ? "adamw" : "adam"; }

 private:
  AdamOptions o_;
  bool decoupled_;
  Tensor m_, v_;
};
// AdamW: decoupled weight decay, default 0.01 (torch.optim.AdamW).
class AdamW : public Adam {
 public:
  static AdamOptions Defaults() {
    AdamOptions o;
    o.weight_decay = 0.01;
    return o;
  }
  AdamW(Tensor params, Tensor grads, AdamOptions options = Defaults())
      : Adam(std::move(params), std::move(grads), options, /*decoupled=*/true) {}
};

struct RmspropOptions {
  double alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0;
  bool centered = false;
};
class Rmsprop : public Optimizer {
 public:
  Rmsprop(Tensor params, Tensor grads, RmspropOptions options = {});
  void Step(double lr) override;
  std::string name() const override { return "rmsprop"; }

 private:
  RmspropOptions o_;
  Tensor sq_, ga_, buf_;
};

// Global L2 norm of the gradients; if above max_norm, scales them by max_norm / (norm + 1e-6)
// (torch.nn.utils.clip_grad_norm_). `sum_of_squares` is this rank's sum over `grads`; pass the
// all-reduced sum under data or tensor parallelism. Returns the norm before clipping.
double ClipGradNorm(Tensor& grads, double max_norm, double sum_of_squares);
double ClipGradNorm(Tensor& grads, double max_norm);

}  // namespace tessera::optim
