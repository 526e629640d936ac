#include "jobs/build.h"

#include <cstdio>

#include "datasets/tokens.h"

namespace tessera::jobs {

bool NamesSplit(const DataSpec& d, bool train) {
  if (d.kind() == DataSpec::IDX) return !(train ? d.train_images() : d.test_images()).empty();
  return !(train ? d.train_path() : d.test_path()).empty();
}

std::unique_ptr<datasets::Dataset> OpenSplit(const DataSpec& d, bool train, const datasets::Dataset* train_set) {
  switch (d.kind()) {
    case DataSpec::IDX:
      return train ? datasets::OpenIdx(d.train_images(), d.train_labels())
                   : datasets::OpenIdx(d.test_images(), d.test_labels());
    case DataSpec::CSV:
      return datasets::OpenCsv(train ? d.train_path() : d.test_path(), d.label_column(),
                               train_set ? train_set->feature_names() : std::vector<std::string>{});
    case DataSpec::HDF5:
      return datasets::OpenHdf5(train ? d.train_path() : d.test_path(), d.features_dataset(), d.labels_dataset());
    case DataSpec::TOKENS:
      return datasets::OpenTokens(train ? d.train_path() : d.test_path(), d.sequence_length());
  }
  TESSERA_THROW(ConfigError, "data.kind: unknown kind ", static_cast<int>(d.kind()));
}

std::unique_ptr<optim::Optimizer> BuildOptimizer(const OptimizerSpec& o, nn::FlatParameters& p) {
  return BuildOptimizer(o, p.values(), p.grads());
}

std::unique_ptr<optim::Optimizer> BuildOptimizer(const OptimizerSpec& o, const Tensor& values, const Tensor& grads) {
  switch (o.kind()) {
    case OptimizerSpec::SGD:
      return std::make_unique<optim::Sgd>(values, grads,
                                          optim::SgdOptions{o.momentum(), o.dampening(), o.weight_decay(), o.nesterov()});
    case OptimizerSpec::RMSPROP: {
      optim::RmspropOptions r;
      r.alpha = o.alpha();
      r.eps = o.eps();
      r.weight_decay = o.weight_decay();
      r.momentum = o.momentum();
      return std::make_unique<optim::Rmsprop>(values, grads, r);
    }
    case OptimizerSpec::ADAM:
    case OptimizerSpec::ADAMW: {
      optim::AdamOptions a;
      a.beta1 = o.beta1();
      a.beta2 = o.beta2();
      a.eps = o.eps();
      a.weight_decay = o.weight_decay();
      if (o.kind() == OptimizerSpec::ADAMW) return std::make_unique<optim::AdamW>(values, grads, a);
      return std::make_unique<optim::Adam>(values, grads, a);
    }
  }
  TESSERA_THROW(ConfigError, "optimizer.kind: unknown kind");
}

std::unique_ptr<optim::LrSchedule> BuildSchedule(const OptimizerSpec& o, int64_t total_steps) {
  const ScheduleSpec& s = o.schedule();
  switch (s.kind()) {
    case ScheduleSpec::CONSTANT: return std::make_unique<optim::ConstantLr>(o.lr());
    case ScheduleSpec::STEP: return std::make_unique<optim::StepLr>(o.lr(), s.step_size(), s.gamma());
    case ScheduleSpec::COSINE:
      if (s.warmup_steps() > total_steps)
        TESSERA_THROW(ConfigError, "optimizer.schedule.warmup_steps (", s.warmup_steps(), ") exceeds the ",
                      total_steps, " steps of the run");
      return std::make_unique<optim::CosineLr>(o.lr(), s.warmup_steps(), total_steps, s.min_lr());
  }
  TESSERA_THROW(ConfigError, "optimizer.schedule.kind: unknown kind");
}

// "cosine(lr=0.001, warmup_steps=100, total_steps=1407, min_lr=0)": what the rate at any step follows.
std::string ScheduleDescription(const OptimizerSpec& o, int64_t total_steps) {
  const ScheduleSpec& s = o.schedule();
  char buf[256];
  switch (s.kind()) {
    case ScheduleSpec::STEP:
      std::snprintf(buf, sizeof buf, "step(lr=%.9g, step_size=%lld, gamma=%.9g)", o.lr(),
                    static_cast<long long>(s.step_size()), s.gamma());
      break;
    case ScheduleSpec::COSINE:
      std::snprintf(buf, sizeof buf, "cosine(lr=%.9g, warmup_steps=%lld, total_steps=%lld, min_lr=%.9g)", o.lr(),
                    static_cast<long long>(s.warmup_steps()), static_cast<long long>(total_steps), s.min_lr());
      break;
    default:
      std::snprintf(buf, sizeof buf, "constant(lr=%.9g)", o.lr());
  }
  return buf;
}

datasets::LoaderOptions LoaderOptionsFor(const JobSpec& spec, bool train) {
  const DataSpec& d = spec.data();
  datasets::LoaderOptions o;
  o.prefetch = d.prefetch();
  o.scale = d.normalize().scale();
  o.mean.assign(d.normalize().mean().begin(), d.normalize().mean().end());
  o.std.assign(d.normalize().std().begin(), d.normalize().std().end());
  o.crop_padding = d.augment().random_crop_padding();
  o.horizontal_flip = d.augment().horizontal_flip();
  o.augment = train;
  o.seed = spec.train().seed();
  return o;
}

}  // namespace tessera::jobs
