// A GPT split across a tensor group (Megatron-LM's layout): every block's attention runs heads / T
// heads and its MLP 4C / T hidden features on each of the T ranks (column- then row-parallel
// projections, dist/tensor_parallel.h), the token embedding and the tied output head hold vocab / T
// rows each, and the loss is a cross-entropy over logits split by vocabulary. LayerNorms and the
// position embedding are whole on every rank. Per block: one all-reduce after attention and one
// after the MLP in forward, the same in backward; the embedding adds one forward, the head one
// backward, and the loss three small ones over the [B, T] rows.
//
// Parameters keep the names of models::BuildGpt; GptShards says which are split and how, so that a
// rank's shards are cut from (and, for checkpoints, glued back into) the logical tensors.
//
// On the CPU. Not yet: the trainer's grid (`parallel { tensor: T }`), clipping by the global norm
// over the group, checkpoints of split parameters.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "core/models.h"
#include "core/nn/transformer.h"
#include "dist/tensor_parallel.h"

namespace tessera::dist {

// Column- and row-parallel projections over `group`, for the transformer layers.
nn::ProjectionMaker TensorParallelProjections(const TensorGroup& group);

// Token ids [B, T] -> this rank's rows of wte (ids outside them contribute zero) summed over the
// group, + wpe[0 .. T) -> dropout. Parameters "wte" [vocab / T, C] (rows rank * vocab / T ...) and
// "wpe" [context, C], whole.
class VocabParallelEmbedding : public nn::Module {
 public:
  VocabParallelEmbedding(int64_t vocab, int64_t context, int64_t width, double dropout, TensorGroup group);
  Tensor Forward(const Tensor& ids) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  nn::Parameter& wte() { return *wte_; }
  int64_t first_row() const { return first_; }

 private:
  int64_t vocab_, context_, width_, rows_, first_;
  TensorGroup group_;
  nn::Parameter* wte_;
  nn::Parameter* wpe_;
  nn::Dropout* drop_ = nullptr;
  Tensor ids_;
};

// This rank's logits [B, T, vocab / T] = x @ wte_shard^T (tied to the embedding's shard). Backward
// adds its share to the shard's gradient and returns dL/dx summed over the group.
class VocabParallelHead : public nn::Module {
 public:
  VocabParallelHead(VocabParallelEmbedding& embedding, TensorGroup group);
  Tensor Forward(const Tensor& x) override;
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  std::vector<nn::Parameter*> SharedParameters() override { return {&weight_}; }

 private:
  nn::Parameter& weight_;
  TensorGroup group_;
  Tensor x_;
  Shape x_shape_;
};

// The mean cross-entropy of logits split by vocabulary ([..., vocab / T] on each rank, rank r's
// columns being tokens r * vocab / T ...) against labels [...] (i32, the whole vocabulary): each
// row's maximum, sum of exponentials and target logit are combined over the group, so the loss
// (every rank's the same) and each rank's gradient are those of the whole logits.
class VocabParallelCrossEntropy {
 public:
  explicit VocabParallelCrossEntropy(TensorGroup group) : group_(group) {}
  Tensor Forward(const Tensor& logits, const Tensor& labels);
  Tensor Backward(double scale = 1.0);  // dL/dlogits of this rank's columns

 private:
  TensorGroup group_;
  Tensor probs_, labels_;
  Shape shape_;
  int64_t first_ = 0;
};

// models::BuildGpt's model with this rank's shards. ConfigError when heads or vocab do not divide
// over the group.
std::unique_ptr<nn::Sequential> BuildTensorParallelGpt(const models::GptConfig& config, TensorGroup group);

// Gives this rank's split GPT (laid out in `params`) the values models::BuildGpt(config) laid out
// with `seed` starts from: each parameter's logical tensor drawn from the whole model's stream
// (nn::DrawInitialValues), then cut to this rank's piece, one parameter at a time. Without it every
// rank would draw its shards from the same streams, and the heads (and MLP features) of different
// ranks would start, and stay, the same.
void InitializeAsWholeGpt(nn::FlatParameters& params, const models::GptConfig& config, uint64_t seed,
                          const TensorGroup& group);

// The split parameters of BuildGpt(config) and this rank's piece of each (the others are whole).
std::map<std::string, ShardSpec> GptShards(const models::GptConfig& config, const TensorGroup& group);

}  // namespace tessera::dist
