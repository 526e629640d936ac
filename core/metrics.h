// Classification metrics from a confusion matrix, and a running mean.
//
// Macro precision / recall / F1 average the per-class values over all classes; a class with no
// predictions (precision) or no examples (recall) contributes 0, as scikit-learn does with
// zero_division=0. The counts are plain integers, so ranks can sum them (all-reduce) and get
// exactly the single-process result.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace tessera {

class ConfusionMatrix {
 public:
  explicit ConfusionMatrix(int num_classes);
  // logits [N, C] (argmax taken; first maximum wins) and labels i32 [N]. Host or device tensors.
  void AddLogits(const Tensor& logits, const Tensor& labels);
  void Add(int label, int predicted, int64_t count = 1);
  void Merge(const ConfusionMatrix& other);
  void Clear();

  int num_classes() const { return classes_; }
  int64_t count(int label, int predicted) const { return counts_[label * classes_ + predicted]; }
  int64_t total() const;
  // Row-major [label][predicted] counts (for serialising and all-reducing).
  std::vector<int64_t>& raw() { return counts_; }
  const std::vector<int64_t>& raw() const { return counts_; }

  double Accuracy() const;
  double Precision(int c) const;
  double Recall(int c) const;
  double F1(int c) const;
  double MacroPrecision() const;
  double MacroRecall() const;
  double MacroF1() const;

 private:
  int classes_;
  std::vector<int64_t> counts_;
};

class MeanMetric {
 public:
  void Add(double value, double weight = 1.0) {
    sum_ += value * weight;
    weight_ += weight;
  }
  double Mean() const { return weight_ > 0 ? sum_ / weight_ : 0.0; }
  double weight() const { return weight_; }
  void Clear() { sum_ = weight_ = 0; }

 private:
  double sum_ = 0, weight_ = 0;
};

}  // namespace tessera
