#include "core/ops/ops.h"

#include <string>

#include "core/ops/kernels.h"

namespace tessera::ops {
namespace {

std::string D(const Tensor& t) { return t.Describe(); }

void RequireDefined(const char* op, const char* name, const Tensor& t) {
  if (!t.defined()) TESSERA_THROW(ShapeError, op, ": ", name, " is an undefined tensor");
}

// Same device and dtype for every tensor in the list.
void RequireCompatible(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  const Tensor* first = nullptr;
  const char* first_name = nullptr;
  for (auto& [name, t] : ts) {
    RequireDefined(op, name, *t);
    if (!first) {
      first = t;
      first_name = name;
      continue;
    }
    if (t->device() != first->device())
      TESSERA_THROW(ShapeError, op, ": ", first_name, " is on ", first->device().str(), " but ",
                    name, " is on ", t->device().str());
    if (t->dtype() != first->dtype())
      TESSERA_THROW(ShapeError, op, ": ", first_name, " is ", DTypeName(first->dtype()), " but ",
                    name, " is ", DTypeName(t->dtype()));
  }
}

void RequireSameShape(const char* op, const char* an, const Tensor& a, const char* bn, const Tensor& b) {
  if (a.shape() != b.shape())
    TESSERA_THROW(ShapeError, op, ": ", an, " ", D(a), " and ", bn, " ", D(b),
                  " must have the same shape");
}

void RequireNdim(const char* op, const char* name, const Tensor& t, int ndim) {
  if (t.ndim() != ndim)
    TESSERA_THROW(ShapeError, op, ": ", name, " must be ", ndim, "-D, got ", D(t));
}

void RequireLabels(const char* op, const Tensor& labels, int64_t rows) {
  RequireDefined(op, "labels", labels);
  if (labels.dtype() != DType::kI32)
    TESSERA_THROW(ShapeError, op, ": labels must be i32, got ", D(labels));
  if (labels.ndim() != 1 || labels.dim(0) != rows)
    TESSERA_THROW(ShapeError, op, ": labels ", D(labels), " must be [", rows, "] (one per row)");
}

const OpKernels& K(const Tensor& t) { return KernelsFor(t.device()); }

Tensor Scalar(const Tensor& like) { return Tensor::Empty({}, like.dtype(), like.device()); }

}  // namespace

void Gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha, double beta) {
  RequireCompatible("Gemm", {{"a", &a}, {"b", &b}, {"c", &c}});
  RequireNdim("Gemm", "a", a, 2);
  RequireNdim("Gemm", "b", b, 2);
  RequireNdim("Gemm", "c", c, 2);
  int64_t m = ta ? a.dim(1) : a.dim(0), ka = ta ? a.dim(0) : a.dim(1);
  int64_t kb = tb ? b.dim(1) : b.dim(0), n = tb ? b.dim(0) : b.dim(1);
  if (ka != kb)
    TESSERA_THROW(ShapeError, "Gemm: inner dimensions differ: a ", D(a), (ta ? " (transposed)" : ""),
                  " has ", ka, ", b ", D(b), (tb ? " (transposed)" : ""), " has ", kb);
  if (c.dim(0) != m || c.dim(1) != n)
    TESSERA_THROW(ShapeError, "Gemm: output c ", D(c), " must be [", m, ", ", n, "] for a ", D(a),
                  " and b ", D(b));
  K(a).gemm(a, ta, b, tb, c, alpha, beta);
}

Tensor MatMul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  RequireNdim("MatMul", "a", a, 2);
  RequireNdim("MatMul", "b", b, 2);
  Tensor c = Tensor::Empty({ta ? a.dim(1) : a.dim(0), tb ? b.dim(0) : b.dim(1)}, a.dtype(), a.device());
  Gemm(a, ta, b, tb, c, 1.0, 0.0);
  return c;
}

void UnaryInto(UnaryOp op, const Tensor& x, Tensor& y) {
  RequireCompatible("Unary", {{"x", &x}, {"y", &y}});
  if (x.numel() != y.numel()) RequireSameShape("Unary", "x", x, "y", y);
  K(x).unary(op, x, y);
}

Tensor Unary(UnaryOp op, const Tensor& x) {
  RequireDefined("Unary", "x", x);
  Tensor y = Tensor::Empty(x.shape(), x.dtype(), x.device());
  UnaryInto(op, x, y);
  return y;
}

