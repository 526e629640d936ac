#include "jobs/quantize.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <vector>

#include "core/error.h"
#include "core/model_spec.h"
#include "core/nn/quantized.h"
#include "core/ops/cpu/int8.h"
#include "datasets/loader.h"
#include "jobs/build.h"
#include "jobs/evaluate.h"
#include "jobs/spec.h"

namespace tessera::jobs {
namespace {

namespace fs = std::filesystem;

// The largest |x| that reaches each child of `net` (0 for the children that are not quantisable),
// over `samples` examples spread evenly over `data`, prepared as the evaluation prepares them.
std::vector<float> InputMaxima(nn::Sequential& net, datasets::Dataset& data,
                               const datasets::LoaderOptions& norm, int64_t samples, int64_t batch_size) {
  net.SetTraining(false);
  std::vector<float> maxima(net.size(), 0.0f);
  const int64_t n = std::min(samples, data.size());
  for (int64_t b = 0; b < n; b += batch_size) {
    std::vector<int64_t> idx;
    for (int64_t i = b; i < std::min(n, b + batch_size); ++i) idx.push_back(i * data.size() / n);
    Shape fs{static_cast<int64_t>(idx.size())};
    const Shape ex = data.example_shape();
    fs.insert(fs.end(), ex.begin(), ex.end());
    Tensor x = Tensor::Empty(fs), y = Tensor::Empty({static_cast<int64_t>(idx.size())}, DType::kI32);
    data.Get(idx, x, y);
    datasets::Normalize(x, norm);
    for (size_t c = 0; c < net.size(); ++c) {
      if (nn::IsQuantizable(net[c])) {
        const float* p = x.data<float>();
        float m = maxima[c];
        for (int64_t i = 0; i < x.numel(); ++i) m = std::max(m, std::fabs(p[i]));
        maxima[c] = m;
      }
      x = net[c].Forward(x);
    }
  }
  return maxima;
}

// Child `c` of the int8 network from child `c` of the f32 one: weights quantised per output
// channel, bias copied, the input scale from the calibrated maximum.
void FillLayer(nn::Module& f32, nn::Module& int8, float input_max) {
  std::map<std::string, nn::Parameter*> src, dst;
  for (auto& [n, p] : f32.NamedParameters()) src[n] = p;
  for (auto& [n, p] : int8.NamedParameters()) dst[n] = p;
  const Tensor& w = src.at("weight")->value;
  const int64_t out = w.dim(0);
  cpu::int8::QuantizeRows(w.data<float>(), out, w.numel() / out, dst.at("weight")->value.data<int8_t>(),
                          dst.at("weight_scale")->value.data<float>());
  if (src.count("bias")) dst.at("bias")->value.CopyFrom(src.at("bias")->value);
  dst.at("input_scale")->value.data<float>()[0] = cpu::int8::ScaleFor(input_max);
}

// The int8 network of `arch` (quantization: INT8) filled from `f32` and the calibration.
std::unique_ptr<nn::Sequential> QuantizedCopy(nn::Sequential& f32, const store::Architecture& arch,
                                              const std::vector<float>& maxima, int* layers) {
  std::unique_ptr<nn::Sequential> q = store::BuildNetwork(arch);
  nn::AllocateParameters(*q);
  *layers = 0;
  for (size_t c = 0; c < f32.size(); ++c) {
    if (nn::IsQuantizable(f32[c])) {
      FillLayer(f32[c], (*q)[c], maxima[c]);
      ++*layers;
      continue;
    }
    auto from = f32[c].NamedParameters(), to = (*q)[c].NamedParameters();
    for (size_t i = 0; i < from.size(); ++i) to[i].second->value.CopyFrom(from[i].second->value);
  }
  return q;
}

int64_t WeightsBytes(const store::VersionManifest& m) {
  for (const store::FileDigest& f : m.files())
    if (f.name() == "weights.h5") return f.bytes();
  return 0;
}

std::map<std::string, double> Metrics(const EvalResult& r) {
  std::map<std::string, double> out;
  const nlohmann::json j = EvalJson(r);
  for (auto& [k, v] : j.items())
    if (v.is_number())
      out[k] = v.get<double>();  // (null: undefined, e.g. the precision of a class never predicted)
  return out;
}

}  // namespace

QuantizeResult QuantizeVersion(store::Store& st, const std::string& model, int64_t version,
                               const QuantizeOptions& options) {
  const std::string where = detail::StrCat(model, " version ", version);
  if (options.samples < 1) TESSERA_THROW(ConfigError, "--samples must be at least 1, got ", options.samples);
  const store::Architecture arch = st.ReadArchitecture(model, version);
  if (arch.quantization() != store::NONE)
    TESSERA_THROW(ConfigError, where, " is already quantised (",
                  store::Quantization_Name(arch.quantization()), ")");
  if (arch.model().has_gpt())
    TESSERA_THROW(ConfigError, where,
                  " is a GPT: int8 quantisation covers MLP and CNN versions, not yet GPT ones");
  const store::VersionManifest parent = st.ReadManifest(model, version);
  const JobSpec spec = ParseJobSpec(parent.lineage().job_spec(), where + ": lineage.job_spec");
  if (!NamesSplit(spec.data(), true))
    TESSERA_THROW(ConfigError, where, ": its job spec names no training data to calibrate on");
  std::unique_ptr<datasets::Dataset> train = OpenSplit(spec.data(), true);
  const datasets::LoaderOptions norm = LoaderOptionsFor(spec, false);

  QuantizeResult r;
  r.parent = version;
  std::unique_ptr<nn::Sequential> f32 = store::BuildNetwork(arch);
  st.LoadInto(model, version, *f32);
  r.calibration_examples = std::min(options.samples, train->size());
  const std::vector<float> maxima = InputMaxima(*f32, *train, norm, options.samples, options.batch_size);
  store::Architecture qarch = arch;
  qarch.set_quantization(store::INT8);
  std::unique_ptr<nn::Sequential> q = QuantizedCopy(*f32, qarch, maxima, &r.layers);
  if (r.layers == 0) TESSERA_THROW(ConfigError, where, ": has no Linear or Conv2d layer to quantise");

  if (options.evaluate && NamesSplit(spec.data(), false)) {
    std::unique_ptr<datasets::Dataset> test = OpenSplit(spec.data(), false, train.get());
    const int classes = static_cast<int>(models::OutFeatures(arch.model()));
    r.parent_metrics = Metrics(Evaluate(*f32, *test, norm, options.batch_size, classes, nullptr, 0));
    r.metrics = Metrics(Evaluate(*q, *test, norm, options.batch_size, classes, nullptr, 0));
  }

  store::PublishRequest req;
  req.model = model;
  req.alias = options.alias;
  req.architecture = qarch;
  req.metrics = r.metrics;
  for (const auto& [k, v] : r.parent_metrics) req.metrics["f32_" + k] = v;
  req.lineage = parent.lineage();
  store::ParentVersion* p = req.lineage.mutable_parent();
  p->set_store(fs::absolute(st.root()).lexically_normal().string());
  p->set_model(model);
  p->set_version(version);
  p->set_reference(detail::StrCat("store://", p->store(), "/", model, "/", version));
  for (const store::FileDigest& f : parent.files())
    if (f.name() == "weights.h5") p->set_weights_sha256(f.sha256());
  req.lineage.set_derivation(detail::StrCat("int8 post-training quantisation of version ", version, " (",
                                            r.layers, " layers; max |x| of each layer's input over ",
                                            r.calibration_examples, " training examples)"));
  req.weights_meta.step = parent.lineage().step();
  req.weights_meta.job_spec = parent.lineage().job_spec();
  req.weights_meta.dtype = "int8";
  req.weights_meta.source = p->reference();
  for (auto& [name, param] : q->NamedParameters())
    req.weights.push_back({name, param->shape, param->dtype, param->value.raw_data()});
  r.published = st.Publish(req);
  r.parent_weights_bytes = WeightsBytes(parent);
  r.weights_bytes = WeightsBytes(st.ReadManifest(model, r.published.version));
  return r;
}

}  // namespace tessera::jobs
