#include "core/nn/transformer.h"

#include <memory>

#include "core/ops/ops.h"

namespace tessera::nn {
namespace {
// A made projection, initialised as GPT-2's: weight N(0, 0.02), bias zero.
std::unique_ptr<Module> Initialised(std::unique_ptr<Module> m) {
  InitProjection(*m, 0.02);
  return m;
}

void RequireActivations(const Module& m, const Tensor& x, int64_t width) {
  if (!x.defined() || x.ndim() != 3 || x.dim(2) != width)
    TESSERA_THROW(ShapeError, m.Describe(), ": input ", x.defined() ? x.Describe() : "undefined",
                  " must be [B, T, ", width, "]");
}
}  // namespace

ProjectionMaker ProjectionMaker::Plain() {
  ProjectionMaker m;
  m.column = [](int64_t in, int64_t out, int64_t) { return std::make_unique<Linear>(in, out); };
  m.row = [](int64_t in, int64_t out) { return std::make_unique<Linear>(in, out); };
  return m;
}

void InitProjection(Module& projection, double std) {
  for (auto& [name, p] : projection.NamedParameters()) {
    if (name == "weight") p->init = Init::Normal(0.0, std);
    if (name == "bias") p->init = Init::Zeros();
  }
}

// ---- CausalSelfAttention ----
CausalSelfAttention::CausalSelfAttention(int64_t width, int64_t heads, double dropout,
                                         const ProjectionMaker& make)
    : Module("CausalSelfAttention"), width_(width), heads_(heads) {
  if (width <= 0 || heads <= 0 || width % heads != 0 || heads % make.parts != 0)
    TESSERA_THROW(ValueError, "CausalSelfAttention: width ", width, " must be a positive multiple of the ",
                  heads, " heads, and the heads a multiple of the ", make.parts,
                  " ranks they are split across");
  local_heads_ = heads / make.parts;
  c_attn_ = &AddChild("c_attn", Initialised(make.column(width, 3 * width, 3)));
  c_proj_ = &AddChild("c_proj", Initialised(make.row(width, width)));
  if (dropout > 0) drop_ = static_cast<Dropout*>(&AddChild("drop", std::make_unique<Dropout>(dropout)));
}

std::string CausalSelfAttention::Describe() const {
  return detail::StrCat("CausalSelfAttention(width=", width_, ", heads=", heads_, ")");
}

void CausalSelfAttention::set_needs_input_grad(bool needs) {
  Module::set_needs_input_grad(needs);
  c_attn_->set_needs_input_grad(needs);
}

Tensor CausalSelfAttention::Forward(const Tensor& x) {
  RequireActivations(*this, x, width_);
  Tensor qkv = c_attn_->Forward(x), lse;
  if (qkv.dim(2) != 3 * local_heads_ * (width_ / heads_))  // the maker's parts and its projections disagree
    TESSERA_THROW(ShapeError, Describe(), ": c_attn gave ", qkv.Describe(), ", not q | k | v of ",
                  local_heads_, " heads");
  Tensor y = c_proj_->Forward(ops::CausalAttention(qkv, local_heads_, &lse));
  if (training()) {
    qkv_ = qkv;
    lse_ = lse;
  }
  return drop_ ? drop_->Forward(y) : y;
}

Tensor CausalSelfAttention::Backward(const Tensor& dy) {
  RequireSaved(qkv_);
  Tensor g = c_proj_->Backward(drop_ ? drop_->Backward(dy) : dy);
  Tensor dqkv = ops::CausalAttentionBackward(qkv_, lse_, g, local_heads_);
  qkv_ = lse_ = Tensor();
  return c_attn_->Backward(dqkv);
}

// ---- TransformerMlp ----
TransformerMlp::TransformerMlp(int64_t width, double dropout, const ProjectionMaker& make)
    : Module("TransformerMlp") {
  c_fc_ = &AddChild("c_fc", Initialised(make.column(width, 4 * width, 1)));
  gelu_ = static_cast<GELU*>(&AddChild("gelu", std::make_unique<GELU>()));
  c_proj_ = &AddChild("c_proj", Initialised(make.row(4 * width, width)));
  if (dropout > 0) drop_ = static_cast<Dropout*>(&AddChild("drop", std::make_unique<Dropout>(dropout)));
}

void TransformerMlp::set_needs_input_grad(bool needs) {
  Module::set_needs_input_grad(needs);
  c_fc_->set_needs_input_grad(needs);
}

Tensor TransformerMlp::Forward(const Tensor& x) {
  Tensor y = c_proj_->Forward(gelu_->Forward(c_fc_->Forward(x)));
  return drop_ ? drop_->Forward(y) : y;
}

Tensor TransformerMlp::Backward(const Tensor& dy) {
  Tensor g = c_proj_->Backward(drop_ ? drop_->Backward(dy) : dy);
  return c_fc_->Backward(gelu_->Backward(g));
}

// ---- TransformerBlock ----
TransformerBlock::TransformerBlock(int64_t width, int64_t heads, double dropout, const ProjectionMaker& make)
    : Module("TransformerBlock") {
  ln_1_ = static_cast<LayerNorm*>(&AddChild("ln_1", std::make_unique<LayerNorm>(width)));
  attn_ = static_cast<CausalSelfAttention*>(
      &AddChild("attn", std::make_unique<CausalSelfAttention>(width, heads, dropout, make)));
  ln_2_ = static_cast<LayerNorm*>(&AddChild("ln_2", std::make_unique<LayerNorm>(width)));
  mlp_ =
      static_cast<TransformerMlp*>(&AddChild("mlp", std::make_unique<TransformerMlp>(width, dropout, make)));
}

Tensor TransformerBlock::Forward(const Tensor& x) {
  Tensor h = ops::Add(x, attn_->Forward(ln_1_->Forward(x)));
  return ops::Add(h, mlp_->Forward(ln_2_->Forward(h)));
}

// Each residual branch's gradient adds to the gradient that flows past it.
Tensor TransformerBlock::Backward(const Tensor& dy) {
  Tensor dh = ops::Add(dy, ln_2_->Backward(mlp_->Backward(dy)));
  return ops::Add(dh, ln_1_->Backward(attn_->Backward(dh)));
}

// ---- GptEmbedding ----
GptEmbedding::GptEmbedding(int64_t vocab, int64_t context, int64_t width, double dropout)
    : Module("GptEmbedding"), vocab_(vocab), context_(context), width_(width) {
  if (vocab <= 0 || context <= 0 || width <= 0)
    TESSERA_THROW(ValueError, "GptEmbedding: vocab (", vocab, "), context (", context, ") and width (", width,
                  ") must be positive");
  wte_ = &AddParameter("wte", {vocab, width}, Init::Normal(0.0, 0.02));
  wpe_ = &AddParameter("wpe", {context, width}, Init::Normal(0.0, 0.02));
  if (dropout > 0) drop_ = static_cast<Dropout*>(&AddChild("drop", std::make_unique<Dropout>(dropout)));
}

std::string GptEmbedding::Describe() const {
  return detail::StrCat("GptEmbedding(vocab=", vocab_, ", context=", context_, ", width=", width_, ")");
}

Tensor GptEmbedding::Forward(const Tensor& ids) {
  RequireMaterialized(*wte_);
  if (!ids.defined() || ids.ndim() != 2 || ids.dim(1) > context_ || ids.dim(1) < 1)
    TESSERA_THROW(ShapeError, Describe(), ": token ids ", ids.defined() ? ids.Describe() : "undefined",
                  " must be [B, T] with 1 <= T <= the context of ", context_);
  const int64_t b = ids.dim(0), t = ids.dim(1);
  Tensor y = ops::Embedding(wte_->value, ids);  // [B, T, C]
  Tensor rows = y.Reshape({b, t * width_});
  ops::AddBias(rows, wpe_->value.Slice0(0, t).Reshape({t * width_}));  // the same positions in every example
  ids_ = training() ? ids : Tensor();
  return drop_ ? drop_->Forward(y) : y;
}

Tensor GptEmbedding::Backward(const Tensor& dy) {
  RequireSaved(ids_);
  Tensor g = drop_ ? drop_->Backward(dy) : dy;
  const int64_t b = ids_.dim(0), t = ids_.dim(1);
  Tensor dpos = wpe_->grad.Slice0(0, t).Reshape({t * width_});
  ops::SumRows(g.Reshape({b, t * width_}), dpos, /*accumulate=*/true);
  ops::EmbeddingBackward(ids_, g, wte_->grad);
  NotifyGradReady(*wte_);
  NotifyGradReady(*wpe_);
  ids_ = Tensor();
  return Tensor();
}

// ---- TiedLmHead ----
TiedLmHead::TiedLmHead(GptEmbedding& embedding) : Module("TiedLmHead"), weight_(embedding.wte()) {}

std::string TiedLmHead::Describe() const {
  return detail::StrCat("TiedLmHead(vocab=", weight_.shape[0], ", width=", weight_.shape[1],
                        ", tied to wte)");
}

Tensor TiedLmHead::Forward(const Tensor& x) {
  RequireMaterialized(weight_);
  const int64_t vocab = weight_.shape[0], width = weight_.shape[1];
  RequireActivations(*this, x, width);
  Tensor x2 = x.Reshape({-1, width});
  Tensor logits = ops::MatMul(x2, weight_.value, false, true);
  x_ = training() ? x2 : Tensor();
  x_shape_ = x.shape();
  return logits.Reshape({x.dim(0), x.dim(1), vocab});
}

Tensor TiedLmHead::Backward(const Tensor& dy) {
  RequireSaved(x_);
  const int64_t vocab = weight_.shape[0];
  Tensor dy2 = dy.Reshape({-1, vocab});
  if (dy2.dim(0) != x_.dim(0))
    TESSERA_THROW(ShapeError, Describe(), ": gradient ", dy.Describe(), " does not match the input's ",
                  x_.dim(0), " rows");
  ops::Gemm(dy2, true, x_, false, weight_.grad, 1.0, 1.0);  // dW += dy^T x; the embedding announces it
  Tensor dx = ops::MatMul(dy2, weight_.value);
  x_ = Tensor();
  return dx.Reshape(x_shape_);
}

}  // namespace tessera::nn