Tensor UnaryBackward(UnaryOp op, const Tensor& x, const Tensor& dy) {
  RequireCompatible("UnaryBackward", {{"x", &x}, {"dy", &dy}});
  RequireSameShape("UnaryBackward", "x", x, "dy", dy);
  Tensor dx = Tensor::Empty(x.shape(), x.dtype(), x.device());
  K(x).unary_backward(op, x, dy, dx);
  return dx;
}

Tensor Binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  RequireCompatible("Binary", {{"a", &a}, {"b", &b}});
  RequireSameShape("Binary", "a", a, "b", b);
  Tensor out = Tensor::Empty(a.shape(), a.dtype(), a.device());
  K(a).binary(op, a, b, out);
  return out;
}

void Axpby(double alpha, const Tensor& x, double beta, Tensor& y) {
  RequireCompatible("Axpby", {{"x", &x}, {"y", &y}});
  if (x.numel() != y.numel()) RequireSameShape("Axpby", "x", x, "y", y);
  K(x).axpby(alpha, x, beta, y);
}

void Scale(Tensor& x, double s) { Axpby(0.0, x, s, x); }

void AddBias(Tensor& y, const Tensor& bias) {
  RequireCompatible("AddBias", {{"y", &y}, {"bias", &bias}});
  if (bias.ndim() != 1 || y.ndim() < 1 || y.dim(-1) != bias.dim(0))
    TESSERA_THROW(ShapeError, "AddBias: bias ", D(bias), " does not match the last dim of y ", D(y));
  K(y).add_bias(y, bias);
}

void AddChannelBias(Tensor& y, const Tensor& bias) {
  RequireCompatible("AddChannelBias", {{"y", &y}, {"bias", &bias}});
  if (bias.ndim() != 1 || y.ndim() < 2 || y.dim(1) != bias.dim(0))
    TESSERA_THROW(ShapeError, "AddChannelBias: bias ", D(bias), " does not match dim 1 of y ", D(y));
  K(y).add_channel_bias(y, bias);
}

void SumRows(const Tensor& x, Tensor& out, bool accumulate) {
  RequireCompatible("SumRows", {{"x", &x}, {"out", &out}});
  if (out.ndim() != 1 || x.ndim() < 1 || x.dim(-1) != out.dim(0))
    TESSERA_THROW(ShapeError, "SumRows: out ", D(out), " does not match the last dim of x ", D(x));
  K(x).sum_rows(x, out, accumulate);
}

void SumChannels(const Tensor& x, Tensor& out, bool accumulate) {
  RequireCompatible("SumChannels", {{"x", &x}, {"out", &out}});
  if (out.ndim() != 1 || x.ndim() < 2 || x.dim(1) != out.dim(0))
    TESSERA_THROW(ShapeError, "SumChannels: out ", D(out), " does not match dim 1 of x ", D(x));
  K(x).sum_channels(x, out, accumulate);
}

static Tensor Reduce(ReduceOp op, const char* name, const Tensor& x) {
  RequireDefined(name, "x", x);
  if (op == ReduceOp::kMax && x.numel() == 0)
    TESSERA_THROW(ShapeError, name, ": the maximum of an empty tensor ", D(x), " is undefined");
  Tensor out = Scalar(x);
  K(x).reduce(op, x, out);
  return out;
}
Tensor Sum(const Tensor& x) { return Reduce(ReduceOp::kSum, "Sum", x); }
Tensor Mean(const Tensor& x) { return Reduce(ReduceOp::kMean, "Mean", x); }
Tensor Max(const Tensor& x) { return Reduce(ReduceOp::kMax, "Max", x); }

double SumSquares(const Tensor& x) {
  RequireDefined("SumSquares", "x", x);
  if (x.numel() == 0) return 0.0;
  return K(x).sum_squares(x);
}

static Tensor SoftmaxImpl(const Tensor& x, bool log) {
  const char* op = log ? "LogSoftmax" : "Softmax";
  RequireDefined(op, "x", x);
  if (x.ndim() < 1) TESSERA_THROW(ShapeError, op, ": x ", D(x), " needs at least one dimension");
  Tensor y = Tensor::Empty(x.shape(), x.dtype(), x.device());
  K(x).softmax(x, y, log);
  return y;
}
Tensor Softmax(const Tensor& x) { return SoftmaxImpl(x, false); }
Tensor LogSoftmax(const Tensor& x) { return SoftmaxImpl(x, true); }

