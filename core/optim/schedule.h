// Learning-rate schedules: the rate for a 0-based optimizer step.
#pragma once

#include <cstdint>
#include <memory>

namespace tessera::optim {

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual double At(int64_t step) const = 0;
};

class ConstantLr : public LrSchedule {
 public:
  explicit ConstantLr(double lr) : lr_(lr) {}
  double At(int64_t) const override { return lr_; }

 private:
  double lr_;
};

// lr * gamma^(step / step_size), like torch.optim.lr_scheduler.StepLR stepped every step.
class StepLr : public LrSchedule {
 public:
  StepLr(double lr, int64_t step_size, double gamma);
  double At(int64_t step) const override;

 private:
  double lr_;
  int64_t step_size_;
  double gamma_;
};

// Linear warm-up from lr/warmup to lr over `warmup` steps, then cosine decay to min_lr at
// `total` steps; min_lr after that.
class CosineLr : public LrSchedule {
 public:
  CosineLr(double lr, int64_t warmup, int64_t total, double min_lr = 0.0);
  double At(int64_t step) const override;

 private:
  double lr_, min_lr_;
  int64_t warmup_, total_;
};

}  // namespace tessera::optim
