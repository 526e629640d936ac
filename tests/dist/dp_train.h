// Shared by the data-parallel suites (data_parallel_test under mpirun, reducer_test on threads):
// a few steps of W1 or W2 on one process or on a process group through the Reducer, and how far
// two parameter vectors are apart.
#pragma once

#include <cmath>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/models.h"
#include "core/nn/loss.h"
#include "core/optim/optimizer.h"
#include "core/random.h"
#include "dist/reducer.h"
#include "tests/core/gradcheck.h"

namespace tessera::dist::dp_test {

inline std::unique_ptr<nn::Sequential> Build(bool cnn) {
  if (cnn) return models::BuildCnn({});  // W2
  return models::BuildMlp({});           // W1
}

// `steps` global batches of `global_batch` examples of (x, y) and their labels, the same on every
// rank (same seeds).
struct Data {
  Tensor x, y;
};
inline Data MakeData(int steps, int64_t global_batch) {
  Data d;
  d.x = testing::RandomTensor({steps * global_batch, 1, 28, 28}, DType::kF32, 5, 0, 1);
  PhiloxGenerator g(6);
  std::vector<double> labels(steps * global_batch);
  for (double& l : labels) l = static_cast<double>(g.Below(10));
  d.y = Tensor::FromVector(labels, {steps * global_batch}, DType::kI32);
  return d;
}

// Trains `steps` steps on the global batches [s*B, (s+1)*B) of the data; with a group, this rank
// takes its slice of each and all-reduces through a Reducer with small buckets (several per
// step), in `accumulate` micro-batches of which only the last communicates.
inline std::vector<double> Train(bool cnn, const Data& d, int64_t global_batch, int steps, ProcessGroup* group,
                                 size_t* buckets = nullptr, int accumulate = 1) {
  auto net = Build(cnn);
  net->set_needs_input_grad(false);
  nn::FlatParameters params(*net, Device::CPU(), DType::kF32, 11);
  std::unique_ptr<Reducer> reducer;
  if (group) {
    // Start from different values on each rank: the broadcast must make them equal.
    if (group->rank() != 0) params.values().Fill(0.25);
    BroadcastParameters(params, *group);
    reducer = std::make_unique<Reducer>(params, *group, /*bucket_mb=*/0.25, /*timeout_s=*/60);
    if (buckets) *buckets = reducer->buckets().size();
  }
  optim::Adam adam(params.values(), params.grads());
  nn::CrossEntropyLoss loss;
  const int world = group ? group->size() : 1, rank = group ? group->rank() : 0;
  const int64_t local = global_batch / world;
  for (int s = 0; s < steps; ++s) {
    params.ZeroGrad();
    for (int k = 0; k < accumulate; ++k) {
      const int64_t lo = s * global_batch + rank * local + local * k / accumulate;
      const int64_t hi = s * global_batch + rank * local + local * (k + 1) / accumulate;
      if (reducer) reducer->set_enabled(k == accumulate - 1);
      loss.Forward(net->Forward(d.x.Slice0(lo, hi)), d.y.Slice0(lo, hi));
      // This micro-batch's share of the global mean.
      net->Backward(loss.Backward(static_cast<double>(hi - lo) / static_cast<double>(global_batch)));
    }
    if (reducer) reducer->Finish();
    adam.Step(1e-3);
  }
  return params.values().ToVector();
}

// ||b - a|| / ||a||, or a description of where they differ most in `worst`.
inline double RelativeDifference(const std::vector<double>& a, const std::vector<double>& b, std::string* worst) {
  if (a.size() != b.size()) {
    *worst = "different sizes";
    return INFINITY;
  }
  double diff = 0, norm = 0, largest = 0;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::fabs(a[i] - b[i]);
    diff += e * e;
    norm += a[i] * a[i];
    if (e > largest) {
      largest = e;
      at = i;
    }
  }
  std::ostringstream s;
  s << "largest difference at parameter " << at << ": " << (a.empty() ? 0 : a[at]) << " vs " << (b.empty() ? 0 : b[at]);
  *worst = s.str();
  return std::sqrt(diff / norm);
}

}  // namespace tessera::dist::dp_test
