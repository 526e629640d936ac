#include "dist/data_parallel.h"

#include <cmath>
#include <limits>

#include "core/ops/ops.h"

namespace tessera::dist {

DataParallel::DataParallel(nn::Module& net, uint64_t seed, ProcessGroup* group, Options options,
                           const MakeOptimizer& make)
    : group_(group && group->size() > 1 ? group : nullptr), o_(options), net_(dynamic_cast<nn::Sequential*>(&net)) {
  if (options.zero_stage < 0 || options.zero_stage > 3)
    TESSERA_THROW(ValueError, "data parallel: ZeRO stage ", options.zero_stage, " is not one of 0, 1, 2, 3");
  stage_ = group_ ? options.zero_stage : 0;
  if (stage_ == 3 && !net_)
    TESSERA_THROW(ValueError, "ZeRO-3 gathers the children of a Sequential; this model is a ", net.type_name());
  const int world = group_ ? group_->size() : 1;
  params_ = std::make_unique<nn::FlatParameters>(net, Device::CPU(), DType::kF32, seed, stage_ > 0 ? world : 1);
  if (stage_ > 0) {
    partition_ = std::make_unique<ZeroPartition>(MakeZeroPartition(params_->numel(), *group_));
    optimizer_ = make(partition_->Mine(params_->values()), partition_->Mine(params_->grads()));
  } else {
    optimizer_ = make(params_->values(), params_->grads());
  }
}

void DataParallel::Join() {
  if (!group_ || joined_) return;
  BroadcastParameters(*params_, *group_, 0, o_.timeout_s);
  reducer_ = std::make_unique<Reducer>(*params_, *group_, o_.bucket_mb, o_.timeout_s,
                                       stage_ >= 2 ? partition_.get() : nullptr);
  if (stage_ == 3) {
    sharded_ = std::make_unique<ShardedParameters>(*params_, *net_, *partition_, group_->Split(0, group_->rank(), o_.timeout_s),
                                                   o_.timeout_s);
    sharded_->Release();
  }
  joined_ = true;
}

bool DataParallel::ParametersFinite() {
  if (!sharded_) return std::isfinite(ops::SumSquares(params_->values()));
  Tensor bad = Tensor::FromVector({std::isfinite(ops::SumSquares(partition_->Mine(params_->values()))) ? 0.0 : 1.0},
                                  {1}, DType::kF64);
  CollectiveOptions o = Collective();
  o.op = ReduceOp::kMax;
  group_->AllReduce(bad, o)->Wait();
  return bad.data<double>()[0] == 0;
}

void DataParallel::GatherParameters() {
  if (sharded_) sharded_->GatherAll();
}

void DataParallel::ReleaseParameters() {
  if (sharded_) sharded_->Release();
}

void DataParallel::WalkForward() {
  if (sharded_) sharded_->WalkForward();
}

double DataParallel::Step(int accumulate, const MicroBatch& micro_batch, double clip_grad_norm, double lr,
                          int64_t step) {
  if (group_ && !joined_) TESSERA_THROW(Error, "data parallel: Step before Join");
  ZeroGradients();
  const bool reduce_each = stage_ >= 2;
  double loss = 0;
  for (int k = 0; k < accumulate; ++k) {
    if (reducer_) reducer_->set_enabled(reduce_each || k == accumulate - 1);
    const std::optional<double> l = micro_batch(k);
    if (l) loss += *l;
    else if (sharded_) sharded_->Walk();  // no examples here: keep the gathers matched
    if (reducer_ && reduce_each) reducer_->Finish();
  }
  if (reducer_ && !reduce_each) reducer_->Finish();
  // After the reduce every rank sees the same gradient norm: checking it (rather than this rank's
  // share of the loss) makes every rank stop at the same step with the same message.
  // From stage 2 the norm is all-reduced anyway: a non-finite loss on any rank joins it, so every
  // rank stops together (below, a non-finite loss makes the all-reduced gradient non-finite).
  const bool norm = reducer_ || clip_grad_norm > 0 || measure_grad_norm_;
  const double sum_squares = norm ? GradSumSquares(std::isfinite(loss)) : 0;
  last_grad_norm_ = norm ? std::sqrt(sum_squares) : std::numeric_limits<double>::quiet_NaN();
  if (!std::isfinite(loss) || (reducer_ && !std::isfinite(sum_squares)))
    TESSERA_THROW(Error, "the training loss or its gradients became non-finite at step ", step,
                  "; lower optimizer.lr or set optimizer.clip_grad_norm");
  if (clip_grad_norm > 0) {  // by the global norm (gradients are global after the reduce)
    Tensor g = optimizer_->grads();
    optim::ClipGradNorm(g, clip_grad_norm, sum_squares);
  }
  optimizer_->Step(lr);
  if (partition_ && stage_ < 3) GatherShards(params_->values(), *partition_, *group_, Collective());
  return loss;
}

DataParallel::Memory DataParallel::Held() const {
  Memory m;
  m.parameter_bytes =
      static_cast<int64_t>(stage_ >= 3 ? partition_->Mine(params_->values()).nbytes() : params_->values().nbytes());
  if (sharded_) m.gathered_unit_bytes = sharded_->largest_unit_bytes();
  m.gradient_bytes =
      static_cast<int64_t>(stage_ >= 2 ? partition_->Mine(params_->grads()).nbytes() : params_->grads().nbytes());
  for (const auto& [name, t] : optimizer_->State()) m.optimizer_state_bytes += static_cast<int64_t>(t.nbytes());
  return m;
}

// At stage 2 a rank's gradient outside its shard is zero already (the reducer gave it back).
void DataParallel::ZeroGradients() {
  if (stage_ >= 2) partition_->Mine(params_->grads()).Zero();
  else params_->ZeroGrad();
}

double DataParallel::GradSumSquares(bool loss_finite) const {
  if (stage_ >= 2)
    return GlobalSumSquares(params_->grads(), *partition_, *group_, Collective(), loss_finite ? 0.0 : NAN);
  return ops::SumSquares(params_->grads());  // every rank holds the whole reduced gradient
}

CollectiveOptions DataParallel::Collective() const {
  CollectiveOptions c;
  c.timeout_s = o_.timeout_s;
  return c;
}

}  // namespace tessera::dist
