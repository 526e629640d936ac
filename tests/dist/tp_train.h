// Shared by the tensor-parallel GPT tests (tensor_parallel_gpt_test on threads, the MPI suite
// under mpirun): the small GPT, its batches, cutting a rank's shards from the whole model's
// values, and 20 steps of Adam of the whole model and of the split one.
#pragma once

#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/nn/loss.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "dist/tensor_parallel_gpt.h"

namespace tessera::dist::tp_test {

inline models::GptConfig Config() {
  models::GptConfig c;
  c.layers = 2;
  c.heads = 4;
  c.width = 16;
  c.context = 8;
  c.vocab = 20;
  return c;
}

// Batch s: 3 windows of 8 ids and their next ids.
inline std::pair<Tensor, Tensor> Batch(int s, int64_t vocab) {
  PhiloxGenerator g(17, static_cast<uint64_t>(s));
  std::vector<double> v(3 * 8 + 1);
  for (double& t : v) t = static_cast<double>(g.Below(static_cast<uint64_t>(vocab)));
  return {Tensor::FromVector({v.begin(), v.end() - 1}, {3, 8}, DType::kI32),
          Tensor::FromVector({v.begin() + 1, v.end()}, {3, 8}, DType::kI32)};
}

// Every parameter's value (or gradient) by name, copied.
inline std::map<std::string, Tensor> Snapshot(const nn::FlatParameters& p, bool grads = false) {
  std::map<std::string, Tensor> out;
  for (const auto& e : p.entries()) out[e.name] = (grads ? e.param->grad : e.param->value).Clone();
  return out;
}

// This rank's piece of a logical tensor (or the whole of an unsplit one).
inline Tensor Piece(const std::map<std::string, Tensor>& logical, const std::string& name,
                    const std::map<std::string, ShardSpec>& shards) {
  auto s = shards.find(name);
  return s == shards.end() ? logical.at(name) : TakeShard(logical.at(name), s->second);
}

inline void CopyShards(const std::map<std::string, Tensor>& logical, nn::FlatParameters& mine,
                       const std::map<std::string, ShardSpec>& shards) {
  for (const auto& e : mine.entries()) e.param->value.CopyFrom(Piece(logical, e.name, shards));
}

inline double RelativeDifference(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (a[i] - b[i]) * (a[i] - b[i]);
    n += b[i] * b[i];
  }
  return n > 0 ? std::sqrt(d / n) : std::sqrt(d);
}

// The seed both the whole and the split GPT are laid out from.
constexpr uint64_t kSeed = 6;

// Trains the split GPT on `group` for `steps` steps of Adam from the whole GPT's start (drawn as
// the whole model draws it: InitializeAsWholeGpt) and returns how far this rank's shards end from
// `end` (the whole model's after the same steps): ||shards - end's pieces|| / ||end's pieces||.
inline double TrainSplitAndCompare(ProcessGroup& g, const std::map<std::string, Tensor>& end, int steps) {
  const models::GptConfig c = Config();
  const TensorGroup tg{&g, 30};
  auto net = BuildTensorParallelGpt(c, tg);
  net->set_needs_input_grad(false);
  nn::FlatParameters p(*net, Device::CPU(), DType::kF32, kSeed);
  InitializeAsWholeGpt(p, c, kSeed, tg);
  const auto shards = GptShards(c, tg);
  optim::Adam opt(p.values(), p.grads());
  VocabParallelCrossEntropy vce(tg);
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = Batch(s, c.vocab);
    p.ZeroGrad();
    vce.Forward(net->Forward(x), y);
    net->Backward(vce.Backward());
    opt.Step(3e-3);
  }
  std::vector<double> got, want;
  for (const auto& e : p.entries()) {
    const std::vector<double> w = Piece(end, e.name, shards).ToVector(), v = e.param->value.ToVector();
    want.insert(want.end(), w.begin(), w.end());
    got.insert(got.end(), v.begin(), v.end());
  }
  return RelativeDifference(got, want);
}

// The whole GPT trained the same steps on one process: its values at the start and at the end.
inline std::pair<std::map<std::string, Tensor>, std::map<std::string, Tensor>> TrainWhole(int steps) {
  const models::GptConfig c = Config();
  auto whole = models::BuildGpt(c);
  whole->set_needs_input_grad(false);
  nn::FlatParameters wp(*whole, Device::CPU(), DType::kF32, kSeed);
  const auto start = Snapshot(wp);
  optim::Adam opt(wp.values(), wp.grads());
  nn::CrossEntropyLoss ce;
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = Batch(s, c.vocab);
    wp.ZeroGrad();
    ce.Forward(whole->Forward(x), y);
    whole->Backward(ce.Backward());
    opt.Step(3e-3);
  }
  return {start, Snapshot(wp)};
}

}  // namespace tessera::dist::tp_test