Tensor SoftmaxBackward(const Tensor& y, const Tensor& dy, bool log) {
  RequireCompatible("SoftmaxBackward", {{"y", &y}, {"dy", &dy}});
  RequireSameShape("SoftmaxBackward", "y", y, "dy", dy);
  Tensor dx = Tensor::Empty(y.shape(), y.dtype(), y.device());
  K(y).softmax_backward(y, dy, dx, log);
  return dx;
}

Tensor LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor* mean,
                 Tensor* rstd) {
  RequireCompatible("LayerNorm", {{"x", &x}, {"gamma", &gamma}, {"beta", &beta}});
  if (x.ndim() < 1 || gamma.ndim() != 1 || gamma.dim(0) != x.dim(-1))
    TESSERA_THROW(ShapeError, "LayerNorm: gamma ", D(gamma), " does not match the last dim of x ", D(x));
  RequireSameShape("LayerNorm", "gamma", gamma, "beta", beta);
  int64_t rows = x.dim(-1) ? x.numel() / x.dim(-1) : 0;
  Tensor y = Tensor::Empty(x.shape(), x.dtype(), x.device());
  Tensor m = Tensor::Empty({rows}, x.dtype(), x.device());
  Tensor r = Tensor::Empty({rows}, x.dtype(), x.device());
  K(x).layernorm(x, gamma, beta, eps, y, m, r);
  if (mean) *mean = m;
  if (rstd) *rstd = r;
  return y;
}

Tensor LayerNormBackward(const Tensor& x, const Tensor& gamma, const Tensor& mean, const Tensor& rstd,
                         const Tensor& dy, Tensor& dgamma, Tensor& dbeta) {
  RequireCompatible("LayerNormBackward", {{"x", &x}, {"gamma", &gamma}, {"mean", &mean},
                                          {"rstd", &rstd}, {"dy", &dy}, {"dgamma", &dgamma},
                                          {"dbeta", &dbeta}});
  RequireSameShape("LayerNormBackward", "x", x, "dy", dy);
  RequireSameShape("LayerNormBackward", "gamma", gamma, "dgamma", dgamma);
  RequireSameShape("LayerNormBackward", "gamma", gamma, "dbeta", dbeta);
  const int64_t rows = x.ndim() >= 1 && x.dim(-1) ? x.numel() / x.dim(-1) : 0;
  if (mean.numel() != rows || rstd.numel() != rows)
    TESSERA_THROW(ShapeError, "LayerNormBackward: mean ", D(mean), " and rstd ", D(rstd), " must hold one value per row (",
                  rows, ") of x ", D(x));
  Tensor dx = Tensor::Empty(x.shape(), x.dtype(), x.device());
  K(x).layernorm_backward(x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
  return dx;
}

// qkv [B, T, 3C] with C divisible by `heads`.
static void RequirePackedQkv(const char* op, const Tensor& qkv, int64_t heads) {
  RequireDefined(op, "qkv", qkv);
  RequireNdim(op, "qkv", qkv, 3);
  if (heads < 1) TESSERA_THROW(ShapeError, op, ": heads must be >= 1, got ", heads);
  if (qkv.dim(2) % (3 * heads) != 0)
    TESSERA_THROW(ShapeError, op, ": the last dim of qkv ", D(qkv), " must be 3 * C with C divisible by the ", heads,
                  " heads");
  if (!K(qkv).causal_attention)
    TESSERA_THROW(DeviceError, op, ": no kernel on ", qkv.device().str(), " yet (the CPU has one)");
}

Tensor CausalAttention(const Tensor& qkv, int64_t heads, Tensor* lse) {
  RequirePackedQkv("CausalAttention", qkv, heads);
  const int64_t b = qkv.dim(0), t = qkv.dim(1), c = qkv.dim(2) / 3;
  Tensor y = Tensor::Empty({b, t, c}, qkv.dtype(), qkv.device());
  Tensor l = Tensor::Empty({b, heads, t}, qkv.dtype(), qkv.device());
  if (qkv.numel() > 0) K(qkv).causal_attention(qkv, heads, y, l);
  if (lse) *lse = l;
  return y;
}

Tensor CausalAttentionBackward(const Tensor& qkv, const Tensor& lse, const Tensor& dy, int64_t heads) {
  const char* op = "CausalAttentionBackward";
  RequirePackedQkv(op, qkv, heads);
  RequireCompatible(op, {{"qkv", &qkv}, {"lse", &lse}, {"dy", &dy}});
  const int64_t b = qkv.dim(0), t = qkv.dim(1), c = qkv.dim(2) / 3;
  if (dy.shape() != Shape{b, t, c})
    TESSERA_THROW(ShapeError, op, ": dy ", D(dy), " must be [", b, ", ", t, ", ", c, "] for qkv ", D(qkv));
  if (lse.shape() != Shape{b, heads, t})
    TESSERA_THROW(ShapeError, op, ": lse ", D(lse), " must be [", b, ", ", heads, ", ", t, "] for qkv ", D(qkv));
  Tensor dqkv = Tensor::Empty(qkv.shape(), qkv.dtype(), qkv.device());
  if (qkv.numel() > 0) K(qkv).causal_attention_backward(qkv, lse, dy, heads, dqkv);
  return dqkv;
}

static void RequireIds(const char* op, const Tensor& ids, const Tensor& weight) {
  RequireDefined(op, "ids", ids);
  if (ids.dtype() != DType::kI32 && ids.dtype() != DType::kI64)
    TESSERA_THROW(ShapeError, op, ": ids must be i32 or i64, got ", D(ids));
  if (ids.device() != weight.device())
    TESSERA_THROW(ShapeError, op, ": ids are on ", ids.device().str(), " but the weight is on ",
                  weight.device().str());
  if (ids.device().is_cpu()) {
    std::vector<double> v = ids.ToVector();
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i] < 0 || v[i] >= weight.dim(0))
        TESSERA_THROW(DataError, op, ": id ", static_cast<int64_t>(v[i]), " at position ", i,
                      " is outside the table's ", weight.dim(0), " rows");
  }
}

