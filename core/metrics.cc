#include "core/metrics.h"

namespace tessera {

ConfusionMatrix::ConfusionMatrix(int num_classes) : classes_(num_classes) {
  if (num_classes <= 0) TESSERA_THROW(ValueError, "ConfusionMatrix: need at least one class, got ", num_classes);
  counts_.assign(static_cast<size_t>(num_classes) * num_classes, 0);
}

void ConfusionMatrix::AddLogits(const Tensor& logits, const Tensor& labels) {
  if (logits.ndim() != 2 || logits.dim(1) != classes_)
    TESSERA_THROW(ShapeError, "ConfusionMatrix: logits ", logits.Describe(), " must be [N, ", classes_, "]");
  if (labels.ndim() != 1 || labels.dim(0) != logits.dim(0))
    TESSERA_THROW(ShapeError, "ConfusionMatrix: labels ", labels.Describe(), " must be [", logits.dim(0), "]");
  std::vector<double> lg = logits.ToVector();
  std::vector<double> lb = labels.ToVector();
  for (int64_t r = 0; r < logits.dim(0); ++r) {
    int best = 0;
    for (int c = 1; c < classes_; ++c)
      if (lg[r * classes_ + c] > lg[r * classes_ + best]) best = c;
    Add(static_cast<int>(lb[r]), best);
  }
}

void ConfusionMatrix::Add(int label, int predicted, int64_t count) {
  if (label < 0 || label >= classes_ || predicted < 0 || predicted >= classes_)
    TESSERA_THROW(DataError, "ConfusionMatrix: label ", label, " or prediction ", predicted,
                  " outside [0, ", classes_, ")");
  counts_[label * classes_ + predicted] += count;
}

void ConfusionMatrix::Merge(const ConfusionMatrix& other) {
  if (other.classes_ != classes_) TESSERA_THROW(ShapeError, "ConfusionMatrix: cannot merge different class counts");
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
}

void ConfusionMatrix::Clear() { std::fill(counts_.begin(), counts_.end(), 0); }

int64_t ConfusionMatrix::total() const {
  int64_t t = 0;
  for (int64_t c : counts_) t += c;
  return t;
}

double ConfusionMatrix::Accuracy() const {
  int64_t t = total(), correct = 0;
  for (int c = 0; c < classes_; ++c) correct += count(c, c);
  return t ? static_cast<double>(correct) / t : 0.0;
}

double ConfusionMatrix::Precision(int c) const {
  int64_t predicted = 0;
  for (int l = 0; l < classes_; ++l) predicted += count(l, c);
  return predicted ? static_cast<double>(count(c, c)) / predicted : 0.0;
}

double ConfusionMatrix::Recall(int c) const {
  int64_t actual = 0;
  for (int p = 0; p < classes_; ++p) actual += count(c, p);
  return actual ? static_cast<double>(count(c, c)) / actual : 0.0;
}

double ConfusionMatrix::F1(int c) const {
  double p = Precision(c), r = Recall(c);
  return p + r > 0 ? 2 * p * r / (p + r) : 0.0;
}

double ConfusionMatrix::MacroPrecision() const {
  double s = 0;
  for (int c = 0; c < classes_; ++c) s += Precision(c);
  return s / classes_;
}

double ConfusionMatrix::MacroRecall() const {
  double s = 0;
  for (int c = 0; c < classes_; ++c) s += Recall(c);
  return s / classes_;
}

double ConfusionMatrix::MacroF1() const {
  double s = 0;
  for (int c = 0; c < classes_; ++c) s += F1(c);
  return s / classes_;
}

}  // namespace tessera
