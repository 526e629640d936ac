#include <gtest/gtest.h>

#include "core/metrics.h"

namespace tessera {
namespace {

TEST(ConfusionMatrix, MacroScoresInClosedForm) {
  // labels:      0 0 0 1 1 2
  // predictions: 0 0 1 1 2 2
  ConfusionMatrix cm(3);
  int labels[] = {0, 0, 0, 1, 1, 2}, preds[] = {0, 0, 1, 1, 2, 2};
  for (int i = 0; i < 6; ++i) cm.Add(labels[i], preds[i]);
  EXPECT_DOUBLE_EQ(cm.Accuracy(), 4.0 / 6);
  EXPECT_DOUBLE_EQ(cm.Precision(0), 1.0);
  EXPECT_DOUBLE_EQ(cm.Precision(1), 0.5);
  EXPECT_DOUBLE_EQ(cm.Precision(2), 0.5);
  EXPECT_DOUBLE_EQ(cm.Recall(0), 2.0 / 3);
  EXPECT_DOUBLE_EQ(cm.Recall(1), 0.5);
  EXPECT_DOUBLE_EQ(cm.Recall(2), 1.0);
  EXPECT_DOUBLE_EQ(cm.MacroPrecision(), 2.0 / 3);
  EXPECT_DOUBLE_EQ(cm.MacroRecall(), (2.0 / 3 + 0.5 + 1.0) / 3);
  double f0 = 2 * 1.0 * (2.0 / 3) / (1.0 + 2.0 / 3), f1 = 0.5, f2 = 2 * 0.5 * 1.0 / 1.5;
  EXPECT_DOUBLE_EQ(cm.MacroF1(), (f0 + f1 + f2) / 3);
  EXPECT_EQ(cm.count(1, 2), 1);
}

TEST(ConfusionMatrix, FromLogitsAndMerge) {
  ConfusionMatrix a(3), b(3);
  Tensor logits = Tensor::FromVector({0.1, 0.9, 0.0, 2, 1, 0, 0, 0, 5}, {3, 3});
  Tensor labels = Tensor::FromVector({1, 1, 2}, {3}, DType::kI32);
  a.AddLogits(logits, labels);
  EXPECT_EQ(a.count(1, 1), 1);
  EXPECT_EQ(a.count(1, 0), 1);
  EXPECT_EQ(a.count(2, 2), 1);
  b.Add(0, 0, 5);
  a.Merge(b);
  EXPECT_EQ(a.total(), 8);
  EXPECT_THROW(a.Add(3, 0), DataError);
  EXPECT_THROW(a.AddLogits(Tensor::Zeros({2, 4}), Tensor::Zeros({2}, DType::kI32)), ShapeError);
}

TEST(ConfusionMatrix, EmptyClassesScoreZero) {
  ConfusionMatrix cm(2);
  cm.Add(0, 0, 3);
  EXPECT_DOUBLE_EQ(cm.Precision(1), 0.0);
  EXPECT_DOUBLE_EQ(cm.Recall(1), 0.0);
  EXPECT_DOUBLE_EQ(cm.MacroRecall(), 0.5);
}

TEST(MeanMetric, WeightedMean) {
  MeanMetric m;
  m.Add(1.0, 1);
  m.Add(4.0, 3);
  EXPECT_DOUBLE_EQ(m.Mean(), 13.0 / 4);
}

}  // namespace
}  // namespace tessera
