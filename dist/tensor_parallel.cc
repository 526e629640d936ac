#include "dist/tensor_parallel.h"

#include <cstring>

#include "core/ops/ops.h"

namespace tessera::dist {
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
namespace {
int64_t PartOf(const char* what, int64_t n, int64_t blocks, const TensorGroup& g) {
  if (n <= 0 || blocks < 1 || n % (blocks * g.size()) != 0)
    TESSERA_THROW(ValueError, what, ": ", n, " features do not split into ", blocks, " blocks over ",
                  g.size(), " ranks");
  return n / g.size();
}
}  // namespace

ColumnParallelLinear::ColumnParallelLinear(int64_t in, int64_t out, TensorGroup group, int64_t blocks,
                                           bool bias)
    : nn::Linear(in, PartOf("ColumnParallelLinear", out, blocks, group), bias),
      in_(in),
      out_(out),
      blocks_(blocks),
      group_(group) {}

std::string ColumnParallelLinear::Describe() const {
  return detail::StrCat("ColumnParallelLinear(in=", in_, ", out=", out_, ", blocks=", blocks_, ", rank ",
                        group_.rank(), " of ", group_.size(), ": out ", out_ / group_.size(), ")");
}

Tensor ColumnParallelLinear::Backward(const Tensor& dy) {
  Tensor dx = nn::Linear::Backward(dy);  // this rank's part of dL/dx
  if (dx.defined()) AllReduceOver(dx, group_);
  return dx;
}

// ---- RowParallelLinear ----
RowParallelLinear::RowParallelLinear(int64_t in, int64_t out, TensorGroup group, bool bias)
    : nn::Linear(PartOf("RowParallelLinear", in, 1, group), out, /*bias=*/false),
      in_(in),
      out_(out),
      group_(group) {
  weight().init = nn::Init::KaimingUniformA5(in);  // the whole layer's fan-in, not the shard's
  if (bias) bias_ = &AddParameter("bias", {out}, nn::Init::KaimingUniformA5(in));
}

std::string RowParallelLinear::Describe() const {
  return detail::StrCat("RowParallelLinear(in=", in_, ", out=", out_, ", rank ", group_.rank(), " of ",
                        group_.size(), ": in ", in_ / group_.size(), ")");
}

Tensor RowParallelLinear::Forward(const Tensor& x) {
  Tensor y = nn::Linear::Forward(x);  // this rank's part of the sum
  AllReduceOver(y, group_);
  if (bias_) {
    Tensor rows = y.Reshape({-1, out_});
    ops::AddBias(rows, bias_->value);  // once, after the sum
  }
  return y;
}

Tensor RowParallelLinear::Backward(const Tensor& dy) {
  if (bias_) {
    ops::SumRows(dy.Reshape({-1, out_}), bias_->grad, /*accumulate=*/true);
    NotifyGradReady(*bias_);
  }
  return nn::Linear::Backward(dy);
}

}  // namespace tessera::dist
