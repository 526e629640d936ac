#include "dist/tensor_parallel_gpt.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/ops/ops.h"

namespace tessera::dist {
nn::ProjectionMaker TensorParallelProjections(const TensorGroup& group) {
  nn::ProjectionMaker m;
  m.column = [group](int64_t in, int64_t out, int64_t blocks) -> std::unique_ptr<nn::Module> {
    return std::make_unique<ColumnParallelLinear>(in, out, group, blocks);
  };
  m.row = [group](int64_t in, int64_t out) -> std::unique_ptr<nn::Module> {
    return std::make_unique<RowParallelLinear>(in, out, group);
  };
  m.parts = group.size();
  return m;
}

// ---- VocabParallelEmbedding ----
VocabParallelEmbedding::VocabParallelEmbedding(int64_t vocab, int64_t context, int64_t width, double dropout,
                                               TensorGroup group)
    : Module("VocabParallelEmbedding"), vocab_(vocab), context_(context), width_(width), group_(group) {
  if (vocab <= 0 || context <= 0 || width <= 0 || vocab % group.size() != 0)
    TESSERA_THROW(ValueError, "VocabParallelEmbedding: a vocabulary of ", vocab, " does not split over ",
                  group.size(), " ranks");
  rows_ = vocab / group.size();
  first_ = rows_ * group.rank();
  wte_ = &AddParameter("wte", {rows_, width}, nn::Init::Normal(0.0, 0.02));
  wpe_ = &AddParameter("wpe", {context, width}, nn::Init::Normal(0.0, 0.02));
  if (dropout > 0)
    drop_ = static_cast<nn::Dropout*>(&AddChild("drop", std::make_unique<nn::Dropout>(dropout)));
}

std::string VocabParallelEmbedding::Describe() const {
  return detail::StrCat("VocabParallelEmbedding(vocab=", vocab_, ", context=", context_, ", width=", width_,
                        ", rows ", first_, " to ", first_ + rows_ - 1, ")");
}

Tensor VocabParallelEmbedding::Forward(const Tensor& ids) {
  RequireMaterialized(*wte_);
  if (!ids.defined() || ids.ndim() != 2 || ids.dim(1) > context_ || ids.dim(1) < 1 ||
      !ids.device().is_cpu() || (ids.dtype() != DType::kI32 && ids.dtype() != DType::kI64))
    TESSERA_THROW(ShapeError, Describe(), ": token ids ", ids.defined() ? ids.Describe() : "undefined",
                  " must be host i32 or i64 [B, T] with 1 <= T <= the context of ", context_);
  const int64_t b = ids.dim(0), t = ids.dim(1);
  const std::vector<double> v = ids.ToVector();
  Tensor y = Tensor::Zeros({b, t, width_}, wte_->value.dtype());
  const size_t row_bytes = static_cast<size_t>(width_) * SizeOf(y.dtype());
  const char* table = static_cast<const char*>(wte_->value.raw_data());
  char* out = static_cast<char*>(y.raw_data());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!(v[i] >= 0 && v[i] < static_cast<double>(vocab_)))
      TESSERA_THROW(DataError, Describe(), ": id ", v[i], " at position ", i,
                    " is outside the vocabulary of ", vocab_);
    const int64_t row = static_cast<int64_t>(v[i]) - first_;
    if (row >= 0 && row < rows_) std::memcpy(out + i * row_bytes, table + row * row_bytes, row_bytes);
  }
  AllReduceOver(y, group_);  // each id's row came from the one rank that holds it
  Tensor flat = y.Reshape({b, t * width_});
  ops::AddBias(flat, wpe_->value.Slice0(0, t).Reshape({t * width_}));
  ids_ = training() ? ids : Tensor();
  return drop_ ? drop_->Forward(y) : y;
}

