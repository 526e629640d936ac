#include "store/onnx/gpt_graph.h"

#include <cmath>
#include <limits>
#include <vector>

namespace tessera::store {
namespace {

class GptWriter {
 public:
  GptWriter(GraphWriter& g, const std::map<std::string, Tensor>& weights, int64_t* parameters)
      : g_(g), weights_(weights), parameters_(parameters) {}

  std::string Weight(const std::string& name) {
    const Tensor& t = weights_.at(name);
    *parameters_ += t.numel();
    return g_.Initializer(name, t.shape(), t.data<float>(), t.numel());
  }

  std::string Transposed(const std::string& x, const std::vector<int64_t>& perm) {
    onnx::NodeProto* n = g_.Node("Transpose", {x});
    GraphWriter::Ints(n, "perm", perm);
    return n->output(0);
  }

  // x [..., in] @ W^T + b, W [out, in] stored as it is.
  std::string Linear(const std::string& x, const std::string& name) {
    const std::string y = g_.Apply("MatMul", {x, Transposed(Weight(name + ".weight"), {1, 0})});
    return g_.Apply("Add", {y, Weight(name + ".bias")});
  }

  std::string LayerNorm(const std::string& x, const std::string& name) {
    onnx::NodeProto* n = g_.Node("LayerNormalization", {x, Weight(name + ".weight"), Weight(name + ".bias")});
    GraphWriter::Int(n, "axis", -1);
    onnx::AttributeProto* eps = n->add_attribute();
    eps->set_name("epsilon");
    eps->set_type(onnx::AttributeProto::FLOAT);
    eps->set_f(1e-5f);
    return n->output(0);
  }

  // [n, t, C] -> [n, heads, t, C / heads]
  std::string Heads(const std::string& x, int64_t t, int64_t heads, int64_t dh) {
    return Transposed(g_.Apply("Reshape", {x, g_.Int64s({0, t, heads, dh})}), {0, 2, 1, 3});
  }

  std::string Attention(const std::string& x, const std::string& name, int64_t t, int64_t c, int64_t heads,
                        const std::string& mask) {
    const int64_t dh = c / heads;
    const std::string qkv = Linear(x, name + ".c_attn");
    onnx::NodeProto* split = g_.Node("Split", {qkv, g_.Int64s({c, c, c})}, name + ".q");
    GraphWriter::Int(split, "axis", 2);
    split->add_output(name + ".k");
    split->add_output(name + ".v");
    const std::string q = Heads(split->output(0), t, heads, dh), k = Heads(split->output(1), t, heads, dh),
                      v = Heads(split->output(2), t, heads, dh);
    const std::string scores = g_.Apply("Mul", {g_.Apply("MatMul", {q, Transposed(k, {0, 1, 3, 2})}),
                                                g_.Scalar(1.0f / std::sqrt(float(dh)))});
    onnx::NodeProto* softmax = g_.Node("Softmax", {g_.Apply("Add", {scores, mask})});
    GraphWriter::Int(softmax, "axis", -1);
    const std::string y = Transposed(g_.Apply("MatMul", {softmax->output(0), v}), {0, 2, 1, 3});
    return Linear(g_.Apply("Reshape", {y, g_.Int64s({0, t, c})}), name + ".c_proj");
  }

  std::string Mlp(const std::string& x, const std::string& name) {
    return Linear(Gelu(g_, Linear(x, name + ".c_fc")), name + ".c_proj");
  }

  // [t, t]: 0 where a query may look (keys j <= i), -inf above the diagonal.
  std::string CausalMask(int64_t t) {
    std::vector<float> m(static_cast<size_t>(t * t), 0.0f);
    for (int64_t i = 0; i < t; ++i)
      for (int64_t j = i + 1; j < t; ++j) m[i * t + j] = -std::numeric_limits<float>::infinity();
    return g_.Floats({t, t}, m);
  }

  GraphWriter& g() { return g_; }

 private:
  GraphWriter& g_;
  const std::map<std::string, Tensor>& weights_;
  int64_t* parameters_;
};

}  // namespace

std::string GptGraph(GraphWriter& g, const std::string& ids, const models::GptSpec& spec, int64_t t,
                     const std::map<std::string, Tensor>& weights, int64_t* parameters) {
  GptWriter w(g, weights, parameters);
  const int64_t c = spec.width();
  const std::string wte = w.Weight("embed.wte");
  const std::string positions =
      g.Apply("Slice", {w.Weight("embed.wpe"), g.Int64s({0}), g.Int64s({t}), g.Int64s({0})});
  std::string x = g.Apply("Add", {g.Apply("Gather", {wte, ids}), positions});
  const std::string mask = w.CausalMask(t);
  for (int64_t l = 0; l < spec.layers(); ++l) {
    const std::string h = "h" + std::to_string(l);
    x = g.Apply("Add", {x, w.Attention(w.LayerNorm(x, h + ".ln_1"), h + ".attn", t, c, spec.heads(), mask)});
    x = g.Apply("Add", {x, w.Mlp(w.LayerNorm(x, h + ".ln_2"), h + ".mlp")});
  }
  return g.Apply("MatMul", {w.LayerNorm(x, "ln_f"), w.Transposed(wte, {1, 0})});
}

}  // namespace tessera::store
