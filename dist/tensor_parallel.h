// Tensor parallelism, Megatron-LM style (compare Megatron's ColumnParallelLinear and
// RowParallelLinear): a Linear's weight is split across the ranks of a tensor group and each rank
// computes with its shard.
//
//   column-parallel: W [out, in] split by rows. The input is the same on every rank; each rank's
//     output is its part of the out features. Backward sums the ranks' input gradients (one
//     all-reduce: Megatron's f).
//   row-parallel: W split by columns. Each rank's input is its part of the in features (a
//     column-parallel layer's output); the ranks' products are summed (one all-reduce: Megatron's
//     g), then the bias, which every rank holds whole, is added. Backward needs no communication.
//
// Column then row (attention's c_attn and c_proj, the MLP's c_fc and c_proj) costs one all-reduce
// in forward and one in backward, and what lies between (the attention of the local heads, GELU)
// runs on the local shard alone. A shard keeps its logical parameter's name ("weight", "bias");
// ShardSpec says which part of the logical tensor it is, so that logical checkpoints slice on load
// and gather on save.
//
// The GPT assembled from these is dist/tensor_parallel_gpt.h. Not built yet: the data x tensor x
// pipeline grid in the trainer, checkpoints of sharded layers.
#pragma once

#include <cstdint>

#include "core/nn/layers.h"
#include "dist/process_group.h"

namespace tessera::dist {

// The ranks that share a layer's shards, and the deadline of each of its collectives. A null
// group is one rank: the layers are then plain Linears.
struct TensorGroup {
  ProcessGroup* group = nullptr;
  double timeout_s = 300;
  int rank() const { return group ? group->rank() : 0; }
  int size() const { return group ? group->size() : 1; }
};

// Sums (or takes the maximum of) `t` over the group, in place, waiting for the result; nothing for
// one rank.
void AllReduceOver(Tensor& t, const TensorGroup& group, ReduceOp op = ReduceOp::kSum);

// Which part of a logical tensor a shard holds: along dimension `dim`, the logical tensor is
// `blocks` equal blocks (c_attn's q | k | v: 3), each cut into `parts` equal pieces; the shard is
// piece `index` of every block, in block order.
struct ShardSpec {
  int dim = 0;
  int64_t blocks = 1;
  int parts = 1, index = 0;
};

// The shard `s` of a host tensor (any dtype). ShapeError when dimension `dim` is not divisible into
// blocks x parts.
Tensor TakeShard(const Tensor& logical, const ShardSpec& s);
// The shape of that shard.
Shape ShardShape(const Shape& logical, const ShardSpec& s);

// y [..., out / T] = x [..., in] W_shard^T + b_shard, W_shard [out / T, in] the rows of this rank's
// piece of each of `blocks` blocks of W [out, in] (ShardSpec{0, blocks, T, rank}). A Linear of the
// shard's size whose input gradient is summed over the group (every rank's is then the same).
class ColumnParallelLinear : public nn::Linear {
 public:
  // Throws ValueError when out is not divisible into blocks x T.
  ColumnParallelLinear(int64_t in, int64_t out, TensorGroup group, int64_t blocks = 1, bool bias = true);
  Tensor Backward(const Tensor& dy) override;
  std::string Describe() const override;
  ShardSpec weight_shard() const { return {0, blocks_, group_.size(), group_.rank()}; }

 private:
  int64_t in_, out_, blocks_;
  TensorGroup group_;
};

// y [..., out] = sum over the group of x_shard [..., in / T] W_shard^T, plus b; W_shard [out, in / T]
// the columns of this rank's piece of W (ShardSpec{1, 1, T, rank}); the bias [out] whole on every
// rank, added once after the sum (its gradient is the same on every rank). A bias-free Linear of
// the shard's size, the sum, then the bias; backward needs no communication.
class RowParallelLinear : public nn::Linear {
 public:
  // Throws ValueError when in is not divisible by T.
  RowParallelLinear(int64_t in, int64_t out, TensorGroup group, bool bias = true);
  Tensor Forward(const Tensor& x) override;    // x: this rank's in / T features
  Tensor Backward(const Tensor& dy) override;  // returns dL/dx of this rank's features
  std::string Describe() const override;
  nn::Parameter* bias() { return bias_; }
  ShardSpec weight_shard() const { return {1, 1, group_.size(), group_.rank()}; }

 private:
  int64_t in_, out_;
  TensorGroup group_;
  nn::Parameter* bias_ = nullptr;  // Linear's own is off: the bias comes after the sum
};

}  // namespace tessera::dist