Tensor Embedding(const Tensor& weight, const Tensor& ids) {
  RequireDefined("Embedding", "weight", weight);
  RequireNdim("Embedding", "weight", weight, 2);
  RequireIds("Embedding", ids, weight);
  Shape s = ids.shape();
  s.push_back(weight.dim(1));
  Tensor out = Tensor::Empty(s, weight.dtype(), weight.device());
  K(weight).embedding(weight, ids, out);
  return out;
}

void EmbeddingBackward(const Tensor& ids, const Tensor& dy, Tensor& dweight) {
  RequireCompatible("EmbeddingBackward", {{"dy", &dy}, {"dweight", &dweight}});
  RequireNdim("EmbeddingBackward", "dweight", dweight, 2);
  RequireIds("EmbeddingBackward", ids, dweight);
  if (dy.numel() != ids.numel() * dweight.dim(1))
    TESSERA_THROW(ShapeError, "EmbeddingBackward: dy ", D(dy), " does not match ids ", D(ids),
                  " times the embedding width ", dweight.dim(1));
  K(dy).embedding_backward(ids, dy, dweight);
}

Tensor Dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  RequireDefined("Dropout", "x", x);
  if (!(p >= 0.0 && p < 1.0))
    TESSERA_THROW(ValueError, "Dropout: probability must be in [0, 1), got ", p);
  Tensor y = Tensor::Empty(x.shape(), x.dtype(), x.device());
  K(x).dropout(x, p, seed, offset, y);
  return y;
}

Shape Conv2dOutputShape(const Shape& x, const Shape& w, const Conv2dParams& p) {
  if (x.size() != 4 || w.size() != 4)
    TESSERA_THROW(ShapeError, "Conv2d: input ", ShapeString(x), " and weight ", ShapeString(w),
                  " must both be 4-D (NCHW and KCRS)");
  if (x[1] != w[1])
    TESSERA_THROW(ShapeError, "Conv2d: input ", ShapeString(x), " has ", x[1],
                  " channels but weight ", ShapeString(w), " expects ", w[1]);
  if (p.stride_h < 1 || p.stride_w < 1 || p.pad_h < 0 || p.pad_w < 0)
    TESSERA_THROW(ValueError, "Conv2d: stride must be >= 1 and padding >= 0");
  int64_t oh = (x[2] + 2 * p.pad_h - w[2]) / p.stride_h + 1;
  int64_t ow = (x[3] + 2 * p.pad_w - w[3]) / p.stride_w + 1;
  if (x[2] + 2 * p.pad_h < w[2] || x[3] + 2 * p.pad_w < w[3])
    TESSERA_THROW(ShapeError, "Conv2d: kernel ", ShapeString(w), " is larger than the padded input ",
                  ShapeString(x));
  return {x[0], w[0], oh, ow};
}

