#include "jobs/evaluate.h"

#include <algorithm>
#include <vector>

#include "core/nn/loss.h"
#include "core/error.h"
#include "datasets/sampler.h"

namespace tessera::jobs {

using json = nlohmann::json;

EvalResult Evaluate(nn::Module& net, datasets::Dataset& data, const datasets::LoaderOptions& norm,
                    int64_t batch_size, int classes, dist::ProcessGroup* group, double timeout_s,
                    const std::function<void()>& skip_batch) {
  net.SetTraining(false);
  EvalResult r{0, ConfusionMatrix(classes)};
  const int rank = group ? group->rank() : 0, world = group ? group->size() : 1;
  std::vector<int64_t> all = datasets::EvalIndices(data.size(), rank, world);
  Shape ex = data.example_shape();
  double loss_sum = 0;
  nn::CrossEntropyLoss ce;
  for (size_t b = 0; b < all.size(); b += batch_size) {
    size_t e = std::min(all.size(), b + static_cast<size_t>(batch_size));
    std::vector<int64_t> idx(all.begin() + b, all.begin() + e);
    Shape fs{static_cast<int64_t>(idx.size())};
    fs.insert(fs.end(), ex.begin(), ex.end());
    Tensor x = Tensor::Empty(fs), y = Tensor::Empty({static_cast<int64_t>(idx.size())}, DType::kI32);
    data.Get(idx, x, y);
    datasets::Normalize(x, norm);
    Tensor logits = net.Forward(x);
    loss_sum += ce.Forward(logits, y).Item() * static_cast<double>(idx.size());
    r.cm.AddLogits(logits, y);
  }
  if (skip_batch) {
    const auto batches = [&](int64_t n) { return (n + batch_size - 1) / batch_size; };
    const int64_t most = batches((data.size() + world - 1) / world);  // the largest share: ceil(N / W)
    for (int64_t b = batches(static_cast<int64_t>(all.size())); b < most; ++b) skip_batch();
  }
  double count = static_cast<double>(all.size());
  if (world > 1) {  // sum the counts and the loss over ranks: exactly the single-process result
    dist::CollectiveOptions o;
    o.timeout_s = timeout_s;
    Tensor counts = Tensor::Empty({static_cast<int64_t>(r.cm.raw().size())}, DType::kI64);
    std::copy(r.cm.raw().begin(), r.cm.raw().end(), counts.data<int64_t>());
    Tensor sums = Tensor::FromVector({loss_sum, count}, {2}, DType::kF64);
    auto w1 = group->AllReduce(counts, o);
    auto w2 = group->AllReduce(sums, o);
    w1->Wait();
    w2->Wait();
    std::copy(counts.data<int64_t>(), counts.data<int64_t>() + counts.numel(), r.cm.raw().begin());
    loss_sum = sums.data<double>()[0];
    count = sums.data<double>()[1];
  }
  r.loss = count > 0 ? loss_sum / count : 0;
  net.SetTraining(true);
  return r;
}

json EvalJson(const EvalResult& r) {
  return {{"test_loss", r.loss},
          {"test_accuracy", r.cm.Accuracy()},
          {"test_precision", r.cm.MacroPrecision()},
          {"test_recall", r.cm.MacroRecall()},
          {"test_f1", r.cm.MacroF1()}};
}


double MetricValue(const EvalResult& r, const std::string& metric, bool* larger_is_better) {
  json j = EvalJson(r);
  if (!j.contains(metric)) TESSERA_THROW(ConfigError, "unknown evaluation metric '", metric, "'");
  *larger_is_better = metric != "test_loss";
  return j[metric].get<double>();
}

}  // namespace tessera::jobs
