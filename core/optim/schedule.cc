#include "core/optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace tessera::optim {

StepLr::StepLr(double lr, int64_t step_size, double gamma) : lr_(lr), step_size_(step_size), gamma_(gamma) {
  if (step_size <= 0) TESSERA_THROW(ValueError, "StepLr: step_size must be positive, got ", step_size);
}

double StepLr::At(int64_t step) const {
  return lr_ * std::pow(gamma_, static_cast<double>(std::max<int64_t>(step, 0) / step_size_));
}

CosineLr::CosineLr(double lr, int64_t warmup, int64_t total, double min_lr)
    : lr_(lr), min_lr_(min_lr), warmup_(warmup), total_(total) {
  if (warmup < 0 || total <= 0 || warmup > total)
    TESSERA_THROW(ValueError, "CosineLr: need 0 <= warmup <= total and total > 0, got warmup=", warmup,
                  " total=", total);
}

double CosineLr::At(int64_t step) const {
  if (step < warmup_) return lr_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
  if (total_ == warmup_) return min_lr_;
  double progress = std::min(1.0, static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_));
  return min_lr_ + 0.5 * (lr_ - min_lr_) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace tessera::optim