Tensor Conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  RequireCompatible("Conv2d", {{"x", &x}, {"w", &w}});
  Shape ys = Conv2dOutputShape(x.shape(), w.shape(), p);
  if (bias.defined()) {
    RequireCompatible("Conv2d", {{"x", &x}, {"bias", &bias}});
    if (bias.ndim() != 1 || bias.dim(0) != w.dim(0))
      TESSERA_THROW(ShapeError, "Conv2d: bias ", D(bias), " must be [", w.dim(0), "]");
  }
  Tensor y = Tensor::Empty(ys, x.dtype(), x.device());
  K(x).conv2d(x, w, bias, p, y);
  return y;
}

void Conv2dBackward(const Tensor& x, const Tensor& w, const Tensor& dy, const Conv2dParams& p,
                    Tensor* dx, Tensor& dw, Tensor* db) {
  RequireCompatible("Conv2dBackward", {{"x", &x}, {"w", &w}, {"dy", &dy}, {"dw", &dw}});
  Shape ys = Conv2dOutputShape(x.shape(), w.shape(), p);
  if (dy.shape() != ys)
    TESSERA_THROW(ShapeError, "Conv2dBackward: dy ", D(dy), " must be ", ShapeString(ys));
  RequireSameShape("Conv2dBackward", "w", w, "dw", dw);
  Tensor dx_t, db_t;
  if (dx) {
    if (!dx->defined()) *dx = Tensor::Empty(x.shape(), x.dtype(), x.device());
    RequireSameShape("Conv2dBackward", "x", x, "dx", *dx);
    dx_t = *dx;
  }
  if (db) {
    RequireCompatible("Conv2dBackward", {{"dy", &dy}, {"db", db}});
    if (db->ndim() != 1 || db->dim(0) != w.dim(0))
      TESSERA_THROW(ShapeError, "Conv2dBackward: db ", D(*db), " must be [", w.dim(0), "]");
    db_t = *db;
  }
  K(x).conv2d_backward(x, w, dy, p, dx_t, dw, db_t);
}

