#include "store/onnx/export.h"

#include <climits>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>

#include "core/error.h"
#include "core/io/durable.h"
#include "core/model_spec.h"
#include "core/nn/layers.h"
#include "core/version.h"
#include "store/onnx/onnx.pb.h"

namespace tessera::store {
namespace {

constexpr int64_t kIrVersion = 8;
constexpr int64_t kOpset = 17;

// Builds the graph: names values, adds nodes and initializers.
class GraphWriter {
 public:
  explicit GraphWriter(onnx::GraphProto* g) : g_(g) {}

  // A weight or constant, FLOAT, `dims` (empty: a scalar).
  std::string Initializer(const std::string& name, const std::vector<int64_t>& dims, const float* data,
                          int64_t n) {
    onnx::TensorProto* t = g_->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->add_dims(d);
    t->set_raw_data(std::string(reinterpret_cast<const char*>(data), sizeof(float) * static_cast<size_t>(n)));
    return name;
  }
  std::string Scalar(float v) { return Initializer("const_" + std::to_string(constants_++), {}, &v, 1); }

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

  void Value(onnx::ValueInfoProto* v, const std::string& name, const std::vector<int64_t>& dims) {
    v->set_name(name);
    onnx::TypeProto::Tensor* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) {
      auto* dim = t->mutable_shape()->add_dim();
      if (d < 0)
        dim->set_dim_param("batch");
      else
        dim->set_dim_value(d);
    }
  }

 private:
  onnx::GraphProto* g_;
  int values_ = 0, constants_ = 0;
};

// The version's weights, by parameter name ("0.weight"), as float32 (checked against the network).
std::map<std::string, Tensor> ReadWeights(const Store& store, const std::string& model, int64_t version,
                                          nn::Sequential& net) {
  store.LoadInto(model, version, net);
  std::map<std::string, Tensor> read;
  for (auto& [name, p] : net.NamedParameters()) read[name] = p->value;
  return read;
}

// x * scale, then (x - mean) / std; mean and std hold one value or one per channel (dim 1).
std::string Prepare(GraphWriter& g, const std::string& x, const models::Normalize& n, size_t example_rank) {
  std::string y = x;
  if (n.scale() != 1.0f) y = g.Apply("Mul", {y, g.Scalar(n.scale())});
  auto per_channel = [&](const google::protobuf::RepeatedField<float>& v, const std::string& name) {
    std::vector<int64_t> dims;
    if (v.size() > 1) {
      dims.push_back(v.size());
      dims.insert(dims.end(), example_rank - 1, 1);  // broadcast over the rest of the example
    }
    return g.Initializer(name, dims, v.data(), v.size());
  };
  if (n.mean_size() > 0) y = g.Apply("Sub", {y, per_channel(n.mean(), "normalize.mean")});
  if (n.std_size() > 0) y = g.Apply("Div", {y, per_channel(n.std(), "normalize.std")});
  return y;
}

// GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in opset-17 basic ops.
std::string Gelu(GraphWriter& g, const std::string& x) {
  const std::string x3 = g.Apply("Mul", {g.Apply("Mul", {x, x}), x});
  const std::string inner = g.Apply("Add", {x, g.Apply("Mul", {x3, g.Scalar(0.044715f)})});
  const std::string t = g.Apply("Tanh", {g.Apply("Mul", {inner, g.Scalar(0.7978845608028654f)})});
  return g.Apply("Mul", {g.Apply("Mul", {x, g.Apply("Add", {t, g.Scalar(1.0f)})}), g.Scalar(0.5f)});
}

// One layer of the network; returns the value it produces. `name` is its index in the Sequential.
std::string Layer(GraphWriter& g, nn::Module& m, const std::string& name, const std::string& x,
                  const std::map<std::string, Tensor>& weights, int64_t* parameters) {
  auto weight = [&](const std::string& local) {
    const Tensor& t = weights.at(name + "." + local);
    *parameters += t.numel();
    return g.Initializer(name + "." + local, t.shape(), t.data<float>(), t.numel());
  };
  if (dynamic_cast<nn::Flatten*>(&m)) {
    onnx::NodeProto* n = g.Node("Flatten", {x});
    GraphWriter::Int(n, "axis", 1);
    return n->output(0);
  }
  if (auto* l = dynamic_cast<nn::Linear*>(&m)) {
    std::vector<std::string> in = {x, weight("weight")};
    if (l->bias()) in.push_back(weight("bias"));
    onnx::NodeProto* n = g.Node("Gemm", in);
    GraphWriter::Int(n, "transB", 1);  // the weight is [out, in]
    return n->output(0);
  }
  if (auto* c = dynamic_cast<nn::Conv2d*>(&m)) {
    std::vector<std::string> in = {x, weight("weight")};
    if (c->bias()) in.push_back(weight("bias"));
    onnx::NodeProto* n = g.Node("Conv", in);
    const Conv2dParams& p = c->params();
    GraphWriter::Ints(n, "kernel_shape", {c->kernel_size(), c->kernel_size()});
    GraphWriter::Ints(n, "strides", {p.stride_h, p.stride_w});
    GraphWriter::Ints(n, "pads", {p.pad_h, p.pad_w, p.pad_h, p.pad_w});
    return n->output(0);
  }
  if (auto* pool = dynamic_cast<nn::MaxPool2d*>(&m)) {
    onnx::NodeProto* n = g.Node("MaxPool", {x});
    const Pool2dParams& p = pool->params();
    GraphWriter::Ints(n, "kernel_shape", {p.kernel_h, p.kernel_w});
    GraphWriter::Ints(n, "strides", {p.stride_h, p.stride_w});
    GraphWriter::Ints(n, "pads", {p.pad_h, p.pad_w, p.pad_h, p.pad_w});
    return n->output(0);
  }
  if (dynamic_cast<nn::ReLU*>(&m)) return g.Apply("Relu", {x});
  if (dynamic_cast<nn::GELU*>(&m)) return Gelu(g, x);
  if (dynamic_cast<nn::Dropout*>(&m)) return x;  // the identity at inference
  TESSERA_THROW(ConfigError, "ONNX export: layer ", name, " (", m.Describe(),
                ") has no ONNX form in tessera's exporter");
}

onnx::StringStringEntryProto* Meta(onnx::ModelProto& m, const std::string& key, const std::string& value) {
  onnx::StringStringEntryProto* e = m.add_metadata_props();
  e->set_key(key);
  e->set_value(value);
  return e;
}

}  // namespace