Tensor VocabParallelEmbedding::Backward(const Tensor& dy) {
  RequireSaved(ids_);
  Tensor g = drop_ ? drop_->Backward(dy) : dy;  // the same on every rank
  const int64_t b = ids_.dim(0), t = ids_.dim(1);
  Tensor dpos = wpe_->grad.Slice0(0, t).Reshape({t * width_});
  ops::SumRows(g.Reshape({b, t * width_}), dpos, /*accumulate=*/true);
  const std::vector<double> v = ids_.ToVector();
  std::vector<double> local;  // this rank's ids, shifted to its rows, and their positions
  std::vector<int64_t> at;
  for (size_t i = 0; i < v.size(); ++i) {
    const int64_t row = static_cast<int64_t>(v[i]) - first_;
    if (row >= 0 && row < rows_) {
      local.push_back(static_cast<double>(row));
      at.push_back(static_cast<int64_t>(i));
    }
  }
  if (!local.empty()) {
    Tensor rows = Tensor::Empty({static_cast<int64_t>(at.size()), width_}, g.dtype());
    const Tensor g2 = g.Reshape({b * t, width_});
    for (size_t k = 0; k < at.size(); ++k) rows.Slice0(k, k + 1).CopyFrom(g2.Slice0(at[k], at[k] + 1));
    ops::EmbeddingBackward(Tensor::FromVector(local, {static_cast<int64_t>(local.size())}, DType::kI64), rows,
                           wte_->grad);
  }
  NotifyGradReady(*wte_);
  NotifyGradReady(*wpe_);
  ids_ = Tensor();
  return Tensor();
}

// ---- VocabParallelHead ----
VocabParallelHead::VocabParallelHead(VocabParallelEmbedding& embedding, TensorGroup group)
    : Module("VocabParallelHead"), weight_(embedding.wte()), group_(group) {}

std::string VocabParallelHead::Describe() const {
  return detail::StrCat("VocabParallelHead(vocab rows ", weight_.shape[0], " of ",
                        weight_.shape[0] * group_.size(), ", width=", weight_.shape[1], ", tied to wte)");
}

Tensor VocabParallelHead::Forward(const Tensor& x) {
  RequireMaterialized(weight_);
  const int64_t rows = weight_.shape[0], width = weight_.shape[1];
  if (!x.defined() || x.ndim() != 3 || x.dim(2) != width)
    TESSERA_THROW(ShapeError, Describe(), ": input ", x.defined() ? x.Describe() : "undefined",
                  " must be [B, T, ", width, "]");
  Tensor x2 = x.Reshape({-1, width});
  Tensor logits = ops::MatMul(x2, weight_.value, false, true);
  x_ = training() ? x2 : Tensor();
  x_shape_ = x.shape();
  return logits.Reshape({x.dim(0), x.dim(1), rows});
}

Tensor VocabParallelHead::Backward(const Tensor& dy) {
  RequireSaved(x_);
  Tensor dy2 = dy.Reshape({-1, weight_.shape[0]});
  ops::Gemm(dy2, true, x_, false, weight_.grad, 1.0, 1.0);  // the embedding announces wte
  Tensor dx = ops::MatMul(dy2, weight_.value);              // this rank's vocabulary's part
  AllReduceOver(dx, group_);
  x_ = Tensor();
  return dx.Reshape(x_shape_);
}

// ---- VocabParallelCrossEntropy ----
Tensor VocabParallelCrossEntropy::Forward(const Tensor& logits, const Tensor& labels) {
  if (!logits.defined() || !labels.defined() || labels.dtype() != DType::kI32 ||
      logits.ndim() != labels.ndim() + 1 ||
      Shape(logits.shape().begin(), logits.shape().end() - 1) != labels.shape())
    TESSERA_THROW(ShapeError, "VocabParallelCrossEntropy: logits ",
                  logits.defined() ? logits.Describe() : "undefined", " and i32 labels ",
                  labels.defined() ? labels.Describe() : "undefined", " must be [..., V / T] and [...]");
  const int64_t cols = logits.dim(-1), rows = labels.numel(), vocab = cols * group_.size();
  first_ = cols * group_.rank();
  shape_ = logits.shape();
  const Tensor l2 = logits.Reshape({rows, cols});
  const int32_t* y = labels.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r)
    if (y[r] < 0 || y[r] >= vocab)
      TESSERA_THROW(DataError, "VocabParallelCrossEntropy: label ", y[r], " of row ", r,
                    " is outside the vocabulary of ", vocab);
  std::vector<double> lv = l2.ToVector(), m(static_cast<size_t>(rows)),
                      st(static_cast<size_t>(2 * rows), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    m[r] = *std::max_element(lv.begin() + r * cols, lv.begin() + (r + 1) * cols);
  Tensor mt = Tensor::FromVector(m, {rows}, DType::kF64);
  AllReduceOver(mt, group_, ReduceOp::kMax);  // each row's maximum over the whole vocabulary
  const double* gm = mt.data<double>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) st[r] += std::exp(lv[r * cols + c] - gm[r]);
    const int64_t local = y[r] - first_;
    if (local >= 0 && local < cols) st[rows + r] = lv[r * cols + local];  // the one rank that holds it
  }
  Tensor sums = Tensor::FromVector(st, {2 * rows}, DType::kF64);
  AllReduceOver(sums, group_);
  const double* s = sums.data<double>();
  double loss = 0;
  std::vector<double> p(lv.size());
  for (int64_t r = 0; r < rows; ++r) {
    loss += std::log(s[r]) + gm[r] - s[rows + r];
    for (int64_t c = 0; c < cols; ++c) p[r * cols + c] = std::exp(lv[r * cols + c] - gm[r]) / s[r];
  }
  probs_ = Tensor::FromVector(p, {rows, cols}, logits.dtype());
  labels_ = labels;
  return Tensor::FromVector({rows > 0 ? loss / static_cast<double>(rows) : 0.0}, {}, logits.dtype());
}

