// The layers of a GPT-2 style transformer (compare nanoGPT's model.py and Megatron-LM's GPT model):
// token and position embeddings, causal self-attention, the MLP, the pre-LayerNorm residual block
// and an output head tied to the token embedding. core/models.h assembles them into a GPT.
//
// Activations are [B, T, C]: examples, positions, width. Parameter names follow nanoGPT's
// ("attn.c_attn.weight", "mlp.c_fc.bias", "ln_1.weight"), with Linear weights [out, in] as in
// torch.nn.Linear, so a state dict maps across by name.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "core/nn/layers.h"

namespace tessera::nn {

// Makes a block's projections. On one process they are Linears; tensor parallelism
// (dist/tensor_parallel.h) makes column- and row-parallel ones, which split the out features
// (column) or the in features (row) across `parts` ranks, and the block then runs heads / parts
// heads and 4C / parts hidden features of its MLP. Each made module has parameters "weight"
// [out or its part, in or its part] and "bias".
struct ProjectionMaker {
  // in -> out; the out features come in `blocks` equal blocks (c_attn's q | k | v: 3).
  std::function<std::unique_ptr<Module>(int64_t in, int64_t out, int64_t blocks)> column;
  // in -> out, taking what a column projection made.
  std::function<std::unique_ptr<Module>(int64_t in, int64_t out)> row;
  int parts = 1;
  static ProjectionMaker Plain();  // nn::Linear both ways
};

// Multi-head causal self-attention: c_attn (C -> 3C, the packed q | k | v), the fused attention op
// (ops::CausalAttention: scores, mask and softmax of a head never leave one T x T block), c_proj
// (C -> C), then dropout on the output. The attention probabilities themselves are not dropped.
class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(int64_t width, int64_t heads, double dropout = 0.0,
                      const ProjectionMaker& make = ProjectionMaker::Plain());
  Tensor Forward(const Tensor& x) override;  // x [B, T, C]
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  void set_needs_input_grad(bool needs) override;
  Module& c_attn() { return *c_attn_; }
  Module& c_proj() { return *c_proj_; }

 private:
  int64_t width_, heads_, local_heads_;
  Module* c_attn_;
  Module* c_proj_;
  Dropout* drop_ = nullptr;
  Tensor qkv_, lse_;
};

// c_fc (C -> 4C) -> GELU (tanh) -> c_proj (4C -> C) -> dropout.
class TransformerMlp : public Module {
 public:
  TransformerMlp(int64_t width, double dropout = 0.0, const ProjectionMaker& make = ProjectionMaker::Plain());
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  void set_needs_input_grad(bool needs) override;
  Module& c_fc() { return *c_fc_; }
  Module& c_proj() { return *c_proj_; }

 private:
  Module* c_fc_;
  GELU* gelu_;
  Module* c_proj_;
  Dropout* drop_ = nullptr;
};

// Sets the "weight" parameter of a projection (its own, not a child's) to start N(0, std) and its "bias" at
// zero (GPT-2's initialisation), before the model is laid out.
void InitProjection(Module& projection, double std);

// Pre-LayerNorm residual block: h = x + attn(ln_1(x)); y = h + mlp(ln_2(h)).
class TransformerBlock : public Module {
 public:
  TransformerBlock(int64_t width, int64_t heads, double dropout = 0.0,
                   const ProjectionMaker& make = ProjectionMaker::Plain());
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  CausalSelfAttention& attn() { return *attn_; }
  TransformerMlp& mlp() { return *mlp_; }

 private:
  LayerNorm* ln_1_;
  CausalSelfAttention* attn_;
  LayerNorm* ln_2_;
  TransformerMlp* mlp_;
};

// Token ids [B, T] (i32 or i64, T <= context) -> wte[ids] + wpe[0 .. T) -> dropout, [B, T, C].
// wte [vocab, C] and wpe [context, C] start N(0, 0.02) as in GPT-2. Its input has no gradient:
// Backward() adds its own gradient to the one the tied head already left in wte's, announces wte
// (now final) and wpe, and returns an undefined tensor.
class GptEmbedding : public Module {
 public:
  GptEmbedding(int64_t vocab, int64_t context, int64_t width, double dropout = 0.0);
  Tensor Forward(const Tensor& ids) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  Parameter& wte() { return *wte_; }
  Parameter& wpe() { return *wpe_; }
  int64_t context() const { return context_; }

 private:
  int64_t vocab_, context_, width_;
  Parameter* wte_;
  Parameter* wpe_;
  Dropout* drop_ = nullptr;
  Tensor ids_;
};

// logits [B, T, vocab] = x [B, T, C] @ wte^T, with the token embedding's own weight (tied, as in
// GPT-2): it declares no parameter of its own. Backward adds its share of wte's gradient and leaves
// announcing that gradient to the embedding, whose backward runs later and finishes it.
class TiedLmHead : public Module {
 public:
  explicit TiedLmHead(GptEmbedding& embedding);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  std::vector<Parameter*> SharedParameters() override { return {&weight_}; }

 private:
  Parameter& weight_;
  Tensor x_;
  Shape x_shape_;
};

}  // namespace tessera::nn