Shape Pool2dOutputShape(const Shape& x, const Pool2dParams& p) {
  if (x.size() != 4) TESSERA_THROW(ShapeError, "MaxPool2d: input ", ShapeString(x), " must be 4-D (NCHW)");
  if (p.kernel_h < 1 || p.kernel_w < 1 || p.stride_h < 1 || p.stride_w < 1 || p.pad_h < 0 ||
      p.pad_w < 0 || 2 * p.pad_h > p.kernel_h || 2 * p.pad_w > p.kernel_w)
    TESSERA_THROW(ValueError, "MaxPool2d: kernel and stride must be >= 1 and padding at most half the kernel");
  if (x[2] + 2 * p.pad_h < p.kernel_h || x[3] + 2 * p.pad_w < p.kernel_w)
    TESSERA_THROW(ShapeError, "MaxPool2d: window ", p.kernel_h, "x", p.kernel_w,
                  " is larger than the padded input ", ShapeString(x));
  return {x[0], x[1], (x[2] + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1,
          (x[3] + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1};
}

Tensor MaxPool2d(const Tensor& x, const Pool2dParams& p, Tensor* indices) {
  RequireDefined("MaxPool2d", "x", x);
  Shape ys = Pool2dOutputShape(x.shape(), p);
  Tensor y = Tensor::Empty(ys, x.dtype(), x.device());
  Tensor idx = Tensor::Empty(ys, DType::kI32, x.device());
  K(x).maxpool2d(x, p, y, idx);
  if (indices) *indices = idx;
  return y;
}

Tensor MaxPool2dBackward(const Tensor& dy, const Tensor& indices, const Shape& x_shape) {
  RequireDefined("MaxPool2dBackward", "dy", dy);
  RequireDefined("MaxPool2dBackward", "indices", indices);
  if (indices.shape() != dy.shape() || indices.dtype() != DType::kI32)
    TESSERA_THROW(ShapeError, "MaxPool2dBackward: indices ", D(indices), " must be i32 shaped like dy ", D(dy));
  if (x_shape.size() != 4 || dy.ndim() != 4 || x_shape[0] != dy.dim(0) || x_shape[1] != dy.dim(1))
    TESSERA_THROW(ShapeError, "MaxPool2dBackward: dy ", D(dy), " does not match input shape ",
                  ShapeString(x_shape));
  Tensor dx = Tensor::Empty(x_shape, dy.dtype(), dy.device());
  K(dy).maxpool2d_backward(dy, indices, dx);
  return dx;
}

// Labels on the scores' device, each in [0, classes) (checked on the host; CUDA kernels clamp).
static void RequireLabelValues(const char* op, const Tensor& labels, const Tensor& scores) {
  if (labels.device() != scores.device())
    TESSERA_THROW(ShapeError, op, ": labels are on ", labels.device().str(), " but the scores on ",
                  scores.device().str());
  if (labels.device().is_cpu()) {
    const int32_t* l = labels.data<int32_t>();
    for (int64_t i = 0; i < labels.numel(); ++i)
      if (l[i] < 0 || l[i] >= scores.dim(1))
        TESSERA_THROW(DataError, op, ": label ", l[i], " in row ", i, " is outside [0, ", scores.dim(1), ")");
  }
}

Tensor CrossEntropy(const Tensor& logits, const Tensor& labels, Tensor* probs) {
  RequireDefined("CrossEntropy", "logits", logits);
  RequireNdim("CrossEntropy", "logits", logits, 2);
  RequireLabels("CrossEntropy", labels, logits.dim(0));
  RequireLabelValues("CrossEntropy", labels, logits);
  Tensor pr = Tensor::Empty(logits.shape(), logits.dtype(), logits.device());
  Tensor loss = Scalar(logits);
  K(logits).cross_entropy(logits, labels, pr, loss);
  if (probs) *probs = pr;
  return loss;
}

Tensor CrossEntropyBackward(const Tensor& probs, const Tensor& labels, double scale) {
  RequireDefined("CrossEntropyBackward", "probs", probs);
  RequireNdim("CrossEntropyBackward", "probs", probs, 2);
  RequireLabels("CrossEntropyBackward", labels, probs.dim(0));
  RequireLabelValues("CrossEntropyBackward", labels, probs);
  Tensor d = Tensor::Empty(probs.shape(), probs.dtype(), probs.device());
  K(probs).cross_entropy_backward(probs, labels, scale, d);
  return d;
}

static void RequireState(const char* op, const char* name, const Tensor& param, const Tensor& t) {
  if (!t.defined()) TESSERA_THROW(ShapeError, op, ": optimizer state ", name, " is missing");
  RequireCompatible(op, {{"param", &param}, {name, &t}});
  if (t.numel() != param.numel())
    TESSERA_THROW(ShapeError, op, ": ", name, " ", D(t), " does not match param ", D(param));
}

void SgdStep(Tensor& param, const Tensor& grad, Tensor& buf, const SgdStepParams& p) {
  RequireState("SgdStep", "grad", param, grad);
  if (p.momentum != 0) RequireState("SgdStep", "momentum_buffer", param, buf);
  if (param.numel() == 0) return;
  K(param).sgd_step(param, grad, buf, p);
}

void AdamStep(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStepParams& p) {
  RequireState("AdamStep", "grad", param, grad);
  RequireState("AdamStep", "exp_avg", param, m);
  RequireState("AdamStep", "exp_avg_sq", param, v);
  if (param.numel() == 0) return;
  K(param).adam_step(param, grad, m, v, p);
}

void RmspropStep(Tensor& param, const Tensor& grad, Tensor& sq, Tensor& ga, Tensor& buf,
                 const RmspropStepParams& p) {
  RequireState("RmspropStep", "grad", param, grad);
  RequireState("RmspropStep", "square_avg", param, sq);
  if (p.centered) RequireState("RmspropStep", "grad_avg", param, ga);
  if (p.momentum > 0) RequireState("RmspropStep", "momentum_buffer", param, buf);
  if (param.numel() == 0) return;
  K(param).rmsprop_step(param, grad, sq, ga, buf, p);
}

void Synchronize(Device device) { KernelsFor(device).synchronize(device); }

}  // namespace tessera::ops
