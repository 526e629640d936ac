// Tensor-parallel layers (dist/tensor_parallel.h) on the thread process group: a column- then
// row-parallel MLP and attention with its heads split across 2 and 4 ranks compute what the
// single-process layers compute, forward and backward, each rank's weight gradient being the
// shard of the whole one; and shards cut the logical tensor as ShardSpec says.
#include "dist/tensor_parallel.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>

#include "core/nn/layers.h"
#include "core/ops/ops.h"
#include "core/threads.h"
#include "tests/core/gradcheck.h"
#include "tests/dist/thread_ranks.h"

namespace tessera::dist {
namespace {

using testing::RandomTensor;
using thread_test::RunRanks;
constexpr DType F64 = DType::kF64;

TEST(TensorParallel, AShardIsItsPieceOfEveryBlock) {
  std::vector<double> v(12);
  for (int i = 0; i < 12; ++i) v[i] = i;
  const Tensor w = Tensor::FromVector(v, {6, 2}, F64);  // rows 0..5: blocks q (0, 1), k (2, 3), v (4, 5)
  EXPECT_EQ(TakeShard(w, {0, 3, 2, 1}).ToVector(), (std::vector<double>{2, 3, 6, 7, 10, 11}));
  EXPECT_EQ(TakeShard(w, {1, 1, 2, 0}).ToVector(), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(ShardShape({6, 2}, {0, 3, 2, 0}), (Shape{3, 2}));
  EXPECT_THROW(TakeShard(w, {0, 3, 4, 0}), ShapeError);  // 6 rows are not 3 blocks of 4 parts
  EXPECT_THROW(ColumnParallelLinear(4, 6, TensorGroup{}, 4), ValueError);
}

// The causal attention op as a layer (between a column- and a row-parallel projection).
class Attention : public nn::Module {
 public:
  explicit Attention(int64_t heads) : Module("Attention"), heads_(heads) {}
  Tensor Forward(const Tensor& qkv) override {
    qkv_ = qkv;
    return ops::CausalAttention(qkv, heads_, &lse_);
  }
  Tensor Backward(const Tensor& dy) override { return ops::CausalAttentionBackward(qkv_, lse_, dy, heads_); }

 private:
  int64_t heads_;
  Tensor qkv_, lse_;
};

struct Result {
  std::vector<double> y, dx;
  std::map<std::string, std::vector<double>> grads;  // by parameter name
};

Result Run(nn::Sequential& net, nn::FlatParameters& p, const Tensor& x, const Tensor& dy) {
  Result r;
  p.ZeroGrad();
  r.y = net.Forward(x).ToVector();
  r.dx = net.Backward(dy).ToVector();
  for (const auto& e : p.entries()) r.grads[e.name] = e.param->grad.ToVector();
  return r;
}

void ExpectNear(const std::vector<double>& a, const std::vector<double>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], b[i], 1e-12 * std::max(1.0, std::fabs(b[i]))) << what << " element " << i;
}

// `make(group)` builds the same two projections, with or without a split (a null group: the
// single-process reference); `shards[name]` says how each parameter of the reference is cut.
void ExpectSplitMatchesWhole(int ranks,
                             const std::function<std::unique_ptr<nn::Sequential>(TensorGroup)>& make,
                             const std::map<std::string, ShardSpec>& shards, const Shape& x_shape) {
  SetNumThreads(1);
  auto whole = make(TensorGroup{});
  nn::FlatParameters wp(*whole, Device::CPU(), F64, 3);
  const int64_t width = x_shape.back();
  const Tensor x = RandomTensor(x_shape, F64, 4), dy = RandomTensor(x_shape, F64, 5);
  const Result want = Run(*whole, wp, x, dy);
  ASSERT_EQ(want.y.size(), static_cast<size_t>(NumElements(x_shape))) << "the reference maps width " << width;
  std::vector<Result> got(ranks);
  std::vector<std::string> errors = RunRanks(ranks, [&](ProcessGroup& g) {
    auto net = make(TensorGroup{&g, 30});
    nn::FlatParameters p(*net, Device::CPU(), F64, 99);  // other values: every one is replaced below
    for (const auto& e : p.entries()) {
      const Tensor& logical = wp.Find(e.name).param->value;
      auto s = shards.find(e.name);
      if (s == shards.end()) {
        e.param->value.CopyFrom(logical);  // held whole on every rank
      } else {
        ShardSpec spec = s->second;
        spec.parts = ranks;
        spec.index = g.rank();
        e.param->value.CopyFrom(TakeShard(logical, spec));
      }
    }
    got[g.rank()] = Run(*net, p, x, dy);
  });
  for (int r = 0; r < ranks; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    SCOPED_TRACE(detail::StrCat(ranks, " ranks, rank ", r));
    ExpectNear(got[r].y, want.y, "output");
    ExpectNear(got[r].dx, want.dx, "input gradient");
    for (const auto& [name, grad] : got[r].grads) {
      auto s = shards.find(name);
      const Tensor& whole_grad = wp.Find(name).param->grad;
      if (s == shards.end()) {
        ExpectNear(grad, whole_grad.ToVector(), name + " (whole)");
      } else {
        ShardSpec spec = s->second;
        spec.parts = ranks;
        spec.index = r;
        ExpectNear(grad, TakeShard(whole_grad, spec).ToVector(), name + " (its shard)");
      }
    }
  }
}

TEST(TensorParallel, ColumnThenRowMlpMatchesTheWholeMlp) {
  const int64_t c = 8;
  auto make = [&](TensorGroup g) {
    auto net = std::make_unique<nn::Sequential>();
    if (!g.group) {
      net->Add(std::make_unique<nn::Linear>(c, 4 * c));
      net->Add(std::make_unique<nn::GELU>());
      net->Add(std::make_unique<nn::Linear>(4 * c, c));
    } else {
      net->Add(std::make_unique<ColumnParallelLinear>(c, 4 * c, g));
      net->Add(std::make_unique<nn::GELU>());
      net->Add(std::make_unique<RowParallelLinear>(4 * c, c, g));
    }
    return net;
  };
  const std::map<std::string, ShardSpec> shards = {
      {"0.weight", {0, 1}}, {"0.bias", {0, 1}}, {"2.weight", {1, 1}}};
  for (int ranks : {2, 4}) ExpectSplitMatchesWhole(ranks, make, shards, {2, 3, c});
}

TEST(TensorParallel, AttentionWithItsHeadsSplitMatchesTheWholeAttention) {
  const int64_t c = 16, heads = 4;
  auto make = [&](TensorGroup g) {
    auto net = std::make_unique<nn::Sequential>();
    if (!g.group) {
      net->Add(std::make_unique<nn::Linear>(c, 3 * c));
      net->Add(std::make_unique<Attention>(heads));
      net->Add(std::make_unique<nn::Linear>(c, c));
    } else {
      // Each rank holds the q, k and v rows of its heads, and c_proj's columns of their outputs.
      net->Add(std::make_unique<ColumnParallelLinear>(c, 3 * c, g, /*blocks=*/3));
      net->Add(std::make_unique<Attention>(heads / g.size()));
      net->Add(std::make_unique<RowParallelLinear>(c, c, g));
    }
    return net;
  };
  const std::map<std::string, ShardSpec> shards = {
      {"0.weight", {0, 3}}, {"0.bias", {0, 3}}, {"2.weight", {1, 1}}};
  for (int ranks : {2, 4}) ExpectSplitMatchesWhole(ranks, make, shards, {2, 5, c});
}

}  // namespace
}  // namespace tessera::dist
