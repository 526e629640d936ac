#include "jobs/evaluate.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/nn/loss.h"
#include "datasets/sampler.h"

namespace tessera::jobs {

using json = nlohmann::json;

double EvalResult::Accuracy() const {
  if (!language_model) return cm.Accuracy();
  return tokens > 0 ? static_cast<double>(correct_tokens) / static_cast<double>(tokens) : 0.0;
}

double EvalResult::Perplexity() const { return std::exp(loss); }

namespace {

// How many positions of logits [n, T, V] have their largest logit at the label [n, T].
int64_t CorrectNextTokens(const Tensor& logits, const Tensor& labels) {
  const int64_t v = logits.dim(-1), rows = labels.numel();
  const float* l = logits.data<float>();
  const int32_t* y = labels.data<int32_t>();
  int64_t correct = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = l + r * v;
    correct += std::max_element(row, row + v) - row == y[r];
  }
  return correct;
}

// The sums of every rank: exactly the single process's counts.
void SumOverRanks(EvalResult& r, double& loss_sum, double& count, dist::ProcessGroup& group,
                  double timeout_s) {
  dist::CollectiveOptions o;
  o.timeout_s = timeout_s;
  Tensor counts = Tensor::Empty({static_cast<int64_t>(r.cm.raw().size()) + 1}, DType::kI64);
  std::copy(r.cm.raw().begin(), r.cm.raw().end(), counts.data<int64_t>());
  counts.data<int64_t>()[counts.numel() - 1] = r.correct_tokens;
  Tensor sums = Tensor::FromVector({loss_sum, count}, {2}, DType::kF64);
  auto w1 = group.AllReduce(counts, o);
  auto w2 = group.AllReduce(sums, o);
  w1->Wait();
  w2->Wait();
  std::copy(counts.data<int64_t>(), counts.data<int64_t>() + counts.numel() - 1, r.cm.raw().begin());
  r.correct_tokens = counts.data<int64_t>()[counts.numel() - 1];
  loss_sum = sums.data<double>()[0];
  count = sums.data<double>()[1];
}

}  // namespace

EvalResult Evaluate(nn::Module& net, datasets::Dataset& data, const datasets::LoaderOptions& norm,
                    int64_t batch_size, int classes, dist::ProcessGroup* group, double timeout_s,
                    const std::function<void()>& skip_batch) {
  net.SetTraining(false);
  const bool lm = !data.label_shape().empty();
  EvalResult r{0, ConfusionMatrix(lm ? 1 : classes)};
  r.language_model = lm;
  const int rank = group ? group->rank() : 0, world = group ? group->size() : 1;
  std::vector<int64_t> all = datasets::EvalIndices(data.size(), rank, world);
  double loss_sum = 0, count = 0;  // count: examples, or tokens for a language model
  nn::CrossEntropyLoss ce;
  for (size_t b = 0; b < all.size(); b += batch_size) {
    size_t e = std::min(all.size(), b + static_cast<size_t>(batch_size));
    std::vector<int64_t> idx(all.begin() + b, all.begin() + e);
    Tensor x, y;
    datasets::AllocateBatch(data, static_cast<int64_t>(idx.size()), &x, &y);
    data.Get(idx, x, y);
    if (!lm) datasets::Normalize(x, norm);
    Tensor logits = net.Forward(x);
    loss_sum += ce.Forward(logits, y).Item() * static_cast<double>(y.numel());
    count += static_cast<double>(y.numel());
    if (lm)
      r.correct_tokens += CorrectNextTokens(logits, y);
    else
      r.cm.AddLogits(logits, y);
  }
  if (skip_batch) {
    const auto batches = [&](int64_t n) { return (n + batch_size - 1) / batch_size; };
    const int64_t most = batches((data.size() + world - 1) / world);  // the largest share: ceil(N / W)
    for (int64_t b = batches(static_cast<int64_t>(all.size())); b < most; ++b) skip_batch();
  }
  if (world > 1) SumOverRanks(r, loss_sum, count, *group, timeout_s);
  r.tokens = lm ? static_cast<int64_t>(count) : 0;
  r.loss = count > 0 ? loss_sum / count : 0;
  net.SetTraining(true);
  return r;
}

json EvalJson(const EvalResult& r) {
  if (r.language_model)
    return {{"test_loss", r.loss}, {"test_perplexity", r.Perplexity()}, {"test_accuracy", r.Accuracy()}};
  return {{"test_loss", r.loss},
          {"test_accuracy", r.cm.Accuracy()},
          {"test_precision", r.cm.MacroPrecision()},
          {"test_recall", r.cm.MacroRecall()},
          {"test_f1", r.cm.MacroF1()}};
}

double MetricValue(const EvalResult& r, const std::string& metric, bool* larger_is_better) {
  json j = EvalJson(r);
  if (!j.contains(metric)) TESSERA_THROW(ConfigError, "unknown evaluation metric '", metric, "'");
  *larger_is_better = metric != "test_loss" && metric != "test_perplexity";
  return j[metric].get<double>();
}

}  // namespace tessera::jobs
