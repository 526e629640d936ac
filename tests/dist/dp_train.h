// Shared by the data-parallel suites (data_parallel_test under mpirun, reducer_test and zero_test
// on threads): steps of W1, W2 or a small GPT on one process or on a process group through the
// trainer's step (ZeRO stages 0 to 3; the GPT to 2), and how far two parameter vectors are apart.
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
#include "dist/data_parallel.h"
#include "tests/core/gradcheck.h"

namespace tessera::dist::dp_test {

// The GPT of these tests: 2 layers, 2 heads, width 16, context 8, a vocabulary of 32.
inline models::GptConfig SmallGpt() {
  models::GptConfig g;
  g.layers = 2;
  g.heads = 2;
  g.width = 16;
  g.context = 8;
  g.vocab = 32;
  return g;
}

inline std::unique_ptr<nn::Sequential> Build(bool cnn, bool gpt = false) {
  if (gpt) return models::BuildGpt(SmallGpt());
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
// The same for the GPT: windows of token ids [T] and their next tokens [T].
inline Data MakeTokenData(int steps, int64_t global_batch) {
  const models::GptConfig g = SmallGpt();
  const int64_t n = steps * global_batch;
  PhiloxGenerator gen(7);
  std::vector<double> stream(static_cast<size_t>(n * g.context + 1));
  for (double& t : stream) t = static_cast<double>(gen.Below(static_cast<uint64_t>(g.vocab)));
  Data d;
  d.x =
      Tensor::FromVector(std::vector<double>(stream.begin(), stream.end() - 1), {n, g.context}, DType::kI32);
  d.y =
      Tensor::FromVector(std::vector<double>(stream.begin() + 1, stream.end()), {n, g.context}, DType::kI32);
  return d;
}

struct TrainConfig {
  bool cnn = false;    // W2 rather than W1
  bool gpt = false;    // the small GPT (data from MakeTokenData)
  int accumulate = 1;  // micro-batches per step
  int zero_stage = 0;
  double clip = 0;            // clip_grad_norm; 0: none
  size_t* buckets = nullptr;  // set to the reducer's bucket count
  double timeout_s = 60;      // of every collective
  int stop_after = -1;        // >= 0: this many steps, then return (a rank that stops taking part)
  std::vector<double>* sharded_values = nullptr;  // the flat values before the final gather
};

// Trains `steps` steps of Adam on the global batches [s*B, (s+1)*B) of the data, through the
// trainer's own step (dist::DataParallel): with a group, this rank takes its slice of each and
// reduces through small buckets (several per step). Returns every parameter's values, padding
// left out (ZeRO pads the flat buffers).
inline std::vector<double> Train(const Data& d, int64_t global_batch, int steps, ProcessGroup* group,
                                 const TrainConfig& c = {}) {
  auto net = Build(c.cnn, c.gpt);
  net->set_needs_input_grad(false);
  DataParallel::Options o;
  o.zero_stage = c.zero_stage;
  o.bucket_mb = 0.25;
  o.timeout_s = c.timeout_s;
  DataParallel dp(*net, 11, group, o,
                  [](const Tensor& v, const Tensor& g) { return std::make_unique<optim::Adam>(v, g); });
  nn::FlatParameters& params = dp.params();
  // Start from different values on each rank: Join's broadcast must make them equal.
  if (group && group->rank() != 0) params.values().Fill(0.25);
  dp.Join();
  if (c.buckets) *c.buckets = dp.reducer() ? dp.reducer()->buckets().size() : 0;
  nn::CrossEntropyLoss loss;
  const int world = group ? group->size() : 1, rank = group ? group->rank() : 0;
  // Rank r's slice of each global batch, as the sampler cuts it: sizes differ by at most one.
  const int64_t first = global_batch * rank / world, local = global_batch * (rank + 1) / world - first;
  for (int s = 0; s < steps && s != c.stop_after; ++s) {
    dp.Step(
        c.accumulate,
        [&](int k) -> std::optional<double> {
          const int64_t lo = s * global_batch + first + local * k / c.accumulate;
          const int64_t hi = s * global_batch + first + local * (k + 1) / c.accumulate;
          if (lo == hi) return std::nullopt;
          // This micro-batch's share of the global mean.
          const double w = static_cast<double>(hi - lo) / static_cast<double>(global_batch);
          const double l = w * loss.Forward(net->Forward(d.x.Slice0(lo, hi)), d.y.Slice0(lo, hi)).Item();
          net->Backward(loss.Backward(w));
          return l;
        },
        c.clip, 1e-3, s + 1);
  }
  if (c.stop_after >= 0 && c.stop_after < steps) return {};  // stopped: it takes part in nothing more
  if (c.sharded_values) *c.sharded_values = params.values().ToVector();
  dp.GatherParameters();  // stage 3: every parameter whole on every rank
  std::vector<double> all = params.values().ToVector(), out;
  for (const nn::FlatParameters::Entry& e : params.entries())
    out.insert(out.end(), all.begin() + e.offset, all.begin() + e.offset + e.numel);
  return out;
}

// ||b - a|| / ||a||, or a description of where they differ most in `worst`.
inline double RelativeDifference(const std::vector<double>& a, const std::vector<double>& b,
                                 std::string* worst) {
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
  s << "largest difference at parameter " << at << ": " << (a.empty() ? 0 : a[at]) << " vs "
    << (b.empty() ? 0 : b[at]);
  *worst = s.str();
  return std::sqrt(diff / norm);
}

}  // namespace tessera::dist::dp_test
