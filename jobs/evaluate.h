// Evaluation on the test split: every rank evaluates its share of the examples and the counts and
// loss are summed over ranks, so the result is exactly the single process's.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/metrics.h"
#include "core/nn/module.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "dist/process_group.h"

namespace tessera::jobs {

struct EvalResult {
  double loss = 0;        // mean cross-entropy per example (a language model: per token)
  ConfusionMatrix cm{1};  // classification
  // A language model (labels [n, T]): next-token counts instead of a confusion matrix, which at a
  // vocabulary of 50k would not fit in memory.
  bool language_model = false;
  int64_t tokens = 0, correct_tokens = 0;
  double Accuracy() const;
  double Perplexity() const;  // exp(loss): of a language model
};

// Evaluates `net` (switched to inference mode and back) on `data`, normalised as `norm` says, in
// batches of `batch_size`. `group` may be null (one process). `skip_batch`, when given, runs once
// for each batch this rank has fewer than the rank with the most (ranks' shares differ by at most
// one example): under ZeRO stage 3 every forward gathers, and every rank must gather alike.
EvalResult Evaluate(nn::Module& net, datasets::Dataset& data, const datasets::LoaderOptions& norm, int64_t batch_size,
                    int classes, dist::ProcessGroup* group, double timeout_s,
                    const std::function<void()>& skip_batch = nullptr);

// test_loss, test_accuracy, test_precision, test_recall, test_f1; a language model: test_loss,
// test_perplexity, test_accuracy (of the next token).
nlohmann::json EvalJson(const EvalResult& r);

// The value of `metric` (one of EvalJson's names) and whether larger is better (loss: smaller).
double MetricValue(const EvalResult& r, const std::string& metric, bool* larger_is_better);

}  // namespace tessera::jobs
