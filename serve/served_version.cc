#include "serve/served_version.h"

#include <hdf5.h>
#include <malloc.h>

#include <cmath>
#include <cstring>
#include <map>

#include "core/allocator.h"
#include "core/model_spec.h"

namespace tessera::serve {
namespace {

constexpr const char* kInputName = "input";

// Lays every f32 parameter of `net` over `weights` (in NamedParameters() order) and returns the
// element offset of each, by the path the weights file uses ("/model/0.weight"). Parameters of
// another dtype (an int8 version's weights) each get a tensor of `others`, by the same path.
std::map<std::string, int64_t> LayOut(nn::Sequential& net, Tensor& weights,
                                      std::map<std::string, Tensor>& others, bool allocate) {
  std::map<std::string, int64_t> offsets;
  int64_t total = 0;
  for (auto& [name, p] : net.NamedParameters()) {
    if (p->dtype != DType::kF32) continue;
    offsets["/model/" + name] = total;
    total += NumElements(p->shape);
  }
  if (allocate) weights = Tensor::Zeros({total});
  for (auto& [name, p] : net.NamedParameters()) {
    const std::string path = "/model/" + name;
    if (p->dtype == DType::kF32) {
      p->offset = offsets[path];
      p->value = weights.View(p->offset, p->shape);
      continue;
    }
    if (allocate) others[path] = Tensor::Zeros(p->shape, p->dtype);
    p->offset = 0;
    p->value = others.at(path);
  }
  return offsets;
}

// What Logits() relies on, from a file that may be hostile: a datatype it can take, and one mean
// and std for all channels or one per channel.
void CheckPreparation(const std::string& where, const store::Architecture& a, const Shape& example) {
  if (a.model().has_gpt()) {  // token ids, no normalisation
    if (a.input_dtype() != "INT32")
      TESSERA_THROW(ConfigError, where, ": model.pbtxt's input_dtype '", a.input_dtype(),
                    "' is not INT32 (token ids)");
    if (example.size() != 1 || example[0] < 1 || example[0] > a.model().gpt().context())
      TESSERA_THROW(ConfigError, where, ": model.pbtxt's input_shape ", ShapeString(example),
                    " is not one window of 1 to context (", a.model().gpt().context(), ") tokens");
    if (a.normalize().mean_size() || a.normalize().std_size() || a.normalize().scale() != 1.0f)
      TESSERA_THROW(ConfigError, where, ": model.pbtxt normalises token ids");
    return;
  }
  if (a.input_dtype() != "UINT8" && a.input_dtype() != "FP32")
    TESSERA_THROW(ConfigError, where, ": model.pbtxt's input_dtype '", a.input_dtype(),
                  "' is not UINT8 or FP32");
  if (example.empty()) TESSERA_THROW(ConfigError, where, ": model.pbtxt has no input_shape");
  const int64_t channels = example[0];
  const auto& n = a.normalize();
  for (int64_t count : {static_cast<int64_t>(n.mean_size()), static_cast<int64_t>(n.std_size())})
    if (count > 1 && count != channels)
      TESSERA_THROW(ConfigError, where, ": model.pbtxt's normalize has ", count, " values for ", channels,
                    " channels (1 or one per channel)");
  for (float s : n.std())
    if (!(s != 0.0f) || !std::isfinite(s))
      TESSERA_THROW(ConfigError, where, ": model.pbtxt's normalize.std holds ", s);
}

}  // namespace

std::shared_ptr<ServedVersion> ServedVersion::Load(const store::Store& store, const std::string& model,
                                                   int64_t version, const BatchOptions& options,
                                                   ServerMetrics* metrics) {
  std::shared_ptr<ServedVersion> v(new ServedVersion());
  v->model_ = model;
  v->version_ = version;
  v->options_ = options;
  const std::string where = detail::StrCat(model, " version ", version);
  store::Architecture arch = store.ReadArchitecture(model, version);
  v->example_.assign(arch.input_shape().begin(), arch.input_shape().end());
  if (arch.quantization() != store::NONE && !options.device.is_cpu())
    TESSERA_THROW(ConfigError, where, " is quantised (", store::Quantization_Name(arch.quantization()),
                  "): int8 versions are served on the CPU; serve its f32 parent on ", options.device.str());
  CheckPreparation(where, arch, v->example_);
  std::unique_ptr<nn::Sequential> first = store::BuildNetwork(arch);
  std::map<std::string, int64_t> offsets = LayOut(*first, v->weights_, v->other_weights_, true);
  std::vector<std::pair<Tensor, int64_t>> staged;  // tensors stored in another dtype, converted below
  store.LoadNetwork(model, version, *first, [&](const io::TensorRecord& t) -> void* {
    if (auto other = v->other_weights_.find(t.path); other != v->other_weights_.end())
      return other->second.raw_data();
    const int64_t offset = offsets.at(t.path);
    if (t.dtype == DType::kF32) return v->weights_.View(offset, t.shape).raw_data();
    staged.emplace_back(Tensor::Empty(t.shape, t.dtype), offset);
    return staged.back().first.raw_data();
  });
  for (auto& [t, offset] : staged) v->weights_.View(offset, t.shape()).CopyFrom(t.Cast(DType::kF32));
  v->architecture_ = arch;
  v->example_numel_ = NumElements(v->example_);
  v->out_features_ = models::OutFeatures(arch.model());
  v->positions_ = arch.model().has_gpt() ? v->example_[0] : 1;
  v->weights_bytes_ = static_cast<int64_t>(v->weights_.nbytes());
  for (const auto& [path, t] : v->other_weights_) v->weights_bytes_ += static_cast<int64_t>(t.nbytes());

  if (!options.device.is_cpu()) {  // read on the host, then one copy to the device for every replica
    v->weights_ = v->weights_.To(options.device);
    LayOut(*first, v->weights_, v->other_weights_, false);
  }
  first->SetTraining(false);
  v->replicas_.push_back(std::move(first));
  for (int w = 1; w < std::max(1, options.workers); ++w) {
    v->replicas_.push_back(store::BuildNetwork(arch));
    LayOut(*v->replicas_.back(), v->weights_, v->other_weights_, false);
    v->replicas_.back()->SetTraining(false);
  }
  // Warm-up: one batch through every replica, so the first request pays no first-touch costs and a
  // version whose network cannot run is refused here rather than on a request.
  std::vector<float> x(static_cast<size_t>(v->example_numel_) * options.max_batch_size, 0.0f);
  const int64_t per_example = v->positions_ * v->out_features_;
  std::vector<float> y(static_cast<size_t>(per_example) * options.max_batch_size);
  for (int w = 0; w < static_cast<int>(v->replicas_.size()); ++w)
    v->Forward(w, x.data(), options.max_batch_size, y.data());

  ServedVersion* self = v.get();
  std::string label = model;
  v->batcher_ = std::make_unique<Batcher>(
      options, v->example_numel_, per_example,
      [self](int worker, const float* xs, int64_t n, float* ys) { self->Forward(worker, xs, n, ys); },
      [metrics, label](double queue_s, int64_t batch) {
        if (!metrics) return;
        metrics->queue_time.Observe({label}, queue_s);
        metrics->batch_size.Observe({label}, static_cast<double>(batch));
      });
  return v;
}

ServedVersion::~ServedVersion() {
  batcher_.reset();  // finishes what is queued and joins the workers
  replicas_.clear();
  weights_ = Tensor();
  other_weights_.clear();
  // The freed blocks would stay in tessera's caching allocator and in malloc's arenas; give them
  // back, so a server that swaps versions all day holds the memory of the versions it serves.
  ReleaseFreedMemory();
}

void ReleaseFreedMemory() {
  GetAllocator(Device::CPU()).EmptyCache();
  H5garbage_collect();  // HDF5's free lists keep what each load read
  malloc_trim(0);
}

void ServedVersion::Forward(int worker, const float* x, int64_t n, float* y) {
  Shape shape{n};
  shape.insert(shape.end(), example_.begin(), example_.end());
  Tensor in;
  if (language_model()) {  // token ids, checked against the vocabulary by CheckInput
    in = Tensor::Empty(shape, DType::kI32);
    int32_t* ids = in.data<int32_t>();
    for (int64_t i = 0; i < in.numel(); ++i) ids[i] = static_cast<int32_t>(x[i]);
  } else {
    in = Tensor::Empty(shape);
    std::memcpy(in.raw_data(), x, in.nbytes());
  }
  if (!options_.device.is_cpu()) in = in.To(options_.device);
  Tensor out = replicas_[static_cast<size_t>(worker)]->Forward(in);
  if (!out.device().is_cpu()) out = out.To(Device::CPU());
  std::memcpy(y, out.raw_data(), sizeof(float) * static_cast<size_t>(n * positions_ * out_features_));
}

std::vector<TensorMetadata> ServedVersion::Inputs() const {
  Shape shape{-1};
  shape.insert(shape.end(), example_.begin(), example_.end());
  return {{kInputName, architecture_.input_dtype(), shape}};
}

std::vector<TensorMetadata> ServedVersion::Outputs() const {
  if (language_model())
    return {{"logits", "FP32", {-1, positions_, out_features_}},
            {"probabilities", "FP32", {-1, positions_, out_features_}},
            {"classes", "INT64", {-1, positions_, -1}}};
  return {{"logits", "FP32", {-1, out_features_}},
          {"probabilities", "FP32", {-1, out_features_}},
          {"classes", "INT64", {-1, -1}}};
}

int64_t ServedVersion::CheckInput(const InputTensor& in) const {
  const std::string where = "input '" + in.name + "'";
  if (in.name != kInputName)
    throw RequestError(400, detail::StrCat("model ", model_, " version ", version_, " has one input, '",
                                           kInputName, "'; the request names '", in.name, "'"));
  const std::string& dtype = architecture_.input_dtype();
  if (in.datatype != dtype && in.datatype != "FP32")
    throw RequestError(400, detail::StrCat(where, ": datatype ", in.datatype, " is not accepted; model ",
                                           model_, " takes ", dtype, dtype == "FP32" ? "" : " or FP32"));
  const Shape& s = in.shape;
  const bool full =
      s.size() == example_.size() + 1 && std::equal(example_.begin(), example_.end(), s.begin() + 1);
  const bool flat = s.size() == 2 && s[1] == example_numel_;
  if (!full && !flat) {
    Shape want{-1};
    want.insert(want.end(), example_.begin(), example_.end());
    throw RequestError(
        400, detail::StrCat(where, ": shape ", ShapeString(s), " does not fit the model, which takes ",
                            ShapeString(want), " or [-1, ", example_numel_, "] (a batch first)"));
  }
  if (s[0] < 1 || s[0] > options_.max_batch_size)
    throw RequestError(400, detail::StrCat(where, ": a batch of ", s[0], " examples; the server takes 1 to ",
                                           options_.max_batch_size, " per request (--max-batch-size)"));
  if (static_cast<int64_t>(in.values.size()) != s[0] * example_numel_)
    throw RequestError(400,
                       detail::StrCat(where, ": ", in.values.size(), " values for shape ", ShapeString(s)));
  if (in.datatype == "UINT8")
    for (size_t i = 0; i < in.values.size(); ++i)
      if (!(in.values[i] >= 0 && in.values[i] <= 255))
        throw RequestError(400,
                           detail::StrCat(where, ": element ", i, " (", in.values[i], ") is not a UINT8"));
  if (language_model())
    for (size_t i = 0; i < in.values.size(); ++i)
      if (!(in.values[i] >= 0 && in.values[i] < out_features_ && in.values[i] == std::floor(in.values[i])))
        throw RequestError(400,
                           detail::StrCat(where, ": element ", i, " (", in.values[i],
                                          ") is not a token id of the vocabulary [0, ", out_features_, ")"));
  return s[0];
}

std::vector<float> ServedVersion::Logits(const InputTensor& input, int64_t* rows) const {
  const int64_t n = CheckInput(input);
  Shape shape{n};
  shape.insert(shape.end(), example_.begin(), example_.end());
  Tensor x = Tensor::Empty(shape);
  std::memcpy(x.raw_data(), input.values.data(), x.nbytes());
  const models::Normalize& norm = architecture_.normalize();
  if (!language_model())
    models::NormalizeExamples(x, norm.scale(), {norm.mean().begin(), norm.mean().end()},
                              {norm.std().begin(), norm.std().end()});
  std::vector<float> logits(static_cast<size_t>(n * positions_ * out_features_));
  batcher_->Run(x.data<float>(), n, logits.data());
  *rows = n * positions_;
  return logits;
}

}  // namespace tessera::serve