OnnxExportResult ExportOnnx(const Store& store, const std::string& model, int64_t version,
                            const std::string& path) {
  const std::string where = detail::StrCat(model, " version ", version);
  const std::filesystem::path dir = std::filesystem::absolute(path).parent_path();
  if (!std::filesystem::is_directory(dir))
    TESSERA_THROW(IoError, path, ": cannot write: ", dir.string(), " is not a directory");
  const Architecture arch = store.ReadArchitecture(model, version);
  if (arch.quantization() != NONE)
    TESSERA_THROW(ConfigError, where, " is quantised (quantization: ", Quantization_Name(arch.quantization()),
                  "); export the f32 version it was made from (its lineage names it)");
  if (arch.model().has_gpt())
    TESSERA_THROW(ConfigError, where, " is a GPT: ONNX export covers MLP and CNN versions, not yet GPT ones");
  const Shape example(arch.input_shape().begin(), arch.input_shape().end());
  std::unique_ptr<nn::Sequential> net = models::BuildModel(arch.model(), example);
  const std::map<std::string, Tensor> weights = ReadWeights(store, model, version, *net);

  OnnxExportResult r;
  r.path = path;
  r.input_shape = example;
  r.classes = models::OutFeatures(arch.model());
  onnx::ModelProto m;
  m.set_ir_version(kIrVersion);
  onnx::OperatorSetIdProto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOpset);
  m.set_producer_name("tessera");
  m.set_producer_version(TESSERA_VERSION);
  m.set_model_version(version);
  m.set_doc_string(detail::StrCat(model, " version ", version, " of the tessera model store ", store.root()));
  Meta(m, "tessera.model", model);
  Meta(m, "tessera.version", std::to_string(version));
  std::string names;
  for (const std::string& c : arch.class_names()) names += (names.empty() ? "" : ",") + c;
  if (!names.empty()) Meta(m, "tessera.class_names", names);

  onnx::GraphProto* graph = m.mutable_graph();
  graph->set_name(model);
  GraphWriter g(graph);
  Shape batch_example{-1};
  batch_example.insert(batch_example.end(), example.begin(), example.end());
  g.Value(graph->add_input(), "input", batch_example);
  std::string x = Prepare(g, "input", arch.normalize(), example.size());
  for (size_t i = 0; i < net->size(); ++i) {
    const bool last = i + 1 == net->size();
    x = Layer(g, (*net)[i], std::to_string(i), x, weights, &r.parameters);
    if (last) x = g.Apply("Identity", {x}, "logits");
  }
  onnx::NodeProto* softmax = g.Node("Softmax", {x}, "probabilities");
  GraphWriter::Int(softmax, "axis", 1);
  g.Value(graph->add_output(), "logits", {-1, r.classes});
  g.Value(graph->add_output(), "probabilities", {-1, r.classes});
  r.nodes = graph->node_size();

  const size_t bytes = m.ByteSizeLong();
  if (bytes > static_cast<size_t>(INT_MAX))
    TESSERA_THROW(ConfigError, "ONNX export: ", where, " needs ", bytes,
                  " bytes, over the 2 GiB a protobuf file can hold (ONNX's external data is not written)");
  io::WriteFileAtomically(path, m.SerializeAsString());
  r.bytes = static_cast<int64_t>(bytes);
  return r;
}

}  // namespace tessera::store
