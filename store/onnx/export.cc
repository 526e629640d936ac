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
#include "store/onnx/gpt_graph.h"
#include "store/onnx/graph_writer.h"
#include "store/onnx/onnx.pb.h"

namespace tessera::store {
namespace {

constexpr int64_t kIrVersion = 8;
constexpr int64_t kOpset = 17;

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
  Shape outputs{-1, r.classes};
  std::string x;
  if (arch.model().has_gpt()) {  // token ids [batch, T] -> next-token logits at every position
    g.Value(graph->add_input(), "input", batch_example, onnx::TensorProto::INT64);
    x = GptGraph(g, "input", arch.model().gpt(), example.at(0), weights, &r.parameters);
    outputs = {-1, example.at(0), r.classes};
    r.input_type = "INT64";
  } else {
    g.Value(graph->add_input(), "input", batch_example);
    x = Prepare(g, "input", arch.normalize(), example.size());
    for (size_t i = 0; i < net->size(); ++i)
      x = Layer(g, (*net)[i], std::to_string(i), x, weights, &r.parameters);
  }
  x = g.Apply("Identity", {x}, "logits");
  onnx::NodeProto* softmax = g.Node("Softmax", {x}, "probabilities");
  GraphWriter::Int(softmax, "axis", -1);
  r.output_shape = outputs;
  g.Value(graph->add_output(), "logits", outputs);
  g.Value(graph->add_output(), "probabilities", outputs);
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
