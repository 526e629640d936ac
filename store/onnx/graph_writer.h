// Writing an ONNX graph (store/onnx/onnx.proto): values named in order, nodes, initializers
// (weights and constants, little-endian raw data) and the graph's inputs and outputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "store/onnx/onnx.pb.h"

namespace tessera::store {

// Builds the graph: names values, adds nodes and initializers.
class GraphWriter {
 public:
  explicit GraphWriter(onnx::GraphProto* g) : g_(g) {}

  // A weight or constant, FLOAT, `dims` (empty: a scalar).
  std::string Initializer(const std::string& name, const std::vector<int64_t>& dims, const float* data,
                          int64_t n) {
    return Raw(name, onnx::TensorProto::FLOAT, dims, data, sizeof(float) * static_cast<size_t>(n));
  }
  std::string Scalar(float v) { return Initializer(FreshConstant(), {}, &v, 1); }
  // An INT64 constant [n] (shapes, axes, split sizes).
  std::string Int64s(const std::vector<int64_t>& v) {
    return Raw(FreshConstant(), onnx::TensorProto::INT64, {static_cast<int64_t>(v.size())}, v.data(),
               sizeof(int64_t) * v.size());
  }
  // A FLOAT constant of `dims` holding `v`.
  std::string Floats(const std::vector<int64_t>& dims, const std::vector<float>& v) {
    return Initializer(FreshConstant(), dims, v.data(), static_cast<int64_t>(v.size()));
  }

  // One node; returns its output's name (`out`, or a fresh one).
  onnx::NodeProto* Node(const std::string& op, const std::vector<std::string>& inputs,
                        const std::string& out = "") {
    onnx::NodeProto* n = g_->add_node();
    n->set_op_type(op);
    n->set_name(op + "_" + std::to_string(g_->node_size()));
    for (const std::string& i : inputs) n->add_input(i);
    n->add_output(out.empty() ? "t" + std::to_string(values_++) : out);
    return n;
  }
  std::string Apply(const std::string& op, const std::vector<std::string>& inputs,
                    const std::string& out = "") {
    return Node(op, inputs, out)->output(0);
  }

  static void Ints(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a->add_ints(x);
  }
  static void Int(onnx::NodeProto* n, const std::string& name, int64_t v) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }

  void Value(onnx::ValueInfoProto* v, const std::string& name, const std::vector<int64_t>& dims,
             int elem_type = onnx::TensorProto::FLOAT) {
    v->set_name(name);
    onnx::TypeProto::Tensor* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(elem_type);
    for (int64_t d : dims) {
      auto* dim = t->mutable_shape()->add_dim();
      if (d < 0)
        dim->set_dim_param("batch");
      else
        dim->set_dim_value(d);
    }
  }

 private:
  std::string FreshConstant() { return "const_" + std::to_string(constants_++); }
  std::string Raw(const std::string& name, int type, const std::vector<int64_t>& dims, const void* data,
                  size_t bytes) {
    onnx::TensorProto* t = g_->add_initializer();
    t->set_name(name);
    t->set_data_type(type);
    for (int64_t d : dims) t->add_dims(d);
    t->set_raw_data(std::string(static_cast<const char*>(data), bytes));
    return name;
  }

  onnx::GraphProto* g_;
  int values_ = 0, constants_ = 0;
};

// GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in opset-17 basic ops.
inline std::string Gelu(GraphWriter& g, const std::string& x) {
  const std::string x3 = g.Apply("Mul", {g.Apply("Mul", {x, x}), x});
  const std::string inner = g.Apply("Add", {x, g.Apply("Mul", {x3, g.Scalar(0.044715f)})});
  const std::string t = g.Apply("Tanh", {g.Apply("Mul", {inner, g.Scalar(0.7978845608028654f)})});
  return g.Apply("Mul", {g.Apply("Mul", {x, g.Apply("Add", {t, g.Scalar(1.0f)})}), g.Scalar(0.5f)});
}

}  // namespace tessera::store
