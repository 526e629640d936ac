#include "dist/tensor_parallel.h"

#include <cstring>

#include "core/ops/ops.h"

namespace tessera::dist {
namespace {

void RequireLastDim(const nn::Module& m, const Tensor& x, int64_t d) {
  if (!x.defined() || x.ndim() < 1 || x.dim(-1) != d)
    TESSERA_THROW(ShapeError, m.Describe(), ": input ", x.defined() ? x.Describe() : "undefined",
                  " must have last dimension ", d);
}

}  // namespace

void AllReduceOver(Tensor& t, const TensorGroup& g, ReduceOp op) {
  if (g.size() == 1) return;
  CollectiveOptions o;
  o.op = op;
  o.timeout_s = g.timeout_s;
  g.group->AllReduce(t, o)->Wait();
}

Shape ShardShape(const Shape& logical, const ShardSpec& s) {
  if (s.dim < 0 || s.dim >= static_cast<int>(logical.size()) || s.blocks < 1 || s.parts < 1 || s.index < 0 ||
      s.index >= s.parts || logical[s.dim] % (s.blocks * s.parts) != 0)
    TESSERA_THROW(ShapeError, "ShardSpec: dimension ", s.dim, " of ", ShapeString(logical),
                  " does not split into ", s.blocks, " blocks of ", s.parts, " parts (piece ", s.index, ")");
  Shape out = logical;
  out[s.dim] /= s.parts;
  return out;
}

Tensor TakeShard(const Tensor& logical, const ShardSpec& s) {
  if (!logical.defined() || !logical.device().is_cpu())
    TESSERA_THROW(ShapeError, "TakeShard: the logical tensor must be on the host, got ",
                  logical.defined() ? logical.Describe() : "an undefined tensor");
  const Shape& shape = logical.shape();
  Tensor out = Tensor::Empty(ShardShape(shape, s), logical.dtype());
  // View the logical tensor as [outer, blocks, parts, piece * inner]; the shard is [outer, blocks, piece *
  // inner].
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < s.dim; ++d) outer *= shape[d];
  for (int d = s.dim + 1; d < static_cast<int>(shape.size()); ++d) inner *= shape[d];
  const int64_t piece =
      shape[s.dim] / (s.blocks * s.parts) * inner * static_cast<int64_t>(SizeOf(logical.dtype()));
  const char* src = static_cast<const char*>(logical.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t b = 0; b < s.blocks; ++b) {
      std::memcpy(dst, src + ((o * s.blocks + b) * s.parts + s.index) * piece, static_cast<size_t>(piece));
      dst += piece;
    }
  return out;
}

// ---- ColumnParallelLinear ----
ColumnParallelLinear::ColumnParallelLinear(int64_t in, int64_t out, TensorGroup group, int64_t blocks,
                                           bool bias)
    : Module("ColumnParallelLinear"), in_(in), out_(out), blocks_(blocks), group_(group) {
  if (in <= 0 || out <= 0 || blocks < 1 || out % (blocks * group.size()) != 0)
    TESSERA_THROW(ValueError, "ColumnParallelLinear: out=", out, " does not split into ", blocks,
                  " blocks over ", group.size(), " ranks");
  local_out_ = out / group.size();
  weight_ = &AddParameter("weight", {local_out_, in}, nn::Init::KaimingUniformA5(in));
  if (bias) bias_ = &AddParameter("bias", {local_out_}, nn::Init::KaimingUniformA5(in));
}

std::string ColumnParallelLinear::Describe() const {
  return detail::StrCat("ColumnParallelLinear(in=", in_, ", out=", out_, ", blocks=", blocks_, ", rank ",
                        group_.rank(), " of ", group_.size(), ": out ", local_out_, ")");
}

Tensor ColumnParallelLinear::Forward(const Tensor& x) {
  RequireMaterialized(*weight_);
  RequireLastDim(*this, x, in_);
  Tensor x2 = x.Reshape({-1, in_});
  Tensor y = ops::MatMul(x2, weight_->value, false, true);
  if (bias_) ops::AddBias(y, bias_->value);
  x_ = training() ? x2 : Tensor();
  x_shape_ = x.shape();
  Shape ys = x.shape();
  ys.back() = local_out_;
  return y.Reshape(ys);
}

Tensor ColumnParallelLinear::Backward(const Tensor& dy) {
  RequireSaved(x_);
  Tensor dy2 = dy.Reshape({-1, local_out_});
  ops::Gemm(dy2, true, x_, false, weight_->grad, 1.0, 1.0);  // dW_shard += dy^T x
  NotifyGradReady(*weight_);
  if (bias_) {
    ops::SumRows(dy2, bias_->grad, /*accumulate=*/true);
    NotifyGradReady(*bias_);
  }
  Tensor dx;
  if (needs_input_grad()) {
    dx = ops::MatMul(dy2, weight_->value);  // this rank's part of dL/dx
    AllReduceOver(dx, group_);
    dx = dx.Reshape(x_shape_);
  }
  x_ = Tensor();
  return dx;
}

// ---- RowParallelLinear ----
RowParallelLinear::RowParallelLinear(int64_t in, int64_t out, TensorGroup group, bool bias)
    : Module("RowParallelLinear"), in_(in), out_(out), group_(group) {
  if (in <= 0 || out <= 0 || in % group.size() != 0)
    TESSERA_THROW(ValueError, "RowParallelLinear: in=", in, " does not split over ", group.size(), " ranks");
  local_in_ = in / group.size();
  weight_ = &AddParameter("weight", {out, local_in_}, nn::Init::KaimingUniformA5(in));
  if (bias) bias_ = &AddParameter("bias", {out}, nn::Init::KaimingUniformA5(in));
}

std::string RowParallelLinear::Describe() const {
  return detail::StrCat("RowParallelLinear(in=", in_, ", out=", out_, ", rank ", group_.rank(), " of ",
                        group_.size(), ": in ", local_in_, ")");
}

Tensor RowParallelLinear::Forward(const Tensor& x) {
  RequireMaterialized(*weight_);
  RequireLastDim(*this, x, local_in_);
  Tensor x2 = x.Reshape({-1, local_in_});
  Tensor y = ops::MatMul(x2, weight_->value, false, true);  // this rank's part of the sum
  AllReduceOver(y, group_);
  if (bias_) ops::AddBias(y, bias_->value);  // once, after the sum
  x_ = training() ? x2 : Tensor();
  x_shape_ = x.shape();
  Shape ys = x.shape();
  ys.back() = out_;
  return y.Reshape(ys);
}

Tensor RowParallelLinear::Backward(const Tensor& dy) {
  RequireSaved(x_);
  Tensor dy2 = dy.Reshape({-1, out_});
  ops::Gemm(dy2, true, x_, false, weight_->grad, 1.0, 1.0);
  NotifyGradReady(*weight_);
  if (bias_) {
    ops::SumRows(dy2, bias_->grad, /*accumulate=*/true);
    NotifyGradReady(*bias_);
  }
  Tensor dx;
  if (needs_input_grad()) dx = ops::MatMul(dy2, weight_->value).Reshape(x_shape_);
  x_ = Tensor();
  return dx;
}

}  // namespace tessera::dist
