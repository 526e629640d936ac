#include "core/nn/loss.h"

#include "core/ops/ops.h"

namespace tessera::nn {

Tensor CrossEntropyLoss::Forward(const Tensor& logits, const Tensor& labels) {
  // A sequence model's logits [n, T, C] and labels [n, T] are n * T rows of one prediction each.
  if (logits.defined() && labels.defined() && logits.ndim() > 2 && labels.ndim() == logits.ndim() - 1) {
    const Shape lead(logits.shape().begin(), logits.shape().end() - 1);
    if (lead != labels.shape())
      TESSERA_THROW(ShapeError, "CrossEntropyLoss: logits ", logits.Describe(), " and labels ",
                    labels.Describe(), " disagree on the positions");
    shape_ = logits.shape();
    Tensor loss = ops::CrossEntropy(logits.Reshape({-1, logits.dim(-1)}), labels.Reshape({-1}), &probs_);
    labels_ = labels.Reshape({-1});
    return loss;
  }
  shape_ = logits.defined() ? logits.shape() : Shape{};
  Tensor loss = ops::CrossEntropy(logits, labels, &probs_);
  labels_ = labels;
  return loss;
}

Tensor CrossEntropyLoss::Backward(double scale) {
  if (!probs_.defined()) TESSERA_THROW(Error, "CrossEntropyLoss: Backward() called before Forward()");
  Tensor d = ops::CrossEntropyBackward(probs_, labels_, scale);
  probs_ = labels_ = Tensor();
  return d.Reshape(shape_);
}

Tensor MSELoss::Forward(const Tensor& pred, const Tensor& target) {
  if (pred.defined() && target.defined() && pred.shape() != target.shape())
    TESSERA_THROW(ShapeError, "MSELoss: prediction ", pred.Describe(), " and target ", target.Describe(),
                  " must have the same shape");
  diff_ = ops::Sub(pred, target);
  return ops::Mean(ops::Unary(UnaryOp::kSquare, diff_));
}

Tensor MSELoss::Backward(double scale) {
  if (!diff_.defined()) TESSERA_THROW(Error, "MSELoss: Backward() called before Forward()");
  Tensor d = diff_;
  ops::Scale(d, 2.0 * scale / static_cast<double>(d.numel() ? d.numel() : 1));
  diff_ = Tensor();
  return d;
}

}  // namespace tessera::nn