Tensor VocabParallelCrossEntropy::Backward(double scale) {
  if (!probs_.defined())
    TESSERA_THROW(Error, "VocabParallelCrossEntropy: Backward() called before Forward()");
  const int64_t rows = probs_.dim(0), cols = probs_.dim(1);
  std::vector<double> d = probs_.ToVector();
  const int32_t* y = labels_.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t local = y[r] - first_;
    if (local >= 0 && local < cols) d[r * cols + local] -= 1.0;
  }
  const double k = rows > 0 ? scale / static_cast<double>(rows) : 0.0;
  for (double& v : d) v *= k;
  Tensor out = Tensor::FromVector(d, shape_, probs_.dtype());
  probs_ = labels_ = Tensor();
  return out;
}

// ---- the model ----
std::unique_ptr<nn::Sequential> BuildTensorParallelGpt(const models::GptConfig& c, TensorGroup group) {
  models::BuildGpt(c);  // the checks of the whole model (cheap: nothing is allocated)
  if (c.heads % group.size() != 0 || c.vocab % group.size() != 0)
    TESSERA_THROW(ConfigError, "gpt: heads (", c.heads, ") and vocab (", c.vocab, ") must divide over the ",
                  group.size(), " ranks of the tensor group");
  const nn::ProjectionMaker make = TensorParallelProjections(group);
  auto net = std::make_unique<nn::Sequential>();
  auto& embed = net->Add(
      "embed", std::make_unique<VocabParallelEmbedding>(c.vocab, c.context, c.width, c.dropout, group));
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(c.layers));
  for (int64_t l = 0; l < c.layers; ++l) {
    auto& block = net->Add("h" + std::to_string(l),
                           std::make_unique<nn::TransformerBlock>(c.width, c.heads, c.dropout, make));
    nn::InitProjection(block.attn().c_proj(), residual_std);
    nn::InitProjection(block.mlp().c_proj(), residual_std);
  }
  net->Add("ln_f", std::make_unique<nn::LayerNorm>(c.width));
  net->Add("head", std::make_unique<VocabParallelHead>(embed, group));
  return net;
}

void InitializeAsWholeGpt(nn::FlatParameters& params, const models::GptConfig& config, uint64_t seed,
                          const TensorGroup& group) {
  auto whole = models::BuildGpt(config);  // shapes and initialisers only: nothing is allocated
  const std::map<std::string, ShardSpec> shards = GptShards(config, group);
  const auto named = whole->NamedParameters();
  for (size_t i = 0; i < named.size(); ++i) {
    const nn::FlatParameters::Entry& e = params.Find(named[i].first);
    Tensor logical = Tensor::Empty(named[i].second->shape, params.values().dtype());
    nn::DrawInitialValues(named[i].second->init, seed, i, logical);
    auto s = shards.find(e.name);
    e.param->value.CopyFrom(s == shards.end() ? logical : TakeShard(logical, s->second));
  }
}

std::map<std::string, ShardSpec> GptShards(const models::GptConfig& c, const TensorGroup& group) {
  const int parts = group.size(), index = group.rank();
  std::map<std::string, ShardSpec> out = {{"embed.wte", {0, 1, parts, index}}};
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string h = "h" + std::to_string(l) + ".";
    out[h + "attn.c_attn.weight"] =
        out[h + "attn.c_attn.bias"] = {0, 3, parts, index};  // q | k | v of its heads
    out[h + "attn.c_proj.weight"] = {1, 1, parts, index};
    out[h + "mlp.c_fc.weight"] = out[h + "mlp.c_fc.bias"] = {0, 1, parts, index};
    out[h + "mlp.c_proj.weight"] = {1, 1, parts, index};
  }
  return out;
}

}  // namespace tessera::dist
