// The parts of a training job built from its spec: datasets, optimizer, learning-rate schedule,
// loader options. (The model itself: core/model_spec.h.)
#pragma once

#include <memory>
#include <string>

#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "core/optim/schedule.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "jobs/job.pb.h"

namespace tessera::jobs {

// The training (train = true) or test split named by `data`.
// `train_set`: for the test split, the training set it must match (CSV columns are matched by name).
std::unique_ptr<datasets::Dataset> OpenSplit(const DataSpec& data, bool train,
                                             const datasets::Dataset* train_set = nullptr);
// Whether `data` names files for the training (or test) split at all.
bool NamesSplit(const DataSpec& data, bool train);
std::unique_ptr<optim::Optimizer> BuildOptimizer(const OptimizerSpec& o, nn::FlatParameters& p);
// Over a slice of the flat buffers (a ZeRO shard): `values` and `grads` are views of equal length.
std::unique_ptr<optim::Optimizer> BuildOptimizer(const OptimizerSpec& o, const Tensor& values, const Tensor& grads);
std::unique_ptr<optim::LrSchedule> BuildSchedule(const OptimizerSpec& o, int64_t total_steps);
// "cosine(lr=0.001, warmup_steps=100, total_steps=1407, min_lr=0)": what the rate at any step follows.
std::string ScheduleDescription(const OptimizerSpec& o, int64_t total_steps);
// Normalisation and augmentation (augmentation only for training) as the loader applies them.
datasets::LoaderOptions LoaderOptionsFor(const JobSpec& spec, bool train);

}  // namespace tessera::jobs
