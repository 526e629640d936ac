// Data-parallel training on a process group, ZeRO stages 0 to 3 (dist/zero.h, dist/zero3.h): the
// flat parameters, this rank's optimizer (over its shard from stage 1), the gradient reducer, the
// parameter gathers of stage 3, and the training step in named pieces -- accumulate over
// micro-batches, reduce, check, clip by the global norm, step, gather the updated shards (stages 1
// and 2; stage 3 gathers each layer as it runs). The trainer (jobs/) and the data-parallel tests
// run this same step.
//
// Micro-batches (gradient accumulation): at stages 0 and 1 they accumulate locally and only the
// last one reduces; from stage 2 each one reduces into the owners' shards, so that no rank keeps a
// full gradient between micro-batches (a collective per bucket per micro-batch: the price of the
// memory).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "dist/process_group.h"
#include "dist/reducer.h"
#include "dist/zero.h"
#include "dist/zero3.h"

namespace tessera::dist {

class DataParallel {
 public:
  // Builds the optimizer over `values` and `grads`: the whole flat buffers, or this rank's shard.
  using MakeOptimizer = std::function<std::unique_ptr<optim::Optimizer>(const Tensor& values, const Tensor& grads)>;
  struct Options {
    int zero_stage = 0;  // 0 to 3; any stage is 0 on one rank
    double bucket_mb = 25;
    double timeout_s = 300;  // of every collective
  };
  // What this rank holds between steps, in bytes.
  struct Memory {
    int64_t parameter_bytes = 0;  // at stage 3 the shard: up to two gathered units come on top
    int64_t gradient_bytes = 0;   // from stage 2 the shard: buckets in flight during backward come on top
    int64_t gathered_unit_bytes = 0;  // stage 3: the largest unit
    int64_t optimizer_state_bytes = 0;
  };

  // Lays out `net`'s parameters (initialised from `seed`; padded to a multiple of the group size
  // under ZeRO) and builds the optimizer. `group`: null or a group of one for one process. `net`
  // and `group` must outlive this; at stage 3 `net` must be a Sequential (its children are the
  // units gathered).
  DataParallel(nn::Module& net, uint64_t seed, ProcessGroup* group, Options options, const MakeOptimizer& make);
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Checks that every rank built the same model, copies rank 0's parameters to every rank (load a
  // checkpoint or weights before), and starts the reducer; at stage 3 then gives back all but
  // this rank's shard. Call once, before the first Step.
  void Join();

  // Stage 3: every parameter whole on every rank until ReleaseParameters (evaluation, checks,
  // publishing, reading the weights). Collectives: every rank calls them. Nothing at stages 0-2.
  void GatherParameters();
  void ReleaseParameters();
  // Stage 3, a forward pass that gathers each layer just before it and gives it back after (as in
  // training): evaluation holds its shard plus two layers instead of the whole model. A rank
  // with fewer batches than the others calls WalkForward for each missing one, so that every rank
  // issues the same gathers; ReleaseParameters after the last. Nothing at stages 0-2.
  void WalkForward();
  // Whether every parameter is finite on every rank (stage 3: each rank checks its shard and they
  // agree by an all-reduce; below it each rank holds them all). Every rank calls it.
  bool ParametersFinite();

  // One optimizer step. micro_batch(k) runs forward and backward of micro-batch k of `accumulate`
  // and returns its share of the loss, or nullopt when this rank has no examples in it; every
  // rank calls Step, with or without examples. Throws Error naming `step` when the loss or the
  // reduced gradient is not finite. Returns the sum of the micro-batches' shares.
  using MicroBatch = std::function<std::optional<double>(int k)>;
  double Step(int accumulate, const MicroBatch& micro_batch, double clip_grad_norm, double lr, int64_t step);
  // The global L2 norm of the last step's reduced gradient, before clipping (the same on every
  // rank; what torch.nn.utils.clip_grad_norm_ returns). On one process without clipping it costs a
  // pass over the gradient that the step does not need: measured only when asked for (the step
  // before a log line), NaN otherwise.
  double last_grad_norm() const { return last_grad_norm_; }
  void set_measure_grad_norm(bool measure) { measure_grad_norm_ = measure; }

  nn::FlatParameters& params() { return *params_; }
  const nn::FlatParameters& params() const { return *params_; }
  optim::Optimizer& optimizer() { return *optimizer_; }
  const optim::Optimizer& optimizer() const { return *optimizer_; }
  int zero_stage() const { return stage_; }
  // This rank's shard (null at stage 0): where its optimizer state sits in the flat layout.
  const ZeroPartition* partition() const { return partition_.get(); }
  const Reducer* reducer() const { return reducer_.get(); }  // null before Join and on one rank
  Memory Held() const;

 private:
  void ZeroGradients();
  // Of the whole reduced gradient, the same on every rank; NaN from stage 2 when any rank's loss
  // is not finite.
  double GradSumSquares(bool loss_finite) const;
  CollectiveOptions Collective() const;

  ProcessGroup* group_;  // null on one rank
  Options o_;
  int stage_ = 0;
  double last_grad_norm_ = 0;
  bool measure_grad_norm_ = true;
  std::unique_ptr<nn::FlatParameters> params_;
  std::unique_ptr<ZeroPartition> partition_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::unique_ptr<Reducer> reducer_;
  nn::Sequential* net_;  // at stage 3
  std::unique_ptr<ShardedParameters> sharded_;  // stage 3, from Join
  bool joined_ = false;
};

}  // namespace tessera::dist
